"""``aa_export.json``: the contract between the compiler and every reader of an export folder.

One module for both sides (docs/DESIGN.md, "The artefact contract"): the compiler builds and writes
the manifest with :func:`build_manifest` / :func:`write_manifest`, the server loads it as an
:class:`ExportManifest`, and tools read it with :func:`read_manifest`. There is one
:class:`ManifestError` and one version rule (:func:`check_format`).

Two levels of checking, on purpose:

* :func:`check_manifest` (the writer's and :func:`read_manifest`'s check) requires every key of
  :data:`REQUIRED_KEYS`: what this version writes;
* :meth:`ExportManifest.load` (the server's) requires only what serving needs and fills defaults for
  the rest, so a hand-made or older folder still serves; it also checks that the files are there.

The keys of :data:`REQUIRED_KEYS` never change meaning within a ``format_version``. Extra keys may be
added (they are informational). Standard library only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aa_deploy.fileio import atomic_write_text

from .layout import BACKBONE_DATA_NAME, GRAPH_INPUTS, GRAPH_NAME, GRAPH_OUTPUT, MANIFEST_NAME, TOKENIZER_NAME

FORMAT = "aa-deploy-onnx"
FORMAT_VERSION = 1
MODES = ("shared", "standalone")
REGRESSION, CLASSIFICATION = "regression", "single_label_classification"

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
    """``aa_export.json`` is missing, unreadable, or not a manifest this version understands."""


# ------------------------------------------------------------------------------------- checking
def check_format(data: dict[str, Any], where: str | os.PathLike = MANIFEST_NAME) -> None:
    """The one version rule: the format must be ours and its version not newer than this code."""
    if data.get("format") != FORMAT:
        raise ManifestError(f"{where}: not an aa-deploy export (format {data.get('format')!r}, expected {FORMAT!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ManifestError(
            f"{where}: format_version {version!r} is not supported (this aa-deploy reads up to "
            f"{FORMAT_VERSION}); upgrade aa-deploy"
        )


def check_manifest(data: dict[str, Any], where: str | os.PathLike = MANIFEST_NAME) -> None:
    """Raise ManifestError unless every contract key is present with a sensible value."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    check_format(data, where)
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
    _served_fields(data, str(where))


