"""POST /api/v2/jobs: creation, every validation refusal, and single-use idempotency keys."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_helpers import WORKFLOW, error_code

from comfyfleet.store.partner_keys import PartnerKeys
from comfyfleet.domain.job import JobStatus

JOBS = "/api/v2/jobs"


async def test_submit_creates_a_queued_job_and_enqueues_it(client, enqueued, store):
    body = {"workflow": WORKFLOW, "metadata": {"type": "video", "user_id": "u1", "run": "7"},
            "priority": 5}
    response = await client.post(JOBS, json=body)
    assert response.status_code == 201
    job = response.json()
    assert job["status"] == "queued" and job["queue_position"] == 0
    assert job["type"] == "video" and job["priority"] == 5 and job["metadata"]["run"] == "7"
    assert [j.id for j in enqueued] == [job["id"]]
    stored = await store.get(job["id"])
    assert stored.owner == "u1" and stored.status is JobStatus.QUEUED
    assert stored.deadline_at == pytest.approx(stored.created_at + 600)
    assert stored.max_attempts == 3
    assert await store.workflow(job["id"]) == WORKFLOW


async def test_partner_key_is_held_in_memory_handed_to_an_asker_and_never_stored(client, redis, keys,
                                                                                  partner_keys):
    secret = "partner-secret-123"
    response = await client.post(JOBS, json={"workflow": WORKFLOW,
                                             "extra_data": {"api_key_comfy_org": secret}})
    assert response.status_code == 201
    job_id = response.json()["id"]
    assert job_id in partner_keys
    asker = PartnerKeys(redis, keys)
    try:
        assert await asker.ask(job_id) == secret
    finally:
        await asker.close()
    for key in await redis.keys("*"):
        kind = await redis.type(key)
        if kind == "string":
            assert secret not in (await redis.get(key) or "")
        elif kind == "hash":
            assert secret not in json.dumps(await redis.hgetall(key))
        elif kind == "stream":
            assert secret not in json.dumps(await redis.xrange(key))


async def test_body_that_is_not_json_is_400(client):
    response = await client.post(JOBS, content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400 and error_code(response) == "invalid_request"


@pytest.mark.parametrize("body", [[], "x", {"metadata": {}}, {"workflow": []},
                                  {"workflow": "x"}])
async def test_not_an_object_or_no_workflow_is_422(client, body):
    response = await client.post(JOBS, json=body)
    assert response.status_code == 422 and error_code(response) == "invalid_request"


async def test_ui_format_export_is_refused(client):
    ui = {"last_node_id": 9, "last_link_id": 1, "nodes": [{"id": 3, "type": "KSampler"}],
          "links": [[1, 4, 0, 3, 0, "MODEL"]]}
    response = await client.post(JOBS, json={"workflow": ui})
    assert response.status_code == 422 and error_code(response) == "workflow_format_ui"


@pytest.mark.parametrize("node, field", [
    ("not a node", "node"),
    ({"inputs": {}}, "class_type"),
    ({"class_type": "KSampler", "inputs": []}, "inputs"),
    ({"class_type": "KSampler", "inputs": {"model": ["99", 0]}}, "model"),
])
async def test_bad_node_is_invalid_workflow_naming_the_node(client, node, field):
    response = await client.post(JOBS, json={"workflow": {**WORKFLOW, "12": node}})
    assert response.status_code == 422 and error_code(response) == "invalid_workflow"
    details = response.json()["error"]["details"]
    assert list(details["node_errors"]) == ["12"]
    assert details["node_errors"]["12"][0]["field"] == field
    assert "12" in response.json()["error"]["message"]


@pytest.mark.parametrize("settings_overrides", [{"max_workflow_bytes": 2000}])
async def test_too_big_by_content_length_is_413(client, settings_overrides):
    big = json.dumps({"workflow": {**WORKFLOW, "x": {"class_type": "N" * 3000, "inputs": {}}}})
    response = await client.post(JOBS, content=big.encode(),
                                 headers={"content-type": "application/json"})
    assert response.status_code == 413 and error_code(response) == "payload_too_large"


@pytest.mark.parametrize("settings_overrides", [{"max_workflow_bytes": 2000}])
async def test_too_big_by_actual_body_is_413_whatever_the_header_says(client, settings_overrides):
    big = json.dumps({"workflow": {**WORKFLOW, "x": {"class_type": "N" * 3000, "inputs": {}}}})

    async def chunks():  # streamed: no Content-Length, chunked transfer
        data = big.encode()
        for i in range(0, len(data), 500):
            yield data[i:i + 500]

    response = await client.post(JOBS, content=chunks(),
                                 headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and error_code(response) == "payload_too_large"


@pytest.mark.parametrize("links, cycle", [
    ({"1": "1"}, ["1", "1"]),
    ({"1": "3", "2": "1", "3": "2"}, ["1", "3", "2", "1"]),
])
async def test_links_that_loop_are_an_invalid_workflow_at_once(client, enqueued, links, cycle):
    """ComfyUI cannot order such a graph: accepted, the job never ended."""
    workflow = {node: {"class_type": "Pass", "inputs": {"x": [upstream, 0]}} for node, upstream in links.items()}
    response = await client.post(JOBS, json={"workflow": workflow})
    assert response.status_code == 422 and error_code(response) == "invalid_workflow", response.text
    assert response.json()["error"]["details"]["cycle"] == cycle
    assert enqueued == []


@pytest.mark.parametrize("settings_overrides", [{"max_workflow_nodes": 3}])
async def test_too_many_nodes_is_invalid_workflow(client, settings_overrides):
    workflow = {**WORKFLOW, "10": {"class_type": "Note", "inputs": {}}}
    response = await client.post(JOBS, json={"workflow": workflow})
    assert response.status_code == 422 and error_code(response) == "invalid_workflow"


async def test_empty_workflow_is_invalid_workflow(client):
    response = await client.post(JOBS, json={"workflow": {}})
    assert response.status_code == 422 and error_code(response) == "invalid_workflow"


@pytest.mark.parametrize("metadata", [
    {f"k{i}": "v" for i in range(17)},
    {"": "v"},
    {"k" * 41: "v"},
    {"bad key!": "v"},
    {"k": "é" * 129},  # 258 bytes
    {"k": 3},
    "a string",
    {"type": "no_such_type"},
])
async def test_metadata_limits(client, metadata):
    response = await client.post(JOBS, json={"workflow": WORKFLOW, "metadata": metadata})
    assert response.status_code == 422 and error_code(response) == "metadata_invalid"


async def test_metadata_at_the_limits_is_accepted(client):
    metadata = {f"k{i:02d}": "v" for i in range(15)} | {"k" * 40: "x" * 256}
    response = await client.post(JOBS, json={"workflow": WORKFLOW, "metadata": metadata})
    assert response.status_code == 201


@pytest.mark.parametrize("extra", [
    {"webhook_url": "https://hook.example"},
    {"inputs": {}},
    {"priority": 1_000_001},
    {"priority": True},
    {"priority": 1.5},
    {"extra_data": {"other": "x"}},
    {"extra_data": {"api_key_comfy_org": 5}},
    {"extra_data": "x"},
])
async def test_reserved_and_malformed_fields_are_422(client, enqueued, extra: dict[str, Any]):
    response = await client.post(JOBS, json={"workflow": WORKFLOW, **extra})
    assert response.status_code == 422 and error_code(response) == "invalid_request"
    assert enqueued == []


async def test_unknown_asset_reference_is_missing_asset(client):
    ref = {"__type": "core/ASSET", "info": {"id": "9f8a1c0d-2b3e-4f56-8a7b-1c2d3e4f5a6b"}}
    workflow = {**WORKFLOW, "5": {"class_type": "LoadImage", "inputs": {"image": ref}}}
    response = await client.post(JOBS, json={"workflow": workflow})
    assert response.status_code == 422 and error_code(response) == "missing_asset"
    assert response.json()["error"]["details"]["node_id"] == "5"


async def test_malformed_asset_reference_is_missing_asset(client):
    workflow = {**WORKFLOW, "5": {"class_type": "LoadImage",
                                  "inputs": {"image": {"__type": "core/ASSET", "info": {}}}}}
    response = await client.post(JOBS, json={"workflow": workflow})
    assert response.status_code == 422 and error_code(response) == "missing_asset"


async def test_reference_to_a_known_output_asset_is_accepted(client, make_finished_job):
    done = await make_finished_job([(b"png-bytes", "image/png", "out.png")])
    ref = {"__type": "core/ASSET", "info": {"id": done.outputs[0].id}}
    workflow = {**WORKFLOW, "5": {"class_type": "LoadImage", "inputs": {"image": ref}}}
    response = await client.post(JOBS, json={"workflow": workflow})
    assert response.status_code == 201


async def test_idempotency_key_is_single_use(client, enqueued):
    headers = {"Idempotency-Key": "key-1"}
    first = await client.post(JOBS, json={"workflow": WORKFLOW}, headers=headers)
    again = await client.post(JOBS, json={"workflow": WORKFLOW}, headers=headers)
    other_body = await client.post(JOBS, json={"workflow": WORKFLOW, "priority": 2},
                                   headers=headers)
    assert first.status_code == 201
    assert again.status_code == 422 and error_code(again) == "idempotency_key_reuse"
    assert other_body.status_code == 422 and error_code(other_body) == "idempotency_key_reuse"
    assert len(enqueued) == 1


async def test_on_an_open_server_a_key_is_single_use_whatever_user_id_the_job_names(client, enqueued):
    headers = {"Idempotency-Key": "key-4"}
    first = await client.post(JOBS, json={"workflow": WORKFLOW, "metadata": {"user_id": "a"}},
                              headers=headers)
    refused = [await client.post(JOBS, json={"workflow": WORKFLOW, **extra}, headers=headers)
               for extra in ({"metadata": {"user_id": "b"}}, {})]
    assert first.status_code == 201
    assert [(r.status_code, error_code(r)) for r in refused] == [(422, "idempotency_key_reuse")] * 2
    assert len(enqueued) == 1


async def test_key_is_not_claimed_by_a_request_that_fails_validation(client):
    headers = {"Idempotency-Key": "key-2"}
    refused = await client.post(JOBS, json={"workflow": {}}, headers=headers)
    accepted = await client.post(JOBS, json={"workflow": WORKFLOW}, headers=headers)
    assert refused.status_code == 422 and accepted.status_code == 201


async def test_key_is_released_when_enqueueing_fails(client, api, store, enqueued):
    async def broken_enqueue(job):
        raise ConnectionError("queue down")

    api.services.enqueue = broken_enqueue
    headers = {"Idempotency-Key": "key-3"}
    refused = await client.post(JOBS, json={"workflow": WORKFLOW, "metadata": {"user_id": "u"}},
                                headers=headers)
    assert refused.status_code == 503 and error_code(refused) == "queue_unavailable"
    assert refused.headers["retry-after"] == "5"
    failed = await store.list(statuses=[JobStatus.FAILED])
    assert [j.error.code for j in failed] == ["enqueue_failed"]

    async def enqueue(job):
        enqueued.append(job)

    api.services.enqueue = enqueue
    retried = await client.post(JOBS, json={"workflow": WORKFLOW}, headers=headers)
    assert retried.status_code == 201


@pytest.mark.parametrize("key", ["", "k" * 256, "tab\there", "ключ"])
async def test_malformed_idempotency_key_is_422(client, key):
    response = await client.post(JOBS, json={"workflow": WORKFLOW},
                                 headers={"Idempotency-Key": key.encode("utf-8")})
    assert response.status_code == 422 and error_code(response) == "invalid_request"
