"""API keys: who a bearer key belongs to, and whether it may run the fleet.

The keys file is TOML; it holds no key itself, only its SHA-256, so a leaked file grants nothing::

    [[keys]]
    owner = "alice"        # jobs submitted with this key are alice's; she sees only hers
    role = "user"          # user (default) | admin: every job, the backends, /metrics, /stats
    sha256 = "5e8848..."   # of the key; `comfyfleet new-key` makes a key and prints this entry
    max_active = 50        # optional: at most this many of the owner's jobs queued or running

An owner's keys share one cap: the smallest ``max_active`` any of them sets (a key added for the
same owner without one does not lift it).

``KeyRing.lookup`` re-reads the file when it changed (checked at most once a second), so keys can be
added or revoked without a restart; a file that became unreadable or invalid keeps the last good
keys and is logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)

ROLES = ("user", "admin")
KEY_PREFIX = "cfk_"
OWNER = re.compile(r"[A-Za-z0-9_.@+-]{1,128}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
RECHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class KeyHolder:
    owner: str
    role: str = "user"
    max_active: int | None = None  # None: the server's default

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def new_key() -> str:
    """A fresh key: 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_entry(key: str, owner: str, role: str, *, max_active: int | None = None) -> str:
    """The keys-file entry for ``key`` (checked like the file's own entries)."""
    entry = {"owner": owner, "role": role, "sha256": digest(key)}
    if max_active is not None:
        entry["max_active"] = max_active
    holder = _holder(entry, "the new key")
    limit = f"max_active = {holder.max_active}\n" if holder.max_active is not None else ""
    return f'[[keys]]\nowner = "{holder.owner}"\nrole = "{holder.role}"\nsha256 = "{digest(key)}"\n{limit}'


def parse_keys(text: str, where: str) -> dict[str, KeyHolder]:
    """sha256 hex -> holder; ``ConfigError`` naming ``where`` and the entry on any mistake."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"keys"})
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(unknown)}; only [[keys]] entries")
    entries = data.get("keys", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: keys must be [[keys]] entries")
    ring: dict[str, KeyHolder] = {}
    for number, entry in enumerate(entries, 1):
        label = f"{where}: key entry {number}"
        holder = _holder(entry, label)
        hashed = entry["sha256"].lower()
        if hashed in ring:
            raise ConfigError(f"{label}: the same key is listed twice")
        ring[hashed] = holder
    return _shared_caps(ring)


def _shared_caps(ring: dict[str, KeyHolder]) -> dict[str, KeyHolder]:
    """Every key of an owner with the smallest ``max_active`` any key of that owner sets."""
    caps: dict[str, int] = {}
    for holder in ring.values():
        if holder.max_active is not None:
            caps[holder.owner] = min(holder.max_active, caps.get(holder.owner, holder.max_active))
    return {hashed: replace(holder, max_active=caps.get(holder.owner))
            for hashed, holder in ring.items()}


def _holder(entry: object, label: str) -> KeyHolder:
    if not isinstance(entry, dict):
        raise ConfigError(f"{label}: not a table")
    unknown = sorted(set(entry) - {"owner", "role", "sha256", "max_active"})
    if unknown:
        raise ConfigError(f"{label}: unknown field(s) {', '.join(unknown)} (owner, role, sha256, max_active)")
    owner, role, hashed = entry.get("owner"), entry.get("role", "user"), entry.get("sha256")
    if not isinstance(owner, str) or not OWNER.fullmatch(owner):
        raise ConfigError(f"{label}: owner must be 1-128 letters, digits or _ . @ + -")
    if role not in ROLES:
        raise ConfigError(f"{label}: role must be user or admin, not {role!r}")
    if not isinstance(hashed, str) or not SHA256_HEX.fullmatch(hashed.lower()):
        raise ConfigError(f"{label}: sha256 must be the 64 hex digits of the key's SHA-256")
    max_active = entry.get("max_active")
    if max_active is not None and (type(max_active) is not int or not 1 <= max_active <= 1_000_000):
        raise ConfigError(f"{label}: max_active must be a whole number from 1 to 1000000")
    return KeyHolder(owner=owner, role=role, max_active=max_active)


def load_keys(path: Path) -> dict[str, KeyHolder]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no such API keys file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the API keys file {path}: {exc}") from None
    return parse_keys(text, str(path))


class KeyRing:
    """The keys of one file, kept current. ``lookup(key)`` is the key's holder or ``None``."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = Path(path)
        self._clock = clock
        self._stamp = self._file_stamp()
        self._keys = load_keys(self._path)  # a bad file at start is a ConfigError
        self._checked_at = clock()

    def lookup(self, key: str) -> KeyHolder | None:
        self._refresh()
        return self._keys.get(digest(key))

    def __len__(self) -> int:
        return len(self._keys)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self._path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked_at < RECHECK_S:
            return
        self._checked_at = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp  # a bad version is reported once, not every second
        try:
            keys = load_keys(self._path)
        except ConfigError as exc:
            log.error("API keys file changed but cannot be used; keeping the previous keys: %s", exc)
            return
        self._keys = keys
        log.info("API keys reloaded from %s: %d key(s)", self._path, len(keys))
