"""Run ComfyUI servers on this machine as supervised children of ``comfyfleet serve``.

Each ``[[local]]`` entry of the backends file (``fleetfile.LocalSpec``) is a command (``{port}``
in it is replaced) that starts one ComfyUI listening on 127.0.0.1:port; the entry is also a
backend of the fleet at that address. The supervisor:

- refuses to start when another program already listens on its port (the fleet would send
  that program the backend's prompts);
- starts it, its output appended to ``<data-dir>/local/<name>.log`` and its pid in
  ``<name>.pid``;
- restarts it when it exits or is killed (first stopping what the command started that runs on,
  such as a launcher's ComfyUI; a start that fails counts as an exit), with exponential backoff,
  and gives up past the restart
  intensity (more than 5 restarts in 60 s: logged as an error; the backend then reads ``down``
  and its work goes elsewhere);
- recycles it when its resident memory grows past ``max_rss_mb`` (ComfyUI keeps models and
  caches until it is restarted): the backend is set ``draining`` so it takes no new prompt, its
  running prompts finish (up to ``drain_timeout_s``), then it is stopped, started again and set
  ``active``.

The command leads a process group of its own (a session), and stopping it signals the whole
group: a command that is a shell or launcher script running ComfyUI as its child stops with it.

What a ``serve`` that died (even by SIGKILL) left behind is mended when the next one starts: a
server still running from the command in ``<name>.pid`` (ComfyUI runs in its own session, so it
outlives ``serve``) is stopped, with its group, before a new one starts, and a backend left ``draining`` by a
recycle (``<name>.recycling`` marks one in progress) is set ``active`` again. A drain an operator
asked for carries no mark and is left alone.

One ``serve`` runs an entry at a time: it holds an exclusive lock on ``<name>.lock`` while it
supervises the server (the kernel lets go of it when ``serve`` dies, however it dies). A second
``serve`` on the same data dir is refused with a plain error instead of taking the first one's
server for an orphan and stopping it.

Jobs running on a server that dies are not lost: their runners find the prompt gone and retry
it, as on any backend restart. Only ``serve`` runs this; ``api`` and ``worker`` processes never
start ComfyUI.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..domain.policy import RestartIntensity
from ..errors import ComfyFleetError

log = logging.getLogger(__name__)
HOST = "127.0.0.1"  # where every local server listens


@dataclass(frozen=True, slots=True)
class LocalSpec:
    name: str
    command: tuple[str, ...]  # "{port}" anywhere in an argument is replaced
    port: int
    env: dict[str, str] = field(default_factory=dict)
    max_rss_mb: int | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def argv(self) -> list[str]:
        return [part.replace("{port}", str(self.port)) for part in self.command]


@dataclass(frozen=True, slots=True)
class LocalSettings:
    check_every_s: float = 2.0
    stop_grace_s: float = 10.0
    drain_timeout_s: float = 3600.0
    backoff_base_s: float = 0.5


def resident_mb(pid: int) -> float | None:
    """The process's resident memory in MiB (Linux ``/proc``); None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def port_taken(port: int) -> bool:
    """Whether a program listens on ``HOST:port`` (a closed connection's leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return True
    return False


def group_alive(pgid: int) -> bool:
    """Some process of the group ``pgid`` is still there (a zombie counts until reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def running_command(pid: int) -> list[str] | None:
    """The command line of a live process (Linux ``/proc``); None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] or None


class LocalComfyUI:
    """One supervised ComfyUI process. ``start()``, then ``stop()``."""

    def __init__(self, spec: LocalSpec, fleet, *, run_dir: Path,  # type: ignore[no-untyped-def]
                 settings: LocalSettings = LocalSettings(),
                 intensity: RestartIntensity | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._fleet = fleet  # a FleetStore: drain, load, re-enable
        self._run_dir = Path(run_dir)
        self._settings = settings
        self._intensity = intensity or RestartIntensity()
        self._clock = clock
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.recycles = 0
        self.given_up = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock: IO[str] | None = None

    async def start(self) -> None:
        self._run_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            await self._take_over()
        except BaseException:
            self._release_lock()
            raise
        self._task = asyncio.create_task(self._supervise(), name=f"local-comfyui-{self.spec.name}")

    async def _take_over(self) -> None:
        await self._stop_orphan()
        if self._recycle_mark.exists():
            log.warning("local ComfyUI %s: the last serve died while recycling it; setting it active",
                        self.spec.name)
            await self._set_state("active")
            self._recycle_mark.unlink(missing_ok=True)
        if port_taken(self.spec.port):  # else the fleet would send this backend's prompts there
            raise ComfyFleetError(
                f"cannot start local ComfyUI {self.spec.name}: port {self.spec.port} of {HOST} is "
                f"already in use by another program; stop it, or give the entry another port")
        await self._spawn()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self._terminate()
        finally:
            self._release_lock()

    # -- one serve per entry -------------------------------------------------------------------
    def _take_lock(self) -> None:
        path = self._run_dir / f"{self.spec.name}.lock"
        try:
            fh = open(path, "a+", encoding="ascii")  # noqa: SIM115 - held while supervising
        except OSError as exc:
            raise ComfyFleetError(f"cannot open {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ComfyFleetError(
                f"local ComfyUI {self.spec.name} is already run by another comfyfleet serve "
                f"(pid {holder}) on the data dir {self._run_dir.parent}: stop that one, or give "
                f"this one its own --data-dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._lock = fh

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing lets go of the lock
            self._lock = None

    # -- the loop ------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        while not self._stopping:
            assert self.process is not None
            try:
                async with asyncio.timeout(self._settings.check_every_s):  # not wait_for: see store.connection
                    await self.process.wait()
            except TimeoutError:
                if self._too_big():
                    await self._recycle()
                continue
            if self._stopping:
                return
            log.warning("local ComfyUI %s exited with code %s", self.spec.name, self.process.returncode)
            await self._terminate()  # what it started may live on (a launcher's ComfyUI, on the port)
            if not self._intensity.record(self._clock()):
                self.given_up = True
                log.error("local ComfyUI %s: more than %d restarts in %.0f s; not restarting it",
                          self.spec.name, self._intensity.max_restarts, self._intensity.window_s)
                return
            await asyncio.sleep(self._intensity.backoff_s(base_s=self._settings.backoff_base_s))
            try:
                await self._spawn()
            except ComfyFleetError as exc:  # its command gone, say: a failed restart like an exit
                log.error("%s", exc)
                continue
            self.restarts += 1

    def _too_big(self) -> bool:
        if self.spec.max_rss_mb is None or self.process is None:
            return False
        rss = resident_mb(self.process.pid)
        return rss is not None and rss > self.spec.max_rss_mb

    async def _recycle(self) -> None:
        name = self.spec.name
        log.warning("local ComfyUI %s holds over %d MiB: draining it, then restarting it",
                    name, self.spec.max_rss_mb)
        self._recycle_mark.write_text(str(os.getpid()))
        await self._set_state("draining")
        deadline = self._clock() + self._settings.drain_timeout_s
        while self._clock() < deadline and (await self._fleet.leases.loads([name])).get(name, 0) > 0:
            await asyncio.sleep(self._settings.check_every_s / 4)
        await self._terminate()
        await self._spawn()
        self.recycles += 1
        await self._set_state("active")
        self._recycle_mark.unlink(missing_ok=True)

    @property
    def _recycle_mark(self) -> Path:
        return self._run_dir / f"{self.spec.name}.recycling"

    async def _set_state(self, state: str) -> None:
        try:
            await self._fleet.update(self.spec.name, state=state)
        except ComfyFleetError as exc:  # removed by an operator, or the store away: run it anyway
            log.warning("local ComfyUI %s: could not set it %s: %s", self.spec.name, state, exc)

    # -- the process ---------------------------------------------------------------------------
    async def _spawn(self) -> None:
        logfile = open(self._run_dir / f"{self.spec.name}.log", "ab")  # noqa: SIM115 - the child holds it
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.spec.argv(), stdin=asyncio.subprocess.DEVNULL, stdout=logfile,
                stderr=asyncio.subprocess.STDOUT, env={**os.environ, **self.spec.env},
                start_new_session=True)  # a Ctrl-C to serve's group is not also ComfyUI's
        except OSError as exc:
            raise ComfyFleetError(f"cannot start local ComfyUI {self.spec.name} "
                                  f"({self.spec.argv()[0]}): {exc.strerror or exc}") from None
        finally:
            logfile.close()
        (self._run_dir / f"{self.spec.name}.pid").write_text(str(self.process.pid))
        log.info("local ComfyUI %s started (pid %d) on %s", self.spec.name, self.process.pid, self.spec.url)

    async def _stop_orphan(self) -> None:
        """Stop the server a dead ``serve`` left running: the pid in ``<name>.pid``, if that
        process still runs this entry's command (a pid reused by anything else is left alone)."""
        try:
            pid = int((self._run_dir / f"{self.spec.name}.pid").read_text())
        except (OSError, ValueError):
            return
        if running_command(pid) != self.spec.argv():
            return
        log.warning("local ComfyUI %s: stopping pid %d, left running by a serve that died", self.spec.name, pid)
        try:
            leads_group = os.getpgid(pid) == pid  # ours lead a group: the server and its children
        except ProcessLookupError:
            return
        for signum, wait_s in ((signal.SIGTERM, self._settings.stop_grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, signum) if leads_group else os.kill(pid, signum)
            except ProcessLookupError:
                return
            deadline = self._clock() + wait_s
            while self._clock() < deadline:
                if not (group_alive(pid) if leads_group else running_command(pid) == self.spec.argv()):
                    return  # gone (or zombies: the port is free)
                await asyncio.sleep(0.05)

    async def _terminate(self) -> None:
        """Stop the server and whatever it started: the command (a shell or launcher script
        may run ComfyUI as its child) leads a process group of its own, which is signalled
        whole: SIGTERM, then SIGKILL past the grace period."""
        process = self.process
        if process is None:
            return
        group = process.pid
        if process.returncode is not None and not group_alive(group):
            return
        signal_group(group, signal.SIGTERM)
        try:
            async with asyncio.timeout(self._settings.stop_grace_s):
                await process.wait()
                while group_alive(group):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            signal_group(group, signal.SIGKILL)
            await process.wait()
