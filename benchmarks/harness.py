"""What the benchmarks share: polling with a bound, the API's readiness, times, the result file."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

import httpx


async def wait_until(predicate, timeout_s: float, interval_s: float = 0.01):  # type: ignore[no-untyped-def]
    """Await ``predicate()`` every ``interval_s`` until it returns something truthy; return it."""
    async with asyncio.timeout(timeout_s):
        while not (result := await predicate()):
            await asyncio.sleep(interval_s)
        return result


async def wait_for_api(http: httpx.AsyncClient, timeout_s: float = 60.0) -> None:
    """Until comfyfleet's ``/health`` answers 200 at ``http``'s base URL."""
    async def up() -> bool:
        try:
            return (await http.get("/health")).status_code == 200
        except httpx.HTTPError:
            return False
    await wait_until(up, timeout_s, 0.1)


def epoch(iso: str) -> float:
    """Seconds since the epoch of an ISO-8601 time as the API writes it."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def write_result(path: Path, result: dict) -> None:
    """Write the benchmark's JSON and show it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def run_in_temp_dir(measure, args, result_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``await measure(args, work)`` in a fresh temporary directory, then write its result."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(measure(args, Path(tmp)))
    write_result(result_path, result)
