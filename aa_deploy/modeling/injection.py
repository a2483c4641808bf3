"""Attach adapter blocks to Hugging Face encoders without editing ``transformers``.

Every supported family ends each layer with ``LN(h + x)``; we hook that LayerNorm, so the backbone's
module tree, parameter names and weights stay exactly as ``transformers`` made them (which also keeps
the ONNX initializer names of the backbone stable across tasks). Where each family keeps its layers and
that LayerNorm is a row of the family table, :mod:`aa_deploy.contract.families`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from ..contract.families import family_for
from .adapter import AdapterBlock


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    return model.base_model.get_submodule(family_for(model.config.model_type).layers)


def output_layer_norms(model: PreTrainedModel) -> list[nn.Module]:
    norm = family_for(model.config.model_type).output_layer_norm
    return [layer.get_submodule(norm) for layer in encoder_layers(model)]


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
