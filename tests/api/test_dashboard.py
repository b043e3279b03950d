"""``/dashboard``: the page and its two files, under a CSP that allows no inline code, calling
only routes the API has."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from comfyfleet.api.dashboard import FILES


async def test_the_page_and_its_files_are_served_with_a_strict_policy(client):
    page = await client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    referenced = re.findall(r'(?:src|href)="(/dashboard/[^"]+)"', page.text)
    assert sorted(referenced) == ["/dashboard/app.css", "/dashboard/app.js"]
    for path in referenced:
        response = await client.get(path)
        assert response.status_code == 200 and response.content
        assert response.headers["content-type"] == FILES[path.rsplit("/", 1)[1]]
        assert response.headers["content-security-policy"] == policy
    assert (await client.head("/dashboard")).status_code == 200
    assert (await client.get("/dashboard/secrets.txt")).status_code == 404


async def test_the_page_has_no_inline_code_and_calls_only_routes_that_exist(client):
    page = (await client.get("/dashboard")).text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "an inline script would be blocked by the CSP"
    assert " style=" not in page and " on" not in re.sub(r"\s+", " ", page).replace(" one", ""), \
        "inline styles or handlers would be blocked by the CSP"
    script = (await client.get("/dashboard/app.js")).text
    assert "innerHTML" not in script, "server text goes in as text only"
    # each REST call of the page reaches its route (a path no route has answers "Not Found")
    assert '"/api/v2/backends/"' in script and '"/cancel"' in script
    patched = await client.patch("/api/v2/backends/gpu-1", json={"state": "draining"})
    canceled = await client.post("/api/v2/jobs/00000000-0000-4000-8000-000000000000/cancel")
    missing = await client.post("/api/v2/nowhere/gpu-1")
    assert missing.json()["error"]["message"] == "Not Found"
    for response in (patched, canceled):
        assert response.status_code == 404 and response.json()["error"]["message"] != "Not Found"
    assert '"/api/v2/live"' in script


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_script_parses():
    from comfyfleet.api.dashboard import _read

    result = subprocess.run(["node", "--check", "-"], input=_read("app.js"), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
