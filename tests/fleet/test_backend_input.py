"""One bad backend entry must never end the health checks of the whole fleet.

A URL whose host does not encode (``http://gpu9..lan:8188``, a label over 63 characters) or a
header value with a newline (a token read from a file) made aiohttp raise UnicodeError /
ValueError on every request to that backend; the health check caught only backend errors, so the
exception ended the health task of every process that checked it, silently: every other backend
then kept its last state forever (one that went down was still sent work). The same happened
when ``/system_stats`` answered ``"n/a"`` where a number goes.

So: every path that accepts a backend (``--backend`` / ``COMFYFLEET_BACKENDS``, the fleet file,
``POST`` and ``PATCH /api/v2/backends``) refuses such input with a plain message or a 422; a
record stored before these checks reads down with a backend error saying what is wrong; and a
check that raises anything unforeseen reads that backend down while the others go on being
checked.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.config import Settings, parse_backends
from comfyfleet.errors import ConfigError
from comfyfleet.fleetfile import load_fleet_file
from comfyfleet.store.fleet import BackendRecord, FleetStore
from helpers.fleet import Fleet, running_fleet

TYPO_HOST = "http://gpu9..lan:8188"
LONG_LABEL = f"http://{'a' * 64}.lan:8188"

# (url, words the message must hold)
BAD_URLS = [
    (TYPO_HOST, "has an empty label"),
    (LONG_LABEL, "has a label over 63 characters"),
    ("http://.lan:8188", "has an empty label"),
    ("http://gpu 9.lan:8188", "has a space or a control character"),
]
# (headers, words the message must hold)
BAD_HEADERS = [
    ({"Authorization": "Bearer s3cr3t\n"}, "holds a line feed (LF) (a token read from a file with its newline?)"),
    ({"Authorization": "Bearer\r\ns3cr3t"}, "holds a carriage return (CR)"),
    ({"X-Key": "a\x00b"}, "holds a NUL"),
    ({"X-Key": "a\x7fb"}, "holds the control character U+007F"),
    ({"Bad Header": "x"}, "header name 'Bad Header' is not a valid HTTP header name"),
    ({"A:B": "x"}, "header name 'A:B' is not a valid HTTP header name"),
    ({"": "x"}, "header name '' is not a valid HTTP header name"),
]
GOOD_URLS = ["http://gpu-9.lan.:8188", "http://gpu_9:8188", "http://[::1]:8188", "https://gpu.example.com/comfy"]
GOOD_HEADERS = {"Authorization": "Bearer tok", "X-Tabbed": "a\tb", "X-Accented": "café"}


# -- configuration: --backend, COMFYFLEET_BACKENDS, the fleet file ------------------------------


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
def test_backend_and_its_environment_variable_refuse_a_host_that_does_not_encode(url, why, monkeypatch):
    with pytest.raises(ConfigError) as caught:
        parse_backends([f"gpu-9={url}"])
    assert str(caught.value).startswith(f"backend URL {url!r} ") and why in str(caught.value)
    monkeypatch.setenv("COMFYFLEET_BACKENDS", f"gpu-9={url}")
    with pytest.raises(ConfigError) as caught:
        Settings().backend_configs()
    assert f"backend URL {url!r}" in str(caught.value) and why in str(caught.value)


def toml_table(values: dict[str, str]) -> str:
    """An inline TOML table; JSON's string escapes (\\n, \\r, \\u0000) are TOML's too."""
    return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in values.items()) + " }"


def fleet_file_refusal(tmp_path, backend_lines: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(the file's path, the message) a fleet file with one such backend is refused with."""
    path = tmp_path / "fleet.toml"
    path.write_text(f'[[backends]]\nname = "gpu-9"\n{backend_lines}')
    with pytest.raises(ConfigError) as caught:
        load_fleet_file(path)
    return str(path), str(caught.value)


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
def test_the_fleet_file_refuses_a_host_that_does_not_encode(url, why, tmp_path):
    path, message = fleet_file_refusal(tmp_path, f"url = {json.dumps(url)}\n")
    assert message.startswith(f"{path}: backends[0]: url {url!r} ") and why in message


@pytest.mark.parametrize(("headers", "why"), BAD_HEADERS)
def test_the_fleet_file_refuses_a_header_that_cannot_be_sent(headers, why, tmp_path):
    path, message = fleet_file_refusal(
        tmp_path, f'url = "http://10.0.0.9:8188"\nheaders = {toml_table(headers)}\n')
    assert f"{path}: backends[0]: " in message and why in message
    assert "s3cr3t" not in message  # a header's value (a secret) is never shown


def test_usable_hosts_and_headers_are_still_accepted(tmp_path):
    assert [c.url for c in parse_backends(GOOD_URLS)] == [u.rstrip("/") for u in GOOD_URLS]
    path = tmp_path / "fleet.toml"
    path.write_text(f'[[backends]]\nname = "gpu-9"\nurl = "http://gpu-9.lan.:8188"\n'
                    f'headers = {toml_table(GOOD_HEADERS)}\n')
    assert load_fleet_file(path).backends[0].headers == GOOD_HEADERS


