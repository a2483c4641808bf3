"""What machine a benchmark ran on, recorded the same way in every results file.

Why the processor model and its vector extensions: the machines these benchmarks run on are lent per
session and differ from one session to the next. The same batch-1 MiniLM forward pass took 14 ms on one
and 7.9 ms on another, and small ratios between two graphs (a few per cent) moved with the machine too.
A ratio is only comparable with another measured on the same processor, so each results file says
which one it was.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

# Extensions ONNX Runtime and PyTorch pick CPU kernels by (MLAS dispatches on these).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (Linux), else nothing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, rounded (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe_machine(**extra: Any) -> dict[str, Any]:
    """Processor model, its kernel-relevant flags, core counts, OS, Python and the versions of the
    inference libraries already imported, plus ``extra`` (e.g. the thread setting of the run)."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())  # x86 / Arm names
    described: dict[str, Any] = {
        "processor": info.get("model name") or platform.processor() or platform.machine(),
        "kernel_flags": [f for f in KERNEL_FLAGS if f in flags] if flags else None,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_start": load_average(),
    }
    try:
        import psutil

        described["physical_cores"] = psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover - psutil comes with the test extra
        pass
    versions = {
        name: getattr(sys.modules[name], "__version__", None)
        for name in ("onnxruntime", "torch", "transformers", "numpy", "ray")
        if name in sys.modules
    }
    if versions:
        described["versions"] = versions
    return {**described, **extra}
