"""The adapter configuration: everything needed to rebuild a trained model around its backbone."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .contract.layout import CONFIG_NAME, LIBRARY_NAME, WEIGHTS_NAME, adapter_files
from .contract.rules import uses_rational
from .fileio import atomic_write_text
from .rational_presets import check_rational

Recipe = Literal["standard", "search", "focused", "adapterdrop"]
RECIPES: tuple[str, ...] = ("standard", "search", "focused", "adapterdrop")
FORMAT_VERSION = 1


@dataclass
class AdapterConfig:
    """Settings of the adapters, their activations and switches, and which layers carry adapters.

    ``selected_layers`` means: for ``focused``, where the adapters are; for ``standard``, optionally the
    only layers with adapters (a fixed choice such as AdapterDrop's top layers); for a pruned/compiled
    model, the layers kept. ``None`` means every layer.
    """

    recipe: Recipe = "search"
    reduction_factor: float = 16.0
    rational_version: Literal["A", "B"] = "A"
    rational_init: str = "one"
    numerator_degree: int = 5
    denominator_degree: int = 4
    init_std: float = 0.02
    switch_temperature: float = 0.1
    # Optional annealing of the switch temperature towards this value over training (off by default).
    switch_temperature_final: float | None = None
    switch_init: tuple[float, float] = (0.5, 0.5)
    selected_layers: list[int] | None = None
    # Layer budget of the search recipe (docs/METHOD.md §3): at most this many switches stay on, the
    # ones that prefer their adapter most strongly. None = no budget (every switch decides alone).
    max_layers: int | None = None
    # AdapterDrop: at train time drop the adapters of a random number (0..k) of the lowest layers per
    # step; at test time drop a fixed number of the lowest layers.
    adapterdrop_max_layers: int | None = None
    adapterdrop_eval_layers: int = 0
    # True once deselected adapters were physically removed: adapters exist exactly at
    # ``selected_layers`` and no switch or AdapterDrop logic is left.
    pruned: bool = False
    # Filled in when the adapters are attached to a backbone.
    num_hidden_layers: int | None = None
    hidden_size: int | None = None
    base_model_name_or_path: str | None = None
    base_model_type: str | None = None
    base_model_config_fingerprint: str | None = None
    base_model_weights_fingerprint: str | None = None
    task: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    library: str = LIBRARY_NAME
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}: choose one of {', '.join(RECIPES)}")
        if self.reduction_factor <= 0:
            raise ValueError(f"reduction_factor must be > 0, got {self.reduction_factor}")
        if (self.recipe == "focused" or self.pruned) and self.selected_layers is None:
            raise ValueError(
                "the focused recipe needs a layer selection: pass selected_layers (CLI: --selection-from RUN_DIR)"
            )
        # Every preset/version/degrees combination is checked here, before any model is built.
        check_rational(self.rational_init, self.rational_version, self.numerator_degree, self.denominator_degree)
        self.switch_init = tuple(self.switch_init)  # type: ignore[assignment]
        if self.max_layers is not None and self.max_layers < 1:
            raise ValueError(f"max_layers (the layer budget) must be >= 1, got {self.max_layers}")
        if self.selected_layers is not None:
            self.selected_layers = sorted({int(i) for i in self.selected_layers})

    @property
    def uses_rational(self) -> bool:
        return uses_rational(self.recipe)

    @property
    def uses_switch(self) -> bool:
        return self.recipe == "search" and not self.pruned

    @property
    def uses_adapterdrop(self) -> bool:
        return self.recipe == "adapterdrop" and not self.pruned

    # The head's labels under transformers' config names: transformers' pipelines read them from
    # ``model.config`` (see AdaptableAdapterModel's pipeline support). Derived from ``task``, never stored.
    @property
    def num_labels(self) -> int:
        labels = (self.task or {}).get("label_names")
        return 1 if labels is None else len(labels)

    @property
    def problem_type(self) -> str:
        is_regression = self.task is not None and self.task.get("label_names") is None
        return "regression" if is_regression else "single_label_classification"

    @property
    def id2label(self) -> dict[int, str]:
        labels = (self.task or {}).get("label_names")
        return {i: str(name) for i, name in enumerate(labels)} if labels else {0: "LABEL_0"}

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    def bottleneck_size(self, hidden_size: int) -> int:
        return max(1, int(hidden_size // self.reduction_factor))

    def adapter_layers(self, num_layers: int) -> list[int]:
        """Layers that get an adapter module at all (before any switch decides)."""
        if self.selected_layers is not None:
            bad = [i for i in self.selected_layers if not 0 <= i < num_layers]
            if bad:
                raise ValueError(f"selected layers {bad} do not exist in a {num_layers}-layer backbone")
            return list(self.selected_layers)
        return list(range(num_layers))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["switch_init"] = list(self.switch_init)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown adapter config keys {unknown}: was this written by a newer aa-deploy?")
        version = data.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(
                f"adapter config format {version} is newer than this aa-deploy understands ({FORMAT_VERSION}): upgrade aa-deploy"
            )
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / CONFIG_NAME
        atomic_write_text(path, self.to_json_string())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AdapterConfig:
        path = adapter_files(directory).config  # the current name, or the legacy one of older folders
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: {directory} is not an aa-deploy adapter folder (expected {CONFIG_NAME} "
                f"and {WEIGHTS_NAME}, as written by `aa-deploy train`)"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path} is not valid JSON ({exc}); the run folder is corrupted: retrain or restore it"
            ) from exc
        return cls.from_dict(data)
