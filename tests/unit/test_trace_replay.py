"""Replay the real ComfyUI 0.3.64 captures through the parser and the progress model."""

from __future__ import annotations

import json
import re
import struct
from collections import Counter

import pytest

from comfyfleet.comfy import messages as m
from traces import TRACE_DIR, TRACE_FILES, distinct, replay, runs, ws_binary, ws_text

# -- expected message classes per file and connection ------------------------------------------
# Whitespace-separated class names; "Name*N" and "(A B)*N" repeat; "#" starts a comment.
MESSAGE_CLASSES = {
    "01_success_progress.jsonl": {"ws1": """
        StatusMessage                                               # on connect
        StatusMessage*2 ExecutionStart ExecutionCached              # queued, started, nothing cached
        ProgressState Executing ProgressState                       # node 1
        ProgressState Executing (ProgressState ProgressMessage)*5 ProgressState   # node 2, 5 steps
        ProgressState Executing Executed ProgressState              # node 3 (SaveImage)
        ExecutionSuccess StatusMessage Executing
    """},
    "01b_success_feature_flags.jsonl": {"ws1": """
        StatusMessage FeatureFlags
        StatusMessage*2 ExecutionStart ExecutionCached
        ProgressState Executing (ProgressState ProgressMessage)*3 ProgressState
        ProgressState Executing Executed ProgressState
        ExecutionSuccess StatusMessage Executing
    """},
    "02_node_error.jsonl": {"ws1": """
        StatusMessage
        StatusMessage*2 ExecutionStart ExecutionCached              # ValueError
        ProgressState Executing ProgressState
        ProgressState Executing ExecutionError StatusMessage Executing
        StatusMessage*2 ExecutionStart ExecutionCached              # fake OOM, node 1 cached
        ProgressState Executing ExecutionError StatusMessage Executing
    """},
    "03_interrupt.jsonl": {"ws1": """
        StatusMessage
        StatusMessage*2 ExecutionStart ExecutionCached              # A
        ProgressState Executing ProgressState
        ProgressState Executing StatusMessage*2                     # B and C queued
        (ProgressState ProgressMessage)*2 StatusMessage             # C deleted
        (ProgressState ProgressMessage)*2 ExecutionInterrupted StatusMessage Executing
        StatusMessage ExecutionStart ExecutionCached                # B
        ProgressState Executing (ProgressState ProgressMessage)*3 ProgressState
        ProgressState Executing Executed ProgressState
        ExecutionSuccess StatusMessage Executing
    """},
    "04_cached_resubmit.jsonl": {"ws1": """
        StatusMessage
        StatusMessage*2 ExecutionStart ExecutionCached              # run 1
        ProgressState Executing (ProgressState ProgressMessage)*3 ProgressState
        ProgressState Executing Executed ProgressState
        ExecutionSuccess StatusMessage Executing
        StatusMessage*2 ExecutionStart ExecutionCached              # run 2: all cached
        Executed ProgressState ExecutionSuccess StatusMessage Executing
        StatusMessage*2 ExecutionStart ExecutionCached              # run 3: only SaveImage runs
        ProgressState Executing Executed ProgressState
        ExecutionSuccess StatusMessage Executing
    """},
    "05_validation_failure.jsonl": {"ws1": """
        StatusMessage                                               # 400s emit nothing
        StatusMessage*2 ExecutionStart ExecutionCached
        ProgressState Executing ProgressState ProgressMessage ProgressState
        ProgressState Executing Executed ProgressState
        ExecutionSuccess StatusMessage Executing
    """},
    "06_reconnect_same_clientid.jsonl": {
        "ws1": """
            StatusMessage
            StatusMessage*2 ExecutionStart ExecutionCached
            ProgressState Executing (ProgressState ProgressMessage)*2
        """,
        "ws2": """
            StatusMessage Executing                                 # replay without prompt_id
            (ProgressState ProgressMessage)*7 ProgressState         # steps 6..12
            ProgressState Executing Executed ProgressState
            ExecutionSuccess StatusMessage Executing
        """,
    },
    "06b_duplicate_clientid.jsonl": {
        "ws1": """
            StatusMessage
            StatusMessage*2 ExecutionStart ExecutionCached
            ProgressState Executing (ProgressState ProgressMessage)*2
        """,
        "ws2": "StatusMessage Executing (ProgressState ProgressMessage)*3  # then deaf",
    },
    "07_no_client_id_broadcast.jsonl": dict.fromkeys(("observer", "anon_no_clientid"), """
        StatusMessage
        StatusMessage*2 ProgressState*2 (ProgressMessage ProgressState)*3 ProgressState*2
        StatusMessage                                               # run 1 over, no terminal event
        StatusMessage*2 ProgressState*2 ProgressMessage ProgressState ProgressMessage
        ExecutionInterrupted StatusMessage
    """),
    "08_history_race.jsonl": {"ws1": """
        StatusMessage
        StatusMessage*2 ExecutionStart ExecutionCached              # success, first: uncached
        ProgressState Executing ProgressState
        ProgressState Executing ProgressState ProgressMessage ProgressState
        ProgressState Executing Executed ProgressState ExecutionSuccess StatusMessage Executing
        (StatusMessage*2 ExecutionStart ExecutionCached
         ProgressState Executing ProgressState ProgressMessage ProgressState
         ProgressState Executing Executed ProgressState ExecutionSuccess StatusMessage Executing)*14
        StatusMessage*2 ExecutionStart ExecutionCached              # error, first: uncached
        ProgressState Executing ProgressState
        ProgressState Executing ExecutionError StatusMessage Executing
        (StatusMessage*2 ExecutionStart ExecutionCached
         ProgressState Executing ExecutionError StatusMessage Executing)*14
        StatusMessage*2 ExecutionStart ExecutionCached              # interrupt, first: uncached
        ProgressState Executing ProgressState
        ProgressState Executing ProgressState ProgressMessage
        ExecutionInterrupted StatusMessage Executing
        (StatusMessage*2 ExecutionStart ExecutionCached
         ProgressState Executing ProgressState ProgressMessage
         ExecutionInterrupted StatusMessage Executing)*14
    """},
    "09_misc_http.jsonl": {"ws1": """
        StatusMessage
        (StatusMessage*2 ExecutionStart ExecutionCached             # the same prompt_id twice
         ProgressState Executing ProgressState ProgressMessage ProgressState
         ProgressState Executing Executed ProgressState ExecutionSuccess StatusMessage Executing)*2
        StatusMessage*2 StatusMessage ExecutionStart ExecutionCached   # blocker, normal, front
        ProgressState Executing StatusMessage*2                     # front queued, queue cleared
        (ProgressState ProgressMessage)*8 ProgressState
        ProgressState Executing Executed ProgressState
        ExecutionSuccess StatusMessage Executing
    """},
    "10_progress_text_and_logs.jsonl": {
        "ws1": """
            StatusMessage Logs StatusMessage*2 ExecutionStart ExecutionCached
            ProgressState Executing ProgressState                   # 1 EmptyImage
            ProgressState Executing ProgressState                   # 2 GetImageSize
            ProgressState Executing Executed ProgressState          # 3 PreviewAny
            ProgressState Executing (ProgressState ProgressMessage)*2 ProgressState   # 4 OrchSlowInt
            ProgressState Executing Executed ProgressState          # 5 PreviewAny
            ExecutionSuccess StatusMessage Executing Logs
        """,
        "other_client": "StatusMessage*4",
    },
    "11_restart_SIGINT_ignored_by_background_process.jsonl": {
        "ws1": """
            StatusMessage
            StatusMessage*2 ExecutionStart ExecutionCached
            ProgressState Executing ProgressState
            ProgressState Executing StatusMessage*2
            (ProgressState ProgressMessage)*40 ProgressState        # SIGINT ignored: runs on
            ProgressState Executing Executed ProgressState ExecutionSuccess StatusMessage Executing
            StatusMessage ExecutionStart ExecutionCached
            ProgressState Executing (ProgressState ProgressMessage)*2 ProgressState
            ProgressState Executing Executed ProgressState ExecutionSuccess StatusMessage Executing
            StatusMessage ExecutionStart ExecutionCached
            ProgressState Executing ProgressState ProgressMessage ProgressState
            ProgressState Executing Executed ProgressState ExecutionSuccess StatusMessage Executing
        """,
        "ws2_same_clientid": """
            StatusMessage
            StatusMessage*2 ExecutionStart ExecutionCached
            ProgressState Executing ProgressState
            ProgressState Executing ProgressState ProgressMessage ProgressState
            ProgressState Executing Executed ProgressState ExecutionSuccess StatusMessage Executing
        """,
    },
    "11_restart_SIGTERM.jsonl": {
        "ws1": """
            StatusMessage
            StatusMessage*2 ExecutionStart StatusMessage ExecutionCached
            ProgressState Executing StatusMessage (ProgressState ProgressMessage)*2   # SIGTERM
        """,
        "ws2_same_clientid": """
            StatusMessage
            StatusMessage*2 ExecutionStart ExecutionCached
            ProgressState Executing ProgressState
            ProgressState Executing ProgressState ProgressMessage ProgressState
            ProgressState Executing Executed ProgressState ExecutionSuccess StatusMessage Executing
        """,
    },
    "12_history_cap.jsonl": {},
}

