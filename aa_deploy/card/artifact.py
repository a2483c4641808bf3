"""Reading a run or export folder for its model card: every input but ``adapter_config.json`` is optional.

A missing or unreadable optional file (metrics.json, selection.json, the weights, the manifest...) only
means "unknown": it is logged and the card leaves the matching section out. Weights are read with
safetensors' numpy backend, so the card never needs torch.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contract.layout import (
    ADAPTER_KEY,
    CONFIG_NAME,
    GRAPH_NAME,
    KEPT_LAYERS_KEY,
    MANIFEST_NAME,
    METRICS_NAME,
    RATIONAL_DENOMINATOR,
    RATIONAL_NUMERATOR,
    SELECTION_NAME,
    SWITCH_LOGITS,
    TRAINING_CONFIG_NAME,
    adapter_files,
    adapter_key,
)
from ..contract.rules import adapterdrop_keeps_layer, kept_by_switches, switch_adapter_probability, uses_rational

# The GLUE tasks aa-deploy trains, with their config names in the Hub's GLUE dataset. Kept here instead of
# imported from aa_deploy.data because that package imports scipy (over half a second), and the card must
# stay fast; tests/test_share_card.py checks that the two lists agree.
GLUE_HUB_CONFIGS: dict[str, str] = {
    "cola": "cola", "sst2": "sst2", "mrpc": "mrpc", "stsb": "stsb", "qnli": "qnli", "rte": "rte",
}  # fmt: skip
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}

log = logging.getLogger("aa_deploy.card")


@dataclass
class Tensors:
    """What the card needs from the adapter weights (WEIGHTS_NAME), read without torch."""

    file_bytes: int
    shapes: dict[str, tuple[list[int], str]]  # name -> (shape, safetensors dtype)
    rationals: dict[int, tuple[list[float], list[float]]] = field(default_factory=dict)
    switch_logits: dict[int, list[float]] = field(default_factory=dict)

    def numel(self, name: str) -> int:
        return math.prod(self.shapes[name][0])

    def nbytes(self, name: str) -> int:
        shape, dtype = self.shapes[name]
        return math.prod(shape) * DTYPE_BYTES.get(dtype, 4)


@dataclass
class Artifact:
    """Everything known about one run or export folder; optional parts are None when absent."""

    folder: Path
    config: dict[str, Any]
    manifest: dict[str, Any] | None
    selection: dict[str, Any] | None
    metrics: dict[str, Any] | None
    training: dict[str, Any] | None
    tensors: Tensors | None
    has_onnx: bool

    @property
    def task(self) -> dict[str, Any]:
        task = (self.manifest or {}).get("task") or self.config.get("task") or {}
        return task if isinstance(task, dict) else {}

    @property
    def task_name(self) -> str | None:
        name = self.task.get("name")
        return str(name) if name else None

    @property
    def metric(self) -> str | None:
        metric = self.task.get("metric") or (self.metrics or {}).get("metric")
        return str(metric) if metric else None

    @property
    def glue_config(self) -> str | None:
        return GLUE_HUB_CONFIGS.get((self.task_name or "").lower())

    @property
    def recipe(self) -> str:
        return str(self.config.get("recipe") or (self.manifest or {}).get("recipe") or "unknown")

    @property
    def uses_rational(self) -> bool:
        return uses_rational(self.recipe)

    @property
    def base_model(self) -> str | None:
        name = self.config.get("base_model_name_or_path") or ((self.manifest or {}).get("base_model") or {}).get(
            "name_or_path"
        )
        return str(name) if name else None

    @property
    def num_layers(self) -> int:
        for value in (
            self.config.get("num_hidden_layers"),
            (self.manifest or {}).get("num_layers"),
            (self.selection or {}).get("num_layers"),
        ):
            if isinstance(value, int) and value > 0:
                return value
        probabilities = (self.selection or {}).get("switch_probabilities")
        return len(probabilities) if isinstance(probabilities, list) else 0

    def adapter_layers_in_file(self) -> list[int]:
        if self.tensors is None:
            return []
        return sorted({int(m.group(1)) for name in self.tensors.shapes if (m := ADAPTER_KEY.fullmatch(name))})

    def kept_layers(self) -> list[int]:
        """The layers whose adapters run at inference, from the most to the least authoritative source."""
        for source in ((self.manifest or {}).get("kept_layers"), (self.selection or {}).get(KEPT_LAYERS_KEY)):
            if isinstance(source, list):
                return sorted(int(i) for i in source)
        if self.config.get("pruned") and isinstance(self.config.get("selected_layers"), list):
            return sorted(int(i) for i in self.config["selected_layers"])
        if self.tensors is not None and self.tensors.switch_logits:
            return kept_by_switches(self.tensors.switch_logits, self.config.get("max_layers"))
        layers = self.adapter_layers_in_file()
        if self.recipe == "adapterdrop":
            dropped = int(self.config.get("adapterdrop_eval_layers") or 0)
            layers = [i for i in layers if adapterdrop_keeps_layer(i, dropped)]
        return layers

    def has_learned_switches(self) -> bool:
        """Whether P(adapter) per layer is known (a pruned artefact without selection.json lost it)."""
        selection = self.selection or {}
        recorded = selection.get("switch_probabilities")
        learned = isinstance(recorded, list) and len(recorded) == self.num_layers and self.recipe == "search"
        if isinstance(selection.get("switch_logits"), dict):  # a pruned model's selection has none left
            learned = learned and bool(selection["switch_logits"])
        return learned or bool(self.tensors and self.tensors.switch_logits)

    def switch_probabilities(self) -> list[float]:
        """P(adapter) per layer: learned switches where known, else 1 for kept and 0 for other layers."""
        n = self.num_layers
        recorded = (self.selection or {}).get("switch_probabilities")
        if isinstance(recorded, list) and len(recorded) == n:
            return [float(p) for p in recorded]
        kept = set(self.kept_layers())
        probabilities = [1.0 if i in kept else 0.0 for i in range(n)]
        for i, logits in (self.tensors.switch_logits if self.tensors else {}).items():
            if 0 <= i < n:
                probabilities[i] = switch_adapter_probability(logits)
        return probabilities


def read_json(path: Path) -> dict[str, Any] | None:
    """An optional JSON file: absent or unreadable means "unknown", never an error (logged)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("model card: ignoring %s (%s)", path, exc)
        return None
    return data if isinstance(data, dict) else None


