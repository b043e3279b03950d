"""``GET /metrics``: the deployment in Prometheus' text format, for scraping and alerts.

Any API process answers for the whole deployment (everything is read from Redis at scrape time),
so scrape one of them, or all of them behind one job: the figures are the same.

    comfyfleet_jobs_submitted_total{type}                        jobs accepted
    comfyfleet_jobs_finished_total{type,status}                  jobs that reached a terminal status
    comfyfleet_attempts_total{backend,outcome,failure_class}     attempts ended, by how
    comfyfleet_queue_wait_seconds{type} (histogram)              submitted to first attempt
    comfyfleet_job_duration_seconds{type,status} (histogram)     submitted to terminal
    comfyfleet_jobs_refused_total{reason}                        submissions refused (queue_full: an
                                                                 owner at its cap of active jobs)
    comfyfleet_uploads_total, comfyfleet_upload_bytes_total      input assets received, their bytes
    comfyfleet_jobs{status}                                      jobs per status now (finished: retained)
    comfyfleet_workers                                           live worker processes
    comfyfleet_backend_up{backend}                               1 when its last health check passed
    comfyfleet_backend_state{backend,state}                      1 for its state (healthy, degraded,
                                                                 down, unknown, draining, disabled)
    comfyfleet_backend_load{backend} / _capacity{backend}        our prompts on it / its slots
    comfyfleet_backend_breaker_state{backend,state}              1 for closed, open or half_open
    comfyfleet_backend_vram_free_bytes{backend}, _vram_total_bytes, _ram_free_bytes,
    comfyfleet_backend_check_latency_seconds{backend}, _queue_pending{backend} (ComfyUI's own
                                                                 queue: work not sent by us), and
    comfyfleet_backend_warm_models{backend}                      models it holds (model affinity)
    comfyfleet_workflow_breakers_open                            workflows stopped after failures
    comfyfleet_tracking_total{backend,counter}                   socket and polling counters
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from ..errors import ValidationFailed
from ..store.job_counters import BUCKETS_S
from .context import ApiContext, get_context

router = APIRouter(tags=["health"])

BACKEND_STATES = ("healthy", "degraded", "down", "unknown", "draining", "disabled")
BREAKER_STATES = ("closed", "open", "half_open")
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
ALWAYS_SERVED = (("refused", "queue_full"), ("uploaded",), ("uploaded_bytes",))  # job counter fields


@router.get("/metrics")
async def metrics(ctx: ApiContext = Depends(get_context)) -> Response:
    read = getattr(ctx.services, "readings", None)
    if read is None:
        raise ValidationFailed("this server keeps no metrics", code="not_found", status_code=404)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families(await read())))
    return Response(generate_latest(registry), media_type=TEXT_FORMAT)


class _Families:
    """A collector that yields metric families already made (one scrape's worth)."""

    def __init__(self, made: Iterable[Metric]) -> None:
        self._made = list(made)

    def collect(self) -> Iterator[Metric]:
        return iter(self._made)


def families(readings: Any) -> Iterator[Metric]:
    """Prometheus metric families of one ``runtime.readings.Readings``."""
    yield from _job_families(readings)
    yield from _backend_families(readings.backends)
    breakers = GaugeMetricFamily("comfyfleet_workflow_breakers_open",
                                 "Workflows (job type, graph shape) stopped by their circuit breaker")
    breakers.add_metric([], sum(1 for b in readings.workflow_breakers if b.get("status") == "open"))
    yield breakers
    tracking = CounterMetricFamily("comfyfleet_tracking", "Socket and polling counters of the trackers",
                                   labels=["backend", "counter"])
    for backend, counters in readings.tracking.items():
        for counter, total in counters.items():
            tracking.add_metric([backend, counter], total)
    yield tracking


def _job_families(readings: Any) -> Iterator[Metric]:
    submitted = CounterMetricFamily("comfyfleet_jobs_submitted", "Jobs accepted", labels=["type"])
    finished = CounterMetricFamily("comfyfleet_jobs_finished", "Jobs that reached a terminal status",
                                   labels=["type", "status"])
    attempts = CounterMetricFamily("comfyfleet_attempts", "Attempts ended, by outcome and failure class",
                                   labels=["backend", "outcome", "failure_class"])
    refused = CounterMetricFamily("comfyfleet_jobs_refused", "Submissions refused (queue_full: the "
                                  "owner had its cap of queued and running jobs)", labels=["reason"])
    uploads = CounterMetricFamily("comfyfleet_uploads", "Input assets received")
    upload_bytes = CounterMetricFamily("comfyfleet_upload_bytes", "Bytes of input assets received")
    shapes = {("submitted", 1): submitted, ("finished", 2): finished, ("attempt", 3): attempts,
              ("refused", 1): refused, ("uploaded", 0): uploads, ("uploaded_bytes", 0): upload_bytes}
    # a counter served at 0 before its first event, so increase() and rate() see that event
    served = {**dict.fromkeys(ALWAYS_SERVED, 0), **readings.job_counters}
    for (kind, *labels), total in sorted(served.items()):
        family = shapes.get((kind, len(labels)))
        if family is not None:
            family.add_metric(labels, total)
    yield from (submitted, finished, attempts, refused, uploads, upload_bytes)
    yield _histogram("comfyfleet_queue_wait_seconds", "Time from submission to the first attempt",
                     ["type"], readings.job_counters, "queue_wait", "queue_wait_ms")
    yield _histogram("comfyfleet_job_duration_seconds", "Time from submission to a terminal status",
                     ["type", "status"], readings.job_counters, "duration", "duration_ms")
    by_status = GaugeMetricFamily("comfyfleet_jobs", "Jobs per status now (finished ones: still retained)",
                                  labels=["status"])
    for status, count in readings.jobs_by_status.items():
        by_status.add_metric([status], count)
    yield by_status
    workers = GaugeMetricFamily("comfyfleet_workers", "Live worker processes")
    workers.add_metric([], readings.workers)
    yield workers


def _histogram(name: str, text: str, labels: list[str], counters: dict[tuple[str, ...], int],
               kind: str, sum_kind: str) -> HistogramMetricFamily:
    """A histogram from per-bucket counts (``(kind, *labels, le)``) and millisecond sums
    (``(sum_kind, *labels)``): buckets made cumulative, as the format wants."""
    family = HistogramMetricFamily(name, text, labels=labels)
    per_bucket: dict[tuple[str, ...], dict[str, int]] = {}
    for (field_kind, *parts), count in counters.items():
        if field_kind == kind and len(parts) == len(labels) + 1:
            per_bucket.setdefault(tuple(parts[:-1]), {})[parts[-1]] = count
    for values, counts in sorted(per_bucket.items()):
        running, buckets = 0, []
        for le in (*(f"{bound:g}" for bound in BUCKETS_S), "+Inf"):
            running += counts.get(le, 0)
            buckets.append((le, running))
        family.add_metric(list(values), buckets, sum_value=counters.get((sum_kind, *values), 0) / 1000)
    return family


def _backend_families(backends: list[dict[str, Any]]) -> Iterator[Metric]:
    def gauge(name: str, text: str, *labels: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"comfyfleet_backend_{name}", text, labels=["backend", *labels])

    up = gauge("up", "1 when the backend's last health check passed")
    state = gauge("state", "1 for the backend's current state", "state")
    load = gauge("load", "Our prompts on the backend now")
    capacity = gauge("capacity", "Prompts the backend may hold at once")
    breaker = gauge("breaker_state", "1 for the state of the backend's circuit breaker", "state")
    warm = gauge("warm_models", "Models the backend holds from its last successful prompt")
    known = {"vram_free": gauge("vram_free_bytes", "Free GPU memory at the last check"),
             "vram_total": gauge("vram_total_bytes", "GPU memory at the last check"),
             "ram_free": gauge("ram_free_bytes", "Free RAM at the last check"),
             "queue_pending": gauge("queue_pending", "Prompts pending in ComfyUI's own queue"),
             "latency_ms": gauge("check_latency_seconds", "How long the last health check took")}
    for backend in backends:
        name, health = backend["name"], backend.get("health") or {}
        up.add_metric([name], 1 if health.get("state") in ("healthy", "degraded") else 0)
        for value in BACKEND_STATES:
            state.add_metric([name, value], 1 if backend["state"] == value else 0)
        load.add_metric([name], backend["load"])
        capacity.add_metric([name], backend["capacity"])
        for value in BREAKER_STATES:
            breaker.add_metric([name, value], 1 if backend["breaker"]["status"] == value else 0)
        warm.add_metric([name], len(backend.get("warm_models") or ()))
        for key, family in known.items():
            if health.get(key) is not None:
                family.add_metric([name], health[key] / 1000 if key == "latency_ms" else health[key])
    yield from (up, state, load, capacity, breaker, warm, *known.values())
