import pytest

from comfyfleet.domain.job import Attempt, Job, JobError, JobStatus, Phase, Progress
from comfyfleet.domain import transitions as t
from comfyfleet.errors import InvalidTransition


def new_job() -> Job:
    return Job(id="j1", status=JobStatus.QUEUED, created_at=100.0)


def attempt(n: int = 1) -> Attempt:
    return Attempt(number=n, backend="b1", prompt_id=f"p{n}", client_id=f"c{n}", worker="w",
                   started_at=101.0)


def test_happy_path_queued_running_succeeded():
    job = t.apply(new_job(), t.Dispatch(attempt()), 101.0)
    assert (job.status, job.phase, job.attempt, job.version) == (JobStatus.RUNNING, Phase.DISPATCHING, 1, 1)
    job = t.apply(job, t.Submitted(), 102.0)
    assert job.phase is Phase.SUBMITTED and job.current.submitted_at == 102.0
    job = t.apply(job, t.Executing(), 103.0)
    job = t.apply(job, t.ProgressMade(Progress(value=0.5, nodes_done=1, nodes_total=2)), 104.0)
    job = t.apply(job, t.Succeed(()), 105.0)
    assert job.status is JobStatus.SUCCEEDED
    assert job.progress.value == 1.0
    assert job.completed_at == 105.0
    assert job.current is None and job.history[-1].outcome == "succeeded"


def test_a_success_carries_the_newest_snapshot_never_written():
    running = t.apply(t.apply(new_job(), t.Dispatch(attempt()), 1.0), t.Executing(), 2.0)
    done = t.apply(running, t.Succeed((), Progress(value=0.9, nodes_done=2, nodes_total=3)), 3.0)
    assert (done.progress.value, done.progress.nodes_done, done.progress.nodes_total) == (1.0, 3, 3)
    written = t.apply(running, t.ProgressMade(Progress(value=0.5, nodes_done=2, nodes_total=4)), 3.0)
    older = t.apply(written, t.Succeed((), Progress(value=0.2, nodes_done=0, nodes_total=0)), 4.0)
    assert (older.progress.nodes_done, older.progress.nodes_total) == (4, 4)


def test_an_acceptance_noted_with_the_start_or_late_keeps_its_time_and_the_phase():
    dispatched = t.apply(new_job(), t.Dispatch(attempt()), 101.0)
    started = t.apply(dispatched, t.Executing(submitted_at=101.5), 102.0)
    assert started.phase is Phase.EXECUTING and started.current.submitted_at == 101.5
    late = t.apply(started, t.Submitted(101.5), 103.0)  # noted after the start: phase stays
    assert late.phase is Phase.EXECUTING and late.current.submitted_at == 101.5
    waiting = t.apply(dispatched, t.Submitted(101.2), 101.4)
    assert waiting.phase is Phase.SUBMITTED and waiting.current.submitted_at == 101.2
    assert t.apply(waiting, t.Executing(submitted_at=999.0), 102.0).current.submitted_at == 101.2


def test_terminal_states_absorb_every_event():
    done = t.apply(t.apply(new_job(), t.Dispatch(attempt()), 1.0), t.Succeed(()), 2.0)
    for event in (t.Dispatch(attempt(2)), t.Fail(JobError("x", "y")), t.RequestCancel(),
                  t.Expire(), t.ProgressMade(Progress(value=0.1))):
        with pytest.raises(InvalidTransition, match="terminal"):
            t.apply(done, event, 3.0)


def test_progress_never_goes_backwards():
    job = t.apply(new_job(), t.Dispatch(attempt()), 1.0)
    job = t.apply(job, t.ProgressMade(Progress(value=0.6)), 2.0)
    job = t.apply(job, t.ProgressMade(Progress(value=0.2, step=1, steps=5)), 3.0)
    assert job.progress.value == 0.6 and job.progress.step == 1


def test_cancel_of_queued_job_is_immediate_and_running_goes_through_canceling():
    assert t.apply(new_job(), t.RequestCancel(), 1.0).status is JobStatus.CANCELED
    running = t.apply(new_job(), t.Dispatch(attempt()), 1.0)
    canceling = t.apply(running, t.RequestCancel(), 2.0)
    assert canceling.status is JobStatus.CANCELING
    with pytest.raises(InvalidTransition):
        t.apply(canceling, t.Retry(5.0, "transient", "x"), 3.0)
    assert t.apply(canceling, t.Canceled(), 3.0).status is JobStatus.CANCELED


def test_retry_returns_to_queue_and_records_the_attempt():
    job = t.apply(new_job(), t.Dispatch(attempt()), 1.0)
    job = t.apply(job, t.Retry(10.0, "transient", "connection refused"), 2.0)
    assert job.status is JobStatus.QUEUED and job.not_before == 10.0 and job.attempt == 1
    assert job.history[0].failure_class == "transient"
    job = t.apply(job, t.Dispatch(attempt(2)), 11.0)
    assert job.attempt == 2 and job.current.prompt_id == "p2"


def test_record_round_trips_through_dict():
    job = t.apply(new_job(), t.Dispatch(attempt()), 1.0)
    job = t.apply(job, t.Fail(JobError("node_execution_error", "boom", node_id="2")), 2.0)
    assert Job.from_dict(job.to_dict()) == job


def test_node_counts_do_not_go_back_within_an_attempt_but_start_again_with_the_next():
    """A runner that reattached counts from nothing (ComfyUI does not replay the nodes that ran
    or were cached): its first snapshots must not take the job's node count backwards."""
    running = t.apply(t.apply(new_job(), t.Dispatch(attempt()), 1.0), t.Executing(), 2.0)
    before = t.apply(running, t.ProgressMade(Progress(value=0.65, nodes_done=2, nodes_total=4)), 3.0)
    after = t.apply(before, t.ProgressMade(Progress(value=0.3, nodes_done=0, nodes_total=4, step=13)), 4.0)
    assert (after.progress.value, after.progress.nodes_done, after.progress.step) == (0.65, 2, 13)
    later = t.apply(after, t.ProgressMade(Progress(value=0.8, nodes_done=3, nodes_total=4)), 5.0)
    assert (later.progress.value, later.progress.nodes_done) == (0.8, 3)
    retried = t.apply(later, t.Retry(6.0, "transient", "lost"), 6.0)
    again = t.apply(t.apply(retried, t.Dispatch(attempt(2)), 7.0), t.Executing(), 7.5)
    fresh = t.apply(again, t.ProgressMade(Progress(value=0.1, nodes_done=1, nodes_total=4)), 8.0)
    assert (fresh.progress.value, fresh.progress.nodes_done) == (0.1, 1)


def test_progress_stays_below_one_until_the_success():
    """The tracker's last snapshot says 1.0 once history confirms the run; the outputs may
    still fail to arrive, so the record says 1.0 only with the success."""
    running = t.apply(t.apply(new_job(), t.Dispatch(attempt()), 1.0), t.Executing(), 2.0)
    almost = t.apply(running, t.ProgressMade(Progress(value=1.0, nodes_done=3, nodes_total=3)), 3.0)
    assert (almost.progress.value, almost.progress.nodes_done) == (0.999, 3)
    failed = t.apply(almost, t.Fail(JobError(code="upstream_error", message="no outputs")), 4.0)
    assert failed.progress.value < 1.0
    assert t.apply(almost, t.Succeed(()), 4.0).progress.value == 1.0
