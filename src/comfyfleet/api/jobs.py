"""Job routes: submit, read, list, workflow, cancel, latest preview.

Submission order: validate everything first (no key is claimed for a request that fails
validation), then ``store.create`` claims the idempotency key and records the job atomically,
then ``enqueue``. If enqueueing fails the job definitely will not run: it is failed on the spot,
its key is released so the client may retry with the same key, and the answer is a 503 with
``Retry-After``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from ..domain import transitions as t
from ..domain.job import DEFAULT_JOB_TYPE, Job, JobError, JobStatus
from ..errors import ComfyFleetError, InvalidTransition, JobNotFound, ValidationFailed
from . import validation
from .access import ANONYMOUS, Caller, check_sees, get_caller, owner_of
from .context import ApiContext, JobId, get_context
from .inputs import as_sent, hold_inputs, resolve_inputs
from .listing import list_page
from .schemas import iso, new_job_id

log = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"])

ENQUEUE_RETRY_AFTER_S = 5


@router.post("/jobs", status_code=201)
async def submit_job(request: Request, ctx: ApiContext = Depends(get_context),
                     caller: Caller = Depends(get_caller)) -> JSONResponse:
    settings, services = ctx.settings, ctx.services
    validation.check_declared_size(request.headers.get("content-length"),
                                   settings.max_workflow_bytes)
    body = validation.parse_json(await validation.read_body(request, settings.max_workflow_bytes))
    submission = validation.submission(body, max_nodes=settings.max_workflow_nodes)
    key = validation.idempotency_key(request.headers.get("idempotency-key"))
    job_type = submission.metadata.get("type") or DEFAULT_JOB_TYPE
    if job_type not in settings.job_types:
        raise ValidationFailed(f"unknown job type {job_type!r}", code="metadata_invalid",
                               details={"field": "metadata", "key": "type",
                                        "allowed": list(settings.job_types)})
    if services.check_node_classes is not None:
        await services.check_node_classes(submission.workflow, job_type, submission.metadata)
    inputs = await resolve_inputs(ctx, submission.workflow, caller)
    if submission.partner_key is not None and services.partner_keys is None:
        raise ValidationFailed("this server cannot hand partner keys to its workers",
                               code="invalid_request", details={"field": "extra_data"})

    owner = caller.owner_for(submission.metadata.get("user_id"), ANONYMOUS)
    defaults = services.job_defaults(job_type)
    now = services.clock()
    job = Job(id=new_job_id(), status=JobStatus.QUEUED, created_at=now, updated_at=now,
              type=job_type, owner=owner, metadata=submission.metadata,
              priority=submission.priority, idempotency_key=key,
              max_attempts=int(defaults.get("max_attempts", 3)),
              deadline_at=now + float(defaults.get("deadline_s", 600.0)),
              has_partner_key=submission.partner_key is not None)
    await hold_inputs(ctx, inputs, job.deadline_at)  # before the job exists: its blobs stay
    limit = caller.max_active or settings.max_active_per_owner
    # A key is the caller's, whatever owner the job names: on an open server every caller is
    # one anonymous caller, so a key is unique server-wide, not per claimed metadata.user_id.
    key_scope = owner_of(caller)
    job = await services.store.create(job, submission.workflow, max_active=limit, key_scope=key_scope)
    try:
        if submission.partner_key is not None:  # in this process's memory only, till the deadline
            await services.partner_keys.hold(job.id, submission.partner_key, job.deadline_at)
        await services.enqueue(job)
    except Exception:
        log.exception("job %s was stored but could not be enqueued", job.id)
        if services.partner_keys is not None:
            services.partner_keys.drop(job.id)
        await _undo_submission(ctx, job, key_scope)
        raise ValidationFailed("the work queue is unavailable; retry shortly",
                               code="queue_unavailable", status_code=503,
                               headers={"Retry-After": str(ENQUEUE_RETRY_AFTER_S)}) from None
    return JSONResponse(await ctx.render_job(job), status_code=201)


@router.get("/jobs")
async def list_jobs(request: Request, ctx: ApiContext = Depends(get_context),
                    caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    page = await list_page(ctx.services.store, request.query_params,
                           only_owner=None if caller.admin else caller.owner)
    jobs = []
    for job in page.jobs:
        item = await ctx.render_job(job)
        item["create_time"] = iso(job.created_at)  # what comfy-sdk's JobSummary reads
        item["update_time"] = iso(job.updated_at or job.created_at)
        jobs.append(item)
    return {"jobs": jobs, "next_cursor": page.next_cursor, "truncated": page.next_cursor is not None}


@router.get("/jobs/{job_id}")
async def get_job(job_id: JobId, ctx: ApiContext = Depends(get_context),
                  caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    return await ctx.render_job(check_sees(caller, await ctx.services.store.get(job_id)))


@router.get("/jobs/{job_id}/workflow")
async def get_job_workflow(job_id: JobId, ctx: ApiContext = Depends(get_context),
                           caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    check_sees(caller, await ctx.services.store.get(job_id))
    return {"workflow": as_sent(await ctx.services.store.workflow(job_id)), "format": "api"}


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: JobId, ctx: ApiContext = Depends(get_context),
                     caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    """Queued: canceled now. Running: canceling, and its worker is asked to interrupt.
    Canceling or terminal: returned as it is (idempotent)."""
    store, services = ctx.services.store, ctx.services
    job = check_sees(caller, await store.get(job_id))
    if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        try:
            job = await store.apply(job_id, t.RequestCancel(), services.clock())
        except InvalidTransition:
            job = await store.get(job_id)  # it finished meanwhile: report where it ended
    if job.status is JobStatus.CANCELING:
        try:
            await services.cancel_running(job)
        except Exception:  # the request is recorded; the worker also watches the status
            log.exception("job %s: asking its worker to interrupt failed", job_id)
    return await ctx.render_job(job)


@router.get("/jobs/{job_id}/preview")
async def get_preview(job_id: JobId, ctx: ApiContext = Depends(get_context),
                      caller: Caller = Depends(get_caller)) -> Response:
    check_sees(caller, await ctx.services.store.get(job_id))
    preview = await ctx.services.events.get_preview(job_id)  # type: ignore[attr-defined]
    if preview is None:
        raise JobNotFound(f"job {job_id} has no preview")
    content_type, data, _ = preview
    return Response(content=data, media_type=content_type,
                    headers={"Cache-Control": "no-store"})


# -- helpers ---------------------------------------------------------------------------------
async def _undo_submission(ctx: ApiContext, job: Job, key_scope: str) -> None:
    store, services = ctx.services.store, ctx.services
    try:
        await store.apply(job.id, t.Fail(JobError(code="enqueue_failed",
                                                  message="the job could not be queued",
                                                  failure_class="transient")), services.clock())
        if job.idempotency_key:
            await store.release_idempotency(key_scope, job.idempotency_key)  # type: ignore[attr-defined]
    except ComfyFleetError:
        log.exception("job %s: could not undo a submission that failed to enqueue", job.id)
