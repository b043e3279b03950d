"""`RecordLog`: each start/end line is in the file, whole, as soon as it is written."""

from __future__ import annotations

import json
import os

from comfyfleet.sim.config import PromptRecord
from comfyfleet.sim.record_log import RecordLog


def _record(prompt_id: str = "p-1") -> PromptRecord:
    return PromptRecord(prompt_id, "client-1", 3, 1700000000.5)


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_line_is_readable_while_the_log_stays_open(tmp_path):
    """A reader polling the file sees the line once `write` returns, before any close."""
    path = tmp_path / "records.jsonl"
    log = RecordLog(str(path), "sim-7")
    record = _record()
    log.write("start", record)
    assert [(line["event"], line["prompt_id"]) for line in _lines(path)] == [("start", "p-1")]
    record.ended_at, record.outcome = 1700000001.0, "success"
    log.write("end", record)
    lines = _lines(path)
    assert [line["event"] for line in lines] == ["start", "end"]
    assert list(lines[1]) == ["event", "server", "pid", "t", "prompt_id", "client_id", "number",
                              "started_at", "ended_at", "outcome", "models_loaded", "with_partner_key"]
    assert lines[1]["server"] == "sim-7" and lines[1]["pid"] == os.getpid()
    assert (lines[1]["client_id"], lines[1]["number"], lines[1]["outcome"]) == ("client-1", 3, "success")
    assert lines[0]["ended_at"] is None and lines[0]["outcome"] is None
    log.close()


def test_logs_sharing_a_file_append_whole_lines(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"event": "start", "prompt_id": "earlier"}\n')
    first, second = RecordLog(str(path), "sim-a"), RecordLog(str(path), "sim-b")
    for n in range(20):
        (first if n % 2 else second).write("start", _record(f"p-{n}"))
    assert [line["prompt_id"] for line in _lines(path)] == ["earlier"] + [f"p-{n}" for n in range(20)]
    first.close()
    second.close()


def test_a_deleted_file_is_created_again(tmp_path):
    path = tmp_path / "records.jsonl"
    log = RecordLog(str(path), "sim-1")
    log.write("start", _record("old"))
    path.unlink()
    log.write("start", _record("new"))
    assert [line["prompt_id"] for line in _lines(path)] == ["new"]
    log.close()


def test_no_path_writes_nothing(tmp_path):
    log = RecordLog(None, "sim-1")
    log.write("start", _record())
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_a_moved_or_replaced_file_is_let_go(tmp_path):
    path = tmp_path / "records.jsonl"
    log = RecordLog(str(path), "sim-1")
    log.write("start", _record("first"))
    path.rename(tmp_path / "rotated.jsonl")
    log.write("start", _record("second"))  # a new file at the path
    replaced = path.with_suffix(".new")
    replaced.write_text('{"event": "start", "prompt_id": "other"}\n')
    replaced.replace(path)
    log.write("start", _record("third"))
    assert [line["prompt_id"] for line in _lines(tmp_path / "rotated.jsonl")] == ["first"]
    assert [line["prompt_id"] for line in _lines(path)] == ["other", "third"]
    log.close()
