"""Named training schedules: the toolkit's default and the paper's protocol (docs/METHOD.md §5).

A schedule is the part of a run's settings that decides whether small data trains at all: the
adapters' learning rate, the number of optimiser steps, the warmup, the rational's starting shape and
how the task head starts. The paper's values were set for BERT-base on full GLUE training sets
(thousands of steps); on a few hundred examples they leave a frozen MiniLM at the majority class,
because Adam moves each weight by at most about ``learning rate × steps`` and the adapters start as
an identity. The default schedule therefore gives the adapters a ten times larger rate and a minimum
number of steps, whatever the data size. Each schedule is a frozen value: runs record its name and
the values that ran, so a result can always be traced to the schedule that produced it.

Standard library only (the CLI's ``--help`` imports it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Schedule:
    """The schedule-dependent defaults of ``aa-deploy train``; a flag given by the user wins."""

    name: str
    learning_rate: float  # adapters and task head (switch and rational rates are separate flags)
    epochs: int
    min_steps: int  # more epochs are run when the data would give fewer optimiser steps than this
    warmup_ratio: float  # linear warmup over this share of the steps, then linear decay to 0
    rational_init: str
    # Regression heads start with their bias at the training labels' mean, so that the first steps
    # fit the scores' shape instead of climbing from 0 to the label mean (STS-B: 0 → 2.7).
    head_bias_from_labels: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PAPER = Schedule(
    name="paper", learning_rate=1e-4, epochs=20, min_steps=0, warmup_ratio=0.0, rational_init="one",
    head_bias_from_labels=False,
)  # fmt: skip
# The rational starts as ``identity``: chosen by the rational start study (docs/METHOD.md §5), the start
# with the best mean score on the training-side dev split over SST-2 and STS-B at N = 100, 300 and 1000.
DEFAULT = Schedule(
    name="default", learning_rate=1e-3, epochs=20, min_steps=300, warmup_ratio=0.06, rational_init="identity",
    head_bias_from_labels=True,
)  # fmt: skip
PROTOCOLS: dict[str, Schedule] = {s.name: s for s in (DEFAULT, PAPER)}


def schedule_named(name: str) -> Schedule:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}: choose one of {', '.join(PROTOCOLS)}") from None


def epochs_for(schedule_epochs: int, min_steps: int, steps_per_epoch: int) -> int:
    """Epochs to run so that at least ``min_steps`` optimiser steps are taken (never fewer than asked)."""
    if steps_per_epoch < 1:
        return schedule_epochs
    needed = -(-min_steps // steps_per_epoch)  # ceil
    return max(schedule_epochs, needed)


def describe(schedule: Schedule) -> str:
    """One line for ``--help``."""
    return (
        f"{schedule.name}: lr {schedule.learning_rate:g}, {schedule.epochs} epochs, at least {schedule.min_steps} "
        f"steps, warmup {schedule.warmup_ratio:g}, rational start {schedule.rational_init!r}"
        + (", regression bias at the label mean" if schedule.head_bias_from_labels else "")
    )
