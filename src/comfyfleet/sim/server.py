"""`Simulator`: one ComfyUI-compatible server on a real port, with its lifecycle and faults."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine

from aiohttp import web

from .catalog import DEFAULT_NODE_CLASSES
from .config import PromptRecord, SimConfig
from .executor import Executor
from .faults import Faults
from .hub import SocketHub
from .queue import PromptQueue
from .routes import build_app

log = logging.getLogger(__name__)


class Simulator:
    """A scriptable ComfyUI server. Use `async with Simulator(cfg) as sim:` or start()/stop()."""

    def __init__(self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimConfig()
        self.host = host
        self.port = port
        self.faults = Faults(seed=self.config.name)
        self.node_classes: frozenset[str] = (DEFAULT_NODE_CLASSES if self.config.node_classes is None
                                             else frozenset(self.config.node_classes))
        self.records: list[PromptRecord] = []
        self.requests: Counter[str] = Counter()
        self.queue = PromptQueue()
        self.hub = SocketHub(is_silent=lambda: self.faults.silent)
        self.dirs: dict[str, str] = {}
        self.executor: Executor | None = None
        self._tmp_root: str | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._held_port: socket.socket | None = None  # bound, not listening, while refusing
        self._worker: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def output_dir(self) -> str:
        """Where this server writes its outputs (served by `/view?type=output`)."""
        return self.dirs["output"]

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> Simulator:
        """Bind the port, start the prompt worker; returns once connections are accepted."""
        self._tmp_root = tempfile.mkdtemp(prefix=f"comfyfleet-{self.config.name}-")
        output = self.config.output_dir or os.path.join(self._tmp_root, "output")
        self.dirs = {"output": output, "input": os.path.join(self._tmp_root, "input"),
                     "temp": os.path.join(self._tmp_root, "temp")}
        for folder in self.dirs.values():
            os.makedirs(folder, exist_ok=True)
        self.executor = Executor(self.config, self.faults, self.queue, self.hub, self.dirs, self.records)
        self._runner = web.AppRunner(build_app(self), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen()
        self._worker = asyncio.create_task(self.executor.run_forever(), name=f"{self.config.name}-worker")
        return self

    async def stop(self) -> None:
        """Stop executing, cut every connection, release the port and the temp dirs."""
        for task in list(self._background):
            task.cancel()
        await self._stop_worker()
        if self.executor is not None:
            self.executor.record_log.close()
        self._close_listener()
        self._release_port()
        self._drop_connections()
        if self._runner is not None:
            async with asyncio.timeout(5.0):
                await self._runner.cleanup()
            self._runner = None
        if self._tmp_root is not None:
            shutil.rmtree(self._tmp_root, ignore_errors=True)
            self._tmp_root = None

    async def restart(self) -> None:
        """Like killing and restarting ComfyUI: queue, running prompt, history, cache, counter gone."""
        self._close_listener()
        self._hold_port()
        await self._stop_worker()
        self._drop_connections()
        self.queue.reset()
        self.executor.reset()
        await self._listen()
        self._worker = asyncio.create_task(self.executor.run_forever(), name=f"{self.config.name}-worker")

    async def set_refusing(self, refusing: bool) -> None:
        """Close the listening socket (connects are refused) or reopen it on the same port."""
        self.faults.refuse_connections = refusing
        if refusing:
            self._close_listener()
            self._hold_port()
            self._drop_connections()
        elif self._listener is None:
            await self._listen()

    def refuse_for(self, duration_s: float | None) -> None:
        """Refuse connections shortly, reopening after `duration_s` (never if None); for `/sim/faults`."""
        async def refuse_then_reopen() -> None:
            await asyncio.sleep(0.05)  # let the control response go out first
            await self.set_refusing(True)
            if duration_s is not None:
                await asyncio.sleep(duration_s)
                await self.set_refusing(False)
        self.spawn(refuse_then_reopen())

    async def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Until nothing is pending or running; raises TimeoutError after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            await self.queue.idle.wait()

    def spawn(self, coro: Coroutine) -> None:
        """Run a control action in the background, keeping a reference until it ends."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _listen(self) -> None:
        self._release_port()
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._runner.server, self.host, self.port, reuse_address=True)
        self.port = self._listener.sockets[0].getsockname()[1]

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()  # the socket closes now; not awaiting wait_closed (3.12 waits for clients)
            self._listener = None

    def _hold_port(self) -> None:
        """Keep the port bound without listening: connects are still refused, and no other
        server asking for a free port (another simulator) can be given it until we reopen."""
        family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
        held = socket.socket(family, kind, proto)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            held.bind(address)
        except OSError:  # taken already: nothing to hold
            held.close()
            return
        self._held_port = held

    def _release_port(self) -> None:
        if self._held_port is not None:
            self._held_port.close()
            self._held_port = None

    def _drop_connections(self) -> None:
        """Abort every HTTP and WebSocket connection (sockets see close code 1006)."""
        self.hub.drop()
        server = self._runner.server if self._runner is not None else None
        for handler in server.connections if server is not None else []:
            handler.force_close()

    async def _stop_worker(self) -> None:
        if self._worker is None:
            return
        self._worker.cancel()
        try:
            async with asyncio.timeout(5.0):
                await self._worker
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
        self._worker = None
        if self.executor.current is not None:
            self.executor.current.ended_at = time.time()
        self.queue.abandon_running()
