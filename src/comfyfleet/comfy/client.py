"""HTTP client for one ComfyUI server.

Every aiohttp, OS or timeout error (and the ValueError aiohttp raises for a host or a header it
cannot send, see ``transport.TRANSPORT_ERRORS``) and every non-2xx answer is translated here into
the ``BackendError`` tree; nothing above ``comfy/`` sees an aiohttp exception. The
``aiohttp.ClientSession`` is injected (the I/O seam, see ``transport.open_session``); every request
carries a timeout from ``ClientTimeouts``.
"""

from __future__ import annotations

import asyncio

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from ..errors import (
    BackendError,
    BackendProtocolError,
    BackendUnavailable,
    PromptRejected,
)
from .transport import TRANSPORT_ERRORS, ClientTimeouts, translate

UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})


CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete HTTP answer: status and body (and the Content-Range of a ranged one)."""

    status: int
    body: bytes
    content_range: str | None = None


UNKNOWN_SIZE = -1  # ``input_size`` of a file that is there, of a size the answer does not tell


@dataclass(frozen=True, slots=True)
class SubmitResult:
    prompt_id: str
    number: float
    node_errors: dict[str, Any]


@dataclass(frozen=True, slots=True)
class QueueItem:
    number: float
    prompt_id: str
    extra_data: dict[str, Any]
    outputs_to_execute: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueueState:
    running: tuple[QueueItem, ...]
    pending: tuple[QueueItem, ...]

    def find(self, prompt_id: str) -> tuple[str, QueueItem] | None:
        """Return ("running"|"pending", item) for ``prompt_id``, or None when absent."""
        for where, items in (("running", self.running), ("pending", self.pending)):
            for item in items:
                if item.prompt_id == prompt_id:
                    return where, item
        return None

    @property
    def size(self) -> int:
        return len(self.running) + len(self.pending)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A finished prompt as ``/history/{id}`` reports it."""

    prompt_id: str
    outcome: str  # "success" | "error" | "interrupted"
    outputs: dict[str, Any]
    error: dict[str, Any] | None = None  # the execution_error / execution_interrupted data
    outputs_to_execute: tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, prompt_id: str, entry: Mapping[str, Any]) -> "HistoryEntry":
        status = entry.get("status") or {}
        messages = status.get("messages") or []
        last_kind, last_data = None, None
        for message in messages:
            if isinstance(message, (list, tuple)) and len(message) == 2:
                if message[0] in ("execution_success", "execution_error", "execution_interrupted"):
                    last_kind, last_data = message
        if last_kind == "execution_interrupted":
            outcome = "interrupted"
        elif status.get("status_str") == "success" or last_kind == "execution_success":
            outcome = "success"
        else:
            outcome = "error"
        prompt = entry.get("prompt") or []
        targets = tuple(str(x) for x in prompt[4]) if len(prompt) > 4 and prompt[4] else ()
        outputs = entry.get("outputs") or {}
        return cls(prompt_id=prompt_id, outcome=outcome,
                   outputs=outputs if isinstance(outputs, dict) else {},
                   error=last_data if outcome != "success" and isinstance(last_data, dict) else None,
                   outputs_to_execute=targets)


