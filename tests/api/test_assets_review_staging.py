"""Staging an input onto a backend that holds a file under the input's name, cut short (a
ComfyUI killed mid-write, or out of disk, writes its uploads in place): the name says the
content, the size says whether the file is whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.blobs import LocalBlobStore
from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.transport import open_session
from comfyfleet.runtime.staging import stage_inputs, staged_name
from comfyfleet.sim import SimConfig, Simulator

FACE = b"\x89PNG\r\n\x1a\n" + b"a face, pixel by pixel " * 500


@pytest.mark.parametrize("left_behind", [FACE[:100], b""], ids=["truncated", "empty"])
async def test_a_staged_file_cut_short_is_sent_again(tmp_path, left_behind):
    """A partial file under the staged name is replaced, not handed to LoadImage."""
    blobs = LocalBlobStore(tmp_path / "blobs")
    digest = await blobs.put(FACE, content_type="image/png")
    ref = {"__type": "core/ASSET", "info": {"id": "x", "comfyfleet_blob": digest, "comfyfleet_name": "face.png"}}
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": ref}}}
    async with Simulator(SimConfig(name="partial"), port=0) as sim:
        staged = Path(sim.dirs["input"]) / staged_name(digest, "face.png")
        staged.write_bytes(left_behind)
        http = open_session(limit=4)
        try:
            client = ComfyClient(sim.url, http=http)
            prompt = await stage_inputs(client, blobs, workflow)
            assert prompt["1"]["inputs"]["image"] == staged.name
            assert staged.read_bytes() == FACE, "the backend holds the whole input"
            assert sim.requests["POST /upload/image"] == 1
            await stage_inputs(client, blobs, workflow)
            assert sim.requests["POST /upload/image"] == 1, "a whole file is not sent again"
        finally:
            await http.close()
