"""What ``comfyfleet submit|jobs|cancel`` do: plain HTTP calls to a comfyfleet server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import ComfyFleetError

TERMINAL = {"succeeded", "failed", "canceled", "expired"}
console = Console()


def load_workflow(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ComfyFleetError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ComfyFleetError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ComfyFleetError(f"{path} is not JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]  # a saved POST /prompt body
    if not isinstance(data, dict):
        raise ComfyFleetError(f"{path} does not hold an API-format workflow (a JSON object of nodes)")
    return data


def _client(server: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.rstrip("/"), timeout=httpx.Timeout(30.0, connect=5.0))


async def _call(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = await client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise ComfyFleetError(f"cannot reach comfyfleet at {client.base_url} ({type(exc).__name__})") from None
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise ComfyFleetError(f"{method} {path} failed with HTTP {response.status_code}: {message}")
    return response.json()


async def submit_workflow(path: Path, *, server: str, wait: bool, metadata: list[str], out: Path) -> None:
    workflow = load_workflow(path)
    meta = {}
    for pair in metadata:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ComfyFleetError(f"--meta takes key=value, got {pair!r}")
        meta[key] = value
    async with _client(server) as client:
        job = await _call(client, "POST", "/api/v2/jobs", json={"workflow": workflow, "metadata": meta})
        console.print(f"job {job['id']} {job['status']}")
        if not wait:
            return
        job = await follow(client, job)
        report(job)
        if job["status"] == "succeeded":
            for path_ in await download_outputs(client, job, out):
                console.print(f"  output: {path_}")
        else:
            raise ComfyFleetError(f"job {job['id']} ended {job['status']}")


async def follow(client: httpx.AsyncClient, job: dict[str, Any]) -> dict[str, Any]:
    """Show a progress bar fed by the job's SSE stream; return the final job."""
    [final] = await follow_all(client, [job["id"]])
    return final


async def follow_all(client: httpx.AsyncClient, job_ids: list[str]) -> list[dict[str, Any]]:
    """One progress bar per job, each fed by its SSE stream, until all have ended; the final jobs."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console) as bars:
        async def one(job_id: str) -> dict[str, Any]:
            task = bars.add_task(f"job {job_id[:8]}", total=1.0, status="queued")
            async for event, data in sse_events(client, f"/api/v2/jobs/{job_id}/events"):
                if event == "progress":
                    bars.update(task, completed=float(data.get("value") or 0.0))
                elif event == "status":
                    bars.update(task, status=data.get("status"))
                    if data.get("status") in TERMINAL:
                        if data.get("status") == "succeeded":
                            bars.update(task, completed=1.0)
                        break
            return await _call(client, "GET", f"/api/v2/jobs/{job_id}")

        return list(await asyncio.gather(*(one(job_id) for job_id in job_ids)))


async def sse_events(client: httpx.AsyncClient, path: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    event = "message"
    try:
        async with client.stream("GET", path, timeout=httpx.Timeout(60.0, connect=5.0)) as response:
            if response.status_code >= 400:
                raise ComfyFleetError(f"GET {path} failed with HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    try:
                        yield event, json.loads(line[5:].strip())
                    except json.JSONDecodeError:
                        continue
    except httpx.HTTPError as exc:
        raise ComfyFleetError(f"lost the event stream {path} ({type(exc).__name__})") from None


async def download_outputs(client: httpx.AsyncClient, job: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for output in job.get("outputs") or []:
        try:
            response = await client.get(f"/api/v2/assets/{output['id']}/content")
        except httpx.HTTPError as exc:
            raise ComfyFleetError(f"cannot download output {output['id']} ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise ComfyFleetError(f"output {output['id']}: HTTP {response.status_code}")
        target = out / f"{job['id'][:8]}-{Path(output.get('name') or output['id']).name}"
        target.write_bytes(response.content)
        paths.append(target)
    return paths


def report(job: dict[str, Any]) -> None:
    line = f"job {job['id']} {job['status']}"
    if job.get("error"):
        line += f": {job['error'].get('code')}: {job['error'].get('message')}"
    console.print(line)


async def list_jobs(*, server: str, status: str | None, limit: int) -> None:
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    async with _client(server) as client:
        page = await _call(client, "GET", "/api/v2/jobs", params=params)
    table = Table("id", "status", "type", "progress", "created")
    for job in page.get("jobs", []):
        table.add_row(job["id"], job["status"], str(job.get("type") or ""),
                      f"{100 * float((job.get('progress') or {}).get('value') or 0):.0f}%",
                      str(job.get("created_at")))
    console.print(table)


async def cancel_job(job_id: str, *, server: str) -> None:
    async with _client(server) as client:
        job = await _call(client, "POST", f"/api/v2/jobs/{job_id}/cancel")
    report(job)
