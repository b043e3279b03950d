"""The WebSocket frame parser: every message kind, leniency, and malformed input."""

from __future__ import annotations

import json
import struct

import pytest

from comfyfleet.comfy import messages as m
from comfyfleet.errors import BackendProtocolError

PID = "p-1"


def text(kind: str, data: object) -> str:
    return json.dumps({"type": kind, "data": data})


def test_status_on_connect_and_on_queue_change():
    connect = {"status": {"exec_info": {"queue_remaining": 2}}, "sid": "orch-1"}
    assert m.parse(text("status", connect)) == m.StatusMessage(2, "orch-1")
    assert m.parse(text("status", {"status": {"exec_info": {"queue_remaining": 0}}})) == \
        m.StatusMessage(0, None)
    assert m.parse(text("status", {})) == m.StatusMessage(None, None)


def test_execution_start_cached_success():
    assert m.parse(text("execution_start", {"prompt_id": PID, "timestamp": 17})) == \
        m.ExecutionStart(PID, 17)
    assert m.parse(text("execution_cached", {"nodes": ["1", "2"], "prompt_id": PID})) == \
        m.ExecutionCached(PID, ("1", "2"), None)
    success = m.parse(text("execution_success", {"prompt_id": PID, "timestamp": 18}))
    assert success == m.ExecutionSuccess(PID, 18) and m.is_terminal(success)


def test_executing_node_start_finish_and_reconnect_replay():
    start = m.parse(text("executing", {"node": "3", "display_node": "3", "prompt_id": PID}))
    assert start == m.Executing(PID, "3", "3") and not m.is_terminal(start)
    done = m.parse(text("executing", {"node": None, "prompt_id": PID}))
    assert done == m.Executing(PID, None, None) and m.is_terminal(done)
    replay = m.parse(text("executing", {"node": "3"}))
    assert replay == m.Executing(None, "3", None) and m.prompt_id_of(replay) is None


def test_progress_values_become_floats():
    msg = m.parse(text("progress", {"value": 3, "max": 20, "prompt_id": PID, "node": "5"}))
    assert msg == m.ProgressMessage(PID, "5", 3.0, 20.0)
    assert isinstance(msg.value, float) and isinstance(msg.max, float)


def test_progress_state_is_a_read_only_hashable_mapping():
    entry = {"value": 2, "max": 4, "state": "running", "node_id": "10.0.1", "prompt_id": PID,
             "display_node_id": "10", "parent_node_id": "10", "real_node_id": "10"}
    msg = m.parse(text("progress_state", {"prompt_id": PID, "nodes": {"10.0.1": entry}}))
    assert isinstance(msg, m.ProgressState) and m.prompt_id_of(msg) == PID
    assert msg.nodes["10.0.1"] == m.NodeProgress("10.0.1", 2.0, 4.0, "running", "10", "10", "10")
    assert list(msg.nodes.items())[0][0] == "10.0.1"
    with pytest.raises(TypeError):
        msg.nodes["x"] = entry  # type: ignore[index]
    assert hash(msg) == hash(m.parse(text("progress_state", {"prompt_id": PID,
                                                            "nodes": {"10.0.1": entry}})))


def test_executed_keeps_the_output_dict():
    data = {"node": "9", "display_node": "9", "prompt_id": PID,
            "output": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}
    msg = m.parse(text("executed", data))
    assert msg == m.Executed(PID, "9", "9", data["output"])
    assert m.parse(text("executed", {"node": "9", "prompt_id": PID})).output == {}


def error_data(**changes: object) -> dict:
    data = {"prompt_id": PID, "node_id": "2", "node_type": "KSampler", "executed": ["1"],
            "exception_message": "boom\n", "exception_type": "ValueError",
            "traceback": ["  File x\n", "  File y\n"], "current_inputs": {}, "current_outputs": [],
            "timestamp": 99}
    return {**data, **changes}


def test_execution_error():
    msg = m.parse(text("execution_error", error_data()))
    assert msg == m.ExecutionError(PID, "2", "KSampler", "ValueError", "boom\n",
                                   ("  File x\n", "  File y\n"), ("1",), 99, False)
    assert m.is_terminal(msg)


def test_execution_blocked_does_not_end_the_prompt():
    data = error_data(exception_type="ExecutionBlocked")
    del data["timestamp"]
    msg = m.parse(text("execution_error", data))
    assert msg.blocked and msg.timestamp is None and not m.is_terminal(msg)


def test_execution_interrupted():
    data = {"prompt_id": PID, "node_id": "2", "node_type": "X", "executed": [], "timestamp": 5}
    msg = m.parse(text("execution_interrupted", data))
    assert msg == m.ExecutionInterrupted(PID, "2", "X", (), 5) and m.is_terminal(msg)


