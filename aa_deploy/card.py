"""The model card of an adapter artefact: README.md (Hub metadata + what was learned) and its picture.

An artefact should describe itself before it is shared, so the exporter calls :func:`write_model_card`
on every export folder and ``aa-deploy push`` writes a fresh card (with the real repo id) into its
staging folder. Two constraints shape this module:

* it must be fast (well under a second) and must never fail an export because an optional file
  (metrics.json, selection.json, the weights, the manifest...) is absent or unreadable: every input
  but ``adapter_config.json`` is optional and a missing one only drops a section;
* it must not need torch: weights are read with safetensors' numpy backend, activations are drawn
  with :mod:`aa_deploy.plotting`, and nothing imports :mod:`aa_deploy.data` (which pulls scipy).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .contract.layout import (
    ADAPTER_KEY,
    BACKBONE_DATA_NAME,
    CARD_NAME,
    CONFIG_NAME,
    GRAPH_NAME,
    KEPT_LAYERS_KEY,
    LIBRARY_NAME,
    MANIFEST_NAME,
    METRICS_NAME,
    PICTURE_NAME,
    RATIONAL_DENOMINATOR,
    RATIONAL_NUMERATOR,
    SELECTION_NAME,
    SWITCH_LOGITS,
    TRAINING_CONFIG_NAME,
    WEIGHTS_NAME,
    adapter_key,
)
from .contract.rules import adapterdrop_keeps_layer, kept_by_switches, switch_adapter_probability, uses_rational
from .fileio import atomic_write_text, atomic_write_with

__all__ = ["CARD_NAME", "PICTURE_NAME", "build_model_card", "write_model_card"]

PLACEHOLDER_REPO = "ORG/NAME"

# The GLUE tasks aa-deploy trains, with their config names in the Hub's GLUE dataset. Kept here instead of
# imported from aa_deploy.data because that package imports scipy (over half a second), and the card must
# stay fast; tests/test_card.py checks that the two lists agree.
GLUE_HUB_CONFIGS: dict[str, str] = {
    "cola": "cola", "sst2": "sst2", "mrpc": "mrpc", "stsb": "stsb", "qnli": "qnli", "rte": "rte",
}  # fmt: skip
GLUE_DATASET = "glue"
# Our metric names -> the Hub's metric ids (model-index ``type``) and a readable name.
_HUB_METRICS = {
    "accuracy": ("accuracy", "accuracy"),
    "f1": ("f1", "F1"),
    "matthews_correlation": ("matthews_correlation", "Matthews correlation"),
    "spearman": ("spearmanr", "Spearman correlation"),
    "pearson": ("pearsonr", "Pearson correlation"),
}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}

log = logging.getLogger(__name__)
_T = TypeVar("_T")


# ------------------------------------------------------------------------------- reading the folder


@dataclass
class _Tensors:
    """What the card needs from adapter_model.safetensors, read without torch."""

    file_bytes: int
    shapes: dict[str, tuple[list[int], str]]  # name -> (shape, safetensors dtype)
    rationals: dict[int, tuple[list[float], list[float]]] = field(default_factory=dict)
    switch_logits: dict[int, list[float]] = field(default_factory=dict)

    def numel(self, name: str) -> int:
        return math.prod(self.shapes[name][0])

    def nbytes(self, name: str) -> int:
        shape, dtype = self.shapes[name]
        return math.prod(shape) * _DTYPE_BYTES.get(dtype, 4)


@dataclass
class _Artefact:
    """Everything known about one run or export folder; optional parts are None when absent."""

    folder: Path
    config: dict[str, Any]
    manifest: dict[str, Any] | None
    selection: dict[str, Any] | None
    metrics: dict[str, Any] | None
    training: dict[str, Any] | None
    tensors: _Tensors | None
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
            return kept_by_switches(self.tensors.switch_logits)
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


def _read_json(path: Path) -> dict[str, Any] | None:
    """An optional JSON file: absent or unreadable means "unknown", never an error (logged)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("model card: ignoring %s (%s)", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _read_tensors(path: Path) -> _Tensors | None:
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
            tensors = _Tensors(file_bytes=path.stat().st_size, shapes=shapes)
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


def _read_artefact(folder: Path) -> _Artefact:
    config = _read_json(folder / CONFIG_NAME)
    if config is None:
        raise FileNotFoundError(
            f"cannot write a model card for {folder}: it has no readable {CONFIG_NAME}, so it is neither a run "
            "folder (`aa-deploy train`) nor an export folder (`aa-deploy export`)"
        )
    return _Artefact(
        folder=folder,
        config=config,
        manifest=_read_json(folder / MANIFEST_NAME),
        selection=_read_json(folder / SELECTION_NAME),
        metrics=_read_json(folder / METRICS_NAME),
        training=_read_json(folder / TRAINING_CONFIG_NAME),
        tensors=_read_tensors(folder / WEIGHTS_NAME),
        has_onnx=(folder / GRAPH_NAME).is_file(),
    )


# ------------------------------------------------------------------------------------ numbers


@dataclass(frozen=True)
class _Results:
    """The task metric: on the run's held-out dev split and on the official/test set, when known."""

    metric: str
    dev_split: float | None
    test: float | None
    test_label: str
    official_glue_dev: bool


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _results(art: _Artefact) -> _Results | None:
    metric = art.metric
    if metric is None:
        return None
    metrics = art.metrics or {}
    recorded = (art.manifest or {}).get("metrics") or {}
    dev = _finite(metrics.get("value", recorded.get("trained_dev_split")))
    test = _finite(metrics.get("test_value", recorded.get("trained_test")))
    if dev is None and test is None:
        return None
    test_file = (art.training or {}).get("test_file")
    official = bool(art.glue_config) and not test_file
    if test_file:
        label = f"test file `{Path(str(test_file)).name}`"
    else:
        label = "official GLUE dev set" if official else "test set"
    return _Results(metric, dev, test, label, official)


@dataclass(frozen=True)
class _Sizes:
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


def _sizes(art: _Artefact, kept: Sequence[int]) -> _Sizes | None:
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
    return _Sizes(
        num_layers=art.num_layers,
        kept=len(kept_set),
        hidden=int(hidden),
        bottleneck=int(bottleneck),
        head_params=sum(tensors.numel(n) for n in head),
        deployed_params=sum(tensors.numel(n) for n in deployed),
        deployed_bytes=sum(tensors.nbytes(n) for n in deployed),
        file_params=sum(tensors.numel(n) for n in tensors.shapes),
        file_bytes=tensors.file_bytes,
        itemsize=_DTYPE_BYTES.get(adapter_dtypes[0], 4) if adapter_dtypes else 4,
    )


def _n(value: int) -> str:
    return f"{value:,}"


def _bytes(value: int | float | None) -> str:
    if not isinstance(value, (int, float)):
        return "unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit} ({int(value):,} bytes)"
    return f"{int(value):,} bytes"


def _sci(value: Any) -> str:
    number = _finite(value)
    return "unknown" if number is None else f"{number:.2g}"


def _ratio(value: Any) -> str:
    number = _finite(value)
    return "unknown" if number is None else f"{100.0 * number:.1f} %"


def _percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "n/a"


# ------------------------------------------------------------------------------------ pictures


def _ensure_picture(art: _Artefact, output_dir: Path) -> list[str]:
    """Put the activation/layer-stack picture into ``output_dir``; return the picture names written.

    A picture already in the source folder (the one ``aa-deploy train`` draws from the unpruned run,
    with every layer's curve) is reused as is: it is the more informative one, and drawing is the slow
    part of the card. Drawing failures only drop the picture; they never fail the caller.
    """
    source = art.folder / PICTURE_NAME
    target = output_dir / PICTURE_NAME
    try:
        if source.is_file():
            if source.resolve() != target.resolve():
                atomic_write_with(target, lambda tmp: shutil.copyfile(source, tmp))
            return [PICTURE_NAME]
        n = art.num_layers
        if n <= 0:
            return []
        from .plotting import plot_run

        results = _results(art)
        score = (
            f" · {results.metric}={results.dev_split:.3f} (dev split)"
            if results and results.dev_split is not None
            else ""
        )
        plot_run(
            target,
            n,
            art.kept_layers(),
            art.switch_probabilities(),
            art.tensors.rationals if art.tensors else {},
            version=str(art.config.get("rational_version") or "A"),
            title=f"{art.task_name or 'adapter'} · {art.recipe}{score}",
        )
        return [PICTURE_NAME]
    except Exception as exc:  # noqa: BLE001 - a picture is never worth failing an export or a push
        log.warning("model card: no picture for %s (%s)", art.folder, exc)
        return []


# ------------------------------------------------------------------------------------ rendering


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "task"


def _card_data(art: _Artefact, results: _Results | None, include_onnx: bool, model_name: str) -> ModelCardData:
    from .hub import is_hub_id

    tags = ["adapters", "adaptable-adapters"]
    if art.uses_rational:
        tags.append("rational-activation")
    if include_onnx:
        tags.append("onnx")
    if art.task_name:
        tags.append(_slug(art.task_name))
    glue = art.glue_config
    eval_results = None
    metrics = None
    if results is not None:
        hub_metric, readable = _HUB_METRICS.get(results.metric, (results.metric, results.metric))
        metrics = [hub_metric]
        dataset = dict(
            dataset_type=GLUE_DATASET if glue else _slug(art.task_name or "task"),
            dataset_name=f"GLUE {glue.upper()}" if glue else (art.task_name or "task"),
            dataset_config=glue,
        )
        common = dict(task_type="text-classification", metric_type=hub_metric, **dataset)
        eval_results = []
        if results.test is not None:
            split = "validation" if results.official_glue_dev else "test"
            eval_results.append(
                EvalResult(**common, dataset_split=split, metric_value=round(results.test, 4),
                           metric_name=f"{readable} ({results.test_label.replace('`', '')})")
            )  # fmt: skip
        if results.dev_split is not None:
            eval_results.append(
                EvalResult(**common, dataset_split="train", metric_value=round(results.dev_split, 4),
                           metric_name=f"{readable} (held-out dev split of train)")
            )  # fmt: skip
    base = art.base_model
    return ModelCardData(
        base_model=base if base and is_hub_id(base) else None,
        library_name=LIBRARY_NAME,
        pipeline_tag="text-classification",
        tags=tags,
        datasets=[GLUE_DATASET] if glue else None,
        metrics=metrics,
        model_name=model_name,
        eval_results=eval_results or None,
    )


def _layer_stack(kept: Sequence[int], probabilities: Sequence[float], switches: bool) -> str:
    """A text picture of the layer stack (top = last layer), readable in any viewer."""
    lines = []
    kept_set = set(kept)
    for i in reversed(range(len(probabilities))):
        p = probabilities[i]
        bar = "█" * round(10 * p) + "·" * (10 - round(10 * p))
        state = "adapter" if i in kept_set else "skipped"
        lines.append(f"layer {i:>2}  {bar}  " + (f"P(adapter)={p:.2f}  " if switches else "") + state)
    return "\n".join(lines)


def _results_section(results: _Results | None) -> list[str]:
    if results is None:
        return ["## Results", "", "No metrics were recorded with this artefact.", ""]
    readable = _HUB_METRICS.get(results.metric, (results.metric, results.metric))[1]
    rows = []
    if results.dev_split is not None:
        rows.append(f"| held-out dev split of the training data (model selection) | {results.dev_split:.4f} |")
    if results.test is not None:
        rows.append(f"| {results.test_label} | {results.test:.4f} |")
    return ["## Results", "", f"| evaluated on | {readable} |", "|---|---|", *rows, ""]


def _layers_section(art: _Artefact, kept: list[int], pictures: Sequence[str]) -> list[str]:
    n = art.num_layers
    probabilities = art.switch_probabilities()
    switches = art.has_learned_switches()
    lines = ["## Selected layers", ""]
    if n:
        listed = ", ".join(str(i) for i in kept) or "none"
        lines += [f"Adapters kept at layers **{listed}** of {n} (layer 0 is next to the embeddings)."]
        if art.recipe == "search":
            lines += [
                "Each layer's Gumbel switch learned the probability P(adapter) of using its adapter; layers where "
                "the adapter lost are skipped at inference and left out of the pushed artefact.",
            ]
        lines += ["", "```text", _layer_stack(kept, probabilities, switches), "```", ""]
    activation = "a learned rational activation P(x)/Q(x)" if art.uses_rational else "ReLU"
    lines += [f"Each adapter is a bottleneck `up(f(down(h)))` with {activation}.", ""]
    if art.tensors is not None and art.tensors.rationals:
        lines += [
            "The learned activation curves (blue: kept layers, grey: skipped) and the layer stack with P(adapter):",
            "",
        ]
    for picture in pictures:
        lines += [f"![learned activations and layer stack]({picture})", ""]
    return lines


def _sizes_section(sizes: _Sizes | None) -> list[str]:
    if sizes is None:
        return []
    lines = [
        "## Size vs a standard adapter",
        "",
        f"A standard (Pfeiffer) adapter has 2·h·d + d + h parameters at every one of the {sizes.num_layers} layers "
        f"(h = {sizes.hidden}, d = {sizes.bottleneck}), plus the same task head ({_n(sizes.head_params)} parameters).",
        "",
        "| | standard adapter | this artefact |",
        "|---|---|---|",
        f"| layers with an adapter | {sizes.num_layers} | {sizes.kept} |",
        f"| parameters (adapters + head) | {_n(sizes.standard_params)} | {_n(sizes.deployed_params)} "
        f"({_percent(sizes.deployed_params, sizes.standard_params)}) |",
        f"| tensor bytes | {_bytes(sizes.standard_bytes)} | {_bytes(sizes.deployed_bytes)} |",
        "",
        f"`{WEIGHTS_NAME}` is {_bytes(sizes.file_bytes)}.",
    ]
    if sizes.file_params != sizes.deployed_params:
        lines += [
            f"That file still holds {_n(sizes.file_params)} parameters (every layer's adapter and the switches); "
            "`aa-deploy push` uploads the pruned copy with only the kept layers.",
        ]
    return lines + [""]


def _onnx_section(art: _Artefact, include_onnx: bool) -> list[str]:
    manifest = art.manifest
    if manifest is None:
        return []
    sizes = manifest.get("sizes") or {}
    validation = manifest.get("validation") or {}
    mode = manifest.get("mode")
    lines = ["## ONNX export", ""]
    if mode == "shared":
        lines.append(
            f"Exported in shared mode: the backbone's tensors live in `{BACKBONE_DATA_NAME}`, one copy on disk and in "
            "memory for every task exported against the same backbone."
        )
    elif mode == "standalone":
        lines.append(f"Exported standalone: `{GRAPH_NAME}` is self-contained.")
    optimized = "yes" if manifest.get("optimized") else "no"
    lines += [
        "",
        "| | |",
        "|---|---|",
        f"| graph optimised | {optimized} |",
        f"| quantization | {manifest.get('quantization') or 'none'} |",
    ]
    if manifest.get("max_length"):
        lines.append(f"| max sequence length | {manifest['max_length']} |")
    if validation:
        passed = "passed" if validation.get("passed") else "FAILED"
        lines.append(
            f"| validation vs PyTorch | {passed}: max abs diff {_sci(validation.get('max_abs_diff'))} on "
            f"{validation.get('num_inputs')} inputs (atol {_sci(validation.get('atol'))}) |"
        )
    if sizes:
        lines += [
            f"| task graph and files | {_bytes(sizes.get('task_bytes'))} |",
            f"| shared backbone | {_bytes(sizes.get('backbone_bytes'))} |",
            f"| a full copy of the model | {_bytes(sizes.get('full_copy_bytes'))} |",
            f"| task share of a full copy | {_ratio(sizes.get('ratio_to_full_copy'))} |",
        ]
    lines.append("")
    if include_onnx:
        extra = f" and `{BACKBONE_DATA_NAME}` beside it" if mode == "shared" else ""
        lines.append(f"This artefact includes `{GRAPH_NAME}`{extra}; ONNX Runtime loads it directly.")
    else:
        lines.append(
            f"This artefact holds only the compact adapter, not `{GRAPH_NAME}`: compile it locally with "
            "`aa-deploy export` (below)."
        )
    return lines + [""]


def _usage_section(art: _Artefact, repo_id: str) -> list[str]:
    from .hub import is_hub_id

    task = _slug(art.task_name or "task")
    base = art.base_model
    if base and is_hub_id(base):
        where = f"The backbone `{base}` is loaded from its own Hub repo (or the local cache)"
    elif base:
        where = f"The backbone is loaded from the local folder `{base}` (pass `backbone=...` where it lives elsewhere)"
    else:
        where = "The backbone is the default one (pass `backbone=...` to choose)"
    lines = [
        "## Use it",
        "",
        "```python",
        "from aa_deploy import AdaptableAdapterModel",
        "",
        f'model = AdaptableAdapterModel.from_pretrained("{repo_id}")  # revision="<commit>" pins a version',
        "```",
        "",
        f"{where} and checked against the fingerprints recorded in `{CONFIG_NAME}`: loading these adapters onto any other backbone is refused "
        "(`BackboneMismatchError`). Once downloaded, `HF_HUB_OFFLINE=1` loads everything from the cache.",
        "",
        "Serve it (one backbone in memory for many tasks), or compile it to ONNX:",
        "",
        "```bash",
        f"aa-deploy serve --task {task}={repo_id}",
        f"aa-deploy export {repo_id} --output exported/{task}",
        "```",
    ]
    if repo_id == PLACEHOLDER_REPO:
        lines += ["", f"(`{PLACEHOLDER_REPO}` is the repo this folder is pushed to with `aa-deploy push`.)"]
    return lines + [""]


def _training_section(art: _Artefact) -> list[str]:
    cfg = art.config
    metrics = art.metrics or {}
    rows = [
        ("recipe", art.recipe),
        ("base model", art.base_model),
        ("backbone family", cfg.get("base_model_type")),
        ("reduction factor", cfg.get("reduction_factor")),
        ("rational version", cfg.get("rational_version") if art.uses_rational else None),
        ("training examples", metrics.get("train_examples")),
        ("best epoch", metrics.get("best_epoch")),
        ("seed", metrics.get("seed")),
        ("backbone config fingerprint", cfg.get("base_model_config_fingerprint")),
        ("backbone weights fingerprint", cfg.get("base_model_weights_fingerprint")),
    ]
    body = [f"| {key} | `{value}` |" for key, value in rows if value not in (None, "")]
    return ["## Training", "", "| | |", "|---|---|", *body, ""]


def _safely(what: str, build: Callable[[], _T], default: _T) -> _T:
    """Build one optional part of the card; malformed inputs drop that part instead of failing the caller."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - any malformed optional input must only cost its section
        log.warning("model card: %s left out (%s)", what, exc)
        return default


def _render(art: _Artefact, pictures: Sequence[str], repo_id: str | None, include_onnx: bool | None) -> ModelCard:
    with_onnx = art.has_onnx if include_onnx is None else include_onnx
    target = repo_id or PLACEHOLDER_REPO
    model_name = target.rsplit("/", 1)[-1] if repo_id else f"{_slug(art.task_name or 'task')}-adaptable-adapter"
    results = _safely("results", lambda: _results(art), None)
    kept = _safely("layer selection", art.kept_layers, [])
    data = _safely(
        "metric metadata",
        lambda: _card_data(art, results, with_onnx, model_name),
        _card_data(art, None, with_onnx, model_name),
    )
    task = art.task_name or "an unnamed task"
    metric = f" ({art.metric})" if art.metric else ""
    base = f"`{art.base_model}`" if art.base_model else "a frozen encoder"
    n = art.num_layers
    intro = (
        f"Compact **adaptable adapter** for {base} on **{task}**{metric}, trained with aa-deploy's `{art.recipe}` "
        "recipe. Only the trained parts are stored"
        + (f" — adapters at {len(kept)} of {n} layers plus the task head —" if n else "")
        + " not a copy of the backbone."
    )
    body = [
        f"# {model_name}",
        "",
        intro,
        "",
        *_safely("results", lambda: _results_section(results), []),
        *_safely("selected layers", lambda: _layers_section(art, kept, pictures), []),
        *_safely("size comparison", lambda: _sizes_section(_sizes(art, kept)), []),
        *_safely("ONNX report", lambda: _onnx_section(art, with_onnx), []),
        *_usage_section(art, target),
        *_safely("training settings", lambda: _training_section(art), []),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body).rstrip() + "\n")


# ----------------------------------------------------------------------------------------- API


def build_model_card(
    folder: str | os.PathLike[str], *, repo_id: str | None = None, include_onnx: bool | None = None
) -> ModelCard:
    """The card of a run folder or an export folder, without writing anything.

    ``repo_id`` is the repo the card will live in (used in the loading instructions); ``include_onnx``
    says whether ``model.onnx`` travels with the card (default: whether the folder has one), which
    decides the ``onnx`` tag. The picture is referenced only if the folder already has it; use
    :func:`write_model_card` to draw it.
    """
    directory = Path(folder)
    art = _read_artefact(directory)
    pictures = [PICTURE_NAME] if (directory / PICTURE_NAME).is_file() else []
    return _render(art, pictures, repo_id, include_onnx)


def write_model_card(
    folder: str | os.PathLike[str],
    *,
    repo_id: str | None = None,
    include_onnx: bool | None = None,
    output_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write README.md and its picture into ``output_dir`` (default: ``folder``) and return the README path.

    The README is replaced atomically. Only a missing or unreadable ``adapter_config.json`` is an error;
    any other missing input just leaves its section out, so an export never fails because of its card.
    """
    directory = Path(folder)
    art = _read_artefact(directory)
    out = Path(output_dir) if output_dir is not None else directory
    out.mkdir(parents=True, exist_ok=True)
    pictures = _ensure_picture(art, out)
    card = _render(art, pictures, repo_id, include_onnx)
    path = out / CARD_NAME
    atomic_write_text(path, str(card))
    return path
