"""Training: the paper's protocol on top of the Hugging Face ``Trainer``.

``TrainConfig`` (standard library only) is imported eagerly; the rest pulls in torch and transformers,
so it is imported on first use: ``aa-deploy --help`` and the torch-free server can read the options.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .config import TrainConfig

_LAZY = {
    "RunResult": "run",
    "read_selection": "run",
    "train": "run",
    "RunMetrics": "run_metrics",
}

__all__ = [
    "RunMetrics", "RunResult", "TrainConfig", "read_selection", "train",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aa_deploy.training' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
