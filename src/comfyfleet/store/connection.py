"""The Redis client comfyfleet uses, and the one place redis errors become ``StoreError``.

URLs: redis://, rediss:// (TLS), unix://, and valkey:// / valkeys:// as their synonyms
(``client_url``, which whatever hands a URL to another client applies too). A URL the client
refuses is a ``StoreError`` that names it without its password.

Clients are made with ``decode_responses=True``: every value we store is text (JSON, numbers,
base64 previews), so the store reads ``str`` and never decodes by hand.

Timeouts: connect 5 s, every read 10 s (``socket_timeout``), so each network await in ``store/``
is bounded by the client itself; idle pooled connections are pinged after 30 s
(``health_check_interval``). Connection errors (refused, reset: a Redis restarting) are retried
twice with a short jittered backoff; the Lua scripts recognise a repeat of a write that already
landed. A read timeout is not retried: the server was given the whole timeout already, and
retrying (each retry reconnects and times out on the handshake too) turned one silent Redis into
minutes of waiting per command instead of ``read_timeout_s``.

Sends are bounded by ``asyncio.timeout`` (``bounded_sends``), not by redis-py's ``asyncio.wait_for``:
on Python 3.11 that runs each send as a task of its own and, when the send completes as the
caller is cancelled, returns normally and drops the cancel. A task cancelled in a Redis call
then went on running: a stopped worker's sweep slept its period out, a job's heartbeat loop could
outlive its job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from ..errors import StoreError
from ..redact import without_password

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
HEALTH_CHECK_INTERVAL_S = 30
MAX_CONNECTIONS = 200


SCHEMES = {"valkey": "redis", "valkeys": "rediss"}  # what the settings accept, as redis-py names it


def client_url(url: str) -> str:
    """``url`` in a scheme redis-py knows: ``valkey://`` is ``redis://``, ``valkeys://`` is
    ``rediss://`` (TLS); any other is returned as it is."""
    scheme, colon, rest = url.partition(":")
    return f"{SCHEMES[scheme.lower()]}{colon}{rest}" if colon and scheme.lower() in SCHEMES else url


def connect(url: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
            read_timeout_s: float = READ_TIMEOUT_S,
            max_connections: int = MAX_CONNECTIONS) -> aioredis.Redis:
    """Return a client for ``url`` (redis://, rediss://, unix://); no I/O happens here.

    A blocking pool of at most ``max_connections``: a burst of concurrent commands waits for a
    connection (bounded by ``read_timeout_s``) instead of failing with "Too many connections",
    so thousands of concurrent jobs cannot exhaust the server's client limit."""
    try:
        pool = aioredis.BlockingConnectionPool.from_url(
            client_url(url),
            max_connections=max_connections,
            timeout=read_timeout_s,
            decode_responses=True,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=read_timeout_s,
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2,
                        supported_errors=(rex.ConnectionError,)),
        )
        bounded_sends(pool)
        return aioredis.Redis.from_pool(pool)
    except ValueError as exc:
        raise StoreError(f"invalid Redis URL {without_password(url)!r}: {exc}") from exc


class _BoundedSend:
    """redis-py's ``send_packed_command``, with the send bounded by ``asyncio.timeout``."""

    async def send_packed_command(self, command: bytes | str | Iterable[bytes],  # type: ignore[override]
                                  check_health: bool = True) -> None:
        if not self.is_connected:  # type: ignore[attr-defined]
            await self.connect_check_health(check_health=False)  # type: ignore[attr-defined]
        if check_health:
            await self.check_health()  # type: ignore[attr-defined]
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            async with asyncio.timeout(self.socket_timeout or None):  # type: ignore[attr-defined]
                self._writer.writelines(command)  # type: ignore[attr-defined]
                await self._writer.drain()  # type: ignore[attr-defined]
        except TimeoutError:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise rex.TimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise rex.ConnectionError(f"Error {exc.errno or 'UNKNOWN'} while writing to socket. "
                                      f"{exc.strerror or exc}.") from exc
        except BaseException:  # a send cut short leaves the connection unusable
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise


class BoundedSendConnection(_BoundedSend, aioredis.Connection):
    pass


class BoundedSendSSLConnection(_BoundedSend, aioredis.SSLConnection):
    pass


class BoundedSendUnixConnection(_BoundedSend, aioredis.UnixDomainSocketConnection):
    pass


_BOUNDED = {aioredis.Connection: BoundedSendConnection, aioredis.SSLConnection: BoundedSendSSLConnection,
            aioredis.UnixDomainSocketConnection: BoundedSendUnixConnection}


def bounded_sends(pool: aioredis.ConnectionPool) -> None:
    """Make the pool's connections bound their sends with ``asyncio.timeout`` (see the module's
    notes). Call before the pool makes its first connection."""
    pool.connection_class = _BOUNDED.get(pool.connection_class, pool.connection_class)


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
