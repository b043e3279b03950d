"""The tracker against a real simulator: socket first, watchdog, fallback, return, reattach."""

from __future__ import annotations

import asyncio
import uuid

from comfyfleet.comfy.socket import SocketOpening, SocketSettings, open_socket

from progress_helpers import RecordingListener, polls, workflow


def assert_monotonic(listener: RecordingListener) -> None:
    values = listener.values
    assert values == sorted(values) and all(0.0 <= v <= 1.0 for v in values)
    assert [v for v in values if v == 1.0] == [values[-1]] == [1.0]


async def test_healthy_socket_needs_no_polling_and_one_history_read(rig):
    """Healthy socket: every step arrives on it, only the confirmation reads /history."""
    graph, client_id, listener = workflow(20), str(uuid.uuid4()), RecordingListener()
    tracker = rig.tracker("", client_id, graph, listener)
    assert await tracker.connect()
    tracker.prompt_id = await rig.submit(graph, client_id)
    outcome = await tracker.follow()
    assert outcome.kind == "success"
    assert rig.sim.requests["GET /queue"] == 0
    assert polls(rig.sim) == 1 == tracker.counters.history_requests
    assert tracker.counters.as_dict() | {"events_received": 0} == {
        "socket_connects": 1, "socket_failures": 0, "socket_renewals": 0, "events_received": 0,
        "poll_requests": 0, "fallback_episodes": 0, "socket_returns": 0, "history_requests": 1}
    assert {s.step for s in listener.snapshots if s.current_node == "2"} >= set(range(1, 21))
    assert_monotonic(listener)


async def test_dropped_socket_falls_back_then_returns(rig):
    """Socket drop mid-run: poll, reconnect under the same client_id, back to the socket."""
    graph, client_id, listener = workflow(20, drop_socket_at_step=6), str(uuid.uuid4()), RecordingListener()
    tracker = rig.tracker("", client_id, graph, listener)
    await tracker.connect()
    tracker.prompt_id = await rig.submit(graph, client_id)
    outcome = await tracker.follow()
    assert outcome.kind == "success" and list(outcome.history.outputs) == ["3"]
    c = tracker.counters
    assert (c.socket_failures, c.fallback_episodes, c.socket_returns) == (1, 1, 1)
    assert c.socket_connects == 2 and c.poll_requests >= 1
    assert max(s.step or 0 for s in listener.snapshots) == 20  # live steps after the return
    assert_monotonic(listener)


async def test_deaf_socket_is_renewed_after_the_watchdog(rig):
    """Silent socket (trace 06b): watchdog, /queue says running, close and open a fresh one."""
    graph, client_id, listener = workflow(20, deafen_socket_at_step=5), str(uuid.uuid4()), RecordingListener()
    tracker = rig.tracker("", client_id, graph, listener, watchdog_s=0.25)
    await tracker.connect()
    tracker.prompt_id = await rig.submit(graph, client_id)
    outcome = await tracker.follow()
    assert outcome.kind == "success"
    c = tracker.counters
    assert c.socket_renewals >= 1 and c.fallback_episodes >= 1 and c.socket_returns >= 1
    assert c.socket_connects >= 2 and c.poll_requests >= 1
    assert max(s.step or 0 for s in listener.snapshots) == 20  # live again after the renewal
    assert_monotonic(listener)


async def test_duplicate_client_id_trap_for_real(rig):
    """A lingering socket of a dead worker closes after the reattached one opened: the new
    socket goes deaf (the server pops its sid); the watchdog renews it and progress resumes."""
    graph, client_id = workflow(30), str(uuid.uuid4())
    lingering = await open_socket(rig.client.ws_url(client_id), client_id=client_id, backend="old",
                                  settings=SocketSettings(preview_metadata=False))
    prompt_id = await rig.submit(graph, client_id)
    listener = RecordingListener()
    tracker = rig.tracker(prompt_id, client_id, graph, listener, watchdog_s=0.25)
    assert await tracker.connect()  # replaces the lingering socket in the server's table
    follow = asyncio.create_task(tracker.follow())
    await listener.wait_for_step(3)
    await lingering.close()  # ... whose close now removes the new socket: deaf
    outcome = await follow
    assert outcome.kind == "success"
    assert tracker.counters.socket_renewals >= 1 and tracker.counters.socket_returns >= 1
    assert max(s.step or 0 for s in listener.snapshots) == 30
    assert_monotonic(listener)


