"""The job record and its status vocabulary (Comfy API v2 statuses plus an internal phase)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELING = "canceling"
    CANCELED = "canceled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"


class Phase(str, enum.Enum):
    """Where a running job is inside one attempt."""

    DISPATCHING = "dispatching"  # slot taken, inputs being staged
    SUBMITTED = "submitted"  # accepted by ComfyUI, waiting in its queue
    EXECUTING = "executing"
    COLLECTING = "collecting"  # outputs being fetched


ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELING})
TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED}
)

DEFAULT_JOB_TYPE = "image"
BUILTIN_JOB_TYPES = ("image", "video", "edit", "faceswap", "lora_training")


@dataclass(frozen=True, slots=True)
class Progress:
    value: float = 0.0
    nodes_done: int = 0
    nodes_total: int = 0
    current_node: str | None = None
    current_node_class: str | None = None
    step: int | None = None
    steps: int | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "nodes_done": self.nodes_done,
            "nodes_total": self.nodes_total,
            "current_node": self.current_node,
            "current_node_class": self.current_node_class,
            "step": self.step,
            "steps": self.steps,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Progress":
        if not data:
            return cls()
        return cls(**{k: data.get(k) for k in cls.__slots__ if k in data})


@dataclass(frozen=True, slots=True)
class Output:
    """One output file of a job, stored in the blob store under its content hash."""

    id: str  # asset id
    node_id: str
    name: str
    type: str  # image | video | audio | text | file | latent
    content_type: str
    size_bytes: int
    hash: str  # "sha256:<hex>", the blob's name
    blake3: str | None = None  # "blake3:<hex>", the contract's content hash (None: not computed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node_id": self.node_id,
            "name": self.name,
            "type": self.type,
            "content_type": self.content_type,
            "size_bytes": self.size_bytes,
            "hash": self.hash,
            "blake3": self.blake3,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Output":
        return cls(**{k: data[k] for k in cls.__slots__ if k in data})


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job failed, in the contract's shape plus ComfyUI's own details."""

    code: str
    message: str
    failure_class: str | None = None
    node_id: str | None = None
    class_type: str | None = None
    exception_type: str | None = None
    traceback: list[str] | None = None
    node_errors: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "JobError | None":
        if not data:
            return None
        return cls(**{k: data.get(k) for k in cls.__slots__})


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of a job on one backend. Written before ``POST /prompt`` (write-ahead)."""

    number: int
    backend: str
    prompt_id: str
    client_id: str
    worker: str
    started_at: float
    submitted_at: float | None = None
    heartbeat_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None  # succeeded | failed | canceled | expired | retried
    failure_class: str | None = None
    message: str | None = None
    retry_at: float | None = None  # a retried attempt: when the next one may start (its backoff)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Attempt | None":
        if not data:
            return None
        return cls(**{k: data.get(k) for k in cls.__slots__})


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    status: JobStatus
    created_at: float
    type: str = DEFAULT_JOB_TYPE
    owner: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    idempotency_key: str | None = None
    phase: Phase | None = None
    version: int = 0
    started_at: float | None = None
    completed_at: float | None = None
    updated_at: float | None = None
    deadline_at: float | None = None
    not_before: float | None = None
    attempt: int = 0  # attempts started so far
    max_attempts: int = 3
    current: Attempt | None = None
    history: tuple[Attempt, ...] = ()
    progress: Progress = field(default_factory=Progress)
    outputs: tuple[Output, ...] = ()
    error: JobError | None = None
    cancel_requested: bool = False
    has_partner_key: bool = False  # sent with a partner key, which only its API process holds

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def evolve(self, **changes: Any) -> "Job":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "created_at": self.created_at,
            "type": self.type,
            "owner": self.owner,
            "metadata": dict(self.metadata),
            "priority": self.priority,
            "idempotency_key": self.idempotency_key,
            "phase": self.phase.value if self.phase else None,
            "version": self.version,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "updated_at": self.updated_at,
            "deadline_at": self.deadline_at,
            "not_before": self.not_before,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "current": self.current.to_dict() if self.current else None,
            "history": [a.to_dict() for a in self.history],
            "progress": self.progress.to_dict(),
            "outputs": [o.to_dict() for o in self.outputs],
            "error": self.error.to_dict() if self.error else None,
            "cancel_requested": self.cancel_requested,
            "has_partner_key": self.has_partner_key,
        }

    @staticmethod
    def output_hashes_of(data: dict[str, Any]) -> list[str]:
        """The blob digests a record (``to_dict`` form) refers to, read without building the
        job: housekeeping reads every retained record for these alone."""
        return [output["hash"] for output in data.get("outputs") or ()]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Job":
        return cls(
            id=data["id"],
            status=JobStatus(data["status"]),
            created_at=data["created_at"],
            type=data.get("type") or DEFAULT_JOB_TYPE,
            owner=data.get("owner"),
            metadata=dict(data.get("metadata") or {}),
            priority=int(data.get("priority") or 0),
            idempotency_key=data.get("idempotency_key"),
            phase=Phase(data["phase"]) if data.get("phase") else None,
            version=int(data.get("version") or 0),
            started_at=data.get("started_at"),
            completed_at=data.get("completed_at"),
            updated_at=data.get("updated_at"),
            deadline_at=data.get("deadline_at"),
            not_before=data.get("not_before"),
            attempt=int(data.get("attempt") or 0),
            max_attempts=int(data.get("max_attempts") or 3),
            current=Attempt.from_dict(data.get("current")),
            history=tuple(Attempt.from_dict(a) for a in data.get("history") or ()),  # type: ignore[misc]
            progress=Progress.from_dict(data.get("progress")),
            outputs=tuple(Output.from_dict(o) for o in data.get("outputs") or ()),
            error=JobError.from_dict(data.get("error")),
            cancel_requested=bool(data.get("cancel_requested")),
            has_partner_key=bool(data.get("has_partner_key")),
        )