class ComfyClient:
    """One ComfyUI server's HTTP API. ``name`` labels errors and counters."""

    def __init__(self, base_url: str, *, http: aiohttp.ClientSession, name: str | None = None,
                 headers: Mapping[str, str] | None = None,
                 timeouts: ClientTimeouts = ClientTimeouts()) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name or self.base_url
        self._http = http
        self._headers = dict(headers or {}) or None
        self._read_timeout = timeouts.call(timeouts.read_s)
        self._submit_timeout = timeouts.call(timeouts.submit_s)
        self._upload_timeout = timeouts.call(timeouts.download_s)
        self._download_timeout = timeouts.stream()

    # -- prompts -------------------------------------------------------------------------
    async def submit(self, prompt: Mapping[str, Any], *, prompt_id: str, client_id: str,
                     extra_data: Mapping[str, Any] | None = None) -> SubmitResult:
        body = {"prompt": prompt, "prompt_id": prompt_id, "client_id": client_id,
                "extra_data": dict(extra_data or {})}
        answer = await self._request("POST", "/prompt", json=body, timeout=self._submit_timeout,
                                     accept_statuses={400})
        data = self._json(answer)
        if answer.status == 400:
            error = data.get("error") if isinstance(data, dict) else None
            error = error if isinstance(error, dict) else {"type": "invalid_prompt", "message": str(error)}
            raise PromptRejected(
                f"{self.name} rejected the prompt: {error.get('message') or error.get('type')}",
                error_type=str(error.get("type") or "invalid_prompt"),
                node_errors=data.get("node_errors") or {}, backend=self.name)
        if not isinstance(data, dict) or str(data.get("prompt_id")) != prompt_id:
            raise BackendProtocolError(f"{self.name}: unexpected /prompt answer {data!r:.200}",
                                       backend=self.name)
        return SubmitResult(prompt_id=prompt_id, number=data.get("number") or 0,
                            node_errors=data.get("node_errors") or {})

    async def queue(self) -> QueueState:
        data = self._json(await self._request("GET", "/queue"))
        try:
            return QueueState(running=tuple(_queue_item(i) for i in data.get("queue_running", [])),
                              pending=tuple(_queue_item(i) for i in data.get("queue_pending", [])))
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise BackendProtocolError(f"{self.name}: malformed /queue: {exc!r}", backend=self.name) from exc

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        """The finished prompt, or None while ComfyUI does not know it (``{}``)."""
        data = self._json(await self._request("GET", f"/history/{prompt_id}"))
        if not isinstance(data, dict):
            raise BackendProtocolError(f"{self.name}: malformed /history", backend=self.name)
        entry = data.get(prompt_id)
        if not isinstance(entry, dict):
            return None
        try:
            return HistoryEntry.parse(prompt_id, entry)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise BackendProtocolError(f"{self.name}: malformed /history entry: {exc!r}",
                                       backend=self.name) from exc

    async def interrupt(self, prompt_id: str) -> None:
        await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def delete_pending(self, prompt_ids: list[str]) -> None:
        await self._request("POST", "/queue", json={"delete": prompt_ids})

    # -- files and stats -----------------------------------------------------------------
    @asynccontextmanager
    async def download(self, filename: str, *, subfolder: str = "",
                       folder_type: str = "output") -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        """Stream one file from ``/view``: yields (content_type, chunks)."""
        query = urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        try:
            response = await self._http.get(f"{self.base_url}/view?{query}", headers=self._headers,
                                            timeout=self._download_timeout)
        except TRANSPORT_ERRORS as exc:
            raise translate(exc, self.name) from exc
        async with response:
            self._check_status(response.status, response.headers, "GET /view")
            content_type = response.headers.get("content-type", "application/octet-stream")
            yield content_type.split(";")[0].strip(), self._chunks(response)

    async def _chunks(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        except TRANSPORT_ERRORS as exc:
            raise translate(exc, self.name) from exc

    async def upload_image(self, data: bytes | BinaryIO, filename: str, *, folder_type: str = "input",
                           overwrite: bool = False) -> dict[str, Any]:
        """``POST /upload/image`` (any file, despite the name); ComfyUI's answer ``{name, ...}``.
        An open file is sent in chunks as it is read."""
        form = aiohttp.FormData()
        form.add_field("image", data, filename=filename, content_type="application/octet-stream")
        form.add_field("type", folder_type)
        if overwrite:
            form.add_field("overwrite", "true")
        return self._json(await self._request("POST", "/upload/image", data=form,
                                              timeout=self._upload_timeout))

    async def input_exists(self, filename: str, *, size_bytes: int | None = None) -> bool:
        """Whether the input directory holds ``filename`` and, given ``size_bytes``, holds that
        many bytes (a file cut short, or of unknown size, does not count)."""
        size = await self.input_size(filename)
        return size is not None and (size_bytes is None or size == size_bytes)

    async def input_size(self, filename: str) -> int | None:
        """The size of ``filename`` in the input directory (one byte of it is asked for): None
        when there is no such file, ``UNKNOWN_SIZE`` when the answer does not tell."""
        query = urlencode({"filename": filename, "subfolder": "", "type": "input"})
        answer = await self._request("GET", f"/view?{query}", accept_statuses={404, 416},
                                     headers={**(self._headers or {}), "Range": "bytes=0-0"})
        if answer.status == 404:
            return None
        size = _whole_size(answer)  # 416: an empty file is there
        return UNKNOWN_SIZE if size is None else size

    async def system_stats(self) -> dict[str, Any]:
        data = self._json(await self._request("GET", "/system_stats"))
        if not isinstance(data, dict):
            raise BackendProtocolError(f"{self.name}: malformed /system_stats", backend=self.name)
        return data

    async def node_classes(self, *, timeout_s: float = 60.0) -> frozenset[str]:
        """The node classes this server has (the names ``/object_info`` lists). The answer
        describes every input of every node, file lists included: megabytes on a server with
        many custom nodes, built on ComfyUI's event loop, so ask rarely."""
        answer = await self._request("GET", "/object_info", timeout=aiohttp.ClientTimeout(total=timeout_s))
        data = await asyncio.to_thread(self._json, answer)  # megabytes: parsed off the event loop
        if not isinstance(data, dict):
            raise BackendProtocolError(f"{self.name}: malformed /object_info", backend=self.name)
        return frozenset(str(name) for name in data)

    def ws_url(self, client_id: str) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        path = parts.path.rstrip("/") + "/ws"
        return urlunsplit((scheme, parts.netloc, path, urlencode({"clientId": client_id}), ""))

    # -- plumbing --------------------------------------------------------------------------
    async def _request(self, method: str, path: str, *, timeout: aiohttp.ClientTimeout | None = None,
                       accept_statuses: frozenset[int] | set[int] = frozenset(), **kwargs: Any) -> Answer:
        """Send one request and read its whole answer; non-2xx raise unless in ``accept_statuses``."""
        try:
            sent = kwargs.pop("headers", None) or self._headers
            async with self._http.request(method, self.base_url + path, headers=sent,
                                          timeout=timeout or self._read_timeout, **kwargs) as response:
                answer = Answer(response.status, await response.read(), response.headers.get("Content-Range"))
                headers = response.headers
        except TRANSPORT_ERRORS as exc:
            raise translate(exc, self.name) from exc
        if answer.status not in accept_statuses:
            self._check_status(answer.status, headers, f"{method} {path}")
        return answer

    def _check_status(self, code: int, headers: Mapping[str, str], what: str) -> None:
        if code < 400:
            return
        message = f"{self.name}: {what} answered HTTP {code}"
        if code in UNAVAILABLE_STATUSES:
            raise BackendUnavailable(message, backend=self.name, status_code=code,
                                     retry_after_s=_retry_after(headers.get("retry-after")))
        raise BackendError(message, backend=self.name, status_code=code)

    def _json(self, answer: Answer) -> Any:
        try:
            return json.loads(answer.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            preview = answer.body[:200].decode("utf-8", "replace")
            raise BackendProtocolError(f"{self.name}: answer is not JSON: {preview!r}",
                                       backend=self.name, status_code=answer.status) from exc


def _queue_item(raw: list[Any]) -> QueueItem:
    extra = raw[3] if len(raw) > 3 and isinstance(raw[3], dict) else {}
    targets = tuple(str(x) for x in raw[4]) if len(raw) > 4 and raw[4] else ()
    return QueueItem(number=float(raw[0]), prompt_id=str(raw[1]), extra_data=extra,
                     outputs_to_execute=targets)


def _whole_size(answer: Answer) -> int | None:
    """The size of the file a ranged ``/view`` answered about: all of it (200, no range support)
    or the total in ``Content-Range`` (206 ``bytes 0-0/N``, 416 ``bytes */N``)."""
    if answer.status == 200:
        return len(answer.body)
    total = (answer.content_range or "").rpartition("/")[2].strip()
    return int(total) if total.isascii() and total.isdigit() else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
