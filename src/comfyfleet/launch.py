"""The long-running processes: API, worker, and serve (API + supervised workers + embedded Valkey).

Each runs until SIGTERM/SIGINT and then shuts down in two phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from redis import exceptions as rex

from .api.app import ApiServices, ApiSettings, create_app
from .api.context import ApiContext
from .api.node_classes import check_node_classes
from .apikeys import KeyRing
from .comfy.tracker import TrackerSettings
from .config import Settings, check_data_dir, check_redis_url
from .domain.job import Job
from .domain.policy import CircuitBreaker, RestartIntensity
from .domain.spec import policy_for
from .errors import ComfyFleetError, ConfigError, StoreError
from .queue import QueueSettings
from .runtime.dispatcher import DispatchSettings
from .runtime.fleet_admin import FleetAdmin
from .runtime.health import HealthMonitor, HealthSettings
from .runtime.local_comfyui import LocalComfyUI
from .runtime.maintenance import Maintenance, MaintenanceSettings
from .runtime.readings import fleet_health, read_deployment, registered_tracking
from .runtime.recovery import Recovery
from .runtime.runner import Runner, RunnerSettings
from .runtime.supervisor import WorkerSupervisor
from .runtime.worker import Worker, WorkerSettings
from .services import ServiceConfig, Services, open_services
from .store.claims import Claims
from .store.connection import client_url, connect, translated, where, without_password
from .store.embedded import EmbeddedValkey
from .store.stats import TrackingStats

log = logging.getLogger(__name__)

EMBEDDED_CHECK_S = 0.5  # how often serve looks whether its embedded Valkey still runs


def service_config(settings: Settings, redis_url: str) -> ServiceConfig:
    breaker = CircuitBreaker(failure_threshold=settings.breaker_failures,
                             cooldown_s=settings.breaker_cooldown_s)
    workflow = CircuitBreaker(failure_threshold=settings.workflow_breaker_failures, window_s=300.0,
                              cooldown_s=settings.workflow_breaker_cooldown_s)
    dispatch = DispatchSettings(backend_breaker=breaker, workflow_breaker=workflow,
                                routing=settings.fleet_file().routing,
                                model_affinity=settings.model_affinity,
                                affinity_wait_s=settings.affinity_wait_s)
    return ServiceConfig(redis_url=redis_url, data_dir=settings.data_dir,
                         key_prefix=settings.key_prefix,
                         backends=tuple(settings.backend_configs()),
                         active_ttl_s=settings.active_ttl_s, retention_s=settings.retention_s,
                         lease_ttl_s=settings.lease_ttl_s, dispatch=dispatch)


def check_port_free(host: str, port: int) -> None:
    """``host`` is an address of this machine and ``port`` on it is free (any port when 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM,
                                                             0, socket.AI_PASSIVE)[0]
    except (socket.gaierror, ValueError) as exc:  # ValueError: NUL or an over-long label in the name
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(f"cannot listen on {host}:{port}: unknown host ({reason}); check --host") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            hint = {errno.EADDRINUSE: "; is comfyfleet already running? pick another with --port",
                    errno.EADDRNOTAVAIL: f"; {host} is not an address of this machine, check --host"}
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror})"
                              f"{hint.get(exc.errno or 0, '')}") from exc


REDIS_ANSWER_S = 10.0


async def check_redis_answers(url: str) -> None:
    """PING ``url`` once, bounded by ``REDIS_ANSWER_S`` whatever listens there, so a port that
    accepts and never answers (not a Redis, or a hung one) is named as such before anything
    starts."""
    client = connect(url, connect_timeout_s=5.0, read_timeout_s=REDIS_ANSWER_S, max_connections=1)
    try:
        with translated(client, "PING"):
            try:
                async with asyncio.timeout(REDIS_ANSWER_S + 1.0):  # the read timeout ends it first
                    await client.ping()
            except (TimeoutError, rex.TimeoutError):
                raise StoreError(f"Redis at {where(client)} did not answer PING within {REDIS_ANSWER_S:.0f} s; "
                                 f"is a Redis/Valkey server listening there? (--redis-url)") from None
    finally:
        await client.aclose()