async def test_reattach_opens_the_recorded_client_id_and_progress_resumes(rig):
    """A worker that dies mid-run: the next one tracks the same prompt under the recorded
    client_id and gets live progress (the server routes by client_id)."""
    graph, client_id = workflow(30), str(uuid.uuid4())
    first_listener = RecordingListener()
    first = rig.tracker("", client_id, graph, first_listener)
    await first.connect()
    first.prompt_id = await rig.submit(graph, client_id)
    following = asyncio.create_task(first.follow())
    await first_listener.wait_for_step(5)
    following.cancel()  # the worker dies: its socket goes away with it
    await asyncio.gather(following, return_exceptions=True)
    step_at_death = max(s.step or 0 for s in first_listener.snapshots)

    listener = RecordingListener()
    second = rig.tracker(first.prompt_id, client_id, graph, listener)
    assert await second.connect()
    assert [c.sid for c in rig.sim.hub.connections] == [client_id]
    outcome = await second.follow()
    assert outcome.kind == "success"
    live_steps = [s.step for s in listener.snapshots if s.step]
    assert len(set(live_steps)) >= 10 and min(live_steps) > step_at_death - 1
    assert second.counters.fallback_episodes == 0 and polls(rig.sim) == 1
    assert listener.started == 1 and listener.snapshots[0].current_node == "2"  # the replay
    assert_monotonic(listener)


async def test_waiting_in_the_servers_queue_is_not_a_fallback(rig):
    """Silence while our prompt is pending behind another one is expected: probe, keep the socket."""
    blocker_client = str(uuid.uuid4())
    await rig.submit(workflow(80), blocker_client)  # 2.4 s: the watchdog runs out while we wait
    graph, client_id, listener = workflow(3), str(uuid.uuid4()), RecordingListener()
    tracker = rig.tracker("", client_id, graph, listener, watchdog_s=0.8)
    await tracker.connect()
    tracker.prompt_id = await rig.submit(graph, client_id)
    outcome = await tracker.follow()
    assert outcome.kind == "success"
    assert tracker.counters.fallback_episodes == 0 and tracker.counters.poll_requests >= 1
    assert_monotonic(listener)


async def test_slow_history_write_is_confirmed_once(rig):
    """The history race: the terminal event precedes the history entry; wait for the marker."""
    graph, client_id, listener = workflow(3, history_delay_s=0.4), str(uuid.uuid4()), RecordingListener()
    tracker = rig.tracker("", client_id, graph, listener)
    await tracker.connect()
    tracker.prompt_id = await rig.submit(graph, client_id)
    outcome = await tracker.follow()
    assert outcome.kind == "success" and outcome.history.outputs
    assert tracker.counters.history_requests == 1 and tracker.counters.poll_requests == 0


async def test_legacy_events_only(rig):
    """A server without progress_state: progress from executing/progress/executed alone."""
    rig.sim.faults.legacy_events = True
    graph, client_id, listener = workflow(10), str(uuid.uuid4()), RecordingListener()
    tracker = rig.tracker("", client_id, graph, listener)
    await tracker.connect()
    tracker.prompt_id = await rig.submit(graph, client_id)
    assert (await tracker.follow()).kind == "success"
    assert {s.step for s in listener.snapshots if s.step} == set(range(1, 11))
    assert len(set(listener.values)) >= 12
    assert_monotonic(listener)


async def test_expanded_nodes_count_toward_their_display_node(rig):
    """Node expansion: ids the graph lacks move their display node, never past it."""
    graph, client_id, listener = workflow(12, expand_nodes=3), str(uuid.uuid4()), RecordingListener()
    tracker = rig.tracker("", client_id, graph, listener)
    await tracker.connect()
    tracker.prompt_id = await rig.submit(graph, client_id)
    assert (await tracker.follow()).kind == "success"
    assert {s.nodes_total for s in listener.snapshots} == {3}
    assert {s.current_node for s in listener.snapshots} <= {None, "1", "2", "3"}
    assert len(set(listener.values)) >= 8
    assert_monotonic(listener)


