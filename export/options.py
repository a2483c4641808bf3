"""The settings of one export, as one dataclass: the ``aa-deploy export`` flags and ``export_run``'s options.

``ExportOptions`` is the one owner of these options: the CLI derives its flags from the fields (see
:mod:`aa_deploy.cli_options`), ``export_run`` takes the object whole, and the manifest records it.
Standard library only, so that building the CLI does not import torch or onnx.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from aa_deploy.cli_options import GLUE_DIR_ENV, option

# The quantisation schemes the post-processing knows (aa_deploy.export.optimize applies them): dynamic
# INT8 of every MatMul, or of the backbone's only, the adapters' projections left in float32.
QUANTIZATION_TYPES: tuple[str, ...] = ("int8", "int8-backbone")
FP32_ADAPTER_QUANTIZATIONS: frozenset[str] = frozenset({"int8-backbone"})


@dataclass
class ExportOptions:
    """The settings of one export (recorded in the manifest; round-trips through JSON)."""

    standalone: bool = option(False, help="one self-contained model.onnx (no shared backbone)")
    optimize: bool = option(
        False, help="apply ONNX Runtime's transformer fusions (for GPUs / many threads; slower on 1-2 CPU threads)"
    )
    quantize: str | None = option(
        None,
        choices=QUANTIZATION_TYPES,
        help="dynamic INT8 quantisation of the weights: int8 = every MatMul, the adapters' too; int8-backbone = "
        "the backbone's only, the adapters stay float32 (default: none, fp32)",
    )
    backbone_store: str | None = option(
        None,
        metavar="PATH",
        help="where shared backbones live (default: $AA_DEPLOY_HOME/backbones or ~/.cache/aa_deploy/backbones); "
        "put it on the output's file system so that task folders can share its blocks (reflink or hard link)",
    )
    hardlink_backbone: bool = option(
        False,
        help="hard-link backbone.onnx_data to the store: one copy on disk for all tasks on any file system, but "
        "tools built on the onnx package (onnx.load, onnx.checker, Optimum's ORTQuantizer) refuse the folder. "
        "Default: the folder's own file, reflinked where the file system supports it, else copied",
    )
    data_dir: str | None = option(
        None,
        env=GLUE_DIR_ENV,
        metavar="DIR",
        help="GLUE folder for validation inputs and INT8 metrics (else built-in sentences)",
    )
    atol: float = option(1e-4, help="max abs logit difference ONNX vs PyTorch (fp32)")
    adapterdrop_eval_layers: int | None = option(
        None,
        metavar="N",
        help="adapterdrop runs: drop the adapters of the N lowest layers from the exported model (an AdapterDrop "
        "model was trained to run with any such depth; default: the run's own --adapterdrop-eval-layers)",
    )
    measure_latency: bool = option(
        False,
        help="when layers were removed, time the exported graph against the same model with an adapter at every "
        "layer (ONNX Runtime, batch 1) and record it in the manifest and the model card; timings differ per "
        "run, so the folder is then not byte-identical across re-exports (default: the card quotes training's "
        "PyTorch measurement)",
    )
    task_name: str | None = option(None, help="task name recorded in the manifest (default: the run's task)")
    overwrite: bool = option(False, help="replace an existing --output folder")
    max_eval_examples: int | None = option(
        None, metavar="N", help="cap the dev examples used for the INT8 metric (default: all)"
    )

    def __post_init__(self) -> None:
        if self.quantize is not None and self.quantize not in QUANTIZATION_TYPES:
            raise ValueError(f"unknown quantization {self.quantize!r}: choose one of {', '.join(QUANTIZATION_TYPES)}")
        if not self.atol > 0:
            raise ValueError(f"atol must be > 0, got {self.atol}")
        self.atol = float(self.atol)
        if self.adapterdrop_eval_layers is not None and self.adapterdrop_eval_layers < 0:
            raise ValueError(f"adapterdrop_eval_layers must be >= 0, got {self.adapterdrop_eval_layers}")
        # Paths may come in as os.PathLike from library callers; the manifest and JSON want strings.
        if self.backbone_store is not None:
            self.backbone_store = os.fspath(self.backbone_store)
        if self.data_dir is not None:
            self.data_dir = os.fspath(self.data_dir)

    def replace(self, **overrides: Any) -> ExportOptions:
        """A copy with some fields changed; an unknown name is a ``TypeError`` that lists the known ones."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown export option(s) {unknown}: the options are {sorted(known)}")
        return ExportOptions(**{**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportOptions:
        return cls(**data)
