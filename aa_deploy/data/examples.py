"""The in-memory form every data source is turned into, so training never sees file formats."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aa_deploy.data.errors import DataError
from aa_deploy.metrics import CLASSIFICATION_METRICS, METRIC_NAMES, REGRESSION_METRICS


def _check_keys(data: Mapping[str, Any], required: set[str], optional: set[str], what: str) -> None:
    """Reject missing and unknown keys: a typo in a saved config should fail loudly, not
    silently fall back to a default."""
    if not isinstance(data, Mapping):
        raise DataError(f"{what}: expected a JSON object, got {type(data).__name__}")
    missing = sorted(required - data.keys())
    unknown = sorted(data.keys() - required - optional)
    if missing:
        raise DataError(f"{what}: missing key(s) {', '.join(missing)}")
    if unknown:
        raise DataError(
            f"{what}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(required | optional))}"
        )


@dataclass(frozen=True)
class Example:
    """One input (a sentence or a sentence pair) and its target.

    ``label`` is already a class index (int) for classification or a float target for
    regression; string class names live once in TaskDefinition.label_names, not on every example.
    """

    text: str
    text_pair: str | None
    label: int | float

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "text_pair": self.text_pair, "label": self.label}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Example:
        _check_keys(data, {"text", "label"}, {"text_pair"}, "Example")
        label = data["label"]
        if isinstance(label, bool) or not isinstance(label, (int, float)):
            raise DataError(f"Example: label must be a number, got {label!r}")
        return cls(text=data["text"], text_pair=data.get("text_pair"), label=label)


@dataclass
class TaskDefinition:
    """What the model head and the evaluation need to know about a task.

    Validated on construction so that an impossible combination (F1 on a regression task,
    a misspelt metric) is reported when the task is loaded, not after hours of training.
    """

    name: str
    metric: str
    label_names: list[str] | None
    is_pair: bool

    def __post_init__(self) -> None:
        if self.metric not in METRIC_NAMES:
            raise DataError(
                f"task {self.name!r}: unknown metric {self.metric!r}; expected one of {', '.join(METRIC_NAMES)}"
            )
        if self.label_names is None:
            if self.metric not in REGRESSION_METRICS:
                raise DataError(
                    f"task {self.name!r} is a regression task, so its metric must be one of "
                    f"{', '.join(REGRESSION_METRICS)}, not {self.metric!r}"
                )
            return
        self.label_names = list(self.label_names)
        if not all(isinstance(n, str) for n in self.label_names):
            raise DataError(f"task {self.name!r}: label names must be strings")
        if len(self.label_names) < 2:
            raise DataError(
                f"task {self.name!r}: a classification task needs at least two classes, got "
                f"{self.label_names}; check the label column"
            )
        if len(set(self.label_names)) != len(self.label_names):
            raise DataError(f"task {self.name!r}: duplicate label names in {self.label_names}")
        if self.metric not in CLASSIFICATION_METRICS:
            raise DataError(
                f"task {self.name!r} is a classification task, so its metric must be one of "
                f"{', '.join(CLASSIFICATION_METRICS)}, not {self.metric!r}"
            )
        if self.metric == "f1" and len(self.label_names) != 2:
            raise DataError(
                f"task {self.name!r}: metric 'f1' is binary F1 of class 1 and needs exactly two "
                f"classes, got {len(self.label_names)}; use 'accuracy' or "
                f"'matthews_correlation'"
            )

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Output width of the head: one score for regression, one logit per class."""
        return 1 if self.label_names is None else len(self.label_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metric": self.metric,
            "label_names": None if self.label_names is None else list(self.label_names),
            "is_pair": self.is_pair,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskDefinition:
        _check_keys(data, {"name", "metric", "label_names", "is_pair"}, set(), "TaskDefinition")
        names = data["label_names"]
        return cls(
            name=data["name"],
            metric=data["metric"],
            label_names=None if names is None else list(names),
            is_pair=bool(data["is_pair"]),
        )


@dataclass
class TaskData:
    """A loaded task: the full official training split plus the held-out test set.

    ``train`` is deliberately the whole training split: the low-data protocol
    (splits.low_data_split) is applied per seed by the caller, so one loaded task serves
    every seed and every data size.
    """

    spec: TaskDefinition
    train: list[Example]
    test: list[Example] | None

    def __post_init__(self) -> None:
        # A label that does not fit the head would otherwise surface as an index error
        # deep inside the loss; check once here, where the task name is known.
        for split_name, split in (("train", self.train), ("test", self.test or [])):
            for i, example in enumerate(split):
                _check_label(self.spec, example.label, f"{split_name} example {i}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "train": [e.to_dict() for e in self.train],
            "test": None if self.test is None else [e.to_dict() for e in self.test],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskData:
        _check_keys(data, {"spec", "train", "test"}, set(), "TaskData")
        test = data["test"]
        return cls(
            spec=TaskDefinition.from_dict(data["spec"]),
            train=[Example.from_dict(e) for e in data["train"]],
            test=None if test is None else [Example.from_dict(e) for e in test],
        )


def _check_label(spec: TaskDefinition, label: int | float, where: str) -> None:
    if isinstance(label, bool):
        raise DataError(f"task {spec.name!r}, {where}: label must be a number, got {label!r}")
    if spec.is_regression:
        if not isinstance(label, numbers.Real) or not math.isfinite(label):
            raise DataError(f"task {spec.name!r}, {where}: regression label must be a finite number, got {label!r}")
    elif not isinstance(label, numbers.Integral) or not 0 <= label < spec.num_labels:
        raise DataError(
            f"task {spec.name!r}, {where}: label must be a class index in 0..{spec.num_labels - 1}, got {label!r}"
        )