# (connection, binary event type) -> count, from the summaries
BINARY_EVENTS = {
    "01_success_progress.jsonl": {("ws1", 1): 5},
    "01b_success_feature_flags.jsonl": {("ws1", 4): 3},
    "07_no_client_id_broadcast.jsonl": {("observer", 1): 3, ("anon_no_clientid", 1): 3},
    "10_progress_text_and_logs.jsonl": {("ws1", 3): 1, ("other_client", 3): 1},
}


def expand(spec: str) -> list[str]:
    text = re.sub(r"#[^\n]*", "", spec)
    text = re.sub(r"\(([^()]*)\)\*(\d+)", lambda g: " ".join([g.group(1)] * int(g.group(2))), text)
    names: list[str] = []
    for token in text.split():
        name, _, count = token.partition("*")
        names.extend([name] * int(count or 1))
    return names


def test_every_trace_file_is_covered():
    assert sorted([*MESSAGE_CLASSES, "13_api_prefix_and_ping.json"]) == TRACE_FILES


@pytest.mark.parametrize("name", sorted(MESSAGE_CLASSES))
def test_message_classes_per_connection(name: str):
    got: dict[str, list[str]] = {}
    for conn, msg in ws_text(name):
        got.setdefault(conn, []).append(type(msg).__name__)
    assert got == {conn: expand(spec) for conn, spec in MESSAGE_CLASSES[name].items()}


