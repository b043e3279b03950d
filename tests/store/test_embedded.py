"""The embedded Valkey: append-only persistence in the data dir, a pidfile, a clean stop, and a
server left behind by a killed earlier run found and reused (or, when stale, cleaned up)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis as sync_redis

from comfyfleet.errors import ConfigError
from comfyfleet.store.embedded import RECORD_NAME, EmbeddedValkey


def client(url: str) -> sync_redis.Redis:
    return sync_redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_persistence_pidfile_and_stop(tmp_path):
    valkey = EmbeddedValkey(tmp_path)
    url = valkey.start()
    try:
        redis = client(url)
        assert redis.config_get("appendonly") == {"appendonly": "yes"}
        assert redis.config_get("dir")["dir"] == str(tmp_path.resolve() / "valkey")
        assert int((tmp_path / "valkey" / "valkey.pid").read_text()) == valkey.pid
        redis.set("kept", "yes")
        redis.close()
    finally:
        pid = valkey.pid
        valkey.stop()
    assert not alive(pid)
    assert not (tmp_path / "valkey" / RECORD_NAME).exists()

    again = EmbeddedValkey(tmp_path)
    try:
        assert client(again.start()).get("kept") == "yes"
        assert not again.reused
    finally:
        again.stop()


def test_a_server_left_by_a_killed_run_is_reused(tmp_path):
    starter = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; "
         "from comfyfleet.store.embedded import EmbeddedValkey; "
         "v = EmbeddedValkey(Path(sys.argv[1])); print(v.start(), flush=True); time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    url = starter.stdout.readline().strip()
    client(url).set("from-the-first-run", "1")
    starter.send_signal(signal.SIGKILL)
    starter.wait(10)

    record = json.loads((tmp_path / "valkey" / RECORD_NAME).read_text())
    assert alive(record["pid"]), "the server outlives its killed parent"
    valkey = EmbeddedValkey(tmp_path)
    try:
        assert valkey.start() == url
        assert valkey.reused and valkey.pid == record["pid"]
        assert client(url).get("from-the-first-run") == "1"
    finally:
        valkey.stop()
    assert not alive(record["pid"])


def test_users_of_one_data_dir_share_the_server_and_the_last_one_stops_it(tmp_path):
    """``comfyfleet api`` and ``comfyfleet worker`` on one data dir: the first to stop leaves
    the server running for the other."""
    first, second = EmbeddedValkey(tmp_path), EmbeddedValkey(tmp_path)
    url = first.start()
    try:
        assert second.start() == url and second.reused
        pid = second.pid
        first.stop()
        assert alive(pid), "still used by the second"
        assert client(url).ping()
    finally:
        first.stop()
        second.stop()
    assert not alive(pid), "the last user stops it"
    assert not (tmp_path / "valkey" / RECORD_NAME).exists()


def test_a_stale_record_is_removed_and_a_fresh_server_started(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "valkey").mkdir()
    (tmp_path / "valkey" / RECORD_NAME).write_text(json.dumps({"pid": dead.pid, "port": 1}))
    valkey = EmbeddedValkey(tmp_path)
    try:
        url = valkey.start()
        assert not valkey.reused and valkey.pid != dead.pid
        assert client(url).ping()
        assert json.loads((tmp_path / "valkey" / RECORD_NAME).read_text())["pid"] == valkey.pid
    finally:
        valkey.stop()


def test_a_record_pointing_at_another_process_is_not_trusted(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "valkey").mkdir()
        (tmp_path / "valkey" / RECORD_NAME).write_text(json.dumps({"pid": other.pid, "port": 1}))
        valkey = EmbeddedValkey(tmp_path)
        try:
            valkey.start()
            assert not valkey.reused and valkey.pid != other.pid
        finally:
            valkey.stop()
        assert other.poll() is None, "a process that is not our server is never signalled"
    finally:
        other.kill()
        other.wait()


def test_garbage_in_the_record_is_cleaned_up(tmp_path):
    (tmp_path / "valkey").mkdir()
    (tmp_path / "valkey" / RECORD_NAME).write_text("{not json")
    valkey = EmbeddedValkey(tmp_path)
    try:
        assert client(valkey.start()).ping()
    finally:
        valkey.stop()


def test_an_unusable_data_dir_is_a_config_error_naming_it(tmp_path):
    """A file where the data directory should be: a ConfigError saying where and why, not a bare
    OSError (callers other than the CLI get the same plain message)."""
    a_file = tmp_path / "afile"
    a_file.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"cannot start the embedded Valkey in .*afile.*: Not a directory"):
        EmbeddedValkey(a_file).start()
