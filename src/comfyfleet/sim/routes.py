"""ComfyUI's HTTP and WebSocket routes, served at `/X` and `/api/X`, plus `/sim/*` controls."""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import sys
import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from .catalog import object_info
from .files import file_response
from .hub import Connection
from .queue import QueueItem
from .validation import PromptInvalid, validate_prompt

if TYPE_CHECKING:
    from .server import Simulator

MAX_UPLOAD_BYTES = 100 * 1024 * 1024
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_BYTES}
VRAM_TOTAL = 24 * 1024**3


def normalized_path(path: str) -> str:
    return path[4:] if path.startswith("/api/") else path


def build_app(sim: Simulator) -> web.Application:
    """The aiohttp application of one simulator."""
    routes = ComfyRoutes(sim)
    app = web.Application(middlewares=[routes.fault_middleware], client_max_size=MAX_UPLOAD_BYTES)
    table = [
        ("POST", "/prompt", routes.post_prompt), ("GET", "/prompt", routes.get_prompt),
        ("GET", "/queue", routes.get_queue), ("POST", "/queue", routes.post_queue),
        ("POST", "/interrupt", routes.post_interrupt), ("POST", "/free", routes.empty_ok),
        ("GET", "/history", routes.get_history), ("GET", "/history/{prompt_id}", routes.get_history_item),
        ("POST", "/history", routes.post_history), ("GET", "/view", routes.get_view),
        ("POST", "/upload/image", routes.post_upload), ("GET", "/system_stats", routes.get_system_stats),
        ("GET", "/features", routes.get_features), ("GET", "/object_info", routes.get_object_info),
        ("GET", "/object_info/{node_class}", routes.get_object_info), ("GET", "/embeddings", routes.empty_list),
        ("GET", "/ws", routes.websocket),
    ]
    for method, path, handler in table:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/api" + path, handler)
    app.router.add_get("/sim/faults", routes.get_faults)
    app.router.add_post("/sim/faults", routes.post_faults)
    app.router.add_post("/sim/restart", routes.post_restart)
    app.router.add_get("/sim/records", routes.get_records)
    app.router.add_get("/sim/progress-sends", routes.get_progress_sends)
    app.router.add_get("/sim/requests", routes.get_requests)
    return app


async def _json_or_none(request: web.Request) -> object:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        return None


