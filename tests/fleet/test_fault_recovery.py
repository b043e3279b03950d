"""Transient fault recovery over more than 1,000 injected faults: HTTP 500/502/503/504 on
POST /prompt and on GET /history/{id}, answered by four instant simulators. At least 99 % of
the jobs still succeed (the rate is printed). The job type allows six attempts with a short
backoff (base 10 ms, cap 100 ms), as an operator of such a flaky fleet would configure."""

from __future__ import annotations

import asyncio

from comfyfleet.sim import SimConfig
from helpers.fleet import image_workflow, running_fleet

FAULTS_WANTED = 1000
ERROR_RATE = 0.35
BATCH = 100


async def test_over_a_thousand_transient_faults_at_least_99_percent_succeed(valkey_url, tmp_path):
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text("[job_types.image]\nmax_attempts = 6\nbackoff_base_s = 0.01\n"
                          "backoff_cap_s = 0.1\n")
    async with running_fleet(valkey_url, tmp_path, sims=4, sim_config=SimConfig(step_s=0.001),
                             backends_file=fleet_file, breaker_failures=1000) as fleet:
        for sim, status in zip(fleet.sims, (500, 502, 503, 504)):
            sim.faults.update({"http_error_status": status, "http_error_rate": ERROR_RATE,
                               "retry_after_s": 0, "http_error_paths": ["POST /prompt", "GET /history/*"]})
        ids: list[str] = []
        while sum(s.faults.injected for s in fleet.sims) < FAULTS_WANTED:
            batch = await asyncio.gather(*(fleet.submit(image_workflow(1, seed=len(ids) + i))
                                           for i in range(BATCH)))
            ids += [j["id"] for j in batch]
            await asyncio.gather(*(fleet.wait(i, timeout_s=120) for i in ids[-BATCH:]))
        finals = [await fleet.job(i) for i in ids]
        injected = sum(s.faults.injected for s in fleet.sims)

    succeeded = sum(1 for j in finals if j["status"] == "succeeded")
    retried = sum(len(j["attempts"]) - 1 for j in finals)
    rate = succeeded / len(finals)
    print(f"\n{injected} transient faults injected over {len(finals)} jobs ({retried} retries): "
          f"{succeeded} succeeded = {rate:.2%}")
    assert injected >= FAULTS_WANTED
    assert rate >= 0.99
    failed_classes = {a["failure_class"] for j in finals for a in j["attempts"] if a["failure_class"]}
    assert failed_classes == {"transient"}
