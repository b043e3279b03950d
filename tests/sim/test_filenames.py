"""`SaveNames` gives the name ComfyUI's listing would give, whoever else writes the folder."""

from __future__ import annotations

import os

from comfyfleet.sim.filenames import SaveNames, highest_on_disk


def _save(names: SaveNames, folder, prefix: str) -> str:
    name = names.next_name(str(folder), prefix)
    (folder / name).write_bytes(b"png")
    names.saved(str(folder), prefix, name)
    return name


def test_counts_up_per_prefix(tmp_path):
    names = SaveNames()
    assert [_save(names, tmp_path, "a") for _ in range(3)] == ["a_00001_.png", "a_00002_.png", "a_00003_.png"]
    assert _save(names, tmp_path, "b") == "b_00001_.png"
    assert _save(names, tmp_path, "sub/a") == "a_00004_.png"  # the folder part of a prefix is dropped
    assert highest_on_disk(str(tmp_path), "a") == 4


def test_starts_after_files_already_there(tmp_path):
    for existing in ("x_00007_.png", "x_00003_.png", "x_extra_00099_.png", "xx_00050_.png", "x_123456_.png"):
        (tmp_path / existing).write_bytes(b"")
    assert _save(SaveNames(), tmp_path, "x") == "x_123457_.png"


def test_files_added_by_another_writer_are_seen(tmp_path):
    names = SaveNames()
    assert _save(names, tmp_path, "p") == "p_00001_.png"
    (tmp_path / "p_00040_.png").write_bytes(b"")
    os.utime(tmp_path, ns=(0, 1))  # whatever the clock's tick, the folder's mtime is now different
    assert _save(names, tmp_path, "p") == "p_00041_.png"


def test_a_name_taken_behind_its_back_is_never_overwritten(tmp_path):
    """Another simulator sharing the folder saves in the same mtime tick: the taken name is skipped."""
    ours, theirs = SaveNames(), SaveNames()
    assert _save(ours, tmp_path, "s") == "s_00001_.png"
    mtime = os.stat(tmp_path).st_mtime_ns
    assert _save(theirs, tmp_path, "s") == "s_00002_.png"
    os.utime(tmp_path, ns=(mtime, mtime))  # as if both writes fell in one timestamp tick
    assert _save(ours, tmp_path, "s") == "s_00003_.png"
    assert sorted(os.listdir(tmp_path)) == ["s_00001_.png", "s_00002_.png", "s_00003_.png"]


def test_removed_files_free_their_counters_like_a_listing_does(tmp_path):
    names = SaveNames()
    for _ in range(3):
        _save(names, tmp_path, "r")
    for name in os.listdir(tmp_path):
        os.remove(tmp_path / name)
    os.utime(tmp_path, ns=(0, 1))
    assert _save(names, tmp_path, "r") == "r_00001_.png"
