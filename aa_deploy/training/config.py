"""Everything one training run needs, as a JSON-round-tripping dataclass (saved in every run folder)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..config import RECIPES

TRAINING_CONFIG_NAME = "training_config.json"


@dataclass
class TrainConfig:
    """One run of ``aa-deploy train``. Defaults follow the paper's protocol (METHOD.md §5)."""

    task: str
    output: str
    recipe: str = "search"
    data_dir: str | None = None
    test_file: str | None = None
    train_size: int | None = None
    seed: int = 42
    epochs: int = 20
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    learning_rate: float = 1e-4
    switch_learning_rate: float = 0.05
    rational_learning_rate: float = 0.01
    max_grad_norm: float = 1.0
    backbone: str | None = None
    selection_from: str | None = None
    selected_layers: list[int] | None = None
    reduction_factor: float = 16.0
    rational_init: str = "one"
    rational_version: str = "A"
    switch_temperature: float = 0.1
    switch_temperature_final: float | None = None
    adapterdrop_max_layers: int | None = None
    adapterdrop_eval_layers: int | None = None
    dev_fraction: float = 0.25
    device: str = "auto"
    save_checkpoints: bool = False
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}: choose one of {', '.join(RECIPES)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.recipe == "focused" and self.selection_from is None and self.selected_layers is None:
            raise ValueError(
                "the focused recipe trains adapters only at a given selection: pass --selection-from RUN_DIR "
                "(a finished search run) or --layers 0,3,5"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