@pytest.mark.parametrize("name", sorted(MESSAGE_CLASSES))
def test_binary_summaries(name: str):
    events = Counter((line["conn"], line.get("event_type")) for line in ws_binary(name))
    assert events == Counter(BINARY_EVENTS.get(name, {}))


def test_api_prefix_trace_status_frame():
    data = json.loads((TRACE_DIR / "13_api_prefix_and_ping.json").read_text())
    assert m.parse(json.dumps(data["api_ws_first_msg"])) == m.StatusMessage(0, "api-prefix-check")


# -- key facts -----------------------------------------------------------------------------------
def of_type(name: str, cls: type, conn: str | None = None) -> list:
    return [msg for _, msg in ws_text(name, conn) if isinstance(msg, cls)]


def test_trace_01_success_and_output():
    (executed,) = of_type("01_success_progress.jsonl", m.Executed)
    assert executed.node == "3" and executed.output["images"][0]["filename"] == "orch_00001_.png"
    (success,) = of_type("01_success_progress.jsonl", m.ExecutionSuccess)
    assert success.prompt_id == "7252232f-8ae4-4594-8e23-cec508c29c79"
    assert success.timestamp == 1795446244020
    first = ws_text("01_success_progress.jsonl")[0][1]
    assert first == m.StatusMessage(0, "orch-70ad17c7")


def test_trace_01b_feature_flags():
    (flags,) = of_type("01b_success_feature_flags.jsonl", m.FeatureFlags)
    assert flags.flags == {"supports_preview_metadata": True, "max_upload_size": 104857600}


def test_trace_02_execution_errors():
    value_error, oom = of_type("02_node_error.jsonl", m.ExecutionError)
    for error in (value_error, oom):
        assert (error.node_id, error.node_type, error.blocked) == ("2", "OrchFailingNode", False)
        assert error.traceback and all(isinstance(line, str) for line in error.traceback)
        assert m.is_terminal(error)
    assert value_error.exception_type == "ValueError" and value_error.executed == ("1",)
    assert value_error.exception_message == "FailingNode deliberately failed: boom\n"
    assert oom.exception_type == "torch.OutOfMemoryError" and oom.executed == ()
    # the doc says the message always ends with a newline; the OOM tip does not
    assert oom.exception_message.startswith("Allocation on device: fake OOM (oom-test)\n")
    assert oom.exception_message.endswith("set the batch_size to a large number.")


def test_trace_03_interrupt():
    (interrupted,) = of_type("03_interrupt.jsonl", m.ExecutionInterrupted)
    assert interrupted == m.ExecutionInterrupted(
        "0887fbf0-ffd5-483d-a8aa-aaf98f3f254c", "2", "OrchSlowPassthrough", ("1",), 1795446264431)
    assert m.is_terminal(interrupted)


