"""A content-addressed blob store on the local file system.

Blobs are named by digest, ``sha256:<hex>``, and live at ``root/sha256/ab/cdef…`` (the first two
hex characters are a fan-out directory). The content type sits beside each blob in a sidecar
file ``<blob>.type``. Writes go to a temporary file in the same directory and are renamed into
place, so a reader never sees a half-written blob and two writers of the same bytes agree.
All file I/O runs in a thread (``asyncio.to_thread``) so the event loop is never blocked. A
write the file system has no room for (full, over quota, past the file size limit) raises
``BlobStoreFull`` and leaves no partial file behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ComfyFleetError

ALGORITHM = "sha256"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
TYPE_SUFFIX = ".type"
TRASH_PREFIX = ".removing-"  # a blob being removed, renamed aside (dot files are no blobs)
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


# the OS saying there is no room: no space left, over quota, a file past RLIMIT_FSIZE
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class BlobNotFound(ComfyFleetError, LookupError):
    """No blob with that digest."""


class BlobStoreFull(ComfyFleetError):
    """The file system holding the blobs has no room for this one."""


def is_no_room(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_ROOM_ERRNOS


@contextlib.contextmanager
def _room_needed() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if is_no_room(exc):
            raise BlobStoreFull(f"no room to store a blob: {exc.strerror}") from exc
        raise


def digest_of(data: bytes) -> str:
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def parse_digest(digest: str) -> str | None:
    """The hex part of a well-formed ``sha256:<hex>`` digest, else ``None``."""
    match = _DIGEST.match(digest.strip().lower()) if isinstance(digest, str) else None
    return match.group(1) if match else None


class LocalBlobStore:
    """``ports.BlobStore`` over a directory."""

    def __init__(self, root: Path | str) -> None:
        self._root = Path(root)

    @property
    def root(self) -> Path:
        return self._root

    def path(self, digest: str) -> str:
        """Where the blob lives (whether or not it exists); ``ValueError`` for a bad digest."""
        return str(self._path(digest))

    async def put(self, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        digest = digest_of(data)
        with _room_needed():
            await asyncio.to_thread(self._write, self._path(digest), data, content_type)
        return digest

    async def open(self, digest: str) -> bytes:
        """The blob's bytes; ``BlobNotFound`` when absent."""
        return await asyncio.to_thread(self._read, self._path_or_missing(digest))

    async def read_range(self, digest: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``; ``BlobNotFound`` when absent."""
        return await asyncio.to_thread(self._read, self._path_or_missing(digest), start, length)

    async def size(self, digest: str) -> int:
        path = self._path_or_missing(digest)
        try:
            return (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    async def exists(self, digest: str) -> bool:
        if parse_digest(digest) is None:
            return False
        return await asyncio.to_thread(self._path(digest).is_file)

    async def refresh(self, digest: str) -> bool:
        """The blob is wanted now (a hold was just written for it): cleanup's grace starts over,
        and a pass that was about to delete it keeps it. ``False`` when it is not there (gone
        before the hold counted)."""
        if parse_digest(digest) is None:
            return False
        try:
            await asyncio.to_thread(os.utime, self._path(digest))
        except FileNotFoundError:
            return False
        return True

    async def content_type(self, digest: str) -> str:
        """The content type given to ``put``; ``BlobNotFound`` when the blob is absent."""
        path = self._path_or_missing(digest)
        return await asyncio.to_thread(self._read_type, path, digest)

    async def delete(self, digest: str) -> bool:
        """Remove the blob and its sidecar; ``True`` if it existed."""
        if parse_digest(digest) is None:
            return False
        return await asyncio.to_thread(self._remove, self._path(digest))

    async def delete_if_stale(self, digest: str, older_than: float) -> bool:
        """Remove the blob unless it was written or stored again since ``older_than`` (a time):
        ``True`` if removed. Safe against a writer of the same bytes at any moment (see
        ``_remove_if_stale``)."""
        if parse_digest(digest) is None:
            return False
        return await asyncio.to_thread(self._remove_if_stale, self._path(digest), older_than)

    def writer(self) -> BlobWriter:
        """A blob written piece by piece (an upload), named when committed."""
        return BlobWriter(self)

    def drop_stale_incoming(self, older_than: float) -> int:
        """Remove uploads a killed process left half-written, and blobs it left renamed aside
        while removing them (blocking); how many."""
        dropped = 0
        leftovers = (*(self._root / ".incoming").glob(".tmp-*"),
                     *(self._root / ALGORITHM).glob(f"*/{TRASH_PREFIX}*"))  # a removal cut short
        for path in leftovers:
            try:
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    dropped += 1
            except FileNotFoundError:
                continue
        return dropped

    def iter_digests(self) -> Iterator[str]:
        """Every stored digest (a blocking directory walk; call it from a thread if large)."""
        base = self._root / ALGORITHM
        if not base.is_dir():
            return
        for fan in sorted(base.iterdir()):
            if not fan.is_dir():
                continue
            for entry in sorted(fan.iterdir()):
                name = entry.name
                if entry.is_file() and not name.endswith(TYPE_SUFFIX) and not name.startswith("."):
                    digest = f"{ALGORITHM}:{fan.name}{name}"
                    if parse_digest(digest):
                        yield digest

    # -- blocking helpers (run in threads) ---------------------------------------------------
    def _path(self, digest: str) -> Path:
        hexpart = parse_digest(digest)
        if hexpart is None:
            raise ValueError(f"not a {ALGORITHM} digest: {digest!r}")
        return self._root / ALGORITHM / hexpart[:2] / hexpart[2:]

    def _path_or_missing(self, digest: str) -> Path:
        try:
            return self._path(digest)
        except ValueError:
            raise BlobNotFound(digest) from None

    @staticmethod
    def _write(path: Path, data: bytes, content_type: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.utime(path)  # already stored: fresh again, so cleanup's grace starts over
        except FileNotFoundError:
            _atomic_write(path, data)
        LocalBlobStore._write_type(path, content_type)  # after the blob: a lone sidecar stays for good

    @staticmethod
    def _write_type(path: Path, content_type: str) -> None:
        sidecar = path.with_name(path.name + TYPE_SUFFIX)
        try:
            unchanged = sidecar.read_bytes() == content_type.encode()
        except FileNotFoundError:
            unchanged = False
        if not unchanged:  # the same bytes stored again mostly come with the same type
            _atomic_write(sidecar, content_type.encode())

    @staticmethod
    def _read(path: Path, start: int = 0, length: int | None = None) -> bytes:
        try:
            with path.open("rb") as fh:
                if start:
                    fh.seek(start)
                return fh.read() if length is None else fh.read(length)
        except FileNotFoundError:
            raise BlobNotFound(str(path)) from None

    @staticmethod
    def _read_type(path: Path, digest: str) -> str:
        if not path.is_file():
            raise BlobNotFound(digest)
        try:
            return path.with_name(path.name + TYPE_SUFFIX).read_text().strip() or DEFAULT_CONTENT_TYPE
        except FileNotFoundError:
            return DEFAULT_CONTENT_TYPE

    @staticmethod
    def _remove_if_stale(path: Path, older_than: float) -> bool:
        """A writer of bytes already stored refreshes the blob's time and counts it stored (else
        writes it): the blob is first renamed aside (a writer coming after that writes it
        anew), then its time is looked at again, and a blob a writer refreshed meanwhile is put
        back rather than lost."""
        aside = path.with_name(TRASH_PREFIX + path.name)
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return False
        try:
            fresh = aside.stat().st_mtime >= older_than
        except FileNotFoundError:
            return False  # another pass removed it
        if fresh:  # stored again since the pass looked: keep it
            try:
                os.link(aside, path)
            except FileExistsError:
                pass  # a writer wrote it anew meanwhile: the same bytes
            aside.unlink()
            return False
        aside.unlink()
        if not path.exists():  # else written anew meanwhile, with its type
            path.with_name(path.name + TYPE_SUFFIX).unlink(missing_ok=True)
        return True

    @staticmethod
    def _remove(path: Path) -> bool:
        path.with_name(path.name + TYPE_SUFFIX).unlink(missing_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class BlobWriter:
    """Streams one blob to a temporary file beside the store, hashing as it goes; ``commit``
    moves it into place under its digest (or drops it when those bytes are already stored).
    The first ``SPILL_BYTES`` stay in memory: a small blob costs one trip to a thread, as ``put``."""

    SPILL_BYTES = 1 << 20

    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        self._hash = hashlib.sha256()
        self.size = 0
        self._held: list[bytes] = []
        self._file = None
        self._tmp: Path | None = None

    async def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)
        if self._file is None and self.size <= self.SPILL_BYTES:
            self._held.append(chunk)
            return
        pending = [*self._held, chunk]  # the first spill also writes what was held
        self._held = []
        with _room_needed():
            await asyncio.to_thread(self._spill, pending)

    async def commit(self, *, content_type: str = DEFAULT_CONTENT_TYPE) -> tuple[str, bool]:
        """``(digest, created_new)``: False when the store already held these bytes."""
        digest = f"{ALGORITHM}:{self._hash.hexdigest()}"
        path = self._store._path(digest)
        with _room_needed():
            if self._file is None:
                data, self._held = b"".join(self._held), []
                return digest, await asyncio.to_thread(self._place_small, path, data, content_type)
            return digest, await asyncio.to_thread(self._place, path, content_type)

    async def abort(self) -> None:
        self._held = []
        await asyncio.to_thread(self._discard)

    def _spill(self, chunks: list[bytes]) -> None:
        if self._file is None:
            self._open()
        for chunk in chunks:
            self._file.write(chunk)  # type: ignore[union-attr]

    @staticmethod
    def _place_small(path: Path, data: bytes, content_type: str) -> bool:
        created = not path.exists()
        LocalBlobStore._write(path, data, content_type)
        if not created:
            try:
                os.utime(path)  # already stored: fresh again, so cleanup's grace starts over
            except FileNotFoundError:
                LocalBlobStore._write(path, data, content_type)  # removed meanwhile: write it
                created = True
        return created

    def _open(self) -> None:
        incoming = self._store.root / ".incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=incoming, prefix=".tmp-")
        self._file, self._tmp = os.fdopen(fd, "wb"), Path(name)

    def _place(self, path: Path, content_type: str) -> bool:
        assert self._file is not None and self._tmp is not None
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.utime(path)  # already stored: fresh again, so cleanup's grace starts over
                created = False
            except FileNotFoundError:
                os.replace(self._tmp, path)  # the same file system: one atomic rename
                created = True
            LocalBlobStore._write_type(path, content_type)
            return created
        finally:
            self._discard()

    def _discard(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

