"""Per job type policy: deadline and attempt budget (configuration, not code paths)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class JobTypePolicy:
    deadline_s: float = 600.0
    max_attempts: int = 3


DEFAULT_POLICIES: dict[str, JobTypePolicy] = {
    "image": JobTypePolicy(deadline_s=600.0),
    "edit": JobTypePolicy(deadline_s=600.0),
    "faceswap": JobTypePolicy(deadline_s=600.0),
    "video": JobTypePolicy(deadline_s=1800.0),
    "lora_training": JobTypePolicy(deadline_s=3 * 3600.0),
}


def policy_for(job_type: str, overrides: dict[str, JobTypePolicy] | None = None) -> JobTypePolicy:
    table = {**DEFAULT_POLICIES, **(overrides or {})}
    return table.get(job_type, JobTypePolicy())
