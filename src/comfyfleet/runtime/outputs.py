"""Collect a finished prompt's output files from its backend into the blob store.

Files stream from ``/view`` to disk chunk by chunk (a video can be gigabytes; a worker tracks
dozens of jobs at once), hashed on the way (sha256 names the blob; blake3 is the contract's
content hash), and are named by their digest once complete. A download that fails on the way
is tried again for a while (``collect_patiently``): the files already in hand are kept, and the
patience starts over whenever a try brought more of them, so a job with many or huge outputs is
not given up on for a blip at its last file."""

from __future__ import annotations

import asyncio
import logging
import mimetypes
from collections import Counter
from collections.abc import Callable
from typing import Any

from blake3 import blake3

from ..comfy.client import ComfyClient
from ..domain.job import Output
from ..errors import BackendError
from ..ports import BlobStore

log = logging.getLogger(__name__)

COLLECT_FIRST_PAUSE_S = 0.5
COLLECT_MAX_PAUSE_S = 10.0

FILE_LIST_KEYS = ("images", "gifs", "videos", "video", "audio", "files", "animated", "meshes")
TYPE_BY_PREFIX = (("image/gif", "video"), ("image/", "image"), ("video/", "video"), ("audio/", "audio"),
                  ("text/", "text"))


def output_type(content_type: str, filename: str) -> str:
    if filename.endswith(".latent"):
        return "latent"
    for prefix, kind in TYPE_BY_PREFIX:
        if content_type.startswith(prefix):
            return kind
    return "file"


def asset_id(job_id: str, index: int) -> str:
    return f"{job_id}.{index}"


def output_files(outputs: dict[str, Any]) -> list[tuple[str, dict[str, Any] | str]]:
    """(node_id, file reference or text) in node order; file references are ComfyUI's
    ``{filename, subfolder, type}`` dicts."""
    found: list[tuple[str, dict[str, Any] | str]] = []
    for node_id in sorted(outputs, key=_node_order):
        ui = outputs[node_id]
        if not isinstance(ui, dict):
            continue
        for key in FILE_LIST_KEYS:
            for item in ui.get(key) or ():
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    found.append((node_id, item))
        for text in ui.get("text") or ():
            if isinstance(text, str):
                found.append((node_id, text))
    return found


async def collect_outputs(client: ComfyClient, blobs: BlobStore, *, job_id: str,
                          outputs: dict[str, Any], collected: list[Output] | None = None) -> tuple[Output, ...]:
    """Every output, in order. ``collected``: the outputs an earlier try got (not fetched again);
    it grows as files arrive, so a try that fails part way keeps what it got."""
    collected = [] if collected is None else collected
    texts: Counter[str] = Counter()  # node id -> its texts so far: "9.txt", "9-2.txt", ...
    for index, (node_id, ref) in enumerate(output_files(outputs)):
        if isinstance(ref, str):
            texts[node_id] += 1
        if index < len(collected):
            continue
        if isinstance(ref, str):
            count = texts[node_id]
            name = f"{node_id}.txt" if count == 1 else f"{node_id}-{count}.txt"
            data, content_type = ref.encode(), "text/plain; charset=utf-8"
            digest, size = await blobs.put(data, content_type=content_type), len(data)
            content_hash = blake3(data).hexdigest()
        else:
            name = ref["filename"]
            digest, size, content_type, content_hash = await _download(client, blobs, ref)
        collected.append(Output(id=asset_id(job_id, index), node_id=node_id, name=name,
                                type=output_type(content_type, name), content_type=content_type,
                                size_bytes=size, hash=digest, blake3=f"blake3:{content_hash}"))
    return tuple(collected)


async def collect_patiently(client: ComfyClient, blobs: BlobStore, *, job_id: str, outputs: dict[str, Any],
                            patience_s: float, clock: Callable[[], float]) -> tuple[Output, ...]:
    """``collect_outputs``, again after a failed download (no answer, a 5xx, a 429; a 404 means
    the file is gone) from where it failed, until a try brings no file for ``patience_s``: the
    prompt succeeded, and a new attempt would run the whole workflow again for a blip on the
    way back."""
    give_up_at = clock() + patience_s
    pause_s = COLLECT_FIRST_PAUSE_S
    collected: list[Output] = []
    while True:
        in_hand = len(collected)
        try:
            return await collect_outputs(client, blobs, job_id=job_id, outputs=outputs, collected=collected)
        except BackendError as exc:
            code = exc.status_code
            if len(collected) > in_hand:  # files came before this failure: patient afresh
                give_up_at, pause_s = clock() + patience_s, COLLECT_FIRST_PAUSE_S
            if not (code is None or code >= 500 or code == 429) or clock() + pause_s > give_up_at:
                raise
            log.warning("job %s: collecting its outputs again in %.1f s: %s", job_id, pause_s, exc)
        await asyncio.sleep(pause_s)
        pause_s = min(pause_s * 2, COLLECT_MAX_PAUSE_S)


async def _download(client: ComfyClient, blobs: BlobStore,
                    ref: dict[str, Any]) -> tuple[str, int, str, str]:
    """(digest, size, content type, blake3 hex) of one output file, streamed into the blob store."""
    name = ref["filename"]
    writer, hasher = blobs.writer(), blake3()
    try:
        async with client.download(name, subfolder=str(ref.get("subfolder") or ""),
                                   folder_type=str(ref.get("type") or "output")) as (content_type, chunks):
            async for chunk in chunks:
                hasher.update(chunk)
                await writer.write(chunk)
        if content_type in ("application/octet-stream", ""):
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        digest, _ = await writer.commit(content_type=content_type)
    except BaseException:
        await writer.abort()
        raise
    return digest, writer.size, content_type, hasher.hexdigest()


def _node_order(node_id: str) -> tuple[int, str]:
    # isdigit() alone is also true for superscripts such as "²", which int() refuses
    numeric = node_id.isascii() and node_id.isdigit()
    return (int(node_id), "") if numeric else (1 << 62, node_id)
