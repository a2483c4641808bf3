"""Tests for aa_deploy.metrics against hand-computed values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from aa_deploy.data import TaskDefinition
from aa_deploy.metrics import METRIC_NAMES, compute_metric, task_metrics

# Binary example used by several tests:
#   pred 1 1 0 0 1
#   ref  1 0 1 0 1   -> TP=2 (idx 0, 4), FP=1 (idx 1), FN=1 (idx 2), TN=1 (idx 3)
PRED = np.array([1, 1, 0, 0, 1])
REF = np.array([1, 0, 1, 0, 1])


def test_metric_names() -> None:
    assert set(METRIC_NAMES) == {"accuracy", "f1", "matthews_correlation", "spearman", "pearson"}


def test_accuracy_by_hand() -> None:
    assert compute_metric("accuracy", PRED, REF) == pytest.approx(3 / 5)
    assert compute_metric("accuracy", REF, REF) == 1.0


def test_f1_by_hand() -> None:
    # precision = 2/3, recall = 2/3 -> F1 = 2/3 = 2*TP / (2*TP + FP + FN) = 4/6
    assert compute_metric("f1", PRED, REF) == pytest.approx(2 / 3)
    # Only class 1 counts as positive: (TP, FP, FN) = (1, 0, 1) here and (1, 1, 1) below.
    assert compute_metric("f1", np.array([0, 0, 1]), np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert compute_metric("f1", np.array([1, 1, 0]), np.array([0, 1, 1])) == pytest.approx(1 / 2)


def test_f1_without_true_positive_is_zero() -> None:
    assert compute_metric("f1", np.array([0, 0, 0]), np.array([1, 0, 1])) == 0.0
    assert compute_metric("f1", np.array([0, 0]), np.array([0, 0])) == 0.0


def test_matthews_binary_by_hand() -> None:
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2-1) / sqrt(3*3*2*2) = 1/6
    assert compute_metric("matthews_correlation", PRED, REF) == pytest.approx(1 / 6)
    assert compute_metric("matthews_correlation", REF, REF) == pytest.approx(1.0)
    assert compute_metric("matthews_correlation", 1 - REF, REF) == pytest.approx(-1.0)


def test_matthews_multiclass_by_hand() -> None:
    # true counts t = [2, 1, 1], predicted counts p = [2, 0, 2], correct c = 3, n = 4:
    # (c*n - t.p) / sqrt((n^2 - p.p)(n^2 - t.t)) = (12 - 6) / sqrt(8 * 10)
    pred = np.array([0, 2, 2, 0])
    ref = np.array([0, 1, 2, 0])
    assert compute_metric("matthews_correlation", pred, ref) == pytest.approx(6 / math.sqrt(80))


@pytest.mark.parametrize("metric", ["matthews_correlation", "spearman", "pearson"])
def test_constant_inputs_give_zero_not_nan(metric: str) -> None:
    constant = np.zeros(6, dtype=np.int64)
    varied = np.array([0, 1, 0, 1, 1, 0])
    assert compute_metric(metric, constant, varied) == 0.0
    assert compute_metric(metric, varied, constant) == 0.0


def test_spearman_by_hand_and_against_scipy() -> None:
    # Monotone but non-linear: ranks agree perfectly.
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert compute_metric("spearman", x, x**3) == pytest.approx(1.0)
    assert compute_metric("spearman", x, -x) == pytest.approx(-1.0)
    # Ranks [1,2,3] vs [1,3,2]: 1 - 6*sum(d^2)/(n(n^2-1)) = 1 - 6*2/24 = 0.5
    assert compute_metric("spearman", np.array([0.1, 0.5, 0.9]), np.array([1.0, 3.0, 2.0])) == (pytest.approx(0.5))
    rng = np.random.default_rng(0)
    pred, ref = rng.normal(size=50), rng.normal(size=50)
    ref[:10] = ref[0]  # ties
    expected = stats.spearmanr(pred, ref).statistic
    assert compute_metric("spearman", pred, ref) == pytest.approx(expected)


def test_pearson_against_scipy() -> None:
    rng = np.random.default_rng(1)
    pred = rng.normal(size=40)
    ref = pred + rng.normal(scale=0.5, size=40)
    assert compute_metric("pearson", pred, ref) == pytest.approx(stats.pearsonr(pred, ref).statistic)
    assert compute_metric("pearson", np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])) == (pytest.approx(1.0))


def test_inputs_may_be_floats_or_columns() -> None:
    # torch often hands over float labels and (n, 1) arrays.
    assert compute_metric("accuracy", PRED[:, None], REF.astype(np.float32)) == pytest.approx(0.6)
    assert isinstance(compute_metric("f1", PRED, REF), float)


@pytest.mark.parametrize(
    ("metric", "pred", "ref", "pattern"),
    [
        ("accuracy", [1, 0], [1], "differ in length"),
        ("accuracy", [], [], "zero examples"),
        ("f1", [0.5, 1.0], [0, 1], "whole numbers"),
        ("spearman", [np.nan, 1.0, 2.0], [0.0, 1.0, 2.0], "NaN"),
        ("accuracy", [[0.1, 0.9], [0.8, 0.2]], [1, 0], "1-D"),
    ],
)
def test_bad_inputs(metric: str, pred: list, ref: list, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        compute_metric(metric, np.array(pred), np.array(ref))


def test_unknown_metric_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown metric 'auc'") as err:
        compute_metric("auc", PRED, REF)
    assert all(name in str(err.value) for name in METRIC_NAMES)


def test_task_metrics_classification_uses_argmax() -> None:
    spec = TaskDefinition("mrpc", "f1", ["0", "1"], True)
    logits = np.array([[0.1, 0.9], [-1.0, 2.0], [3.0, 0.0], [0.5, 0.4], [0.0, 0.2]])
    result = task_metrics(spec, logits, REF)  # argmax = PRED
    assert list(result) == ["f1", "accuracy"]  # primary first
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["accuracy"] == pytest.approx(3 / 5)


def test_task_metrics_accuracy_task_has_one_entry() -> None:
    spec = TaskDefinition("rte", "accuracy", ["entailment", "not_entailment"], True)
    result = task_metrics(spec, np.array([[2.0, 1.0], [0.0, 1.0]]), np.array([0, 0]))
    assert result == {"accuracy": 0.5}


def test_task_metrics_matthews() -> None:
    spec = TaskDefinition("cola", "matthews_correlation", ["0", "1"], False)
    logits = np.stack([1 - PRED, PRED], axis=1).astype(np.float32)
    result = task_metrics(spec, logits, REF)
    assert result == pytest.approx({"matthews_correlation": 1 / 6, "accuracy": 0.6})


def test_task_metrics_regression_squeezes() -> None:
    spec = TaskDefinition("stsb", "spearman", None, True)
    preds = np.array([[0.5], [2.0], [1.0], [4.5]])
    labels = np.array([1.0, 2.5, 0.0, 5.0])
    result = task_metrics(spec, preds, labels)
    assert list(result) == ["spearman", "pearson"]
    assert result["spearman"] == pytest.approx(stats.spearmanr(preds[:, 0], labels).statistic)
    assert result["pearson"] == pytest.approx(stats.pearsonr(preds[:, 0], labels).statistic)


def test_task_metrics_wrong_logit_shape() -> None:
    with pytest.raises(ValueError, match=r"expects logits of shape \(n, 2\)"):
        task_metrics(TaskDefinition("rte", "accuracy", ["a", "b"], True), np.zeros((3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(n,\) or \(n, 1\)"):
        task_metrics(TaskDefinition("stsb", "spearman", None, True), np.zeros((3, 2)), np.zeros(3))
