"""The shipped alert rules (docs/alerts.yml), evaluated by Prometheus' own ``promtool test rules``
over series exactly as ``GET /metrics`` renders them: each alert fires on the state it names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from comfyfleet.api.metrics import _Families, families
from comfyfleet.runtime.readings import Readings

ALERTS = Path(__file__).resolve().parents[2] / "docs" / "alerts.yml"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")


def exposition(readings: Readings) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families(readings)))
    return generate_latest(registry).decode()


def series_over_time(scrapes: list[tuple[int, Readings]]) -> list[dict[str, str]]:
    """promtool input series from one scrape a minute: ``(minutes, readings)`` holds for that
    many minutes; a series a scrape does not serve is absent then (``_``)."""
    minutes = sum(span for span, _ in scrapes)
    values: dict[str, list[str]] = {}
    at = 0
    for span, readings in scrapes:
        for family in text_string_to_metric_families(exposition(readings)):
            for sample in family.samples:
                labels = ",".join(f'{k}={json.dumps(v)}' for k, v in sorted(sample.labels.items()))
                row = values.setdefault(f"{sample.name}{{{labels}}}", ["_"] * minutes)
                row[at:at + span] = [repr(float(sample.value))] * span
        at += span
    return [{"series": name, "values": " ".join(row)} for name, row in values.items()]


def summary_of(alert: str) -> str:
    found = re.search(rf"alert: {alert}\n.*?summary: (.*?)\n", ALERTS.read_text(), re.S)
    assert found, alert
    return found.group(1).strip().strip('"')


def assert_fires(tmp_path: Path, scrapes: list[tuple[int, Readings]], alert: str, at_minute: int,
                 labels: dict[str, str]) -> None:
    fired = [{"exp_labels": labels, "exp_annotations": {"summary": summary_of(alert)}}] if labels else []
    tests = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "input_series": series_over_time(scrapes),
                        "alert_rule_test": [{"eval_time": f"{at_minute}m", "alertname": alert,
                                             "exp_alerts": fired}]}]}
    spec = tmp_path / "alert_test.json"  # JSON is YAML
    spec.write_text(json.dumps(tests))
    run = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def backend(name: str, *, capacity: int = 1, up: bool = True) -> dict:
    state = "healthy" if up else "down"
    return {"name": name, "state": state, "load": 0, "capacity": capacity,
            "breaker": {"status": "closed"}, "health": {"state": state}, "warm_models": []}


def test_a_backlog_of_queued_jobs_over_ten_per_slot_fires(tmp_path):
    """ComfyfleetBacklog compares the queued jobs with the fleet's slots (it matched nothing)."""
    backlog = Readings(jobs_by_status={"queued": 500, "running": 2}, workers=1,
                       backends=[backend("gpu-1", capacity=2), backend("gpu-2", capacity=1)])
    assert_fires(tmp_path, [(30, backlog)], "ComfyfleetBacklog", 20, {"severity": "info"})
    short = Readings(jobs_by_status={"queued": 20, "running": 3}, workers=1,
                     backends=[backend("gpu-1", capacity=2), backend("gpu-2", capacity=1)])
    assert_fires(tmp_path, [(30, short)], "ComfyfleetBacklog", 20, {})


def test_queued_jobs_with_no_backend_registered_fire_no_backend_up(tmp_path):
    """ComfyfleetNoBackendUp fires when the fleet has no backend at all, not only all down."""
    empty = Readings(jobs_by_status={"queued": 5}, workers=1, backends=[])
    assert_fires(tmp_path, [(15, empty)], "ComfyfleetNoBackendUp", 10,
                 {"severity": "critical", "status": "queued"})
    down = Readings(jobs_by_status={"queued": 5}, workers=1, backends=[backend("gpu-1", up=False)])
    assert_fires(tmp_path, [(15, down)], "ComfyfleetNoBackendUp", 10,
                 {"severity": "critical", "status": "queued"})
    serving = Readings(jobs_by_status={"queued": 5}, workers=1, backends=[backend("gpu-1")])
    assert_fires(tmp_path, [(15, serving)], "ComfyfleetNoBackendUp", 10, {})


def test_the_first_refusal_of_a_deployment_fires_owner_at_cap(tmp_path):
    """The refusal counter is served at 0 before any refusal, so increase() sees the first one."""
    before = Readings(jobs_by_status={"queued": 1}, workers=1, backends=[backend("gpu-1")])
    after = Readings(job_counters={("refused", "queue_full"): 1}, jobs_by_status={"queued": 1},
                     workers=1, backends=[backend("gpu-1")])
    assert_fires(tmp_path, [(10, before), (10, after)], "ComfyfleetOwnerAtCap", 12,
                 {"severity": "info", "reason": "queue_full"})
