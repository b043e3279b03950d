"""The worker supervisor restarts a dead worker process and gives up past the restart intensity."""

from __future__ import annotations

import asyncio
import os
import signal

from comfyfleet.domain.policy import RestartIntensity
from comfyfleet.runtime.supervisor import WorkerSupervisor

# A long-running comfyfleet command that needs no Redis: the simulator on a free port.
LONG_RUNNING = ["sim", "--port", "0"]


async def wait_until(predicate, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_a_killed_worker_is_restarted_and_the_others_are_untouched():
    supervisor = WorkerSupervisor(LONG_RUNNING, count=2, backoff_base_s=0.05)
    await supervisor.start()
    try:
        first, second = (slot.process.pid for slot in supervisor.slots)
        os.kill(first, signal.SIGKILL)
        await wait_until(lambda: supervisor.slots[0].restarts == 1)
        restarted = supervisor.slots[0].process
        assert restarted.pid != first and restarted.returncode is None
        assert supervisor.slots[1].process.pid == second and supervisor.slots[1].restarts == 0
    finally:
        await supervisor.stop()
    assert all(slot.process.returncode is not None for slot in supervisor.slots)


async def test_a_worker_that_keeps_dying_is_given_up_and_reported():
    given_up: list[int] = []
    # `worker` without --redis-url exits at once with a configuration error.
    supervisor = WorkerSupervisor(["worker", "--backend", "http://127.0.0.1:9"], count=1,
                                  intensity=lambda: RestartIntensity(max_restarts=2, window_s=60.0),
                                  backoff_base_s=0.01, on_give_up=given_up.append)
    await supervisor.start()
    try:
        await wait_until(lambda: supervisor.slots[0].given_up, timeout_s=60)
        assert given_up == [0]
        assert supervisor.slots[0].restarts == 2
    finally:
        await supervisor.stop()



async def test_a_worker_that_exits_once_shutdown_has_begun_is_not_restarted():
    """A Ctrl-C reaches every worker of the process group before the supervisor stops them."""
    supervisor = WorkerSupervisor(LONG_RUNNING, count=1, backoff_base_s=0.01)
    await supervisor.start()
    try:
        supervisor.stopping()
        process = supervisor.slots[0].process
        async with asyncio.timeout(30):  # again until it ends: one sent while the worker's
            while process.returncode is None:  # interpreter still starts can be lost
                process.send_signal(signal.SIGINT)
                await asyncio.sleep(0.5)
        await asyncio.sleep(0.3)  # a restart would have happened by now
        assert supervisor.slots[0].restarts == 0
    finally:
        await supervisor.stop()
