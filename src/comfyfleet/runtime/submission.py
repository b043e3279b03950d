"""Sending one attempt's prompt: its inputs staged, the claim asked last, ``POST /prompt``, and
what the answer means. Refused (a 4xx, 429, 503, a connection never made): a failure. Accepted
with ``node_errors`` (ComfyUI queued only the valid outputs): the prompt is stopped and the job
refused. No answer, or one ComfyUI does not give after refusing (a proxy's 500, 502 or 504, a
body that is not JSON): looked up in ``/queue`` and ``/history``, never sent again blind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..comfy.client import ComfyClient
from ..domain.failures import Failure, FailureKind
from ..domain.job import Job
from ..errors import BackendError, PromptRejected
from ..ports import BlobStore
from ..store.claims import ClaimLost
from .failure_of import answer_may_be_lost, failure_of_error
from .following import stop_prompt
from .reconcile import Where, lookup
from .staging import InputMissing, stage_inputs, submit_staged


@dataclass(frozen=True, slots=True)
class Sent:
    failure: Failure | None = None  # not accepted, and why
    unsure: bool = False  # the answer was lost and the lookup could not be answered either


async def send_prompt(job: Job, client: ComfyClient, blobs: BlobStore, workflow: dict, *,
                      fence, partner_key: str | None) -> Sent:  # type: ignore[no-untyped-def]
    """Stage, ask ``fence`` (the claim), POST. Raises ``ClaimLost`` when another runner owns
    the job: asked last thing before the POST, since staging may upload for minutes."""
    current = job.current
    assert current is not None
    extra_data: dict[str, Any] = {"comfyfleet_job": job.id, "comfyfleet_attempt": current.number}
    if partner_key is not None:
        extra_data["api_key_comfy_org"] = partner_key
    try:
        prompt = await stage_inputs(client, blobs, workflow)
    except InputMissing as exc:
        return Sent(Failure(FailureKind.INVALID_INPUT, f"job {job.id}: {exc}"))
    except BackendError as exc:
        return Sent(failure_of_error(exc))
    if fence is not None and not await fence():
        raise ClaimLost(f"job {job.id}: another runner owns it now; not submitting")
    try:
        accepted = await submit_staged(client, blobs, workflow, prompt, prompt_id=current.prompt_id,
                                       client_id=current.client_id, extra_data=extra_data)
    except InputMissing as exc:
        return Sent(Failure(FailureKind.INVALID_INPUT, f"job {job.id}: {exc}"))
    except PromptRejected as exc:
        node_id, node = next(iter((exc.node_errors or {}).items()), (None, None))
        return Sent(Failure(FailureKind.PROMPT_REJECTED, str(exc), status_code=400,
                            exception_type=exc.error_type, node_errors=exc.node_errors, node_id=node_id,
                            node_type=node.get("class_type") if isinstance(node, dict) else None))
    except BackendError as exc:
        if not answer_may_be_lost(exc):
            return Sent(failure_of_error(exc))
        state = await lookup(client, current.prompt_id)
        if state.where is Where.ABSENT:
            return Sent(failure_of_error(exc))
        return Sent(unsure=state.where is Where.UNREACHABLE)
    if accepted.node_errors:
        return Sent(await refuse_partial(client, current.prompt_id, accepted.node_errors))
    return Sent()


async def refuse_partial(client: ComfyClient, prompt_id: str, node_errors: dict[str, Any]) -> Failure:
    """ComfyUI queued the prompt with only its valid outputs (200 with ``node_errors``): it is
    stopped, and the job fails as if refused, rather than succeeding short of outputs."""
    await stop_prompt(client, prompt_id)
    node_id, node = next(iter(node_errors.items()))
    first = node.get("errors") if isinstance(node, dict) else None
    first = first[0] if isinstance(first, list) and first and isinstance(first[0], dict) else {}
    reason = first.get("message") or first.get("type") or "invalid"
    more = f" (and {len(node_errors) - 1} more node(s))" if len(node_errors) > 1 else ""
    return Failure(FailureKind.PROMPT_REJECTED,
                   f"{client.name} accepted only part of the prompt: node {node_id}: {reason}{more}",
                   exception_type="prompt_outputs_failed_validation", node_errors=node_errors,
                   node_id=node_id, node_type=node.get("class_type") if isinstance(node, dict) else None)
