"""Fixtures of the recovery tests: two quick simulators and a rig (store, queue, dispatcher) on them."""

from __future__ import annotations

import pytest
from recovery_helpers import rig

from comfyfleet.sim import SimConfig, Simulator


@pytest.fixture
async def sims():
    async with Simulator(SimConfig(step_s=0.02, name="sim-0")) as a, \
            Simulator(SimConfig(step_s=0.02, name="sim-1")) as b:
        yield [a, b]


@pytest.fixture
async def r(valkey_url, tmp_path, sims):
    async with rig(valkey_url, tmp_path, sims) as r:
        yield r
