"""`wait_bounded`: a timeout whose timer starts only if the awaited operation has to wait.

A WebSocket send almost always completes without suspending (the frame fits the socket
buffer), and `asyncio.timeout` would still schedule and cancel a timer for each one. Here the
deadline is armed at the first suspension, so the common case costs no timer at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Generator
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_bounded(awaitable: Awaitable[T], seconds: float) -> T:
    """`await awaitable`, raising TimeoutError once it has waited `seconds` without finishing."""
    async with asyncio.timeout(None) as timeout:
        return await _ArmOnSuspend(awaitable, timeout, seconds)


class _ArmOnSuspend:
    """Awaits `awaitable` step by step (as `yield from` would) and sets `timeout`'s deadline
    when it first suspends."""

    __slots__ = ("_awaitable", "_timeout", "_seconds")

    def __init__(self, awaitable: Awaitable[Any], timeout: asyncio.Timeout, seconds: float) -> None:
        self._awaitable = awaitable
        self._timeout = timeout
        self._seconds = seconds

    def __await__(self) -> Generator[Any, Any, Any]:
        steps = self._awaitable.__await__()
        try:
            yielded = steps.send(None)
        except StopIteration as done:
            return done.value
        self._timeout.reschedule(asyncio.get_running_loop().time() + self._seconds)
        while True:
            try:
                received = yield yielded
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as exc:  # cancellation included: the awaited operation sees it
                try:
                    yielded = steps.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = steps.send(received)
                except StopIteration as done:
                    return done.value
