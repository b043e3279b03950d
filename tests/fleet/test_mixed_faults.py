"""Four backends, three of them in trouble: every job succeeds, permanent failures are never
retried, the refusing backend's breaker opens and closes again, and every retry waited exactly
what the retry policy says."""

from __future__ import annotations

import asyncio
from datetime import datetime

from comfyfleet.domain.policy import RetryPolicy, jitter_unit
from comfyfleet.sim import SimConfig
from helpers.fleet import free_port, image_workflow, running_fleet

RETRY_AFTER_S = 0.3
FAILING = {"2": {"class_type": "SimFailingNode", "inputs": {"image": ["1", 0], "message": "bad model"}}}


def large_workflow(seed: int) -> dict:
    return image_workflow(3, seed=seed, extra_node={"4": {"class_type": "PreviewImage",
                                                          "inputs": {"images": ["2", 0]}}})


async def breaker_of(fleet, name: str) -> dict:
    response = await fleet.http.get(f"/api/v2/backends/{name}")
    assert response.status_code == 200, response.text
    return response.json()["breaker"]


async def wait_breaker(fleet, name: str, status: str, timeout_s: float = 20.0) -> dict:
    async with asyncio.timeout(timeout_s):
        while (breaker := await breaker_of(fleet, name))["status"] != status:
            await asyncio.sleep(0.05)
    return breaker


async def test_mixed_faults_all_jobs_succeed_and_breakers_cycle(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=4, sim_config=SimConfig(step_s=0.005),
                             health_interval_s=0.2, breaker_failures=3,
                             breaker_cooldown_s=1.0) as fleet:
        refusing, flaky, small_gpu, good = fleet.sims
        await refusing.set_refusing(True)
        flaky.faults.update({"http_error_status": 503, "http_error_rate": 0.5,
                             "retry_after_s": RETRY_AFTER_S, "http_error_paths": ["POST /prompt"]})
        small_gpu.faults.update({"oom_above_nodes": 3})
        await wait_breaker(fleet, "sim-0", "open")  # health checks count against the breaker

        first = [await fleet.submit(large_workflow(i) if i % 4 == 0 else image_workflow(3, seed=i))
                 for i in range(100)]
        doomed = [await fleet.submit(image_workflow(2, seed=500 + i, extra_node=FAILING)) for i in range(5)]
        await refusing.set_refusing(False)  # it recovers: half-open after the cool-down, then closed
        closed = await wait_breaker(fleet, "sim-0", "closed")
        second = [await fleet.submit(large_workflow(i) if i % 4 == 0 else image_workflow(3, seed=i))
                  for i in range(100, 200)]

        finals = [await fleet.wait(j["id"], timeout_s=120) for j in first + second + doomed]
        bad = [(j["status"], j.get("error"), j.get("attempts")) for j in finals[:200] if j["status"] != "succeeded"]
        assert not bad, [(s, [(a["backend"], a["failure_class"], a["outcome"], (a["message"] or "")[:40]) for a in at]) for s, e, at in bad]
        assert [j["status"] for j in finals[200:]] == ["failed"] * 5

        moves = [(t["from"], t["to"]) for t in closed["transitions"]]
        assert moves[0] == ("closed", "open") and moves[-1] == ("half_open", "closed")
        assert ("open", "half_open") in moves
        recovered_at = closed["changed_at"]
        assert any(r.started_at >= recovered_at for r in refusing.records), \
            "the recovered backend takes work again"

        policy = RetryPolicy()
        store = fleet.services.store
        retried = 0
        for summary in finals:
            job = await store.get(summary["id"])
            attempts = job.history
            for earlier, later in zip(attempts, attempts[1:]):
                assert earlier.failure_class != "permanent", "a permanent failure was retried"
                retry_after = RETRY_AFTER_S if "HTTP 503" in (earlier.message or "") else None
                expected = policy.delay_s(earlier.number, random_unit=jitter_unit(job.id, earlier.number),
                                          retry_after_s=retry_after)
                assert abs((earlier.retry_at - earlier.ended_at) - expected) < 1e-6
                assert later.started_at >= earlier.retry_at
                assert later.number == earlier.number + 1
                retried += 1
            assert len(attempts) <= 3
        for summary in finals[200:]:
            job = await store.get(summary["id"])
            last = job.history[-1]  # earlier attempts may have met a 503 before the node ran
            assert last.failure_class == "permanent" and last.outcome == "failed"
            assert all(a.failure_class != "permanent" for a in job.history[:-1])
        causes = {a.failure_class for s in finals for a in (await store.get(s["id"])).history
                  if a.outcome == "retried"}
        assert retried > 0 and {"transient", "recoverable"} <= causes
        print(f"\n200 jobs succeeded after {retried} retries ({sorted(causes)})")


async def test_a_backend_asking_to_be_left_alone_gets_nothing_until_its_retry_after(valkey_url, tmp_path):
    """A 503 with Retry-After from one backend: no job is sent there until that time has passed.
    Each job sent there meanwhile had collected the same 503 and spent an attempt on it."""
    async with running_fleet(valkey_url, tmp_path, sims=2, sim_config=SimConfig(step_s=0.1)) as fleet:
        busy, fine = fleet.sims
        busy.faults.update({"http_error_status": 503, "retry_after_s": 3,
                            "http_error_paths": ["POST /prompt"]})
        submitted = [await fleet.submit(image_workflow(3, seed=n)) for n in range(6)]
        jobs = [await fleet.wait(job["id"], timeout_s=60) for job in submitted]
        assert [j["status"] for j in jobs] == ["succeeded"] * 6
        refused = sorted(datetime.fromisoformat(a["started_at"]).timestamp() for j in jobs
                         for a in j["attempts"] if a["backend"] == "sim-0")
        assert len(refused) == busy.faults.injected  # every prompt sent there got the 503
        gaps = [later - earlier for earlier, later in zip(refused, refused[1:])]
        assert all(gap >= 3.0 for gap in gaps), f"sent there within its Retry-After: {gaps}"
        assert len(refused) <= 2  # once, and perhaps once more after the 3 s


async def test_a_prompt_that_could_not_be_sent_moves_on_at_once(valkey_url, tmp_path):
    """A backend no connection can be made to (a new one with a wrong URL, not yet found down by
    a health check) refuses before anything is sent: the attempt fails there and then and the
    job goes elsewhere. It was taken for a prompt whose answer was lost, and the job waited out
    the unreachable grace (here 600 s, so the wait below would run out) for a prompt that was
    never sent."""
    async with running_fleet(valkey_url, tmp_path, sims=1, health_interval_s=600,
                             tracker_unreachable_grace_s=600) as fleet:
        ghost = await fleet.http.post("/api/v2/backends", json={"name": "ghost",
                                                                 "url": f"http://127.0.0.1:{free_port()}"})
        assert ghost.status_code == 201, ghost.text
        async with asyncio.timeout(5):
            while "ghost" not in fleet.services.dispatcher.snapshot.backends:
                await asyncio.sleep(0.05)
        jobs = [await fleet.wait((await fleet.submit(image_workflow(1, seed=n)))["id"], timeout_s=30)
                for n in range(4)]
    assert [j["status"] for j in jobs] == ["succeeded"] * 4
    sent_to_ghost = [a for j in jobs for a in j["attempts"] if a["backend"] == "ghost"]
    assert sent_to_ghost, "round-robin sent no job to the unreachable backend"
    assert all(a["failure_class"] == "transient" and "cannot connect" in a["message"]
               for a in sent_to_ghost), sent_to_ghost
