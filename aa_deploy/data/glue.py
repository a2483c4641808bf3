"""Readers for the GLUE TSVs as written by the standard download script.

Each task's quirks (header or none, BOM, which column holds the label) are data in a
GlueFormat, so the reading code is one loop shared by all tasks. The exact header is
checked because column positions are hard-coded: a file from another export (Hugging Face
CSV, a re-split with reordered columns) must fail loudly instead of training on the wrong
column.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aa_deploy.data.errors import DataError
from aa_deploy.data.examples import Example, TaskData, TaskDefinition
from aa_deploy.data.files import tsv_rows

Split = Literal["train", "dev"]


@dataclass(frozen=True)
class GlueFormat:
    """Layout of one GLUE task's TSV files (columns are 0-based)."""

    task: str
    folder: str
    header: tuple[str, ...] | None  # None: the file has no header row (CoLA)
    num_columns: int
    text_column: int
    pair_column: int | None
    label_column: int
    label_names: tuple[str, ...] | None  # None: regression
    metric: str
    label_range: tuple[float, float] | None = None  # regression targets must lie inside


GLUE_FORMATS: tuple[GlueFormat, ...] = (
    GlueFormat(
        task="cola", folder="CoLA", header=None, num_columns=4,
        text_column=3, pair_column=None, label_column=1,
        label_names=("0", "1"), metric="matthews_correlation",
    ),
    GlueFormat(
        task="sst2", folder="SST-2", header=("sentence", "label"), num_columns=2,
        text_column=0, pair_column=None, label_column=1,
        label_names=("0", "1"), metric="accuracy",
    ),
    GlueFormat(
        task="mrpc", folder="MRPC", header=("quality", "#1 id", "#2 id", "#1 string", "#2 string"),
        num_columns=5, text_column=3, pair_column=4, label_column=0,
        label_names=("0", "1"), metric="f1",
    ),
    GlueFormat(
        task="stsb", folder="STS-B",
        header=("index", "genre", "filename", "year", "old_index", "source1", "source2",
                "sentence1", "sentence2", "score"),
        num_columns=10, text_column=7, pair_column=8, label_column=9,
        label_names=None, metric="spearman", label_range=(0.0, 5.0),
    ),
    GlueFormat(
        task="qnli", folder="QNLI", header=("index", "question", "sentence", "label"), num_columns=4,
        text_column=1, pair_column=2, label_column=3,
        label_names=("entailment", "not_entailment"), metric="accuracy",
    ),
    GlueFormat(
        task="rte", folder="RTE", header=("index", "sentence1", "sentence2", "label"), num_columns=4,
        text_column=1, pair_column=2, label_column=3,
        label_names=("entailment", "not_entailment"), metric="accuracy",
    ),
)  # fmt: skip

GLUE_TASKS: tuple[str, ...] = tuple(f.task for f in GLUE_FORMATS)


def normalize_glue_task(task: str) -> str | None:
    """Canonical GLUE task name ("SST-2", "sts_b" -> "sst2", "stsb"), or None if not GLUE."""
    key = task.strip().lower().replace("-", "").replace("_", "")
    return key if key in GLUE_TASKS else None


def glue_format(task: str) -> GlueFormat:
    canonical = normalize_glue_task(task)
    for fmt in GLUE_FORMATS:
        if fmt.task == canonical:
            return fmt
    raise DataError(f"unknown GLUE task {task!r}: expected one of {', '.join(GLUE_TASKS)}")


def glue_spec(task: str, metric: str | None = None) -> TaskDefinition:
    """The TaskDefinition of a GLUE task; metric overrides the paper's metric for that task."""
    fmt = glue_format(task)
    return TaskDefinition(
        name=fmt.task,
        metric=metric or fmt.metric,
        label_names=None if fmt.label_names is None else list(fmt.label_names),
        is_pair=fmt.pair_column is not None,
    )


def expected_layout(data_dir: str | os.PathLike[str] | None = None) -> str:
    """Human-readable folder layout, for error messages."""
    root = "<data_dir>" if data_dir is None else str(data_dir)
    folders = ",".join(f.folder for f in GLUE_FORMATS)
    return f"{root}/{{{folders}}}/{{train,dev}}.tsv, as written by the standard GLUE download script"


def _check_header(fmt: GlueFormat, fields: list[str], path: Path, line: int) -> None:
    assert fmt.header is not None
    found = tuple(f.strip().lower() for f in fields)
    if found != fmt.header:
        raise DataError(
            f"{path}: line {line}: header {fields!r} does not look like the GLUE "
            f"{fmt.folder} file (expected columns {', '.join(fmt.header)}); use the "
            f"unmodified TSV from the GLUE download"
        )


