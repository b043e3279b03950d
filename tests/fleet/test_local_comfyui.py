"""ComfyUI servers that ``serve`` runs on this machine: restarted when they die, given up past
the restart intensity, recycled (drained first) when their memory grows past the limit. The
simulator stands in for ComfyUI as a real child process; the fleet registry is real Valkey."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import httpx
import pytest

from comfyfleet.domain.policy import RestartIntensity
from comfyfleet.errors import ComfyFleetError
from comfyfleet.fleetfile import parse_fleet
from comfyfleet.runtime.local_comfyui import LocalComfyUI, LocalSettings, LocalSpec, group_alive, resident_mb
from comfyfleet.store.fleet import FleetStore

from helpers.fleet import free_port

FAST = LocalSettings(check_every_s=0.2, stop_grace_s=5.0, drain_timeout_s=30.0, backoff_base_s=0.05)


def sim_spec(port: int, **extra) -> LocalSpec:  # type: ignore[no-untyped-def]
    return LocalSpec(name="local-gpu", port=port, **extra,
                     command=(sys.executable, "-m", "comfyfleet.sim", "--port", "{port}", "--name", "local-gpu"))


async def registered(fleet: FleetStore, **extra) -> LocalSpec:  # type: ignore[no-untyped-def]
    """A simulator entry on a free port, its backend registered as the backends file would."""
    spec = sim_spec(free_port(), **extra)
    entry = {"name": spec.name, "port": spec.port, "command": list(spec.command)}
    await fleet.seed([parse_fleet({"local": [entry]}).backends[0]])
    return spec


async def answers(port: int, timeout_s: float = 20.0) -> None:
    async with httpx.AsyncClient(timeout=1.0) as http, asyncio.timeout(timeout_s):
        while True:
            try:
                if (await http.get(f"http://127.0.0.1:{port}/system_stats")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


async def until(check, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.05)


@pytest.fixture
async def fleet(redis, keys):  # type: ignore[no-untyped-def]
    return FleetStore(redis, keys)


async def test_a_killed_server_is_started_again(fleet, tmp_path):
    spec = await registered(fleet)
    port = spec.port
    local = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
    await local.start()
    try:
        await answers(port)
        first = local.process.pid
        assert (tmp_path / "local-gpu.pid").read_text() == str(first)
        os.kill(first, signal.SIGKILL)

        async def restarted() -> bool:
            return local.process.pid != first and local.restarts == 1
        await until(restarted)
        await answers(port)
        assert (tmp_path / "local-gpu.pid").read_text() == str(local.process.pid)
        assert (tmp_path / "local-gpu.log").stat().st_size >= 0
    finally:
        await local.stop()
    assert local.process.returncode is not None, "stop() stops it"


async def test_a_server_that_keeps_dying_is_given_up(fleet, tmp_path):
    spec = LocalSpec(name="broken", port=free_port(), command=(sys.executable, "-c", "raise SystemExit(3)"))
    local = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST,
                         intensity=RestartIntensity(max_restarts=2, window_s=60.0))
    await local.start()
    try:
        async def given_up() -> bool:
            return local.given_up
        await until(given_up)
        assert local.restarts == 2, "two restarts allowed, the third exit ends it"
    finally:
        await local.stop()


async def test_a_command_that_cannot_be_started_again_is_given_up_not_left_unsupervised(fleet, tmp_path):
    """The command of a server that exited is gone (a reinstall, a deleted script): each start
    that fails counts as an exit, and past the restart intensity the entry is given up, as one
    that keeps dying (supervision used to end there, silently, and never gave up)."""
    script = tmp_path / "comfyui.sh"
    script.write_text("#!/bin/sh\nsleep 0.5\nexit 3\n")
    script.chmod(0o755)
    spec = LocalSpec(name="vanishing", port=free_port(), command=(str(script),))
    local = LocalComfyUI(spec, fleet, run_dir=tmp_path / "run", settings=FAST,
                         intensity=RestartIntensity(max_restarts=2, window_s=60.0))
    await local.start()
    script.unlink()
    try:
        async def given_up() -> bool:
            return local.given_up
        await until(given_up)
        assert local.restarts == 0
    finally:
        await local.stop()


async def test_what_an_exited_command_left_running_is_stopped_before_it_starts_again(fleet, tmp_path):
    """A launcher that exits while its ComfyUI runs on: that server is stopped with the
    launcher's group before the command starts again (left, it held the port, and each new
    server failed to listen)."""
    port = free_port()
    launcher = f"{sys.executable} -m comfyfleet.sim --port {{port}} --name launched & sleep 1; exit 1"
    spec = LocalSpec(name="launched", port=port, command=("sh", "-c", launcher))
    local = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST,
                         intensity=RestartIntensity(max_restarts=100, window_s=60.0))
    await local.start()
    try:
        first = local.process.pid
        await answers(port)

        async def first_group_gone() -> bool:
            return not group_alive(first)
        await until(first_group_gone)

        async def started_again() -> bool:
            return local.restarts >= 1
        await until(started_again)
        await answers(port)  # the server of the new launcher has the port
    finally:
        await local.stop()


async def test_a_bloated_server_is_drained_then_recycled(fleet, tmp_path):
    spec = await registered(fleet, max_rss_mb=1)  # any Python process is bigger: it must be recycled
    port = spec.port
    assert await fleet.leases.acquire([("local-gpu", 1, 0)], "job-running-there") == "local-gpu"
    local = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
    await local.start()
    try:
        await answers(port)
        first = local.process.pid

        async def draining() -> bool:
            return (await fleet.get("local-gpu")).state == "draining"
        await until(draining)
        await asyncio.sleep(1.0)
        assert local.process.pid == first and local.process.returncode is None, \
            "not restarted while a prompt of ours runs there"
        await fleet.leases.release("local-gpu", "job-running-there")

        async def recycled() -> bool:
            return local.recycles >= 1 and (await fleet.get("local-gpu")).state == "active"
        await until(recycled)
        assert local.process.pid != first and local.restarts == 0
    finally:
        await local.stop()


async def abandon(local: LocalComfyUI) -> None:
    """What a SIGKILL of ``serve`` does to the supervisor: it stops mid-step, stopping nothing,
    and the kernel lets go of its lock."""
    local._task.cancel()
    await asyncio.gather(local._task, return_exceptions=True)
    local._release_lock()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_the_next_serve_stops_a_server_left_running_and_starts_its_own(fleet, tmp_path):
    spec = await registered(fleet)
    port = spec.port
    dead = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
    await dead.start()
    await answers(port)
    orphan = dead.process.pid
    await abandon(dead)
    assert alive(orphan), "ComfyUI runs in its own session: it outlives the serve that started it"

    local = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
    await local.start()
    try:
        await dead.process.wait()  # reap it (it is this test process's child)
        assert not alive(orphan)
        await answers(port)
        await asyncio.sleep(0.5)
        assert local.process.returncode is None and local.restarts == 0, "the new server has the port"
        assert (tmp_path / "local-gpu.pid").read_text() == str(local.process.pid)
    finally:
        await local.stop()


async def test_a_second_serve_on_the_same_data_dir_is_refused_and_stops_nothing(fleet, tmp_path):
    spec = await registered(fleet)
    first = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
    await first.start()
    try:
        await answers(spec.port)
        second = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
        with pytest.raises(ComfyFleetError, match=rf"already run by another comfyfleet serve \(pid {os.getpid()}\)"):
            await second.start()
        assert second.process is None
        await asyncio.sleep(0.5)
        assert first.process.returncode is None and first.restarts == 0, "the first one's server runs on"
    finally:
        await first.stop()
    after = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
    await after.start()  # the lock went with the first one
    try:
        await answers(spec.port)
    finally:
        await after.stop()


async def test_a_port_another_program_listens_on_is_a_plain_error(fleet, tmp_path):
    """Started anyway, the server could not listen, and the backend's address (where the fleet
    sends its prompts) was that other program's."""
    spec = await registered(fleet)
    with socket.socket() as other:
        other.bind(("127.0.0.1", spec.port))
        other.listen()
        local = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
        with pytest.raises(ComfyFleetError, match=rf"port {spec.port} of 127.0.0.1 is already in use"):
            await local.start()
        assert local.process is None, "nothing was started"
    after = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
    await after.start()  # the port is free again: it starts, the failed start held nothing
    try:
        await answers(spec.port)
    finally:
        await after.stop()


