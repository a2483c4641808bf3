"""The paper's low-data protocol: seeded subsample of the train split, then 75/25 train/dev.

``random.Random(seed).shuffle`` is used rather than numpy or torch generators because its
output for an integer seed is the same on every platform and has not changed since Python
3.2, so a (seed, size) pair names the same examples everywhere. (Python formally promises
only ``random()`` to be stable; tests/test_train_data.py pins a known permutation so a change
would be noticed.) Shuffling indices
once and taking a prefix also makes the sizes nested: for one seed the 100 kept examples
are the first 100 of the 1000 kept at size 1000.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from aa_deploy.data.errors import DataError
from aa_deploy.data.examples import Example

MIN_TRAIN_SIZE = 4  # the smallest size that leaves at least 1 dev and 3 train examples


def low_data_split(
    examples: Sequence[Example],
    train_size: int | None,
    seed: int,
    dev_fraction: float = 0.25,
) -> tuple[list[Example], list[Example]]:
    """Return ``(train, dev)``: the dev part selects the best epoch, never the test set.

    ``train_size`` is the number of examples kept *before* the split (None keeps all), as
    in the paper, where "N examples" covers both parts. The dev part has
    ``ceil(train_size * dev_fraction)`` examples (the usual train/test-split convention),
    kept between 1 and ``train_size - 1`` so neither part is empty.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer, got {seed!r}")
    if not 0.0 < dev_fraction < 1.0:
        raise DataError(f"dev_fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    available = len(examples)
    size = available if train_size is None else train_size
    if isinstance(size, bool) or not isinstance(size, int):
        raise DataError(f"train_size must be an integer or None, got {train_size!r}")
    if size < MIN_TRAIN_SIZE:
        what = "the training data has only" if train_size is None else "train_size is"
        raise DataError(
            f"{what} {size} example(s); the low-data split needs at least {MIN_TRAIN_SIZE} "
            f"(3 to train, 1 to select the best epoch)"
        )
    if size > available:
        raise DataError(
            f"train_size {size} is larger than the {available} training examples available; "
            f"use a smaller train_size or None for all"
        )
    order = list(range(available))
    random.Random(seed).shuffle(order)
    kept = [examples[i] for i in order[:size]]
    # round() first so that e.g. 30 * 0.1 = 3.0000000000000004 does not become 4.
    n_dev = min(max(math.ceil(round(size * dev_fraction, 9)), 1), size - 1)
    return kept[: size - n_dev], kept[size - n_dev :]