def test_trace_04_second_run_fully_cached():
    second = runs("04_cached_resubmit.jsonl")[1]
    cached = [msg for msg in second.messages if isinstance(msg, m.ExecutionCached)]
    assert [c.nodes for c in cached] == [("1", "2", "3")]
    assert [msg for msg in second.messages if isinstance(msg, m.Executing) and msg.node] == []
    (executed,) = [msg for msg in second.messages if isinstance(msg, m.Executed)]
    assert executed.output["images"][0]["filename"] == "orch_00004_.png"  # the first run's file


def test_trace_06_reconnect_replay_has_no_prompt_id():
    replayed = of_type("06_reconnect_same_clientid.jsonl", m.Executing, conn="ws2")[0]
    assert replayed == m.Executing(prompt_id=None, node="2", display_node=None)
    assert not m.is_terminal(replayed) and m.prompt_id_of(replayed) is None


def test_trace_07_broadcast_progress_without_executing():
    for conn in ("observer", "anon_no_clientid"):
        frames = [msg for _, msg in ws_text("07_no_client_id_broadcast.jsonl", conn)]
        assert any(isinstance(msg, m.ProgressMessage) for msg in frames)
        assert not any(isinstance(msg, (m.Executing, m.ExecutionStart, m.ExecutionSuccess))
                       for msg in frames)
        (interrupted,) = [msg for msg in frames if isinstance(msg, m.ExecutionInterrupted)]
        assert interrupted.executed == () and interrupted.node_id == "2"


def test_trace_09_duplicate_prompt_id_runs_twice():
    prompt_ids = [run.prompt_id for run in runs("09_misc_http.jsonl")]
    assert prompt_ids[:2] == ["dup-f38a8274", "dup-f38a8274"] and len(prompt_ids) == 3


def test_trace_10_logs_and_text_frame():
    logs = of_type("10_progress_text_and_logs.jsonl", m.Logs)
    assert [log.entries[0]["m"] for log in logs] == ["got prompt\n", "Prompt executed in 0.20 seconds\n"]
    executed = of_type("10_progress_text_and_logs.jsonl", m.Executed)
    assert [(e.node, e.output) for e in executed] == [("3", {"text": ["40"]}), ("5", {"text": ["30"]})]


# -- binary frames rebuilt from their summaries --------------------------------------------------
def test_binary_frames_rebuilt_from_summaries_parse():
    seen = set()
    for name in BINARY_EVENTS:
        for line in ws_binary(name):
            frame = rebuild(line)
            assert len(frame) == line["len"]
            msg = m.parse(frame)
            seen.add(line["event_type"])
            if line["event_type"] == m.TEXT:
                assert msg == m.ProgressText(line["node_id"], line["text"])
            else:
                assert msg.content_type == "image/jpeg" and len(msg.image) == line["image_bytes"]
                assert msg.prompt_id == line.get("metadata", {}).get("prompt_id")
    assert seen == {1, 3, 4}


def rebuild(line: dict) -> bytes:
    kind = line["event_type"]
    if kind == m.TEXT:
        node = line["node_id"].encode()
        return struct.pack(">II", 3, len(node)) + node + line["text"].encode()
    image = bytes.fromhex(line["image_magic"]).ljust(line["image_bytes"], b"\0")
    if kind == m.PREVIEW_IMAGE:
        return struct.pack(">II", 1, 1) + image
    metadata = json.dumps(line["metadata"]).encode()
    assert len(metadata) == line["metadata_len"]
    return struct.pack(">II", 4, len(metadata)) + metadata + image


# -- progress replay -----------------------------------------------------------------------------
ONE_STEP = [(0.0, 0), (0.3333, 1), (0.6667, 1), (0.6667, 2), (0.999, 3), (1.0, 3)]
THREE_STEPS = [(0.0, 0), (0.3333, 1), (0.4444, 1), (0.5556, 1), (0.6667, 1), (0.6667, 2),
               (0.999, 3), (1.0, 3)]
