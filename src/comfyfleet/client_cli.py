"""What ``comfyfleet submit|jobs|cancel`` do: plain HTTP calls to a comfyfleet server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich import box
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

from .config import check_http_url
from .errors import ComfyFleetError

TERMINAL = {"succeeded", "failed", "canceled", "expired"}
# Piped or redirected, a listing is not cut to a made-up 80 columns (COLUMNS still rules).
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 1000)


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


API_KEY_VARIABLE = "COMFYFLEET_API_KEY"


def _client(server: str) -> httpx.AsyncClient:
    """A client of ``server`` carrying the API key in ``COMFYFLEET_API_KEY``, if set (an
    environment variable, not an option: options show in the process list)."""
    check_http_url(server, what="--server", example="http://127.0.0.1:8787")
    key = os.environ.get(API_KEY_VARIABLE, "").strip()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=server.rstrip("/"), headers=headers,
                             timeout=httpx.Timeout(30.0, connect=5.0))


def segment(value: str) -> str:
    """``value`` as one path segment: a job id or backend name such as ``../x`` or ``a?b`` cannot
    reach another route or add a query."""
    return quote(value, safe="")


NOT_COMFYFLEET = "is --server the URL of a comfyfleet server?"


def say(text: str, **options: Any) -> None:
    """Print ``text`` as it is: square brackets and ``:name:`` in what a server or a user wrote
    (a backend name, a tag, an error message, a path) are no console markup or emoji."""
    console.print(text, markup=False, emoji=False, **options)


def print_listing(headers: tuple[str, ...], rows: list[list[str]], *, keys: int = 1) -> None:
    """A table when it fits the terminal; else, so that nothing is cut, one block a row: its
    ``keys`` first columns (ids, names, URLs: what a user copies) on a line, then the rest."""
    table = Table(*(Column(h, no_wrap=True) for h in headers), box=box.SIMPLE_HEAD,
                  collapse_padding=True, show_edge=False)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # as the server wrote it: no markup, no emoji
    if Measurement.get(console, console.options.update(width=100_000), table).maximum <= console.width:
        console.print(table)
        return
    for row in rows:
        say("  ".join(row[:keys]), highlight=False, soft_wrap=True)
        say("  " + "  ".join(f"{h}={v}" for h, v in zip(headers[keys:], row[keys:])), highlight=False)


def moment(iso: object, *, today: datetime | None = None) -> str:
    """An API timestamp in local time: the time of day when it is today, else the date."""
    try:
        at = datetime.fromisoformat(str(iso)).astimezone()
    except ValueError:
        return str(iso)
    now = today or datetime.now().astimezone()
    return at.strftime("%H:%M:%S") if at.date() == now.date() else at.strftime("%Y-%m-%d %H:%M")


class ServerAway(ComfyFleetError):
    """The server could not be reached, or answered that it cannot serve for now (502, 503, 504):
    what a restarting server or one whose Redis is away looks like."""


AWAY_STATUSES = {502, 503, 504}


async def _call(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """One request; the answer's JSON object, or a ComfyFleetError of one line (``ServerAway``
    when it may answer later)."""
    try:
        response = await client.request(method, path, **kwargs)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ServerAway(f"cannot reach comfyfleet at {client.base_url} ({type(exc).__name__})") from None
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            message = f"{' '.join(response.text[:200].split())!r}; {NOT_COMFYFLEET}"
        if response.status_code == 401:
            message += f" (set {API_KEY_VARIABLE} to your API key)"
        kind = ServerAway if response.status_code in AWAY_STATUSES else ComfyFleetError
        raise kind(f"{method} {path} failed with HTTP {response.status_code}: {message}")
    if response.status_code >= 300:  # not followed: a redirect means this URL is not the resource
        raise ComfyFleetError(f"{method} {path} answered HTTP {response.status_code}, a redirect to "
                              f"{response.headers.get('location')!r}; check the id or name and --server")
    try:
        body = response.json() if response.content else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ComfyFleetError(f"{method} {path} answered HTTP {response.status_code} with something other "
                              f"than a JSON object; {NOT_COMFYFLEET}")
    return body


def job_from(body: dict[str, Any], what: str) -> dict[str, Any]:
    """``body`` if it looks like a job (an ``id`` and a ``status``); a plain error otherwise."""
    if not (isinstance(body, dict) and isinstance(body.get("id"), str) and isinstance(body.get("status"), str)):
        raise ComfyFleetError(f"{what} answered without a job (no id and status); {NOT_COMFYFLEET}")
    return body


async def submit_workflow(path: Path, *, server: str, wait: bool, metadata: list[str], out: Path,
                          inputs: list[str] = ()) -> None:
    workflow = load_workflow(path)
    wanted = [input_target(workflow, entry) for entry in inputs]  # checked before anything is sent
    meta = {}
    for pair in metadata:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ComfyFleetError(f"--meta takes key=value, got {pair!r}")
        meta[key] = value
    if wait and out.exists() and not out.is_dir():  # found out before submitting, not after the job ran
        raise ComfyFleetError(f"--out {out} is not a directory")
    async with _client(server) as client:
        for node_id, name, file in wanted:
            workflow[node_id]["inputs"][name] = await upload_input(client, file)
        job = job_from(await _call(client, "POST", "/api/v2/jobs", json={"workflow": workflow, "metadata": meta}),
                       "POST /api/v2/jobs")
        say(f"job {job['id']} {job['status']}")
        if not wait:
            return
        job = await follow(client, job)
        report(job)
        if job["status"] == "succeeded":
            for path_ in await download_outputs(client, job, out):
                say(f"  output: {path_}")
        else:
            raise ComfyFleetError(f"job {job['id']} ended {job['status']}")


def input_target(workflow: dict[str, Any], entry: str) -> tuple[str, str, Path]:
    """``NODE.INPUT=FILE`` -> (node id, input name, file), each checked."""
    target, sep, file = entry.partition("=")
    node_id, dot, name = target.rpartition(".")
    if not sep or not dot or not node_id or not name or not file:
        raise ComfyFleetError(f"--input takes NODE.INPUT=FILE (e.g. 12.image=face.png), got {entry!r}")
    node = workflow.get(node_id)
    if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
        raise ComfyFleetError(f"--input {entry!r}: the workflow has no node {node_id!r} with inputs")
    if not Path(file).is_file():
        raise ComfyFleetError(f"--input {entry!r}: no such file: {file}")
    return node_id, name, Path(file)


async def upload_input(client: httpx.AsyncClient, file: Path) -> dict[str, Any]:
    """Upload ``file`` as an input asset; the reference a workflow input takes."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ComfyFleetError(f"cannot read {file}: {exc.strerror or exc}") from None
    asset = await _call(client, "POST", "/api/v2/assets", files={"file": (file.name, data)},
                        data={"file_path": file.name})
    if not isinstance(asset.get("id"), str):
        raise ComfyFleetError(f"POST /api/v2/assets answered without an asset id; {NOT_COMFYFLEET}")
    say(f"uploaded {file} as asset {asset['id']}")
    return {"__type": "core/ASSET", "info": {"id": asset["id"]}}


