"""Fold each trained rational activation into plain arithmetic with its coefficients as constants.

A trained :class:`~aa_deploy.modeling.rational.RationalActivation` holds its ``n + 1 + m``
coefficients (numerator degree n, denominator degree m: ten at the default 5/4) as parameters and
computes ``|b_j|`` at every call. For deployment the coefficients are fixed, so we replace the module
by :class:`FoldedRational`, which holds them as Python floats: the exporter then emits them as graph
constants and the rational becomes ``Mul``/``Add``/``Abs``/``Div`` nodes, with no
custom op anywhere (docs/METHOD.md §7).

The folded module evaluates exactly the same float32 operations, in the same (Horner) order, as the
trained module, so on finite inputs it is bitwise identical; only operations that provably do not
change a float are dropped: trailing zero coefficients (which lower the degree), ``+ 0`` and ``* 1``.
A denominator whose coefficients are all zero folds away entirely, leaving a pure polynomial.

:func:`rational_reference` is an independent float64 NumPy evaluation of the paper's formula, used by
the tests to check both modules against the definition rather than against each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from aa_deploy.modeling.rational import RationalActivation


def _trim(coefficients: Sequence[float]) -> tuple[float, ...]:
    """Drop trailing (highest-degree) zero coefficients: they do not change the polynomial."""
    values = [float(c) for c in coefficients]
    while values and values[-1] == 0.0:
        values.pop()
    return tuple(values)


@dataclass(frozen=True)
class FoldedRationalSpec:
    """The constants one folded rational is made of (recorded in the export manifest).

    ``numerator[k]`` multiplies ``x^k``. ``denominator[j]`` multiplies ``|x|^(j+1)`` (version A, where
    the stored values are already ``|b_j|``) or ``x^(j+1)`` (version B). Both are trimmed; an empty
    denominator means ``Q(x) = 1`` and no division is emitted.
    """

    version: str
    numerator: tuple[float, ...]
    denominator: tuple[float, ...]

    @classmethod
    def from_rational(cls, rational: RationalActivation) -> FoldedRationalSpec:
        numerator = [float(v) for v in rational.numerator.detach().to(torch.float32).cpu().tolist()]
        b = [float(v) for v in rational.denominator.detach().to(torch.float32).cpu().tolist()]
        if rational.version == "A":
            b = [abs(v) for v in b]  # version A only ever uses |b_j| (never negative, so Q >= 1)
        return cls(version=rational.version, numerator=_trim(numerator), denominator=_trim(b))

    @property
    def is_polynomial(self) -> bool:
        return not self.denominator

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["numerator"] = list(self.numerator)
        data["denominator"] = list(self.denominator)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FoldedRationalSpec:
        return cls(
            version=str(data["version"]),
            numerator=tuple(float(v) for v in data["numerator"]),
            denominator=tuple(float(v) for v in data["denominator"]),
        )


def _polynomial(coefficients: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """``c0 + c1 x + ... + cn x^n`` for a trimmed ``c``, in the same order as ``rational.horner``.

    The trained code starts from ``cn * ones_like(x)`` and repeats ``r = r * x + c``; starting from
    ``x * cn`` is the same float32 product, so the results agree bit for bit. ``* 1`` and ``+ 0`` are
    skipped: both are exact.
    """
    if not coefficients:
        return torch.zeros_like(x)
    if len(coefficients) == 1:
        return torch.full_like(x, coefficients[0])
    degree = len(coefficients) - 1
    result = x if coefficients[degree] == 1.0 else x * coefficients[degree]
    for k in range(degree - 1, -1, -1):
        if coefficients[k] != 0.0:
            result = result + coefficients[k]
        if k > 0:
            result = result * x
    return result


def _odd_polynomial(coefficients: tuple[float, ...], t: torch.Tensor) -> torch.Tensor:
    """``d1 t + d2 t^2 + ... + dm t^m`` (no constant term) for a non-empty trimmed ``d``."""
    return _polynomial((0.0, *coefficients), t)


class FoldedRational(nn.Module):
    """A rational activation with constant coefficients, exportable as plain ONNX arithmetic."""

    def __init__(self, spec: FoldedRationalSpec) -> None:
        super().__init__()
        if spec.version not in ("A", "B"):
            raise ValueError(f"unknown rational version {spec.version!r}: use 'A' or 'B'")
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        numerator = _polynomial(self.spec.numerator, x)
        if self.spec.is_polynomial:
            return numerator
        if self.spec.version == "A":
            denominator = _odd_polynomial(self.spec.denominator, torch.abs(x)) + 1.0
        else:
            denominator = torch.abs(_odd_polynomial(self.spec.denominator, x)) + 1.0
        return numerator / denominator

    def extra_repr(self) -> str:
        return (
            f"version={self.spec.version}, degrees={max(len(self.spec.numerator) - 1, 0)}/{len(self.spec.denominator)}"
        )


def fold_rationals(model: nn.Module) -> dict[int, FoldedRationalSpec]:
    """Replace every adapter's RationalActivation by a FoldedRational, in place.

    Returns the folded constants per layer index. Works on an ``AdaptableAdapterModel`` (its
    ``adapter_layers`` are keyed by layer index); switches are not touched here because a pruned model
    has none left.
    """
    layers = getattr(model, "adapter_layers", None)
    if layers is None:
        raise TypeError("fold_rationals expects an AdaptableAdapterModel (with adapter_layers)")
    folded: dict[int, FoldedRationalSpec] = {}
    for index, block in layers.items():
        activation = block.adapter.activation
        if isinstance(activation, RationalActivation):
            spec = FoldedRationalSpec.from_rational(activation)
            block.adapter.activation = FoldedRational(spec)
            folded[int(index)] = spec
    for module in model.modules():
        if isinstance(module, RationalActivation):  # pragma: no cover - defensive: a rational outside adapters
            raise RuntimeError("a RationalActivation outside the adapter blocks was not folded")
    return dict(sorted(folded.items()))


def rational_reference(
    x: np.ndarray, numerator: Sequence[float], denominator: Sequence[float], version: str = "A"
) -> np.ndarray:
    """The paper's definition in float64, independent of both torch implementations.

    Version A: ``P(x) / (1 + sum_j |b_j| |x|^j)``; version B: ``P(x) / (1 + |sum_j b_j x^j|)``.
    ``denominator`` holds the raw trained ``b_1..b_m`` (signs included).
    """
    x = np.asarray(x, dtype=np.float64)
    p = sum(float(a) * x**k for k, a in enumerate(numerator)) + np.zeros_like(x)
    if version == "A":
        q = 1.0 + sum(abs(float(b)) * np.abs(x) ** (j + 1) for j, b in enumerate(denominator))
    elif version == "B":
        q = 1.0 + np.abs(sum(float(b) * x ** (j + 1) for j, b in enumerate(denominator)) + np.zeros_like(x))
    else:
        raise ValueError(f"unknown rational version {version!r}")
    return p / q