class ComfyRoutes:
    """Request handlers; all state lives on the Simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    @web.middleware
    async def fault_middleware(self, request: web.Request, handler):
        if self.sim.faults.refuse_connections and request.transport is not None:
            # A connection the listener accepted just before it closed (not yet known to the
            # server when the open ones were cut): cut it too, as a refused connect would.
            request.transport.abort()
            return web.Response(status=503)  # never sent: the connection is gone
        path = normalized_path(request.path)
        if path == "/ws":
            self.sim.requests["WS connect"] += 1
            return await handler(request)
        self.sim.requests[f"{request.method} {path}"] += 1
        faults = self.sim.faults
        if not path.startswith("/sim/"):
            if faults.slow_response_s > 0:
                await asyncio.sleep(faults.slow_response_s)
            if faults.roll_http_error(f"{request.method} {path}"):
                if faults.http_error_after_handling:
                    await handler(request)  # done, and its answer lost on the way back
                headers = {} if faults.retry_after_s is None else {"Retry-After": f"{faults.retry_after_s:g}"}
                return web.Response(status=faults.http_error_status, text="simulated failure", headers=headers)
        return await handler(request)

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await _json_or_none(request)
        if not isinstance(body, dict):  # real: request.json() raises, aiohttp answers 500 text/plain
            return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
        queue = self.sim.queue
        if "number" in body:
            number = float(body["number"])
        else:
            number = queue.next_number(front=bool(body.get("front")))
        if "prompt" not in body:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                     "extra_info": {}}
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        try:
            outputs, node_errors = validate_prompt(body["prompt"], body.get("partial_execution_targets"),
                                                   input_exists=self._input_exists,
                                                   node_exists=self.sim.node_classes.__contains__)
        except PromptInvalid as exc:
            return web.json_response(exc.body, status=400)
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        queue.put(QueueItem(number, prompt_id, body["prompt"], extra_data, outputs))
        await self.sim.executor.status()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    def _input_exists(self, name: str) -> bool:
        base = os.path.abspath(self.sim.dirs["input"])
        path = os.path.abspath(os.path.join(base, name))
        return os.path.commonpath([path, base]) == base and os.path.isfile(path)

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self.sim.queue.remaining()}})

    async def get_queue(self, request: web.Request) -> web.Response:
        running = self.sim.queue.running
        return web.json_response({"queue_running": [running.as_list()] if running else [],
                                  "queue_pending": self.sim.queue.pending_items()})

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await _json_or_none(request) or {}
        if body.get("clear"):
            self.sim.queue.clear_pending()
            await self.sim.executor.status()
        for prompt_id in body.get("delete", []):
            if self.sim.queue.delete(prompt_id):
                await self.sim.executor.status()
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        body = await _json_or_none(request)
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        self.sim.executor.interrupt(None if self.sim.config.interrupt_ignores_id else prompt_id)
        return web.Response(status=200)

    async def empty_ok(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def empty_list(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def get_history(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query.get("offset", -1))
        return _encoded_object_response(self.sim.queue.get_history(max_items, offset))

    async def get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.sim.queue.history.get(prompt_id)
        return _encoded_object_response({prompt_id: entry} if entry is not None else {})

    async def post_history(self, request: web.Request) -> web.Response:
        body = await _json_or_none(request) or {}
        if body.get("clear"):
            self.sim.queue.history.clear()
        for prompt_id in body.get("delete", []):
            self.sim.queue.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def get_view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        filename = query.get("filename", "")
        kind = query.get("type", "output")
        if filename.endswith("]") and " [" in filename:
            filename, kind = filename[:-1].rsplit(" [", 1)
        if not filename or filename.startswith("/") or ".." in filename or kind not in self.sim.dirs:
            return web.Response(status=400)
        base = os.path.abspath(self.sim.dirs[kind])
        folder = os.path.abspath(os.path.join(base, query.get("subfolder", "")))
        if os.path.commonpath([folder, base]) != base:
            return web.Response(status=403)
        path = os.path.join(folder, os.path.basename(filename))
        if not os.path.isfile(path):
            return web.Response(status=404)
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return file_response(request, path, content_type)

    async def post_upload(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        kind = str(post.get("type") or "input")
        subfolder = str(post.get("subfolder") or "")
        if not isinstance(image, web.FileField) or not image.filename or kind not in self.sim.dirs:
            return web.Response(status=400)
        base = os.path.abspath(self.sim.dirs[kind])
        folder = os.path.abspath(os.path.join(base, os.path.normpath(subfolder)))
        if os.path.commonpath([folder, base]) != base:
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        data = image.file.read()
        name = os.path.basename(image.filename)
        overwrite = str(post.get("overwrite", "")).lower() in ("true", "1")
        if not overwrite:
            name = _dedupe_name(folder, name, data)
        target = os.path.join(folder, name)
        if overwrite or not os.path.exists(target):  # ComfyUI leaves an identical file be
            with open(target, "wb") as fh:
                fh.write(data)
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def get_system_stats(self, request: web.Request) -> web.Response:
        system = {"os": os.name, "ram_total": 32 * 1024**3, "ram_free": 16 * 1024**3,
                  "comfyui_version": "0.3.64", "required_frontend_version": "1.27.10",
                  "installed_templates_version": "0.1.95", "required_templates_version": "0.1.95",
                  "python_version": sys.version, "pytorch_version": "2.8.0+sim", "embedded_python": False,
                  "argv": ["main.py", "--simulator", self.sim.config.name]}
        device = {"name": f"cuda:0 {self.sim.config.name} (simulated)", "type": "cuda", "index": 0,
                  "vram_total": VRAM_TOTAL, "vram_free": VRAM_TOTAL // 2,
                  "torch_vram_total": VRAM_TOTAL // 4, "torch_vram_free": VRAM_TOTAL // 8}
        return web.json_response({"system": system, "devices": [device]})

    async def get_features(self, request: web.Request) -> web.Response:
        return web.json_response(SERVER_FEATURES)

    async def get_object_info(self, request: web.Request) -> web.Response:
        info = object_info(self.sim.node_classes)
        wanted = request.match_info.get("node_class")
        if wanted is not None:
            return web.json_response({wanted: info[wanted]} if wanted in info else {})
        return web.json_response(info)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if self.sim.faults.refuse_websocket:
            return web.Response(status=503, text="websocket refused (simulated)")
        ws = web.WebSocketResponse()  # autoping on, no heartbeat: like ComfyUI
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
        conn = Connection(sid, ws, request)
        hub, executor = self.sim.hub, self.sim.executor
        hub.register(conn)
        try:
            status = {"status": {"exec_info": {"queue_remaining": self.sim.queue.remaining()}}, "sid": sid}
            await hub.send("status", status, sid)
            if executor.client_id == sid and executor.last_node_id is not None:
                await hub.send("executing", {"node": executor.last_node_id}, sid)
            first_message = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if first_message and isinstance(data, dict) and data.get("type") == "feature_flags":
                    conn.feature_flags = dict(data.get("data") or {})
                    await hub.send("feature_flags", SERVER_FEATURES, sid)
                first_message = False
        finally:
            hub.unregister(conn)
        return ws

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.faults.as_dict())

    async def post_faults(self, request: web.Request) -> web.Response:
        body = await _json_or_none(request)
        if not isinstance(body, dict):
            return web.json_response({"error": "expected a JSON object"}, status=400)
        refuse_for_s = body.pop("refuse_for_s", None)
        refusing = body.pop("refuse_connections", None)
        try:
            self.sim.faults.update(body)
        except KeyError as exc:
            return web.json_response({"error": str(exc.args[0])}, status=400)
        if refuse_for_s is not None or refusing:
            self.sim.refuse_for(None if refuse_for_s is None else float(refuse_for_s))
        return web.json_response(self.sim.faults.as_dict())

    async def post_restart(self, request: web.Request) -> web.Response:
        async def restart_soon() -> None:
            await asyncio.sleep(0.05)  # let this response go out before connections are cut
            await self.sim.restart()
        self.sim.spawn(restart_soon())
        return web.json_response({"restarting": True})

    async def get_progress_sends(self, request: web.Request) -> web.Response:
        """[prompt_id, node, value, max, unix time just before sending] per progress frame."""
        return web.json_response([list(entry) for entry in self.sim.executor.progress_sends])

    async def get_requests(self, request: web.Request) -> web.Response:
        """How many requests of each "METHOD /path" this server answered ("WS connect" too)."""
        return web.json_response(dict(self.sim.requests))

    async def get_records(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.sim.records])


def _encoded_object_response(encoded: dict[str, str]) -> web.Response:
    """`web.json_response` of a dict whose values are JSON text already: the same bytes."""
    text = "{" + ", ".join(f"{json.dumps(key)}: {value}" for key, value in encoded.items()) + "}"
    return web.Response(text=text, content_type="application/json")


def _dedupe_name(folder: str, name: str, data: bytes) -> str:
    """ComfyUI's upload naming: reuse an identical file, else append ` (1)`, ` (2)`..."""
    stem, ext = os.path.splitext(name)
    candidate, index = name, 1
    while os.path.exists(os.path.join(folder, candidate)):
        if _holds(os.path.join(folder, candidate), data):
            return candidate
        candidate = f"{stem} ({index}){ext}"
        index += 1
    return candidate


def _holds(path: str, data: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read() == data