def _load_json(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ManifestError(f"{directory} is not a folder: pass a folder written by `aa-deploy export`")
    if not path.is_file():
        raise ManifestError(
            f"{path} not found: {directory} is not an aa-deploy export (run `aa-deploy export RUN_DIR --output DIR`)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}): the export is damaged; re-run the export") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path} must hold a JSON object")
    return data


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Load ``DIR/aa_export.json`` and check it has every contract key (the writer's check)."""
    folder = Path(directory)
    data = _load_json(folder)
    check_manifest(data, folder / MANIFEST_NAME)
    return data


# -------------------------------------------------------------------------------------- writing
def manifest_json(data: dict[str, Any]) -> str:
    """The serialised form (sorted keys, stable across runs)."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_manifest(directory: str | os.PathLike, data: dict[str, Any]) -> str:
    """Check ``data`` and write it atomically as ``DIR/aa_export.json``; returns the text written.

    Checking first means the compiler can never publish a manifest its own readers would refuse.
    """
    path = Path(directory) / MANIFEST_NAME
    check_manifest(data, path)
    text = manifest_json(data)
    atomic_write_text(path, text)
    return text


# How a shared-mode folder's backbone file relates to the backbone store's copy on disk (the
# ``backbone_data.sharing`` value): a hard link to it, a reflink (own file, shared blocks), or a copy.
HARDLINK, REFLINK, COPY = "hardlink", "reflink", "copy"
BACKBONE_SHARING = (HARDLINK, REFLINK, COPY)


def backbone_data_entry(
    *,
    sha256: str,
    tensors: list[str],
    size: int,
    linked: bool | None,
    store_object: str,
    sharing: str | None = None,
) -> dict[str, Any]:
    """The ``backbone_data`` block of a shared-mode export (the file name is the contract's).

    ``sha256`` is the data file's content hash: a server shares one copy in memory among every folder
    whose file has that hash. ``sharing`` says how the folder's file relates to the store copy on disk
    (``hardlink``, ``reflink`` or ``copy``); ``linked`` (true for a hard link) is kept for older readers.
    """
    return {
        "file": BACKBONE_DATA_NAME,
        "sha256": sha256,
        "tensors": list(tensors),
        "bytes": size,
        "linked": linked,
        "sharing": sharing,
        "store_object": store_object,
    }


def build_manifest(
    *,
    task: dict[str, Any],
    num_labels: int,
    is_regression: bool,
    inputs: list[str],
    max_length: int,
    pad_token_id: int,
    kept_layers: list[int],
    num_layers: int,
    base_model: dict[str, Any],
    backbone_data: dict[str, Any] | None,
    optimized: bool,
    quantization: str | None,
    validation: dict[str, Any],
    informational: dict[str, Any],
) -> dict[str, Any]:
    """The manifest of a new export: the server contract first, then informational keys.

    ``backbone_data`` None means a standalone export. ``sizes`` is left empty: the sizes include the
    manifest itself, so the writer fills them in (export/api.py iterates to a fixpoint).
    """
    contract = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": {key: task.get(key) for key in TASK_KEYS},
        "num_labels": num_labels,
        "problem_type": REGRESSION if is_regression else CLASSIFICATION,
        "inputs": list(inputs),
        "outputs": [GRAPH_OUTPUT],
        "max_length": max_length,
        "pad_token_id": int(pad_token_id),
        "kept_layers": list(kept_layers),
        "num_layers": num_layers,
        "base_model": {key: base_model.get(key) for key in BASE_MODEL_KEYS},
        "mode": "standalone" if backbone_data is None else "shared",
        "backbone_data": backbone_data,
        "optimized": optimized,
        "quantization": quantization,
        "validation": validation,
        "sizes": {},
    }
    clash = sorted(set(contract) & set(informational))
    if clash:
        raise ValueError(f"informational manifest keys {clash} would overwrite contract keys")
    return contract | informational


# ----------------------------------------------------------------------------- the served view
def _served_fields(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The checked fields serving relies on (defaults for absent optional keys), as ExportManifest kwargs."""
    task = data.get("task") or {}
    if not isinstance(task, dict):
        raise ManifestError(f"{where}: 'task' must be an object")
    label_names = task.get("label_names")
    num_labels = data.get("num_labels")
    if label_names is not None:
        if not isinstance(label_names, list) or not all(isinstance(x, str) for x in label_names):
            raise ManifestError(f"{where}: task.label_names must be a list of strings or null")
        label_names = tuple(label_names)
        if num_labels is None:
            num_labels = len(label_names)
        if num_labels != len(label_names):
            raise ManifestError(f"{where}: num_labels={num_labels} but {len(label_names)} label names")
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ManifestError(f"{where}: num_labels must be a positive integer, got {num_labels!r}")
    inputs = data.get("inputs") or list(GRAPH_INPUTS[:2])
    unknown = [x for x in inputs if x not in GRAPH_INPUTS]
    if unknown or GRAPH_INPUTS[0] not in inputs:
        raise ManifestError(f"{where}: inputs {inputs} must include input_ids and only use {GRAPH_INPUTS}")
    max_length = data.get("max_length")
    if not isinstance(max_length, int) or max_length < 2:
        raise ManifestError(f"{where}: max_length must be an integer >= 2, got {max_length!r}")
    mode = data.get("mode", "shared" if data.get("backbone_data") else "standalone")
    if mode not in MODES:
        raise ManifestError(f"{where}: mode must be 'shared' or 'standalone', got {mode!r}")
    backbone = data.get("backbone_data") or {}
    backbone_file = backbone.get("file") if mode == "shared" else None
    if mode == "shared" and (not backbone_file or Path(backbone_file).name != backbone_file):
        raise ManifestError(f"{where}: shared mode needs backbone_data.file (a file name in the folder)")
    try:
        pad_token_id = int(data.get("pad_token_id") or 0)
        kept_layers = tuple(int(i) for i in data.get("kept_layers") or ())
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: pad_token_id and kept_layers must be integers ({exc})") from None
    return {
        "task_name": task.get("name"),
        "metric": task.get("metric"),
        "label_names": label_names,
        "is_pair": bool(task.get("is_pair", False)),
        "num_labels": num_labels,
        "problem_type": str(data.get("problem_type") or (REGRESSION if label_names is None else CLASSIFICATION)),
        "inputs": tuple(inputs),
        "max_length": max_length,
        "pad_token_id": pad_token_id,
        "kept_layers": kept_layers,
        "num_layers": data.get("num_layers"),
        "mode": mode,
        "backbone_file": backbone_file,
        "backbone_sha256": backbone.get("sha256"),
        "backbone_tensors": tuple(backbone.get("tensors") or ()),
        "base_model": dict(data.get("base_model") or {}),
        "optimized": bool(data.get("optimized", False)),
        "quantization": data.get("quantization"),
        "sizes": dict(data.get("sizes") or {}),
    }


@dataclass(frozen=True)
class ExportManifest:
    """An export folder as the server sees it: the validated fields of its manifest; ``raw`` keeps the file."""

    folder: Path
    task_name: str
    metric: str | None
    label_names: tuple[str, ...] | None
    is_pair: bool
    num_labels: int
    problem_type: str
    inputs: tuple[str, ...]
    max_length: int
    pad_token_id: int
    kept_layers: tuple[int, ...]
    num_layers: int | None
    mode: str
    backbone_file: str | None
    backbone_sha256: str | None
    backbone_tensors: tuple[str, ...]
    base_model: dict[str, Any]
    optimized: bool
    quantization: Any
    sizes: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def shared(self) -> bool:
        return self.mode == "shared"

    @property
    def model_path(self) -> Path:
        return self.folder / GRAPH_NAME

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / TOKENIZER_NAME

    @property
    def backbone_path(self) -> Path | None:
        return self.folder / self.backbone_file if self.backbone_file else None

    @property
    def is_regression(self) -> bool:
        return self.problem_type == REGRESSION or self.label_names is None

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ExportManifest:
        """Read, validate and check the files of an export folder (errors say which file to fix)."""
        directory = Path(folder)
        return cls.from_dict(directory, _load_json(directory))

    @classmethod
    def from_dict(cls, directory: Path, data: dict[str, Any]) -> ExportManifest:
        where = str(directory / MANIFEST_NAME)
        check_format(data, where)
        fields_ = _served_fields(data, where)
        fields_["task_name"] = str(fields_["task_name"] or directory.name)
        manifest = cls(folder=directory, raw=data, **fields_)
        manifest.check_files()
        return manifest

    def check_files(self) -> None:
        for path, what in ((self.model_path, "the task graph"), (self.tokenizer_path, "the tokenizer")):
            if not path.is_file():
                raise ManifestError(
                    f"{path} ({what}) is missing: the export folder {self.folder} is incomplete; re-export it"
                )
        if self.shared and not self.backbone_path.is_file():  # type: ignore[union-attr]
            raise ManifestError(
                f"{self.backbone_path} (the shared backbone tensors) is missing: copy the export with its "
                "backbone file (hard links are fine) or re-export with --standalone"
            )

    def public_info(self) -> dict[str, Any]:
        """What the API shows about a task (no local paths)."""
        return {
            "task": self.task_name,
            "metric": self.metric,
            "label_names": list(self.label_names) if self.label_names else None,
            "is_pair": self.is_pair,
            "num_labels": self.num_labels,
            "problem_type": self.problem_type,
            "inputs": list(self.inputs),
            "max_length": self.max_length,
            "kept_layers": list(self.kept_layers),
            "num_layers": self.num_layers,
            "mode": self.mode,
            "base_model": self.base_model.get("name_or_path"),
            "optimized": self.optimized,
            "quantization": self.quantization,
        }