def free_port(host: str) -> int:
    """A port nothing listens on right now (for a demo that must know its URL before binding)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def build_app(services: Services, settings: Settings):
    async def enqueue(job: Job) -> None:
        await services.queue.enqueue(job)

    async def cancel_running(job: Job) -> None:
        return None  # the owning runner watches the job's events and interrupts its prompt

    async def health() -> dict:
        return await fleet_health(services)

    retry_by_type = settings.fleet_file().retry

    def job_defaults(job_type: str) -> dict:
        policy = policy_for(job_type)
        retry = retry_by_type.get(job_type)
        return {"max_attempts": retry.max_attempts if retry else policy.max_attempts,
                "deadline_s": policy.deadline_s}

    async def check_classes(workflow: dict, job_type: str, metadata: dict) -> None:
        snapshot = services.dispatcher.snapshot
        if snapshot is None:
            return
        allowed = services.dispatcher.allowed_backends(job_type, metadata)
        where = ("no backend of this fleet" if allowed == snapshot.backends.keys()
                 else "no backend this job's tags allow")
        await check_node_classes(workflow, services.node_catalogs, allowed, where=where)

    api_services = ApiServices(store=services.store, events=services.events, blobs=services.blobs,
                               enqueue=enqueue, cancel_running=cancel_running, health=health,
                               job_defaults=job_defaults, clock=services.clock,
                               tracking_stats=lambda: registered_tracking(services),
                               fleet=FleetAdmin(services),
                               readings=lambda: read_deployment(services),
                               keys=KeyRing(settings.api_keys_file).lookup if settings.api_keys_file else None,
                               uploads=services.uploads, partner_keys=services.partner_keys,
                               check_node_classes=check_classes if settings.check_node_classes else None)
    api_settings = ApiSettings(public_base_url=settings.base_url,
                               max_workflow_bytes=settings.max_workflow_bytes,
                               max_workflow_nodes=settings.max_workflow_nodes,
                               max_upload_bytes=settings.max_upload_bytes,
                               max_active_per_owner=settings.max_active_per_owner,
                               retention_s=settings.retention_s)
    return create_app(api_services, api_settings)


def build_worker(services: Services, settings: Settings) -> Worker:
    worker_id = _worker_id()
    health = HealthMonitor(services.dispatcher, owner=worker_id, catalogs=services.node_catalogs,
                           settings=HealthSettings(interval_s=settings.health_interval_s,
                                                   node_catalog_refresh_s=settings.node_catalog_refresh_s))
    services.dispatcher.health = health
    health.start()
    runner = Runner(store=services.store, events=services.events, blobs=services.blobs,
                    dispatcher=services.dispatcher, worker_id=worker_id,
                    settings=runner_settings(settings),
                    stats=TrackingStats(services.redis, services.keys), cancels=services.cancels,
                    uploads=services.uploads, partner_keys=services.partner_asks.ask)
    claims = Claims(connect(services.config.redis_url, max_connections=4), services.keys,
                    lease_s=settings.lease_s, owns_client=True)
    recovery = Recovery(store=services.store, claims=claims, dispatcher=services.dispatcher,
                        clock=services.clock)

    async def requeue(job_id: str, run_at: float) -> None:
        await services.queue.wake(await services.store.get(job_id))

    return Worker(redis_url=services.config.redis_url, keys=services.keys, runner=runner,
                  claims=claims, recovery=recovery, requeue=requeue,
                  promote_overdue=services.queue.promote_overdue,
                  taken_ids=services.queue.taken_ids, store=services.store,
                  settings=WorkerSettings(concurrency=settings.concurrency, worker_id=worker_id,
                                          busy_recheck_s=settings.lease_s + 1.0,
                                          queue=QueueSettings(lock_duration_ms=int(settings.queue_lock_s * 1000))))


def runner_settings(settings: Settings) -> RunnerSettings:
    tracker = TrackerSettings(watchdog_s=settings.tracker_watchdog_s,
                              poll_min_s=settings.tracker_poll_min_s,
                              poll_max_s=max(settings.tracker_poll_min_s, settings.tracker_poll_max_s),
                              unreachable_grace_s=settings.tracker_unreachable_grace_s)
    return RunnerSettings(progress_throttle_s=settings.progress_throttle_s, tracker=tracker,
                          stats_flush_s=settings.stats_flush_s,
                          node_weights_by_type=settings.progress_node_weights,
                          retry_by_type=settings.fleet_file().retry, retention_s=settings.retention_s)


def maintenance_for(services: Services, settings: Settings) -> Maintenance:
    recovery = Recovery(store=services.store, claims=Claims(services.redis, services.keys,
                                                            lease_s=settings.lease_s),
                        dispatcher=services.dispatcher, clock=services.clock)
    return Maintenance(redis=services.redis, keys=services.keys, store=services.store,
                       blobs=services.blobs, queue=services.queue, recovery=recovery,
                       fleet=services.dispatcher.fleet,
                       workflow_breaker=services.dispatcher.settings.workflow_breaker,
                       node_catalogs=services.node_catalogs,
                       settings=MaintenanceSettings(retention_s=settings.retention_s,
                                                    blob_grace_s=settings.blob_grace_s,
                                                    interval_s=settings.maintenance_interval_s),
                       clock=services.clock)


def _worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@contextlib.asynccontextmanager
async def redis_for(settings: Settings, *, lost: asyncio.Event | None = None) -> AsyncIterator[str]:
    """The configured Redis URL, or an embedded Valkey started in the data dir and started again
    whenever it dies (``lost`` is set if that fails)."""
    if settings.redis_url:
        check_redis_url(settings.redis_url)
        url = client_url(settings.redis_url)  # valkey:// as redis://, for every client of it
        await check_redis_answers(url)
        yield url
        return
    valkey = EmbeddedValkey(settings.data_dir)
    url = await start_embedded(valkey, settings.data_dir)
    keeper = asyncio.create_task(keep_alive(valkey, lost or asyncio.Event()), name="embedded-valkey")
    try:
        yield url
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        await asyncio.to_thread(valkey.stop)


async def keep_alive(valkey: EmbeddedValkey, lost: asyncio.Event) -> None:
    """Supervise the embedded Valkey this process uses (started or adopted from a killed run):
    when it dies, start it again at once (same port, password and AOF: its clients reconnect and
    find every write; another user of it that was quicker is adopted); set ``lost`` if it cannot
    be."""
    while True:
        await asyncio.sleep(EMBEDDED_CHECK_S)
        if not valkey.died():
            continue
        log.warning("the embedded Valkey (pid %s) died; starting it again", valkey.pid)
        try:
            await asyncio.to_thread(valkey.restart)
        except ConfigError as exc:
            log.error("could not start the embedded Valkey again: %s", exc)
            lost.set()
            return
        log.warning("the embedded Valkey is back (pid %s)", valkey.pid)


async def start_embedded(valkey: EmbeddedValkey, data_dir: Path) -> str:
    check_data_dir(data_dir)
    return await asyncio.to_thread(valkey.start)


STREAMS_END_S = 2.0  # what stop() gives open event streams and live feeds to end on their own


@dataclass
class ApiServer:
    server: uvicorn.Server
    task: asyncio.Task
    context: ApiContext | None = None  # the app's (``app.state.api``): told first that we close

    async def stop(self) -> None:
        """Tell open event streams and live feeds that the server closes (each sends what is
        new and ends; a live feed closes with 1001), give them up to ``STREAMS_END_S``, then
        stop uvicorn, which cuts what is still open after ``timeout_graceful_shutdown``. Told
        only in the app's lifespan, which uvicorn runs after that wait, they were cut."""
        if self.context is not None:
            self.context.closing.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STREAMS_END_S):
                    while self.context.open_streams and not self.task.done():
                        await asyncio.sleep(0.02)
        self.server.should_exit = True
        await self.task


