"""The progress throttle, counted by a subscriber of the real event bus, on a virtual clock."""

from __future__ import annotations

import asyncio
import uuid

from comfyfleet.domain import transitions as t
from comfyfleet.domain.job import Attempt, Job, JobStatus, Progress
from comfyfleet.runtime.progress_sink import ProgressSink

WF = {"1": {"class_type": "X", "inputs": {}}}


class VirtualTime:
    """A clock the test moves, and timers that fire only when it passes their due time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, asyncio.Future]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._timers.append((self.now + delay_s, future))
        await future

    def advance_to(self, now: float) -> None:
        self.now = now
        for due, future in list(self._timers):
            if due <= now and not future.done():
                future.set_result(None)


async def running_job(store) -> str:
    job = Job(id=str(uuid.uuid4()), status=JobStatus.QUEUED, created_at=0.0, updated_at=0.0)
    await store.create(job, WF)
    await store.apply(job.id, t.Dispatch(Attempt(number=1, backend="b", prompt_id="p",
                                                 client_id="c", worker="w", started_at=0.0)), 0.0)
    await store.apply(job.id, t.Submitted(), 0.0)
    return job.id


async def received(events, count: int) -> list[dict]:
    async with asyncio.timeout(10):
        return [await anext(events) for _ in range(count)]


def step(k: int, total: int = 100) -> Progress:
    return Progress(value=round(k / total, 4), nodes_done=0, nodes_total=1, current_node="1",
                    step=k, steps=total)


async def test_at_most_one_write_per_window_and_the_last_value_is_kept(store, event_bus):
    """30 snapshots over 3 virtual seconds, throttle 1 s: written at 0, 1, 2 s and at close."""
    job_id = await running_job(store)
    time = VirtualTime()
    sink = ProgressSink(store, event_bus, job_id, throttle_s=1.0, clock=time.clock, sleep=time.sleep)
    async with event_bus.subscription(job_id) as events:
        for k in range(30):
            time.now = k / 10
            await sink.on_progress(step(k))
        await sink.close()
        await store.apply(job_id, t.Heartbeat("w"), time.now)  # a marker: nothing else came
        got = await received(events, 5)
    assert [e["kind"] for e in got] == ["progress"] * 4 + ["update"]
    assert [e["job"]["progress"]["step"] for e in got[:4]] == [0, 10, 20, 29]
    assert sink.writes == 4


async def test_a_pending_snapshot_is_written_when_its_window_closes(store, event_bus):
    """The trailing snapshot of a burst goes out when the window ends, without a new event."""
    job_id = await running_job(store)
    time = VirtualTime()
    sink = ProgressSink(store, event_bus, job_id, throttle_s=1.0, clock=time.clock, sleep=time.sleep)
    async with event_bus.subscription(job_id) as events:
        await sink.on_progress(step(1))
        time.now = 0.5
        await sink.on_progress(step(2))
        await sink.on_progress(step(3))
        await asyncio.sleep(0)  # let the deferred flush start its timer (due at 1.0)
        time.advance_to(0.99)
        await store.apply(job_id, t.Heartbeat("w"), time.now)
        first = await received(events, 2)
        time.advance_to(1.0)
        second = await received(events, 1)
    assert [(e["kind"], e["job"]["progress"]["step"]) for e in first] == [("progress", 1), ("update", 1)]
    assert [(e["kind"], e["job"]["progress"]["step"]) for e in second] == [("progress", 3)]


async def test_phase_and_status_changes_are_not_throttled(store, event_bus):
    """Within one throttle window: the phase change and the completion go out at once, after
    the pending progress."""
    job_id = await running_job(store)
    time = VirtualTime()
    sink = ProgressSink(store, event_bus, job_id, throttle_s=3600.0, clock=time.clock,
                        sleep=time.sleep)
    async with event_bus.subscription(job_id) as events:
        for k in range(5):
            await sink.on_progress(step(k))
        await sink.on_started()
        await sink.close()  # the runner closes the sink, then records the outcome
        await store.apply(job_id, t.Succeed(()), time.now)
        got = await received(events, 4)
    assert [e["kind"] for e in got] == ["progress", "status", "progress", "status"]
    assert got[1]["job"]["phase"] == "executing"
    assert got[2]["job"]["progress"]["step"] == 4
    assert (got[3]["job"]["status"], got[3]["job"]["progress"]["value"]) == ("succeeded", 1.0)


async def test_throttle_is_configurable(store, event_bus):
    """Throttle 0: every snapshot is written."""
    job_id = await running_job(store)
    time = VirtualTime()
    sink = ProgressSink(store, event_bus, job_id, throttle_s=0.0, clock=time.clock, sleep=time.sleep)
    async with event_bus.subscription(job_id) as events:
        for k in range(12):
            await sink.on_progress(step(k))
        got = await received(events, 12)
    assert [e["job"]["progress"]["step"] for e in got] == list(range(12))


async def test_the_start_opens_the_first_window_so_a_quick_prompt_writes_no_progress(store, event_bus):
    """Started, then progress within the same second, then success: the progress is left to the
    success write; a longer prompt gets its first value when the start's window closes."""
    job_id = await running_job(store)
    time = VirtualTime()
    sink = ProgressSink(store, event_bus, job_id, throttle_s=1.0, clock=time.clock, sleep=time.sleep)
    async with event_bus.subscription(job_id) as events:
        await sink.on_started()
        time.now = 0.2
        await sink.on_progress(step(50))
        await sink.close(superseded=True)
        await store.apply(job_id, t.Heartbeat("w"), time.now)  # a marker: nothing else came
        got = await received(events, 2)
    assert [e["job"]["phase"] for e in got] == ["executing", "executing"]
    assert [e["kind"] for e in got][1] == "update" and sink.writes == 0

    second = await running_job(store)
    time.now = 10.0
    longer = ProgressSink(store, event_bus, second, throttle_s=1.0, clock=time.clock, sleep=time.sleep)
    async with event_bus.subscription(second) as events:
        await longer.on_started()
        time.now = 10.3
        await longer.on_progress(step(60))
        assert longer.writes == 0  # inside the start's window: it waits
        await asyncio.sleep(0)  # the flush timer is set
        time.advance_to(11.0)
        first_progress = None
        async with asyncio.timeout(10):
            async for event in events:
                if event["kind"] == "progress":
                    first_progress = event
                    break
    assert first_progress["job"]["progress"]["step"] == 60 and longer.writes == 1


