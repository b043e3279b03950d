"""A backend breaker fed by jobs and by health checks (pure, injected clock): a check that finds
the backend up clears only failed checks, and closes only a breaker that failed checks alone
opened; a breaker that jobs opened waits for a probe job."""

from __future__ import annotations

from comfyfleet.domain.policy import BreakerState, BreakerStatus, CircuitBreaker, OpenedBy

BREAKER = CircuitBreaker(failure_threshold=3, window_s=10.0, cooldown_s=5.0)


def jobs_fail(state: BreakerState, *times: float) -> BreakerState:
    for at in times:
        state = BREAKER.record_failure(state, at)
    return state


def checks_fail(state: BreakerState, *times: float) -> BreakerState:
    for at in times:
        state = BREAKER.record_check_failure(state, at)
    return state


def test_a_check_finding_the_backend_up_leaves_the_failures_of_jobs_counted():
    state = jobs_fail(BreakerState(), 0.0, 1.0)
    assert BREAKER.record_check_success(state, 1.5) is state  # nothing to write
    opened = jobs_fail(BREAKER.record_check_success(state, 1.5), 2.0)
    assert opened.status is BreakerStatus.OPEN and opened.opened_by is OpenedBy.JOBS
    # a backend failing every prompt between checks that all pass: it opens all the same
    state = BreakerState()
    for at in (0.0, 1.0, 2.0):
        state = BREAKER.record_check_success(jobs_fail(state, at), at + 0.5)
    assert state.status is BreakerStatus.OPEN


def test_a_check_finding_the_backend_up_clears_the_failed_checks_only():
    breaker = CircuitBreaker(failure_threshold=4, window_s=10.0, cooldown_s=5.0)
    state = breaker.record_failure(BreakerState(), 0.0)
    state = breaker.record_check_failure(breaker.record_check_failure(state, 1.0), 2.0)
    assert state.status is BreakerStatus.CLOSED and state.failures == (0.0, 1.0, 2.0)
    cleared = breaker.record_check_success(state, 2.5)
    assert cleared.failures == (0.0,) and cleared.check_failures == ()
    assert breaker.record_failure(breaker.record_failure(cleared, 3.0), 4.0).status is BreakerStatus.CLOSED
    assert jobs_fail(cleared, 3.0, 4.0).status is BreakerStatus.OPEN  # (threshold 3) counted still


def test_a_job_success_clears_every_failure_counted():
    state = checks_fail(jobs_fail(BreakerState(), 0.0), 1.0)
    cleared = BREAKER.record_success(state, 2.0)
    assert cleared.pristine and cleared.check_failures == ()


def test_a_breaker_jobs_opened_is_closed_by_a_probe_job_not_by_checks():
    opened = jobs_fail(BreakerState(), 0.0, 1.0, 2.0)
    assert BREAKER.record_check_success(opened, 3.0) is opened  # open: nothing
    assert BREAKER.record_check_success(opened, 8.0) is opened  # half-open: still nothing
    assert BREAKER.current(opened, 8.0).status is BreakerStatus.HALF_OPEN
    closed = BREAKER.record_success(opened, 8.0)  # the probe job got through
    assert closed.status is BreakerStatus.CLOSED and closed.opened_by is None and closed.pristine
    reopened = BREAKER.record_failure(opened, 8.0)  # the probe failed
    assert reopened.status is BreakerStatus.OPEN and reopened.opened_by is OpenedBy.JOBS
    # a check failing while half-open opens it again, still the jobs' to close
    again = BREAKER.record_check_failure(opened, 8.0)
    assert again.status is BreakerStatus.OPEN and again.opened_by is OpenedBy.JOBS
    assert BREAKER.record_check_success(again, 13.5) is again


def test_a_breaker_failed_checks_alone_opened_is_closed_by_a_check_once_cooled_down():
    opened = checks_fail(BreakerState(), 0.0, 1.0, 2.0)
    assert opened.status is BreakerStatus.OPEN and opened.opened_by is OpenedBy.CHECKS
    assert BREAKER.record_check_success(opened, 3.0) is opened  # open: a check waits for the cool-down
    closed = BREAKER.record_check_success(opened, 7.0)
    assert closed.status is BreakerStatus.CLOSED and closed.pristine and closed.opened_by is None
    assert [(a, b) for _, a, b in closed.transitions] == [("closed", "open"), ("open", "half_open"),
                                                          ("half_open", "closed")]
    assert BREAKER.record_success(opened, 7.0).status is BreakerStatus.CLOSED  # a probe job too
    # still down at the end of the cool-down: open again, still the checks'
    down = BREAKER.record_check_failure(opened, 7.0)
    assert down.status is BreakerStatus.OPEN and down.opened_by is OpenedBy.CHECKS
    # a probe job that failed in the half-open window makes it the jobs'
    probed = BREAKER.record_failure(opened, 7.0)
    assert probed.opened_by is OpenedBy.JOBS and BREAKER.record_check_success(probed, 12.5) is probed


def test_failures_of_both_kinds_open_it_as_the_jobs():
    opened = jobs_fail(checks_fail(BreakerState(), 0.0, 1.0), 2.0)
    assert opened.status is BreakerStatus.OPEN and opened.opened_by is OpenedBy.JOBS
    opened = checks_fail(jobs_fail(BreakerState(), 0.0), 1.0, 2.0)
    assert opened.status is BreakerStatus.OPEN and opened.opened_by is OpenedBy.JOBS
    assert BREAKER.record_check_success(opened, 7.5) is opened


def test_failed_checks_leave_the_window_like_any_failure():
    state = checks_fail(jobs_fail(BreakerState(), 0.0), 1.0)
    later = checks_fail(state, 11.5)  # both earlier ones are out of the window
    assert later.failures == (11.5,) and later.check_failures == (11.5,)
    assert BREAKER.record_check_success(later, 12.0).pristine


def test_the_source_survives_json_and_older_states_read_as_the_jobs():
    opened = checks_fail(BreakerState(), 0.0, 1.0, 2.0)
    assert BreakerState.from_dict(opened.to_dict()) == opened
    counted = checks_fail(jobs_fail(BreakerState(), 0.0), 0.0)  # same moment, either kind
    assert BreakerState.from_dict(counted.to_dict()) == counted
    assert BREAKER.record_check_success(counted, 0.5).failures == (0.0,)
    # a job-fed state writes what it wrote before: no new keys
    assert set(jobs_fail(BreakerState(), 0.0).to_dict()) == {"status", "failures", "opened_at",
                                                             "changed_at", "transitions"}
    legacy = {"status": "open", "failures": [0.0, 1.0, 2.0], "opened_at": 2.0, "changed_at": 2.0,
              "transitions": [[2.0, "closed", "open"]]}
    old = BreakerState.from_dict(legacy)
    assert old.opened_by is None and old.check_failures == ()
    assert BREAKER.record_check_success(old, 8.0) is old  # only a probe job closes it
    assert BREAKER.record_success(old, 8.0).status is BreakerStatus.CLOSED
