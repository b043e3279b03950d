"""Reading jobs: the Job JSON shape, comfy-sdk's own parsers, listing with cursors, cancel."""

from __future__ import annotations

from datetime import datetime
from uuid import uuid4

import pytest
from blake3 import blake3
from api_helpers import BASE_URL, JOB_KEYS, WORKFLOW, attempt, error_code
from comfy_low.models import Asset as SdkAsset
from comfy_low.models import Output as SdkOutput
from comfy_low.transport import _job as sdk_parse_job
from comfy_sdk.jobs import JobSummary

from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import Job, JobError, JobStatus, Progress

JOBS = "/api/v2/jobs"


async def submit(client, **body) -> dict:
    response = await client.post(JOBS, json={"workflow": WORKFLOW, **body})
    assert response.status_code == 201, response.text
    return response.json()


def aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0
    return moment


async def test_queued_job_json_has_every_key_and_absolute_urls(client):
    job = await submit(client)
    for key in JOB_KEYS:
        assert key in job
    assert job["started_at"] is None and job["completed_at"] is None and job["error"] is None
    assert job["progress"] is None and job["outputs"] == []
    assert aware(job["expires_at"]) > aware(job["created_at"])
    assert job["urls"] == {"self": f"{BASE_URL}/api/v2/jobs/{job['id']}",
                           "events": f"{BASE_URL}/api/v2/jobs/{job['id']}/events",
                           "cancel": f"{BASE_URL}/api/v2/jobs/{job['id']}/cancel"}
    assert job["metrics"] == {"queue_ms": None, "execution_ms": None}
    assert job["backend"] is None and job["phase"] is None and job["attempt"] == 0


async def test_succeeded_job_json_outputs_timestamps_and_metrics(client, make_finished_job):
    done = await make_finished_job([(b"\x89PNG-one", "image/png", "a.png"),
                                    (b"\x89PNG-two", "image/png", "b.png")])
    job = (await client.get(f"{JOBS}/{done.id}")).json()
    assert job["status"] == "succeeded"
    assert aware(job["started_at"]) < aware(job["completed_at"])
    expires = (aware(job["expires_at"]) - aware(job["completed_at"])).total_seconds()
    assert expires == pytest.approx(7 * 24 * 3600)
    assert job["metrics"] == {"queue_ms": 1000, "execution_ms": 4000}
    assert job["progress"]["value"] == 1.0
    first = job["outputs"][0]
    assert first["id"] == f"{done.id}.0" and first["job_id"] == done.id
    assert first["url"] == f"{BASE_URL}/api/v2/assets/{done.id}.0/content"
    assert first["hash"] == "blake3:" + blake3(b"\x89PNG-one").hexdigest() and first["size_bytes"] == 8
    assert first["url_expires_at"] == job["expires_at"]


async def test_comfy_sdk_parses_our_job_output_asset_and_list_item(client, store,
                                                                   make_finished_job):
    """The SDK's own pydantic models accept every shape we send (queued, running, done, failed)."""
    queued = await submit(client, metadata={"run": "1"})
    running = await submit(client)
    await store.apply(running["id"], t.Dispatch(attempt()), 1.0)
    await store.apply(running["id"], t.ProgressMade(Progress(
        value=0.5, nodes_done=1, nodes_total=3, current_node="3", current_node_class="KSampler",
        step=2, steps=4, message="KSampler 2/4")), 2.0)
    failed = await submit(client)
    await store.apply(failed["id"], t.Fail(JobError(
        code="node_execution_error", message="boom", node_id="3", class_type="KSampler",
        exception_type="ValueError", traceback=["line 1\n", "line 2\n"],
        node_errors={"3": ["bad"]}, failure_class="permanent")), 3.0)
    done = await make_finished_job([(b"bytes", "image/png", "a.png")])
    for job_id in (queued["id"], running["id"], failed["id"], done.id):
        body = (await client.get(f"{JOBS}/{job_id}")).json()
        parsed = sdk_parse_job(body)
        assert parsed.id == job_id and parsed.urls.self == body["urls"]["self"]
    parsed_failed = sdk_parse_job((await client.get(f"{JOBS}/{failed['id']}")).json())
    assert parsed_failed.error.traceback == "line 1\nline 2\n"
    assert sdk_parse_job(queued).metadata == {"run": "1"}
    output = (await client.get(f"{JOBS}/{done.id}")).json()["outputs"][0]
    assert str(SdkOutput.model_validate(output).url) == output["url"]
    asset = (await client.get(f"/api/v2/assets/{done.id}.0")).json()
    assert SdkAsset.model_validate(asset).job_id == done.id
    listed = (await client.get(JOBS)).json()["jobs"]
    summaries = [JobSummary._from_item(item) for item in listed]
    assert {s.id for s in summaries} == {queued["id"], running["id"], failed["id"], done.id}
    assert all(s.create_time is not None for s in summaries)