async def follow(client: httpx.AsyncClient, job: dict[str, Any]) -> dict[str, Any]:
    """Show a progress bar fed by the job's SSE stream; return the final job."""
    [final] = await follow_all(client, [job["id"]])
    return final


FOLLOW_AWAY_S = 60.0  # a server away (restarting, its Redis away) this long ends the following
FOLLOW_RETRY_S = (0.25, 0.5, 1.0, 2.0)  # pauses between tries while it is away, the last repeated


async def follow_all(client: httpx.AsyncClient, job_ids: list[str]) -> list[dict[str, Any]]:
    """One progress bar per job, each fed by its SSE stream, until all have ended; the final jobs.

    A stream that ends before its job did (the server restarting or shutting down, its Redis
    away) is opened again; a server that stays away for ``FOLLOW_AWAY_S`` ends the following
    with a plain error (the job itself goes on)."""
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                  TextColumn("{task.percentage:>5.1f}%"), TextColumn("{task.fields[status]}", markup=False),
                  TimeElapsedColumn(), console=console) as bars:
        async def one(job_id: str) -> dict[str, Any]:
            task = bars.add_task(f"job {job_id[:8]}", total=1.0, status="queued")
            away = _Away(job_id)
            while True:
                try:
                    await _stream(client, job_id, bars, task)
                    job = job_from(await _call(client, "GET", f"/api/v2/jobs/{segment(job_id)}"),
                                   "GET /api/v2/jobs/{id}")
                except ServerAway as exc:
                    bars.update(task, status="reconnecting")
                    await away.pause(exc)
                    continue
                if job["status"] in TERMINAL:
                    return job
                bars.update(task, status=job["status"])
                away = _Away(job_id)  # it answered: the stream ended early, follow it again
                await asyncio.sleep(FOLLOW_RETRY_S[0])

        return list(await asyncio.gather(*(one(job_id) for job_id in job_ids)))


class _Away:
    """How long the server has been away while following one job, and the pause before the next try."""

    def __init__(self, job_id: str) -> None:
        self._job_id = job_id
        self._since: float | None = None
        self._tries = 0

    async def pause(self, error: ServerAway) -> None:
        now = asyncio.get_running_loop().time()
        self._since = now if self._since is None else self._since
        if now - self._since >= FOLLOW_AWAY_S:
            raise ComfyFleetError(f"stopped following job {self._job_id} after {FOLLOW_AWAY_S:.0f} s: "
                                  f"{error}; the job goes on (comfyfleet jobs shows it)")
        await asyncio.sleep(FOLLOW_RETRY_S[min(self._tries, len(FOLLOW_RETRY_S) - 1)])
        self._tries += 1


