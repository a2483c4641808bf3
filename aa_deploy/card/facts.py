"""The numbers a model card reports, computed from an :class:`~.artifact.Artifact`, and how they are written.

Results (the task metric on the dev split and the test set) and sizes (this artefact's adapters against
a standard adapter at every layer). Each function returns None when its inputs are unknown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..contract.layout import ADAPTER_KEY
from .artifact import DTYPE_BYTES, Artifact


@dataclass(frozen=True)
class Results:
    """The task metric: on the run's held-out dev split and on the official/test set, when known."""

    metric: str
    dev_split: float | None
    test: float | None
    test_label: str
    official_glue_dev: bool


def finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def results_of(art: Artifact) -> Results | None:
    metric = art.metric
    if metric is None:
        return None
    metrics = art.metrics or {}
    recorded = (art.manifest or {}).get("metrics") or {}
    dev = finite(metrics.get("value", recorded.get("trained_dev_split")))
    test = finite(metrics.get("test_value", recorded.get("trained_test")))
    if dev is None and test is None:
        return None
    test_file = (art.training or {}).get("test_file")
    official = bool(art.glue_config) and not test_file
    if test_file:
        label = f"test file `{Path(str(test_file)).name}`"
    else:
        label = "official GLUE dev set" if official else "test set"
    return Results(metric, dev, test, label, official)


@dataclass(frozen=True)
class Sizes:
    """This artefact's adapters vs a standard adapter (2·h·d + d + h per layer at every layer)."""

    num_layers: int
    kept: int
    hidden: int
    bottleneck: int
    head_params: int
    deployed_params: int
    deployed_bytes: int
    file_params: int
    file_bytes: int
    itemsize: int

    @property
    def standard_params(self) -> int:
        h, d = self.hidden, self.bottleneck
        return self.num_layers * (2 * h * d + d + h) + self.head_params

    @property
    def standard_bytes(self) -> int:
        return self.standard_params * self.itemsize


def sizes_of(art: Artifact, kept: Sequence[int]) -> Sizes | None:
    tensors = art.tensors
    if tensors is None or not art.num_layers:
        return None
    hidden = art.config.get("hidden_size")
    bottleneck = None
    for name, (shape, _) in tensors.shapes.items():
        match = ADAPTER_KEY.fullmatch(name)
        if match and match.group(2) == "adapter.down.weight" and len(shape) == 2:
            bottleneck, hidden = shape[0], hidden or shape[1]
            break
    if not hidden:
        return None
    if bottleneck is None:
        bottleneck = max(1, int(hidden // float(art.config.get("reduction_factor") or 16.0)))
    kept_set = set(kept)
    head = [n for n in tensors.shapes if n.startswith("backbone.")]
    deployed = list(head)
    for name in tensors.shapes:
        match = ADAPTER_KEY.fullmatch(name)
        if match and int(match.group(1)) in kept_set and not match.group(2).startswith("switch."):
            deployed.append(name)
    adapter_dtypes = [dtype for name, (_, dtype) in tensors.shapes.items() if ADAPTER_KEY.fullmatch(name)]
    return Sizes(
        num_layers=art.num_layers,
        kept=len(kept_set),
        hidden=int(hidden),
        bottleneck=int(bottleneck),
        head_params=sum(tensors.numel(n) for n in head),
        deployed_params=sum(tensors.numel(n) for n in deployed),
        deployed_bytes=sum(tensors.nbytes(n) for n in deployed),
        file_params=sum(tensors.numel(n) for n in tensors.shapes),
        file_bytes=tensors.file_bytes,
        itemsize=DTYPE_BYTES.get(adapter_dtypes[0], 4) if adapter_dtypes else 4,
    )


def count(value: int) -> str:
    return f"{value:,}"


def byte_size(value: int | float | None) -> str:
    if not isinstance(value, (int, float)):
        return "unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit} ({int(value):,} bytes)"
    return f"{int(value):,} bytes"


def scientific(value: Any) -> str:
    number = finite(value)
    return "unknown" if number is None else f"{number:.2g}"


def ratio(value: Any) -> str:
    number = finite(value)
    return "unknown" if number is None else f"{100.0 * number:.1f} %"


def percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "n/a"
