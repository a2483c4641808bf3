"""What one training run measured: the ``metrics.json`` of a run folder, as a dataclass.

The keys (and their order) are the file's format: the quality grid, the model card, ``aa-deploy push``
and the export manifest read them, so a field is never renamed. ``RunMetrics.from_dict`` ignores keys
it does not know, so a folder written by a newer aa-deploy still loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..json_record import JsonRecord


@dataclass
class RunMetrics(JsonRecord):
    """One run's results, data sizes, parameter counts and where it ran."""

    task: str
    recipe: str
    metric: str
    value: float  # the task metric on the held-out dev split (model selection)
    test_value: float | None  # on the test set (GLUE: the official dev set); None without one
    best_epoch: int | None
    dev: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch
    selected_layers: list[int] = field(default_factory=list)
    layers_kept: int = 0
    num_layers: int = 0
    train_size: int | None = None  # the requested low-data size (None: all data)
    train_examples: int = 0
    dev_examples: int = 0
    test_examples: int = 0
    seed: int = 0
    trained_params: int = 0  # adapters, switches, rationals and the task head
    adapter_params: int = 0  # the same without the head
    adapter_bytes: int = 0  # size of adapter_model.safetensors
    train_loss: float = 0.0
    wall_time_s: float = 0.0
    device: str = ""
    torch: str = ""
    host: str = ""
    protocol: str | None = None  # the training schedule's name (None: written before schedules existed)
    epochs_run: int | None = None  # epochs after the schedule's minimum number of steps
    optimizer_steps: int | None = None
    layer_budget: int | None = None  # --max-layers of a search run
    # What the kept layers save against adapters in every layer (see training/layer_savings.py).
    savings: dict[str, Any] = field(default_factory=dict)


def split_metrics(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """``{"dev_accuracy": 0.8, ...}`` from the Trainer → ``{"accuracy": 0.8, ...}``."""
    return {k.removeprefix(f"{prefix}_"): v for k, v in metrics.items()}
