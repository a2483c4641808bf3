"""A thin ``transformers.Trainer`` subclass: the paper's optimiser and best-epoch bookkeeping."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..contract.layout import KEPT_LAYERS_KEY
from ..contract.rules import ADAPTER
from ..modeling import AdaptableAdapterModel


def parameter_groups(
    model: AdaptableAdapterModel, learning_rate: float, switch_learning_rate: float, rational_learning_rate: float
) -> list[dict[str, Any]]:
    """Three groups with their own learning rates: adapters + head, switch logits, rational coefficients."""
    groups: dict[str, list[torch.nn.Parameter]] = {"default": [], "switch": [], "rational": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if ".switch." in name:
            groups["switch"].append(param)
        elif ".adapter.activation." in name:
            groups["rational"].append(param)
        else:
            groups["default"].append(param)
    rates = {"default": learning_rate, "switch": switch_learning_rate, "rational": rational_learning_rate}
    return [
        {"params": params, "lr": rates[key], "weight_decay": 0.0, "name": key}
        for key, params in groups.items()
        if params
    ]


def expected_kept_layers(model: AdaptableAdapterModel) -> torch.Tensor:
    """Sum over switches of P(adapter): differentiable, so a layer price can push switches off."""
    probs = [
        torch.softmax(block.switch.logits, dim=0)[ADAPTER]
        for block in model.adapter_layers.values()
        if block.switch is not None
    ]
    return torch.stack(probs).sum() if probs else torch.zeros(())


class AdapterTrainer(Trainer):
    """Adam (not AdamW), no weight decay, one learning rate per parameter group (docs/METHOD.md §5)."""

    def __init__(
        self, *args: Any, learning_rates: tuple[float, float, float], layer_cost: float = 0.0, **kwargs: Any
    ) -> None:
        self.learning_rates = learning_rates
        self.layer_cost = layer_cost
        super().__init__(*args, **kwargs)

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, **kwargs: Any) -> Any:
        """The task loss plus, with ``--layer-cost``, a price on every layer a switch expects to keep.

        The penalty is the sum of the switches' adapter probabilities (docs/METHOD.md §3), so each layer
        costs ``layer_cost`` unless its adapter lowers the task loss by more.
        """
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        if not self.layer_cost or not model.training:
            return result
        loss, outputs = result if return_outputs else (result, None)
        loss = loss + self.layer_cost * expected_kept_layers(model)
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            target = self.model if model is None else model
            self.optimizer = torch.optim.Adam(parameter_groups(target, *self.learning_rates))
        return self.optimizer


class BestEpochCallback(TrainerCallback):
    """Keep the best epoch's trained weights (switch logits included) and a per-epoch history.

    The Trainer's own checkpointing would write the frozen backbone every epoch; our trained state is a
    few hundred KB, so we keep the best copy in memory and optionally write small per-epoch checkpoints.
    """

    def __init__(self, model: AdaptableAdapterModel, metric: str, checkpoint_dir: Path | None = None) -> None:
        self.model = model
        self.metric_key = f"eval_{metric}"
        self.checkpoint_dir = checkpoint_dir
        self.best_value = -math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self._train_loss: float | None = None
        # Switched off after training so the final dev/test evaluations are not logged as epochs.
        self.active = True

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kw: Any):
        if logs and "loss" in logs:
            self._train_loss = float(logs["loss"])

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None, **kw: Any
    ):
        if not self.active:
            return
        metrics = metrics or {}
        value = float(metrics.get(self.metric_key, math.nan))
        epoch = int(round(state.epoch or 0))
        entry = {
            "epoch": epoch,
            "train_loss": self._train_loss,
            "dev": {k.removeprefix("eval_"): v for k, v in metrics.items() if k.startswith("eval_")},
            KEPT_LAYERS_KEY: self.model.kept_layers(),
            "switch_probabilities": self.model.switch_probabilities(),
        }
        self.history.append(entry)
        if not math.isnan(value) and value > self.best_value:
            self.best_value, self.best_epoch = value, epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.trainable_state_dict().items()}
        if self.checkpoint_dir is not None:
            self.model.save_pretrained(self.checkpoint_dir / f"epoch-{epoch}")


class SwitchAnnealingCallback(TrainerCallback):
    """Optional exponential annealing of the switch temperature from its start to its final value."""

    def __init__(self, model: AdaptableAdapterModel, start: float, final: float) -> None:
        self.model, self.start, self.final = model, start, final

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        progress = state.global_step / max(1, state.max_steps)
        temperature = self.start * (self.final / self.start) ** progress
        for block in self.model.adapter_layers.values():
            if block.switch is not None:
                block.switch.temperature = temperature
