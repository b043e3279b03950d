"""The embedded Valkey started by several processes at once, kept alive after a serve that
adopted it, and out of reach of a terminal's Ctrl-C. Real valkey-server processes, really
signalled."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import redis as sync_redis

from comfyfleet.launch import keep_alive
from comfyfleet.store.embedded import RECORD_NAME, EmbeddedValkey
from helpers.fleet import free_port
from helpers.processes import valkey_left_by_a_killed_starter


def client(url: str) -> sync_redis.Redis:
    return sync_redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start_at_once(valkeys: list[EmbeddedValkey]) -> list[str | BaseException]:
    """``start()`` of every one, in threads released together."""
    barrier = threading.Barrier(len(valkeys))
    results: list[str | BaseException] = [RuntimeError("not run")] * len(valkeys)

    def start(index: int) -> None:
        barrier.wait()
        try:
            results[index] = valkeys[index].start()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            results[index] = exc

    threads = [threading.Thread(target=start, args=(i,)) for i in range(len(valkeys))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_two_processes_starting_on_one_data_dir_at_once_share_one_server(tmp_path):
    """Two ``comfyfleet api`` started together on one data dir both saw no server and started
    one each on the same AOF directory (the second failed on the port the first had taken)."""
    valkeys = [EmbeddedValkey(tmp_path), EmbeddedValkey(tmp_path)]
    try:
        results = start_at_once(valkeys)
        assert all(isinstance(url, str) for url in results), results
        assert results[0] == results[1]
        assert sorted(v.reused for v in valkeys) == [False, True]
        assert client(results[0]).ping()
    finally:
        for valkey in valkeys:
            valkey.stop()


def test_servers_of_two_data_dirs_started_at_once_both_start(tmp_path):
    """Two data dirs' servers starting together picked the same free port; one failed on it."""
    valkeys = [EmbeddedValkey(tmp_path / "a"), EmbeddedValkey(tmp_path / "b")]
    try:
        results = start_at_once(valkeys)
        assert all(isinstance(url, str) for url in results), results
        assert results[0] != results[1]
        for url in results:
            assert client(url).ping()
    finally:
        for valkey in valkeys:
            valkey.stop()


async def test_a_server_adopted_from_a_killed_serve_is_started_again_when_it_dies(tmp_path):
    """A serve restarted after being killed adopts the Valkey the dead one left running, and
    never started it again when it died: it answered 503 for ever."""
    url = valkey_left_by_a_killed_starter(tmp_path)
    client(url).set("written-before", "1")

    valkey = EmbeddedValkey(tmp_path)
    assert valkey.start() == url and valkey.reused
    lost = asyncio.Event()
    keeper = asyncio.create_task(keep_alive(valkey, lost))
    try:
        first = valkey.pid
        os.kill(first, signal.SIGKILL)
        async with asyncio.timeout(10):
            while valkey.pid == first or not alive(valkey.pid or 0):
                assert not lost.is_set()
                await asyncio.sleep(0.05)
        assert client(url).get("written-before") == "1", "same port, password and AOF"
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        pid = valkey.pid
        valkey.stop()
    assert pid is not None and not alive(pid)


def test_the_server_does_not_share_the_process_group_of_its_starter(tmp_path):
    """A Ctrl-C reaches every process of the terminal's foreground group: the embedded Valkey
    shut down on it while serve's workers were still handing their jobs back, and serve started
    it again in the middle of its own shutdown."""
    valkey = EmbeddedValkey(tmp_path)
    valkey.start()
    try:
        assert valkey.pid is not None
        assert os.getpgid(valkey.pid) != os.getpgid(0)
    finally:
        valkey.stop()


async def test_ctrl_c_in_the_terminal_of_serve_leaves_its_valkey_to_serve(tmp_path):
    """SIGINT to serve's whole process group (a Ctrl-C): serve stops its Valkey itself, last
    (SIGTERM), instead of the signal shutting it down under the workers."""
    data = tmp_path / "data"
    log_path = tmp_path / "serve.log"
    with open(log_path, "ab") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "comfyfleet", "serve", "--port", str(free_port()), "--data-dir", str(data),
             "--backend", "http://127.0.0.1:9"], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)  # its own group, as a terminal gives it
    try:
        async with asyncio.timeout(60):
            while "comfyfleet worker" not in log_path.read_text(errors="replace"):
                assert serve.poll() is None, log_path.read_text(errors="replace")
                await asyncio.sleep(0.05)
        pid = json.loads((data / "valkey" / RECORD_NAME).read_text())["pid"]
        os.killpg(serve.pid, signal.SIGINT)
        async with asyncio.timeout(30):
            while serve.poll() is None:
                await asyncio.sleep(0.05)
        assert serve.returncode == 0, log_path.read_text(errors="replace")
        valkey_log = (data / "valkey" / "valkey.log").read_text(errors="replace")
        assert "Received SIGINT" not in valkey_log
        assert "Received SIGTERM" in valkey_log
        assert not alive(pid)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(10)
        record = data / "valkey" / RECORD_NAME
        if record.exists() and alive(json.loads(record.read_text())["pid"]):
            os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)
