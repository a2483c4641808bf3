"""ONNX Runtime sessions: options, providers, and graphs whose backbone tensors come from a SharedBackbone.

A graph is never loaded with its external data: ``onnx.load(load_external_data=False)`` keeps only the
references, every reference into the backbone file is replaced by the shared OrtValue
(``add_initializer``), and ORT is pointed at the export folder only to validate those references.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .backbone import SharedBackbone

# ONNX Runtime graph optimisers the server turns off on the CPU provider unless told otherwise
# (ServerConfig.ort_disabled_optimizers). SkipLayerNormFusion fuses a residual Add and the LayerNorm after
# it into one SkipLayerNormalization kernel, which on ORT's CPU provider was slower than the two ops it
# replaces: an INT8 MiniLM export ran 1.10-1.15x faster at batch 1 without it (fp32: 1.00-1.02x),
# measured in paired sessions (benchmarks/latency_parity.py, part 4). On CUDA the fused kernel is the fast
# one, so nothing is turned off there.
CPU_DISABLED_OPTIMIZERS: tuple[str, ...] = ("SkipLayerNormFusion",)

_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


@dataclass(frozen=True)
class SessionSettings:
    """The ORT knobs of ServerConfig that matter for building sessions."""

    intra_op_threads: int = 0
    prepacking: bool = True
    providers: tuple[str, ...] | None = None
    graph_optimization_level: str = "all"
    # None: CPU_DISABLED_OPTIMIZERS when the providers are CPU only, none otherwise.
    disabled_optimizers: tuple[str, ...] | None = None

    def resolved_disabled_optimizers(self, providers: Sequence[str] | None = None) -> list[str]:
        """The ORT optimisers to turn off on ``providers`` (default: :meth:`resolved_providers`)."""
        if self.disabled_optimizers is not None:
            return list(self.disabled_optimizers)
        chosen = self.resolved_providers() if providers is None else providers
        return list(CPU_DISABLED_OPTIMIZERS) if set(chosen) == {"CPUExecutionProvider"} else []

    def resolved_providers(self) -> list[str]:
        """CUDA when onnxruntime-gpu offers it and it really works (unless providers were given), CPU otherwise."""
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.providers:
            missing = [p for p in self.providers if p not in available]
            if missing:
                raise ValueError(f"ONNX Runtime providers {missing} are not available here (available: {available})")
            return list(self.providers)
        if "CUDAExecutionProvider" in available and cuda_works():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def with_providers(self, providers: Sequence[str]) -> SessionSettings:
        return replace(self, providers=tuple(providers))

    def options(self, *, prepacking: bool | None = None, throwaway: bool = False) -> Any:
        """``throwaway``: a session run a few times and dropped (load-time checks): no memory arena and
        no prepacking, so it leaves nothing behind in the process, and at most basic graph optimisation,
        so it builds faster (its answers are the reference a merged graph is checked against)."""
        import onnxruntime as ort

        level = self.graph_optimization_level
        if throwaway and level in ("extended", "all"):  # at most basic; never raises a lower level
            level = "basic"
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[level])
        if throwaway:
            options.enable_cpu_mem_arena = False
            prepacking = False
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not (self.prepacking if prepacking is None else prepacking):
            options.add_session_config_entry("session.disable_prepacking", "1")
        return options


def cuda_works() -> bool:
    """onnxruntime-gpu lists CUDA even when the CUDA/cuDNN libraries are missing; try a one-node session.

    Called once per server (the registry resolves its providers at start), so its cost and its log
    noise are paid once.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    previous = None
    try:
        previous = ort.get_default_logger_severity() if hasattr(ort, "get_default_logger_severity") else None
        ort.set_default_logger_severity(4)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CUDAExecutionProvider"])
        return "CUDAExecutionProvider" in session.get_providers()
    except Exception:
        return False
    finally:
        ort.set_default_logger_severity(previous if previous is not None else 2)


def shared_initializers(model: Any, backbone: SharedBackbone) -> list[tuple[str, Any]]:
    """(name, OrtValue) for every initializer of ``model`` stored in the backbone file."""
    from onnx import TensorProto

    return [
        (tensor.name, backbone.value(tensor))
        for tensor in model.graph.initializer
        if tensor.data_location == TensorProto.EXTERNAL
    ]


def point_external_data(model: Any, expected_location: str, real_path: str) -> int:
    """Check every external reference names the manifest's backbone file and point it at its real file.

    ORT validates references (it does not read them: they are overridden) and refuses paths that leave
    the folder, which a Hub cache symlink would; the real file's folder and name always pass.
    """
    from onnx import TensorProto

    count = 0
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location":
                if entry.value != expected_location:
                    raise ValueError(
                        f"initializer {tensor.name!r} points to external file {entry.value!r}, not the shared "
                        f"backbone {expected_location!r}: the export does not follow the aa-deploy contract; re-export"
                    )
                entry.value = os.path.basename(real_path)
                count += 1
    return count


def create_session(
    model: Any,
    settings: SessionSettings,
    *,
    backbone: SharedBackbone | None = None,
    external_folder: str | None = None,
    model_path: str | None = None,
    prepacking: bool | None = None,
    throwaway: bool = False,
) -> Any:
    """An InferenceSession for ``model`` (a ModelProto without external data loaded) or ``model_path``."""
    import onnxruntime as ort

    options = settings.options(prepacking=prepacking, throwaway=throwaway)
    if backbone is not None:
        for name, value in shared_initializers(model, backbone):
            options.add_initializer(name, value)
        # Only used to validate the references we just overrode; ORT does not read the file.
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_folder))
        source: Any = model.SerializeToString()
    elif model is not None:
        source = model.SerializeToString()
    else:
        source = model_path
    providers = settings.resolved_providers()
    disabled = settings.resolved_disabled_optimizers(providers)
    session = ort.InferenceSession(source, options, providers=providers, disabled_optimizers=disabled)
    # The session only borrows the backbone buffers: keep the backbone alive as long as the session.
    session._aa_backbone = backbone  # type: ignore[attr-defined]
    return session


def run_session(
    session: Any, feeds: dict[str, np.ndarray], output: str = "logits", *, inputs: set[str] | None = None
) -> np.ndarray:
    """Run with only the inputs the graph declares (graphs differ in whether they take token_type_ids).
    ``inputs``: the session's input names when the caller keeps them (listing them costs a call into ORT)."""
    wanted = inputs if inputs is not None else {i.name for i in session.get_inputs()}
    missing = wanted - set(feeds)
    if missing:
        raise ValueError(f"the graph needs inputs {sorted(missing)} the server did not produce")
    return session.run([output], {k: v for k, v in feeds.items() if k in wanted})[0]
