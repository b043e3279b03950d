"""The reconcile table (DESIGN.md section 5), one row per test: a runner picking up a job whose
worker died asks the backend first and acts on what it says, never re-POSTing blindly."""

from __future__ import annotations

import asyncio
import time


from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import JobStatus
from comfyfleet.runtime.reconcile import Action, Where, decide, lookup
from helpers.fleet import image_workflow


def posts(sims) -> int:  # type: ignore[no-untyped-def]
    return sum(s.requests["POST /prompt"] for s in sims)


async def test_running_prompt_is_reattached_not_resubmitted(r, sims):
    """Row 'running or pending': resume tracking with the recorded ids; one POST in all."""
    job = await r.orphan(image_workflow(40, seed=1))
    await asyncio.sleep(0.2)  # it is executing on the simulator now
    assert (await lookup(r.services.dispatcher.by_name("sim-0").client,
                         job.current.prompt_id)).where is Where.RUNNING
    verdict = await r.runner.run(job.id)
    done = await r.store.get(job.id)
    assert verdict.done and done.status is JobStatus.SUCCEEDED
    assert done.attempt == 1 and done.history[0].prompt_id == job.current.prompt_id
    assert done.history[0].worker == "w-test"  # the reattach heartbeat made it ours
    assert posts(sims) == 1 and len(sims[0].records) == 1


async def test_pending_prompt_is_reattached(r, sims):
    """Row 'pending': a prompt waiting behind another in ComfyUI's queue is tracked, not re-sent."""
    first = await r.orphan(image_workflow(20, seed=2))
    second = await r.orphan(image_workflow(5, seed=3))
    state = await lookup(r.services.dispatcher.by_name("sim-0").client, second.current.prompt_id)
    assert state.where is Where.PENDING
    verdicts = await asyncio.gather(r.runner.run(first.id), r.runner.run(second.id))
    assert all(v.done for v in verdicts)
    assert [(await r.store.get(j.id)).status for j in (first, second)] == [JobStatus.SUCCEEDED] * 2
    assert posts(sims) == 2


async def test_finished_prompt_is_collected_from_history(r, sims):
    """Row 'in history, success': outputs collected, job succeeds, nothing tracked or re-sent."""
    job = await r.orphan(image_workflow(2, seed=4))
    await sims[0].wait_idle()
    assert (await r.runner.run(job.id)).done
    done = await r.store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and len(done.outputs) == 1
    assert await r.services.blobs.exists(done.outputs[0].hash)
    assert posts(sims) == 1
    assert r.runner.counters["sim-0"].socket_connects == 0, "history answered: nothing to track"
    assert not await r.slot_held(job), "the dead worker's slot is free again"


async def test_failed_prompt_is_classified_as_if_it_just_happened(r, sims):
    """Row 'in history, error': a node error is permanent: failed at once, no new attempt."""
    workflow = image_workflow(2, seed=5)
    workflow["2"]["inputs"]["fail"] = True
    job = await r.orphan(workflow)
    await sims[0].wait_idle()
    assert (await r.runner.run(job.id)).done
    done = await r.store.get(job.id)
    assert done.status is JobStatus.FAILED and done.error.failure_class == "permanent"
    assert done.attempt == 1 and posts(sims) == 1
    assert r.runner.counters["sim-0"].socket_connects == 0
    assert not await r.slot_held(job)


async def test_prompt_lost_by_a_restarted_backend_gets_a_new_attempt(r, sims):
    """Row 'absent': the backend restarted and forgot it: transient failure, new attempt, success."""
    job = await r.orphan(image_workflow(50, seed=6))
    await asyncio.sleep(0.2)
    await sims[0].restart()
    verdict = await r.runner.run(job.id)
    retried = await r.store.get(job.id)
    assert not verdict.done and retried.status is JobStatus.QUEUED
    assert (retried.history[0].outcome, retried.history[0].failure_class) == ("retried", "transient")
    assert r.runner.counters["sim-0"].socket_connects == 0, "a lost prompt is not waited for"
    await asyncio.sleep(max(0.0, verdict.run_at - time.time()))
    assert (await r.runner.run(job.id)).done
    done = await r.store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.attempt == 2
    assert done.history[1].prompt_id != done.history[0].prompt_id
    assert done.history[1].backend == "sim-1"  # another backend than the one that lost it


async def test_write_ahead_without_post_submits_the_recorded_prompt_once(r, sims):
    """Row 'absent' in phase dispatching: the POST never landed: submit with the recorded ids."""
    job = await r.orphan(image_workflow(3, seed=7), phase="dispatching", post=False)
    assert (await r.runner.run(job.id)).done
    done = await r.store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.attempt == 1
    assert done.history[0].prompt_id == job.current.prompt_id
    assert posts(sims) == 1


async def test_write_ahead_with_post_landed_is_not_posted_again(r, sims):
    """Phase dispatching but the POST did land (the answer was lost): look it up, track it."""
    job = await r.orphan(image_workflow(20, seed=8), phase="dispatching", post=True)
    assert (await r.runner.run(job.id)).done
    assert (await r.store.get(job.id)).status is JobStatus.SUCCEEDED
    assert posts(sims) == 1


