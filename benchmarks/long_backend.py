"""A light stand-in for a fleet of ComfyUI servers all busy with long prompts.

It answers what reattaching needs and nothing more: ``GET /queue`` lists the given prompt ids as
running, ``GET /history/{id}`` is ``{}`` (not finished), ``/ws`` accepts a socket, sends the
status frame and then stays silent (a long prompt between progress steps), ``POST /interrupt``
and ``POST /queue`` answer 200. ``GET /bench/stats`` counts requests and open sockets.

    python benchmarks/long_backend.py --port 8190 --prompts prompts.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections import Counter

from aiohttp import WSMsgType, web


def build_app(prompt_ids: list[str]) -> web.Application:
    stats: Counter[str] = Counter()
    sockets: set[web.WebSocketResponse] = set()
    queue_body = json.dumps({"queue_running": [[i, pid, {}, {}, []] for i, pid in enumerate(prompt_ids)],
                             "queue_pending": []})

    async def queue(request: web.Request) -> web.Response:
        stats["GET /queue"] += 1
        return web.Response(text=queue_body, content_type="application/json")

    async def history(request: web.Request) -> web.Response:
        stats["GET /history"] += 1
        return web.json_response({})

    async def ok(request: web.Request) -> web.Response:
        stats[f"{request.method} {request.path}"] += 1
        return web.json_response({})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        stats["ws connects"] += 1
        socket = web.WebSocketResponse(heartbeat=None)
        await socket.prepare(request)
        sockets.add(socket)
        try:
            await socket.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": len(prompt_ids)}},
                                                               "sid": request.query.get("clientId")}})
            async for message in socket:
                if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            sockets.discard(socket)
        return socket

    async def bench_stats(request: web.Request) -> web.Response:
        return web.json_response({**stats, "open_sockets": len(sockets)})

    app = web.Application()
    app.router.add_get("/queue", queue)
    app.router.add_post("/queue", ok)
    app.router.add_get("/history/{prompt_id}", history)
    app.router.add_post("/interrupt", ok)
    app.router.add_get("/system_stats", ok)
    app.router.add_get("/ws", ws)
    app.router.add_get("/bench/stats", bench_stats)
    return app


async def serve(port: int, prompt_ids: list[str]) -> None:
    runner = web.AppRunner(build_app(prompt_ids), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    print(f"long backend listening on http://127.0.0.1:{port} with {len(prompt_ids)} prompt(s)", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prompts", required=True, help="JSON list of prompt ids")
    args = parser.parse_args()
    with open(args.prompts, encoding="utf-8") as fh:
        prompt_ids = json.load(fh)
    asyncio.run(serve(args.port, prompt_ids))


if __name__ == "__main__":
    main()
