"""`wait_bounded`: the result, errors and cancellation pass through; the deadline only starts
once the operation waits."""

from __future__ import annotations

import asyncio

import pytest

from comfyfleet.sim.deadline import wait_bounded


async def _immediate(value: object) -> object:
    return value


async def _after_one_wait(value: object) -> object:
    await asyncio.sleep(0)
    return value


async def _fail(after_wait: bool) -> None:
    if after_wait:
        await asyncio.sleep(0)
    raise ConnectionResetError("gone")


async def test_an_operation_that_does_not_wait_schedules_no_timer(monkeypatch):
    loop = asyncio.get_running_loop()
    scheduled: list[float] = []
    real_call_at = loop.call_at

    def counting_call_at(when, callback, *args, **kwargs):
        scheduled.append(when)
        return real_call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    assert await wait_bounded(_immediate("done"), 5.0) == "done"
    assert scheduled == []
    assert await wait_bounded(_after_one_wait("later"), 5.0) == "later"
    assert len(scheduled) == 1 and scheduled[0] > loop.time()


async def test_an_operation_that_never_finishes_times_out():
    never = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await wait_bounded(never, 0.05)
    assert never.cancelled()


@pytest.mark.parametrize("after_wait", [False, True])
async def test_errors_pass_through(after_wait):
    with pytest.raises(ConnectionResetError):
        await wait_bounded(_fail(after_wait), 5.0)


async def test_cancelling_the_caller_cancels_the_operation():
    blocked = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(wait_bounded(blocked, 60.0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert blocked.cancelled()


async def test_a_value_sent_in_is_passed_on():
    """What the event loop sends back after a suspension reaches the awaited operation."""
    future = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(future.set_result, 42)
    assert await wait_bounded(future, 5.0) == 42