async def test_a_pid_file_naming_another_program_is_left_alone(fleet, tmp_path):
    bystander = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
    port = free_port()
    (tmp_path / "local-gpu.pid").write_text(str(bystander.pid))
    local = LocalComfyUI(sim_spec(port), fleet, run_dir=tmp_path, settings=FAST)
    await local.start()
    try:
        await answers(port)
        assert bystander.returncode is None and alive(bystander.pid)
    finally:
        await local.stop()
        bystander.kill()
        await bystander.wait()


async def test_a_recycle_cut_short_by_the_death_of_serve_is_finished_by_the_next(fleet, tmp_path):
    spec = await registered(fleet, max_rss_mb=1)
    port = spec.port
    assert await fleet.leases.acquire([("local-gpu", 1, 0)], "job-running-there") == "local-gpu"
    dying = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
    await dying.start()

    async def draining() -> bool:
        return (await fleet.get("local-gpu")).state == "draining"
    await until(draining)
    await abandon(dying)  # died waiting for the running prompt
    await fleet.leases.release("local-gpu", "job-running-there")
    assert (tmp_path / "local-gpu.recycling").exists()

    local = LocalComfyUI(sim_spec(port), fleet, run_dir=tmp_path, settings=FAST)
    await local.start()
    try:
        await dying.process.wait()
        assert (await fleet.get("local-gpu")).state == "active"
        assert not (tmp_path / "local-gpu.recycling").exists()
        await answers(port)
    finally:
        await local.stop()


