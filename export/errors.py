"""Errors of the compiler. All derive from RuntimeError, so the CLI reports them as one clear line."""

from __future__ import annotations

from typing import Any


class ExportError(RuntimeError):
    """Base class: the export could not be completed and nothing final was written."""


class RunFolderError(ExportError):
    """The run folder is missing, incomplete or inconsistent (files from different runs)."""


class ValidationError(ExportError):
    """The exported graph does not compute what the trained PyTorch model computes.

    ``report`` holds the per-case differences so that callers (and the CLI) can show what failed.
    """

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class GraphCheckError(ExportError):
    """The exported graph breaks the deployment contract (custom domains, switch ops, wrong I/O)."""


class OutputExistsError(ExportError, FileExistsError):
    """The output folder exists (or appeared while exporting) and ``overwrite`` was not given.

    Also a ``FileExistsError``, as the early check raised before this class existed.
    """
