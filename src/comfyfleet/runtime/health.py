"""Backend health: periodic ``/system_stats`` and ``/queue`` checks with timeouts.

States: healthy; degraded (slow to answer, or less free VRAM than configured); down (no answer,
an error, or a timeout). Draining and disabled are admin states of the registry, shown next to
health. Free VRAM and RAM are recorded. Each interval, one process fleet-wide checks a given
backend (a short Redis claim), so a hundred workers do not probe a pod a hundred times. The
outcome also feeds the backend's circuit breaker: failed checks count with failed jobs; a
successful check clears only the failed checks, and closes a half-open breaker only when failed
checks alone opened it (one that jobs helped open closes on a successful probe job).
``check(name)`` runs a check now (before retrying on the same backend).

A backend that answers also has its node catalog read (``/object_info``: which node classes it
has, for the API to refuse a workflow no backend can run) when none is known, when it has just
come up (a restart is how ComfyUI gains custom nodes), and every ``node_catalog_refresh_s``. The
read runs beside the checks, one per backend at a time and a few at once per process; a failed
one is tried again a tenth of that period later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BackendError, StoreError
from ..store.fleet import BackendHealth
from ..store.node_catalogs import NodeCatalogs
from .dispatcher import Backend, Dispatcher

log = logging.getLogger(__name__)

# /object_info is megabytes on a server with many custom nodes: a process starting beside a
# hundred backends whose classes are not known reads a few at a time, not all at once
CATALOG_READS_AT_ONCE = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSettings:
    interval_s: float = 5.0
    timeout_s: float = 3.0
    degraded_latency_s: float = 2.0
    min_free_vram_bytes: int | None = None
    node_catalog_refresh_s: float = 600.0
    node_catalog_timeout_s: float = 60.0


class HealthMonitor:
    def __init__(self, dispatcher: Dispatcher, *, settings: HealthSettings = HealthSettings(),
                 clock: Callable[[], float] = time.time, owner: str | None = None,
                 catalogs: NodeCatalogs | None = None) -> None:
        self._dispatcher = dispatcher
        self._catalogs = catalogs
        self._reading: dict[str, asyncio.Task] = {}  # backend -> its catalog being read
        self._readers = asyncio.Semaphore(CATALOG_READS_AT_ONCE)
        self._catalog_failed_at: dict[str, float] = {}
        self._fleet = dispatcher.fleet
        self.settings = settings
        self._clock = clock
        self._owner = owner or uuid.uuid4().hex
        self._task: asyncio.Task | None = None
        self._first_round = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="health-checks")

    async def first_round(self, timeout_s: float | None = None) -> None:
        """Wait (bounded) until the first round of checks has been written."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s or self.settings.timeout_s + 1.0):
                await self._first_round.wait()

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._reading.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._reading.clear()

    async def _run(self) -> None:
        spread_s = 0.0  # the first round checks everything at once; later ones spread out
        while True:
            started = time.monotonic()
            try:
                await self.round(spread_s=spread_s)
            except StoreError as exc:
                log.warning("health checks: %s", exc)
            except Exception:  # never the end of every backend's checks: the next round runs
                log.exception("health checks: a round failed")
            self._first_round.set()
            spread_s = self.settings.interval_s
            await asyncio.sleep(max(0.0, self.settings.interval_s - (time.monotonic() - started)))

    async def round(self, *, spread_s: float = 0.0) -> None:
        """Check every backend this process holds the check claim for. With ``spread_s``, the
        checks are spaced evenly over that time instead of all at once, so a large fleet never
        makes one burst of requests and work on this process's event loop stays smooth."""
        snapshot = self._dispatcher.snapshot or await self._dispatcher.refresh()
        names = list(snapshot.backends)
        spacing_s = spread_s / len(names) if names else 0.0

        async def check_in_turn(index: int, name: str) -> None:
            if spacing_s:
                await asyncio.sleep(index * spacing_s)
            try:
                if await self._fleet.claim_check(name, self._owner, self.settings.interval_s * 0.9):
                    await self.check(name)
            except StoreError as exc:
                log.warning("backend %s: health check not recorded: %s", name, exc)
            except Exception:  # one backend's check never ends the others' (nor later rounds)
                log.exception("backend %s: health check failed", name)

        # return_exceptions: nothing should reach it, but if anything does, the others still run
        results = await asyncio.gather(*(check_in_turn(i, name) for i, name in enumerate(names)),
                                       return_exceptions=True)
        for name, result in zip(names, results):
            if isinstance(result, Exception):
                log.error("backend %s: health check failed: %r", name, result)

    async def check(self, name: str) -> BackendHealth:
        """Probe ``name`` now, store the result, feed its breaker, and return it."""
        backend = self._dispatcher.by_name(name)
        if backend is None:
            await self._dispatcher.refresh()
            backend = self._dispatcher.by_name(name)
        if backend is None:
            return BackendHealth(state="down", checked_at=self._clock(), error="unknown backend")
        previous = (self._dispatcher.snapshot.health.get(name) if self._dispatcher.snapshot else None) \
            or BackendHealth()
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                stats = await backend.client.system_stats()
                queue = await backend.client.queue()
            health = self._judge(stats, queue, (time.monotonic() - started) * 1000)
        except (BackendError, TimeoutError) as exc:
            health = self._down(previous, str(exc) or type(exc).__name__)
        except Exception as exc:  # unforeseen: this backend reads down, every other one is checked
            log.warning("backend %s: health check raised %s: %s", name, type(exc).__name__, exc,
                        exc_info=True)
            health = self._down(previous, f"health check failed ({type(exc).__name__}: {exc})")
        changed = health.state != previous.state
        if not await self._fleet.set_health(name, health, publish=changed, url=backend.record.url):
            log.info("backend %s: moved or removed while checked; the check is not kept", name)
            return health
        if self._dispatcher.snapshot is not None:
            self._dispatcher.snapshot.health[name] = health
        if changed:
            log.info("backend %s: %s -> %s", name, previous.state, health.state)
            if health.state == "down":
                await self._dispatcher.memory.forget_warm(name)
        await self._dispatcher.memory.record_backend(name, ok=health.state != "down")
        if self._catalogs is not None and health.state != "down" and name not in self._reading:
            came_up = previous.state in ("unknown", "down")
            self._reading[name] = asyncio.create_task(self._read_catalog(name, backend, came_up=came_up),
                                                      name=f"node-catalog-{name}")
        return health

    def _down(self, previous: BackendHealth, error: str) -> BackendHealth:
        return BackendHealth(state="down", checked_at=self._clock(),
                             consecutive_failures=previous.consecutive_failures + 1, error=error)

    async def _read_catalog(self, name: str, backend: Backend, *, came_up: bool) -> None:
        """Read ``name``'s node catalog if it is due (see the module's doc)."""
        assert self._catalogs is not None
        settings = self.settings
        try:
            now = self._clock()
            if now - self._catalog_failed_at.get(name, float("-inf")) < settings.node_catalog_refresh_s / 10:
                return
            known = (await self._catalogs.catalogs()).get(name)
            if not came_up and known is not None and now - known.read_at < settings.node_catalog_refresh_s:
                return
            async with self._readers:
                classes = await backend.client.node_classes(timeout_s=settings.node_catalog_timeout_s)
            catalog = await self._catalogs.record(name, backend.record.url, classes, self._clock())
            self._catalog_failed_at.pop(name, None)
            if catalog is None:
                log.info("backend %s: moved or removed while its node catalog was read; not kept", name)
            elif known is None or known.digest != catalog.digest:
                log.info("backend %s: %d node classes", name, catalog.count)
        except (BackendError, StoreError, TimeoutError) as exc:
            self._catalog_failed_at[name] = self._clock()
            log.warning("backend %s: could not read its node catalog: %s", name, exc)
        except Exception:
            self._catalog_failed_at[name] = self._clock()
            log.exception("backend %s: could not read its node catalog", name)
        finally:
            self._reading.pop(name, None)

    def _judge(self, stats: dict, queue, latency_ms: float) -> BackendHealth:
        """Health from a ``/system_stats`` answer, read defensively: a number that is not one
        (``"n/a"``, a list, 1e400) is unknown, never an exception."""
        system = stats.get("system") if isinstance(stats.get("system"), dict) else {}
        listed = stats.get("devices")
        devices = [d for d in listed if isinstance(d, dict)] if isinstance(listed, list) else []
        vram_total = _device_sum(devices, "vram_total")
        vram_free = _device_sum(devices, "vram_free")
        state = "healthy"
        if latency_ms > self.settings.degraded_latency_s * 1000:
            state = "degraded"
        minimum = self.settings.min_free_vram_bytes
        if minimum is not None and vram_free is not None and vram_free < minimum:
            state = "degraded"
        return BackendHealth(state=state, checked_at=self._clock(), latency_ms=round(latency_ms, 2),
                             vram_total=vram_total, vram_free=vram_free,
                             ram_total=_int(system.get("ram_total")), ram_free=_int(system.get("ram_free")),
                             queue_running=len(queue.running), queue_pending=len(queue.pending))


def _int(value: object) -> int | None:
    """``value`` as a whole number, or None (unknown) unless it is a finite number >= 0 or a
    string of one."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = value if isinstance(value, int) else float(value)  # type: ignore[arg-type]
        whole = int(number)  # OverflowError on inf, ValueError on nan
    except (TypeError, ValueError, OverflowError):
        return None
    return whole if whole >= 0 else None


def _device_sum(devices: list[dict], key: str) -> int | None:
    """The sum of ``key`` over the devices (one without it counts 0), or None when there are
    none or one's value is not a number."""
    if not devices:
        return None
    total = 0
    for device in devices:
        value = device.get(key)
        if value is None:
            continue
        number = _int(value)
        if number is None:
            return None
        total += number
    return total
