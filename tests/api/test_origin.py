"""A page on another site cannot make the operator's browser change anything here or read the
live feed; browsers on this server's own page, and clients that are not browsers, are untouched."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from comfyfleet.api.origin import same_site

from api_helpers import BASE_URL, WORKFLOW, error_code

EVIL = "http://evil.example"


async def test_a_cross_site_post_is_refused_and_stores_nothing(client, enqueued):
    body = json.dumps({"workflow": WORKFLOW})
    for path, content in (("/api/v2/jobs", body), ("/api/v2/backends", '{"url": "http://evil.example:8188"}')):
        response = await client.post(path, content=content, headers={"Origin": EVIL, "Content-Type": "text/plain"})
        assert response.status_code == 403 and error_code(response) == "forbidden", path
    assert enqueued == []
    for method in ("PATCH", "DELETE"):
        response = await client.request(method, "/api/v2/backends/gpu-1", headers={"Origin": EVIL})
        assert response.status_code == 403


async def test_same_site_pages_and_non_browsers_are_untouched(client):
    for headers in ({}, {"Origin": BASE_URL}, {"Origin": "https://fleet.example.test:443"}):
        response = await client.post("/api/v2/jobs", json={"workflow": WORKFLOW}, headers=headers)
        assert response.status_code == 201, headers
    reading = await client.get("/api/v2/jobs", headers={"Origin": EVIL})
    assert reading.status_code == 200, "a read changes nothing (and without CORS the page cannot read it)"


async def test_a_cross_site_websocket_is_refused(live_server):
    url = live_server.replace("http://", "ws://") + "/api/v2/live"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, origin=EVIL):
            pass
    assert refused.value.response.status_code == 403
    async with connect(url, origin=live_server) as socket:  # the dashboard itself
        assert json.loads(await socket.recv())["type"] == "snapshot"


@pytest.mark.parametrize(("origin", "host", "scheme", "same"), [
    ("http://127.0.0.1:8787", "127.0.0.1:8787", "http", True),
    ("http://localhost:8787", "localhost:8787", "http", True),
    ("http://LOCALHOST:8787", "localhost:8787", "http", True),
    ("http://127.0.0.1:8788", "127.0.0.1:8787", "http", False),
    ("http://127.0.0.1", "127.0.0.1:80", "http", True),
    ("https://fleet.example.test", "10.0.0.5:8787", "http", True),  # the public URL, behind a proxy
    ("http://fleet.example.test", "10.0.0.5:8787", "http", False),  # same host, other scheme
    ("null", "127.0.0.1:8787", "http", False),  # a sandboxed page or a file
    ("http://[::1", "127.0.0.1:8787", "http", False),
    ("http://127.0.0.1:8787", None, "http", False),
])
def test_what_counts_as_this_server(origin, host, scheme, same):
    assert same_site(origin, host, scheme, "https://fleet.example.test") is same


async def test_a_page_on_a_rebound_name_cannot_drive_a_keyless_server(client, enqueued, live_server):
    """A page whose DNS name was rebound to this server (same Host and Origin, a name that is
    neither localhost nor the public URL's) cannot submit, add a backend or open the live feed."""
    rebound = {"Host": "rebound.example:8787", "Origin": "http://rebound.example:8787"}
    for path, body in (("/api/v2/jobs", {"workflow": WORKFLOW}), ("/api/v2/backends", {"url": "http://evil.example:8188"})):
        response = await client.post(path, json=body, headers=rebound)
        assert response.status_code == 403 and error_code(response) == "forbidden", path
    assert enqueued == []
    sock = socket.create_connection(("127.0.0.1", urlsplit(live_server).port), timeout=10)
    with pytest.raises(InvalidStatus) as refused:  # addressed by the rebound name
        async with connect("ws://rebound.example:8787/api/v2/live", origin=rebound["Origin"], sock=sock):
            pass
    assert refused.value.response.status_code == 403
    local = {"Host": "localhost:8787", "Origin": "http://localhost:8787"}
    assert (await client.post("/api/v2/jobs", json={"workflow": WORKFLOW}, headers=local)).status_code == 201


@pytest.mark.parametrize(("origin", "host", "same"), [
    ("http://127.0.0.1:8787", "127.0.0.1:8787", True),
    ("http://[::1]:8787", "[::1]:8787", True),
    ("http://localhost:8787", "localhost:8787", True),
    ("http://dash.localhost:8787", "dash.localhost:8787", True),
    ("https://fleet.example.test", "fleet.example.test", True),  # the public URL's name
    ("http://gpu-box.lan:8787", "gpu-box.lan:8787", False),  # any other name could be rebound
])
def test_what_counts_as_this_server_without_api_keys(origin, host, same):
    assert same_site(origin, host, "http", "https://fleet.example.test", any_host_name=False) is same
    assert same_site(origin, host, "http", "https://fleet.example.test"), "with keys, any name"
