"""Settings, read from CLI options and ``COMFYFLEET_*`` environment variables.

Only ``cli.py`` and ``api/app.py`` read this; everything else gets plain values by keyword.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigError
from .store.fleet import BackendRecord


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COMFYFLEET_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    backends: Annotated[list[str], NoDecode] = Field(default_factory=list)  # JSON list or a,b,c
    workers: int = Field(1, ge=0, le=64)
    redis_url: str | None = None  # None: start the embedded Valkey in data_dir
    data_dir: Path = Path(".comfyfleet")
    key_prefix: str = "cf"
    public_base_url: str | None = None
    max_workflow_bytes: int = 5_000_000
    max_workflow_nodes: int = 2000
    progress_throttle_s: float = 1.0
    progress_node_weights: dict[str, dict[str, float]] = Field(default_factory=dict)  # type -> class -> weight
    tracker_watchdog_s: float = Field(30.0, gt=0)
    tracker_poll_min_s: float = Field(1.0, gt=0)
    tracker_poll_max_s: float = Field(5.0, gt=0)
    stats_flush_s: float = Field(1.0, gt=0)  # tracker counters reach GET /api/v2/stats this soon
    retention_s: float = 7 * 86400.0
    active_ttl_s: float = 2 * 3600.0  # a running job's record lives this long past its last heartbeat
    lease_s: float = 6.0  # a job's claim outlives its worker's last heartbeat by this much
    blob_grace_s: float = 3600.0  # an unreferenced blob younger than this is kept
    maintenance_interval_s: float = 600.0  # retention, index and blob cleanup this often
    concurrency: int = 64
    backends_file: Path | None = None  # TOML: [[backends]] and [job_types.*] (see fleetfile.py)
    health_interval_s: float = Field(5.0, gt=0)
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(30.0, ge=0)
    workflow_breaker_failures: int = Field(5, ge=1)  # per (job type, workflow shape)
    workflow_breaker_cooldown_s: float = Field(60.0, ge=0)
    lease_ttl_s: float = Field(30.0, gt=0)

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
    configs: list[BackendRecord] = []
    for index, raw in enumerate(urls, start=1):
        name, _, url = raw.partition("=") if "=" in raw.split("://")[0] else ("", "", raw)
        check_http_url(url, what="backend URL")
        configs.append(BackendRecord(name=name or urlsplit(url).netloc or f"backend-{index}",
                                     url=url.rstrip("/")))
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"backend names must be unique, got {names}")
    return configs


def check_http_url(url: str, *, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{what} {url!r} is not an http(s) URL such as http://127.0.0.1:8188")


def check_redis_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix", "valkey", "valkeys") or not (parts.netloc or parts.path):
        raise ConfigError(f"Redis URL {url!r} is not valid; use redis://host:6379/0")
