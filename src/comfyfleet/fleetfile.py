"""The fleet file (TOML): backends, and per job type routing and retry policy.

    [[backends]]
    name = "gpu-1"                      # unique; default: host:port of the URL
    url = "http://10.0.0.5:8188"
    capacity = 2                        # prompts at once (default 1)
    tags = ["sdxl", "lora"]
    headers = { Authorization = "Bearer ..." }   # names are HTTP tokens; no CR, LF, NUL in a value

    [[local]]                           # a ComfyUI on this machine that `serve` starts and supervises
    name = "gpu-0"                      # also a backend, at http://127.0.0.1:<port>
    command = ["python", "/opt/ComfyUI/main.py", "--port", "{port}"]
    port = 8188
    capacity = 1
    tags = ["sdxl"]
    env = { CUDA_VISIBLE_DEVICES = "0" }
    max_rss_mb = 30000                  # recycle it (drain, restart) once it holds more memory

    [job_types.lora_training]           # image, video, edit, faceswap or lora_training
    tags = ["lora"]                     # a backend must have all of these
    fallback = [["a100"], ["h100"]]     # ordered groups of tags; the next when one has none left
    fallback_after = 2                  # failures of a job in a group before it moves on
    max_attempts = 3
    backoff_base_s = 1.0
    backoff_cap_s = 16.0

Every mistake is a ``ConfigError`` naming the file and the entry.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import http_url_parts, http_url_problem
from .domain.job import BUILTIN_JOB_TYPES
from .domain.policy import RetryPolicy
from .errors import ConfigError
from .runtime.local_comfyui import LocalSpec
from .runtime.selection import TypeRouting
from .store.fleet import BackendRecord


@dataclass(frozen=True, slots=True)
class FleetFile:
    backends: tuple[BackendRecord, ...] = ()
    routing: dict[str, TypeRouting] = field(default_factory=dict)
    retry: dict[str, RetryPolicy] = field(default_factory=dict)
    local: tuple[LocalSpec, ...] = ()  # their backends are in ``backends`` too


def load_fleet_file(path: Path) -> FleetFile:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the backends file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the backends file {path} is not UTF-8 text (TOML): {exc.reason} "
                          f"at byte {exc.start}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the backends file {path} is not valid TOML: {exc}") from exc
    return parse_fleet(data, where=str(path))


def parse_fleet(data: dict[str, Any], *, where: str = "backends file") -> FleetFile:
    unknown = sorted(set(data) - {"backends", "job_types", "local"})
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(unknown)}")
    backends = tuple(_backend(entry, f"{where}: backends[{i}]")
                     for i, entry in enumerate(_list(data.get("backends", []), f"{where}: backends")))
    local = [_local(entry, f"{where}: local[{i}]")
             for i, entry in enumerate(_list(data.get("local", []), f"{where}: local"))]
    backends += tuple(record for _, record in local)
    ports = [spec.port for spec, _ in local]
    if len(set(ports)) != len(ports):
        raise ConfigError(f"{where}: each [[local]] needs a port of its own, got {ports}")
    names = [b.name for b in backends]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: backend names must be unique, got {names}")
    routing: dict[str, TypeRouting] = {}
    retry: dict[str, RetryPolicy] = {}
    job_types = data.get("job_types", {})
    if not isinstance(job_types, dict):
        raise ConfigError(f"{where}: job_types must be a table")
    for job_type, entry in job_types.items():
        routing[job_type], retry[job_type] = _job_type(entry, f"{where}: job_types.{job_type}", job_type)
    return FleetFile(backends=backends, routing=routing, retry=retry,
                     local=tuple(spec for spec, _ in local))


class FieldError(ConfigError):
    """A backend entry's ``field`` that cannot work (for the API's error details)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def backend_from(entry: Any, where: str) -> BackendRecord:
    return _backend(entry, where)


def _backend(entry: Any, where: str) -> BackendRecord:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(entry) - {"name", "url", "capacity", "tags", "headers"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    url = entry.get("url")
    parts = http_url_parts(url)
    if parts is None:
        raise FieldError("url", f"{where}: url {url!r} {http_url_problem(url)}")
    name = entry.get("name", parts.netloc)
    if not isinstance(name, str) or not name or len(name) > 100 or any(c in name for c in " /{}\n\t"):
        raise FieldError("name", f"{where}: name {name!r} must be 1-100 characters without spaces, / {{ }}")
    capacity = entry.get("capacity", 1)
    if not isinstance(capacity, int) or isinstance(capacity, bool) or not 1 <= capacity <= 1000:
        raise FieldError("capacity", f"{where}: capacity must be an integer from 1 to 1000, got {capacity!r}")
    tags = entry.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t and "," not in t for t in tags):
        raise FieldError("tags", f"{where}: tags must be a list of non-empty strings without commas")
    headers = entry.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in headers.items()):
        raise FieldError("headers", f"{where}: headers must be a table of strings")
    for key, value in headers.items():
        check_header(key, value, where)
    return BackendRecord(name=name, url=url.rstrip("/"), capacity=capacity, tags=tuple(tags),
                         headers=dict(headers))


