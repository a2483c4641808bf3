"""One entry point that turns the CLI's --task / --data-dir / --test-file into a TaskData.

A task is either a GLUE name (read from a GLUE folder) or a path to the user's own file;
GLUE names win, so a stray file called "rte" in the working directory cannot shadow the
benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path

from aa_deploy.data.errors import DataError
from aa_deploy.data.examples import TaskData
from aa_deploy.data.files import SUPPORTED_SUFFIXES, load_file_task
from aa_deploy.data.glue import GLUE_TASKS, expected_layout, load_glue_task, normalize_glue_task

__all__ = ["GLUE_TASKS", "load_task"]


def load_task(
    task: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    test_file: str | os.PathLike[str] | None = None,
    metric: str | None = None,
) -> TaskData:
    """Load a GLUE task from ``data_dir`` or a CSV/TSV/JSONL file given as ``task``.

    For a GLUE task the official dev split becomes the test set (``test_file``, if given,
    replaces it with a file in the same GLUE layout). For a file task ``data_dir`` is not
    used and ``test_file`` is an optional second file with the same columns. ``metric``
    overrides the task's default metric.
    """
    canonical = normalize_glue_task(str(task))
    if canonical is not None:
        if data_dir is None:
            raise DataError(
                f"task {task!r} is a GLUE task and needs a data folder: pass --data-dir "
                f"pointing at a folder laid out as {expected_layout()}"
            )
        return load_glue_task(canonical, data_dir, test_file=test_file, metric=metric)
    path = Path(task)
    if path.is_file():
        return load_file_task(path, test_file, metric=metric)
    if path.is_dir():
        raise DataError(f"task {task!r} is a folder; expected a GLUE task name or a data file")
    if path.suffix.lower() in SUPPORTED_SUFFIXES or os.sep in str(task):
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise DataError(
            f"data file {task!r} not found{where}; expected a GLUE task name "
            f"({', '.join(GLUE_TASKS)}) or an existing {'/'.join(SUPPORTED_SUFFIXES)} file"
        )
    raise DataError(
        f"unknown task {task!r}: expected one of {', '.join(GLUE_TASKS)} or a path to a "
        f"{'/'.join(SUPPORTED_SUFFIXES)} file"
    )
