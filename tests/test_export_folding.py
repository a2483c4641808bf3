"""Folding a rational into constants: exact vs. the trained module, correct vs. the paper's formula,
and exported as plain ONNX arithmetic (no custom domain, degree lowered by zero coefficients)."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from aa_deploy.export.folding import FoldedRational, FoldedRationalSpec, rational_reference
from aa_deploy.modeling.rational import RATIONAL_INITS, RationalActivation

X = torch.linspace(-6.0, 6.0, 2001, dtype=torch.float32).reshape(1, -1)


def _rational(numerator: list[float], denominator: list[float], version: str = "A") -> RationalActivation:
    r = RationalActivation("one", version)  # type: ignore[arg-type]
    with torch.no_grad():
        r.numerator.copy_(torch.tensor(numerator))
        r.denominator.copy_(torch.tensor(denominator))
    return r


CASES = {
    "gelu_init": (*RATIONAL_INITS["gelu"], "A"),
    "relu_init": (*RATIONAL_INITS["relu"], "A"),
    "negative_b": ([0.1, 0.9, -0.3, 0.2, -0.05, 0.01], [-0.7, 0.3, -1.2, 0.5], "A"),
    "zero_denominator": ([0.1, 0.9, -0.3, 0.2, -0.05, 0.01], [0.0, 0.0, 0.0, 0.0], "A"),
    "trailing_zeros": ([0.5, 1.0, 0.25, 0.0, 0.0, 0.0], [0.3, 0.0, 0.0, 0.0], "A"),
    "constant_one": ([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], "A"),
    "constant_over_q": ([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], "A"),
    "all_zero_numerator": ([0.0] * 6, [0.4, 0.1, 0.0, 0.0], "A"),
    "identity": ([0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], "A"),
    "version_b": ([0.1, 0.9, -0.3, 0.2, -0.05, 0.01], [-0.7, 0.3, -1.2, 0.5], "B"),
    "version_b_zero": ([0.1, 0.9, -0.3, 0.2, -0.05, 0.01], [0.0, 0.0, 0.0, 0.0], "B"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_folded_equals_trained_bitwise_and_matches_formula(name: str) -> None:
    numerator, denominator, version = CASES[name]
    trained = _rational(numerator, denominator, version)
    folded = FoldedRational(FoldedRationalSpec.from_rational(trained))
    with torch.no_grad():
        expected, actual = trained(X), folded(X)
    assert torch.equal(expected, actual), f"max diff {(expected - actual).abs().max()}"
    # Against the float64 definition, with the float32 coefficients the model really holds.
    reference = rational_reference(
        X.double().numpy(), trained.numerator.tolist(), trained.denominator.tolist(), version
    )
    np.testing.assert_allclose(actual.double().numpy(), reference, rtol=1e-5, atol=1e-5)


def test_spec_trims_and_uses_absolute_values() -> None:
    spec = FoldedRationalSpec.from_rational(_rational([0.5, 1.0, 0.25, 0.0, 0.0, 0.0], [-0.3, 0.0, 0.0, 0.0]))
    assert spec.numerator == pytest.approx((0.5, 1.0, 0.25))
    assert spec.denominator == pytest.approx((0.3,))  # |b1|, trailing zeros dropped
    assert FoldedRationalSpec.from_rational(_rational([1.0] + [0.0] * 5, [0.0] * 4)).is_polynomial
    b = FoldedRationalSpec.from_rational(_rational([0.0, 1.0, 0, 0, 0, 0], [-0.5, 0.0, 0.0, 0.0], "B"))
    assert b.denominator == pytest.approx((-0.5,))  # version B keeps signs: Q = 1 + |sum b_j x^j|
    assert FoldedRationalSpec.from_dict(spec.to_dict()) == spec


def _export_ops(module: torch.nn.Module) -> tuple[onnx.ModelProto, Counter]:
    buffer = io.BytesIO()
    torch.onnx.export(
        module, (torch.randn(2, 5),), buffer, dynamo=False, input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "b", 1: "n"}}, opset_version=17,
    )  # fmt: skip
    model = onnx.load_from_string(buffer.getvalue())
    return model, Counter(node.op_type for node in model.graph.node)


@pytest.mark.parametrize("name", ["negative_b", "zero_denominator", "trailing_zeros", "version_b"])
def test_folded_rational_exports_as_plain_ops(name: str) -> None:
    numerator, denominator, version = CASES[name]
    trained = _rational(numerator, denominator, version)
    spec = FoldedRationalSpec.from_rational(trained)
    model, ops = _export_ops(FoldedRational(spec).eval())
    assert {node.domain for node in model.graph.node} <= {""}
    assert set(ops) <= {"Mul", "Add", "Abs", "Div", "Constant"}
    assert not model.graph.initializer or all(t.name.startswith("onnx::") for t in model.graph.initializer)
    # Horner: one Mul per degree step; a zero denominator leaves no Abs and no Div at all.
    if spec.is_polynomial:
        assert ops["Div"] == 0 and ops["Abs"] == 0
    else:
        assert ops["Div"] == 1 and ops["Abs"] == 1
    degree_mults = (len(spec.numerator) - 1) + len(spec.denominator)
    assert ops["Mul"] == degree_mults
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": X.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, trained(X).numpy(), rtol=0, atol=1e-6)


def test_trailing_zeros_lower_the_degree() -> None:
    full = FoldedRationalSpec.from_rational(_rational(*CASES["negative_b"][:2]))
    low = FoldedRationalSpec.from_rational(_rational(*CASES["trailing_zeros"][:2]))
    _, full_ops = _export_ops(FoldedRational(full))
    _, low_ops = _export_ops(FoldedRational(low))
    assert low_ops["Mul"] < full_ops["Mul"]
