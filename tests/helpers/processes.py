"""Start comfyfleet commands as real child processes and wait for their ready line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def serve_child(data_dir: Path, backend_url: str, log_path: Path, *, port: int, workers: int = 1,
                env: dict[str, str] | None = None) -> "Child":
    """``comfyfleet serve`` on ``data_dir`` (embedded Valkey) with one backend named sim-0."""
    return Child(["comfyfleet", "serve", "--port", str(port), "--data-dir", str(data_dir),
                  "--workers", str(workers), "--backend", f"sim-0={backend_url}"], log_path, env=env)


def embedded_redis_url(data_dir: Path) -> str:
    """The URL (with its password) of the embedded Valkey a ``serve`` runs in ``data_dir``."""
    record = json.loads((data_dir / "valkey" / "comfyfleet-valkey.json").read_text())
    return f"redis://:{record['password']}@127.0.0.1:{record['port']}"


def valkey_left_by_a_killed_starter(data_dir: Path) -> str:
    """Start the embedded Valkey of ``data_dir`` from a process that is then SIGKILLed (a serve
    killed): the server runs on, nobody's child. Its URL."""
    starter = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; "
         "from comfyfleet.store.embedded import EmbeddedValkey; "
         "v = EmbeddedValkey(Path(sys.argv[1])); print(v.start(), flush=True); time.sleep(60)",
         str(data_dir)], stdout=subprocess.PIPE, text=True)
    url = starter.stdout.readline().strip()  # type: ignore[union-attr]
    starter.send_signal(signal.SIGKILL)
    starter.wait(10)
    starter.stdout.close()  # type: ignore[union-attr]
    return url


class Child:
    """A child process whose output goes to a log file we can read while it runs."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", *argv], stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env={**os.environ, **(env or {})})

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for(self, text: str, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while text not in self.output():
                if self.process.poll() is not None:
                    raise AssertionError(f"exited {self.process.returncode} before {text!r}:\n{self.output()}")
                await asyncio.sleep(0.05)

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        async with asyncio.timeout(timeout_s):
            while self.process.poll() is None:
                await asyncio.sleep(0.05)
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._log.close()
