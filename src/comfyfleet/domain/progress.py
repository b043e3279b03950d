"""Progress of one prompt, computed from ComfyUI's execution events (protocol doc section 3).

Pure: the tracker turns socket messages into calls on ``ProgressModel`` and publishes
``snapshot()``. Rules:

* Nodes to run are the nodes reachable upstream from the outputs (the graph's sinks when the
  outputs are not given). Cached nodes count as done.
* ``progress_state`` is authoritative for the nodes it lists: ``finished`` is done, ``running`` is
  current with its value/max fraction. ``executing``/``progress``/``executed`` fill in otherwise.
* An id the graph does not have (node expansion) stands for its display node when one is known:
  it moves the display node's fraction but never finishes it. Other unknown ids are ignored.
* ``value`` = (weighted done + weighted fractions of started nodes) / weighted total. It never
  goes down and stays below 1.0 until ``succeeded()``, which makes it exactly 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .job import Progress

DEFAULT_WEIGHT = 1.0
CEILING = 0.999  # the highest value before success
VALUE_DIGITS = 4
FINISHED = "finished"

# A sampler step is worth more than a VAE decode: the default weights of every job type.
SAMPLER_WEIGHT = 10.0
DEFAULT_NODE_WEIGHTS: Mapping[str, float] = {
    "KSampler": SAMPLER_WEIGHT, "KSamplerAdvanced": SAMPLER_WEIGHT,
    "SamplerCustom": SAMPLER_WEIGHT, "SamplerCustomAdvanced": SAMPLER_WEIGHT,
}

# ``progress_state`` entry: (value, max, state, display_node_id) or any object with those attributes.
NodeEntry = Any


class ProgressModel:
    """Progress of one prompt; one instance per attempt."""

    def __init__(self, graph: Mapping[str, Any], *, outputs_to_execute: Sequence[str] | None = None,
                 weights: Mapping[str, float] | None = None) -> None:
        self._class_of = {str(node_id): _class_type(node) for node_id, node in graph.items()}
        inputs = {str(node_id): _links(node, self._class_of) for node_id, node in graph.items()}
        if outputs_to_execute is None:
            outputs = _sinks(inputs)
        else:
            outputs = [str(n) for n in outputs_to_execute if str(n) in self._class_of]
        self._order = _upstream(outputs, inputs)  # nodes to run, in a stable order
        self._to_run = frozenset(self._order)
        self._weight = {n: _weight_of(self._class_of[n], weights) for n in self._order}
        self._total_weight = sum(self._weight.values())
        self._done: set[str] = set()
        self._fraction: dict[str, float] = {}  # started, not done nodes: high-water value/max
        self._aliases: dict[str, str] = {}  # expanded id -> display node id
        self._current: str | None = None
        self._step: tuple[float, float] | None = None  # value, max of the current node
        self._high = 0.0
        self._succeeded = False

    @property
    def nodes_total(self) -> int:
        return len(self._order)

    @property
    def current_node(self) -> str | None:
        return self._current

    # -- events ---------------------------------------------------------------------------
    def cached(self, node_ids: Iterable[str]) -> None:
        for node_id in node_ids:
            if str(node_id) in self._class_of:
                self._finish(str(node_id))

    def node_started(self, node_id: str, display_node_id: str | None = None) -> None:
        target, _ = self._resolve(node_id, display_node_id)
        if target is None or target in self._done:
            return
        if target != self._current:
            self._current, self._step = target, None

    def node_progress(self, node_id: str, value: float, max: float) -> None:  # noqa: A002
        target, _ = self._resolve(node_id, None)
        if target is not None:
            self._running(target, value, max)

    def progress_state(self, nodes: Mapping[str, NodeEntry]) -> None:
        """Apply a full snapshot: node_id -> (value, max, state, display_node_id)."""
        running: list[tuple[str, float, float]] = []
        listed: set[str] = set()
        for node_id, entry in nodes.items():
            value, maximum, state, display = _unpack(entry)
            target, expanded = self._resolve(node_id, display)
            if target is None:
                continue
            listed.add(target)
            if state != FINISHED:
                running.append((target, value, maximum))
            elif not expanded:
                self._finish(target)
        for target, value, maximum in running:
            self._running(target, value, maximum)
        if not running and self._current in listed:
            self._current, self._step = None, None

    def node_executed(self, node_id: str) -> None:
        target, expanded = self._resolve(node_id, None)
        if target is not None and not expanded:
            self._finish(target)

    def succeeded(self) -> None:
        self._succeeded = True

    # -- result ---------------------------------------------------------------------------
    def snapshot(self) -> Progress:
        total = self.nodes_total
        if self._succeeded:
            self._high = 1.0
            return Progress(value=1.0, nodes_done=total, nodes_total=total)
        value = max(self._high, min(round(self._raw_value(), VALUE_DIGITS), CEILING))
        self._high = value
        step, steps = self._step if self._step is not None else (None, None)
        return Progress(
            value=value,
            nodes_done=len(self._done),
            nodes_total=total,
            current_node=self._current,
            current_node_class=self._class_of.get(self._current) if self._current else None,
            step=_as_int(step),
            steps=_as_int(steps),
        )

    # -- internals ------------------------------------------------------------------------
    def _raw_value(self) -> float:
        if not self._order:
            return 0.0
        if self._total_weight <= 0:  # every weight is zero: count nodes instead
            return (len(self._done) + sum(self._fraction.values())) / len(self._order)
        done = sum(self._weight[n] for n in self._order if n in self._done)
        partial = sum(self._weight[n] * self._fraction.get(n, 0.0) for n in self._order)
        return (done + partial) / self._total_weight

    def _resolve(self, node_id: str, display_node_id: str | None) -> tuple[str | None, bool]:
        """The graph node an event is about, and whether it came through an expanded id."""
        node_id = str(node_id)
        if node_id in self._class_of:
            return node_id, False
        if display_node_id is not None:
            display = self._aliases.get(str(display_node_id), str(display_node_id))
            if display in self._class_of:
                self._aliases[node_id] = display
                return display, True
        alias = self._aliases.get(node_id)
        return (alias, True) if alias is not None else (None, False)

    def _running(self, target: str, value: float, maximum: float) -> None:
        if target in self._done:
            return
        self._current = target
        self._step = (value, maximum) if _is_number(value) and _is_number(maximum) else None
        fraction = _fraction(value, maximum)
        if fraction is not None and target in self._to_run:
            self._fraction[target] = max(self._fraction.get(target, 0.0), fraction)

    def _finish(self, target: str) -> None:
        if target not in self._to_run:
            return
        self._done.add(target)
        self._fraction.pop(target, None)
        if target == self._current:
            self._current, self._step = None, None


def node_weights_for(job_type: str, *, every_type: Mapping[str, float] | None = None,
                     by_type: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, float]:
    """Node-class weights of a job type: the defaults, then ``every_type``, then that type's table."""
    return {**DEFAULT_NODE_WEIGHTS, **(every_type or {}), **((by_type or {}).get(job_type) or {})}


