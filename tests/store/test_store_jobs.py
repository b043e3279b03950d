"""RedisJobStore against a real Valkey: records, indexes, CAS, TTLs, repair, errors."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import Attempt, JobError, JobStatus, Progress
from comfyfleet.errors import (ConcurrentUpdate, InvalidTransition, JobNotFound, StoreError,
                               ValidationFailed)
from comfyfleet.store import RedisJobStore, connect
from comfyfleet.store.job_counters import JobCounters

WF = {"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}
Q, R, C = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELING


def attempt(n: int = 1) -> Attempt:
    return Attempt(number=n, backend="b1", prompt_id=f"p{n}", client_id=f"c{n}", worker="w1",
                   started_at=1000.0)


async def test_create_then_get_roundtrips_record_and_workflow(store, make_job, redis, keys):
    job = make_job(owner="alice", type="video", metadata={"a": "b"}, priority=3)
    assert await store.create(job, WF) == job
    assert await store.get(job.id) == job
    assert await store.workflow(job.id) == WF
    fields = await redis.hgetall(keys.job(job.id))
    assert fields["status"] == "queued" and fields["version"] == "0" and fields["owner"] == "alice"
    assert fields["type"] == "video" and fields["priority"] == "3"
    assert json.loads(fields["data"]) == job.to_dict()
    assert await store.active_ids() == [job.id]


async def test_get_of_unknown_job_raises_job_not_found(store):
    with pytest.raises(JobNotFound):
        await store.get("nope")
    with pytest.raises(JobNotFound):
        await store.workflow("nope")


async def test_get_many_skips_missing_and_keeps_order(store, make_job):
    a, b = make_job(), make_job()
    await store.create(a, WF)
    await store.create(b, WF)
    assert [j.id for j in await store.get_many([b.id, "gone", a.id])] == [b.id, a.id]
    assert await store.get_many([]) == []


async def test_list_filters_by_owner_status_type_newest_first_with_cursor(store, make_job):
    jobs = [make_job(owner="alice" if i % 2 else "bob", type="image" if i < 6 else "video")
            for i in range(10)]
    for job in jobs:
        await store.create(job, WF)
    await store.apply(jobs[9].id, t.Dispatch(attempt()), 2000.0)
    await store.apply(jobs[7].id, t.RequestCancel(), 2000.0)

    newest = await store.list(limit=3)
    assert [j.id for j in newest] == [jobs[9].id, jobs[8].id, jobs[7].id]
    page2 = await store.list(limit=3, before=newest[-1].created_at)
    assert [j.id for j in page2] == [jobs[6].id, jobs[5].id, jobs[4].id]

    alice = await store.list(owner="alice")
    assert [j.id for j in alice] == [jobs[i].id for i in (9, 7, 5, 3, 1)]
    assert [j.id for j in await store.list(owner="alice", job_type="video")] == \
        [jobs[9].id, jobs[7].id]
    assert [j.id for j in await store.list(statuses=[R, JobStatus.CANCELED])] == \
        [jobs[9].id, jobs[7].id]
    queued_alice = await store.list(owner="alice", statuses=[Q], limit=2)
    assert [j.id for j in queued_alice] == [jobs[5].id, jobs[3].id]
    assert [j.id for j in await store.list(job_type="image", statuses=[Q], before=jobs[3].created_at)] \
        == [jobs[2].id, jobs[1].id, jobs[0].id]
    assert await store.list(owner="carol") == []


async def test_list_pages_past_filtered_out_entries(store, make_job):
    """The narrowest index may hold many non-matching jobs; list keeps reading pages."""
    for i in range(120):
        await store.create(make_job(owner="alice", type="video" if i == 0 else "image"), WF)
    for i in range(200):
        await store.create(make_job(owner="bob", type="video"), WF)
    found = await store.list(owner="alice", job_type="video", limit=5)
    assert len(found) == 1 and found[0].type == "video" and found[0].owner == "alice"


async def test_idempotency_keys_of_different_owners_never_meet(store, make_job):
    """Owner and key are joined with ':' in the key name: an owner holding ':' must not land on
    another owner's key (owner 'a:b' + key 'c' against owner 'a' + key 'b:c')."""
    await store.create(make_job(owner="a:b", idempotency_key="c"), WF)
    await store.create(make_job(owner="a", idempotency_key="b:c"), WF)  # not a reuse
    await store.create(make_job(owner="a%3Ab", idempotency_key="c"), WF)  # nor is an encoded look-alike


