"""Per-layer Gumbel-Softmax switch that learns whether an adapter layer is worth keeping."""

from __future__ import annotations

import torch
from torch import nn

from ..contract.rules import ADAPTER, switch_keeps_adapter


class GumbelSwitch(nn.Module):
    """Two logits ``[skip, adapter]``; soft Gumbel-Softmax mix in training, hard choice in eval.

    The eval rule (adapter iff ``logit_adapter > logit_skip``, :func:`aa_deploy.contract.rules.switch_keeps_adapter`)
    is the same rule the compiler and the model card use to decide which adapters are kept, so the pruned
    graph equals the trained model in eval mode.
    """

    def __init__(self, temperature: float = 0.1, init: tuple[float, float] = (0.5, 0.5)) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"switch temperature must be > 0, got {temperature}")
        self.logits = nn.Parameter(torch.tensor(init, dtype=torch.float32))
        # A plain attribute, not a buffer: annealing changes it during training, and it is part of the
        # config, not of the learned state.
        self.temperature = float(temperature)

    @property
    def selected(self) -> bool:
        return switch_keeps_adapter(self.logits)

    def adapter_probability(self) -> float:
        return float(torch.softmax(self.logits.detach().float(), dim=0)[ADAPTER])

    def sample_weights(self, batch_size: int) -> torch.Tensor:
        """Per-example mixing weights ``[batch, 2]`` drawn with Gumbel noise (training only)."""
        uniform = torch.rand(batch_size, 2, device=self.logits.device).clamp_(1e-10, 1.0 - 1e-10)
        gumbel = -torch.log(-torch.log(uniform))
        return torch.softmax((self.logits + gumbel) / self.temperature, dim=-1)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
