"""Simulator configuration and the per-prompt run record."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimConfig:
    """How one simulated ComfyUI server behaves (frozen; faults live in `Faults`)."""

    step_s: float = 0.05
    name: str = "sim-1"
    output_dir: str | None = None
    record_file: str | None = None
    history_delay_s: float = 0.0
    legacy_events: bool = False
    send_previews: bool = False
    time_scale: float = 1.0  # every simulated duration is multiplied by this (0.01: minutes in seconds)
    model_load_s: float = 0.0  # a loader node (an input naming a model file) that is not cached takes this
    # The node classes this server has (what /object_info lists); a prompt naming another is
    # refused as ComfyUI refuses it. None: ``catalog.DEFAULT_NODE_CLASSES``.
    node_classes: tuple[str, ...] | None = None
    # As ComfyUI before 0.3.56: /interrupt ignores the prompt id it is given and stops whatever runs
    interrupt_ignores_id: bool = False


@dataclass
class PromptRecord:
    """One prompt that started executing; `outcome` is None while running or if killed."""

    prompt_id: str
    client_id: str | None
    number: int | float
    started_at: float
    ended_at: float | None = None
    outcome: str | None = None
    models_loaded: int = 0  # loader nodes that ran (not cached from the previous prompt)
    with_partner_key: bool = False  # extra_data carried api_key_comfy_org (what API nodes read)
