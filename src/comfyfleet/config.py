"""Settings, read from CLI options and ``COMFYFLEET_*`` environment variables.

Only ``cli.py`` and ``api/app.py`` read this; everything else gets plain values by keyword.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigError
from .domain.backends import BackendRecord
from .redact import without_password


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COMFYFLEET_", extra="ignore", allow_inf_nan=False)

    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    backends: Annotated[list[str], NoDecode] = Field(default_factory=list)  # JSON list or a,b,c
    workers: int = Field(1, ge=1, le=64)
    redis_url: str | None = None  # None: start the embedded Valkey in data_dir
    data_dir: Path = Path(".comfyfleet")
    key_prefix: str = "cf"
    public_base_url: str | None = None
    max_workflow_bytes: int = Field(5_000_000, ge=1)
    max_workflow_nodes: int = Field(2000, ge=1)
    max_upload_bytes: int = Field(100 * 1024 * 1024, ge=1)  # one input asset
    max_active_per_owner: int = Field(0, ge=0)  # queued/running jobs per owner; 0: no limit
    progress_throttle_s: float = Field(1.0, ge=0)
    progress_node_weights: dict[str, dict[str, float]] = Field(default_factory=dict)  # type -> class -> weight
    tracker_watchdog_s: float = Field(30.0, gt=0)
    tracker_poll_min_s: float = Field(1.0, gt=0)
    tracker_poll_max_s: float = Field(5.0, gt=0)
    # a running prompt's backend unreachable this long: the attempt is given up and the job
    # retried elsewhere (shorter fails over sooner; longer rides out a network blip without
    # risking the prompt running on two servers)
    tracker_unreachable_grace_s: float = Field(60.0, gt=0)
    stats_flush_s: float = Field(1.0, gt=0)  # tracker counters reach GET /api/v2/stats this soon
    retention_s: float = Field(7 * 86400.0, ge=0)
    # a job not finished is kept this long past its last write (a running job's heartbeat), and
    # at least this long past its deadline (a queued job is not written while it waits)
    active_ttl_s: float = Field(2 * 3600.0, gt=0)
    lease_s: float = Field(6.0, gt=0)  # a job's claim outlives its worker's last heartbeat by this much
    blob_grace_s: float = Field(3600.0, ge=0)  # an unreferenced blob younger than this is kept
    maintenance_interval_s: float = Field(600.0, gt=0)  # retention, index and blob cleanup this often
    concurrency: int = Field(64, ge=1, le=10_000)
    # serve restarts a dead worker process (after 0.5, 1, 2 ... s) up to this many times within
    # the window; one more death and serve stops with exit status 1, for its own supervisor
    worker_max_restarts: int = Field(5, ge=0, le=1000)
    worker_restart_window_s: float = Field(60.0, gt=0)
    queue_lock_s: float = Field(10.0, ge=1, le=3600)  # bullmq's lock on a taken entry (a dead worker's go back after it)
    backends_file: Path | None = None  # TOML: [[backends]] and [job_types.*] (see fleetfile.py)
    api_keys_file: Path | None = None  # TOML: [[keys]] owner, role, sha256 (see apikeys.py); None: open
    health_interval_s: float = Field(5.0, gt=0)
    # Refuse (422) a workflow naming a node class no backend's /object_info lists, read again
    # this often and whenever a backend comes up
    check_node_classes: bool = True
    node_catalog_refresh_s: float = Field(600.0, ge=1)
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(30.0, ge=0)
    workflow_breaker_failures: int = Field(5, ge=1)  # per (job type, workflow shape)
    workflow_breaker_cooldown_s: float = Field(60.0, ge=0)
    lease_ttl_s: float = Field(30.0, gt=0)
    model_affinity: bool = True  # among equally free backends, prefer one holding the job's models
    affinity_wait_s: float = Field(0.0, ge=0, le=3600)  # wait this long for a busy one holding them

    @field_validator("backends", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("backends: not a JSON list; use a JSON list or comma-separated URLs") from None
        if isinstance(value, str):
            return [v for v in (part.strip() for part in value.split(",")) if v]
        return value

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        check_key_prefix(value)
        return value

    @field_validator("public_base_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_http_url(value, what="public URL", example="https://fleet.example.com")
        return value

    @property
    def base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def backend_configs(self) -> list[BackendRecord]:
        """``--backend`` entries plus the backends file's, names unique across both."""
        configs = parse_backends(self.backends) + list(self.fleet_file().backends)
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ConfigError(f"backend names must be unique, got {names}")
        return configs

    def fleet_file(self):
        from .fleetfile import FleetFile, load_fleet_file
        return load_fleet_file(self.backends_file) if self.backends_file else FleetFile()


