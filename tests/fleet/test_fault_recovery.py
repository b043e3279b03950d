"""Transient fault recovery over more than 1,000 injected faults: HTTP 500/502/503/504 on
POST /prompt and on GET /history/{id}, answered by eight instant simulators at a 45 % rate. At
least 99 % of the jobs still succeed (the rate is printed, with the fault rate realized on each
path: the simulators' fault rolls are seeded by their names, and the fixed sequences of these
eight fail 48 % of their first rolls, above the 45 % set). The job type allows ten attempts with
a short backoff (base 5 ms, cap 50 ms), as an operator of such a flaky fleet would set: an
attempt fails about half the time here, so eight left about two jobs in 600 failing by chance
and a run failing seven (99 %) about once in a hundred. Jobs are put straight into the store and
the queue (the API is covered elsewhere). Failed history reads are retried within 0.2 s (the
default backs off to 5 s, which only made the test wait)."""

from __future__ import annotations

import time
import uuid

from comfyfleet.domain.job import Job, JobStatus
from comfyfleet.sim import SimConfig
from helpers.fleet import image_workflow, running_fleet

FAULTS_WANTED = 1000
ERROR_RATE = 0.45
BATCH = 100
ATTEMPTS = 10


async def submit(services, seed: int) -> str:
    now = time.time()
    job = Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=now, updated_at=now,
              max_attempts=ATTEMPTS, deadline_at=now + 300)
    await services.store.create(job, image_workflow(1, seed=seed))
    await services.queue.enqueue(job)
    return job.id


async def test_over_a_thousand_transient_faults_at_least_99_percent_succeed(valkey_url, tmp_path):
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text(f"[job_types.image]\nmax_attempts = {ATTEMPTS}\nbackoff_base_s = 0.005\n"
                          "backoff_cap_s = 0.05\n")
    async with running_fleet(valkey_url, tmp_path, sims=8, sim_config=SimConfig(step_s=0.0),
                             backends_file=fleet_file, breaker_failures=10_000,
                             tracker_poll_min_s=0.1, tracker_poll_max_s=0.2) as fleet:
        for sim, status in zip(fleet.sims, (500, 502, 503, 504) * 2):
            sim.faults.update({"http_error_status": status, "http_error_rate": ERROR_RATE,
                               "retry_after_s": 0, "http_error_paths": ["POST /prompt", "GET /history/*"]})
        store, ids = fleet.services.store, []
        while sum(s.faults.injected for s in fleet.sims) < FAULTS_WANTED:
            ids += [await submit(fleet.services, len(ids) + i) for i in range(BATCH)]
            for job_id in ids[-BATCH:]:
                await fleet.wait(job_id, timeout_s=120)
        jobs = [await store.get(i) for i in ids]
        injected = sum(s.faults.injected for s in fleet.sims)
        posts = sum(s.requests["POST /prompt"] for s in fleet.sims)
        history_reads = sum(n for s in fleet.sims for line, n in s.requests.items()
                            if line.startswith("GET /history/"))

    succeeded = sum(1 for j in jobs if j.status is JobStatus.SUCCEEDED)
    retried = sum(len(j.history) - 1 for j in jobs)
    rate = succeeded / len(jobs)
    refused_posts = sum(1 for j in jobs for a in j.history if "POST /prompt answered" in (a.message or ""))
    print(f"\n{injected} transient faults injected over {len(jobs)} jobs ({retried} retries): "
          f"{succeeded} succeeded = {rate:.2%}; realized fault rate: POST /prompt "
          f"{refused_posts}/{posts} = {refused_posts / posts:.1%}, GET /history "
          f"{injected - refused_posts}/{history_reads} = {(injected - refused_posts) / history_reads:.1%}")
    for job in jobs:
        if job.status is not JobStatus.SUCCEEDED:
            print(f"  {job.id} {job.status.value}: {[(a.backend, a.failure_class, a.message) for a in job.history]}")
    assert injected >= FAULTS_WANTED
    assert rate >= 0.99
    assert {a.failure_class for j in jobs for a in j.history if a.failure_class} == {"transient"}