async def test_failed_job_error_object(client, store):
    job = await submit(client)
    await store.apply(job["id"], t.Fail(JobError(code="node_execution_error", message="boom",
                                                 node_id="3", class_type="KSampler",
                                                 exception_type="ValueError",
                                                 failure_class="permanent")), 5.0)
    error = (await client.get(f"{JOBS}/{job['id']}")).json()["error"]
    assert error == {"code": "node_execution_error", "message": "boom", "node_id": "3",
                     "class_type": "KSampler", "traceback": None,
                     "details": {"exception_type": "ValueError", "node_errors": None,
                                 "failure_class": "permanent"}}


async def test_unknown_job_is_404_in_the_contract_body(client):
    for path in (f"{JOBS}/nope", f"{JOBS}/nope/workflow", f"{JOBS}/nope/events",
                 f"{JOBS}/nope/preview"):
        response = await client.get(path)
        assert response.status_code == 404 and error_code(response) == "not_found", path
    response = await client.post(f"{JOBS}/nope/cancel")
    assert response.status_code == 404 and error_code(response) == "not_found"


async def test_unknown_route_and_wrong_method_use_the_contract_body(client):
    response = await client.get("/api/v2/nothing-here")
    assert response.status_code == 404 and error_code(response) == "not_found"
    response = await client.delete(JOBS)
    assert response.status_code == 405 and error_code(response) == "method_not_allowed"


async def test_workflow_route(client):
    job = await submit(client)
    response = await client.get(f"{JOBS}/{job['id']}/workflow")
    assert response.json() == {"workflow": WORKFLOW, "format": "api"}


async def test_cancel_queued_job_is_canceled_at_once(client, api, store):
    asked = []

    async def cancel_running(job):
        asked.append(job.id)

    api.services.cancel_running = cancel_running
    job = await submit(client)
    first = (await client.post(f"{JOBS}/{job['id']}/cancel")).json()
    again = await client.post(f"{JOBS}/{job['id']}/cancel")
    assert first["status"] == "canceled" and first["completed_at"] is not None
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    assert asked == []


async def test_cancel_running_job_is_canceling_and_asks_its_worker(client, api, store):
    asked = []

    async def cancel_running(job):
        asked.append(job.status)

    api.services.cancel_running = cancel_running
    job = await submit(client)
    await store.apply(job["id"], t.Dispatch(attempt()), 1.0)
    response = await client.post(f"{JOBS}/{job['id']}/cancel")
    assert response.json()["status"] == "canceling"
    assert (await client.post(f"{JOBS}/{job['id']}/cancel")).json()["status"] == "canceling"
    assert asked == [JobStatus.CANCELING, JobStatus.CANCELING]


async def test_cancel_terminal_job_returns_it_unchanged(client, make_finished_job):
    done = await make_finished_job([(b"x", "image/png", "a.png")])
    before = (await client.get(f"{JOBS}/{done.id}")).json()
    response = await client.post(f"{JOBS}/{done.id}/cancel")
    assert response.status_code == 200 and response.json() == before


async def create_at(store, created_at: float, **fields) -> Job:
    job = Job(id=str(uuid4()), status=JobStatus.QUEUED, created_at=created_at, **fields)
    return await store.create(job, WORKFLOW)


