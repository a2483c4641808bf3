"""What ``aa-deploy train`` shows while it trains: one progress bar per epoch, ending on the dev metric.

The ``transformers.Trainer`` default is one bar over every step of the run plus raw log dicts
(``{'eval_loss': 0.69, 'eval_accuracy': 0.5, ...}``) printed to stdout. Users want to see how far the
current epoch is and how the dev metric moves, and stdout must stay free for ``--json``. So the
Trainer's own progress and printer callbacks are replaced by :class:`EpochProgress`, which draws on
stderr.
"""

from __future__ import annotations

import math
import sys
from typing import IO, Any

from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback


class EpochProgress(TrainerCallback):
    """A bar per epoch (``epoch 3/20``) whose end shows the epoch's dev metric and the best so far."""

    def __init__(self, metric: str, *, enabled: bool = True, stream: IO[str] | None = None) -> None:
        self.metric = metric
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.best: tuple[float, int] | None = None
        self._bar: Any = None
        self._epoch = 0

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self._close()
        self._epoch += 1
        if not self.enabled:
            return
        epochs = int(math.ceil(args.num_train_epochs))
        steps = int(math.ceil(state.max_steps / max(1, epochs))) if state.max_steps > 0 else None
        self._bar = tqdm(
            total=steps, desc=f"epoch {self._epoch}/{epochs}", unit="step", file=self.stream, leave=True,
            dynamic_ncols=True,
        )  # fmt: skip

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if self._bar is not None:
            self._bar.update(1)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None, **kw: Any
    ):
        # The final dev/test evaluations use other key prefixes ("dev_", "test_"): they give NaN here.
        value = float((metrics or {}).get(f"eval_{self.metric}", math.nan))
        if not math.isnan(value) and (self.best is None or value > self.best[0]):
            self.best = (value, self._epoch)
        text = f"dev {self.metric} {value:.4f}"
        if self.best is not None:
            text += f" (best {self.best[0]:.4f} at epoch {self.best[1]})"
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)
            self._close()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self._close()


def use_epoch_progress(trainer: Trainer, metric: str, *, enabled: bool) -> EpochProgress:
    """Replace the Trainer's run-long bar and its printed log dicts by :class:`EpochProgress`."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    progress = EpochProgress(metric, enabled=enabled)
    trainer.add_callback(progress)
    return progress
