"""``[[local]]`` ComfyUI servers whose command is a wrapper (a shell, a launcher script) that
runs ComfyUI as its child: stopping or restarting the entry stops the whole server. Real
processes, really signalled; the fleet registry is real Valkey."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import pytest

from comfyfleet.runtime.local_comfyui import LocalComfyUI, LocalSettings, LocalSpec
from comfyfleet.store.fleet import FleetStore
from helpers.fleet import free_port

FAST = LocalSettings(check_every_s=0.2, stop_grace_s=5.0, drain_timeout_s=30.0, backoff_base_s=0.05)


def wrapped_sim(port: int) -> LocalSpec:
    """A shell that runs the simulator as its child (``; exit`` keeps the shell from exec'ing it)."""
    sim = f"{sys.executable} -m comfyfleet.sim --port {{port}} --name local-gpu"
    return LocalSpec(name="local-gpu", port=port, command=("sh", "-c", f"{sim}; exit $?"))


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


async def until_listening(port: int) -> None:
    async with asyncio.timeout(20):
        while not listening(port):
            await asyncio.sleep(0.05)


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
async def fleet(redis, keys):  # type: ignore[no-untyped-def]
    return FleetStore(redis, keys)


async def test_stopping_a_wrapped_server_stops_comfyui_too(fleet, tmp_path):
    """Only the wrapper was signalled: ComfyUI, its child, ran on after serve stopped, holding
    the port (and the GPU's memory)."""
    spec = wrapped_sim(free_port())
    local = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
    await local.start()
    group = local.process.pid
    try:
        await until_listening(spec.port)
        assert len(group_members(group)) == 2, "the shell and the simulator it runs"
    finally:
        await local.stop()
        leftover = group_members(group)
        kill_group(group)
    assert leftover == []
    assert not listening(spec.port)


async def test_a_wrapped_server_left_by_a_killed_serve_is_stopped_whole_by_the_next(fleet, tmp_path):
    """The next serve signalled the wrapper of the server a dead one left: ComfyUI kept the
    port, and every start of the new one failed on it until it was given up."""
    spec = wrapped_sim(free_port())
    dead = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
    await dead.start()
    orphan_group = dead.process.pid
    await until_listening(spec.port)
    dead._task.cancel()  # what a SIGKILL of serve leaves: the server, and no lock
    await asyncio.gather(dead._task, return_exceptions=True)
    dead._release_lock()

    local = LocalComfyUI(spec, fleet, run_dir=tmp_path, settings=FAST)
    try:
        await local.start()
        await dead.process.wait()  # reap the wrapper (this test's child)
        assert group_members(orphan_group) == []
        await until_listening(spec.port)
        await asyncio.sleep(1.0)  # a new server that cannot bind exits at once
        assert local.restarts == 0 and local.process.returncode is None
    finally:
        await local.stop()
        kill_group(orphan_group)
        kill_group(local.process.pid)
