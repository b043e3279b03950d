"""Pure policies: the circuit breaker on an injected clock, backoff with Retry-After, jitter."""

from __future__ import annotations

from comfyfleet.domain.fingerprint import workflow_fingerprint
from comfyfleet.domain.policy import (BreakerState, BreakerStatus, CircuitBreaker, RetryPolicy,
                                      jitter_unit)
from comfyfleet.domain.breaker_scopes import WorkflowScope, workflow_breaker, workflow_scope_of

BREAKER = CircuitBreaker(failure_threshold=3, window_s=10.0, cooldown_s=5.0)


def failures(state: BreakerState, *times: float) -> BreakerState:
    for at in times:
        state = BREAKER.record_failure(state, at)
    return state


def test_breaker_opens_after_n_failures_in_the_window_only():
    assert failures(BreakerState(), 0, 1).status is BreakerStatus.CLOSED
    assert failures(BreakerState(), 0, 1, 2).status is BreakerStatus.OPEN
    spread = failures(BreakerState(), 0, 11, 22)  # each outside the previous one's window
    assert spread.status is BreakerStatus.CLOSED and len(spread.failures) == 1
    cleared = BREAKER.record_success(failures(BreakerState(), 0, 1), 1.5)
    assert failures(cleared, 2).status is BreakerStatus.CLOSED  # a success clears the count


def test_breaker_half_open_after_cooldown_then_closes_or_reopens():
    opened = failures(BreakerState(), 0, 1, 2)
    assert not BREAKER.allows(opened, 6.9)
    assert BREAKER.allows(opened, 7.0) and BREAKER.current(opened, 7.0).status is BreakerStatus.HALF_OPEN
    closed = BREAKER.record_success(opened, 7.5)
    assert closed.status is BreakerStatus.CLOSED and closed.failures == ()
    assert [(a, b) for _, a, b in closed.transitions] == [("closed", "open"), ("open", "half_open"),
                                                          ("half_open", "closed")]
    reopened = BREAKER.record_failure(opened, 8.0)
    assert reopened.status is BreakerStatus.OPEN and reopened.opened_at == 8.0
    assert not BREAKER.allows(reopened, 12.9) and BREAKER.allows(reopened, 13.0)
    assert BREAKER.record_success(opened, 3.0) == opened  # a late success while open proves little


def test_breaker_state_survives_json():
    state = BREAKER.record_success(failures(BreakerState(), 0, 1, 2), 9.0)
    assert BreakerState.from_dict(state.to_dict()) == state
    assert BreakerState.from_dict(None).pristine


def test_backoff_is_full_jitter_exponential_capped_and_honours_retry_after():
    policy = RetryPolicy(base_s=1.0, cap_s=8.0)
    assert [policy.delay_s(n, random_unit=0.5) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert RetryPolicy(jitter=False).delay_s(5, random_unit=0.0) == 16.0
    assert policy.delay_s(1, random_unit=0.1, retry_after_s=3.0) == 3.0
    assert policy.delay_s(3, random_unit=0.9, retry_after_s=1.0) == 3.6  # the larger wins
    assert not RetryPolicy(max_attempts=3).allows_another(3)


def test_jitter_unit_is_uniform_looking_and_reproducible():
    units = [jitter_unit(f"job-{i}", 1) for i in range(2000)]
    assert all(0 <= u < 1 for u in units) and jitter_unit("job-1", 1) == units[1]
    assert 0.45 < sum(units) / len(units) < 0.55
    assert sum(1 for u in units if u < 0.1) in range(150, 250)
    assert jitter_unit("job-1", 2) != units[1]


def test_workflow_fingerprint_is_the_shape_not_the_values():
    base = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "color": 1}},
            "2": {"class_type": "KSampler", "inputs": {"image": ["1", 0], "seed": 1}}}
    other_values = {"1": {"class_type": "EmptyImage", "inputs": {"width": 512, "color": 9}},
                    "2": {"class_type": "KSampler", "inputs": {"image": ["1", 0], "seed": 77}}}
    other_graph = {**base, "2": {"class_type": "KSamplerAdvanced", "inputs": {"image": ["1", 0]}}}
    assert workflow_fingerprint(base) == workflow_fingerprint(other_values)
    assert workflow_fingerprint(base) != workflow_fingerprint(other_graph)


def test_a_workflow_breakers_field_names_its_job_type_shape_and_owner_whatever_they_hold():
    for scope in (WorkflowScope("image", "0123456789abcdef", "alice"),
                  WorkflowScope("lora:sdxl", "0123456789abcdef", 'bob:"x" \\ y'),
                  WorkflowScope("image", "0123456789abcdef", None)):
        field_name = workflow_breaker(scope)
        assert workflow_scope_of(field_name) == scope
    assert workflow_breaker(WorkflowScope("image", "f", "a")) != workflow_breaker(WorkflowScope("image", "f", "b"))
    # written before breakers were kept per owner
    assert workflow_scope_of("workflow:image:0123456789abcdef") == WorkflowScope("image", "0123456789abcdef")
    assert workflow_scope_of("backend:gpu-1") is None


def test_a_breaker_is_forgettable_once_nothing_in_it_would_change_a_decision():
    breaker = CircuitBreaker(failure_threshold=3, window_s=10.0, cooldown_s=5.0)
    assert breaker.forgettable(BreakerState(), 100.0)
    assert not breaker.forgettable(failures(BreakerState(), 95.0), 100.0)  # one failure counts still
    assert breaker.forgettable(failures(BreakerState(), 89.0), 100.0)  # out of the window
    opened = failures(BreakerState(), 90.0, 91.0, 92.0)
    assert opened.status is BreakerStatus.OPEN
    assert not breaker.forgettable(opened, 100.0)  # half-open by now: a probe decides
    assert not breaker.forgettable(opened, 92.0 + 5.0 + 10.0 - 0.1)
    assert breaker.forgettable(opened, 92.0 + 5.0 + 10.0)  # left alone a cool-down and a window
