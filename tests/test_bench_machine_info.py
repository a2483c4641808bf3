"""benchmarks/machine_info.py: every results file says which processor it was measured on (ratios of a few
per cent moved between the lent machines), the same way in every benchmark."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import onnxruntime  # noqa: F401  (imported, so its version must be recorded)
from serving_helpers import load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_describe_machine_names_the_processor_and_keeps_the_callers_fields() -> None:
    machine_info = load_benchmark("machine_info.py")
    machine = machine_info.describe_machine(threads=3, note="shared")
    assert isinstance(machine["processor"], str) and machine["processor"]
    assert machine["cpus"] == os.cpu_count()
    assert machine["threads"] == 3 and machine["note"] == "shared"
    assert machine["versions"]["onnxruntime"] == onnxruntime.__version__
    cpuinfo = Path("/proc/cpuinfo")
    flags_line = re.search(r"^flags\s*:(.*)$", cpuinfo.read_text(), re.M) if cpuinfo.is_file() else None
    if flags_line:
        assert isinstance(machine["kernel_flags"], list)
        assert set(machine["kernel_flags"]) == set(flags_line.group(1).split()) & set(machine_info.KERNEL_FLAGS)
    json.dumps(machine)  # goes into a results file as it is


def test_every_benchmark_that_writes_machine_fields_takes_them_from_machine_info() -> None:
    """One owner: a benchmark that records ``"machine"`` gets it from describe_machine."""
    for script in sorted(BENCHMARKS.glob("*.py")):
        text = script.read_text()
        if script.name == "machine_info.py" or not re.search(r"[\"']machine[\"']\s*:", text):
            continue
        assert "describe_machine(" in text, f"{script.name} builds its own machine description"
