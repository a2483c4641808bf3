"""The variables of the model card template (``model_card.md.j2``), one small function per section.

Each function turns what is known about the artefact into plain strings, numbers and lists; the
template holds all the prose. A function whose inputs are malformed raises, and the caller drops that
section only (see :func:`aa_deploy.card.render.render`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from ..contract.families import TOKENIZER_FILES
from ..contract.layout import (
    BACKBONE_DATA_NAME,
    CARD_NAME,
    CONFIG_NAME,
    GRAPH_INPUTS,
    GRAPH_NAME,
    GRAPH_OUTPUT,
    LIBRARY_NAME,
    MANIFEST_NAME,
    METRICS_NAME,
    MODEL_CONFIG_NAME,
    PICTURE_NAME,
    SELECTION_NAME,
    TOKENIZER_NAME,
    TRAINING_CONFIG_NAME,
    WEIGHTS_NAME,
)
from .artifact import Artifact
from .facts import Results, Sizes, byte_size, count, percent, ratio, scientific

PLACEHOLDER_REPO = "ORG/NAME"
GLUE_DATASET = "glue"
# Our metric names -> the Hub's metric ids (model-index ``type``) and a readable name.
HUB_METRICS = {
    "accuracy": ("accuracy", "accuracy"),
    "f1": ("f1", "F1"),
    "matthews_correlation": ("matthews_correlation", "Matthews correlation"),
    "spearman": ("spearmanr", "Spearman correlation"),
    "pearson": ("pearsonr", "Pearson correlation"),
}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "task"


def card_data(art: Artifact, results: Results | None, include_onnx: bool, model_name: str) -> ModelCardData:
    """The Hub metadata (YAML header): tags, base model, datasets and the model-index results."""
    from ..hub import is_hub_id

    tags = ["adapters", "adaptable-adapters"]
    if art.uses_rational:
        tags.append("rational-activation")
    if include_onnx:
        tags.append("onnx")
    if art.task_name:
        tags.append(slug(art.task_name))
    glue = art.glue_config
    eval_results = None
    metrics = None
    if results is not None:
        hub_metric, readable = HUB_METRICS.get(results.metric, (results.metric, results.metric))
        metrics = [hub_metric]
        dataset = dict(
            dataset_type=GLUE_DATASET if glue else slug(art.task_name or "task"),
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


def intro(art: Artifact, kept: Sequence[int]) -> dict[str, Any]:
    return {
        "base": f"`{art.base_model}`" if art.base_model else "a frozen encoder",
        "task": art.task_name or "an unnamed task",
        "metric": f" ({art.metric})" if art.metric else "",
        "recipe": art.recipe,
        "num_layers": art.num_layers,
        "kept": len(kept),
    }


def results_table(results: Results | None) -> dict[str, Any]:
    """Rows of the results table; no rows means no metrics were recorded."""
    if results is None:
        return {"readable": None, "rows": []}
    rows = []
    if results.dev_split is not None:
        rows.append(("held-out dev split of the training data (model selection)", f"{results.dev_split:.4f}"))
    if results.test is not None:
        rows.append((results.test_label, f"{results.test:.4f}"))
    return {"readable": HUB_METRICS.get(results.metric, (results.metric, results.metric))[1], "rows": rows}


def layer_stack(kept: Sequence[int], probabilities: Sequence[float], switches: bool) -> str:
    """A text picture of the layer stack (top = last layer), readable in any viewer."""
    lines = []
    kept_set = set(kept)
    for i in reversed(range(len(probabilities))):
        p = probabilities[i]
        bar = "█" * round(10 * p) + "·" * (10 - round(10 * p))
        state = "adapter" if i in kept_set else "skipped"
        lines.append(f"layer {i:>2}  {bar}  " + (f"P(adapter)={p:.2f}  " if switches else "") + state)
    return "\n".join(lines)


def layers(art: Artifact, kept: list[int], pictures: Sequence[str]) -> dict[str, Any]:
    n = art.num_layers
    return {
        "num_layers": n,
        "listed": ", ".join(str(i) for i in kept) or "none",
        "searched": art.recipe == "search",
        "stack": layer_stack(kept, art.switch_probabilities(), art.has_learned_switches()) if n else "",
        "activation": "a learned rational activation P(x)/Q(x)" if art.uses_rational else "ReLU",
        "curves": bool(art.tensors is not None and art.tensors.rationals),
        "pictures": list(pictures),
    }


def sizes(found: Sizes | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {
        "num_layers": found.num_layers,
        "hidden": found.hidden,
        "bottleneck": found.bottleneck,
        "head_params": count(found.head_params),
        "kept": found.kept,
        "standard_params": count(found.standard_params),
        "deployed_params": count(found.deployed_params),
        "deployed_share": percent(found.deployed_params, found.standard_params),
        "standard_bytes": byte_size(found.standard_bytes),
        "deployed_bytes": byte_size(found.deployed_bytes),
        "weights_name": WEIGHTS_NAME,
        "file_bytes": byte_size(found.file_bytes),
        # Only when the file holds more than what is deployed (an unpruned run folder).
        "file_params": count(found.file_params) if found.file_params != found.deployed_params else None,
    }


def latency_saving(art: Artifact) -> dict[str, Any] | None:
    """What the kept layers save in latency: in ONNX Runtime, measured by the export on the graph it wrote
    (manifest ``latency``), else in PyTorch at the end of training (metrics.json ``savings``)."""
    compiled = (art.manifest or {}).get("latency") or {}
    savings = (art.metrics or {}).get("savings") or {}
    if compiled.get("full_ms"):
        where = "the exported ONNX graph against the same model with an adapter at every layer"
        full, kept, ratio, setting = (compiled.get(k) for k in ("full_ms", "kept_ms", "ratio", "setting"))
    elif savings.get("latency_ms_full"):
        where = "the trained model in PyTorch when training ended"
        keys = ("latency_ms_full", "latency_ms_kept", "latency_ratio", "latency_setting")
        full, kept, ratio, setting = (savings.get(k) for k in keys)
    else:
        return None
    return {
        "full_ms": f"{full:.2f}",
        "kept_ms": f"{kept:.2f}",
        "ratio": f"{ratio:.2f}",
        "setting": setting or "",
        "where": where,
    }


def onnx_report(art: Artifact, files: Collection[str]) -> dict[str, Any] | None:
    manifest = art.manifest
    if manifest is None:
        return None
    recorded_sizes = manifest.get("sizes") or {}
    validation = manifest.get("validation") or {}
    rows = [
        ("graph optimised", "yes" if manifest.get("optimized") else "no"),
        ("quantization", manifest.get("quantization") or "none"),
    ]
    if manifest.get("max_length"):
        rows.append(("max sequence length", manifest["max_length"]))
    if validation:
        passed = "passed" if validation.get("passed") else "FAILED"
        rows.append((
            "validation vs PyTorch",
            f"{passed}: max abs diff {scientific(validation.get('max_abs_diff'))} on "
            f"{validation.get('num_inputs')} inputs (atol {scientific(validation.get('atol'))})",
        ))  # fmt: skip
    if recorded_sizes:
        rows += [
            ("task graph and files", byte_size(recorded_sizes.get("task_bytes"))),
            ("shared backbone", byte_size(recorded_sizes.get("backbone_bytes"))),
            ("a full copy of the model", byte_size(recorded_sizes.get("full_copy_bytes"))),
            ("task share of a full copy", ratio(recorded_sizes.get("ratio_to_full_copy"))),
        ]
    return {
        "mode": manifest.get("mode"),
        "onnx_name": GRAPH_NAME,
        "data_name": BACKBONE_DATA_NAME,
        "rows": rows,
        "included": GRAPH_NAME in files,
        "data_included": BACKBONE_DATA_NAME in files,
    }


def usage(art: Artifact, repo_id: str) -> dict[str, Any]:
    from ..hub import is_hub_id

    base = art.base_model
    if base and is_hub_id(base):
        where = f"The backbone `{base}` is loaded from its own Hub repo (or the local cache)"
    elif base:
        where = f"The backbone is loaded from the local folder `{base}` (pass `backbone=...` where it lives elsewhere)"
    else:
        where = "The backbone is the default one (pass `backbone=...` to choose)"
    return {
        "repo_id": repo_id,
        "task": slug(art.task_name or "task"),
        "where": where,
        "config_name": CONFIG_NAME,
        "placeholder": repo_id == PLACEHOLDER_REPO,
    }


def training(art: Artifact) -> list[tuple[str, Any]]:
    cfg = art.config
    metrics = art.metrics or {}
    rows = [
        ("recipe", art.recipe),
        ("base model", art.base_model),
        ("backbone family", cfg.get("base_model_type")),
        ("reduction factor", cfg.get("reduction_factor")),
        ("rational version", cfg.get("rational_version") if art.uses_rational else None),
        ("rational degrees", _degrees(cfg) if art.uses_rational else None),
        ("training examples", metrics.get("train_examples")),
        ("best epoch", metrics.get("best_epoch")),
        ("seed", metrics.get("seed")),
        ("backbone config fingerprint", cfg.get("base_model_config_fingerprint")),
        ("backbone weights fingerprint", cfg.get("base_model_weights_fingerprint")),
    ]
    return [(key, value) for key, value in rows if value not in (None, "")]


def _degrees(cfg: dict[str, Any]) -> str | None:
    numerator, denominator = cfg.get("numerator_degree"), cfg.get("denominator_degree")
    return f"{numerator}/{denominator}" if numerator is not None and denominator is not None else None


# What each file of an artefact is, for the card's file list (files not named here are listed plainly).
FILE_ROLES: dict[str, str] = {
    **{name: "tokenizer file (for `transformers.AutoTokenizer`)" for name in TOKENIZER_FILES},
    CONFIG_NAME: "adapter configuration: recipe, kept layers, the backbone's name and fingerprints",
    WEIGHTS_NAME: "the trained tensors only: adapters and task head (no backbone weights)",
    SELECTION_NAME: "which layers kept their adapter, with the switch probabilities",
    METRICS_NAME: "what the training run measured",
    TRAINING_CONFIG_NAME: "the training options of the run",
    MANIFEST_NAME: "the ONNX export's manifest: mode, validation, sizes",
    GRAPH_NAME: "the ONNX task graph",
    BACKBONE_DATA_NAME: "the backbone's tensors that the ONNX graph reads (a copy of the backbone)",
    MODEL_CONFIG_NAME: "the transformers config of the classifier (labels)",
    TOKENIZER_NAME: "the tokenizer (the `tokenizers` library)",
    PICTURE_NAME: "the learned activations and the layer stack",
    CARD_NAME: "this model card",
}


def contents(art: Artifact, files: Collection[str]) -> dict[str, Any]:
    """What the artefact holds, from the names of the files that travel with the card.

    Every statement the card makes about its files (is the backbone inside? is the ONNX graph? its
    data?) is derived from this, never assumed, so the card cannot contradict the folder.
    """
    names = set(files) | {CARD_NAME}
    mode = (art.manifest or {}).get("mode")
    graph = GRAPH_NAME in names
    standalone_graph = graph and mode == "standalone"
    data = BACKBONE_DATA_NAME in names
    return {
        "files": [(name, FILE_ROLES.get(name, "")) for name in sorted(names)],
        "has_graph": graph,
        "has_backbone_data": data,
        "standalone_graph": standalone_graph,
        "holds_backbone": data or standalone_graph,
        "graph_name": GRAPH_NAME,
        "data_name": BACKBONE_DATA_NAME,
        "config_name": CONFIG_NAME,
        "weights_name": WEIGHTS_NAME,
    }


def onnx_usage(art: Artifact, files: Collection[str], repo_id: str) -> dict[str, Any] | None:
    """The ONNX Runtime snippet's variables, when the graph (and what it needs beside it) is present."""
    names = set(files)
    if GRAPH_NAME not in names or TOKENIZER_NAME not in names:
        return None
    if (art.manifest or {}).get("mode") == "shared" and BACKBONE_DATA_NAME not in names:
        return None
    return {
        "repo_id": repo_id,
        "graph_name": GRAPH_NAME,
        "tokenizer_name": TOKENIZER_NAME,
        "max_length": (art.manifest or {}).get("max_length"),
        "inputs": list(GRAPH_INPUTS),
        "output": GRAPH_OUTPUT,
        "pair": bool(art.task.get("is_pair")),
        "labels": art.task.get("label_names"),
    }
