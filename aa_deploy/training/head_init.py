"""Where a task head starts: the default schedule starts a regression head at the labels' mean."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..modeling import AdaptableAdapterModel


def head_output_layer(model: AdaptableAdapterModel) -> nn.Linear:
    """The head's last linear layer: the last ``nn.Linear`` outside the encoder.

    Every ``*ForSequenceClassification`` class registers its head after its encoder (BERT and
    DistilBERT ``classifier``, RoBERTa ``classifier.out_proj``), so this finds it without a table.
    """
    backbone = model.backbone
    prefix = getattr(backbone, "base_model_prefix", "")
    linears = [
        module
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Linear) and not (prefix and (name == prefix or name.startswith(prefix + ".")))
    ]
    if not linears:
        raise ValueError(f"{type(backbone).__name__} has no linear task head outside its encoder")
    return linears[-1]


def start_regression_head_at_mean(model: AdaptableAdapterModel, labels: Sequence[float]) -> None:
    """Set the regression head's bias to the mean training label.

    With a zero bias the first few hundred steps only lift every prediction towards the label mean
    (Adam moves the bias by about one learning rate per step); starting there lets the steps fit how
    the scores vary instead, which is what the correlation metrics measure.
    """
    if not labels:
        return
    layer = head_output_layer(model)
    if layer.bias is None or layer.out_features != 1:
        raise ValueError(f"expected a one-output regression head, got {layer}")
    with torch.no_grad():
        layer.bias.fill_(float(sum(labels) / len(labels)))
