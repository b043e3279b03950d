"""``comfyfleet jobs`` and ``comfyfleet backends`` on an 80-column terminal: every job id and
backend URL is printed whole (a user copies them into the next command), no value is cut short
(a table that does not fit becomes one block a row), and ``--json`` prints what the API answered."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from comfyfleet import backends_cli, client_cli
from comfyfleet.backends_cli import manage_backends
from comfyfleet.client_cli import list_jobs, moment

from helpers.fleet import image_workflow, running_fleet


@pytest.fixture
def screen(monkeypatch) -> io.StringIO:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    monkeypatch.setattr(client_cli, "console", console)
    monkeypatch.setattr(backends_cli, "console", console)
    return out


def lines(screen: io.StringIO) -> list[str]:
    text = screen.getvalue()
    screen.seek(0)
    screen.truncate()
    return text.splitlines()


async def test_jobs_and_backends_fit_an_80_column_terminal_whole(valkey_url, tmp_path, screen):
    async with running_fleet(valkey_url, tmp_path / "data") as fleet:
        ids = [(await fleet.submit(image_workflow(2, seed=n)))["id"] for n in range(3)]
        for job_id in ids:
            await fleet.wait(job_id)

        await list_jobs(server=fleet.base_url, status=None, limit=10)
        shown = lines(screen)
        assert all(len(line) <= 80 and "…" not in line for line in shown)
        assert shown[0].split() == ["id", "status", "type", "done", "created"]
        for job_id in ids:
            row = next(line for line in shown if job_id in line)  # whole, on one line
            assert "succeeded" in row and "100%" in row

        await client_cli.cancel_job(ids[0], server=fleet.base_url)
        assert " ".join(" ".join(lines(screen)).split()) == f"job {ids[0]} had already ended (succeeded): nothing to cancel"
        failing = await fleet.submit(image_workflow(-1, seed=9))  # refused by the backend
        await fleet.wait(failing["id"])
        await list_jobs(server=fleet.base_url, status="failed", limit=10)
        shown = "\n".join(lines(screen))
        assert failing["id"] in shown and "error=invalid_workflow" in shown, "a listing with failures says why"
        ids_failed = [failing["id"]]

        await list_jobs(server=fleet.base_url, status=None, limit=10, as_json=True)
        listed = json.loads("\n".join(lines(screen)))
        assert sorted(job["id"] for job in listed) == sorted(ids + ids_failed)

        await manage_backends(server=fleet.base_url, add=[], capacity=1, tags=[], drain=[], disable=[],
                              enable=[], remove=[], as_json=False)
        shown = lines(screen)
        assert shown[0].split() == ["name", "url", "state", "load", "breaker", "VRAM", "ping", "nodes"], \
            "no backend has tags or models: no columns for them"
        for n, sim in enumerate(fleet.sims):
            row = next(line for line in shown if line.split() and line.split()[0] == f"sim-{n}")
            assert sim.url in row and "healthy" in row and "closed" in row and "…" not in row
            assert row.split()[-1] == str(len(sim.node_classes)), "the classes its /object_info lists"

        long_url = "http://gpu-box-with-a-long-name.internal.example:8188"
        await manage_backends(server=fleet.base_url, add=[f"gpu-far={long_url}"], capacity=2,
                              tags=["lora"], drain=[], disable=[], enable=[], remove=[], as_json=False)
        shown = lines(screen)
        assert all(len(line) <= 80 and "…" not in line for line in shown)
        at = shown.index(f"gpu-far  {long_url}")  # too wide for a table: a block each
        assert "load=0/2" in shown[at + 1] and "tags=lora" in shown[at + 1]
        assert f"sim-0  {fleet.sims[0].url}" in shown


def test_a_moment_is_a_time_today_and_a_date_before() -> None:
    from datetime import datetime, timezone

    today = datetime(2026, 12, 1, 15, 0, tzinfo=timezone.utc).astimezone()
    assert moment(today.isoformat(), today=today) == today.strftime("%H:%M:%S")
    before = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc).astimezone()
    assert moment(before.isoformat(), today=today) == before.strftime("%Y-%m-%d %H:%M")
    assert moment("not a time", today=today) == "not a time"
