"""The embedded Valkey: append-only persistence in the data dir, a pidfile, a clean stop, and a
server left behind by a killed earlier run found and reused (or, when stale, cleaned up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis as sync_redis

from comfyfleet.errors import ConfigError
from comfyfleet.store.embedded import RECORD_NAME, EmbeddedValkey
from helpers.processes import valkey_left_by_a_killed_starter


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
    url = valkey_left_by_a_killed_starter(tmp_path)
    client(url).set("from-the-first-run", "1")

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


def test_each_server_has_a_password_of_its_own_and_a_stale_address_is_refused(tmp_path):
    """Embedded ports come from a small range and are used again. A client still holding the
    address of a stopped server read and wrote the jobs of whichever deployment's server took the
    port next; with a password per server it is refused there. Nor can another local user in."""
    first = EmbeddedValkey(tmp_path / "one")
    url = first.start()
    port = int(url.rsplit(":", 1)[1])
    try:
        assert ":" in url.split("@")[0].removeprefix("redis://") and "@127.0.0.1:" in url
        assert client(url).ping()
        with pytest.raises(sync_redis.AuthenticationError):
            client(f"redis://127.0.0.1:{port}").set("k", "v")
        assert os.stat(first.record_path).st_mode & 0o777 == 0o600, "the record holds the password"
    finally:
        first.stop()
    other = EmbeddedValkey(tmp_path / "two", port=port)  # another data dir's server on that port
    try:
        assert other.start() != url
        with pytest.raises(sync_redis.AuthenticationError):
            client(url).set("k", "v")
    finally:
        other.stop()


def test_what_is_printed_of_a_redis_url_hides_its_password():
    from comfyfleet.store.connection import without_password
    assert without_password("redis://:s3cret@127.0.0.1:16379") == "redis://:***@127.0.0.1:16379"
    assert without_password("rediss://app:s3cret@cache:6380/2") == "rediss://app:***@cache:6380/2"
    assert without_password("redis://cache:6379/0") == "redis://cache:6379/0"
    # too malformed to parse, still without it
    assert without_password("redis://:s3cret@cache:abc/0") == "redis://:***@cache:abc/0"
    assert without_password("redis://app:s3c@ret@[::1/0") == "redis://app:***@[::1/0"
    from comfyfleet.config import check_redis_url
    with pytest.raises(ConfigError) as refused:
        check_redis_url("redis://:s3cret@cache:abc/0")
    assert "s3cret" not in str(refused.value) and "cache:abc" in str(refused.value)


def test_a_server_still_loading_a_large_data_set_is_waited_for_not_killed(tmp_path, monkeypatch):
    """A large append-only file takes a while to load, and the server answers LOADING
    meanwhile: that is a server starting, waited for as long as it loads, not one that failed to
    answer (killed at the startup timeout, it never came up with a large data set at all)."""
    from comfyfleet.store import embedded

    valkey = EmbeddedValkey(tmp_path)
    redis = client(valkey.start())
    try:
        with redis.pipeline(transaction=False) as pipe:
            for i in range(3000):
                pipe.set(f"job:{i}", "x" * 100)
            pipe.execute()
        redis.bgrewriteaof()  # the keys in an RDB base file, which loads key by key
        while redis.info("persistence")["aof_rewrite_in_progress"]:
            pass
    finally:
        redis.close()
        valkey.stop()

    plain = embedded._config_text
    monkeypatch.setattr(embedded, "_config_text", lambda **kw: plain(**kw) + (
        "key-load-delay 500\nloading-process-events-interval-bytes 1024\n"))  # ~1.5 s of loading
    slow = EmbeddedValkey(tmp_path, startup_timeout_s=0.5)
    redis = client(slow.start())
    try:
        assert redis.dbsize() == 3000
    finally:
        redis.close()
        slow.stop()
