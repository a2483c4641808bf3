"""Training: the paper's protocol on top of the Hugging Face ``Trainer``."""

from .config import TrainConfig
from .run import RunResult, read_selection, train

__all__ = ["RunResult", "TrainConfig", "read_selection", "train"]