async def test_list_filters_by_status_type_and_metadata(client, store):
    a = await create_at(store, 100.0, metadata={"team": "x", "run": "1"}, owner="ann")
    b = await create_at(store, 101.0, metadata={"team": "y"}, type="video", owner="bob")
    c = await create_at(store, 102.0, metadata={"team": "x", "run": "2"})
    await store.apply(c.id, t.RequestCancel(), 103.0)

    async def ids(query: str) -> list[str]:
        response = await client.get(f"{JOBS}?{query}")
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["jobs"]]

    assert await ids("") == [c.id, b.id, a.id]
    assert await ids("status=queued") == [b.id, a.id]
    assert await ids("status=canceled,succeeded") == [c.id]
    assert await ids("status=canceled&status=queued") == [c.id, b.id, a.id]  # repeated: each counts
    assert await ids("type=video") == [b.id]
    assert await ids("metadata[team]=x") == [c.id, a.id]
    assert await ids("metadata[team]=x&metadata[run]=1") == [a.id]
    assert await ids("metadata[team]=x&status=queued") == [a.id]
    assert await ids("owner=bob") == [b.id]
    assert await ids("owner=ann&status=queued") == [a.id]
    assert await ids("owner=nobody") == []


async def test_list_cursor_walks_every_job_once_even_with_equal_created_at(client, store):
    made = [await create_at(store, 200.0 + (i // 3)) for i in range(10)]  # triples share a time
    seen, cursor, pages = [], None, 0
    while True:
        query = "limit=4" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(f"{JOBS}?{query}")).json()
        seen += [j["id"] for j in page["jobs"]]
        pages += 1
        assert page["truncated"] == (page["next_cursor"] is not None)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(j.id for j in made) and len(seen) == 10
    assert pages == 3


async def test_list_cursor_with_metadata_filter(client, store):
    wanted = [await create_at(store, 300.0 + i, metadata={"k": "v"}) for i in range(0, 12, 2)]
    for i in range(1, 12, 2):
        await create_at(store, 300.0 + i, metadata={"k": "other"})
    first = (await client.get(f"{JOBS}?limit=4&metadata[k]=v")).json()
    second = (await client.get(f"{JOBS}?limit=4&metadata[k]=v&cursor={first['next_cursor']}")).json()
    got = [j["id"] for j in first["jobs"] + second["jobs"]]
    assert got == [j.id for j in reversed(wanted)] and second["next_cursor"] is None


@pytest.mark.parametrize("query, status, code", [
    ("limit=0", 422, "invalid_request"),
    ("limit=101", 422, "invalid_request"),
    ("limit=abc", 422, "invalid_request"),
    ("status=bogus", 400, "invalid_request"),
    ("cursor=!!notacursor", 400, "invalid_cursor"),
    ("metadata[a]=1&metadata[b]=2&metadata[c]=3&metadata[d]=4", 400, "invalid_metadata_filter"),
    ("metadata[a b]=1", 400, "invalid_metadata_filter"),
    ("metadata[]=1", 400, "invalid_metadata_filter"),
    (f"metadata[{'k' * 41}]=1", 400, "invalid_metadata_filter"),
])
async def test_list_refuses_bad_queries(client, query, status, code):
    response = await client.get(f"{JOBS}?{query}")
    assert response.status_code == status and error_code(response) == code


async def test_preview_route(client, event_bus):
    job = await submit(client)
    assert (await client.get(f"{JOBS}/{job['id']}/preview")).status_code == 404
    await event_bus.set_preview(job["id"], "image/jpeg", b"\xff\xd8jpeg")
    response = await client.get(f"{JOBS}/{job['id']}/preview")
    assert response.status_code == 200 and response.content == b"\xff\xd8jpeg"
    assert response.headers["content-type"] == "image/jpeg"


async def test_a_trailing_slash_is_redirected_relatively_and_an_unknown_path_is_a_404(client):
    """Behind a proxy the server's own address is not the client's: the redirect names only the
    path (and keeps the query), so it stays on whatever host and scheme the client used."""
    listing = await client.get(f"{JOBS}/?limit=1&status=queued")
    assert listing.status_code == 307 and listing.headers["location"] == f"{JOBS}?limit=1&status=queued"
    post = await client.post(f"{JOBS}/", json={"workflow": WORKFLOW})
    assert post.status_code == 307 and post.headers["location"] == JOBS
    followed = await client.post(f"{JOBS}/", json={"workflow": WORKFLOW}, follow_redirects=True)
    assert followed.status_code == 201, "a client that follows it submits the job"
    for path in ("/api/v2/nothing/", "/api/v2/nothing", f"{JOBS}//"):
        missing = await client.get(path)
        assert missing.status_code == 404 and error_code(missing) == "not_found", path
