"""``comfyfleet demo --once``: the quick start's first command, run as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_once_runs_the_samples_and_leaves_their_outputs_on_disk(tmp_path):
    tmp_path = tmp_path / "[my demo]"  # in a path: brackets are no console markup nor a glob, a space splits nothing
    tmp_path.mkdir()
    result = subprocess.run([sys.executable, "-m", "comfyfleet", "demo", "--once"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(re.findall(r"^job \S+ succeeded on gpu-[ab]$", result.stdout, re.M)) == 3, result.stdout
    assert re.search(r"^uploaded portrait.png as input asset \S+ \(blake3:", result.stdout, re.M), \
        "the edit sample starts from an uploaded input (staged on its backend, or the job would fail)"
    stored = re.findall(r"stored at (.+)$", result.stdout, re.M)
    assert len(stored) == 3
    for path in stored:
        data = Path(path).read_bytes()
        assert data.startswith(b"\x89PNG")
        assert Path(path).is_relative_to(tmp_path / ".comfyfleet-demo")
    assert not list((tmp_path / ".comfyfleet-demo" / "valkey").glob("comfyfleet-valkey.json")), \
        "the embedded Valkey must be stopped and its record removed on exit"
