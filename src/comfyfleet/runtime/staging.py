"""Put a job's input assets on the backend that runs it, and the workflow ComfyUI can read.

Each ``core/ASSET`` reference (completed at submission with ``info.comfyfleet_blob`` and
``info.comfyfleet_name``, see ``api/inputs.py``)
becomes the name of a file in the backend's input directory: ``cf-<first 32 hex of the
sha256><extension>``. The name is the content, so a file already there (``GET /view``) is not sent
again, and two jobs with the same input share it. A file is never written over: an upload asks
ComfyUI not to overwrite, so one of another size under that name (cut short by a ComfyUI killed
or out of disk while writing it, or still being written by another job's upload, or being read by
a prompt) stays as it is, and ComfyUI stores the input as ``cf-<hex> (1).png`` (or keeps the
file when it holds the same bytes) and answers with the name used; the look before uploading
tries those variants too. Staging happens after a slot is taken and
before ``POST /prompt`` (phase ``dispatching``); what goes wrong is classified like any other
call to the backend, except a blob that is gone from our store, which no retry can fix.

A staged file can vanish between the check and ``POST /prompt`` (someone cleans the backend's
input directory): ComfyUI then refuses the prompt naming that file. ``submit_staged`` uploads the
inputs again and submits once more; only a second refusal stands.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import PurePosixPath
from typing import Any

from ..blobs import parse_digest
from ..comfy.client import ComfyClient, SubmitResult
from ..domain.asset_refs import BLOB_KEY, NAME_KEY, is_reference, node_references
from ..errors import BackendProtocolError, PromptRejected
from ..ports import BlobStore

STAGED_PREFIX = "cf-"
NAME_VARIANTS = 8  # how many of a staged name's variants are looked at before uploading
_EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,10}$")
# LoadImage (and the other loaders) refusing a file: "image - Invalid image file: <name>"
_STAGED_FILE_REFUSED = re.compile(r"Invalid \w+ file: " + STAGED_PREFIX + r"[0-9a-f]{32}")


class InputMissing(Exception):
    """A referenced input is not in our blob store (or the reference was never completed)."""


def staged_name(digest: str, file_path: str | None) -> str:
    hexpart = parse_digest(digest)
    if hexpart is None:
        raise InputMissing(f"not a blob digest: {digest!r}")
    suffix = PurePosixPath(str(file_path or "").replace("\\", "/")).suffix
    return f"{STAGED_PREFIX}{hexpart[:32]}{suffix.lower() if _EXTENSION.match(suffix) else ''}"


async def submit_staged(client: ComfyClient, blobs: BlobStore, workflow: dict[str, Any],
                        prompt: dict[str, Any], *, prompt_id: str, client_id: str,
                        extra_data: dict[str, Any]) -> SubmitResult:
    """``POST /prompt`` of ``prompt``, what ``stage_inputs`` made of ``workflow``. Raises what
    ``ComfyClient.submit`` raises, and what ``stage_inputs`` raises when it stages again."""
    try:
        return await client.submit(prompt, prompt_id=prompt_id, client_id=client_id, extra_data=extra_data)
    except PromptRejected as exc:
        if prompt is workflow or not refuses_a_staged_file(exc):
            raise
    prompt = await stage_inputs(client, blobs, workflow, upload=True)  # refused: nothing was queued
    return await client.submit(prompt, prompt_id=prompt_id, client_id=client_id, extra_data=extra_data)


def refuses_a_staged_file(rejection: PromptRejected) -> bool:
    """Whether ComfyUI refused the prompt because a file we staged is not in its input directory."""
    return _STAGED_FILE_REFUSED.search(json.dumps(rejection.node_errors)) is not None


async def stage_inputs(client: ComfyClient, blobs: BlobStore, workflow: dict[str, Any], *,
                       upload: bool = False) -> dict[str, Any]:
    """The workflow to submit: references replaced by staged file names, uploaded if missing
    (always, with ``upload``). Returns ``workflow`` itself when it has no reference."""
    if next(node_references(workflow), None) is None:
        return workflow
    staged = copy.deepcopy(workflow)
    names: dict[str, str] = {}
    for node in staged.values():
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            node["inputs"] = await _replace(node["inputs"], client, blobs, names, upload)
    return staged


async def _replace(value: Any, client: ComfyClient, blobs: BlobStore, names: dict[str, str],
                   upload: bool) -> Any:
    if isinstance(value, dict):
        if is_reference(value):
            return await _stage(value, client, blobs, names, upload)
        return {key: await _replace(item, client, blobs, names, upload) for key, item in value.items()}
    if isinstance(value, list):
        return [await _replace(item, client, blobs, names, upload) for item in value]
    return value


async def _stage(reference: dict[str, Any], client: ComfyClient, blobs: BlobStore,
                 names: dict[str, str], upload: bool) -> str:
    info = reference.get("info") if isinstance(reference.get("info"), dict) else {}
    digest = info.get(BLOB_KEY)
    if not isinstance(digest, str):
        raise InputMissing(f"asset {info.get('id')!r} was never resolved to stored bytes")
    name = staged_name(digest, info.get(NAME_KEY) or info.get("file_path"))
    if digest not in names:
        try:
            path = blobs.path(digest)
            size_bytes: int | None = os.stat(path).st_size
        except ValueError:
            raise InputMissing(f"the bytes of asset {info.get('id')!r} are gone") from None
        except FileNotFoundError:
            size_bytes = None  # gone from our store: the backend's copy is all there is
        found = None if upload else await _staged_copy(client, name, size_bytes)
        if found is None:
            try:
                source = open(path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                raise InputMissing(f"the bytes of asset {info.get('id')!r} are gone") from None
            with source:  # streamed: aiohttp reads a file body in chunks, off the event loop
                answer = await client.upload_image(source, name, overwrite=False)
            found = _uploaded_name(answer, client)
        names[digest] = found
    return names[digest]


def name_variants(name: str) -> list[str]:
    """``name`` and the names ComfyUI gives an upload of it when a file of other bytes holds it:
    ``cf-<hex> (1).png``, ``cf-<hex> (2).png``, ..."""
    stem, suffix = os.path.splitext(name)
    return [name, *(f"{stem} ({i}){suffix}" for i in range(1, NAME_VARIANTS))]


async def _staged_copy(client: ComfyClient, name: str, size_bytes: int | None) -> str | None:
    """The name under which the backend holds the input whole, looking at ``name`` and its
    variants up to the first free one; None when it holds none."""
    for candidate in name_variants(name):
        size = await client.input_size(candidate)
        if size is None:
            return None  # ComfyUI names an upload by the first name free (or holding the same bytes)
        if size == size_bytes or (size_bytes is None and size != 0):
            return candidate
    return None


def _uploaded_name(answer: dict[str, Any], client: ComfyClient) -> str:
    """The name ComfyUI stored an upload under: ours, or a variant when a file of other bytes
    already held ours (one cut short, or still being written by another upload)."""
    name = answer.get("name")
    if (not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..")
            or answer.get("subfolder") not in (None, "")):
        raise BackendProtocolError(f"{client.name}: an upload answered {answer!r}", backend=client.name)
    return name