async def test_idempotency_key_reuse_is_refused_with_422(store, make_job, redis, keys):
    first = make_job(owner="alice", idempotency_key="k1")
    await store.create(first, WF)
    with pytest.raises(ValidationFailed) as info:
        await store.create(make_job(owner="alice", idempotency_key="k1"), WF)
    assert (info.value.code, info.value.status_code) == ("idempotency_key_reuse", 422)
    assert info.value.details == {"job_id": first.id}
    ttl = await redis.ttl(keys.idempotency("alice", "k1"))
    assert 86000 < ttl <= 86400
    await store.create(make_job(owner="bob", idempotency_key="k1"), WF)  # per owner
    await store.release_idempotency("alice", "k1")
    await store.create(make_job(owner="alice", idempotency_key="k1"), WF)


async def test_refused_create_writes_nothing(store, make_job, redis, keys):
    await store.create(make_job(owner="alice", idempotency_key="k"), WF)
    dup = make_job(owner="alice", idempotency_key="k")
    with pytest.raises(ValidationFailed):
        await store.create(dup, WF)
    assert not await redis.exists(keys.job(dup.id), keys.workflow(dup.id))
    assert await redis.zscore(keys.all_index, dup.id) is None


async def test_save_with_stale_before_raises_concurrent_update(store, make_job):
    job = make_job()
    await store.create(job, WF)
    running = await store.save(job, t.apply(job, t.Dispatch(attempt()), 1.0))
    with pytest.raises(ConcurrentUpdate):
        await store.save(job, t.apply(job, t.RequestCancel(), 2.0))
    assert await store.get(job.id) == running


async def test_save_refuses_moves_the_table_forbids_and_version_skips(store, make_job):
    job = make_job()
    await store.create(job, WF)
    with pytest.raises(InvalidTransition):
        await store.save(job, job.evolve(status=JobStatus.SUCCEEDED, version=1))
    with pytest.raises(StoreError, match="version"):
        await store.save(job, job.evolve(version=5))
    with pytest.raises(JobNotFound):
        await store.save(job.evolve(id="gone"), job.evolve(id="gone", version=1))


async def test_repeated_save_after_a_lost_reply_is_accepted(store, make_job):
    """A retried EVALSHA whose first run landed must not look like a conflict."""
    job = make_job()
    await store.create(job, WF)
    await store.create(job, WF)  # same record again: fine
    after = t.apply(job, t.Dispatch(attempt()), 1.0)
    await store.save(job, after)
    assert await store.save(job, after) == after


async def test_apply_retries_under_concurrent_writers(store, make_job):
    """Heartbeats and progress racing on one job all land; none is lost."""
    job = make_job()
    await store.create(job, WF)
    await store.apply(job.id, t.Dispatch(attempt()), 1.0)

    async def progress() -> None:
        for i in range(1, 21):
            await store.apply(job.id, t.ProgressMade(Progress(value=i / 25)), 2.0 + i,
                              max_retries=50)

    async def heartbeat() -> None:
        for i in range(20):
            await store.apply(job.id, t.Heartbeat(worker=f"w{i}"), 3.0 + i, max_retries=50)

    await asyncio.gather(progress(), heartbeat())
    final = await store.get(job.id)
    assert final.version == 1 + 40
    assert final.progress.value == 0.8 and final.current.worker == "w19"


async def test_apply_propagates_invalid_transition(store, make_job):
    job = make_job()
    await store.create(job, WF)
    with pytest.raises(InvalidTransition):
        await store.apply(job.id, t.Submitted(), 1.0)


async def test_status_indexes_follow_the_job(store, make_job, redis, keys):
    job = make_job()
    await store.create(job, WF)

    async def where() -> list[str]:
        return [s.value for s in JobStatus if await redis.zscore(keys.status_index(s), job.id)]

    assert await where() == ["queued"]
    await store.apply(job.id, t.Dispatch(attempt()), 1.0)
    assert await where() == ["running"]
    await store.apply(job.id, t.Retry(5.0, "transient", "refused"), 2.0)
    assert await where() == ["queued"] and await store.queue_position(await store.get(job.id)) == 0
    await store.apply(job.id, t.Dispatch(attempt(2)), 6.0)
    await store.apply(job.id, t.RequestCancel(), 7.0)
    assert await where() == ["canceling"] and job.id in await store.active_ids()
    await store.apply(job.id, t.Canceled(), 8.0)
    assert await where() == ["canceled"] and await store.active_ids() == []


async def test_ttl_is_sliding_while_active_and_retention_when_terminal(redis, keys, make_job):
    store = RedisJobStore(redis, keys, active_ttl_s=100.0, retention_s=1000.0)
    job = make_job()
    await store.create(job, WF)
    assert 99_000 < await redis.pttl(keys.job(job.id)) <= 100_000
    await redis.pexpire(keys.job(job.id), 5_000)
    await store.apply(job.id, t.Dispatch(attempt()), 1.0)
    assert 99_000 < await redis.pttl(keys.job(job.id)) <= 100_000  # refreshed
    await store.apply(job.id, t.Fail(JobError("boom", "node error")), 2.0)
    for key in (keys.job(job.id), keys.workflow(job.id)):
        assert 999_000 < await redis.pttl(key) <= 1_000_000


