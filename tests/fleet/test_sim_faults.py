"""The simulator's HTTP faults as the fleet tests use them: errors only on chosen paths, with
Retry-After, counted."""

from __future__ import annotations

import httpx

from comfyfleet.sim import SimConfig, Simulator


async def test_http_errors_on_chosen_paths_only_with_retry_after_and_a_count():
    async with Simulator(SimConfig(name="s")) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        sim.faults.update({"http_error_status": 503, "http_error_rate": 1.0, "retry_after_s": 2,
                           "http_error_paths": ["POST /prompt", "GET /history/*"]})
        refused = await http.post("/prompt", json={"prompt": {}})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert (await http.get("/history/abc")).status_code == 503
        assert (await http.get("/system_stats")).status_code == 200
        assert (await http.get("/queue")).status_code == 200
        assert sim.faults.injected == 2
        sim.faults.update({"http_error_paths": None})
        assert (await http.get("/queue")).status_code == 503 and sim.faults.injected == 3