async def _stream(client: httpx.AsyncClient, job_id: str, bars: Progress, task: Any) -> None:
    """Feed the job's bar from its event stream until a terminal status or the stream's end."""
    async for event, data in sse_events(client, f"/api/v2/jobs/{segment(job_id)}/events"):
        if event == "progress":
            bars.update(task, completed=float(data.get("value") or 0.0))
        elif event == "status":
            bars.update(task, status=data.get("status"))
            if data.get("status") in TERMINAL:
                if data.get("status") == "succeeded":
                    bars.update(task, completed=1.0)
                return


async def sse_events(client: httpx.AsyncClient, path: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    event = "message"
    try:
        async with client.stream("GET", path, timeout=httpx.Timeout(60.0, connect=5.0)) as response:
            if response.status_code in AWAY_STATUSES:
                raise ServerAway(f"GET {path} failed with HTTP {response.status_code}")
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
        raise ServerAway(f"lost the event stream {path} ({type(exc).__name__})") from None


async def download_outputs(client: httpx.AsyncClient, job: dict[str, Any], out: Path) -> list[Path]:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ComfyFleetError(f"cannot make --out {out}: {exc.strerror or exc}") from None
    outputs = job.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("id"), str)
                                                for o in outputs):
        raise ComfyFleetError(f"job {job['id']} lists its outputs in an unknown shape; {NOT_COMFYFLEET}")
    paths: list[Path] = []
    for output in outputs:
        try:
            response = await client.get(f"/api/v2/assets/{segment(output['id'])}/content")
        except httpx.HTTPError as exc:
            raise ComfyFleetError(f"cannot download output {output['id']} ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise ComfyFleetError(f"output {output['id']}: HTTP {response.status_code}")
        name = output.get("name") if isinstance(output.get("name"), str) else None
        target = _unused(out / f"{_file_part(job['id'][:8])}-{_file_part(Path(name or output['id']).name)}",
                         taken=paths)
        try:
            target.write_bytes(response.content)
        except OSError as exc:
            raise ComfyFleetError(f"cannot write output {target}: {exc.strerror or exc}") from None
        paths.append(target)
    return paths


def _unused(target: Path, *, taken: list[Path]) -> Path:
    """``target``, or ``<stem>-2<suffix>``, ``-3``... when another output of the job was just
    written there (two outputs of one name: ComfyUI's subfolders, several texts of one node)."""
    candidate, number = target, 1
    while candidate in taken:
        number += 1
        candidate = target.with_name(f"{target.stem}-{number}{target.suffix}")
    return candidate


def _file_part(text: str) -> str:
    """``text`` as part of a file name in --out: no path separators or control characters, no
    leading dots (a job id or output name from the server cannot point outside --out)."""
    return re.sub(r"[/\\\x00-\x1f]", "_", text).lstrip(".") or "output"


def report(job: dict[str, Any]) -> None:
    line = f"job {job['id']} {job['status']}"
    error = job.get("error")
    if isinstance(error, dict):
        line += f": {error.get('code')}: {error.get('message')}"
    say(line)


async def list_jobs(*, server: str, status: str | None, limit: int, as_json: bool = False) -> None:
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    async with _client(server) as client:
        page = await _call(client, "GET", "/api/v2/jobs", params=params)
    jobs = page.get("jobs")
    if not isinstance(jobs, list):
        raise ComfyFleetError(f"GET /api/v2/jobs answered without a list of jobs; {NOT_COMFYFLEET}")
    checked = [job_from(j, "GET /api/v2/jobs") for j in jobs]
    if as_json:
        console.print_json(json.dumps(checked))
        return
    rows = []
    errors = any(isinstance(job.get("error"), dict) for job in checked)  # the column when any failed
    for job in checked:
        progress = job.get("progress")
        value = progress.get("value") if isinstance(progress, dict) else None
        row = [job["id"], job["status"], str(job.get("type") or ""),
               f"{100 * value:.0f}%" if isinstance(value, (int, float)) else "0%",
               moment(job.get("created_at"))]
        if errors:
            error = job.get("error")
            row.append(str(error.get("code")) if isinstance(error, dict) else "-")
        rows.append(row)
    print_listing(("id", "status", "type", "done", "created", *(("error",) if errors else ())), rows)


async def cancel_job(job_id: str, *, server: str) -> None:
    async with _client(server) as client:
        before = await _call(client, "GET", f"/api/v2/jobs/{segment(job_id)}")
        if job_from(before, "GET /api/v2/jobs/{id}")["status"] in TERMINAL:
            say(f"job {before['id']} had already ended ({before['status']}): nothing to cancel")
            return
        job = await _call(client, "POST", f"/api/v2/jobs/{segment(job_id)}/cancel")
    report(job_from(job, "POST /api/v2/jobs/{id}/cancel"))
