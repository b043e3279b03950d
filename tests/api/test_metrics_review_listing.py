"""``GET /api/v2/jobs`` pages: every job listed once, whatever the page size and however many
jobs share one ``created_at``."""

from __future__ import annotations

from uuid import uuid4

import pytest

from api_helpers import WORKFLOW

from comfyfleet.domain.job import Job, JobStatus

JOBS = "/api/v2/jobs"


async def walk(client, query: str) -> list[str]:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    cursor = None
    while True:
        response = await client.get(f"{JOBS}?{query}" + (f"&cursor={cursor}" if cursor else ""))
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_jobs_sharing_an_instant_are_each_listed_once_at_any_page_size(client, store, limit):
    """More jobs created in one instant than a page holds are neither skipped nor repeated."""
    made = []
    for _ in range(7):
        job = Job(id=str(uuid4()), status=JobStatus.QUEUED, created_at=500.0, updated_at=500.0,
                  deadline_at=1100.0)
        await store.create(job, WORKFLOW)
        made.append(job.id)
    seen = await walk(client, f"limit={limit}")
    assert seen == sorted(made, reverse=True)
