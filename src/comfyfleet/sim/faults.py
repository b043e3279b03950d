"""Run-time faults a test can switch on (all off by default)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields

FAULT_NAMES = (
    "refuse_connections", "http_error_status", "http_error_rate", "retry_after_s",
    "slow_response_s", "drop_socket_at_step", "silent", "oom_above_nodes",
    "fail_class_type", "history_delay_s",
    # live-progress faults (a node input of the same name scripts one prompt instead)
    "deafen_socket_at_step", "legacy_events", "send_previews", "expand_nodes", "refuse_websocket",
    "http_error_paths", "http_error_limit", "http_error_after_handling",
)


@dataclass
class Faults:
    """Plain mutable attributes; the simulator reads them at every decision point.

    `refuse_connections` only takes effect through `Simulator.set_refusing()` (or the
    `/sim/faults` route), because the listening socket has to be closed and reopened.
    """

    refuse_connections: bool = False
    http_error_status: int | None = None
    http_error_rate: float = 1.0
    retry_after_s: float | None = None
    slow_response_s: float = 0.0
    drop_socket_at_step: int | None = None
    silent: bool = False
    oom_above_nodes: int | None = None
    fail_class_type: str | None = None
    history_delay_s: float = 0.0
    # The prompt's socket stops receiving at this step but stays open (trace 06b's deaf socket).
    deafen_socket_at_step: int | None = None
    legacy_events: bool | None = None  # None: as SimConfig; True: no progress_state frames
    send_previews: bool | None = None  # None: as SimConfig; True: preview frames with each step
    expand_nodes: int | None = None  # steps nodes run their steps in this many expanded (ephemeral) nodes
    refuse_websocket: bool = False  # /ws answers 503: clients can only poll
    http_error_paths: list[str] | None = None  # e.g. ["POST /prompt", "GET /history/*"]: only there
    http_error_limit: int | None = None  # no more errors once this many were answered
    # A gateway in front that forwarded the request, then answered the error in place of the
    # server's answer (a 502/504 after ComfyUI queued the prompt)
    http_error_after_handling: bool = False
    injected: int = field(default=0, repr=False)  # HTTP errors answered so far (not a fault)
    # One deterministic sequence per seed: simulators seeded by their names fault independently
    # (with one seed for all, a job retried across them met the same rolls on each in turn).
    seed: str = field(default="", repr=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"faults:{self.seed}")

    def roll_http_error(self, request_line: str | None = None) -> bool:
        """True when this request should get `http_error_status` (deterministic sequence).

        `request_line` ("POST /prompt") is checked against `http_error_paths` when that is set;
        an entry ending in ``*`` matches by prefix.
        """
        if self.http_error_status is None:
            return False
        if self.http_error_limit is not None and self.injected >= self.http_error_limit:
            return False
        if self.http_error_paths is not None and not any(
                request_line == p or (p.endswith("*") and (request_line or "").startswith(p[:-1]))
                for p in self.http_error_paths):
            return False
        if self._rng.random() < self.http_error_rate:
            self.injected += 1
            return True
        return False

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in FAULT_NAMES}

    def update(self, values: dict) -> None:
        """Set several faults at once; unknown names raise KeyError before anything changes."""
        unknown = sorted(set(values) - set(FAULT_NAMES))
        if unknown:
            raise KeyError(f"unknown faults: {', '.join(unknown)}")
        for name, value in values.items():
            setattr(self, name, value)

    def clear(self) -> None:
        self.update({name: getattr(Faults, name) for name in FAULT_NAMES})
