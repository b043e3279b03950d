"""SharedRead: concurrent callers share one read; a young answer is reused; a failure is not kept."""

from __future__ import annotations

import asyncio

import pytest

from comfyfleet.api.shared_read import SharedRead


class Source:
    def __init__(self) -> None:
        self.reads = 0
        self.fail = False
        self.gate = asyncio.Event()

    async def read(self) -> int:
        self.reads += 1
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("store away")
        return self.reads


async def test_callers_share_a_read_and_reuse_a_young_answer():
    now = [100.0]
    source = Source()
    shared = SharedRead(source.read, max_age_s=0.5, clock=lambda: now[0])
    waiting = [asyncio.create_task(shared.get()) for _ in range(10)]
    await asyncio.sleep(0)
    source.gate.set()
    assert await asyncio.gather(*waiting) == [1] * 10 and source.reads == 1
    now[0] += 0.4
    assert await shared.get() == 1 and source.reads == 1, "still young: no read"
    now[0] += 0.1
    assert await shared.get() == 2 and source.reads == 2, "old: read again"


async def test_a_failed_read_reaches_its_callers_and_is_not_kept():
    now = [0.0]
    source = Source()
    source.gate.set()
    shared = SharedRead(source.read, max_age_s=10.0, clock=lambda: now[0])
    source.fail = True
    with pytest.raises(ConnectionError):
        await shared.get()
    source.fail = False
    assert await shared.get() == 2, "the next caller reads again at once"