def test_logs_and_feature_flags():
    logs = m.parse(text("logs", {"entries": [{"t": "now", "m": "got prompt\n"}], "size": None}))
    assert logs == m.Logs(({"t": "now", "m": "got prompt\n"},), None)
    flags = m.parse(text("feature_flags", {"supports_preview_metadata": True}))
    assert flags == m.FeatureFlags({"supports_preview_metadata": True})


def test_unknown_text_type_is_kept_not_raised():
    msg = m.parse(text("display_component", {"prompt_id": PID, "x": 1}))
    assert msg == m.UnknownMessage("display_component", {"prompt_id": PID, "x": 1})
    assert m.prompt_id_of(msg) == PID and not m.is_terminal(msg)
    assert m.parse('{"type": "crystools.monitor"}') == m.UnknownMessage("crystools.monitor", None)


def test_extra_keys_are_ignored_and_missing_optional_keys_are_none():
    msg = m.parse(text("executing", {"node": "1", "prompt_id": PID, "workflow_id": "w"}))
    assert msg == m.Executing(PID, "1", None)
    assert m.parse(text("execution_interrupted", {})) == m.ExecutionInterrupted(None, None, None, ())


def test_preview_image_type_1():
    jpeg = m.parse(struct.pack(">II", 1, 1) + b"\xff\xd8jpeg")
    assert jpeg == m.PreviewImage("image/jpeg", b"\xff\xd8jpeg", None, None, None)
    assert m.parse(struct.pack(">II", 1, 2) + b"png").content_type == "image/png"
    assert m.parse(struct.pack(">II", 1, 7) + b"?").content_type == "application/octet-stream"


def test_preview_image_with_metadata_type_4():
    metadata = json.dumps({"node_id": "10.0.1", "prompt_id": PID, "display_node_id": "10",
                           "parent_node_id": "10", "real_node_id": "10",
                           "image_type": "image/png"}).encode()
    msg = m.parse(struct.pack(">II", 4, len(metadata)) + metadata + b"\x89PNG")
    assert msg == m.PreviewImage("image/png", b"\x89PNG", PID, "10.0.1", "10")
    assert m.prompt_id_of(msg) == PID


def test_progress_text_type_3():
    node = "12".encode()
    msg = m.parse(struct.pack(">II", 3, len(node)) + node + "größe: 40".encode())
    assert msg == m.ProgressText("12", "größe: 40") and m.prompt_id_of(msg) is None


def test_unknown_binary_event_type_is_kept():
    assert m.parse(struct.pack(">I", 9) + b"abc") == m.UnknownMessage("binary:9", b"abc")
    assert m.parse(bytearray(struct.pack(">I", 2))) == m.UnknownMessage("binary:2", b"")


def test_parse_text_and_parse_binary_directly():
    assert m.parse_text(text("execution_start", {"prompt_id": PID})) == m.ExecutionStart(PID)
    assert m.parse_binary(struct.pack(">II", 1, 1)) == m.PreviewImage("image/jpeg", b"")


@pytest.mark.parametrize("frame", [
    "not json",
    "",
    "[1, 2]",
    '{"data": {}}',
    '{"type": 3, "data": {}}',
    "[" * 100_000,
    text("status", "busy"),
    text("progress", {"value": "3", "max": 10}),
    text("progress", {"value": 3}),
    text("progress", {"value": True, "max": 10}),
    text("progress", {"value": 10 ** 400, "max": 10}),
    '{"type": "progress", "data": {"value": NaN, "max": 10}}',
    text("progress_state", {"nodes": []}),
    text("progress_state", {"nodes": {"1": {"value": 1, "max": 2}}}),
    text("progress_state", {"nodes": {"1": "running"}}),
    text("execution_cached", {"nodes": "1,2"}),
    text("executing", {"node": {"id": 1}}),
    text("execution_start", {"timestamp": "soon"}),
])
def test_malformed_text_raises_protocol_error(frame: str):
    with pytest.raises(BackendProtocolError):
        m.parse(frame)


@pytest.mark.parametrize("frame", [
    b"",
    b"\x00\x00\x01",
    struct.pack(">I", 1),
    struct.pack(">I", 4) + b"\x00\x00",
    struct.pack(">II", 4, 50) + b"{}",
    struct.pack(">II", 4, 3) + b"{x}",
    struct.pack(">II", 4, 2) + b"[]",
    struct.pack(">II", 4, 4) + b"\xff\xfe\x00\x00",
    struct.pack(">I", 3) + b"\x00",
    struct.pack(">II", 3, 9) + b"1",
])
def test_malformed_binary_raises_protocol_error(frame: bytes):
    with pytest.raises(BackendProtocolError):
        m.parse(frame)


def test_unsupported_frame_object_raises_protocol_error():
    with pytest.raises(BackendProtocolError):
        m.parse(42)  # type: ignore[arg-type]


def test_integer_ids_are_read_as_strings():
    msg = m.parse(text("executing", {"node": 7, "prompt_id": PID}))
    assert msg.node == "7"
    assert m.parse(text("execution_cached", {"nodes": [1, "2"]})).nodes == ("1", "2")
