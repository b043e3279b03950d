"""The Lua-backed store replays random event sequences exactly like transitions.apply."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, invariant, precondition, rule,
                                 run_state_machine_as_test)

from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import ACTIVE_STATUSES, Attempt, Job, JobError, JobStatus, Progress
from comfyfleet.errors import ConcurrentUpdate, InvalidTransition
from comfyfleet.store import Keys, RedisJobStore, connect

attempts = st.builds(Attempt, number=st.integers(1, 5), backend=st.sampled_from(["b1", "b2"]),
                     prompt_id=st.uuids().map(str), client_id=st.uuids().map(str),
                     worker=st.sampled_from(["w1", "w2"]), started_at=st.floats(0, 1e6))
progress = st.builds(Progress, value=st.floats(0, 1), nodes_done=st.integers(0, 9),
                     nodes_total=st.integers(0, 9), step=st.none() | st.integers(0, 30))
EVENTS: dict[type, st.SearchStrategy[t.Event]] = {
    t.Dispatch: st.builds(t.Dispatch, attempts),
    t.Submitted: st.just(t.Submitted()),
    t.Executing: st.just(t.Executing()),
    t.Collecting: st.just(t.Collecting()),
    t.Heartbeat: st.builds(t.Heartbeat, st.sampled_from(["w1", "w2"])),
    t.ProgressMade: st.builds(t.ProgressMade, progress),
    t.Succeed: st.just(t.Succeed(())),
    t.Fail: st.builds(t.Fail, st.builds(JobError, code=st.just("node_error"),
                                        message=st.text(max_size=20))),
    t.Retry: st.builds(t.Retry, not_before=st.floats(0, 1e6), failure_class=st.just("transient"),
                       message=st.just("refused")),
    t.RequestCancel: st.just(t.RequestCancel()),
    t.Canceled: st.just(t.Canceled()),
    t.Expire: st.just(t.Expire()),
}
any_event = st.one_of(*EVENTS.values())
MAX_JOBS = 3
FINISHING = {t.Succeed, t.Fail, t.RequestCancel, t.Canceled, t.Expire}


def allowed_event(status: JobStatus) -> st.SearchStrategy[t.Event]:
    """Mostly events the table allows from ``status`` (so runs go deep), any event otherwise."""
    kinds = [kind for kind in EVENTS if status in t.ALLOWED_FROM[kind]
             for _ in range(1 if kind in FINISHING else 4)]
    return st.sampled_from(kinds).flatmap(EVENTS.__getitem__) if kinds else any_event


class StoreMachine(RuleBasedStateMachine):
    """Model: the pure record per job. System: the same jobs through RedisJobStore."""

    url = ""
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = connect(self.url)
        self.keys = Keys(prefix=f"sm{uuid4().hex[:8]}")
        self.store = RedisJobStore(self.redis, self.keys)
        self.model: dict[str, Job] = {}
        self.dispatched: dict[str, int] = {}
        self.now = 1000.0

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    @precondition(lambda self: len(self.model) < MAX_JOBS)
    @rule(target=jobs, priority=st.integers(-2, 2), owner=st.sampled_from(["alice", "bob"]))
    def create(self, priority: int, owner: str) -> str:
        self.now += 1
        job = Job(id=str(uuid4()), status=JobStatus.QUEUED, created_at=self.now, owner=owner,
                  priority=priority)
        self.run(self.store.create(job, {"1": {}}))
        self.model[job.id], self.dispatched[job.id] = job, 0
        return job.id

    @rule(job_id=jobs, data=st.data())
    def step_allowed(self, job_id: str, data: st.DataObject) -> None:
        self.step(job_id, data.draw(allowed_event(self.model[job_id].status)))

    @rule(job_id=jobs, data=st.data())
    def step_allowed_again(self, job_id: str, data: st.DataObject) -> None:
        self.step(job_id, data.draw(allowed_event(self.model[job_id].status)))

    @rule(job_id=jobs, event=any_event)
    def step(self, job_id: str, event: t.Event) -> None:
        before = self.model[job_id]
        self.now += 1
        try:
            expected = t.apply(before, event, self.now)
        except InvalidTransition:
            with pytest.raises(InvalidTransition):
                self.run(self.store.apply(job_id, event, self.now))
            return
        got = self.run(self.store.apply(job_id, event, self.now))
        assert got == expected
        if isinstance(event, t.Dispatch):
            self.dispatched[job_id] += 1
        else:
            assert got.progress.value >= before.progress.value, "progress went backwards"
        assert got.attempt == self.dispatched[job_id]
        self.model[job_id] = got

    @rule(job_id=jobs)
    def stale_writer_loses(self, job_id: str) -> None:
        current = self.model[job_id]
        if current.version == 0 or current.is_terminal:
            return
        stale = current.evolve(version=current.version - 1)
        with pytest.raises(ConcurrentUpdate):
            self.run(self.store.save(stale, stale.evolve(version=current.version, updated_at=-1.0)))

    @invariant()
    def stored_records_match_the_model(self) -> None:
        async def check() -> None:
            ids = list(self.model)
            if not ids:
                return
            assert await self.store.get_many(ids) == [self.model[i] for i in ids]
            indexes = [self.keys.status_index(s) for s in JobStatus] + [self.keys.active_index]
            async with self.redis.pipeline(transaction=False) as pipe:
                for index in indexes:
                    pipe.zmscore(index, ids)
                *by_status, active = await pipe.execute()
            for n, job_id in enumerate(ids):
                expected = self.model[job_id]
                homes = [s for s, scores in zip(JobStatus, by_status) if scores[n] is not None]
                assert homes == [expected.status], "a job must sit in exactly one status index"
                assert (active[n] is not None) == (expected.status in ACTIVE_STATUSES)
        self.run(check())

    def teardown(self) -> None:
        self.run(self.redis.aclose())
        self.loop.close()


def test_store_follows_the_transition_table(valkey_url: str) -> None:
    StoreMachine.url = valkey_url
    run_state_machine_as_test(StoreMachine, settings=settings(
        max_examples=30, stateful_step_count=40, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow]))
