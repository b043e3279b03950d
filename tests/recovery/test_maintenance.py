"""Retention and repair: finished jobs past retention go with their indexes and blobs; index
entries of vanished records and blobs nobody refers to are removed; queued jobs that lost their
queue entry are enqueued again. Also the ``cleanup`` and ``recover --dry-run`` commands."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass

from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import Job, JobError, JobStatus, Output
from comfyfleet.runtime.maintenance import Maintenance, MaintenanceSettings
from comfyfleet.runtime.recovery import Recovery
from comfyfleet.store.claims import Claims

DAY = 86400.0


def maintenance(services, *, now: float) -> Maintenance:  # type: ignore[no-untyped-def]
    recovery = Recovery(store=services.store, claims=Claims(services.redis, services.keys),
                        dispatcher=services.dispatcher)
    return Maintenance(redis=services.redis, keys=services.keys, store=services.store,
                       blobs=services.blobs, queue=services.queue, recovery=recovery,
                       settings=MaintenanceSettings(retention_s=7 * DAY, blob_grace_s=3600),
                       clock=lambda: now)


async def finished(services, *, at: float, outputs: tuple[Output, ...] = ()) -> Job:  # type: ignore[no-untyped-def]
    job = Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=at, updated_at=at)
    await services.store.create(job, {"1": {"class_type": "X", "inputs": {}}})
    if outputs:
        job = await services.store.apply(job.id, t.Dispatch(_attempt(at)), at)
        return await services.store.apply(job.id, t.Succeed(outputs), at)
    return await services.store.apply(job.id, t.Fail(JobError(code="x", message="x")), at)


def _attempt(at: float):  # type: ignore[no-untyped-def]
    from comfyfleet.domain.job import Attempt
    return Attempt(number=1, backend="b", prompt_id="p", client_id="c", worker="w", started_at=at)


async def blob(services, data: bytes, *, age_s: float) -> Output:  # type: ignore[no-untyped-def]
    digest = await services.blobs.put(data, content_type="image/png")
    then = time.time() - age_s
    os.utime(services.blobs.path(digest), (then, then))
    return Output(id=str(uuid.uuid4()), node_id="9", name="x.png", type="image",
                  content_type="image/png", size_bytes=len(data), hash=digest)


async def test_old_jobs_go_with_their_blobs_and_indexes_shared_and_young_blobs_stay(services):
    """Retention removes old finished jobs, their index entries and the blobs only they used."""
    now = time.time()
    old_only, shared, young_orphan, old_orphan = (
        await blob(services, b"old-only", age_s=9 * DAY), await blob(services, b"shared", age_s=9 * DAY),
        await blob(services, b"young-orphan", age_s=60), await blob(services, b"old-orphan", age_s=2 * 3600))
    old = await finished(services, at=now - 8 * DAY, outputs=(old_only, shared))
    old_failed = await finished(services, at=now - 8 * DAY)
    recent = await finished(services, at=now - 1 * DAY, outputs=(shared,))
    k = services.keys
    await services.redis.zadd(k.all_index, {"vanished-job": now})  # its record expired by TTL

    report = await maintenance(services, now=now).run_once()

    assert sorted(report.jobs_deleted) == sorted([old.id, old_failed.id])
    assert report.index_entries_repaired == ["vanished-job"]
    assert sorted(report.blobs_deleted) == sorted([old_only.hash, old_orphan.hash])
    assert report.bytes_freed == len(b"old-only") + len(b"old-orphan")
    for job_id in (old.id, old_failed.id):
        assert not await services.redis.exists(k.job(job_id), k.workflow(job_id))
        for index in (k.all_index, k.status_index("succeeded"), k.status_index("failed"),
                      k.type_index("image"), k.owner_index("")):
            assert await services.redis.zscore(index, job_id) is None
    assert (await services.store.get(recent.id)).status is JobStatus.SUCCEEDED
    for kept in (shared, young_orphan):
        assert await services.blobs.exists(kept.hash)
    assert not await services.blobs.exists(old_only.hash)


async def test_index_walk_spans_chunks_and_every_index(services):
    """Vanished ids by the thousand, in the job index, a status index and an owner index, mixed
    with live jobs: the repair drops exactly the vanished ones and the live jobs' blobs stay
    referenced (the walk reads records a chunk of hundreds at a time)."""
    now = time.time()
    kept_blob = await blob(services, b"kept", age_s=2 * 3600)
    live = [await finished(services, at=now - DAY, outputs=(kept_blob,)) for _ in range(3)]
    k = services.keys
    vanished = [f"gone-{i:04d}" for i in range(1200)]
    for index in (k.all_index, k.status_index("succeeded"), k.owner_index("someone")):
        await services.redis.zadd(index, {job_id: now - i for i, job_id in enumerate(vanished)})
    await services.redis.zadd(k.owner_index("someone"), {live[0].id: now})

    report = await maintenance(services, now=now).run_once()

    assert report.index_entries_repaired == sorted(vanished)
    assert report.blobs_deleted == []
    assert await services.blobs.exists(kept_blob.hash)
    for index in (k.all_index, k.status_index("succeeded")):
        assert sorted(await services.redis.zrange(index, 0, -1)) == sorted(job.id for job in live)
    assert await services.redis.zrange(k.owner_index("someone"), 0, -1) == [live[0].id]


async def test_dry_run_reports_and_deletes_nothing(services):
    now = time.time()
    old = await finished(services, at=now - 8 * DAY)
    report = await maintenance(services, now=now).run_once(dry_run=True)
    assert report.jobs_deleted == [old.id] and report.dry_run
    assert (await services.store.get(old.id)).status is JobStatus.FAILED


async def test_queued_job_without_queue_entry_is_enqueued_again(services):
    """A job record that survived while its queue entry did not (a lost write) is requeued."""
    now = time.time()
    job = Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=now, updated_at=now)
    await services.store.create(job, {"1": {"class_type": "X", "inputs": {}}})
    assert await services.queue.state_of(job) == "unknown"
    report = await maintenance(services, now=now).run_once()
    assert report.requeued == [job.id]
    assert await services.queue.state_of(job) in ("waiting", "prioritized", "wait")
    assert (await maintenance(services, now=now).run_once()).requeued == []


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def cli(*args: str) -> Ran:
    """Run the command without blocking this test's event loop (its services stay live)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfyfleet", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    return Ran(process.returncode, out.decode(), err.decode())


