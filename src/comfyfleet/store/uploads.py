"""Uploaded input assets: their records, the per-owner blake3 index, and blob holds.

An upload is a record over a blob (``sha256:`` digest in the blob store): ``Keys.upload`` (JSON,
expiring at the upload's ``expires_at``). ``Keys.upload_hash`` maps an owner's content hash to
the blob (until the latest expiry among that owner's uploads of it), so ``HEAD /assets/by-hash``
and ``POST /assets/from-hash`` let a client skip sending bytes it sent before (per owner: whether
someone else holds a file is not told); a job's outputs are in it too, for as long as the job
is kept. ``Keys.blobs_held`` scores each blob digest with the time until which something still needs
it (an upload record, or a queued job that will stage it); cleanup keeps those blobs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import redis.asyncio as aioredis

from ..domain.job import Output

from .connection import translated
from .job_counters import UPLOADED_BYTES_FIELD, UPLOADED_FIELD
from .keys import Keys


@dataclass(frozen=True, slots=True)
class Upload:
    id: str
    owner: str
    digest: str  # sha256:<hex>, the blob's name
    blake3: str  # blake3:<hex>, the contract's content hash
    size_bytes: int
    content_type: str
    file_path: str
    created_at: float
    expires_at: float
    tags: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "tags": list(self.tags)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> "Upload":
        data = json.loads(raw)
        return cls(**{**data, "tags": tuple(data.get("tags") or ())})


@dataclass(frozen=True, slots=True)
class KnownContent:
    """What an owner's blake3 hash stands for."""

    digest: str
    size_bytes: int
    content_type: str


class UploadStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    def _record(self, upload_id: str) -> str:
        return self._keys.upload(upload_id)

    def _by_hash(self, owner: str, blake3: str) -> str:
        return self._keys.upload_hash(owner, blake3)

    @property
    def _held(self) -> str:
        return self._keys.blobs_held

    async def save(self, upload: Upload, *, received_bytes: int = 0) -> None:
        """Store the record, remember the content for its owner, hold the blob until it expires;
        count it (``received_bytes``: what came over the wire, 0 for a mint from a known hash)."""
        known = KnownContent(upload.digest, upload.size_bytes, upload.content_type)
        expire_ms = int(upload.expires_at * 1000)
        with translated(self._redis, "write of an upload"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._record(upload.id), upload.to_json(), pxat=expire_ms)
                self._index(pipe, upload.owner, upload.blake3, known, expire_ms)
                pipe.zadd(self._held, {upload.digest: upload.expires_at}, gt=True)  # GT adds new ones too
                pipe.hincrby(self._keys.job_stats, UPLOADED_FIELD, 1)
                pipe.hincrby(self._keys.job_stats, UPLOADED_BYTES_FIELD, received_bytes)
                await pipe.execute()

    def _index(self, pipe, owner: str, blake3: str, known: KnownContent, expire_ms: int) -> None:  # type: ignore[no-untyped-def]
        """Remember ``blake3`` for ``owner``. The entry lives as long as the longest-lived of
        that owner's assets with these bytes: pushed later when it exists (GT), created with this
        expiry when it does not."""
        by_hash = self._by_hash(owner, blake3.removeprefix("blake3:"))
        pipe.pexpireat(by_hash, expire_ms, gt=True)
        pipe.set(by_hash, json.dumps(asdict(known)), pxat=expire_ms, nx=True)

    async def remember_outputs(self, owner: str, outputs: Iterable[Output], until: float) -> None:
        """Let ``owner`` mint from the bytes of its job's outputs (by their blake3 hash) until
        ``until``, when the job and its outputs are gone."""
        outputs = [o for o in outputs if o.blake3]
        if not outputs:
            return
        with translated(self._redis, "write of the upload hash index"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for output in outputs:
                    self._index(pipe, owner, output.blake3 or "",
                                KnownContent(output.hash, output.size_bytes, output.content_type),
                                int(until * 1000))
                await pipe.execute()

    async def get(self, upload_id: str) -> Upload | None:
        with translated(self._redis, "read of an upload"):
            raw = await self._redis.get(self._record(upload_id))
        return Upload.from_json(raw) if raw else None

    async def delete(self, upload_id: str) -> bool:
        """Forget the record (its blob goes once nothing holds it)."""
        with translated(self._redis, "delete of an upload"):
            return bool(await self._redis.delete(self._record(upload_id)))

    async def known(self, owner: str, blake3: str) -> KnownContent | None:
        with translated(self._redis, "read of the upload hash index"):
            raw = await self._redis.get(self._by_hash(owner, blake3))
        return KnownContent(**json.loads(raw)) if raw else None

    async def hold(self, digests: list[str], until: float) -> None:
        """Keep these blobs at least until ``until`` (a job that will stage them)."""
        if not digests:
            return
        with translated(self._redis, "hold of blobs"):
            await self._redis.zadd(self._held, {digest: until for digest in digests}, gt=True)

    async def held(self, now: float, *, forget_expired: bool = True) -> set[str]:
        """Blobs something still needs; holds that ran out are dropped."""
        with translated(self._redis, "read of blob holds"):
            if forget_expired:
                await self._redis.zremrangebyscore(self._held, "-inf", now)
            return set(await self._redis.zrangebyscore(self._held, now, "+inf"))