FAILED_IN_NODE_2 = [(0.0, 0), (0.3333, 1)]
FORTY_STEPS = [(0.3417, 1), (0.35, 1), (0.3583, 1), (0.3667, 1), (0.375, 1), (0.3833, 1),
               (0.3917, 1), (0.4, 1), (0.4083, 1), (0.4167, 1), (0.425, 1), (0.4333, 1),
               (0.4417, 1), (0.45, 1), (0.4583, 1), (0.4667, 1), (0.475, 1), (0.4833, 1),
               (0.4917, 1), (0.5, 1), (0.5083, 1), (0.5167, 1), (0.525, 1), (0.5333, 1),
               (0.5417, 1), (0.55, 1), (0.5583, 1), (0.5667, 1), (0.575, 1), (0.5833, 1),
               (0.5917, 1), (0.6, 1), (0.6083, 1), (0.6167, 1), (0.625, 1), (0.6333, 1),
               (0.6417, 1), (0.65, 1), (0.6583, 1), (0.6667, 1)]  # (1 + k/40) / 3

# file -> (connection followed, one list of distinct (value, nodes_done) per run)
PROGRESS = {
    "01_success_progress.jsonl": (None, [
        [(0.0, 0), (0.3333, 1), (0.4, 1), (0.4667, 1), (0.5333, 1), (0.6, 1), (0.6667, 1),
         (0.6667, 2), (0.999, 3), (1.0, 3)],
    ]),
    "01b_success_feature_flags.jsonl": (None, [THREE_STEPS]),
    "02_node_error.jsonl": (None, [FAILED_IN_NODE_2, FAILED_IN_NODE_2]),
    "03_interrupt.jsonl": (None, [
        [(0.0, 0), (0.3333, 1), (0.35, 1), (0.3667, 1), (0.3833, 1), (0.4, 1)],
        THREE_STEPS,
    ]),
    "04_cached_resubmit.jsonl": (None, [
        THREE_STEPS,
        [(0.0, 0), (0.999, 3), (1.0, 3)],  # fully cached
        [(0.0, 0), (0.6667, 2), (0.999, 3), (1.0, 3)],
    ]),
    # outputs 3 and 4 submitted, 4 failed validation: only 1 -> 2 -> 3 runs
    "05_validation_failure.jsonl": (None, [
        [(0.0, 0), (0.3333, 1), (0.6667, 1), (0.6667, 2), (0.999, 3), (1.0, 3)],
    ]),
    "06_reconnect_same_clientid.jsonl": (None, [
        [(0.0, 0), (0.3333, 1), (0.3611, 1), (0.3889, 1),  # steps 3-5 lost in the reconnect
         (0.5, 1), (0.5278, 1), (0.5556, 1), (0.5833, 1), (0.6111, 1), (0.6389, 1), (0.6667, 1),
         (0.6667, 2), (0.999, 3), (1.0, 3)],
    ]),
    "06b_duplicate_clientid.jsonl": (None, [
        [(0.0, 0), (0.3333, 1), (0.3571, 1), (0.381, 1), (0.4048, 1), (0.4286, 1), (0.4524, 1)],
    ]),
    # no client_id: no execution_cached, so cached node 1 is never counted
    "07_no_client_id_broadcast.jsonl": ("observer", [
        [(0.0, 0), (0.1111, 0), (0.2222, 0), (0.3333, 0), (0.3333, 1), (0.6667, 2)],
        [(0.0, 0), (0.0333, 0), (0.0667, 0)],
    ]),
    "08_history_race.jsonl": (None, [ONE_STEP] * 15 + [FAILED_IN_NODE_2] * 15
                              + [[(0.0, 0), (0.3333, 1), (0.3367, 1)]] * 15),
    "09_misc_http.jsonl": (None, [
        ONE_STEP, ONE_STEP,
        [(0.0, 0), (0.3333, 1), (0.375, 1), (0.4167, 1), (0.4583, 1), (0.5, 1), (0.5417, 1),
         (0.5833, 1), (0.625, 1), (0.6667, 1), (0.6667, 2), (0.999, 3), (1.0, 3)],
    ]),
    "10_progress_text_and_logs.jsonl": (None, [
        [(0.0, 0), (0.2, 1), (0.4, 2), (0.6, 3), (0.7, 3), (0.8, 3), (0.8, 4), (0.999, 5),
         (1.0, 5)],
    ]),
    "11_restart_SIGINT_ignored_by_background_process.jsonl": (None, [
        [(0.0, 0), (0.3333, 1), *FORTY_STEPS, (0.6667, 2), (0.999, 3), (1.0, 3)],
        [(0.0, 0), (0.3333, 1), (0.5, 1), (0.6667, 1), (0.6667, 2), (0.999, 3), (1.0, 3)],
        ONE_STEP,
        ONE_STEP,
    ]),
    "11_restart_SIGTERM.jsonl": (None, [[(0.0, 0), (0.3333, 1), (0.3417, 1), (0.35, 1)], ONE_STEP]),
}