def _label(fmt: GlueFormat, raw: str, path: Path, line: int) -> int | float:
    value = raw.strip()
    if fmt.label_names is not None:
        if value not in fmt.label_names:
            raise DataError(
                f"{path}: line {line}: label {raw!r} is not one of {', '.join(fmt.label_names)} for {fmt.folder}"
            )
        return fmt.label_names.index(value)
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    low, high = fmt.label_range or (-math.inf, math.inf)
    if not math.isfinite(score) or not low <= score <= high:
        raise DataError(
            f"{path}: line {line}: label {raw!r} is not a number in [{low}, {high}] for "
            f"{fmt.folder} (the score is the last column)"
        )
    return score


def read_glue_file(task: str, path: str | os.PathLike[str]) -> list[Example]:
    """Read one GLUE TSV (train, dev, or any file in the same layout) into examples."""
    fmt = glue_format(task)
    file_path = Path(path)
    examples = []
    header_pending = fmt.header is not None
    for line, fields in tsv_rows(file_path):
        if header_pending:
            _check_header(fmt, fields, file_path, line)
            header_pending = False
            continue
        if len(fields) != fmt.num_columns:
            raise DataError(
                f"{file_path}: line {line}: expected {fmt.num_columns} tab-separated fields "
                f"for {fmt.folder}, found {len(fields)}; the row is malformed"
            )
        examples.append(
            Example(
                text=fields[fmt.text_column],
                text_pair=None if fmt.pair_column is None else fields[fmt.pair_column],
                label=_label(fmt, fields[fmt.label_column], file_path, line),
            )
        )
    if not examples:
        raise DataError(f"{file_path}: contains no examples; use the GLUE {fmt.folder} file")
    return examples


def glue_split_path(task: str, data_dir: str | os.PathLike[str], split: Split) -> Path:
    return Path(data_dir) / glue_format(task).folder / f"{split}.tsv"


def _check_data_dir(fmt: GlueFormat, data_dir: Path) -> None:
    if data_dir.is_dir():
        return
    raise DataError(
        f"GLUE folder {data_dir} does not exist; expected {expected_layout(data_dir)} "
        f"(here: {data_dir / fmt.folder / 'train.tsv'}). Point --data-dir at that folder"
    )


def _missing_file(fmt: GlueFormat, data_dir: Path, split: Split) -> DataError:
    path = glue_split_path(fmt.task, data_dir, split)
    other = glue_split_path(fmt.task, data_dir, "dev" if split == "train" else "train")
    if split == "train" and other.is_file():
        what = f"{fmt.task} can only be evaluated with this folder (its dev split is there), not trained"
    elif split == "dev":
        what = f"{fmt.task} has no test set here (the official dev split is the test set)"
    else:
        what = f"{fmt.task} has neither a train nor a dev file here"
    hint = ""
    if (data_dir / "train.tsv").is_file() or (data_dir / "dev.tsv").is_file():
        hint = f" ({data_dir} looks like a single task's folder: point at its parent)"
    return DataError(
        f"{path} is missing: {what}. Point --data-dir at a full GLUE folder laid out as {expected_layout()}{hint}"
    )


def read_glue_split(task: str, data_dir: str | os.PathLike[str], split: Split) -> list[Example]:
    """Read one official split; lets a model trained elsewhere be evaluated on a task whose
    training file is absent (QNLI here has dev only)."""
    fmt = glue_format(task)
    root = Path(data_dir)
    _check_data_dir(fmt, root)
    path = glue_split_path(fmt.task, root, split)
    if not path.is_file():
        raise _missing_file(fmt, root, split)
    return read_glue_file(fmt.task, path)


def load_glue_task(
    task: str,
    data_dir: str | os.PathLike[str],
    *,
    test_file: str | os.PathLike[str] | None = None,
    metric: str | None = None,
) -> TaskData:
    """Train split plus the official dev split as test set (paper protocol).

    ``test_file`` replaces the dev split by another file in the same GLUE layout (for
    example a challenge set); the dev file is then not needed.
    """
    spec = glue_spec(task, metric)
    train = read_glue_split(spec.name, data_dir, "train")
    if test_file is not None:
        test = read_glue_file(spec.name, test_file)
    else:
        test = read_glue_split(spec.name, data_dir, "dev")
    return TaskData(spec=spec, train=train, test=test)