async def test_fully_cached_rerun_reports_one(rig):
    """A re-run with every node cached sends no ``executing``: still 1.0 and success."""
    graph = workflow(4, seed=5)
    for run in range(2):
        client_id, listener = str(uuid.uuid4()), RecordingListener()
        tracker = rig.tracker("", client_id, graph, listener)
        await tracker.connect()
        tracker.prompt_id = await rig.submit(graph, client_id)
        outcome = await tracker.follow()
        assert outcome.kind == "success" and outcome.history.outputs
    assert listener.values == [0.999, 1.0]  # all cached at once, then confirmed
    assert all(s.current_node is None for s in listener.snapshots)
    assert listener.snapshots[-1].nodes_done == 3


async def test_previews_type_1_and_type_4(rig):
    """Previews arrive as type 4 (with ids) when negotiated, else as anonymous type 1."""
    for metadata in (True, False):
        graph = workflow(4, send_preview=True)
        client_id, listener = str(uuid.uuid4()), RecordingListener()
        tracker = rig.tracker("", client_id, graph, listener,
                              socket=SocketSettings(preview_metadata=metadata))
        await tracker.connect()
        tracker.prompt_id = await rig.submit(graph, client_id)
        assert (await tracker.follow()).kind == "success"
        assert len(listener.previews) == 4
        assert {(t, data[:2], node) for t, data, node in listener.previews} == \
            {("image/jpeg", b"\xff\xd8", "2")}


async def test_polling_only_when_no_socket_can_be_opened(rig):
    """No socket at all: the outcome still comes from /queue and /history polling."""
    graph, client_id, listener = workflow(5), str(uuid.uuid4()), RecordingListener()
    tracker = rig.tracker("", client_id, graph, listener)
    tracker.client_id = client_id
    tracker.prompt_id = await rig.submit(graph, client_id)
    rig.client.ws_url = lambda _cid: rig.sim.url.replace("http", "ws") + "/no-such-socket"
    outcome = await tracker.follow()
    assert outcome.kind == "success"
    assert tracker.counters.fallback_episodes == 1 and tracker.counters.socket_connects == 0
    assert tracker.counters.socket_failures >= 1 and polls(rig.sim) >= 2


async def test_the_socket_goes_straight_to_the_server_like_the_http_client(rig, monkeypatch):
    """A proxy in the environment is not used (the HTTP client does not use it either), and
    the socket is opened without compression."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    client_id = str(uuid.uuid4())
    socket = await open_socket(rig.client.ws_url(client_id), client_id=client_id, backend="sim-p",
                               settings=SocketSettings(preview_metadata=False))
    try:
        assert socket._connection.response.headers.get("Sec-WebSocket-Extensions") is None
    finally:
        await socket.close()


async def test_a_socket_opened_ahead_serves_the_first_connect_and_is_closed_when_not_taken(rig):
    """The runner opens the prompt's socket while it writes the attempt ahead: the tracker's
    first connect takes that socket (one connection, not two); an attempt that ends before it
    connects leaves no socket open on the server."""
    graph, client_id, listener = workflow(5), str(uuid.uuid4()), RecordingListener()
    opening = SocketOpening(rig.client.ws_url(client_id), client_id=client_id, backend="sim-p")
    tracker = rig.tracker("", client_id, graph, listener, opener=opening.opener)
    assert await tracker.connect()
    tracker.prompt_id = await rig.submit(graph, client_id)
    assert (await tracker.follow()).kind == "success"
    await opening.discard()  # taken: nothing to do
    assert rig.sim.requests["WS connect"] == 1

    unused = SocketOpening(rig.client.ws_url("nobody"), client_id="nobody", backend="sim-p")
    async with asyncio.timeout(10):
        while not rig.sim.hub.table.get("nobody"):
            await asyncio.sleep(0.01)  # open on the server
        await unused.discard()
        while rig.sim.hub.connections:
            await asyncio.sleep(0.01)
