"""Runs one prompt at a time and emits ComfyUI's events in the real order (trace 01-04)."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from ..domain.models import models_of
from .config import PromptRecord, SimConfig
from .faults import Faults
from .filenames import SaveNames
from .hub import SocketHub
from .images import jpeg_bytes
from .nodes import (Interrupted, NodeFailure, current_inputs, execution_order, failure_for,
                    produce_output, signatures, step_seconds, steps_of)
from .queue import PromptQueue, QueueItem, history_extra_data
from .record_log import RecordLog
from .validation import is_output_class


def _now_ms() -> int:
    return int(time.time() * 1000)


def scripted_inputs(prompt: dict) -> dict[str, object]:
    """Each input name's first non-None value in node order: what `Executor._script` looks up."""
    found: dict[str, object] = {}
    for node in prompt.values():
        inputs = node.get("inputs")
        if isinstance(inputs, dict):
            for name, value in inputs.items():
                if value is not None and name not in found:
                    found[name] = value
    return found


class PromptRun:
    """Per-prompt state: status messages, executed nodes, outputs, progress registry."""

    def __init__(self, item: QueueItem) -> None:
        self.item = item
        self.prompt_id = item.prompt_id
        self.client_id = item.client_id
        self.messages: list[list] = []
        self.executed: list[str] = []
        self.outputs: dict[str, dict] = {}
        self.progress: dict[str, dict] = {}
        self.steps_node: str | None = None
        self.socket_dropped = False
        self.socket_deafened = False
        self.scripted = scripted_inputs(item.prompt)

    def node_state(self, node_id: str, value: float, max_: float, state: str,
                   parent: str | None = None) -> None:
        """Replace (never mutate) the node's entry: sent entries can be shared, not copied."""
        self.progress[node_id] = {
            "value": value, "max": max_, "state": state, "node_id": node_id,
            "prompt_id": self.prompt_id, "display_node_id": parent or node_id,
            "parent_node_id": parent, "real_node_id": node_id}

    def history_entry(self, success: bool) -> dict:
        item = self.item
        prompt = [item.number, item.prompt_id, item.prompt, history_extra_data(item.extra_data), item.outputs]
        meta = {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in self.outputs}
        status = {"status_str": "success" if success else "error", "completed": success,
                  "messages": self.messages}
        return {"prompt": prompt, "outputs": self.outputs, "status": status, "meta": meta}