async def start_api(app, host: str, port: int) -> ApiServer:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # signals are ours

    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits when it cannot bind; a task must not let that through
            raise ConfigError(f"the API could not start on {host}:{port} (see the log line above)") from None

    task = asyncio.create_task(serve())
    while not server.started:
        if task.done():
            task.result()
            raise ConfigError(f"the API could not start on {host}:{port}")
        await asyncio.sleep(0.02)
    context = getattr(getattr(app, "state", None), "api", None)
    return ApiServer(server, task, context if isinstance(context, ApiContext) else None)


def bound_port(api: ApiServer) -> int:
    for server in api.server.servers:
        for sock in server.sockets:
            return sock.getsockname()[1]
    raise ConfigError("the API is not listening")


async def until_signalled(*, or_when: asyncio.Event | None = None) -> None:
    """Return on SIGTERM or SIGINT, or once ``or_when`` is set."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.ensure_future(stop.wait())]
    if or_when is not None:
        waits.append(asyncio.ensure_future(or_when.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


@contextlib.asynccontextmanager
async def local_comfyuis(settings: Settings, services: Services) -> AsyncIterator[list[LocalComfyUI]]:
    """The backends file's ``[[local]]`` ComfyUI servers, started and supervised while serving."""
    started: list[LocalComfyUI] = []
    try:
        for spec in settings.fleet_file().local:
            local = LocalComfyUI(spec, services.fleet, run_dir=settings.data_dir / "local")
            await local.start()
            started.append(local)
        yield started
    finally:
        await asyncio.gather(*(local.stop() for local in started), return_exceptions=True)


