"""Helpers for the store tests: a job factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest

from comfyfleet.domain.job import Job, JobStatus


@pytest.fixture
def make_job() -> Callable[..., Job]:
    counter = iter(range(1, 1_000_000))

    def make(**fields: Any) -> Job:
        fields.setdefault("id", str(uuid4()))
        fields.setdefault("status", JobStatus.QUEUED)
        fields.setdefault("created_at", 1_700_000_000.0 + next(counter))
        return Job(**fields)

    return make
