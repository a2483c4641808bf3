"""Evaluation metrics of the paper's protocol (docs/METHOD.md §5), on numpy/scipy only.

Degenerate inputs return 0.0 rather than NaN: model selection keeps the best epoch by
comparing scores, and any comparison with NaN is False, so a single NaN (for example a
model that predicts one class for the whole dev split) would silently freeze the choice.
0.0 is also what the usual reference implementations report in those cases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

if TYPE_CHECKING:  # only for annotations; data.examples imports this module at run time
    from aa_deploy.data.examples import TaskDefinition

CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "f1", "matthews_correlation")
REGRESSION_METRICS: tuple[str, ...] = ("spearman", "pearson")
METRIC_NAMES: tuple[str, ...] = CLASSIFICATION_METRICS + REGRESSION_METRICS


def _pair(predictions: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten both inputs to equal-length 1-D arrays, so every metric sees one shape."""
    pred = np.asarray(predictions)
    ref = np.asarray(references)
    if pred.ndim > 1:
        pred = pred.reshape(-1) if pred.size == pred.shape[0] else pred
    if ref.ndim > 1:
        ref = ref.reshape(-1) if ref.size == ref.shape[0] else ref
    if pred.ndim != 1 or ref.ndim != 1:
        raise ValueError(
            f"metrics need 1-D predictions and references, got shapes "
            f"{np.shape(predictions)} and {np.shape(references)} (take the argmax of "
            f"classification logits first, or use task_metrics)"
        )
    if pred.shape[0] != ref.shape[0]:
        raise ValueError(f"predictions and references differ in length: {pred.shape[0]} vs {ref.shape[0]}")
    if pred.shape[0] == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return pred, ref


def _as_classes(values: np.ndarray, what: str) -> np.ndarray:
    """Class labels must be whole numbers; floats such as 1.0 (from torch) are accepted."""
    if values.dtype.kind in "biu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise ValueError(f"{what} must be class indices (whole numbers) for this metric")
        return values.astype(np.int64)
    raise ValueError(f"{what} must be numeric class indices, got dtype {values.dtype}")


def _as_scores(values: np.ndarray, what: str) -> np.ndarray:
    """Correlations need finite floats; NaN usually means training diverged, so say so."""
    out = values.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{what} contain NaN or infinite values (did training diverge?)")
    return out


def accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    """Fraction of exact matches."""
    pred, ref = _pair(predictions, references)
    return float(np.mean(_as_classes(pred, "predictions") == _as_classes(ref, "references")))


def f1_binary(predictions: np.ndarray, references: np.ndarray) -> float:
    """F1 of the positive class 1 (MRPC/QQP convention); 0.0 when there is no true positive.

    Written as 2TP / (2TP + FP + FN), which equals the harmonic mean of precision and recall
    and needs no special case for an empty precision or recall denominator.
    """
    pred, ref = _pair(predictions, references)
    pred_pos = _as_classes(pred, "predictions") == 1
    ref_pos = _as_classes(ref, "references") == 1
    tp = float(np.sum(pred_pos & ref_pos))
    fp = float(np.sum(pred_pos & ~ref_pos))
    fn = float(np.sum(~pred_pos & ref_pos))
    if tp == 0.0:
        return 0.0
    return 2.0 * tp / (2.0 * tp + fp + fn)


def matthews_correlation(predictions: np.ndarray, references: np.ndarray) -> float:
    """Matthews correlation coefficient (multi-class form), 0.0 when either side is constant.

    The multi-class (Gorodkin) form reduces to the usual binary formula for two classes and
    is computed from the confusion matrix in float64, so large splits cannot overflow.
    """
    pred, ref = _pair(predictions, references)
    pred_c = _as_classes(pred, "predictions")
    ref_c = _as_classes(ref, "references")
    _, inverse = np.unique(np.concatenate([ref_c, pred_c]), return_inverse=True)
    k = int(inverse.max()) + 1
    n = ref_c.shape[0]
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (inverse[:n], inverse[n:]), 1.0)
    true_counts = confusion.sum(axis=1)
    pred_counts = confusion.sum(axis=0)
    total = float(n)
    correct = float(np.trace(confusion))
    cov_tp = correct * total - float(true_counts @ pred_counts)
    cov_pp = total * total - float(pred_counts @ pred_counts)
    cov_tt = total * total - float(true_counts @ true_counts)
    if cov_pp == 0.0 or cov_tt == 0.0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def _constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


def spearman(predictions: np.ndarray, references: np.ndarray) -> float:
    """Spearman rank correlation; 0.0 when either side is constant (scipy would give NaN)."""
    pred, ref = _pair(predictions, references)
    pred_f = _as_scores(pred, "predictions")
    ref_f = _as_scores(ref, "references")
    if pred_f.shape[0] < 2 or _constant(pred_f) or _constant(ref_f):
        return 0.0
    return float(stats.spearmanr(pred_f, ref_f).statistic)


def pearson(predictions: np.ndarray, references: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either side is constant (scipy would give NaN)."""
    pred, ref = _pair(predictions, references)
    pred_f = _as_scores(pred, "predictions")
    ref_f = _as_scores(ref, "references")
    if pred_f.shape[0] < 2 or _constant(pred_f) or _constant(ref_f):
        return 0.0
    return float(stats.pearsonr(pred_f, ref_f).statistic)


def _metric_function(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    # Built per call rather than kept in a module-level dict: no global mutable state.
    functions: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        "accuracy": accuracy,
        "f1": f1_binary,
        "matthews_correlation": matthews_correlation,
        "spearman": spearman,
        "pearson": pearson,
    }
    try:
        return functions[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}: expected one of {', '.join(METRIC_NAMES)}") from None


def compute_metric(name: str, predictions: np.ndarray, references: np.ndarray) -> float:
    """Compute one metric by name; classification metrics take class indices, not logits."""
    return _metric_function(name)(predictions, references)


def task_metrics(spec: TaskDefinition, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Score raw model outputs for a task: the primary metric first, then useful extras.

    The primary metric is stored under its own name (``spec.metric``) so callers can pick
    the model-selection score as ``result[spec.metric]``. Classification tasks also report
    accuracy; regression tasks report both spearman and pearson.
    """
    out = np.asarray(logits)
    refs = np.asarray(labels)
    if spec.is_regression:
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim != 1:
            raise ValueError(f"regression task {spec.name!r} expects logits of shape (n,) or (n, 1), got {out.shape}")
        predictions = out
        extras: tuple[str, ...] = REGRESSION_METRICS
    else:
        if out.ndim != 2 or out.shape[1] != spec.num_labels:
            raise ValueError(
                f"classification task {spec.name!r} expects logits of shape (n, {spec.num_labels}), got {out.shape}"
            )
        predictions = np.argmax(out, axis=-1)
        extras = ("accuracy",)
    result = {spec.metric: compute_metric(spec.metric, predictions, refs)}
    for name in extras:
        if name not in result:
            result[name] = compute_metric(name, predictions, refs)
    return result