async def test_queue_position_counts_older_queued_jobs(store, make_job):
    jobs = [make_job() for _ in range(3)]
    for job in jobs:
        await store.create(job, WF)
    assert [await store.queue_position(j) for j in jobs] == [0, 1, 2]
    running = await store.apply(jobs[0].id, t.Dispatch(attempt()), 1.0)
    assert await store.queue_position(running) is None
    assert await store.queue_position(jobs[2]) == 1


async def test_delete_removes_record_and_every_index_entry(store, make_job, redis, keys):
    job = make_job(owner="alice", type="edit")
    await store.create(job, WF)
    await store.delete(job.id)
    assert await redis.keys(f"{keys.prefix}:job:*") == []
    for index in (keys.all_index, keys.active_index, keys.status_index("queued"),
                  keys.owner_index("alice"), keys.type_index("edit")):
        assert await redis.zcard(index) == 0
    await store.delete(job.id)  # deleting twice is fine


async def test_repair_indexes_drops_entries_of_expired_records(store, make_job, redis, keys):
    kept, expired = make_job(owner="alice"), make_job(owner="alice", type="video")
    await store.create(kept, WF)
    await store.create(expired, WF)
    await redis.delete(keys.job(expired.id))  # as if its TTL ran out
    assert await store.expired_index_entries() == [expired.id]
    assert await store.repair_indexes() == [expired.id]
    assert await store.repair_indexes() == []
    for index in (keys.all_index, keys.active_index, keys.status_index("queued"),
                  keys.owner_index("alice"), keys.type_index("video")):
        assert await redis.zscore(index, expired.id) is None
    assert [j.id for j in await store.list()] == [kept.id]


async def test_unreachable_server_raises_store_error(keys, make_job, unused_tcp_port):
    client = connect(f"redis://127.0.0.1:{unused_tcp_port}", connect_timeout_s=1.0)
    store = RedisJobStore(client, keys)
    try:
        with pytest.raises(StoreError, match=f"cannot reach Redis at 127.0.0.1:{unused_tcp_port}"):
            await store.get("x")
        with pytest.raises(StoreError, match="cannot reach Redis"):
            await store.create(make_job(), WF)
    finally:
        await client.aclose()


async def test_a_redis_that_never_answers_costs_one_read_timeout_not_a_string_of_them(keys):
    """A peer that accepts and never replies (a hung or paused Redis): the store error comes after
    one connection and one read timeout. Retrying a timeout would wait the whole timeout again on
    the same silent server (it added up to 9 connections and 11 timeouts: ~110 s at 10 s each)."""
    connections: list[asyncio.StreamReader] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(reader)
        try:
            while await reader.read(4096):
                pass
        finally:
            writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = connect(f"redis://127.0.0.1:{port}", read_timeout_s=0.2)
    try:
        with pytest.raises(StoreError, match=f"cannot reach Redis at 127.0.0.1:{port}.*Timeout"):
            await RedisJobStore(client, keys).get("x")
        assert len(connections) == 1
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def _reads_of_records(redis) -> int:  # type: ignore[no-untyped-def]
    return (await redis.info("commandstats")).get("cmdstat_hget", {}).get("calls", 0)


async def test_apply_from_a_known_record_saves_without_reading_it(store, make_job, redis):
    job = await store.create(make_job(), WF)
    running = await store.apply(job.id, t.Dispatch(attempt()), 1000.0)
    await redis.config_resetstat()
    submitted = await store.apply(job.id, t.Submitted(), 1001.0, known=running)
    assert await _reads_of_records(redis) == 0
    assert submitted.version == running.version + 1 and submitted.current.submitted_at == 1001.0
    assert await store.get(job.id) == submitted


async def test_apply_from_a_stale_record_decides_on_the_stored_one(store, make_job):
    job = await store.create(make_job(), WF)
    running = await store.apply(job.id, t.Dispatch(attempt()), 1000.0)
    canceling = await store.apply(job.id, t.RequestCancel(), 1001.0)  # another writer moved it
    assert canceling.status is C
    # From the stale record the move is allowed but the save is refused; the stored record
    # (canceling) then takes the change.
    after = await store.apply(job.id, t.Collecting(), 1002.0, known=running)
    assert after.status is C and after.version == canceling.version + 1
    # A change the stored record refuses is refused, even though the stale one allowed it.
    with pytest.raises(InvalidTransition):
        await store.apply(job.id, t.Submitted(), 1003.0, known=running)