async def test_cleanup_command_prints_what_it_removed(services, valkey_url, tmp_path):
    old = await finished(services, at=time.time() - 8 * DAY)
    args = ["--redis-url", valkey_url, "--key-prefix", services.keys.prefix, "--data-dir", str(tmp_path)]
    dry = await cli("cleanup", *args, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["jobs_deleted"] == [old.id]
    done = await cli("cleanup", *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 1 finished job(s) past retention")
    assert not await services.redis.exists(services.keys.job(old.id))


async def test_recover_dry_run_shows_the_reconcile_plan(services, valkey_url, tmp_path):
    """An orphaned running job whose backend is unreachable: the plan says so and changes nothing."""
    now = time.time()
    job = Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=now, updated_at=now)
    await services.store.create(job, {"1": {"class_type": "X", "inputs": {}}})
    running = await services.store.apply(job.id, t.Dispatch(_attempt(now)), now)
    args = ["--redis-url", valkey_url, "--key-prefix", services.keys.prefix, "--data-dir", str(tmp_path),
            "--backend", "b=http://127.0.0.1:9"]
    plan = await cli("recover", *args, "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    [step] = json.loads(plan.stdout)
    assert (step["job_id"], step["backend_says"], step["action"]) == (job.id, "unreachable", "wait_backend")
    table = await cli("recover", *args, "--dry-run")
    assert job.id in table.stdout and "wait_backend" in table.stdout
    assert (await services.store.get(job.id)).version == running.version
    refused = await cli("recover", *args)
    assert refused.returncode == 2 and "--dry-run" in refused.stderr


async def test_held_blobs_stay_until_their_hold_runs_out(services):
    """An upload or a waiting job holds its input blob: old as the file is, cleanup keeps it
    until the hold ends, then removes it like any orphan."""
    now = time.time()
    held, unheld = await blob(services, b"an input", age_s=2 * DAY), await blob(services, b"loose", age_s=2 * DAY)
    await services.uploads.hold([held.hash], until=now + 600)

    report = await maintenance(services, now=now).run_once()
    assert report.blobs_deleted == [unheld.hash]
    assert await services.blobs.exists(held.hash)

    stale, fresh = services.blobs.root / ".incoming" / ".tmp-stale", services.blobs.root / ".incoming" / ".tmp-fresh"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half an upload of a killed process")
    fresh.write_bytes(b"an upload arriving now")
    os.utime(stale, (now - 2 * DAY, now - 2 * DAY))
    later = await maintenance(services, now=now + 601).run_once()
    assert not stale.exists() and fresh.exists()
    assert later.blobs_deleted == [held.hash]
    assert await services.redis.zcard(services.keys.blobs_held) == 0, "the ended hold is forgotten"


async def test_idle_workflow_breakers_are_forgotten_and_live_ones_kept(services):
    """One workflow breaker per owner and workflow that ever failed: housekeeping deletes those
    nothing depends on any more, so the hash every process reads each second stays small."""
    from comfyfleet.domain.policy import BreakerState, CircuitBreaker
    from comfyfleet.domain.breaker_scopes import WorkflowScope, backend_breaker, workflow_breaker

    now = time.time()
    breaker = CircuitBreaker(failure_threshold=2, window_s=300.0, cooldown_s=60.0)
    states = {
        workflow_breaker(WorkflowScope("image", "a" * 16, "idle")): breaker.record_failure(BreakerState(), now - 400),
        workflow_breaker(WorkflowScope("image", "a" * 16, "recent")): breaker.record_failure(BreakerState(), now - 10),
        workflow_breaker(WorkflowScope("image", "a" * 16, "open")): breaker.record_failure(
            breaker.record_failure(BreakerState(), now - 30), now - 20),
        workflow_breaker(WorkflowScope("image", "a" * 16, "long-open")): breaker.record_failure(
            breaker.record_failure(BreakerState(), now - 3600), now - 3599),
        backend_breaker("gpu-1"): breaker.record_failure(BreakerState(), now - 4000),
    }
    key = services.keys.fleet_breakers
    await services.redis.hset(key, mapping={f: json.dumps(s.to_dict()) for f, s in states.items()})
    housekeeping = Maintenance(redis=services.redis, keys=services.keys, store=services.store,
                               blobs=services.blobs, fleet=services.dispatcher.fleet,
                               workflow_breaker=breaker, clock=lambda: now)

    dry = await housekeeping.run_once(dry_run=True)
    assert dry.workflow_breakers_forgotten == 2 and len(await services.redis.hkeys(key)) == 5
    report = await housekeeping.run_once()
    assert report.workflow_breakers_forgotten == 2
    assert "deleted 2 idle workflow breaker(s)" in report.summary()
    kept = await services.redis.hkeys(key)
    owners = sorted(json.loads(f.removeprefix("workflow:"))[2] for f in kept if f.startswith("workflow:"))
    assert owners == ["open", "recent"] and backend_breaker("gpu-1") in kept


async def test_queued_jobs_left_past_their_deadline_end_expired(services):
    """No worker picked them up (all busy with long prompts, or none running): a queued job a
    grace past its deadline is expired, not left to vanish when its record's TTL runs out; one
    within the grace, or without a deadline, stays queued."""
    now = time.time()

    async def queued(*, deadline_in_s: float | None) -> Job:
        job = Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=now - 3600, updated_at=now - 3600,
                  deadline_at=None if deadline_in_s is None else now + deadline_in_s)
        return await services.store.create(job, {"1": {"class_type": "X", "inputs": {}}})

    overdue, within_grace, ahead, no_deadline = (
        await queued(deadline_in_s=-120), await queued(deadline_in_s=-30),
        await queued(deadline_in_s=600), await queued(deadline_in_s=None))
    assert (await maintenance(services, now=now).run_once(dry_run=True)).expired == [overdue.id]
    assert (await services.store.get(overdue.id)).status is JobStatus.QUEUED
    report = await maintenance(services, now=now).run_once()
    assert report.expired == [overdue.id] and "expired 1 queued job(s)" in report.summary()
    ended = await services.store.get(overdue.id)
    assert (ended.status, ended.error.code) == (JobStatus.EXPIRED, "deadline_exceeded")
    for job in (within_grace, ahead, no_deadline):
        assert (await services.store.get(job.id)).status is JobStatus.QUEUED
    assert (await maintenance(services, now=now).run_once()).expired == []