# -- graph helpers ----------------------------------------------------------------------------
def _class_type(node: Any) -> str | None:
    class_type = node.get("class_type") if isinstance(node, Mapping) else None
    return class_type if isinstance(class_type, str) else None


def _links(node: Any, known: Mapping[str, Any]) -> list[str]:
    """Source node ids of a node's linked inputs (``[src_node_id, out_index]``)."""
    inputs = node.get("inputs") if isinstance(node, Mapping) else None
    if not isinstance(inputs, Mapping):
        return []
    sources = []
    for value in inputs.values():
        if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], (str, int)) \
                and not isinstance(value[0], bool) and str(value[0]) in known:
            sources.append(str(value[0]))
    return sources


def _sinks(inputs: Mapping[str, list[str]]) -> list[str]:
    consumed = {source for sources in inputs.values() for source in sources}
    sinks = [n for n in inputs if n not in consumed]
    return sinks or list(inputs)  # a graph that is one big cycle: run everything


def _upstream(outputs: Iterable[str], inputs: Mapping[str, list[str]]) -> list[str]:
    seen: dict[str, None] = {}
    stack = list(outputs)
    while stack:
        node_id = stack.pop()
        if node_id not in seen:
            seen[node_id] = None
            stack.extend(inputs.get(node_id, ()))
    return sorted(seen)


def _weight_of(class_type: str | None, weights: Mapping[str, float] | None) -> float:
    weight = DEFAULT_WEIGHT if weights is None or class_type is None else \
        weights.get(class_type, DEFAULT_WEIGHT)
    if not _is_number(weight) or weight < 0:
        raise ValueError(f"weight of {class_type!r} must be a finite number >= 0, got {weight!r}")
    return float(weight)


# -- value helpers ----------------------------------------------------------------------------
def _unpack(entry: NodeEntry) -> tuple[Any, Any, Any, str | None]:
    if hasattr(entry, "state"):
        return entry.value, entry.max, entry.state, getattr(entry, "display_node_id", None)
    value, maximum, state, *rest = entry
    return value, maximum, state, (rest[0] if rest else None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fraction(value: Any, maximum: Any) -> float | None:
    if not (_is_number(value) and _is_number(maximum)) or maximum <= 0:
        return None
    return min(max(value / maximum, 0.0), 1.0)


def _as_int(number: float | None) -> int | None:
    if number is None or not float(number).is_integer():
        return None
    return int(number)
