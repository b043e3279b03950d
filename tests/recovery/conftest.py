"""Fixtures of the recovery tests: two quick simulators and a rig (store, queue, dispatcher) on
them; ``services``, a deployment's services with no backend."""

from __future__ import annotations

import uuid

import pytest
from recovery_helpers import rig

from comfyfleet.services import ServiceConfig, open_services
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


@pytest.fixture
async def services(valkey_url, tmp_path):
    config = ServiceConfig(redis_url=valkey_url, data_dir=tmp_path, key_prefix=f"m{uuid.uuid4().hex[:8]}")
    async with open_services(config) as services:
        yield services
