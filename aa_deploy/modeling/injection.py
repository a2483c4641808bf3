"""Attach adapter blocks to Hugging Face encoders without editing ``transformers``.

Every supported family ends each layer with ``LN(h + x)``; we hook that LayerNorm, so the backbone's
module tree, parameter names and weights stay exactly as ``transformers`` made them (which also keeps
the ONNX initializer names of the backbone stable across tasks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from .adapter import AdapterBlock


class UnsupportedModelError(ValueError):
    """The backbone's architecture has no known place for Pfeiffer adapters."""


@dataclass(frozen=True)
class LayerLayout:
    """Where a family keeps its layers and each layer's output LayerNorm (relative to the base model)."""

    layers: str
    output_layer_norm: str


_BERT_LIKE = LayerLayout(layers="encoder.layer", output_layer_norm="output.LayerNorm")
SUPPORTED_FAMILIES: dict[str, LayerLayout] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "deberta-v2": _BERT_LIKE,
    "distilbert": LayerLayout(layers="transformer.layer", output_layer_norm="output_layer_norm"),
}


def layout_for(model_type: str) -> LayerLayout:
    try:
        return SUPPORTED_FAMILIES[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported for adapter insertion; supported families: "
            f"{', '.join(sorted(SUPPORTED_FAMILIES))}. Use a backbone of one of these families "
            "(e.g. bert-base-uncased, roberta-base, distilbert-base-uncased)."
        ) from None


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    layout = layout_for(model.config.model_type)
    return model.base_model.get_submodule(layout.layers)


def output_layer_norms(model: PreTrainedModel) -> list[nn.Module]:
    layout = layout_for(model.config.model_type)
    return [layer.get_submodule(layout.output_layer_norm) for layer in encoder_layers(model)]


def _functional_layer_norm(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Call the LayerNorm's math without re-entering its forward hooks."""
    if isinstance(module, nn.LayerNorm):
        return lambda t: F.layer_norm(t, module.normalized_shape, module.weight, module.bias, module.eps)
    return lambda t: module.forward(t)


def attach_adapter_blocks(
    model: PreTrainedModel, blocks: dict[int, AdapterBlock]
) -> list[torch.utils.hooks.RemovableHandle]:
    """Hook ``blocks[i]`` after layer i's output LayerNorm; returns the handles to detach them."""
    norms = output_layer_norms(model)
    handles = []
    for index, block in blocks.items():
        if not 0 <= index < len(norms):
            raise ValueError(f"layer {index} does not exist: the backbone has {len(norms)} layers")
        module = norms[index]
        layer_norm = _functional_layer_norm(module)

        def hook(_module: nn.Module, args: tuple, output: torch.Tensor, *, _block=block, _ln=layer_norm):
            return _block.transform(_ln, args[0], output)

        handles.append(module.register_forward_hook(hook))
    return handles
