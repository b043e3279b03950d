"""Following one submitted prompt until its outcome, its job's deadline, or a cancel.

A cancel or a deadline stops the prompt on its backend (``stop_prompt``), then gives the
interrupt ``cancel_grace_s`` to land: a prompt that still finishes meanwhile is reported as it
ended. The cancel watch takes only a job really ``canceling`` for a cancel: a store error or an
event stream that ends is watched again, never read as a cancel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..comfy.client import ComfyClient
from ..comfy.tracker import Outcome, PromptTracker
from ..domain.job import Job, JobStatus
from ..errors import BackendError, StoreError
from ..ports import JobStore

log = logging.getLogger(__name__)


async def follow(tracker: PromptTracker, job: Job, client: ComfyClient, *, store: JobStore, cancels,
                 clock: Callable[[], float], cancel_grace_s: float) -> Outcome | None:
    """The prompt's outcome; an ``expired`` outcome past the deadline; None once a cancel has
    interrupted it. ``cancels``: the bus the job's cancel request arrives on."""
    assert job.current is not None
    following = asyncio.create_task(tracker.follow())
    canceled = asyncio.create_task(wait_for_cancel(store, cancels, job.id))
    timeout_s = None if job.deadline_at is None else max(0.0, job.deadline_at - clock())
    try:
        done, _ = await asyncio.wait({following, canceled}, timeout=timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if following in done:
            return following.result()
        await stop_prompt(client, job.current.prompt_id, looks=1)
        try:  # let the interrupt land: a prompt that still finishes is reported as it ended
            async with asyncio.timeout(cancel_grace_s):
                outcome = await asyncio.shield(following)
            if outcome.kind == "success":
                return outcome
        except TimeoutError:
            pass
        if canceled not in done:
            return Outcome("expired", message="deadline exceeded")
        return None
    finally:
        for task in (following, canceled):
            task.cancel()
        # Bounded: a helper task that swallowed its cancellation (seen, rarely, in the cancel
        # watch) must not hold the job's outcome forever.
        finished, stuck = await asyncio.wait({following, canceled}, timeout=cancel_grace_s)
        for task in finished:
            if not task.cancelled():
                task.exception()  # retrieved: an error here does not change the outcome
        for task in stuck:
            log.warning("job %s: a tracking task did not stop when cancelled: %r", job.id, task)


async def wait_for_cancel(store: JobStore, cancels, job_id: str) -> None:
    """Return only once the job is really ``canceling``."""
    while True:
        try:
            async with cancels.subscription(job_id) as stream:
                job = await store.get(job_id)
                if job.status is JobStatus.CANCELING:
                    return
                async for event in stream:
                    if event.get("kind") == "cancel" or \
                            (event.get("job") or {}).get("status") == JobStatus.CANCELING.value:
                        return
                    if event.get("kind") == "resync" and \
                            (await store.get(job_id)).status is JobStatus.CANCELING:
                        return  # asked while the subscription was down
        except StoreError as exc:
            log.warning("job %s: cancel watch interrupted, watching again: %s", job_id, exc)
        await asyncio.sleep(1.0)


STOP_LOOKS = 5  # lookups of a prompt being stopped before giving up on seeing it gone
STOP_PAUSE_S = 0.5
STOP_WITHIN_S = 10.0  # a backend that hangs does not hold a cancel longer than this


async def stop_prompt(client: ComfyClient, prompt_id: str, *, looks: int = STOP_LOOKS,
                      pause_s: float = STOP_PAUSE_S, within_s: float = STOP_WITHIN_S) -> bool:
    """Take the prompt off its backend, and see it gone: dropped from the queue while it waits,
    interrupted while it runs, looked up again after each move. ``/interrupt`` is sent only
    while ``/queue`` shows the prompt running: a ComfyUI older than 0.3.56 ignores the id and
    stops whatever runs, which may be another job's prompt. True once the prompt is neither
    waiting nor running; False when ``looks`` lookups within ``within_s`` could not show that
    (the backend did not answer, or the prompt went on running)."""
    try:
        async with asyncio.timeout(within_s):
            for look in range(looks):
                if look:
                    await asyncio.sleep(pause_s)
                try:
                    where = (await client.queue()).find(prompt_id)
                    if where is None:
                        return True
                    if where[0] == "pending":
                        await client.delete_pending([prompt_id])
                    else:
                        await client.interrupt(prompt_id)
                except BackendError as exc:
                    log.debug("stopping prompt %s on %s: %s", prompt_id, client.name, exc)
    except TimeoutError:
        pass
    log.warning("prompt %s on %s: not seen stopped (%d lookup(s) within %.0f s)",
                prompt_id, client.name, looks, within_s)
    return False
