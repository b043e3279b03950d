"""What a job's backend knows about its prompt, and what to do about it.

    backend says about prompt_id           action
    -------------------------------------  -----------------------------------------------------
    running or pending (/queue)            reattach: resume tracking, no resubmission
    in history, success                    collect outputs, succeed
    in history, error / interrupted        classify as if it had just happened
    absent (restart, eviction, never sent) the prompt is lost: a new attempt (transient failure)
                                           (phase dispatching: it was never accepted, submit it)
    backend unreachable                    track it anyway: the tracker waits for the backend
                                           within its grace, then the attempt is given up
    past the deadline                      collect if history says success, else interrupt, expire

``/queue`` is asked before ``/history`` (a prompt finishing between the two calls cannot be
missed). ``BackendView`` answers from one ``/queue`` read per backend when many jobs are
reconciled at once (start-up), so reattaching N jobs costs N history reads at most, not N
queue listings.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping
from dataclasses import dataclass

from ..comfy.client import ComfyClient, HistoryEntry, QueueState
from ..domain.job import Job, JobStatus, Phase
from ..errors import BackendError


class Where(str, enum.Enum):
    RUNNING = "running"
    PENDING = "pending"
    HISTORY = "history"
    ABSENT = "absent"
    UNREACHABLE = "unreachable"
    NO_BACKEND = "no_backend"  # the attempt's backend is not configured any more


@dataclass(frozen=True, slots=True)
class PromptState:
    where: Where
    entry: HistoryEntry | None = None
    message: str = ""

    @property
    def on_backend(self) -> bool:
        return self.where in (Where.RUNNING, Where.PENDING)


class Action(str, enum.Enum):
    REATTACH = "reattach"
    SUBMIT = "submit"  # write-ahead done, POST /prompt never accepted: submit the recorded ids
    COLLECT = "collect"
    CLASSIFY = "classify"
    NEW_ATTEMPT = "new_attempt"
    WAIT_BACKEND = "wait_backend"
    CANCEL = "cancel"
    EXPIRE = "expire"


def decide(job: Job, state: PromptState, now: float) -> Action:
    """The reconcile action for a running/canceling ``job`` whose prompt is in ``state`` (pure)."""
    success = state.where is Where.HISTORY and state.entry is not None and \
        state.entry.outcome == "success"
    if job.deadline_at is not None and now >= job.deadline_at:
        return Action.COLLECT if success else Action.EXPIRE
    if job.status is JobStatus.CANCELING:
        return Action.COLLECT if success else Action.CANCEL
    match state.where:
        case Where.RUNNING | Where.PENDING:
            return Action.REATTACH
        case Where.HISTORY:
            return Action.COLLECT if success else Action.CLASSIFY
        case Where.ABSENT:
            return Action.SUBMIT if job.phase is Phase.DISPATCHING else Action.NEW_ATTEMPT
        case Where.UNREACHABLE:
            return Action.WAIT_BACKEND
    return Action.NEW_ATTEMPT


async def lookup(client: ComfyClient, prompt_id: str, queue: QueueState | None = None) -> PromptState:
    """``/queue`` (or the given snapshot of it) first, then ``/history/{id}``."""
    try:
        queue = queue if queue is not None else await client.queue()
        found = queue.find(prompt_id)
        if found is not None:
            return PromptState(Where(found[0]))
        entry = await client.history(prompt_id)
    except BackendError as exc:
        return PromptState(Where.UNREACHABLE, message=str(exc))
    if entry is not None:
        return PromptState(Where.HISTORY, entry)
    return PromptState(Where.ABSENT, message=f"{client.name} does not know prompt {prompt_id}")


class BackendView:
    """One ``/queue`` snapshot per backend, shared by every job reconciled in one sweep.

    A snapshot may be older than the prompt's latest move: a prompt found running or pending is
    reattached (the tracker sees whatever happened since), and one not found is checked again
    live before anything is concluded from its absence.
    """

    def __init__(self, clients: Mapping[str, ComfyClient]) -> None:
        self._clients = dict(clients)
        self._queues: dict[str, QueueState | None] = {}
        self._index: dict[str, dict[str, str]] = {}

    async def load(self, backend_names: set[str]) -> None:
        names = [n for n in backend_names if n in self._clients and n not in self._queues]
        results = await asyncio.gather(*(self._clients[n].queue() for n in names),
                                       return_exceptions=True)
        for name, result in zip(names, results):
            if isinstance(result, QueueState):
                self._queues[name] = result
                self._index[name] = {**{i.prompt_id: "pending" for i in result.pending},
                                     **{i.prompt_id: "running" for i in result.running}}
            else:
                self._queues[name] = None

    def seen(self, backend: str, prompt_id: str) -> PromptState | None:
        """Running or pending in the snapshot, else None (then ask ``state``); no I/O."""
        where = self._index.get(backend, {}).get(prompt_id)
        return PromptState(Where(where)) if where is not None else None

    async def state(self, backend: str, prompt_id: str) -> PromptState:
        client = self._clients.get(backend)
        if client is None:
            return PromptState(Where.NO_BACKEND, message=f"backend {backend} is not configured")
        where = self._index.get(backend, {}).get(prompt_id)
        if where is not None:
            return PromptState(Where(where))
        return await lookup(client, prompt_id)
