"""Learnable rational activation (Padé activation unit).

The adapter's non-linearity is ``R(x) = P(x) / Q(x)`` with one set of coefficients per adapter layer,
so that each layer can learn the activation shape it needs (METHOD.md §2).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

RationalVersion = Literal["A", "B"]

# Version-A 5/4 coefficients from the rational_activations tables (METHOD.md §2). They are published for
# version A only; other versions start from "one" or "identity".
RATIONAL_INITS: dict[str, tuple[list[float], list[float]]] = {
    "one": ([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]),
    "identity": ([0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]),
    "gelu": (
        [-0.0012423594497499122, 0.5080497063245629, 0.41586363182937475, 0.13022718688035761,
         0.024355900098993424, 0.00290283948155535],
        [-0.06675015696494944, 0.17927646217001553, 0.03746682605496631, 1.6561610853276082e-10],
    ),
    "leaky_relu": (
        [0.029792778657264946, 0.6183735264987601, 2.323309062531321, 3.051936237265109,
         1.4854203263828845, 0.2510244961111299],
        [-1.1419548357285474, 4.393159974992486, 0.8714712309957245, 0.34719662339598834],
    ),
    "relu": (
        [0.029963801610813613, 0.6168978366891341, 2.37534759733888, 3.0659900472408443,
         1.5246831881677423, 0.2528070864040542],
        [-1.191550121923625, 4.4080487697236626, 0.9110357113686055, 0.34884977946384615],
    ),
}
VERSION_INDEPENDENT_INITS = ("one", "identity")


def abs_with_unit_gradient_at_zero(v: torch.Tensor) -> torch.Tensor:
    """``|v|`` whose gradient at exactly 0 is +1 instead of 0.

    With the paper's "one" init every denominator coefficient starts at 0; a plain ``abs`` would give
    them zero gradient forever and the denominator would never move. The reference GPU kernel uses
    sign(0) = +1 and so do we (METHOD.md §2, Decision).
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
        if version not in ("A", "B"):
            raise ValueError(f"unknown rational version {version!r}: use 'A' or 'B'")
        if init not in RATIONAL_INITS:
            raise ValueError(f"unknown rational init {init!r}: choose one of {sorted(RATIONAL_INITS)}")
        if version != "A" and init not in VERSION_INDEPENDENT_INITS:
            raise ValueError(
                f"rational init {init!r} has published coefficients for version A only; "
                f"with version {version} use one of {list(VERSION_INDEPENDENT_INITS)}"
            )
        numerator, denominator = RATIONAL_INITS[init]
        if (numerator_degree, denominator_degree) != (5, 4):
            if init not in VERSION_INDEPENDENT_INITS:
                raise ValueError(f"init {init!r} is tabulated for degrees 5/4 only")
            numerator = (numerator + [0.0] * numerator_degree)[: numerator_degree + 1]
            denominator = [0.0] * denominator_degree
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
        return (
            f"version={self.version}, degrees={self.numerator.numel() - 1}/{self.denominator.numel()}"
        )
