"""Render domain records as Comfy API v2 JSON (the contract's Job, Output, Progress, Asset).

The comfy-sdk validates what it reads (``comfy_low.models``): every always-present Job key must be
sent even as null, timestamps carry a timezone, ``Output.url`` / ``Asset.url`` are absolute, and
``url_expires_at`` is a required, non-null date-time there. Our content URLs are served by us and
stay valid for as long as the job is retained, so ``url_expires_at`` is the job's retention
deadline rather than null (null would make the SDK reject the whole job).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..domain.job import Attempt, Job, JobError, JobStatus, Output, Progress

API_PREFIX = "/api/v2"
OUTPUT_TYPES = frozenset({"image", "video", "audio", "text", "file", "latent"})


def iso(ts: float | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, or ``None``."""
    if ts is None:
        return None
    moment = datetime.fromtimestamp(float(ts), UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_job_id() -> str:
    """A fresh job id: a random UUID in canonical form (what ``is_job_id`` accepts)."""
    return str(uuid.uuid4())


def is_job_id(text: str) -> bool:
    """True for an id this server could have issued (a canonical UUID). Anything else names no
    job and must not reach the store: ids are part of Redis key names, so ``<id>:wf`` would
    address the workflow key of job ``<id>``."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def asset_id_for(job_id: str, index: int) -> str:
    """An output's asset id: self-describing, so no index is needed to resolve it."""
    return f"{job_id}.{index}"


def parse_asset_id(asset_id: str) -> tuple[str, int] | None:
    """``(job_id, output index)`` for an output asset id, else ``None``."""
    job_id, sep, index = asset_id.rpartition(".")
    if not sep or not is_job_id(job_id) or not (index.isascii() and index.isdigit()) \
            or len(index) > 6:  # isdigit alone admits "²", which int() refuses
        return None
    return job_id, int(index)


@dataclass(frozen=True, slots=True)
class Renderer:
    """Turns records into contract JSON with absolute links under ``public_base_url``."""

    public_base_url: str
    retention_s: float

    # -- links -------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"{self.public_base_url}{API_PREFIX}{path}"

    def job_urls(self, job_id: str) -> dict[str, str]:
        return {
            "self": self.url(f"/jobs/{job_id}"),
            "events": self.url(f"/jobs/{job_id}/events"),
            "cancel": self.url(f"/jobs/{job_id}/cancel"),
        }

    def content_url(self, asset_id: str) -> str:
        return self.url(f"/assets/{asset_id}/content")

    # -- records -----------------------------------------------------------------------------
    def expires_at(self, job: Job) -> float:
        """Retention deadline: completion + retention when terminal, else the job's deadline."""
        if job.is_terminal:
            return (job.completed_at or job.updated_at or job.created_at) + self.retention_s
        return job.deadline_at or job.created_at + self.retention_s

    def job(self, job: Job, *, queue_position: int | None = None) -> dict[str, Any]:
        return {
            "id": job.id,
            "status": job.status.value,
            "created_at": iso(job.created_at),
            "started_at": iso(job.started_at),
            "completed_at": iso(job.completed_at),
            "expires_at": iso(self.expires_at(job)),
            "queue_position": queue_position if job.status is JobStatus.QUEUED else None,
            "progress": progress_json(job.progress),
            "outputs": [self.output(job, o) for o in job.outputs],
            "error": error_json(job.error),
            "urls": self.job_urls(job.id),
            "metrics": metrics_json(job),
            "metadata": dict(job.metadata),
            "priority": job.priority,
            "type": job.type,
            "attempt": job.attempt,
            "max_attempts": job.max_attempts,
            "backend": last_backend(job),
            "attempts": [attempt_json(a) for a in (*job.history, *([job.current] if job.current else []))],
            "phase": job.phase.value if job.phase else None,
        }

    def output(self, job: Job, output: Output) -> dict[str, Any]:
        return {
            "node_id": output.node_id,
            "name": output.name,
            "type": output.type if output.type in OUTPUT_TYPES else "file",
            "content_type": output.content_type,
            "size_bytes": output.size_bytes,
            "id": output.id,
            "hash": output.blake3,
            "url": self.content_url(output.id),
            "url_expires_at": iso(self.expires_at(job)),
            "job_id": job.id,
        }

    def asset(self, job: Job, output: Output) -> dict[str, Any]:
        expires = iso(self.expires_at(job))
        return {
            "id": output.id,
            "hash": output.blake3,
            "size_bytes": output.size_bytes,
            "content_type": output.content_type,
            "file_path": output.name,
            "created_new": False,
            "created_at": iso(job.completed_at or job.updated_at or job.created_at),
            "url": self.content_url(output.id),
            "url_expires_at": expires,
            "expires_at": expires,
            "job_id": job.id,
        }

    def upload(self, upload: Any, *, created_new: bool = False) -> dict[str, Any]:
        """An uploaded input asset (``store.uploads.Upload``)."""
        expires = iso(upload.expires_at)
        return {
            "id": upload.id,
            "hash": upload.blake3,
            "size_bytes": upload.size_bytes,
            "content_type": upload.content_type,
            "file_path": upload.file_path,
            "created_new": created_new,
            "created_at": iso(upload.created_at),
            "url": self.content_url(upload.id),
            "url_expires_at": expires,
            "expires_at": expires,
            "job_id": None,
            "tags": list(upload.tags),
        }

    @staticmethod
    def status_event(job: Job, queue_position: int | None) -> dict[str, Any]:
        qp = queue_position if job.status is JobStatus.QUEUED else None
        return {"status": job.status.value, "queue_position": qp}


def last_backend(job: Job) -> str | None:
    """The backend of the running attempt, else of the last one that ended."""
    if job.current is not None:
        return job.current.backend
    return job.history[-1].backend if job.history else None


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {"number": attempt.number, "backend": attempt.backend, "prompt_id": attempt.prompt_id,
            "started_at": iso(attempt.started_at), "submitted_at": iso(attempt.submitted_at),
            "ended_at": iso(attempt.ended_at), "outcome": attempt.outcome,
            "failure_class": attempt.failure_class, "message": attempt.message,
            "retry_at": iso(attempt.retry_at)}


def progress_json(progress: Progress) -> dict[str, Any] | None:
    """The snapshot, or ``None`` before the job ever reported progress."""
    if progress == Progress():
        return None
    data = progress.to_dict()
    data["value"] = min(1.0, max(0.0, float(progress.value)))
    return data


def error_json(error: JobError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    traceback = error.traceback
    if isinstance(traceback, list):
        traceback = "".join(str(line) for line in traceback)
    return {
        "code": error.code,
        "message": error.message,
        "node_id": error.node_id,
        "class_type": error.class_type,
        "traceback": traceback or None,
        "details": {
            "exception_type": error.exception_type,
            "node_errors": error.node_errors,
            "failure_class": error.failure_class,
        },
    }


def metrics_json(job: Job) -> dict[str, int | None]:
    queue_ms = execution_ms = None
    if job.started_at is not None:
        queue_ms = max(0, round((job.started_at - job.created_at) * 1000))
        if job.completed_at is not None:
            execution_ms = max(0, round((job.completed_at - job.started_at) * 1000))
    return {"queue_ms": queue_ms, "execution_ms": execution_ms}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contract's error envelope."""
    return {"error": {"code": code, "message": message, "details": details}}
