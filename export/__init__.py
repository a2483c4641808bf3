"""The compiler: prune deselected adapters, fold rationals into constants, export validated per-task ONNX.

``export_run(run_dir, output, options)`` is the entry point (``aa-deploy export`` on the command line).
The package imports torch lazily, so ``aa-deploy --help`` does not pay for it. The manifest and the
folder layout are not the compiler's: they live in the torch-free :mod:`aa_deploy.contract`.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "export_run": "api",
    "ExportResult": "api",
    "ExportOptions": "options",
    "SizeReport": "size_report",
    "folder_report": "size_report",
    "fleet_report": "size_report",
    "ValidationReport": "validation",
    "ExportError": "errors",
    "RunFolderError": "errors",
    "ValidationError": "errors",
    "GraphCheckError": "errors",
    "OutputExistsError": "errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aa_deploy.export' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
