"""The keys file: parsing, plain errors for every mistake, and reloading without a restart."""

from __future__ import annotations

import os

import pytest

from comfyfleet.apikeys import KeyRing, digest, key_entry, load_keys, new_key, parse_keys
from comfyfleet.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_new_keys_are_unique_and_their_entries_parse():
    keys = [new_key() for _ in range(50)]
    assert len(set(keys)) == 50 and all(k.startswith("cfk_") and len(k) > 40 for k in keys)
    ring = parse_keys(key_entry(keys[0], "alice", "user") + key_entry(keys[1], "ops", "admin"), "k")
    assert ring[digest(keys[0])].owner == "alice" and not ring[digest(keys[0])].admin
    assert ring[digest(keys[1])].admin
    assert keys[0] not in key_entry(keys[0], "alice", "user"), "the file holds only the hash"


@pytest.mark.parametrize(("text", "said"), [
    ("[[keys]\n", "not valid TOML"),
    ("[other]\nx = 1\n", "unknown section"),
    ("keys = 3\n", "must be [[keys]] entries"),
    ('[[keys]]\nowner = "a"\nsha256 = "00"\n', "64 hex digits"),
    (f'[[keys]]\nowner = "a b"\nsha256 = "{"0" * 64}"\n', "owner must be"),
    (f'[[keys]]\nowner = "a"\nrole = "root"\nsha256 = "{"0" * 64}"\n', "role must be user or admin"),
    (f'[[keys]]\nowner = "a"\nkey = "plain"\nsha256 = "{"0" * 64}"\n', "unknown field(s) key"),
    (f'[[keys]]\nowner = "a"\nsha256 = "{"0" * 64}"\n[[keys]]\nowner = "b"\nsha256 = "{"0" * 64}"\n',
     "listed twice"),
])
def test_a_bad_keys_file_is_a_plain_error_naming_the_entry(text, said):
    with pytest.raises(ConfigError, match="keys.toml") as caught:
        parse_keys(text, "keys.toml")
    assert said in str(caught.value)


def test_a_missing_or_unreadable_file_is_a_plain_error(tmp_path):
    with pytest.raises(ConfigError, match="no such API keys file"):
        load_keys(tmp_path / "absent.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot read"):
        load_keys(tmp_path / "bin.toml")


def test_the_ring_follows_the_file_and_keeps_the_last_good_keys(tmp_path):
    path, clock = tmp_path / "keys.toml", Clock()
    first, second = new_key(), new_key()
    path.write_text(key_entry(first, "alice", "user"))
    ring = KeyRing(path, clock=clock)
    assert ring.lookup(first).owner == "alice" and ring.lookup(second) is None

    path.write_text(key_entry(second, "bob", "admin"))  # alice's key revoked, bob's added
    os.utime(path, ns=(1, 1))  # a different stamp even within the file system's time resolution
    assert ring.lookup(second) is None, "not re-read before a second has passed"
    clock.now = 1.5
    assert ring.lookup(second).admin and ring.lookup(first) is None

    path.write_text("[[keys]\n")  # broken: the previous keys stay
    os.utime(path, ns=(2, 2))
    clock.now = 3.0
    assert ring.lookup(second).owner == "bob"


@pytest.mark.parametrize("value", ["0", "-1", '"5"', "true", "2.5", "1000001"])
def test_max_active_must_be_a_positive_whole_number(value):
    text = f'[[keys]]\nowner = "a"\nsha256 = "{"0" * 64}"\nmax_active = {value}\n'
    with pytest.raises(ConfigError, match="max_active must be a whole number"):
        parse_keys(text, "keys.toml")


def test_max_active_is_read():
    ring = parse_keys(f'[[keys]]\nowner = "a"\nsha256 = "{"0" * 64}"\nmax_active = 7\n', "k")
    assert ring["0" * 64].max_active == 7


def test_a_new_entry_carries_its_limit():
    key = new_key()
    assert parse_keys(key_entry(key, "a", "user", max_active=4), "k")[digest(key)].max_active == 4
    assert parse_keys(key_entry(key, "a", "user"), "k")[digest(key)].max_active is None