# RFC 9110 5.6.2: a field name is a token
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 5.5: no control character in a field value but tab (aiohttp raises ValueError on one)
FORBIDDEN_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
CONTROL_NAMES = {"\r": "a carriage return (CR)", "\n": "a line feed (LF)", "\0": "a NUL"}


def check_header(name: str, value: str, where: str) -> None:
    """A ``FieldError`` unless ``name: value`` can be sent: aiohttp raises ValueError on every
    request whose header value holds CR, LF, NUL or another control character, and a server
    answers 400 to a name that is not a token. The value itself is never shown (a secret)."""
    if not HEADER_NAME.fullmatch(name):
        raise FieldError("headers", f"{where}: header name {name!r} is not a valid HTTP header name "
                                    f"(letters, digits and !#$%&'*+-.^_`|~, no spaces or colons)")
    if (found := FORBIDDEN_IN_VALUE.search(value)) is not None:
        char = found.group()
        said = CONTROL_NAMES.get(char, f"the control character U+{ord(char):04X}")
        hint = " (a token read from a file with its newline?)" if char in "\r\n" else ""
        raise FieldError("headers", f"{where}: the value of header {name!r} holds {said}{hint}; "
                                    f"a header value cannot hold CR, LF, NUL or other control characters")


def _local(entry: Any, where: str) -> tuple[LocalSpec, BackendRecord]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(entry) - {"name", "command", "port", "capacity", "tags", "env", "max_rss_mb"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    command, port = entry.get("command"), entry.get("port")
    if not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command):
        raise ConfigError(f"{where}: command must be a non-empty list of strings, "
                          f"e.g. [\"python\", \"main.py\", \"--port\", \"{{port}}\"]")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port must be an integer from 1 to 65535, got {port!r}")
    env = entry.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ConfigError(f"{where}: env must be a table of strings")
    max_rss = entry.get("max_rss_mb")
    if max_rss is not None and (isinstance(max_rss, bool) or not isinstance(max_rss, int) or max_rss < 1):
        raise ConfigError(f"{where}: max_rss_mb must be a whole number of MiB, got {max_rss!r}")
    record = _backend({"name": entry.get("name", f"local-{port}"), "url": f"http://127.0.0.1:{port}",
                       **{k: entry[k] for k in ("capacity", "tags") if k in entry}}, where)
    return LocalSpec(name=record.name, command=tuple(command), port=port, env=dict(env),
                     max_rss_mb=max_rss), record


WHOLE_NUMBERS = {"fallback_after", "max_attempts"}  # counts; the others are seconds


def _job_type(entry: Any, where: str, job_type: str) -> tuple[TypeRouting, RetryPolicy]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table")
    known = {"tags", "fallback", "fallback_after", "max_attempts", "backoff_base_s", "backoff_cap_s"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    tags = entry.get("tags", [])
    fallback = entry.get("fallback", [])
    if not isinstance(tags, list) or not all(_is_tag(t) for t in tags):
        raise ConfigError(f"{where}: tags must be a list of non-empty strings without commas")
    if not isinstance(fallback, list) or not all(
            isinstance(g, list) and all(_is_tag(t) for t in g) for g in fallback):
        raise ConfigError(f"{where}: fallback must be a list of lists of tags (non-empty strings "
                          f"without commas), e.g. [[\"a100\"], [\"h100\"]]")
    numbers = {}
    for key, default, low in (("fallback_after", 2, 1), ("max_attempts", 3, 1),
                              ("backoff_base_s", 1.0, 0.0), ("backoff_cap_s", 16.0, 0.0)):
        value = entry.get(key, default)
        kinds = int if key in WHOLE_NUMBERS else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value < low:
            what = "a whole number" if key in WHOLE_NUMBERS else "a finite number"
            raise ConfigError(f"{where}: {key} must be {what} >= {low}, got {value!r}")
        numbers[key] = value
    if job_type not in BUILTIN_JOB_TYPES:  # after the entry's own checks: each names its key
        raise ConfigError(f"{where}: unknown job type {job_type!r}; the job types are "
                          f"{', '.join(BUILTIN_JOB_TYPES)}")
    routing = TypeRouting(tags=tuple(tags), fallback=tuple(tuple(g) for g in fallback),
                          fallback_after=int(numbers["fallback_after"]))
    retry = RetryPolicy(max_attempts=int(numbers["max_attempts"]), base_s=float(numbers["backoff_base_s"]),
                        cap_s=float(numbers["backoff_cap_s"]))
    return routing, retry


def _is_tag(value: Any) -> bool:
    """A tag as a backend and ``metadata.tags`` can carry it: a non-empty string without commas."""
    return isinstance(value, str) and bool(value) and "," not in value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be an array of tables ([[backends]])")
    return value