# -- POST and PATCH /api/v2/backends -------------------------------------------------------------


async def listing(fleet: Fleet) -> dict[str, dict[str, Any]]:
    response = await fleet.http.get("/api/v2/backends")
    assert response.status_code == 200, response.text
    return {b["name"]: b for b in response.json()["backends"]}


def assert_refused(response, field: str, why: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == "invalid_request" and why in error["message"], error
    assert error["details"] == {"field": field}, error


async def test_the_api_refuses_a_bad_host_or_header_and_registers_nothing(valkey_url, tmp_path):
    async with running_fleet(valkey_url, tmp_path, sims=1, health_interval_s=600.0) as fleet:
        sim_url = fleet.sims[0].url
        before = (await listing(fleet))["sim-0"]
        for url, why in BAD_URLS:
            response = await fleet.http.post("/api/v2/backends", json={"name": "gpu-9", "url": url})
            assert_refused(response, "url", why)
            response = await fleet.http.patch("/api/v2/backends/sim-0", json={"url": url})
            assert_refused(response, "url", why)
        for headers, why in BAD_HEADERS:
            response = await fleet.http.post("/api/v2/backends", json={"name": "gpu-9", "url": "http://127.0.0.1:9",
                                                                       "headers": headers})
            assert_refused(response, "headers", why)
            response = await fleet.http.patch("/api/v2/backends/sim-0", json={"headers": headers})
            assert_refused(response, "headers", why)
        after = await listing(fleet)
        assert list(after) == ["sim-0"]  # nothing registered
        assert after["sim-0"]["url"] == sim_url and after["sim-0"]["headers"] == before["headers"] == []
        assert (await fleet.services.fleet.get("sim-0")).headers == {}  # nothing changed either

        fine = await fleet.http.patch("/api/v2/backends/sim-0", json={"headers": GOOD_HEADERS})
        assert fine.status_code == 200 and fine.json()["headers"] == sorted(GOOD_HEADERS), fine.text


# -- health checks ---------------------------------------------------------------------------------


@pytest.fixture
async def odd_server() -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A ComfyUI stand-in: answers ``/system_stats`` with ``body["stats"]`` (raw JSON text, set by
    the test) and ``/queue`` with an empty queue. Yields its URL and ``body``."""
    body = {"stats": '{"system": {}, "devices": []}'}

    async def stats(request: web.Request) -> web.Response:
        return web.Response(text=body["stats"], content_type="application/json")

    async def queue(request: web.Request) -> web.Response:
        return web.json_response({"queue_running": [], "queue_pending": []})

    async def object_info(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/system_stats", stats)
    app.router.add_get("/queue", queue)
    app.router.add_get("/object_info", object_info)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", body
    finally:
        await runner.cleanup()


async def until(fleet: Fleet, what: str, seen: Callable[[dict[str, dict[str, Any]]], bool],
                timeout_s: float = 8.0) -> dict[str, dict[str, Any]]:
    """The backends' listing once ``seen`` holds of it; fails naming ``what`` after ``timeout_s``."""
    listed: dict[str, dict[str, Any]] = {}
    try:
        async with asyncio.timeout(timeout_s):
            while not seen(listed := await listing(fleet)):
                await asyncio.sleep(0.05)
    except TimeoutError:
        task = fleet.services.dispatcher.health._task
        pytest.fail(f"{what}: not seen in {timeout_s} s (health task ended: {task is None or task.done()});"
                    f" backends: {json.dumps({n: (b['state'], b['health']) for n, b in listed.items()})}")
    return listed


async def a_second_backend_going_down_is_seen(fleet: Fleet) -> None:
    """sim-1 stops answering: health checks (still running) read it down."""
    await until(fleet, "sim-1 read healthy first", lambda b: b["sim-1"]["state"] == "healthy")
    await fleet.sims[1].set_refusing(True)
    await until(fleet, "sim-1 read down once it refused connections", lambda b: b["sim-1"]["state"] == "down")


UNKNOWN = None


@pytest.mark.parametrize(("stats", "read"), [
    ('{"system": {"ram_total": "n/a", "ram_free": 5}, "devices": [{"vram_total": "n/a", "vram_free": "n/a"}]}',
     (UNKNOWN, UNKNOWN, UNKNOWN, 5)),
    ('{"system": {"ram_total": 8, "ram_free": [1]}, "devices": 5}', (UNKNOWN, UNKNOWN, 8, UNKNOWN)),
    ('{"system": {"ram_total": 1e400, "ram_free": 5}, "devices": [{"vram_total": 1e400, "vram_free": 3}]}',
     (UNKNOWN, 3, UNKNOWN, 5)),
], ids=["n/a", "devices-5", "1e400"])
async def test_system_stats_with_numbers_that_are_not_is_read_as_unknown_and_checks_go_on(
        valkey_url, tmp_path, odd_server, stats, read):
    url, body = odd_server
    body["stats"] = stats
    async with running_fleet(valkey_url, tmp_path, sims=2, health_interval_s=0.3) as fleet:
        added = await fleet.http.post("/api/v2/backends", json={"name": "odd", "url": url})
        assert added.status_code == 201, added.text
        listed = await until(fleet, "odd checked", lambda b: b["odd"]["health"]["checked_at"] is not None)
        health = listed["odd"]["health"]
        assert listed["odd"]["state"] == "healthy", health
        assert (health["vram_total"], health["vram_free"], health["ram_total"], health["ram_free"]) == read
        await a_second_backend_going_down_is_seen(fleet)
        checked = listed["odd"]["health"]["checked_at"]
        await until(fleet, "odd checked again", lambda b: b["odd"]["health"]["checked_at"] > checked)


async def test_a_check_that_raises_anything_reads_that_backend_down_and_the_others_go_on(
        valkey_url, tmp_path, odd_server, monkeypatch, caplog):
    """odd's probe raises an error nobody foresaw: odd reads down, logged under its name. odder's
    check raises before it probes (in its claim): nothing to record, but logged too. Either used
    to end the health task, and every other backend kept the state it had."""
    url, _ = odd_server
    probe, claim = ComfyClient.system_stats, FleetStore.claim_check

    async def system_stats(self: ComfyClient) -> dict[str, Any]:
        if self.name == "odd":
            raise RuntimeError("a bug nobody foresaw")
        return await probe(self)

    async def claim_check(self: FleetStore, name: str, *args: Any, **kwargs: Any) -> bool:
        if name == "odder":
            raise RuntimeError("another bug nobody foresaw")
        return await claim(self, name, *args, **kwargs)

    monkeypatch.setattr(ComfyClient, "system_stats", system_stats)
    monkeypatch.setattr(FleetStore, "claim_check", claim_check)
    caplog.set_level(logging.WARNING, logger="comfyfleet.runtime.health")
    async with running_fleet(valkey_url, tmp_path, sims=2, health_interval_s=0.3) as fleet:
        for name, where in (("odd", url), ("odder", f"{url}/odder")):
            added = await fleet.http.post("/api/v2/backends", json={"name": name, "url": where})
            assert added.status_code == 201, added.text
        listed = await until(fleet, "odd read down", lambda b: b["odd"]["state"] == "down")
        assert "RuntimeError: a bug nobody foresaw" in listed["odd"]["health"]["error"]
        await a_second_backend_going_down_is_seen(fleet)
        failures = listed["odd"]["health"]["consecutive_failures"]
        listed = await until(fleet, "odd checked again",
                             lambda b: b["odd"]["health"]["consecutive_failures"] > failures)
    logged = [(r.getMessage(), r.exc_text or "") for r in caplog.records if r.name == "comfyfleet.runtime.health"]
    assert any("backend odd:" in m and "RuntimeError" in m for m, _ in logged), logged
    assert any("backend odder:" in m and "another bug nobody foresaw" in m + trace for m, trace in logged), logged


async def test_a_backend_stored_with_a_bad_host_or_header_reads_down_saying_why(valkey_url, tmp_path, odd_server):
    """Records stored before the input checks (or by anything that skips them) reach the
    transport: each reads down with a backend error naming the problem, and the rest of the fleet
    is checked as before."""
    url, _ = odd_server
    async with running_fleet(valkey_url, tmp_path, sims=2, health_interval_s=0.3) as fleet:
        await fleet.services.fleet.add(BackendRecord(name="typo", url=TYPO_HOST))
        await fleet.services.fleet.add(BackendRecord(name="newline", url=url,
                                                     headers={"Authorization": "Bearer tok\n"}))
        listed = await until(fleet, "typo and newline read down",
                             lambda b: b["typo"]["state"] == b["newline"]["state"] == "down")
        assert "typo: its URL's host is not a valid host name" in listed["typo"]["health"]["error"]
        assert "newline: the request cannot be sent" in listed["newline"]["health"]["error"]
        await a_second_backend_going_down_is_seen(fleet)
        # each can be fixed through the API: PATCH checks what it is given, not what was stored
        disabled = await fleet.http.patch("/api/v2/backends/typo", json={"state": "disabled"})
        assert disabled.status_code == 200 and disabled.json()["admin_state"] == "disabled", disabled.text
        moved = await fleet.http.patch("/api/v2/backends/typo", json={"url": "http://gpu9.lan:8188"})
        assert moved.status_code == 200 and moved.json()["url"] == "http://gpu9.lan:8188", moved.text
        fixed = await fleet.http.patch("/api/v2/backends/newline", json={"headers": {"Authorization": "Bearer tok"}})
        assert fixed.status_code == 200, fixed.text
        await until(fleet, "newline read healthy once fixed", lambda b: b["newline"]["state"] == "healthy")
