"""`aa-deploy serve` start-up failures end with one clear `aa-deploy: error:` line, no traceback, non-zero exit.

Each case runs the real CLI in a subprocess (the way a user or an init system sees it).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE_EXPORT = Path(__file__).parent / "fixtures" / "serving_exports" / "sst"


def serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aa_deploy.cli", "serve", *args], capture_output=True, text=True, timeout=timeout
    )


def last_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("aa-deploy: error: "), proc.stderr[-3000:]
    return lines[-1]


def test_port_in_use_is_one_line_before_any_task_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve("--task", f"sst={FIXTURE_EXPORT}", "--port", str(port))
    assert proc.returncode != 0
    line = last_error_line(proc)
    assert f"port {port}" in line and "already in use" in line and "--port" in line
    assert "loaded task" not in proc.stderr  # failed before loading anything


def test_no_task_loading_ends_with_the_reason_not_a_traceback(tmp_path: Path) -> None:
    proc = serve("--task", f"sst={tmp_path / 'missing'}", "--port", "0")
    assert proc.returncode == 3
    assert "none of the tasks could be loaded" in last_error_line(proc)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: ["--models-dir", str(d / "nope")], "is not a folder"),
        (lambda d: ["--config", str(d / "missing.json")], "not found"),
        (lambda d: (d / "bad.json").write_text('{"port": ') and ["--config", str(d / "bad.json")], "not valid JSON"),
        (
            lambda d: (d / "keys.json").write_text('{"prot": 1}') and ["--config", str(d / "keys.json")],
            "unknown server config keys",
        ),
        (lambda d: ["--task", f"sst={FIXTURE_EXPORT}", "--host", "no-such-host.invalid"], "cannot listen on host"),
    ],
    ids=["models-dir", "config-missing", "config-json", "config-keys", "host"],
)
def test_bad_start_up_input_is_one_line(setup, expected: str, tmp_path: Path) -> None:
    proc = serve(*setup(tmp_path), "--port", "0")
    assert proc.returncode != 0
    assert expected in last_error_line(proc)
