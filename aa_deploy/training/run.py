"""``aa-deploy train``: data → model → Trainer → a run folder that ``from_pretrained`` can load."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, DataCollatorWithPadding, TrainingArguments, set_seed

from ..backbones import resolve_backbone_path
from ..config import AdapterConfig
from ..contract.layout import (
    KEPT_LAYERS_KEY,
    METRICS_NAME,
    PICTURE_NAME,
    SELECTION_NAME,
    TRAINING_CONFIG_NAME,
    WEIGHTS_NAME,
    adapter_files,
)
from ..data import TaskDefinition, load_task, low_data_split
from ..fileio import atomic_write_json, replace_folder, staging_dir_for
from ..metrics import task_metrics
from ..modeling import AdaptableAdapterModel, BackboneMismatchError
from ..modeling.model import check_backbone_matches
from ..plotting import plot_model
from .config import TrainConfig
from .datasets import TokenizedDataset
from .head_init import start_regression_head_at_mean
from .layer_savings import measure_layer_savings
from .progress import use_epoch_progress
from .protocols import epochs_for, schedule_named
from .run_metrics import RunMetrics, split_metrics
from .trainer import AdapterTrainer, BestEpochCallback, SwitchAnnealingCallback


@dataclass
class RunResult:
    output: Path
    metric: str
    value: float
    test_value: float | None
    kept_layers: list[int]
    metrics: dict[str, Any]


def read_selection(run_dir: str | os.PathLike) -> list[int]:
    """The layers a finished run kept (the focused recipe places its adapters there)."""
    path = Path(run_dir) / SELECTION_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --selection-from must point to a finished `aa-deploy train` run folder"
        )
    try:
        layers = json.loads(path.read_text())[KEPT_LAYERS_KEY]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a valid selection file ({exc}): re-run the search run") from exc
    return [int(i) for i in layers]


def check_selection_backbone(selection_from: str | os.PathLike, model: AdaptableAdapterModel) -> None:
    """Refuse a ``--selection-from`` run trained on another backbone than ``model``'s.

    Layer indices mean nothing across backbones (another depth, other representations per layer), so
    reusing them would train a focused run on a selection nobody searched. A folder without
    an adapter config (a hand-written selection.json) records no backbone and is taken as is.
    """
    if not adapter_files(selection_from).config.is_file():
        return
    recorded = AdapterConfig.load(selection_from)
    try:
        check_backbone_matches(recorded, model.backbone)
    except BackboneMismatchError as exc:
        raise BackboneMismatchError(
            f"--selection-from {selection_from} was trained on the backbone {recorded.base_model_name_or_path!r}, "
            f"not on the one this run trains ({exc}). A layer selection only carries over between runs of one "
            "backbone: pass a search run of this backbone, or give the layers with --layers"
        ) from exc


def _device_name(cfg: TrainConfig) -> str:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but PyTorch sees no CUDA device")
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


# Recipes whose adapters sit at a fixed set of layers when one is given (--layers / --selection-from).
FIXED_LAYER_RECIPES = ("focused", "standard")


def build_adapter_config(cfg: TrainConfig, num_layers_hint: int | None = None) -> AdapterConfig:
    selected = cfg.selected_layers
    if cfg.recipe in FIXED_LAYER_RECIPES and selected is None and cfg.selection_from is not None:
        selected = read_selection(cfg.selection_from)
    return AdapterConfig(
        recipe=cfg.recipe,  # type: ignore[arg-type]
        reduction_factor=cfg.reduction_factor,
        rational_version=cfg.rational_version,  # type: ignore[arg-type]
        rational_init=cfg.rational_init,
        numerator_degree=cfg.numerator_degree,
        denominator_degree=cfg.denominator_degree,
        switch_temperature=cfg.switch_temperature,
        switch_temperature_final=cfg.switch_temperature_final,
        selected_layers=selected if cfg.recipe in FIXED_LAYER_RECIPES else None,
        max_layers=cfg.max_layers,
        adapterdrop_max_layers=cfg.adapterdrop_max_layers,
        adapterdrop_eval_layers=(cfg.adapterdrop_eval_layers if cfg.adapterdrop_eval_layers is not None else 0),
    )


def _prepare_output(output: Path, overwrite: bool) -> Path:
    """Train into a temporary sibling folder; it replaces ``output`` only when the run succeeds."""
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} already exists and is not empty: choose another --output or pass --overwrite")
    return staging_dir_for(output)  # named with our PID: an export in the same folder leaves it alone


def train(cfg: TrainConfig) -> RunResult:
    """Run one training job end to end and write the run folder."""
    started = time.time()
    output = Path(cfg.output)
    data = load_task(cfg.task, cfg.data_dir, test_file=cfg.test_file)
    spec: TaskDefinition = data.spec
    train_examples, dev_examples = low_data_split(data.train, cfg.train_size, cfg.seed, cfg.dev_fraction)
    adapter_config = build_adapter_config(cfg)
    device = _device_name(cfg)
    staging = _prepare_output(output, cfg.overwrite)
    try:
        set_seed(cfg.seed)
        tokenizer = AutoTokenizer.from_pretrained(resolve_backbone_path(cfg.backbone))
        model = AdaptableAdapterModel.from_backbone(cfg.backbone, adapter_config, task=spec.to_dict())
        if cfg.recipe in FIXED_LAYER_RECIPES and cfg.selection_from is not None and cfg.selected_layers is None:
            check_selection_backbone(cfg.selection_from, model)  # before any training step
        train_set = TokenizedDataset(train_examples, spec, tokenizer, cfg.max_length)
        dev_set = TokenizedDataset(dev_examples, spec, tokenizer, cfg.max_length)
        test_set = TokenizedDataset(data.test, spec, tokenizer, cfg.max_length) if data.test else None

        def compute_metrics(prediction: Any) -> dict[str, float]:
            logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            return task_metrics(spec, np.asarray(logits), np.asarray(prediction.label_ids))

        schedule = schedule_named(cfg.protocol)
        if schedule.head_bias_from_labels and spec.is_regression:
            start_regression_head_at_mean(model, [float(e.label) for e in train_examples])
        steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
        epochs = epochs_for(cfg.epochs, cfg.min_steps, steps_per_epoch)  # type: ignore[arg-type]
        best = BestEpochCallback(model, spec.metric, staging / "checkpoints" if cfg.save_checkpoints else None)
        callbacks: list[Any] = [best]
        if cfg.switch_temperature_final is not None:
            callbacks.append(SwitchAnnealingCallback(model, cfg.switch_temperature, cfg.switch_temperature_final))
        args = TrainingArguments(
            output_dir=str(staging / "trainer"),
            num_train_epochs=epochs,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.eval_batch_size,
            learning_rate=cfg.learning_rate,
            weight_decay=0.0,
            lr_scheduler_type="linear",
            warmup_steps=math.ceil(cfg.warmup_ratio * epochs * steps_per_epoch),  # type: ignore[operator]
            max_grad_norm=cfg.max_grad_norm,
            eval_strategy="epoch",
            save_strategy="no",
            logging_strategy="epoch",
            seed=cfg.seed,
            data_seed=cfg.seed,
            report_to=[],
            disable_tqdm=not cfg.progress,
            use_cpu=device == "cpu",
            dataloader_num_workers=0,
            remove_unused_columns=False,
            label_names=["labels"],
        )
        trainer = AdapterTrainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=dev_set,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            learning_rates=(cfg.learning_rate, cfg.switch_learning_rate, cfg.rational_learning_rate),
            layer_cost=cfg.layer_cost,
        )
        use_epoch_progress(trainer, spec.metric, enabled=cfg.progress)
        train_output = trainer.train()
        best.active = False
        if best.best_state is not None:
            model.load_trainable_state_dict(best.best_state)
        model.eval()
        dev_metrics = trainer.evaluate(dev_set, metric_key_prefix="dev")
        test_metrics = trainer.evaluate(test_set, metric_key_prefix="test") if test_set is not None else {}
        shutil.rmtree(staging / "trainer", ignore_errors=True)

        model.save_pretrained(staging)
        selection = model.selection()
        atomic_write_json(staging / SELECTION_NAME, selection)
        atomic_write_json(staging / TRAINING_CONFIG_NAME, cfg.to_dict())
        value = float(dev_metrics[f"dev_{spec.metric}"])
        test_value = float(test_metrics[f"test_{spec.metric}"]) if test_metrics else None
        metrics = RunMetrics(
            task=spec.name,
            recipe=cfg.recipe,
            metric=spec.metric,
            value=value,
            test_value=test_value,
            best_epoch=best.best_epoch,
            dev=split_metrics(dev_metrics, "dev"),
            test=split_metrics(test_metrics, "test"),
            history=best.history,
            selected_layers=selection[KEPT_LAYERS_KEY],
            layers_kept=len(selection[KEPT_LAYERS_KEY]),
            num_layers=selection["num_layers"],
            train_size=cfg.train_size,
            train_examples=len(train_examples),
            dev_examples=len(dev_examples),
            test_examples=len(data.test) if data.test else 0,
            seed=cfg.seed,
            trained_params=model.num_trainable_parameters(),
            adapter_params=model.num_trainable_parameters(include_head=False),
            adapter_bytes=(staging / WEIGHTS_NAME).stat().st_size,
            train_loss=float(train_output.training_loss),
            protocol=cfg.protocol,
            epochs_run=epochs,
            optimizer_steps=int(train_output.global_step),
            layer_budget=cfg.max_layers,
            savings=measure_layer_savings(model, tokenizer, device).to_dict(),
            wall_time_s=round(time.time() - started, 2),
            device=device,
            torch=torch.__version__,
            host=platform.node(),
        )
        atomic_write_json(staging / METRICS_NAME, metrics.to_dict())
        plot_model(
            staging / PICTURE_NAME, model, title=f"{spec.name} · {cfg.recipe} · {spec.metric}={value:.3f} (dev split)"
        )
        replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RunResult(output, spec.metric, value, test_value, selection[KEPT_LAYERS_KEY], metrics.to_dict())
