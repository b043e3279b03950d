"""Collecting a finished prompt's outputs when the backend blips part way through: the files
already in hand are kept, and the patience counts from the last file that arrived."""

from __future__ import annotations

from pathlib import Path

from comfyfleet.blobs import LocalBlobStore
from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.transport import open_session
from comfyfleet.runtime.outputs import collect_patiently
from comfyfleet.sim import SimConfig, Simulator
from comfyfleet.sim.faults import Faults

VIEW = "GET /view"
FILES = {f"out_{i}.png": b"\x89PNG\r\n\x1a\n" + bytes([i]) * 4096 for i in range(3)}


def name_failing_only_the_third_view() -> str:
    """A simulator name whose fault rolls (seeded by it) pass, pass, then fail."""
    for n in range(10_000):
        faults = Faults(seed=f"collect-{n}", http_error_status=503, http_error_rate=0.5, http_error_limit=1)
        if [faults.roll_http_error(VIEW) for _ in range(3)] == [False, False, True]:
            return f"collect-{n}"
    raise AssertionError("no such name")


async def test_a_blip_after_files_arrived_keeps_them_and_is_waited_out(tmp_path):
    """The third of three outputs fails once after the first two took the whole patience to
    arrive (each /view costs 40 virtual seconds): the collect goes on from the third file
    instead of giving up, and does not fetch the first two again."""
    async with Simulator(SimConfig(name=name_failing_only_the_third_view()), port=0) as sim:
        for name, data in FILES.items():
            (Path(sim.dirs["output"]) / name).write_bytes(data)
        sim.faults.update({"http_error_status": 503, "http_error_rate": 0.5, "http_error_limit": 1,
                           "http_error_paths": [VIEW]})
        outputs = {"9": {"images": [{"filename": name, "subfolder": "", "type": "output"} for name in FILES]}}
        blobs = LocalBlobStore(tmp_path / "blobs")
        http = open_session(limit=4)
        try:
            collected = await collect_patiently(
                ComfyClient(sim.url, http=http), blobs, job_id="j", outputs=outputs,
                patience_s=60.0, clock=lambda: 40.0 * sim.requests[VIEW])
        finally:
            await http.close()
        assert sim.faults.injected == 1
        assert [(o.id, o.name) for o in collected] == [(f"j.{i}", name) for i, name in enumerate(FILES)]
        assert [await blobs.open(o.hash) for o in collected] == list(FILES.values())
        assert sim.requests[VIEW] == 4, "the two files in hand are not fetched again"
