"""PyTorch → ONNX for a compiled task model and for the bare backbone, with stable tensor names.

Exporter choice (measured on all-MiniLM-L6-v2, torch 2.13, 2 CPU cores): the TorchScript-based
exporter (``dynamo=False``) takes about 0.8 s and, with the *eager* attention implementation, its
graph fuses completely in ONNX Runtime's transformer optimiser (EmbedLayerNormalization, 6 Attention,
12 SkipLayerNormalization, 6 BiasGelu). With ``sdpa`` attention the attention does not fuse, and the
dynamo exporter takes about 7 s and does not fuse attention either. So we export with TorchScript
and switch the backbone to eager attention for the export (the math is the same; outputs differ by
~1e-8, and validation checks against the trained model as loaded). The fusions themselves are
optional (``--optimize``): on one or two CPU threads the plain graph, optimised by ONNX Runtime at
load time, is faster (see export/optimize.py).

Initializers are renamed by content to canonical names: backbone tensors get their ``transformers``
parameter names (``bert.encoder.layer.0.attention.self.query.weight``; ``….T`` where the exporter
folded the transpose of a Linear weight), task tensors the adapter/head names. The names then no
longer depend on the exporter's counters, which makes re-exports byte-identical and lets every task
graph refer to the shared backbone tensors by the same names.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import ModelProto
from torch import nn
from transformers import PreTrainedModel

from aa_deploy.contract.layout import GRAPH_INPUTS, GRAPH_OUTPUT

from .onnx_protos import rename_values, tensor_digest, value_names

OPSET = 17
BATCH_AXIS, SEQUENCE_AXIS = "batch", "sequence"


def graph_input_names(backbone: PreTrainedModel) -> list[str]:
    """The inputs the task graph takes: ``token_type_ids`` only where segment ids change the output.

    RoBERTa-style models (one segment type), DeBERTa-v2 without segment embeddings and DistilBERT
    (no such argument) would ignore them, and the exporter would drop an unused input anyway.
    """
    ids, mask, segments = GRAPH_INPUTS
    names = [ids, mask]
    accepts = segments in inspect.signature(backbone.forward).parameters
    if accepts and int(getattr(backbone.config, "type_vocab_size", 0) or 0) >= 2:
        names.append(segments)
    return names


@contextlib.contextmanager
def eager_attention(backbone: PreTrainedModel) -> Iterator[None]:
    """Export with the eager attention implementation (it is the one ORT's Attention fusion matches)."""
    previous = getattr(backbone.config, "_attn_implementation", None)
    changed = False
    if previous not in (None, "eager") and hasattr(backbone, "set_attn_implementation"):
        try:
            backbone.set_attn_implementation("eager")
            changed = True
        except (ValueError, NotImplementedError, AttributeError):
            changed = False
    try:
        yield
    finally:
        if changed:
            backbone.set_attn_implementation(previous)


@contextlib.contextmanager
def adapters_detached(model: nn.Module) -> Iterator[None]:
    """Temporarily remove an AdaptableAdapterModel's hooks, leaving the untouched backbone."""
    model.detach()
    try:
        yield
    finally:
        model.attach()


class TaskLogits(nn.Module):
    """Tokens in, logits out: the signature of a task graph (positional, in ``input_names`` order)."""

    def __init__(self, model: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs, strict=True))).logits


class BareBackbone(nn.Module):
    """The backbone's base model (no adapters, no head): what all task graphs of a backbone share."""

    def __init__(self, base_model: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.base_model = base_model
        self.input_names = list(input_names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.base_model(**dict(zip(self.input_names, inputs, strict=True)))
        pooled = getattr(out, "pooler_output", None)
        return (out.last_hidden_state,) if pooled is None else (out.last_hidden_state, pooled)


def _export(
    module: nn.Module,
    example: Mapping[str, np.ndarray],
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> ModelProto:
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[name])) for name in input_names)
    module.eval()
    with tempfile.TemporaryDirectory(prefix="aa-export-") as tmp, warnings.catch_warnings():
        # Tracing warns about Python control flow it records as constants (e.g. shape checks); the
        # validation step runs the graph on other batch sizes and lengths, which is the real check.
        warnings.simplefilter("ignore")
        path = Path(tmp) / "graph.onnx"
        with torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
            )
        # torch.onnx.export restores the wrapper's previous mode; make sure the model stays in eval.
        module.eval()
        model = onnx.load(str(path), load_external_data=True)
    for tensor in model.graph.initializer:
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    _strip_nondeterminism(model)
    return model