def test_every_trace_with_execution_events_is_replayed():
    with_events = {name for name in MESSAGE_CLASSES if runs(name)}
    assert with_events == set(PROGRESS)


@pytest.mark.parametrize("name", sorted(PROGRESS))
def test_progress_replay(name: str):
    conn, expected = PROGRESS[name]
    replayed = [replay(run) for run in runs(name, conn)]
    assert [distinct(snapshots) for _, snapshots in replayed] == expected
    for run, (model, snapshots) in zip(runs(name, conn), replayed):
        values = [s.value for s in snapshots]
        assert values == sorted(values)
        last = snapshots[-1]
        if any(isinstance(msg, m.ExecutionSuccess) for msg in run.messages):
            assert (last.value, last.nodes_done, last.current_node) == (1.0, last.nodes_total, None)
        else:
            assert last.value < 1.0


def test_progress_replay_reports_the_running_node():
    (run,) = runs("01_success_progress.jsonl")
    _, snapshots = replay(run)
    running = [(s.current_node, s.current_node_class, s.step, s.steps) for s in snapshots
               if s.current_node == "2"]
    assert running[0] == ("2", "OrchSlowPassthrough", 0, 1)  # progress_state at node start
    assert running[-1] == ("2", "OrchSlowPassthrough", 5, 5)
    assert {s.steps for s in snapshots if s.current_node == "2" and s.step} == {5}


def test_progress_replay_with_weights():
    (run,) = runs("01_success_progress.jsonl")
    _, snapshots = replay(run, weights={"OrchSlowPassthrough": 10.0})
    assert distinct(snapshots) == [(0.0, 0), (0.0833, 1), (0.25, 1), (0.4167, 1), (0.5833, 1),
                                   (0.75, 1), (0.9167, 1), (0.9167, 2), (0.999, 3), (1.0, 3)]



# -- full snapshots: (value, nodes_done, current_node, step, steps), consecutive repeats dropped --
FULL = {
    ("01_success_progress.jsonl", 0): [
        (0.0, 0, None, None, None), (0.0, 0, "1", 0, 1), (0.3333, 1, None, None, None),
        (0.3333, 1, "2", 0, 1), (0.4, 1, "2", 1, 5), (0.4667, 1, "2", 2, 5), (0.5333, 1, "2", 3, 5),
        (0.6, 1, "2", 4, 5), (0.6667, 1, "2", 5, 5), (0.6667, 2, None, None, None),
        (0.6667, 2, "3", 0, 1), (0.999, 3, None, None, None), (1.0, 3, None, None, None)],
    # steps 3-5 were sent while no socket was open; the replay ``executing`` has no prompt id
    ("06_reconnect_same_clientid.jsonl", 0): [
        (0.0, 0, None, None, None), (0.3333, 1, None, None, None), (0.3333, 1, "2", 0, 1),
        (0.3611, 1, "2", 1, 12), (0.3889, 1, "2", 2, 12), (0.5, 1, "2", 6, 12),
        (0.5278, 1, "2", 7, 12), (0.5556, 1, "2", 8, 12), (0.5833, 1, "2", 9, 12),
        (0.6111, 1, "2", 10, 12), (0.6389, 1, "2", 11, 12), (0.6667, 1, "2", 12, 12),
        (0.6667, 2, None, None, None), (0.6667, 2, "3", 0, 1), (0.999, 3, None, None, None),
        (1.0, 3, None, None, None)],
    # fully cached: no ``executing``, straight to "all done", 1.0 once confirmed
    ("04_cached_resubmit.jsonl", 1): [
        (0.0, 0, None, None, None), (0.999, 3, None, None, None), (1.0, 3, None, None, None)],
    ("04_cached_resubmit.jsonl", 2): [
        (0.0, 0, None, None, None), (0.6667, 2, None, None, None), (0.6667, 2, "3", 0, 1),
        (0.999, 3, None, None, None), (1.0, 3, None, None, None)],
}


@pytest.mark.parametrize("name, index", sorted(FULL))
def test_progress_replay_full_snapshots(name: str, index: int):
    _, snapshots = replay(runs(name)[index])
    sequence: list[tuple] = []
    for s in snapshots:
        entry = (s.value, s.nodes_done, s.current_node, s.step, s.steps)
        if not sequence or sequence[-1] != entry:
            sequence.append(entry)
    assert sequence == FULL[(name, index)]