def warn_if_open(settings: Settings) -> None:
    """An API without keys listening beyond this machine is anyone's: say so."""
    if settings.api_keys_file is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"comfyfleet: the API on {settings.host} takes no API key: anyone who can reach it "
              f"may submit, cancel and run the fleet (--api-keys FILE; see `comfyfleet new-key`)",
              file=sys.stderr, flush=True)


async def run_api(settings: Settings) -> None:
    check_port_free(settings.host, settings.port)
    async with redis_for(settings) as url, open_services(service_config(settings, url)) as services:
        api = await start_api(build_app(services, settings), settings.host, settings.port)
        print(f"comfyfleet API on {settings.base_url}", flush=True)
        warn_if_open(settings)
        try:
            await until_signalled()
        finally:
            await api.stop()


async def run_worker(settings: Settings) -> None:
    if not settings.redis_url:
        raise ConfigError("a worker needs --redis-url (the Redis the API uses)")
    check_redis_url(settings.redis_url)
    url = client_url(settings.redis_url)
    await check_redis_answers(url)
    async with open_services(service_config(settings, url)) as services:
        worker = build_worker(services, settings)
        await worker.start()
        housekeeping = asyncio.create_task(maintenance_for(services, settings).loop())
        print(f"comfyfleet worker {worker.worker_id} running", flush=True)
        try:
            await until_signalled()
        finally:
            housekeeping.cancel()
            await worker.stop()


def worker_env(settings: Settings, redis_url: str) -> dict[str, str]:
    """The environment of serve's workers: serve's own, with every setting as serve resolved it
    (its flags included), and the Redis URL (here, not in the arguments every local user sees:
    an embedded Valkey's has its password). A worker reading the raw variables ran with other
    settings than serve and died on one that serve's flag had overridden
    (``COMFYFLEET_PORT=abc serve --port 8080``)."""
    env = dict(os.environ)
    for name in Settings.model_fields:
        variable, value = f"COMFYFLEET_{name.upper()}", getattr(settings, name)
        if value is None:
            env.pop(variable, None)
        elif isinstance(value, (bool, list, dict)):
            env[variable] = json.dumps(value)
        else:
            env[variable] = str(value)
    env["COMFYFLEET_REDIS_URL"] = redis_url
    return env


def worker_argv(settings: Settings) -> list[str]:
    """The worker's arguments; its Redis URL is in its environment (``worker_env``)."""
    argv = ["worker", "--data-dir", str(settings.data_dir), "--key-prefix", settings.key_prefix]
    for backend in settings.backends:
        argv += ["--backend", backend]
    if settings.backends_file:
        argv += ["--backends-file", str(settings.backends_file)]
    return argv


async def run_serve(settings: Settings) -> None:
    check_port_free(settings.host, settings.port)
    gave_up = asyncio.Event()  # a worker was given up on, or the embedded Valkey could not restart
    async with redis_for(settings, lost=gave_up) as url, open_services(service_config(settings, url)) as services, \
            local_comfyuis(settings, services):
        intensity = functools.partial(RestartIntensity, max_restarts=settings.worker_max_restarts,
                                      window_s=settings.worker_restart_window_s)
        supervisor = WorkerSupervisor(worker_argv(settings), count=settings.workers,
                                      env=worker_env(settings, url), intensity=intensity,
                                      on_give_up=lambda _: gave_up.set())
        await supervisor.start()
        try:
            api = await start_api(build_app(services, settings), settings.host, settings.port)
            housekeeping = asyncio.create_task(maintenance_for(services, settings).loop())
            print(f"comfyfleet serving on {settings.base_url} "
                  f"({settings.workers} worker(s), Redis {without_password(url)})", flush=True)
            warn_if_open(settings)
            if not (await services.dispatcher.refresh()).backends:
                print("comfyfleet: no ComfyUI backend is registered; jobs fail until one is added "
                      "(--backend URL, --backends-file, or POST /api/v2/backends)",
                      file=sys.stderr, flush=True)
            try:
                await until_signalled(or_when=gave_up)
            finally:
                supervisor.stopping()
                housekeeping.cancel()
                await api.stop()
        finally:
            await supervisor.stop()
        if gave_up.is_set():  # exit, so that whatever runs serve (systemd, a container) restarts it
            raise ComfyFleetError("a worker process kept dying, or the embedded Valkey could not be "
                                  "started again (see the log above): serve stopped")
