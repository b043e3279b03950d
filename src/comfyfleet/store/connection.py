"""The Redis client comfyfleet uses, and the one place redis errors become ``StoreError``.

Clients are made with ``decode_responses=True``: every value we store is text (JSON, numbers,
base64 previews), so the store reads ``str`` and never decodes by hand.

Timeouts: connect 5 s, every read 10 s (``socket_timeout``), so each network await in ``store/``
is bounded by the client itself; idle pooled connections are pinged after 30 s
(``health_check_interval``). Connection errors (refused, reset: a Redis restarting) are retried
twice with a short jittered backoff; the Lua scripts recognise a repeat of a write that already
landed. A read timeout is not retried: the server was given the whole timeout already, and
retrying (each retry reconnects and times out on the handshake too) turned one silent Redis into
minutes of waiting per command instead of ``read_timeout_s``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from ..errors import StoreError

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
HEALTH_CHECK_INTERVAL_S = 30
MAX_CONNECTIONS = 200


def connect(url: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
            read_timeout_s: float = READ_TIMEOUT_S,
            max_connections: int = MAX_CONNECTIONS) -> aioredis.Redis:
    """Return a client for ``url`` (redis://, rediss://, unix://); no I/O happens here.

    A blocking pool of at most ``max_connections``: a burst of concurrent commands waits for a
    connection (bounded by ``read_timeout_s``) instead of failing with "Too many connections",
    so thousands of concurrent jobs cannot exhaust the server's client limit."""
    try:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=read_timeout_s,
            decode_responses=True,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=read_timeout_s,
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2,
                        supported_errors=(rex.ConnectionError,)),
        )
        return aioredis.Redis.from_pool(pool)
    except ValueError as exc:
        raise StoreError(f"invalid Redis URL {url!r}: {exc}") from exc


def where(client: aioredis.Redis) -> str:
    """``host:port`` (or the socket path) of a client, for error messages."""
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


@contextmanager
def translated(client: aioredis.Redis, doing: str) -> Iterator[None]:
    """Turn any redis (or socket) error raised inside into a ``StoreError`` naming the server."""
    try:
        yield
    except StoreError:
        raise
    except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
        raise StoreError(f"cannot reach Redis at {where(client)} ({doing}): {exc}") from exc
    except rex.ResponseError as exc:
        raise StoreError(f"Redis at {where(client)} refused {doing}: {exc}") from exc
    except rex.RedisError as exc:
        raise StoreError(f"Redis at {where(client)} failed {doing}: {exc}") from exc
