"""`main()` in a subprocess: readiness line, record file across SIGKILL, clean SIGTERM exit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys

import httpx
import pytest

from sim_helpers import workflow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _start(tmp_path, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    code = "import sys; from comfyfleet.sim.run import main; sys.exit(main(sys.argv[1:]))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "--port", str(_free_port()), "--step-s", "0.01",
        "--output-dir", str(tmp_path), *extra, stdout=asyncio.subprocess.PIPE)
    async with asyncio.timeout(10):
        line = (await proc.stdout.readline()).decode().strip()
    assert line.startswith("comfyui simulator listening on http://127.0.0.1:"), line
    return proc, line.rsplit(" ", 1)[1]


async def test_record_file_survives_sigkill(tmp_path):
    """Each start/end is a flushed JSON line: a killed run leaves a start without an end."""
    record_file = tmp_path / "records.jsonl"
    proc, url = await _start(tmp_path, "--record-file", str(record_file), "--name", "sim-x")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            done = (await http.post("/prompt", json={"prompt": workflow(steps=1)})).json()["prompt_id"]
            killed = (await http.post("/prompt", json={"prompt": workflow(steps=5000)})).json()["prompt_id"]
            async with asyncio.timeout(5):
                while killed not in record_file.read_text():
                    await asyncio.sleep(0.02)
    finally:
        proc.kill()
        async with asyncio.timeout(5):
            await proc.wait()
    lines = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert [(l["event"], l["prompt_id"]) for l in lines] == [("start", done), ("end", done), ("start", killed)]
    assert lines[1]["outcome"] == "success" and lines[0]["server"] == "sim-x"


async def test_sigterm_exits_cleanly(tmp_path):
    """SIGTERM stops the simulator with exit code 0."""
    proc, url = await _start(tmp_path)
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        assert (await http.get("/api/prompt")).status_code == 200
    os.kill(proc.pid, signal.SIGTERM)
    async with asyncio.timeout(5):
        assert await proc.wait() == 0


async def test_extra_node_classes_join_the_built_in_ones(tmp_path):
    proc, url = await _start(tmp_path, "--extra-node-classes", "CustomUpscale, MyLoader")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            listed = set((await http.get("/object_info")).json())
    finally:
        proc.kill()
        async with asyncio.timeout(5):
            await proc.wait()
    assert {"CustomUpscale", "MyLoader", "KSampler", "SaveImage"} <= listed


@pytest.mark.parametrize(("args", "code", "says"), [
    (("--extra-node-classes", "A,,B"), 2, "expected class names separated by commas"),
    (("--port", "70000"), 2, "70000 is not a port"),
    (("--port", "-1"), 2, "-1 is not a port"),
    (("--port", "http"), 2, "--port"),
    (("--step-s", "nan"), 2, "nan is not a number >= 0"),
    (("--step-s", "-0.5"), 2, "-0.5 is not a number >= 0"),
    (("--history-delay-s", "inf"), 2, "inf is not a number >= 0"),
    (("--time-scale", "-1"), 2, "-1 is not a number >= 0"),
    (("--output-dir", "{file}"), 1, "cannot start the simulator"),
])
async def test_bad_options_get_a_plain_line(tmp_path, args, code, says):
    """Run directly (not through ``comfyfleet sim``), bad values still get one plain message and a
    non-zero exit, never a traceback or a simulator that starts."""
    a_file = tmp_path / "afile"
    a_file.write_text("not a directory")
    argv = [arg.replace("{file}", str(a_file)) for arg in args]
    if "--port" not in argv:
        argv += ["--port", str(_free_port())]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfyfleet.sim", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # it started (the check is missing): stop it
            proc.kill()
            await proc.wait()
    assert proc.returncode == code, (out, err)
    assert says in err.decode() and "Traceback" not in err.decode()
    assert b"listening" not in out
