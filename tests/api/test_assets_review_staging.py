"""Staging an input onto a backend that holds a file under the input's name, cut short (a
ComfyUI killed mid-write, or out of disk, writes its uploads in place; or another job's upload
of it is still being written): the name says the content, the size says whether the file is
whole, and a file on the backend is never written over (a prompt may be reading it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.blobs import LocalBlobStore
from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.transport import open_session
from comfyfleet.runtime.staging import stage_inputs, staged_name
from comfyfleet.sim import SimConfig, Simulator

FACE = b"\x89PNG\r\n\x1a\n" + b"a face, pixel by pixel " * 500


async def face_input(tmp_path: Path) -> tuple[LocalBlobStore, str, dict]:
    """A blob store holding FACE, its digest, and a workflow whose LoadImage names it."""
    blobs = LocalBlobStore(tmp_path / "blobs")
    digest = await blobs.put(FACE, content_type="image/png")
    ref = {"__type": "core/ASSET", "info": {"id": "x", "comfyfleet_blob": digest, "comfyfleet_name": "face.png"}}
    return blobs, digest, {"1": {"class_type": "LoadImage", "inputs": {"image": ref}}}


@pytest.mark.parametrize("left_behind", [FACE[:100], b""], ids=["truncated", "empty"])
async def test_a_staged_file_cut_short_is_left_be_and_the_input_stored_beside_it(tmp_path, left_behind):
    """A partial file under the staged name is neither handed to LoadImage nor written over:
    ComfyUI stores the input under the next free variant of the name, which the prompt uses,
    and the next staging finds it there."""
    blobs, digest, workflow = await face_input(tmp_path)
    async with Simulator(SimConfig(name="partial"), port=0) as sim:
        staged = Path(sim.dirs["input"]) / staged_name(digest, "face.png")
        staged.write_bytes(left_behind)
        beside = staged.with_name(f"{staged.stem} (1){staged.suffix}")
        http = open_session(limit=4)
        try:
            client = ComfyClient(sim.url, http=http)
            prompt = await stage_inputs(client, blobs, workflow)
            assert prompt["1"]["inputs"]["image"] == beside.name
            assert beside.read_bytes() == FACE, "the backend holds the whole input"
            assert staged.read_bytes() == left_behind, "the file that was there is not written over"
            assert sim.requests["POST /upload/image"] == 1
            again = await stage_inputs(client, blobs, workflow)
            assert again["1"]["inputs"]["image"] == beside.name
            assert sim.requests["POST /upload/image"] == 1, "a whole file is not sent again"
        finally:
            await http.close()


async def test_staging_again_what_the_backend_holds_writes_nothing(tmp_path):
    """An upload of an input the backend already holds whole (staged again after ComfyUI refused
    a prompt naming it) keeps the file as it is: ComfyUI answers with its name."""
    blobs, digest, workflow = await face_input(tmp_path)
    async with Simulator(SimConfig(name="whole"), port=0) as sim:
        staged = Path(sim.dirs["input"]) / staged_name(digest, "face.png")
        http = open_session(limit=4)
        try:
            client = ComfyClient(sim.url, http=http)
            await stage_inputs(client, blobs, workflow)
            written = staged.stat().st_mtime_ns
            prompt = await stage_inputs(client, blobs, workflow, upload=True)
            assert prompt["1"]["inputs"]["image"] == staged.name
            assert sim.requests["POST /upload/image"] == 2
            assert staged.stat().st_mtime_ns == written and staged.read_bytes() == FACE
            assert sorted(p.name for p in staged.parent.iterdir()) == [staged.name]
        finally:
            await http.close()
