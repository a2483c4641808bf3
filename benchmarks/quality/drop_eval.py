"""AdapterDrop at test time: score a finished ``adapterdrop`` run with its lowest layers' adapters dropped.

    python benchmarks/quality/drop_eval.py --run RUN_FOLDER --drop N --output OUT_FOLDER [--glue-dir DIR]

AdapterDrop's promise is one model for every depth: train once with random drops of the lowest layers,
then choose at deployment how many layers go without adapters. The layer-budget curve compares that
choice with the budgeted search at the same number of kept layers, so each of its points is this
evaluation of one trained run, not a new training. It scores the run exactly as ``aa-deploy train``
scored it (the same dev split of the same seed, the official dev set as the test set, the same metric)
and writes ``metrics.json`` and ``training_config.json`` into ``OUT_FOLDER`` in the run folder's format,
so that the grid reads an evaluation like any other cell. With ``--drop 0`` it reproduces the run's own
scores (a test checks this).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def predict(model: Any, dataset: Any, tokenizer: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of ``dataset`` in its order (padding per batch, as the Trainer's collator does)."""
    import torch
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    logits, labels = [], []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            labels.append(batch.pop("labels").numpy())
            logits.append(model(**batch).logits.float().numpy())
    return np.concatenate(logits), np.concatenate(labels)


def evaluate_dropped(run: Path, drop: int, glue_dir: str | None = None) -> dict[str, Any]:
    """The run's metrics with the adapters of the lowest ``drop`` layers removed at test time."""
    from transformers import AutoTokenizer

    from aa_deploy.backbones import resolve_backbone_path
    from aa_deploy.contract.layout import METRICS_NAME, TRAINING_CONFIG_NAME
    from aa_deploy.contract.rules import adapterdrop_keeps_layer
    from aa_deploy.data import load_task, low_data_split
    from aa_deploy.metrics import task_metrics
    from aa_deploy.modeling import AdaptableAdapterModel
    from aa_deploy.training.config import TrainConfig
    from aa_deploy.training.datasets import TokenizedDataset

    cfg = TrainConfig.load(run / TRAINING_CONFIG_NAME)
    if cfg.recipe != "adapterdrop":
        raise ValueError(
            f"{run} is a {cfg.recipe!r} run: only adapterdrop runs were trained to run with layers dropped"
        )
    model = AdaptableAdapterModel.from_pretrained(run)
    num_layers = int(model.config.num_hidden_layers)
    if not 0 <= drop < num_layers:
        raise ValueError(f"--drop must be between 0 and {num_layers - 1} (the backbone has {num_layers} layers)")
    model.config.adapterdrop_eval_layers = drop
    model.eval()
    data = load_task(cfg.task, glue_dir or cfg.data_dir, test_file=cfg.test_file)
    _, dev_examples = low_data_split(data.train, cfg.train_size, cfg.seed, cfg.dev_fraction)
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone_path(cfg.backbone))
    spec = data.spec

    def score(examples: list) -> float:
        dataset = TokenizedDataset(examples, spec, tokenizer, cfg.max_length)
        logits, labels = predict(model, dataset, tokenizer, cfg.eval_batch_size)
        return float(task_metrics(spec, logits, labels)[spec.metric])

    metrics = json.loads((run / METRICS_NAME).read_text())
    kept = [i for i in range(num_layers) if adapterdrop_keeps_layer(i, drop)]
    per_layer = sum(p.numel() for p in model.adapter_layers[str(kept[0])].parameters())
    head = int(metrics["trained_params"]) - int(metrics["adapter_params"])
    metrics.update(
        value=score(dev_examples),
        test_value=score(data.test) if data.test else None,
        selected_layers=kept,
        layers_kept=len(kept),
        adapter_params=per_layer * len(kept),
        trained_params=per_layer * len(kept) + head,
        adapter_bytes=None,  # one file holds every layer: the compiled artefact of K layers is not written here
        savings=None,
        adapterdrop_eval_layers=drop,
        evaluated_from=str(run),
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    from aa_deploy.cli_options import glue_dir_from_env
    from aa_deploy.contract.layout import METRICS_NAME, TRAINING_CONFIG_NAME
    from aa_deploy.fileio import atomic_write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished `aa-deploy train --recipe adapterdrop` run")
    parser.add_argument("--drop", type=int, required=True, help="lowest layers without adapters at test time")
    parser.add_argument("--output", type=Path, required=True, help="folder for metrics.json and training_config.json")
    parser.add_argument("--glue-dir", default=glue_dir_from_env(), help="default: the run's data folder")
    args = parser.parse_args(argv)
    metrics = evaluate_dropped(args.run, args.drop, args.glue_dir)
    config = json.loads((args.run / TRAINING_CONFIG_NAME).read_text())
    config["adapterdrop_eval_layers"] = args.drop
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output / TRAINING_CONFIG_NAME, config)
    atomic_write_json(args.output / METRICS_NAME, metrics)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
