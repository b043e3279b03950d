"""A failing backend's breaker hears of each failure before the failed prompt's slot is free:
the job that slot wakes finds the breaker open, so a half-open breaker lets one probe through
per cool-down, not the probe and whichever job was waiting."""

from __future__ import annotations

from datetime import datetime

from comfyfleet.sim import SimConfig
from helpers.fleet import image_workflow, running_fleet

COOLDOWN_S = 1.0


def at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


async def test_each_half_open_window_sends_one_probe_to_a_failing_backend(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=2, sim_config=SimConfig(step_s=0.05),
                             health_interval_s=600.0, breaker_failures=1,
                             breaker_cooldown_s=COOLDOWN_S) as fleet:
        fleet.sims[0].faults.update({"http_error_status": 503, "http_error_paths": ["POST /prompt"]})
        jobs = [await fleet.submit(image_workflow(5, seed=i)) for i in range(12)]
        finals = [await fleet.wait(j["id"], timeout_s=120) for j in jobs]
    assert {j["status"] for j in finals} == {"succeeded"}
    on_failing = sorted((at(a["started_at"]), at(a["ended_at"])) for j in finals
                        for a in j["attempts"] if a["backend"] == "sim-0")
    assert len(on_failing) >= 2, on_failing
    # After each failure the breaker is open for a cool-down: the next attempt there starts no
    # sooner (a slow machine only widens the gaps; a second job through the same window came
    # within milliseconds).
    gaps = [start - ended for (_, ended), (start, _) in zip(on_failing, on_failing[1:])]
    assert min(gaps) >= COOLDOWN_S / 2, gaps