async def test_a_drain_an_operator_asked_for_is_left_alone(fleet, tmp_path):
    spec = await registered(fleet)
    port = spec.port
    await fleet.update("local-gpu", state="draining")
    local = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
    await local.start()
    try:
        await answers(port)
        assert (await fleet.get("local-gpu")).state == "draining"
    finally:
        await local.stop()


def test_resident_memory_is_read_from_proc():
    assert resident_mb(os.getpid()) > 1
    assert resident_mb(2 ** 22 + 12345) is None


@pytest.mark.parametrize(("entry", "said"), [
    ({"port": 8188}, "command must be a non-empty list"),
    ({"command": ["x"], "port": 0}, "port must be an integer"),
    ({"command": ["x"], "port": 8188, "max_rss_mb": 0}, "max_rss_mb must be"),
    ({"command": ["x"], "port": 8188, "env": {"A": 1}}, "env must be a table of strings"),
    ({"command": ["x"], "port": 8188, "gpu": 0}, "unknown key(s) gpu"),
])
def test_a_bad_local_entry_is_a_plain_error(entry, said):
    from comfyfleet.errors import ConfigError
    with pytest.raises(ConfigError, match="local\\[0\\]") as caught:
        parse_fleet({"local": [entry]})
    assert said in str(caught.value)


def test_a_local_entry_is_also_a_backend():
    parsed = parse_fleet({"local": [{"name": "gpu-0", "port": 8190, "command": ["python", "main.py", "--port", "{port}"],
                                     "capacity": 2, "tags": ["sdxl"]}]})
    assert [(b.name, b.url, b.capacity, b.tags) for b in parsed.backends] == \
        [("gpu-0", "http://127.0.0.1:8190", 2, ("sdxl",))]
    assert parsed.local[0].argv() == ["python", "main.py", "--port", "8190"]
    from comfyfleet.errors import ConfigError
    with pytest.raises(ConfigError, match="port of its own"):
        parse_fleet({"local": [{"name": "a", "port": 1, "command": ["x"]}, {"name": "b", "port": 1, "command": ["x"]}]})


async def test_serve_runs_its_local_comfyui_and_jobs_survive_its_death(tmp_path):
    """``comfyfleet serve`` with a ``[[local]]`` entry: the server it starts takes jobs; killed,
    it is started again and the next job runs; stopping serve stops it."""
    import json as jsonlib

    from helpers.fleet import image_workflow
    from helpers.processes import Child

    sim_port, api_port = free_port(), free_port()
    command = jsonlib.dumps([sys.executable, "-m", "comfyfleet.sim", "--port", "{port}", "--step-s", "0.01"])
    (tmp_path / "fleet.toml").write_text(f'[[local]]\nname = "gpu-0"\nport = {sim_port}\ncommand = {command}\n')
    serve = Child(["comfyfleet", "serve", "--port", str(api_port), "--data-dir", str(tmp_path / "data"),
                   "--backends-file", str(tmp_path / "fleet.toml")], tmp_path / "serve.log")
    try:
        await serve.wait_for("comfyfleet serving on", timeout_s=60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as http:
            async def run_one(seed: int) -> dict:
                created = await http.post("/api/v2/jobs", json={"workflow": image_workflow(3, seed=seed)})
                assert created.status_code == 201, created.text
                async with asyncio.timeout(60):
                    while (job := (await http.get(f"/api/v2/jobs/{created.json()['id']}")).json())["status"] \
                            not in ("succeeded", "failed", "canceled", "expired"):
                        await asyncio.sleep(0.1)
                return job

            assert (await run_one(1))["backend"] == "gpu-0"
            pid_file = tmp_path / "data" / "local" / "gpu-0.pid"
            first = int(pid_file.read_text())
            os.kill(first, signal.SIGKILL)

            async def restarted() -> bool:
                return pid_file.read_text() != str(first)
            await until(restarted)
            job = await run_one(2)
            assert job["status"] == "succeeded", job["error"]
            second = int(pid_file.read_text())
    finally:
        await serve.stop()
    await asyncio.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)
