"""Fixture of the live-progress tests: ``rig``, a simulator with a ComfyClient on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.transport import open_session
from comfyfleet.sim import SimConfig, Simulator
from progress_helpers import Rig


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with Simulator(SimConfig(step_s=0.03, name="sim-p")) as sim, \
            open_session() as http:
        yield Rig(sim, ComfyClient(sim.url, http=http, name="sim-p"))