def parse_backends(urls: list[str]) -> list[BackendRecord]:
    """``http://gpu-1:8188`` or ``name=http://gpu-1:8188`` -> BackendRecord; plain errors otherwise."""
    from .fleetfile import backend_from

    configs: list[BackendRecord] = []
    for raw in urls:
        name, _, url = raw.partition("=") if "=" in raw.split("://")[0] else ("", "", raw)
        check_http_url(url, what="backend URL")
        entry = {"url": url, "name": name} if name else {"url": url}
        configs.append(backend_from(entry, f"backend {raw!r}"))
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"backend names must be unique, got {names}")
    return configs


def http_url_parts(url: object) -> SplitResult | None:
    """The parts of an http(s) URL requests can be sent to (see ``http_url_problem``); else None."""
    return _http_parts(url) if http_url_problem(url) is None else None


def http_url_problem(url: object, *, example: str = "http://127.0.0.1:8188") -> str | None:
    """What is wrong with ``url`` as an http(s) URL to send requests to, as words that follow the
    URL in a message ("is not an http(s) URL such as ...", "has ..."), or None when nothing is:
    an http or https scheme, a host, a numeric port 0-65535 if any, no space or control
    character, and a host name that encodes as one (IDNA: no empty label, none over 63
    characters). aiohttp raises UnicodeError, not a connection error, on a host that does not
    encode, so such a backend could never be reached."""
    parts = _http_parts(url)
    if parts is None:
        return f"is not an http(s) URL such as {example}"
    assert isinstance(url, str) and parts.hostname
    if any(c.isspace() or not c.isprintable() for c in url):
        return "has a space or a control character in it"
    problem = host_problem(parts.hostname)
    return None if problem is None else f"has a host {parts.hostname!r} that {problem}"


def host_problem(host: str) -> str | None:
    """Why ``host`` (a URL's host name, an IPv6 literal without its brackets) cannot be connected
    to, as words that follow "the host", or None."""
    if ":" in host:  # an IPv6 literal: ``urlsplit`` checked it (ipaddress) inside its brackets
        return None
    name = host[:-1] if host.endswith(".") else host  # one trailing dot: a fully qualified name
    labels = name.split(".")
    if not name or not all(labels):
        return "has an empty label (two dots in a row, or a dot first)"
    if any(len(label) > 63 for label in labels):
        return "has a label over 63 characters"
    try:
        encoded = name.encode("idna")
    except UnicodeError as exc:  # a label IDNA cannot encode, or over 63 characters encoded
        return f"is not a valid host name (IDNA: {exc})"
    if len(encoded) > 253:
        return "is longer than 253 characters"
    return None


def _http_parts(url: object) -> SplitResult | None:
    """The parts of an http(s) URL with a host and, if any, a numeric port 0-65535; else None
    (``urlsplit`` itself raises on an unclosed ``[``; ``.port`` on ``:abc`` or ``:99999``)."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts


def check_http_url(url: str, *, what: str, example: str = "http://127.0.0.1:8188") -> None:
    """``http_url_problem`` as a ``ConfigError`` naming ``what``."""
    problem = http_url_problem(url, example=example)
    if problem is not None:
        raise ConfigError(f"{what} {url!r} {problem}")


def check_redis_url(url: str) -> None:
    """redis://host:port/db (rediss, valkey, valkeys) or unix:///path; ``ConfigError`` otherwise."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        parts = None
    ok = parts is not None and parts.scheme in ("redis", "rediss", "unix", "valkey", "valkeys") \
        and bool(parts.netloc or parts.path)
    if ok and parts is not None and parts.scheme != "unix":
        db = parts.path.strip("/")
        ok = bool(parts.hostname) and (db == "" or db.isdigit())
    if not ok:
        raise ConfigError(f"Redis URL {without_password(url)!r} is not valid; use redis://host:6379/0")


KEY_PREFIX = re.compile(r"[A-Za-z0-9_.:{}-]{1,64}")


def check_key_prefix(prefix: str) -> None:
    """1-64 letters, digits and ``_ . : { } -`` (``{cf}`` hash-tags a Redis Cluster deployment)."""
    if not KEY_PREFIX.fullmatch(prefix):
        raise ConfigError(f"key prefix {prefix!r} must be 1-64 letters, digits or _ . : {{ }} - "
                          f"(e.g. cf, or {{cf}} on a Redis Cluster)")


def check_settings(settings: Settings) -> None:
    """Everything about ``settings`` that can be checked before starting anything: the Redis URL,
    the data dir, ``--backend`` entries and the backends file. A ``ConfigError`` says what is wrong."""
    if settings.redis_url:
        check_redis_url(settings.redis_url)
    check_data_dir(settings.data_dir)
    settings.backend_configs()  # parses --backend and the backends file (routing, retry too)
    if settings.api_keys_file is not None:
        from .apikeys import load_keys
        load_keys(settings.api_keys_file)


def check_data_dir(path: Path) -> None:
    """``path`` is a writable directory, or one can be made there (its nearest existing ancestor is)."""
    wanted = Path(path).absolute()
    existing = wanted
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == wanted:
            raise ConfigError(f"the data dir {path} is not a directory; pick another with --data-dir")
        raise ConfigError(f"cannot make the data dir {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to the data dir {path} ({existing} is not writable)")