async def test_a_snapshot_that_arrives_while_the_delayed_write_runs_is_written_in_its_window():
    """The delayed flush took 0.2 and is writing it when 0.9 arrives (the last snapshot before a
    long silent node): 0.9 is written when its window closes, not only with the next event."""
    time = VirtualTime()
    written: list[float] = []
    writing = asyncio.Event()
    let_write = asyncio.Event()

    async def apply(event) -> None:  # type: ignore[no-untyped-def]
        if len(written) == 1:  # the delayed write: held open while 0.9 arrives
            writing.set()
            await let_write.wait()
        written.append(event.progress.value)

    sink = ProgressSink(None, None, "j", throttle_s=1.0, clock=time.clock, sleep=time.sleep,
                        apply=apply, executing=True)
    await sink.on_progress(step(10))  # written at once, opens the window
    await sink.on_progress(step(20))  # waits for the window
    for _ in range(5):  # the flusher starts and sets its timer
        await asyncio.sleep(0)
    time.advance_to(1.0)
    async with asyncio.timeout(5):
        await writing.wait()
    await sink.on_progress(step(90))  # during that write: no new task is started for it
    let_write.set()
    for _ in range(20):  # let the write finish and the flusher go back to sleep
        await asyncio.sleep(0)
    assert written == [0.1, 0.2]
    time.advance_to(2.0)
    async with asyncio.timeout(5):
        while len(written) < 3:
            await asyncio.sleep(0)
    assert written == [0.1, 0.2, 0.9]
    await sink.close()
