"""Supervise worker processes: start N, restart a dead one with backoff, escalate past the
restart intensity (stop restarting that slot and report it), stop them in two phases.

A worker dies with its supervisor: on Linux the kernel sends it SIGTERM when the parent dies,
even by SIGKILL (``PR_SET_PDEATHSIG``). A worker left behind kept running on its own, took jobs
of whatever deployment later answered at its Redis address, and wrote their outputs into the
old data dir."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..domain.policy import RestartIntensity

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def dying_with(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child SIGTERMed when ``parent_pid`` dies (Linux); None
    where the kernel cannot do it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arrange() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # it died before the line above: do now what it would
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange


@dataclass(slots=True)
class WorkerSlot:
    index: int
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    intensity: RestartIntensity = field(default_factory=RestartIntensity)
    given_up: bool = False


class WorkerSupervisor:
    """Runs ``argv`` N times as child processes (``python -m comfyfleet worker ...``)."""

    def __init__(self, argv: list[str], *, count: int, env: Mapping[str, str] | None = None,
                 stop_grace_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 intensity: Callable[[], RestartIntensity] = RestartIntensity,
                 backoff_base_s: float = 0.5,
                 on_give_up: Callable[[int], None] | None = None) -> None:
        self._argv = argv
        self._env = dict(env) if env is not None else None
        self._slots = [WorkerSlot(i, intensity=intensity()) for i in range(count)]
        self._backoff_base_s = backoff_base_s
        self._stop_grace_s = stop_grace_s
        self._clock = clock
        self._on_give_up = on_give_up
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    @property
    def slots(self) -> list[WorkerSlot]:
        return list(self._slots)

    async def start(self) -> None:
        for slot in self._slots:
            await self._spawn(slot)
            self._tasks.append(asyncio.create_task(self._watch(slot)))

    async def _spawn(self, slot: WorkerSlot) -> None:
        slot.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "comfyfleet", *self._argv, stdin=asyncio.subprocess.DEVNULL,
            env=self._env, preexec_fn=dying_with(os.getpid()))
        log.info("worker %d started (pid %d)", slot.index, slot.process.pid)

    async def _watch(self, slot: WorkerSlot) -> None:
        while not self._stopping:
            assert slot.process is not None
            code = await slot.process.wait()
            if self._stopping:
                return
            if not slot.intensity.record(self._clock()):
                slot.given_up = True
                log.error("worker %d died %d times within %.0f s: not restarting it", slot.index,
                          slot.intensity.max_restarts + 1, slot.intensity.window_s)
                if self._on_give_up:
                    self._on_give_up(slot.index)
                return
            delay_s = slot.intensity.backoff_s(base_s=self._backoff_base_s)
            log.warning("worker %d exited with %s; restarting in %.1f s", slot.index, code, delay_s)
            await asyncio.sleep(delay_s)
            slot.restarts += 1
            await self._spawn(slot)

    def stopping(self) -> None:
        """Shutdown has begun: a worker that exits from now on is not restarted (a Ctrl-C in a
        terminal reaches every worker of the process group at once, before ``stop``)."""
        self._stopping = True

    async def stop(self) -> None:
        """SIGTERM every worker (they hand their jobs back), wait the grace period, then SIGKILL."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        alive = [s.process for s in self._slots if s.process and s.process.returncode is None]
        for process in alive:
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self._stop_grace_s):
                await asyncio.gather(*(p.wait() for p in alive))
        except TimeoutError:
            for process in alive:
                if process.returncode is None:
                    log.warning("worker pid %d did not stop in time: killing it", process.pid)
                    process.kill()
            await asyncio.gather(*(p.wait() for p in alive))
