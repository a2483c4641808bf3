"""User data files (CSV, TSV, JSONL with columns text, optional text_pair, label) as a task.

Also home of the low-level TSV line reader that the GLUE readers share, so that both kinds
of TSV follow one rule: a row is one ``\\n``-terminated line split on tabs, with no quoting.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aa_deploy.data.errors import DataError
from aa_deploy.data.examples import Example, TaskData, TaskDefinition

SUPPORTED_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".jsonl")
ProblemType = Literal["classification", "regression"]


def read_text_file(path: Path) -> str:
    """Read a whole UTF-8 file; a leading BOM (MRPC has one) is dropped.

    Decoding up front turns an encoding problem into one clear error with a line number
    instead of a failure halfway through parsing.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a data file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 ({exc.reason}); re-save the file as UTF-8") from None


def tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for each non-blank line of a TSV file.

    Quoting is off on purpose: GLUE TSVs contain literal ``"`` characters, and a quoting
    reader would merge rows. Splitting on ``\\n`` only (not ``str.splitlines``) keeps rare
    characters such as U+2028 inside the text. Blank lines are skipped so that a missing or
    extra trailing newline (CoLA dev has none) makes no difference.
    """
    text = read_text_file(path)
    for number, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if line:
            yield number, line.split("\t")


@dataclass(frozen=True)
class _Label:
    """A label as written in the file, before the task's label set is known.

    kind is "int" for whole numbers (written 1, "1", "1.0"), "float" for other numbers and
    "str" for anything else; name is the class name the label gets in classification.
    """

    kind: Literal["int", "float", "str"]
    name: str
    value: float | None


@dataclass(frozen=True)
class _Row:
    line: int
    text: str
    text_pair: str | None
    label: _Label


def _parse_label(raw: Any, path: Path, line: int) -> _Label:
    where = f"{path}: line {line}"
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise DataError(f"{where}: the label is empty; every example needs a label")
    if isinstance(raw, bool):
        raise DataError(f"{where}: label {raw!r} is a boolean; write it as 0/1 or as a string")
    if isinstance(raw, int):
        return _Label("int", str(raw), float(raw))
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise DataError(f"{where}: label {raw!r} is not a finite number")
        if raw.is_integer():
            return _Label("int", str(int(raw)), raw)
        return _Label("float", repr(raw), raw)
    if not isinstance(raw, str):
        raise DataError(f"{where}: label must be a string or a number, got {raw!r}")
    text = raw.strip()
    try:
        return _Label("int", str(int(text)), float(int(text)))
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return _Label("str", text, None)
    if not math.isfinite(value):  # "nan", "inf" are words here, not numbers
        return _Label("str", text, None)
    if value.is_integer():
        return _Label("int", str(int(value)), value)
    return _Label("float", text, value)


def _text_field(raw: Any, column: str, path: Path, line: int) -> str:
    if not isinstance(raw, str):
        raise DataError(f"{path}: line {line}: {column!r} must be a string, got {raw!r}")
    if not raw.strip():
        raise DataError(f"{path}: line {line}: {column!r} is empty")
    return raw


def _header(fields: Sequence[str], path: Path, line: int) -> list[str]:
    names = [f.strip().lower() for f in fields]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path}: line {line}: duplicate column(s) {', '.join(duplicates)}")
    missing = [c for c in ("text", "label") if c not in names]
    if missing:
        raise DataError(
            f"{path}: line {line}: missing column(s) {', '.join(missing)} in header "
            f"{fields!r}; the first row must name the columns text, label and optionally "
            f"text_pair"
        )
    return names


def _delimited_records(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV/TSV as dicts keyed by lower-cased header names."""
    if delimiter == "\t":
        rows: Iterator[tuple[int, list[str]]] = tsv_rows(path)
    else:
        rows = _csv_rows(path)
    hint = "a stray tab" if delimiter == "\t" else "a stray comma or an unclosed quote"
    header: list[str] | None = None
    for line, fields in rows:
        if header is None:
            header = _header(fields, path, line)
            continue
        if len(fields) != len(header):
            raise DataError(
                f"{path}: line {line}: {len(fields)} field(s) but the header has {len(header)}; check for {hint}"
            )
        yield line, dict(zip(header, fields, strict=True))
    if header is None:
        raise DataError(f"{path}: file is empty; expected a header row (text,label,...)")


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """CSV with standard quoting (commas inside text need it); line = first physical line."""
    reader = csv.reader(io.StringIO(read_text_file(path), newline=""), strict=True)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
        if fields:
            yield start, fields
        start = reader.line_num + 1


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    text = read_text_file(path)
    seen = False
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: line {number}: not valid JSON ({exc.msg}, column {exc.colno}); "
                f"JSONL needs one JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path}: line {number}: expected a JSON object like "
                f'{{"text": ..., "label": ...}}, got {type(record).__name__}'
            )
        for column in ("text", "label"):
            if column not in record:
                raise DataError(f"{path}: line {number}: missing key {column!r}")
        seen = True
        yield number, record
    if not seen:
        raise DataError(f"{path}: file is empty; expected one JSON object per line")


