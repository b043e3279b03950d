"""`wait_bounded`: a timeout whose timer starts only if the awaited operation has to wait.

A WebSocket send almost always completes without suspending (the frame fits the socket
buffer), and `asyncio.timeout` would still schedule and cancel a timer for each one. Here the
operation runs up to its first suspension first; only then is the timeout entered, and the
operation resumed under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Generator
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_bounded(awaitable: Awaitable[T], seconds: float) -> T:
    """`await awaitable`, raising TimeoutError once it has waited `seconds` without finishing."""
    steps = awaitable.__await__()
    try:
        first_wait = steps.send(None)
    except StopIteration as done:
        return done.value
    async with asyncio.timeout(seconds):
        return await _Resumed(steps, first_wait)


class _Resumed:
    """The rest of an operation already run up to its first suspension (`first_wait` is what it
    yielded there); awaiting this continues it exactly as `yield from` would."""

    __slots__ = ("_steps", "_first_wait")

    def __init__(self, steps: Generator[Any, Any, Any], first_wait: Any) -> None:
        self._steps = steps
        self._first_wait = first_wait

    def __await__(self) -> Generator[Any, Any, Any]:
        steps, yielded = self._steps, self._first_wait
        while True:
            try:
                received = yield yielded
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as exc:  # cancellation included: the operation sees it
                try:
                    yielded = steps.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = steps.send(received)
                except StopIteration as done:
                    return done.value
