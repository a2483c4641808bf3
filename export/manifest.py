"""``aa_export.json``: the contract between the compiler and the server (docs/DESIGN.md).

Standard library only, so that the torch-free server (or anyone else) can import :func:`read_manifest`.
The keys of :data:`REQUIRED_KEYS` are what the server relies on; they never change meaning within a
``format_version``. Extra keys may be added (they are informational).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST_NAME = "aa_export.json"
FORMAT = "aa-deploy-onnx"
FORMAT_VERSION = 1
MODES = ("shared", "standalone")

REQUIRED_KEYS: tuple[str, ...] = (
    "format",
    "format_version",
    "task",
    "num_labels",
    "problem_type",
    "inputs",
    "outputs",
    "max_length",
    "pad_token_id",
    "kept_layers",
    "num_layers",
    "base_model",
    "mode",
    "backbone_data",
    "optimized",
    "quantization",
    "validation",
    "sizes",
)
TASK_KEYS = ("name", "metric", "label_names", "is_pair")
BASE_MODEL_KEYS = ("name_or_path", "model_type", "config_fingerprint", "weights_fingerprint")
BACKBONE_DATA_KEYS = ("file", "sha256", "tensors")
VALIDATION_KEYS = ("max_abs_diff", "atol", "num_inputs", "passed")
SIZES_KEYS = ("backbone_bytes", "task_bytes", "full_copy_bytes", "ratio_to_full_copy")


class ManifestError(ValueError):
    """``aa_export.json`` is missing, unreadable or not a manifest this version understands."""


def check_manifest(data: dict[str, Any], where: str = MANIFEST_NAME) -> None:
    """Raise ManifestError unless every contract key is present with a sensible value."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    if data.get("format") != FORMAT:
        raise ManifestError(f"{where}: not an aa-deploy export (format {data.get('format')!r}, expected {FORMAT!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ManifestError(
            f"{where}: format_version {version!r} is newer than this aa-deploy understands ({FORMAT_VERSION}); upgrade"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    for block, keys in (
        ("task", TASK_KEYS),
        ("base_model", BASE_MODEL_KEYS),
        ("validation", VALIDATION_KEYS),
        ("sizes", SIZES_KEYS),
    ):
        if isinstance(data.get(block), dict):
            missing += [f"{block}.{k}" for k in keys if k not in data[block]]
    if data.get("mode") == "shared":
        if not isinstance(data.get("backbone_data"), dict):
            missing.append("backbone_data")
        else:
            missing += [f"backbone_data.{k}" for k in BACKBONE_DATA_KEYS if k not in data["backbone_data"]]
    if missing:
        raise ManifestError(f"{where}: missing keys {missing}; re-export the task with this aa-deploy version")
    if data["mode"] not in MODES:
        raise ManifestError(f"{where}: unknown mode {data['mode']!r}; expected one of {MODES}")


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Load and check ``DIR/aa_export.json``."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path} not found: {directory} is not an `aa-deploy export` folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}): the export is damaged; export it again") from exc
    check_manifest(data, str(path))
    return data


def manifest_json(data: dict[str, Any]) -> str:
    """The serialised form (sorted keys, stable across runs)."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