def _read_rows(path: Path) -> tuple[list[_Row], bool]:
    """Parse a data file into rows, plus whether it is a sentence-pair file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = list(_jsonl_records(path))
        is_pair = any(r.get("text_pair") is not None for _, r in records)
    elif suffix in (".csv", ".tsv"):
        records = list(_delimited_records(path, "," if suffix == ".csv" else "\t"))
        is_pair = bool(records) and "text_pair" in records[0][1]
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'}; use {', '.join(SUPPORTED_SUFFIXES)}")
    if not records:
        raise DataError(f"{path}: has a header but no examples")
    rows = []
    for line, record in records:
        pair = record.get("text_pair")
        if is_pair:
            if pair is None:
                raise DataError(
                    f"{path}: line {line}: 'text_pair' is missing, but other rows have one; "
                    f"a file is either all single sentences or all pairs"
                )
            pair = _text_field(pair, "text_pair", path, line)
        rows.append(
            _Row(
                line=line,
                text=_text_field(record["text"], "text", path, line),
                text_pair=pair,
                label=_parse_label(record["label"], path, line),
            )
        )
    return rows, is_pair


def _label_sort_key(label: _Label) -> tuple[int, float, str]:
    """Numbers numerically (so "10" follows "9"), then words alphabetically."""
    if label.value is not None:
        return (0, label.value, label.name)
    return (1, 0.0, label.name)


def _to_examples(rows: list[_Row], path: Path, label_names: list[str] | None) -> list[Example]:
    """Turn rows into examples; label_names None means regression."""
    examples = []
    index = None if label_names is None else {n: i for i, n in enumerate(label_names)}
    for row in rows:
        if index is None:
            if row.label.value is None:
                raise DataError(
                    f"{path}: line {row.line}: label {row.label.name!r} is not a number, but "
                    f"this is a regression task; fix the label or pass "
                    f"problem_type='classification'"
                )
            label: int | float = float(row.label.value)
        else:
            if row.label.name not in index:
                raise DataError(
                    f"{path}: line {row.line}: label {row.label.name!r} is not one of the task's labels {label_names}"
                )
            label = index[row.label.name]
        examples.append(Example(text=row.text, text_pair=row.text_pair, label=label))
    return examples


# Split words that end a training file's name ("sentiment_train.csv") but are not part of the task's name.
_SPLIT_SUFFIXES = ("_train", "-train", ".train", "_training", "-training")


def task_name_from_file(path: Path) -> str:
    """The task name a training file stands for: ``sentiment_train.csv`` → ``sentiment``.

    The name lands in metrics.json, plot titles, the model card and the export's task name, where
    "sentiment_train" would read as if the model were about the training split.
    """
    stem = path.stem
    for suffix in _SPLIT_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def load_file_task(
    train_file: str | os.PathLike[str],
    test_file: str | os.PathLike[str] | None = None,
    *,
    problem_type: ProblemType | None = None,
    label_names: Sequence[str] | None = None,
    metric: str | None = None,
    name: str | None = None,
) -> TaskData:
    """Load a user task from a training file and an optional test file of the same layout.

    The problem type and label set come from the training file only, so the class index of
    a label cannot depend on which test file is used; a test label unseen in training is an
    error rather than a silently unpredictable class.
    """
    train_path = Path(train_file)
    rows, is_pair = _read_rows(train_path)
    if problem_type not in (None, "classification", "regression"):
        raise DataError(f"problem_type must be 'classification', 'regression' or None, got {problem_type!r}")
    if problem_type is None:
        problem_type = "regression" if any(r.label.kind == "float" for r in rows) else "classification"
    names: list[str] | None
    if problem_type == "regression":
        if label_names is not None:
            raise DataError("label_names were given, but the task is a regression task")
        names = None
    elif label_names is not None:
        names = [str(n) for n in label_names]
    else:
        unique = {r.label.name: r.label for r in rows}
        names = [label.name for label in sorted(unique.values(), key=_label_sort_key)]
        if len(names) < 2:
            raise DataError(
                f"{train_path}: every example has the label {names[0]!r}; classification "
                f"needs at least two classes (for a numeric target pass "
                f"problem_type='regression')"
            )
    spec = TaskDefinition(
        name=name or task_name_from_file(train_path),
        metric=metric or ("spearman" if names is None else "accuracy"),
        label_names=names,
        is_pair=is_pair,
    )
    train = _to_examples(rows, train_path, names)
    test = None
    if test_file is not None:
        test_path = Path(test_file)
        test_rows, test_is_pair = _read_rows(test_path)
        if test_is_pair != is_pair:
            raise DataError(
                f"{test_path}: {'has' if test_is_pair else 'lacks'} a text_pair column but "
                f"the training file {train_path} {'does not' if test_is_pair else 'does'}; "
                f"both files need the same columns"
            )
        test = _to_examples(test_rows, test_path, names)
    return TaskData(spec=spec, train=train, test=test)
