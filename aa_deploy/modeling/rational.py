"""Learnable rational activation (Padé activation unit).

The adapter's non-linearity is ``R(x) = P(x) / Q(x)`` with one set of coefficients per adapter layer,
so that each layer can learn the activation shape it needs (docs/METHOD.md §2).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..rational_presets import DEFAULT_DEGREES, RATIONAL_PRESETS, preset_coefficients

RationalVersion = Literal["A", "B"]

# The starting coefficients at the default degrees 5/4, by preset name (kept for callers and tests that
# read the tables; the rule for other degrees lives in aa_deploy.rational_presets).
RATIONAL_INITS: dict[str, tuple[list[float], list[float]]] = {
    name: preset_coefficients(name, "A", *DEFAULT_DEGREES) for name in RATIONAL_PRESETS
}


def abs_with_unit_gradient_at_zero(v: torch.Tensor) -> torch.Tensor:
    """``|v|`` whose gradient at exactly 0 is +1 instead of 0.

    With the paper's "one" init every denominator coefficient starts at 0; a plain ``abs`` would give
    them zero gradient forever and the denominator would never move. The reference GPU kernel uses
    sign(0) = +1 and so do we (docs/METHOD.md §2).
    """
    return torch.where(v >= 0, v, -v)


def horner(coefficients: list[torch.Tensor] | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Evaluate ``c0 + c1 x + ... + cn x^n`` in Horner form (fewest multiplications, same in ONNX)."""
    result = coefficients[-1] * torch.ones_like(x)
    for c in reversed(list(coefficients)[:-1]):
        result = result * x + c
    return result


class RationalActivation(nn.Module):
    """Element-wise ``P(x)/Q(x)`` with learnable coefficients shared by every unit of one layer.

    Version A: ``Q(x) = 1 + sum_j |b_j| |x|^j`` (always >= 1, so never divides by zero).
    Version B: ``Q(x) = 1 + |sum_j b_j x^j|``.
    """

    def __init__(
        self,
        init: str = "one",
        version: RationalVersion = "A",
        numerator_degree: int = 5,
        denominator_degree: int = 4,
    ) -> None:
        super().__init__()
        numerator, denominator = preset_coefficients(init, version, numerator_degree, denominator_degree)
        self.version = version
        self.numerator = nn.Parameter(torch.tensor(numerator, dtype=torch.float32))
        self.denominator = nn.Parameter(torch.tensor(denominator, dtype=torch.float32))

    def denominator_value(self, x: torch.Tensor) -> torch.Tensor:
        b = self.denominator
        if self.version == "A":
            # 1 + |x| (|b1| + |x| (|b2| + ...)): a polynomial in |x| with non-negative coefficients.
            abs_b = abs_with_unit_gradient_at_zero(b)
            coefficients = torch.cat([b.new_zeros(1), abs_b])
            return 1.0 + horner(coefficients, torch.abs(x))
        coefficients = torch.cat([b.new_zeros(1), b])
        return 1.0 + abs_with_unit_gradient_at_zero(horner(coefficients, x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return horner(self.numerator, x) / self.denominator_value(x)

    def extra_repr(self) -> str:
        return f"version={self.version}, degrees={self.numerator.numel() - 1}/{self.denominator.numel()}"
