"""benchmarks/gpu_multitask.py runs end to end on CPU (``--quick``: tiny backbone, three batch sizes), so the
one-call GPU run is known to work before a GPU machine is spent on it. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_multitask_benchmark_quick_on_cpu(tmp_path: Path) -> None:
    output = tmp_path / "gpu_multitask.json"
    proc = subprocess.run(
        [
            sys.executable, str(REPO / "benchmarks" / "gpu_multitask.py"), "--quick", "--provider", "cpu",
            "--threads", "1", "--rounds", "1", "--min-time", "0", "--workdir", str(tmp_path / "work"),
            "--output", str(output),
        ],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GPU figures are missing" in proc.stdout
    report = json.loads(output.read_text())
    assert report["device"] == "cpu" and report["gpu_figures"] == "missing"
    assert report["providers"] == ["CPUExecutionProvider"] and report["io_binding"] is True
    assert report["tasks"] == [1, 4, 16] and report["batches"] == [1, 8, 32] and report["seq"] == 32
    # The multi-task graph gives each row its own task's answer on a mixed batch; the bare graph does not.
    diffs = report["max_abs_diff_vs_own_export"]
    assert all(diffs[f"multitask_{n}"] < 1e-4 for n in (1, 4, 16)), diffs
    assert diffs["bare"] > 1e-3, diffs
    assert [row["batch"] for row in report["rows"]] == [1, 8, 32]
    for row in report["rows"]:
        assert row["bare"]["seq_per_s"] > 0
        for n in (1, 4, 16):
            case = row[f"multitask_{n}"]
            assert case["ms"] > 0 and case["seq_per_s"] > 0
            assert case["ratio_vs_bare"] == pytest.approx(row["bare"]["ms"] / case["ms"], rel=1e-2)
    results = report["target"]["results"]
    assert set(results) == {"multitask_1", "multitask_4", "multitask_16"}
    assert all(isinstance(r["meets_0.95"], bool) for r in results.values())
