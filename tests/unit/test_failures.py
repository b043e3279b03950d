"""One test per failure class, from the real error payloads in the captures."""

from comfyfleet.comfy.client import HistoryEntry
from comfyfleet.domain.failures import (Failure, FailureClass, FailureKind, classify, error_code,
                                       lacks_node_class)

from helpers.traces import history_answers, trace_lines


def node_failure(entry: HistoryEntry) -> Failure:
    error = entry.error or {}
    return Failure(FailureKind.NODE_ERROR, error["exception_message"],
                   exception_type=error["exception_type"], node_id=error["node_id"],
                   node_type=error["node_type"])


def test_node_exception_from_a_real_execution_error_is_permanent():
    """A node raising ValueError (trace 02) fails the job at once."""
    entries = [HistoryEntry.parse(pid, e) for pid, e in history_answers("02_node_error.jsonl").items()]
    value_errors = [e for e in entries if (e.error or {}).get("exception_type") == "ValueError"]
    assert value_errors, "trace 02 holds a ValueError history entry"
    failure = node_failure(value_errors[0])
    assert value_errors[0].outcome == "error"
    assert classify(failure) is FailureClass.PERMANENT
    assert error_code(failure) == "node_execution_error"
    assert failure.node_type == "OrchFailingNode"


def test_gpu_out_of_memory_from_a_real_execution_error_is_recoverable():
    """torch.OutOfMemoryError (trace 02 fake_oom) is retried on another backend."""
    entries = [HistoryEntry.parse(pid, e) for pid, e in history_answers("02_node_error.jsonl").items()]
    ooms = [e for e in entries if (e.error or {}).get("exception_type") == "torch.OutOfMemoryError"]
    assert ooms, "trace 02 holds an OOM history entry"
    failure = node_failure(ooms[0])
    assert classify(failure) is FailureClass.RECOVERABLE
    assert error_code(failure) == "out_of_memory"


def test_cuda_allocation_message_counts_as_out_of_memory():
    """"Allocation on device" (cudaMallocAsync) is an OOM whatever the exception type says."""
    failure = Failure(FailureKind.NODE_ERROR, "Allocation on device 0 would exceed allowed memory",
                      exception_type="RuntimeError")
    assert classify(failure) is FailureClass.RECOVERABLE


def test_transport_failures_are_transient():
    """Connection refused, timeouts, socket drops and lost prompts are retried with backoff."""
    for kind in (FailureKind.UNREACHABLE, FailureKind.TIMEOUT, FailureKind.SOCKET_DROP,
                 FailureKind.PROMPT_LOST):
        assert classify(Failure(kind, "x")) is FailureClass.TRANSIENT


def test_http_statuses():
    """429/502/503/504 are transient, 401/403 fatal, other 4xx permanent."""
    def of(code: int) -> FailureClass:
        return classify(Failure(FailureKind.HTTP_STATUS, "x", status_code=code))

    assert {of(c) for c in (429, 502, 503, 504)} == {FailureClass.TRANSIENT}
    assert of(401) is FailureClass.FATAL and of(403) is FailureClass.FATAL
    assert of(404) is FailureClass.PERMANENT


def test_rejected_prompt_is_permanent():
    """POST /prompt validation errors (node_errors) are never retried."""
    failure = Failure(FailureKind.PROMPT_REJECTED, "invalid", node_errors={"2": {"errors": []}})
    assert classify(failure) is FailureClass.PERMANENT
    assert error_code(failure) == "invalid_workflow"


def test_no_backend_is_fatal():
    """Misconfiguration (no backend can take the job) fails and alerts."""
    assert classify(Failure(FailureKind.NO_BACKEND, "none")) is FailureClass.FATAL


def test_interrupted_history_entry_is_told_apart_from_an_error():
    """An interrupted prompt is status_str "error" in history; its last message says interrupted."""
    entries = [HistoryEntry.parse(pid, e) for pid, e in history_answers("03_interrupt.jsonl").items()]
    assert "interrupted" in {e.outcome for e in entries}


def test_success_history_entry_has_outputs():
    entries = [HistoryEntry.parse(pid, e) for pid, e in history_answers("01_success_progress.jsonl").items()]
    success = [e for e in entries if e.outcome == "success"]
    assert success and success[0].outputs["3"]["images"][0]["filename"].endswith(".png")
    assert success[0].outputs_to_execute == ("3",)


def test_a_prompt_refused_for_a_node_class_the_backend_lacks_is_recoverable():
    """Trace 05 `unknown_class_type`: another backend may have the class (backends need not have
    the same custom nodes), so it is retried elsewhere; every other refusal stays permanent."""
    refusals = {line["label"]: line["resp"]["error"] for line in trace_lines("05_validation_failure.jsonl")
                if line.get("src") == "http" and line.get("status") == 400}
    lacking = refusals.pop("unknown_class_type")
    failure = Failure(FailureKind.PROMPT_REJECTED, f"gpu-1 rejected the prompt: {lacking['message']}",
                      exception_type=lacking["type"])
    assert classify(failure) is FailureClass.RECOVERABLE and lacks_node_class(failure)
    assert error_code(failure) == "invalid_workflow"  # its code should every backend refuse it
    assert refusals, "trace 05 holds other refusals"
    for label, error in refusals.items():
        other = Failure(FailureKind.PROMPT_REJECTED, f"gpu-1 rejected the prompt: {error['message']}",
                        exception_type=error["type"])
        assert classify(other) is FailureClass.PERMANENT, label
