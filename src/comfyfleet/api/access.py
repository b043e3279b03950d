"""Who is calling: bearer API keys mapped to an owner and a role.

Without a key ring (no keys file configured) the server is open, as a self-hosted ComfyUI API is
by default: every caller is trusted and a job's owner comes from ``metadata.user_id``. With one,
every route but ``/health`` needs ``Authorization: Bearer <key>`` (401 ``unauthorized``
otherwise). A user's jobs are the ones submitted with a key of the same owner; anyone else's job
answers 404, as if it did not exist. The fleet routes, ``/stats`` and ``/metrics`` need an admin
key (403 ``forbidden``). What stays open after one request (an event stream, the live feed) asks
``still_holds`` at least every ``KEY_RECHECK_S`` and before each message, and ends once its key
was revoked or given another owner or role.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, Request
from starlette.exceptions import HTTPException

from ..apikeys import KeyHolder
from ..domain.job import Job
from ..errors import JobNotFound
from .context import ApiContext, get_context

KEY_RECHECK_S = 1.0  # an open stream or feed looks at its key at least this often
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="comfyfleet"'}
ANONYMOUS = "anonymous"  # the owner of what an open server's callers submit without naming one


@dataclass(frozen=True, slots=True)
class Caller:
    owner: str | None  # None: the server has no keys, so the caller is not anyone in particular
    admin: bool
    max_active: int | None = None  # the key's own limit of queued/running jobs (None: the server's)

    def sees(self, job: Job) -> bool:
        return self.admin or job.owner == self.owner

    def owner_for(self, claimed: str | None, default: str) -> str:
        """The owner of a job this caller submits: the key's owner; on an open server the
        ``metadata.user_id`` the caller claims."""
        return self.owner if self.owner is not None else (claimed or default)


OPEN = Caller(owner=None, admin=True)


def owner_of(caller: Caller) -> str:
    """Whose an upload of this caller's is: the key's owner, else ``ANONYMOUS``."""
    return caller.owner_for(None, ANONYMOUS)


def caller_for(holder: KeyHolder) -> Caller:
    return Caller(owner=holder.owner, admin=holder.admin, max_active=holder.max_active)


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def identify(ctx: ApiContext, token: str | None) -> Caller | None:
    """The caller holding ``token``; ``None`` if the server has keys and this is not one."""
    lookup = ctx.services.keys
    if lookup is None:
        return OPEN
    holder = lookup(token) if token else None
    return caller_for(holder) if holder is not None else None


def still_holds(ctx: ApiContext, token: str | None, caller: Caller) -> bool:
    """Whether ``token`` still names ``caller``: the same owner with the same role."""
    now = identify(ctx, token)
    return now is not None and (now.owner, now.admin) == (caller.owner, caller.admin)


def get_caller(request: Request, ctx: ApiContext = Depends(get_context)) -> Caller:
    """The route dependency: the caller, or a 401 for a missing or unknown key."""
    caller = identify(ctx, bearer_token(request.headers.get("authorization")))
    if caller is None:
        raise HTTPException(401, "a valid API key is required (Authorization: Bearer <key>)",
                            headers=UNAUTHORIZED_HEADERS)
    return caller


def require_admin(caller: Caller = Depends(get_caller)) -> Caller:
    if not caller.admin:
        raise HTTPException(403, "this needs an admin API key")
    return caller


def check_sees(caller: Caller, job: Job) -> Job:
    """``job`` if the caller may see it; a 404 (not a 403: ids of others' jobs stay unknown) if not."""
    if not caller.sees(job):
        raise JobNotFound(f"job {job.id} not found")
    return job
