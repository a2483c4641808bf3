"""Reading ``aa_export.json``, the contract between ``aa-deploy export`` and this server (docs/DESIGN.md).

The server trusts only what the manifest promises (inputs, labels, max_length, which backbone file the
graph points to) and checks that the files it names are really there, so a broken or foreign folder
fails at load time with a message that says which file to fix, never at the first request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "aa_export.json"
MODEL_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.json"
SUPPORTED_FORMAT = "aa-deploy-onnx"
SUPPORTED_FORMAT_VERSION = 1
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class ManifestError(ValueError):
    """The folder is not a usable aa-deploy export."""


@dataclass(frozen=True)
class ExportManifest:
    """The fields of ``aa_export.json`` the server uses, validated; ``raw`` keeps the whole file."""

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
        return self.folder / MODEL_NAME

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / TOKENIZER_NAME

    @property
    def backbone_path(self) -> Path | None:
        return self.folder / self.backbone_file if self.backbone_file else None

    @property
    def is_regression(self) -> bool:
        return self.problem_type == "regression" or self.label_names is None

    def label_name(self, index: int) -> str:
        if self.label_names is None:
            return str(index)
        return self.label_names[index]

    @classmethod
    def load(cls, folder: str | Path) -> ExportManifest:
        directory = Path(folder)
        path = directory / MANIFEST_NAME
        if not directory.is_dir():
            raise ManifestError(f"{directory} is not a folder: pass a folder written by `aa-deploy export`")
        if not path.is_file():
            raise ManifestError(
                f"{path} not found: {directory} is not an aa-deploy export (run `aa-deploy export RUN_DIR --output DIR`)"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path} is not valid JSON ({exc}); re-run the export") from exc
        if not isinstance(data, dict):
            raise ManifestError(f"{path} must hold a JSON object")
        return cls.from_dict(directory, data)

    @classmethod
    def from_dict(cls, directory: Path, data: dict[str, Any]) -> ExportManifest:
        where = directory / MANIFEST_NAME
        if data.get("format") != SUPPORTED_FORMAT:
            raise ManifestError(f"{where}: format is {data.get('format')!r}, expected {SUPPORTED_FORMAT!r}")
        version = data.get("format_version")
        if not isinstance(version, int) or version > SUPPORTED_FORMAT_VERSION:
            raise ManifestError(
                f"{where}: format_version {version!r} is not supported (this server reads up to "
                f"{SUPPORTED_FORMAT_VERSION}); upgrade aa-deploy"
            )
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
        inputs = data.get("inputs") or ["input_ids", "attention_mask"]
        unknown = [x for x in inputs if x not in KNOWN_INPUTS]
        if unknown or "input_ids" not in inputs:
            raise ManifestError(f"{where}: inputs {inputs} must include input_ids and only use {KNOWN_INPUTS}")
        max_length = data.get("max_length")
        if not isinstance(max_length, int) or max_length < 2:
            raise ManifestError(f"{where}: max_length must be an integer >= 2, got {max_length!r}")
        mode = data.get("mode", "shared" if data.get("backbone_data") else "standalone")
        if mode not in ("shared", "standalone"):
            raise ManifestError(f"{where}: mode must be 'shared' or 'standalone', got {mode!r}")
        backbone = data.get("backbone_data") or {}
        backbone_file = backbone.get("file") if mode == "shared" else None
        if mode == "shared":
            if not backbone_file or Path(backbone_file).name != backbone_file:
                raise ManifestError(f"{where}: shared mode needs backbone_data.file (a file name in the folder)")
        manifest = cls(
            folder=directory,
            task_name=str(task.get("name") or directory.name),
            metric=task.get("metric"),
            label_names=label_names,
            is_pair=bool(task.get("is_pair", False)),
            num_labels=num_labels,
            problem_type=str(
                data.get("problem_type") or ("regression" if label_names is None else "single_label_classification")
            ),
            inputs=tuple(inputs),
            max_length=max_length,
            pad_token_id=int(data.get("pad_token_id") or 0),
            kept_layers=tuple(int(i) for i in data.get("kept_layers") or ()),
            num_layers=data.get("num_layers"),
            mode=mode,
            backbone_file=backbone_file,
            backbone_sha256=backbone.get("sha256"),
            backbone_tensors=tuple(backbone.get("tensors") or ()),
            base_model=dict(data.get("base_model") or {}),
            optimized=bool(data.get("optimized", False)),
            quantization=data.get("quantization"),
            sizes=dict(data.get("sizes") or {}),
            raw=data,
        )
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
