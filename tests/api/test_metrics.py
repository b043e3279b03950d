"""``GET /metrics`` against a running fleet: the counters equal what the job records say and
the gauges what the fleet is."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from helpers.fleet import image_workflow, running_fleet


ALERTS = Path(__file__).resolve().parents[2] / "docs" / "alerts.yml"


def epoch(iso_time: str) -> float:
    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_counters_match_the_job_records_and_gauges_the_fleet(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=2, health_interval_s=0.2) as fleet:
        # sim-0 refuses every prompt with a 503 (transient: retried elsewhere), a node of one
        # class (an output node, so it runs) fails everywhere (permanent: failed at once)
        fleet.sims[0].faults.update({"http_error_status": 503, "http_error_rate": 1.0,
                                     "http_error_paths": ["POST /prompt"], "retry_after_s": 0})
        for sim in fleet.sims:
            sim.faults.update({"fail_class_type": "SaveAnimatedWEBP"})
        ids = [(await fleet.submit(image_workflow(2, seed=n)))["id"] for n in range(4)]
        ids.append((await fleet.submit(image_workflow(2, extra_node={
            "9": {"class_type": "SaveAnimatedWEBP", "inputs": {"image": ["2", 0]}}})))["id"])
        jobs = [await fleet.wait(job_id, timeout_s=60) for job_id in ids]
        response = await fleet.http.get("/metrics")

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    statuses = Counter(job["status"] for job in jobs)
    assert statuses == {"succeeded": 4, "failed": 1}
    assert got[("comfyfleet_jobs_submitted_total", (("type", "image"),))] == 5
    for status, count in statuses.items():
        assert got[("comfyfleet_jobs_finished_total", (("status", status), ("type", "image")))] == count
        assert got[("comfyfleet_jobs", (("status", status),))] == count
    attempts = Counter((a["backend"], a["outcome"], a["failure_class"] or "") for job in jobs for a in job["attempts"])
    assert ("sim-0", "retried", "transient") in attempts  # the fault was met
    metered = {(dict(labels)["backend"], dict(labels)["outcome"], dict(labels)["failure_class"]): value
               for (name, labels), value in got.items() if name == "comfyfleet_attempts_total"}
    assert metered == attempts
    assert got[("comfyfleet_workers", ())] == 1
    for name in ("sim-0", "sim-1"):
        assert got[("comfyfleet_backend_capacity", (("backend", name),))] == 1
        assert got[("comfyfleet_backend_up", (("backend", name),))] == 1
        assert got[("comfyfleet_backend_vram_total_bytes", (("backend", name),))] > 0
        assert sum(v for (n, labels), v in got.items()
                   if n == "comfyfleet_backend_state" and dict(labels)["backend"] == name) == 1
    # the histograms hold every job: the first attempt's wait and the time to its end
    waits = [epoch(job["attempts"][0]["started_at"]) - epoch(job["created_at"]) for job in jobs]
    assert got[("comfyfleet_queue_wait_seconds_count", (("type", "image"),))] == len(jobs)
    assert abs(got[("comfyfleet_queue_wait_seconds_sum", (("type", "image"),))] - sum(waits)) < 0.01 * len(jobs)
    for status, count in statuses.items():
        labels = (("status", status), ("type", "image"))
        assert got[("comfyfleet_job_duration_seconds_count", labels)] == count
        assert got[("comfyfleet_job_duration_seconds_bucket", (("le", "+Inf"), *labels))] == count
        took = sum(epoch(j["completed_at"]) - epoch(j["created_at"]) for j in jobs if j["status"] == status)
        assert abs(got[("comfyfleet_job_duration_seconds_sum", labels)] - took) < 0.01 * count
    # every metric the shipped alert rules use is one this endpoint serves
    families = list(text_string_to_metric_families(response.text))
    served = ({family.name for family in families} | {s.name for family in families for s in family.samples}
              | {f"{family.name}_total" for family in families if family.type == "counter"})  # declared, none yet
    used = set(re.findall(r"\bcomfyfleet_[a-z_]+", ALERTS.read_text()))
    assert used and used <= served, used - served


async def test_refusals_and_uploads_are_counted(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=1, max_active_per_owner=1) as fleet:
        first = await fleet.submit(image_workflow(400), metadata={"user_id": "capped"})
        refused = await fleet.http.post("/api/v2/jobs", json={"workflow": image_workflow(1),
                                                              "metadata": {"user_id": "capped"}})
        assert refused.status_code == 429
        sent = [b"input one", b"input two!", b"input one"]  # the third: bytes already held, counted too
        for data in sent:
            uploaded = await fleet.http.post("/api/v2/assets", files={"file": ("in.png", data, "image/png")})
            assert uploaded.status_code in (200, 201)
        minted = await fleet.http.post("/api/v2/assets/from-hash", json={"hash": uploaded.json()["hash"]})
        assert minted.status_code == 201
        await fleet.http.post(f"/api/v2/jobs/{first['id']}/cancel")
        got = samples((await fleet.http.get("/metrics")).text)
    assert got[("comfyfleet_jobs_refused_total", (("reason", "queue_full"),))] == 1
    assert got[("comfyfleet_uploads_total", ())] == 4, "three uploads and one mint"
    assert got[("comfyfleet_upload_bytes_total", ())] == sum(len(d) for d in sent), "a mint receives no bytes"
    assert got[("comfyfleet_jobs_submitted_total", (("type", "image"),))] == 1, "the refused one was not"