async def test_a_save_repeated_after_a_lost_reply_counts_once(store, make_job, redis, keys):
    """The scripts count in the same atomic step as the write; the repeat of a write that already
    landed (a retry after a lost reply) changes nothing, its counters included."""
    job = await store.create(make_job(created_at=1000.0), WF)
    running = t.apply(job, t.Dispatch(Attempt(number=1, backend="gpu:1", prompt_id="p", client_id="c",
                                              worker="w", started_at=1001.5)), 1001.5)
    await store.save(job, running)
    await store.save(job, running)  # the repeat: answered ok, counted nothing
    failed = t.apply(running, t.Fail(JobError(code="node_error", message="boom", failure_class="permanent")), 1040.0)
    await store.save(running, failed)
    await store.save(running, failed)
    kind = job.type
    assert await JobCounters(redis, keys).totals() == {
        ("submitted", kind): 1, ("finished", kind, "failed"): 1,
        ("attempt", "gpu:1", "failed", "permanent"): 1,
        ("queue_wait", kind, "2"): 1, ("queue_wait_ms", kind): 1500,  # 1.5 s: the "le 2 s" bucket
        ("duration", kind, "failed", "60"): 1, ("duration_ms", kind, "failed"): 40000}


# -- a job that is not finished lives until its deadline (plus active_ttl), however long it waits --
async def test_a_queued_record_outlives_active_ttl_until_its_deadline(redis, keys, make_job):
    """A job waits in the queue without any save; its record, workflow and idempotency key must
    not expire active_ttl after creation when its deadline is later (a lora_training job: 3 h,
    against the 2 h default active_ttl)."""
    store = RedisJobStore(redis, keys, active_ttl_s=2.0, retention_s=1000.0, idempotency_ttl_s=1.0)
    job = make_job(owner="alice", type="lora_training", idempotency_key="k1",
                   deadline_at=time.time() + 3 * 3600.0)
    await store.create(job, WF)
    floor_ms = 3 * 3600 * 1000 - 60_000  # the deadline, less a minute for a slow machine
    for key in (keys.job(job.id), keys.workflow(job.id), keys.idempotency("alice", "k1")):
        assert await redis.pttl(key) > floor_ms, key
    for key in (keys.job(job.id), keys.workflow(job.id)):  # the deadline plus active_ttl, no more
        assert await redis.pttl(key) <= 3 * 3600 * 1000 + 2_000, key
    # every later save of a job that is not finished keeps it to the deadline too
    running = await store.apply(job.id, t.Dispatch(attempt()), time.time())
    queued = await store.apply(job.id, t.Retry(time.time(), "transient", "try again"), time.time(),
                               known=running)
    for key in (keys.job(job.id), keys.workflow(job.id)):
        assert await redis.pttl(key) > floor_ms, key
    assert queued.status is Q and await store.get(job.id) == queued
    # finished: the retention TTL, shorter here than the deadline, as before
    await store.apply(job.id, t.Fail(JobError("boom", "node error")), time.time(), known=queued)
    for key in (keys.job(job.id), keys.workflow(job.id)):
        assert 999_000 < await redis.pttl(key) <= 1_000_000, key


async def test_a_queued_record_is_still_there_after_active_ttl_has_passed(redis, keys, make_job):
    """The reported loss: nothing saves a queued job, and it vanished active_ttl after its
    creation (404, out of the listing) though its deadline was hours away."""
    store = RedisJobStore(redis, keys, active_ttl_s=0.2)
    job = make_job(owner="alice", type="lora_training", deadline_at=time.time() + 3600.0)
    await store.create(job, WF)
    await asyncio.sleep(0.5)  # past active_ttl: a longer wait only makes the old loss surer
    assert await store.get_with_workflow(job.id) == (job, WF)
    assert [j.id for j in await store.list(owner="alice")] == [job.id]
    assert await store.expired_index_entries() == []


async def test_a_record_without_a_deadline_or_past_it_keeps_the_active_ttl(redis, keys, make_job):
    store = RedisJobStore(redis, keys, active_ttl_s=100.0)
    undated, late = make_job(), make_job(deadline_at=time.time() - 3600.0)
    for job in (undated, late):
        await store.create(job, WF)
        for key in (keys.job(job.id), keys.workflow(job.id)):
            assert 90_000 < await redis.pttl(key) <= 100_000, key
    # a save past the deadline (the runner is about to expire it) slides it active_ttl on
    await redis.pexpire(keys.job(late.id), 5_000)
    await store.apply(late.id, t.Dispatch(attempt()), time.time(), known=late)
    assert 90_000 < await redis.pttl(keys.job(late.id)) <= 100_000