class Executor:
    """The prompt worker: takes items from the queue, executes them, writes history."""

    def __init__(self, config: SimConfig, faults: Faults, queue: PromptQueue, hub: SocketHub,
                 dirs: dict[str, str], records: list[PromptRecord]) -> None:
        self.config = config
        self.faults = faults
        self.queue = queue
        self.hub = hub
        self.dirs = dirs
        self.records = records
        self.record_log = RecordLog(config.record_file, config.name)
        self.save_names = SaveNames()
        self.cache: dict[str, dict | None] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.interrupt_requested = False
        self.current: PromptRecord | None = None
        # (prompt_id, node, value, max, time.time() before its first frame) of every progress step
        self.progress_sends: deque[tuple[str, str, int, int, float]] = deque(maxlen=200_000)

    def reset(self) -> None:
        """Forget the cache and the current prompt (a process restart)."""
        self.cache.clear()
        self.client_id = self.last_node_id = None
        self.interrupt_requested = False
        if self.current is not None and self.current.ended_at is None:
            self.current.ended_at = time.time()
        self.current = None

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Set the flag; with an id, only if that prompt is the running one (server.py:736-766)."""
        running = self.queue.running
        if prompt_id is not None and (running is None or running.prompt_id != prompt_id):
            return
        self.interrupt_requested = True

    async def status(self) -> None:
        await self.hub.send("status", {"status": {"exec_info": {"queue_remaining": self.queue.remaining()}}}, None)

    async def run_forever(self) -> None:
        while True:
            item = await self.queue.take()
            await self.status()
            await self.execute(item)

    async def execute(self, item: QueueItem) -> None:
        run = PromptRun(item)
        record = PromptRecord(item.prompt_id, run.client_id, item.number, time.time(),
                              with_partner_key=bool(item.extra_data.get("api_key_comfy_org")))
        self.records.append(record)
        self.current = record
        self.record_log.write("start", record)
        self.client_id, self.last_node_id, self.interrupt_requested = run.client_id, None, False
        await self._message(run, "execution_start", {"prompt_id": run.prompt_id, "timestamp": _now_ms()})
        prompt = item.prompt
        order = execution_order(prompt, item.outputs)
        sigs = signatures(prompt, order)
        self.cache = {key: ui for key, ui in self.cache.items() if key in sigs.values()}
        cached = [nid for nid in prompt if nid in sigs and sigs[nid] in self.cache]
        await self._message(run, "execution_cached",
                            {"nodes": cached, "prompt_id": run.prompt_id, "timestamp": _now_ms()})
        oom_target = self._oom_target(prompt, order, cached)
        try:
            for node_id in order:
                await self._execute_node(run, node_id, sigs[node_id], oom_target)
        except Interrupted as exc:
            outcome = "interrupted"
            node = prompt[exc.node_id]
            await self._message(run, "execution_interrupted", {
                "prompt_id": run.prompt_id, "node_id": exc.node_id, "node_type": node["class_type"],
                "executed": list(run.executed), "timestamp": _now_ms()}, broadcast=True)
        except NodeFailure as exc:
            outcome = "error"
            await self._message(run, "execution_error", self._error_data(run, exc))
        else:
            outcome = "success"
            await self._message(run, "execution_success", {"prompt_id": run.prompt_id, "timestamp": _now_ms()})
        await self._finish(run, record, outcome)

    async def _finish(self, run: PromptRun, record: PromptRecord, outcome: str) -> None:
        delay_s = max(self.config.history_delay_s, float(self._script(run, "history_delay_s", 0.0)))
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        self.last_node_id = None
        self.queue.task_done(run.item, run.history_entry(outcome == "success"))
        record.ended_at, record.outcome = time.time(), outcome
        self.record_log.write("end", record)
        self.current = None
        await self.status()
        if run.client_id is not None:
            await self.hub.send("executing", {"node": None, "prompt_id": run.prompt_id}, run.client_id)

    async def _message(self, run: PromptRun, kind: str, data: dict, broadcast: bool = False) -> None:
        """ComfyUI's add_message: kept for history, sent to client_id (or broadcast if allowed)."""
        run.messages.append([kind, data])
        if run.client_id is not None or broadcast:
            await self.hub.send(kind, data, run.client_id)

    def _script(self, run: PromptRun, name: str, default: object = None) -> object:
        """A live-progress fault for this prompt: an input of that name on any of its nodes,
        else the server's fault, else `default`."""
        value = run.scripted.get(name)
        if value is None:
            value = getattr(self.faults, name)
        return default if value is None else value

    async def _progress_state(self, run: PromptRun) -> None:
        if not self._script(run, "legacy_events", self.config.legacy_events):
            nodes = dict(run.progress)
            await self.hub.send("progress_state", {"prompt_id": run.prompt_id, "nodes": nodes}, run.client_id)

    async def _execute_node(self, run: PromptRun, node_id: str, sig: str, oom_target: str | None) -> None:
        node = run.item.prompt[node_id]
        if sig in self.cache:
            if is_output_class(node["class_type"]):
                await self._executed(run, node_id, self.cache[sig])
                run.node_state(node_id, 1, 1, "finished")
                await self._progress_state(run)
            return
        run.node_state(node_id, 0.0, 1.0, "running")
        await self._progress_state(run)
        self.last_node_id = node_id
        if run.client_id is not None:
            await self.hub.send("executing", {"node": node_id, "display_node": node_id,
                                              "prompt_id": run.prompt_id}, run.client_id)
        self._check_interrupt(node_id)
        failure = failure_for(node_id, node, fail_class_type=self.faults.fail_class_type, oom_target=oom_target)
        if failure is not None:
            raise failure
        if self.config.model_load_s > 0 and models_of({node_id: node}):
            # A loader whose output is not cached reads its model from disk (ComfyUI keeps only
            # the last prompt's node outputs: another model in between means loading again).
            await asyncio.sleep(self.config.model_load_s * self.config.time_scale)
            self._check_interrupt(node_id)
            if self.current is not None:
                self.current.models_loaded += 1
        steps = steps_of(node)
        if steps > 0:
            await self._run_steps(run, node_id, node, steps)
        ui = produce_output(node_id, node, run.prompt_id, self.dirs, self.save_names)
        run.executed.append(node_id)
        self.cache[sig] = ui
        await self._executed(run, node_id, ui)
        state = run.progress[node_id]
        run.node_state(node_id, state["max"], state["max"], "finished")
        await self._progress_state(run)

    async def _run_steps(self, run: PromptRun, node_id: str, node: dict, steps: int) -> None:
        run.steps_node = run.steps_node or node_id
        delay_s = step_seconds(node, self.config.step_s) * self.config.time_scale
        previews = bool(node.get("inputs", {}).get("send_preview") is True
                        or self._script(run, "send_previews", self.config.send_previews))
        expand = int(self._script(run, "expand_nodes", 0) or 0)
        if expand <= 0:
            await self._emit_steps(run, node_id, None, range(1, steps + 1), steps, delay_s, previews)
            return
        # Node expansion: the steps run in ephemeral nodes the client never submitted.
        per_child = max(1, steps // expand)
        for k in range(expand):
            child = f"{node_id}.0.{k}"
            first, last = k * per_child + 1, (steps if k == expand - 1 else (k + 1) * per_child)
            run.node_state(child, 0.0, 1.0, "running", parent=node_id)
            await self._progress_state(run)
            await self.hub.send("executing", {"node": child, "display_node": node_id,
                                              "prompt_id": run.prompt_id}, run.client_id)
            await self._emit_steps(run, child, node_id, range(first, last + 1), steps, delay_s,
                                   previews)
            child_max = run.progress[child]["max"]
            run.node_state(child, child_max, child_max, "finished", parent=node_id)
            await self._progress_state(run)
        run.node_state(node_id, steps, steps, "running")

    async def _emit_steps(self, run: PromptRun, emitter: str, parent: str | None, values: range,
                          steps: int, delay_s: float, previews: bool) -> None:
        """Progress frames of `emitter` (the node, or an expanded child of `parent`)."""
        display = parent or emitter
        offset = values.start - 1
        for value in values:
            await asyncio.sleep(delay_s)
            self._check_interrupt(display)
            local, local_max = (value - offset, len(values)) if parent else (value, steps)
            sent_at = time.time()  # before the first frame that carries this step
            run.node_state(emitter, local, local_max, "running", parent=parent)
            await self._progress_state(run)
            image = jpeg_bytes(f"{run.prompt_id}/{emitter}/{value}") if previews else b""
            meta = {"node_id": emitter, "prompt_id": run.prompt_id, "display_node_id": display,
                    "parent_node_id": parent, "real_node_id": emitter, "image_type": "image/jpeg"}
            if previews:
                await self.hub.send_preview(image, meta, run.client_id, with_metadata=True)
            self.progress_sends.append((run.prompt_id, emitter, local, local_max, sent_at))
            await self.hub.send("progress", {"value": local, "max": local_max,
                                             "prompt_id": run.prompt_id, "node": emitter},
                                run.client_id)
            if previews:
                await self.hub.send_preview(image, meta, run.client_id, with_metadata=False)
            self._maybe_drop_socket(run, display, value)

    def _maybe_drop_socket(self, run: PromptRun, node_id: str, value: int) -> None:
        if run.client_id is None or node_id != run.steps_node:
            return
        if value == self._script(run, "drop_socket_at_step") and not run.socket_dropped:
            run.socket_dropped = True
            self.hub.drop(run.client_id)
        if value == self._script(run, "deafen_socket_at_step") and not run.socket_deafened:
            run.socket_deafened = True
            self.hub.deafen(run.client_id)

    async def _executed(self, run: PromptRun, node_id: str, ui: dict | None) -> None:
        if ui is None:
            return
        run.outputs[node_id] = ui
        if run.client_id is not None:
            await self.hub.send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                             "prompt_id": run.prompt_id}, run.client_id)

    def _check_interrupt(self, node_id: str) -> None:
        if self.interrupt_requested:
            self.interrupt_requested = False
            raise Interrupted(node_id)

    def _oom_target(self, prompt: dict, order: list[str], cached: list[str]) -> str | None:
        limit = self.faults.oom_above_nodes
        if limit is None or len(prompt) <= limit:
            return None
        runnable = [nid for nid in order if nid not in cached]
        with_steps = [nid for nid in runnable if steps_of(prompt[nid]) > 0]
        return (with_steps or runnable or [None])[0]

    def _error_data(self, run: PromptRun, exc: NodeFailure) -> dict:
        node = run.item.prompt[exc.node_id]
        return {"prompt_id": run.prompt_id, "node_id": exc.node_id, "node_type": node["class_type"],
                "executed": list(run.executed), "exception_message": exc.exception_message,
                "exception_type": exc.exception_type, "traceback": exc.traceback,
                "current_inputs": current_inputs(node), "current_outputs": list(run.item.prompt),
                "timestamp": _now_ms()}