async def test_job_past_its_deadline_is_interrupted_and_expires(r, sims):
    """Deadline passed while nobody ran it: interrupt the prompt on its backend, end expired."""
    job = await r.orphan(image_workflow(500, seed=9), deadline_s=0.3)
    await asyncio.sleep(0.5)
    assert (await r.runner.run(job.id)).done
    done = await r.store.get(job.id)
    assert done.status is JobStatus.EXPIRED and done.error.code == "deadline_exceeded"
    await sims[0].wait_idle()
    assert sims[0].records[0].outcome == "interrupted"
    assert not await r.slot_held(job)


async def test_cancel_asked_while_nobody_ran_it_interrupts_and_frees_the_slot(r, sims):
    """A cancel that arrived after the worker died: the prompt is interrupted on its backend,
    the job ends canceled and the dead worker's slot there is free again."""
    job = await r.orphan(image_workflow(500, seed=12))
    await r.store.apply(job.id, t.RequestCancel(), time.time())
    assert (await r.runner.run(job.id)).done
    assert (await r.store.get(job.id)).status is JobStatus.CANCELED
    await sims[0].wait_idle()
    assert sims[0].records[0].outcome == "interrupted"
    assert not await r.slot_held(job)


async def test_deadline_hit_while_tracking_interrupts_and_expires(r, sims):
    """A reattached prompt that runs past the deadline is interrupted there and expires."""
    job = await r.orphan(image_workflow(500, seed=10), deadline_s=1.0)
    assert (await r.runner.run(job.id)).done
    assert (await r.store.get(job.id)).status is JobStatus.EXPIRED
    await sims[0].wait_idle()
    assert sims[0].records[0].outcome == "interrupted"


async def test_job_that_succeeded_before_its_deadline_is_not_expired(r, sims):
    """Past the deadline but history says success: collect it; a finished job never expires."""
    job = await r.orphan(image_workflow(2, seed=11), deadline_s=0.3)
    await sims[0].wait_idle()
    await asyncio.sleep(0.4)
    assert (await r.runner.run(job.id)).done
    assert (await r.store.get(job.id)).status is JobStatus.SUCCEEDED
    assert not await r.slot_held(job)


async def test_unreachable_backend_is_waited_for_not_abandoned(r, sims):
    """Row 'backend unreachable': the decision is to wait for it (tracking), not a new attempt."""
    job = await r.orphan(image_workflow(2, seed=12))
    await sims[0].set_refusing(True)
    state = await lookup(r.services.dispatcher.by_name("sim-0").client, job.current.prompt_id)
    assert state.where is Where.UNREACHABLE
    assert decide(job, state, time.time()) is Action.WAIT_BACKEND
    await sims[0].set_refusing(False)
    assert (await r.runner.run(job.id)).done
    assert (await r.store.get(job.id)).status is JobStatus.SUCCEEDED and posts(sims) == 1


async def test_a_job_cancelled_while_it_waits_for_a_slot_ends_quietly_and_frees_it(r, sims, caplog):
    """The cancel lands while the runner waits for the one slot; the slot then frees and the
    runner's write-ahead finds the job cancelled: nothing is sent, the slot is given back, and
    no error is logged (it was an 'unexpected error' with a traceback)."""
    dispatcher = r.services.dispatcher
    fleet = dispatcher.fleet
    for name in ("sim-0", "sim-1"):  # both backends busy
        assert await fleet.leases.acquire([(name, 1, 0)], "someone-else") == name
    job = await r.new_job(image_workflow(2, seed=13))
    running = asyncio.create_task(r.runner.run(job.id))
    await asyncio.sleep(0.3)  # waiting for the slot
    assert (await r.store.apply(job.id, t.RequestCancel(), time.time())).status is JobStatus.CANCELED
    await fleet.leases.release("sim-0", "someone-else")  # wakes the waiting runner
    verdict = await asyncio.wait_for(running, 30)
    assert verdict.done
    assert not await r.slot_held(job)
    assert sims[0].records == [] and sims[1].records == []
    assert not [rec for rec in caplog.records if rec.levelname == "ERROR"]


async def test_a_job_whose_partner_key_is_held_by_no_one_fails_and_sends_nothing(r, sims):
    """Its API process restarted and took the key with it: the job fails (not retried), no
    prompt goes to a backend without the key, the slot is free and no breaker learns from it."""
    r.services.partner_asks.patience_s = 0.5  # asked again for that long (8 s by default)
    job = await r.new_job(image_workflow(2, seed=14), has_partner_key=True)
    assert (await r.runner.run(job.id)).done
    failed = await r.store.get(job.id)
    assert failed.status is JobStatus.FAILED and failed.error.code == "partner_key_lost", failed.error
    assert failed.attempt == 1 and "submit the job again" in failed.error.message
    assert sims[0].records == [] and sims[1].records == []
    assert not await r.slot_held(job) and not await r.slot_held(job, backend=1)
    again = await r.new_job(image_workflow(2, seed=15), has_partner_key=True)
    await r.services.partner_keys.hold(again.id, "partner-key", until=time.time() + 60)
    assert (await r.runner.run(again.id)).done
    assert (await r.store.get(again.id)).status is JobStatus.SUCCEEDED
    assert [rec.with_partner_key for sim in sims for rec in sim.records] == [True]
