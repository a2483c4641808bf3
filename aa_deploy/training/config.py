"""Everything one training run needs, as a JSON-round-tripping dataclass (saved in every run folder).

``TrainConfig`` is the one owner of the training options: each field's default and help text are the
``aa-deploy train`` flag (see :mod:`aa_deploy.cli_options`), and the whole object goes to
:func:`aa_deploy.training.train`. Standard library only, so that ``aa-deploy --help`` stays light.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..cli_options import GLUE_DIR_ENV, option
from ..config import RECIPES
from ..json_record import JsonRecord
from ..rational_presets import DEFAULT_DEGREES, RATIONAL_PRESETS, RATIONAL_VERSIONS, check_rational
from .option_rules import check_option_conflicts, set_options
from .protocols import PROTOCOLS, describe, schedule_named

DEVICES = ("auto", "cpu", "cuda")


def parse_layers(value: str) -> list[int]:
    """``"0,3,5"`` → ``[0, 3, 5]`` (sorted, without repeats), for ``--layers``."""
    try:
        return sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 0,3,5, got {value!r}") from None


@dataclass
class TrainConfig(JsonRecord):
    """One run of ``aa-deploy train``.

    Fields left at ``None`` whose help says "from --protocol" are filled from the named schedule
    (:mod:`aa_deploy.training.protocols`) when the object is built, so the saved ``training_config.json``
    records the values that actually ran next to the protocol's name.
    """

    task: str = option(help="GLUE task (rte, mrpc, sst2, cola, stsb, qnli) or a .csv/.tsv/.jsonl file")
    output: str = option(help="run folder to write", metavar="DIR")
    recipe: str = option("search", choices=RECIPES, help="what to train (docs/METHOD.md §4)")
    data_dir: str | None = option(None, env=GLUE_DIR_ENV, metavar="DIR", help="GLUE folder")
    test_file: str | None = option(
        None, help="labelled test file for a file task (default: none; GLUE tasks use the official dev set)"
    )
    train_size: int | None = option(
        None, metavar="N", help="low-data setting: keep N shuffled training examples (default: all)"
    )
    seed: int = option(42, help="seed of the data shuffle, the initialisation and the Gumbel noise")
    protocol: str = option(
        "default",
        choices=tuple(PROTOCOLS),
        help="training schedule (docs/METHOD.md §5) that sets the flags marked 'from --protocol': "
        + "; ".join(describe(s) for s in PROTOCOLS.values()),
    )
    epochs: int | None = option(
        None, help="training epochs (default: from --protocol); the best epoch on the dev split is kept"
    )
    min_steps: int | None = option(
        None,
        help="run more epochs when the data gives fewer optimiser steps than this "
        "(default: from --protocol; 0 when --epochs is given)",
    )
    warmup_ratio: float | None = option(
        None, help="share of the steps with a linear learning-rate warmup (default: from --protocol)"
    )
    batch_size: int = option(32, help="training batch size")
    eval_batch_size: int = option(64, help="batch size for the dev and test evaluations")
    max_length: int = option(128, help="longest tokenised input; longer inputs are truncated")
    learning_rate: float | None = option(
        None, help="learning rate of the adapters and the task head (default: from --protocol)"
    )
    switch_learning_rate: float = option(0.05, help="learning rate of the switch logits")
    rational_learning_rate: float = option(0.01, help="learning rate of the rational coefficients")
    max_grad_norm: float = option(1.0, help="gradient-norm clipping")
    backbone: str | None = option(
        None, metavar="NAME_OR_PATH", help="Hub id or local model folder (default: all-MiniLM-L6-v2)"
    )
    selection_from: str | None = option(
        None, metavar="RUN_DIR", help="focused recipe: reuse this run's selected layers (default: none)"
    )
    selected_layers: list[int] | None = option(
        None,
        flag="--layers",
        parse=parse_layers,
        help="focused or standard recipe: adapters only at these layers, e.g. 0,3,5 (default: none)",
    )
    max_layers: int | None = option(
        None,
        metavar="K",
        help="search recipe: layer budget, keep at most K adapter layers (docs/METHOD.md §3; default: no budget)",
    )
    layer_cost: float = option(
        0.0, help="search recipe: loss penalty per expected kept layer (a price on each layer, docs/METHOD.md §3)"
    )
    reduction_factor: float = option(16.0, help="adapter bottleneck = hidden size / this")
    rational_init: str | None = option(
        None, choices=RATIONAL_PRESETS, help="starting shape of the rational activations (default: from --protocol)"
    )
    rational_version: str = option("A", choices=RATIONAL_VERSIONS, help="rational denominator form (docs/METHOD.md §2)")
    numerator_degree: int = option(DEFAULT_DEGREES[0], help="degree of the rational's numerator P")
    denominator_degree: int = option(DEFAULT_DEGREES[1], help="degree of the rational's denominator Q")
    switch_temperature: float = option(0.1, help="Gumbel-softmax temperature of the switches")
    switch_temperature_final: float | None = option(
        None, flag="--anneal-to", help="anneal the switch temperature to this value (default: no annealing)"
    )
    adapterdrop_max_layers: int | None = option(
        None, help="AdapterDrop: drop up to k lowest layers per step (default: half)"
    )
    adapterdrop_eval_layers: int | None = option(
        None, help="AdapterDrop: lowest layers dropped at test time (default 0)"
    )
    dev_fraction: float = option(0.25, help="share of the shuffled training data held out as the dev split")
    device: str = option("auto", choices=DEVICES, help="where to train")
    save_checkpoints: bool = option(False, help="also write a small checkpoint every epoch")
    progress: bool = option(True, help="no progress bars")
    overwrite: bool = option(False, help="replace an existing --output folder")

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}: choose one of {', '.join(RECIPES)}")
        schedule = schedule_named(self.protocol)
        if self.epochs is not None and self.min_steps is None:
            self.min_steps = 0  # an explicit --epochs is taken literally
        for name in ("learning_rate", "epochs", "min_steps", "warmup_ratio", "rational_init"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(schedule, name))
        if not 0.0 <= self.warmup_ratio < 1.0:  # type: ignore[operator]
            raise ValueError(f"warmup ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.min_steps < 0:  # type: ignore[operator]
            raise ValueError(f"min steps must be >= 0, got {self.min_steps}")
        if self.recipe != "search" and self.layer_cost:
            raise ValueError("--layer-cost prices the switches of the search recipe: pass --recipe search or drop it")
        if self.max_layers is not None and self.max_layers < 1:
            raise ValueError(f"--max-layers must be >= 1, got {self.max_layers}")
        if self.layer_cost < 0:
            raise ValueError(f"--layer-cost must be >= 0, got {self.layer_cost}")
        if self.epochs < 1:  # type: ignore[operator]
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.recipe == "focused" and self.selection_from is None and self.selected_layers is None:
            raise ValueError(
                "the focused recipe trains adapters only at a given selection: pass --selection-from RUN_DIR "
                "(a finished search run) or --layers 0,3,5"
            )
        check_rational(
            self.rational_init,
            self.rational_version,
            self.numerator_degree,
            self.denominator_degree,  # type: ignore[arg-type]
        )
        check_option_conflicts(self.recipe, set_options(vars(self)))