def _strip_nondeterminism(model: ModelProto) -> None:
    """Drop doc strings (they may carry source paths) so that re-exports are byte-identical."""
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""


def export_task_graph(model: nn.Module, example: Mapping[str, np.ndarray], input_names: list[str]) -> ModelProto:
    """Export a (pruned, folded) AdaptableAdapterModel as ``input_names → logits``."""
    axes = {name: {0: BATCH_AXIS, 1: SEQUENCE_AXIS} for name in input_names}
    axes[GRAPH_OUTPUT] = {0: BATCH_AXIS}
    with eager_attention(model.backbone):
        proto = _export(TaskLogits(model, input_names), example, input_names, [GRAPH_OUTPUT], axes)
    canonicalize_names(proto, canonical_tensors(model))
    return proto


def export_bare_backbone(model: nn.Module, example: Mapping[str, np.ndarray], input_names: list[str]) -> ModelProto:
    """Export the backbone alone (adapters detached), for the shared backbone store."""
    backbone = model.backbone
    has_pooler = getattr(backbone.base_model, "pooler", None) is not None
    outputs = ["last_hidden_state"] + (["pooler_output"] if has_pooler else [])
    axes = {name: {0: BATCH_AXIS, 1: SEQUENCE_AXIS} for name in input_names}
    axes["last_hidden_state"] = {0: BATCH_AXIS, 1: SEQUENCE_AXIS}
    if has_pooler:
        axes["pooler_output"] = {0: BATCH_AXIS}
    with adapters_detached(model), eager_attention(backbone):
        proto = _export(BareBackbone(backbone.base_model, input_names), example, input_names, outputs, axes)
    canonicalize_names(proto, canonical_tensors(model))
    return proto


def canonical_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name → tensor for everything a graph initializer can come from.

    Backbone and head tensors keep their ``transformers`` names relative to the sequence classifier
    (``bert.…``, ``classifier.…``), adapters their state-dict names (``adapter_layers.1.adapter.…``).
    Buffers are included (e.g. ``position_ids``), as the exporter turns them into initializers too.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        tensors[name.removeprefix("backbone.")] = tensor.detach()
    return tensors


def _digest_array(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    digest = hashlib.sha256(array.tobytes()).hexdigest()
    return f"{data_type}:{'x'.join(str(d) for d in array.shape)}:{digest}"


def canonicalize_names(proto: ModelProto, tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Rename initializers whose content equals a named tensor (or its transpose) to that name.

    Content decides, not the exporter's own names, which depend on graph position and counters. Two
    initializers with equal content get distinct candidate names in declaration order; those without
    a match keep their name. Returns the applied ``old → new`` mapping.
    """
    candidates: dict[str, list[str]] = {}
    for name, tensor in tensors.items():
        array = tensor.cpu().numpy()
        candidates.setdefault(_digest_array(array), []).append(name)
        if array.ndim == 2:
            candidates.setdefault(_digest_array(array.T), []).append(f"{name}.T")
    taken = value_names(proto.graph) - {t.name for t in proto.graph.initializer}
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for initializer in proto.graph.initializer:
        for candidate in candidates.get(tensor_digest(initializer), []):
            if candidate not in used and candidate not in taken:
                mapping[initializer.name] = candidate
                used.add(candidate)
                break
    # A kept (unmatched) name must not collide with a canonical name given to another tensor.
    for initializer in proto.graph.initializer:
        if initializer.name not in mapping and initializer.name in used:
            mapping[initializer.name] = f"{initializer.name}.orig"
    rename_values(proto.graph, mapping)
    return mapping
