"""Training: the paper's protocol on top of the Hugging Face ``Trainer``."""

from .config import TrainConfig
from .run import METRICS_NAME, SELECTION_NAME, RunResult, read_selection, train

__all__ = ["METRICS_NAME", "SELECTION_NAME", "RunResult", "TrainConfig", "read_selection", "train"]
