"""The CLI answers bad configuration with one plain, actionable line and exit code 1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from helpers.fleet import free_port


def comfyfleet(*argv: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "comfyfleet", *argv], capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


def assert_plain_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("comfyfleet: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize("backend", ["ftp://gpu-1:8188", "http://", "not a url"])
def test_bad_backend_url(backend, tmp_path):
    result = comfyfleet("serve", "--backend", backend, "--data-dir", str(tmp_path),
                        "--port", str(free_port()))
    assert_plain_error(result, "backend")


def test_bad_redis_url(tmp_path):
    result = comfyfleet("api", "--redis-url", "http://localhost:6379", "--port", str(free_port()))
    assert_plain_error(result, "redis")


def test_unreachable_redis(tmp_path):
    closed = free_port()  # nothing listens here
    result = comfyfleet("api", "--redis-url", f"redis://127.0.0.1:{closed}/0", "--port",
                        str(free_port()))
    assert_plain_error(result, f"127.0.0.1:{closed}")


def test_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = comfyfleet("serve", "--backend", "http://127.0.0.1:9", "--data-dir",
                            str(tmp_path), "--port", str(port))
    assert_plain_error(result, str(port), "--port")


def test_worker_without_redis_url_says_what_to_do():
    result = comfyfleet("worker", "--backend", "http://127.0.0.1:9")
    assert_plain_error(result, "--redis-url")


def test_submit_of_a_missing_file(tmp_path):
    result = comfyfleet("submit", str(tmp_path / "nope.json"), "--server", "http://127.0.0.1:9")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout


def test_submit_to_a_server_that_is_not_there(tmp_path):
    workflow = tmp_path / "wf.json"
    workflow.write_text('{"1": {"class_type": "EmptyImage", "inputs": {}}}')
    result = comfyfleet("submit", str(workflow), "--server", f"http://127.0.0.1:{free_port()}")
    assert_plain_error(result)


@pytest.mark.parametrize("raw", ["gpu-1=http://127.0.0.1:1, http://127.0.0.1:2",
                                 '["gpu-1=http://127.0.0.1:1", "http://127.0.0.1:2"]'])
def test_backends_from_the_environment_as_a_comma_list_or_json(raw, monkeypatch):
    from comfyfleet.config import Settings

    monkeypatch.setenv("COMFYFLEET_BACKENDS", raw)
    configs = Settings().backend_configs()
    assert [(c.name, c.url) for c in configs][0] == ("gpu-1", "http://127.0.0.1:1")
    assert configs[1].url == "http://127.0.0.1:2"


def test_serve_with_a_backend_list_in_the_environment_that_is_not_json(tmp_path):
    result = subprocess.run([sys.executable, "-m", "comfyfleet", "serve", "--data-dir", str(tmp_path),
                             "--port", str(free_port())], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COMFYFLEET_BACKENDS": "[not json"})
    assert_plain_error(result, "backends")


async def test_serve_without_any_backend_says_how_to_add_one(tmp_path):
    from helpers.processes import Child

    serve = Child(["comfyfleet", "serve", "--data-dir", str(tmp_path), "--port", str(free_port())],
                  tmp_path / "serve.log")
    try:
        await serve.wait_for("no ComfyUI backend is registered", timeout_s=60)
        assert "POST /api/v2/backends" in serve.output()
    finally:
        await serve.stop()
        serve.kill()


def test_help_shows_the_table_names_and_the_simulators_options_and_faults():
    serve = comfyfleet("serve", "--help")
    assert "[[backends]]" in serve.stdout and "[[keys]]" in serve.stdout, serve.stdout
    sim = comfyfleet("sim", "--help")
    assert sim.returncode == 0 and "--step-s" in sim.stdout and "/sim/faults" in sim.stdout, sim.stdout
