"""Bottleneck adapter and the per-layer block (adapter, optional switch) hooked after a layer's FFN."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..contract.rules import ADAPTER, SKIP
from .rational import RationalActivation
from .switch import GumbelSwitch


class BottleneckAdapter(nn.Module):
    """``A(z) = W_up f(W_down z + b_down) + b_up`` with f = ReLU or a learnable rational."""

    def __init__(self, hidden_size: int, bottleneck: int, activation: nn.Module, init_std: float = 0.02):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.activation = activation
        self.up = nn.Linear(bottleneck, hidden_size)
        # The up-projection is deliberately not zero-initialised (docs/METHOD.md §1).
        for linear in (self.down, self.up):
            nn.init.normal_(linear.weight, mean=0.0, std=init_std)
            nn.init.zeros_(linear.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.activation(self.down(z)))


class AdapterBlock(nn.Module):
    """Everything one transformer layer gets: an adapter and, for the search recipe, a switch.

    Pfeiffer placement with the output LayerNorm ``LN`` of the layer and ``s = h + x``::

        skip:     out = LN(s)                      (exactly the untouched backbone layer)
        adapter:  out = LN(s + A(LN(s)))

    The block works on the LayerNorm's input, so one mechanism covers every encoder family.
    """

    def __init__(self, adapter: BottleneckAdapter, switch: GumbelSwitch | None = None) -> None:
        super().__init__()
        self.adapter = adapter
        self.switch = switch
        # Set by AdapterDrop: this layer's adapter is bypassed for the current step / at test time.
        self.dropped = False

    @property
    def rational(self) -> RationalActivation | None:
        act = self.adapter.activation
        return act if isinstance(act, RationalActivation) else None

    def transform(
        self, layer_norm: Callable[[torch.Tensor], torch.Tensor], s: torch.Tensor, base: torch.Tensor
    ) -> torch.Tensor:
        """Return the layer output given the LayerNorm input ``s`` and ``base = LN(s)``."""
        if self.dropped:
            return base
        if self.switch is None:
            return layer_norm(s + self.adapter(base))
        if not self.training:
            return layer_norm(s + self.adapter(base)) if self.switch.selected else base
        adapted = layer_norm(s + self.adapter(base))
        weights = self.switch.sample_weights(s.shape[0])
        shape = (s.shape[0],) + (1,) * (s.dim() - 1)
        return weights[:, SKIP].reshape(shape) * base + weights[:, ADAPTER].reshape(shape) * adapted