def read_tensors(path: Path) -> Tensors | None:
    """Shapes of every tensor plus the (tiny) rational coefficients and switch logits, via numpy."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            shapes: dict[str, tuple[list[int], str]] = {}
            for name in f.keys():
                piece = f.get_slice(name)
                shapes[name] = (list(piece.get_shape()), str(piece.get_dtype()))
            tensors = Tensors(file_bytes=path.stat().st_size, shapes=shapes)
            for name in shapes:
                match = ADAPTER_KEY.fullmatch(name)
                if match is None:
                    continue
                layer, rest = int(match.group(1)), match.group(2)
                if rest == SWITCH_LOGITS:
                    tensors.switch_logits[layer] = [float(v) for v in f.get_tensor(name).reshape(-1)]
                elif rest == RATIONAL_NUMERATOR:
                    numerator = [float(v) for v in f.get_tensor(name).reshape(-1)]
                    denominator_name = adapter_key(layer, RATIONAL_DENOMINATOR)
                    if denominator_name in shapes:
                        denominator = [float(v) for v in f.get_tensor(denominator_name).reshape(-1)]
                        tensors.rationals[layer] = (numerator, denominator)
            return tensors
    except Exception as exc:  # noqa: BLE001 - safetensors/numpy raise many types; the card just omits the data
        log.warning("model card: cannot read %s (%s); parameter counts and curves are left out", path, exc)
        return None


def read_artifact(folder: Path) -> Artifact:
    files = adapter_files(folder)
    config = read_json(files.config)
    if config is None:
        raise FileNotFoundError(
            f"cannot write a model card for {folder}: it has no readable {CONFIG_NAME}, so it is neither a run "
            "folder (`aa-deploy train`) nor an export folder (`aa-deploy export`)"
        )
    return Artifact(
        folder=folder,
        config=config,
        manifest=read_json(folder / MANIFEST_NAME),
        selection=read_json(folder / SELECTION_NAME),
        metrics=read_json(folder / METRICS_NAME),
        training=read_json(folder / TRAINING_CONFIG_NAME),
        tensors=read_tensors(files.weights),
        has_onnx=(folder / GRAPH_NAME).is_file(),
    )
