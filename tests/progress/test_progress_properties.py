"""Property tests of the progress model fed the way the tracker feeds it (``apply_message``).

``protocol_runs`` builds event orders ComfyUI can produce for a random graph: cached nodes,
nodes in dependency order, progress_state or legacy-only events, steps whose max may change,
expanded (ephemeral) nodes, events lost in a reconnect with its prompt-less replay, and an
ending in success, error or interrupt. ``any_messages`` is any order at all.
"""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfyfleet.comfy import messages as m
from comfyfleet.comfy.tracker import apply_message
from comfyfleet.domain.progress import CEILING, ProgressModel

P = "prompt"
CLASSES = ("EmptyImage", "KSampler", "VAEDecode", "LoraTrainer", "SaveImage")


@st.composite
def graphs(draw) -> dict:
    size = draw(st.integers(1, 7))
    graph = {}
    for i in range(1, size + 1):
        sources = draw(st.lists(st.integers(1, i - 1), max_size=2, unique=True)) if i > 1 else []
        inputs = {f"in{k}": [str(src), 0] for k, src in enumerate(sources)}
        graph[str(i)] = {"class_type": draw(st.sampled_from(CLASSES)), "inputs": inputs}
    return graph


def state_entry(node: str, value: float, maximum: float, state: str, display: str | None = None):
    return m.NodeProgress(node, value, maximum, state, display or node, display, node)


@st.composite
def protocol_runs(draw) -> tuple[dict, list[m.Message], bool]:
    graph = draw(graphs())
    legacy = draw(st.booleans())
    cached = draw(st.lists(st.sampled_from(sorted(graph)), unique=True))
    messages: list[m.Message] = [m.ExecutionStart(P), m.ExecutionCached(P, tuple(cached))]
    states: dict[str, m.NodeProgress] = {}

    def snapshot(node: str, value: float, maximum: float, state: str, display: str | None = None):
        states[node] = state_entry(node, value, maximum, state, display)
        if not legacy:
            messages.append(m.ProgressState(P, MappingProxyType(dict(states))))

    for node in sorted(graph, key=int):  # ids ascend along every link: a valid order
        if node in cached:
            continue
        snapshot(node, 0, 1, "running")
        messages.append(m.Executing(P, node, node))
        emitters = [(node, None)]
        if draw(st.booleans()):
            emitters += [(f"{node}.0.{k}", node) for k in range(draw(st.integers(1, 3)))]
        for emitter, display in emitters:
            if display is not None:
                snapshot(emitter, 0, 1, "running", display)
                messages.append(m.Executing(P, emitter, display))
            maximum = draw(st.integers(1, 30))
            for value in draw(st.lists(st.integers(0, 40), max_size=6)):
                if draw(st.booleans()):
                    maximum = draw(st.integers(1, 40))  # update_absolute(value, total)
                snapshot(emitter, value, maximum, "running", display)
                messages.append(m.ProgressMessage(P, emitter, value, maximum))
            if display is not None:
                snapshot(emitter, maximum, maximum, "finished", display)
        messages.append(m.Executed(P, node, node, {}))
        snapshot(node, 1, 1, "finished")
    ending = draw(st.sampled_from(["success", "error", "interrupted"]))
    if ending != "success" and len(messages) > 2:
        messages = messages[:draw(st.integers(2, len(messages)))]
    if draw(st.booleans()) and len(messages) > 3:  # a reconnect: some events lost, then the replay
        start = draw(st.integers(2, len(messages) - 1))
        lost = draw(st.integers(1, len(messages) - start))
        running = [msg.node for msg in messages[:start + lost]
                   if isinstance(msg, m.Executing) and msg.node is not None]
        replay = [m.Executing(None, running[-1])] if running else []
        messages = messages[:start] + replay + messages[start + lost:]
    return graph, messages, ending == "success"


def replay(graph: dict, messages: list[m.Message], succeeded: bool, weights=None) -> list:
    model = ProgressModel(graph, weights=weights)
    snapshots = [model.snapshot()]
    for message in messages:
        apply_message(model, message)
        snapshots.append(model.snapshot())
    if succeeded:
        model.succeeded()
        snapshots.append(model.snapshot())
    return snapshots


weights_tables = st.none() | st.dictionaries(st.sampled_from(CLASSES),
                                             st.floats(0, 50, allow_nan=False), max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(protocol_runs(), weights_tables)
def test_protocol_orders_give_monotonic_progress_within_bounds(run, weights):
    graph, messages, succeeded = run
    snapshots = replay(graph, messages, succeeded, weights)
    values = [s.value for s in snapshots]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values)
    assert all(v <= CEILING for v in values[:-1])  # 1.0 never before the confirmed success
    if succeeded:
        last = snapshots[-1]
        assert (last.value, last.nodes_done, last.current_node) == (1.0, last.nodes_total, None)
    else:
        assert values[-1] <= CEILING
    assert all(s.nodes_done <= s.nodes_total == len(graph) for s in snapshots)


node_ids = st.sampled_from(["1", "2", "3", "4", "9", "2.0.1", "x"]) | st.none()
numbers = st.integers(-5, 50) | st.floats(-5, 50, allow_nan=False)
node_progress = st.builds(lambda n, v, mx, s, d: state_entry(n, v, mx, s, d),
                          st.sampled_from(["1", "2", "3", "2.0.1", "7"]), numbers, numbers,
                          st.sampled_from(["running", "finished", "pending", "error"]), node_ids)
any_message = st.one_of(
    st.builds(m.ExecutionCached, st.just(P), st.lists(st.sampled_from(["1", "2", "3", "8"])).map(tuple)),
    st.builds(m.Executing, st.just(P), node_ids, node_ids),
    st.builds(m.ProgressMessage, st.just(P), node_ids, numbers, numbers),
    st.builds(lambda entries: m.ProgressState(P, MappingProxyType({e.node_id: e for e in entries})),
              st.lists(node_progress, max_size=4)),
    st.builds(m.Executed, st.just(P), node_ids, node_ids, st.just({})),
)


@settings(max_examples=300, deadline=None)
@given(graphs(), st.lists(any_message, max_size=40))
def test_any_order_stays_monotonic_below_one(graph, messages):
    values = [s.value for s in replay(graph, messages, succeeded=False)]
    assert values == sorted(values) and all(0.0 <= v <= CEILING for v in values)
