"""Job claims: which runner owns a running job right now, as a Redis key with a lease.

A runner may touch a job (reconcile, submit, track, conclude) only while it holds the job's claim
``{p}:job:{id}:claim``. The claim's value is a token unique to one run of one worker, and it
expires ``lease_s`` after its last renewal, so a worker that dies (even by SIGKILL) loses its jobs
one lease later and a worker that stops gracefully releases them at once. Acquire is ``SET NX``,
renew and release compare the token first: two runners never both hold a job.

The worker's liveness key ``{p}:worker:{id}`` is renewed in the same round trip and carries the
worker's description (host, pid, start time, number of claims) for operators.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

import redis.asyncio as aioredis

from ..errors import ComfyFleetError
from .connection import translated
from .keys import Keys

# KEYS: claim keys; ARGV[1] lease ms, ARGV[2..] tokens in the same order. Returns lost indexes.
_RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
  else
    table.insert(lost, i)
  end
end
return lost
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Claims:
    """Claims of one deployment (``keys``) with one lease length."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, lease_s: float = 6.0,
                 owns_client: bool = False) -> None:
        """``owns_client``: ``close`` closes ``redis`` (a worker gives its claims a client of
        their own, so renewals never queue behind job traffic in a busy pool)."""
        self._redis = redis
        self._owns_client = owns_client
        self._keys = keys
        self.lease_s = lease_s
        self._lease_ms = max(1, int(lease_s * 1000))
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()

    async def acquire(self, job_id: str, token: str) -> bool:
        with translated(self._redis, f"claim of job {job_id}"):
            return bool(await self._redis.set(self._keys.claim(job_id), token, nx=True,
                                              px=self._lease_ms))

    async def acquire_many(self, tokens: Mapping[str, str]) -> set[str]:
        """Try to claim every job in ``tokens`` (job id -> token); the ids won, in one round trip."""
        ids = list(tokens)
        if not ids:
            return set()
        with translated(self._redis, "claim of jobs"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.set(self._keys.claim(job_id), tokens[job_id], nx=True, px=self._lease_ms)
                won = await pipe.execute()
        return {job_id for job_id, ok in zip(ids, won) if ok}

    async def renew(self, tokens: Mapping[str, str]) -> set[str]:
        """Extend the lease of every held claim; return the ids whose claim was lost."""
        ids = list(tokens)
        lost: set[str] = set()
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            with translated(self._redis, "renewal of claims"):
                reply = await self._renew(keys=[self._keys.claim(i) for i in chunk],
                                          args=[self._lease_ms, *(tokens[i] for i in chunk)])
            lost.update(chunk[int(index) - 1] for index in reply)
        return lost

    async def holds(self, job_id: str, token: str) -> bool:
        """True when ``token`` still holds the claim; the lease is extended as a side effect."""
        return not await self.renew({job_id: token})

    async def release(self, job_id: str, token: str) -> None:
        with translated(self._redis, f"release of the claim of job {job_id}"):
            await self._release(keys=[self._keys.claim(job_id)], args=[token])

    async def holders(self, job_ids: list[str]) -> list[str | None]:
        """The token holding each job's claim (None: unclaimed), in the order asked."""
        found: list[str | None] = []
        for start in range(0, len(job_ids), 1000):
            chunk = job_ids[start:start + 1000]
            with translated(self._redis, "read of claims"):
                found.extend(await self._redis.mget([self._keys.claim(i) for i in chunk]))
        return found

    async def beat(self, worker_id: str, description: Mapping[str, object]) -> None:
        """Refresh the worker's liveness key (same lease as the claims), and its entry in the
        set of workers (scored by when that lease ends), so finding the live ones never scans."""
        expiry_ms = int(time.time() * 1000) + self._lease_ms
        with translated(self._redis, "worker liveness"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._keys.worker(worker_id), json.dumps(dict(description)), px=self._lease_ms)
                pipe.zadd(self._keys.workers, {worker_id: expiry_ms})
                await pipe.execute()

    async def leave(self, worker_id: str) -> None:
        with translated(self._redis, "worker liveness"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._keys.worker(worker_id))
                pipe.zrem(self._keys.workers, worker_id)
                await pipe.execute()

    async def live_worker_ids(self) -> list[str]:
        """Ids of the workers whose liveness lease has not run out (one read, no descriptions)."""
        with translated(self._redis, "read of worker liveness"):
            return await self._redis.zrangebyscore(self._keys.workers, int(time.time() * 1000), "+inf")

    async def live_workers(self) -> dict[str, dict]:
        """Every worker whose liveness lease has not run out, with its description (entries of
        workers that died are dropped on the way)."""
        now_ms = int(time.time() * 1000)
        with translated(self._redis, "read of worker liveness"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(self._keys.workers, "-inf", now_ms)
                pipe.zrange(self._keys.workers, 0, -1)
                _, ids = await pipe.execute()
            values = await self._redis.mget([self._keys.worker(i) for i in ids]) if ids else []
        return {worker_id: json.loads(value) for worker_id, value in zip(ids, values) if value is not None}


class ClaimLost(ComfyFleetError):
    """This runner's claim on a job expired or was taken: it must stop touching the job."""
