"""Can the task head's input separate the classes at all? A linear probe on the frozen backbone.

    python benchmarks/quality/pooling_probe.py --glue-dir ../shared/data/glue            # 5 tasks, N = 1000
    python benchmarks/quality/pooling_probe.py --tasks mrpc,cola --sizes 1000,full --seeds 42

Why: on MiniLM-L6 at N = 1000 the grid leaves MRPC at the majority F1, CoLA a few MCC points above 0 and
RTE (at N = 300) at chance, for every recipe, while SST-2 and STS-B learn. The head reads BERT's pooler
(tanh of a dense layer over the [CLS] vector, frozen with the backbone), and all-MiniLM-L6-v2 was trained
as a *mean-pooled* sentence encoder: its pooler was never trained for anything downstream. If the pooled
vector carries little of what pair tasks need, no adapter schedule will fix that, and the head should
read another vector. This script measures that directly, without adapters: it fits a linear probe
(logistic regression, or ridge regression for STS-B) on frozen vectors of the same low-data split
the grid uses (75 % to fit, 25 % to pick the L2 strength) and scores it on the official dev set, the
grid's test set:

- ``pooler``: what the head reads today (``pooler_output``);
- ``cls``: the last layer's [CLS] vector, before the pooler;
- ``mean``: the last layer's token vectors averaged over the attention mask (the backbone's own pooling);
- ``siamese`` (pair tasks only): each sentence encoded *on its own*, mean-pooled to u and v, and the probe
  reads (u, v, |u - v|, u * v), the way sentence-transformers compares two sentences. Not what our head
  can read (the model sees the pair as one input), but it shows whether the backbone knows the answer
  when it is used as it was trained.

A probe is a lower bound on what a trained head and adapters can reach, and a fair comparison between
vectors: same examples, same probe, same selection rule. It prints a table and writes JSON
(``benchmarks/results/pooling_probe.json``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from machine_info import describe_machine  # noqa: E402

sys.path.insert(0, str(HERE))
from grid import add_glue_dir_option  # noqa: E402

from aa_deploy.backbones import resolve_backbone_path  # noqa: E402
from aa_deploy.data import Example, TaskDefinition, load_task, low_data_split  # noqa: E402
from aa_deploy.fileio import atomic_write_json  # noqa: E402
from aa_deploy.metrics import task_metrics  # noqa: E402

VECTORS = ("pooler", "cls", "mean", "siamese")
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
RESULTS = REPO / "benchmarks" / "results" / "pooling_probe.json"


@dataclass
class ProbeConfig:
    """What a run depends on; written into the JSON so that a result says how it was made."""

    glue_dir: str
    tasks: list[str]
    sizes: list[int | None]
    seeds: list[int]
    backbone: str | None = None
    max_length: int = 128
    batch_size: int = 64
    threads: int = 1


def encode(texts: list[Example], backbone: str, max_length: int, batch_size: int) -> dict[str, np.ndarray]:
    """The frozen vectors of every example (one forward pass per batch, no gradients)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = AutoModel.from_pretrained(backbone).eval()
    vectors = _joint_vectors(texts, tokenizer, model, max_length, batch_size)
    if all(e.text_pair is not None for e in texts):
        singles = [Example(text, None, 0) for e in texts for text in (e.text, e.text_pair or "")]
        pooled = _joint_vectors(singles, tokenizer, model, max_length, batch_size)["mean"]
        u, v = pooled[0::2], pooled[1::2]
        vectors["siamese"] = np.hstack([u, v, np.abs(u - v), u * v])
    return vectors


def _joint_vectors(
    texts: list[Example], tokenizer: Any, model: Any, max_length: int, batch_size: int
) -> dict[str, np.ndarray]:
    """pooler, cls and mean of each example, its two texts (if any) encoded together as the head sees them."""
    import torch

    out: dict[str, list[np.ndarray]] = {name: [] for name in ("pooler", "cls", "mean")}
    # Longest first: batches of similar length waste less padding.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i].text) - len(texts[i].text_pair or ""))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = [texts[i] for i in order[start : start + batch_size]]
            pairs = [e.text_pair for e in chunk]
            batch = tokenizer(
                [e.text for e in chunk],
                pairs if all(p is not None for p in pairs) else None,
                truncation=True, max_length=max_length, padding=True, return_tensors="pt",
            )  # fmt: skip
            output = model(**batch)
            hidden = output.last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out["pooler"].append(output.pooler_output.numpy())
            out["cls"].append(hidden[:, 0].numpy())
            out["mean"].append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    inverse = np.argsort(np.asarray(order))
    return {name: np.concatenate(parts)[inverse] for name, parts in out.items()}


def _standardise(fit: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = fit.mean(0), fit.std(0) + 1e-6
    return [(x - mean) / std for x in (fit, *others)]


def fit_probe(features: np.ndarray, labels: np.ndarray, spec: TaskDefinition, l2: float) -> np.ndarray:
    """Weights (with a bias row) of a ridge or an L2-regularised multinomial logistic regression."""
    import torch

    x = _with_bias(features)
    if spec.is_regression:
        gram = x.T @ x + l2 * len(x) * np.eye(x.shape[1])
        gram[-1, -1] -= l2 * len(x)  # the bias is not penalised
        return np.linalg.solve(gram, x.T @ labels.astype(x.dtype))[:, None]
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))
    weights = torch.zeros(x.shape[1], spec.num_labels, dtype=xt.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ weights, yt) + l2 * weights[:-1].pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return weights.detach().numpy()


def _with_bias(features: np.ndarray) -> np.ndarray:
    return np.hstack([features, np.ones((len(features), 1), dtype=features.dtype)])


def predict(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return _with_bias(features) @ weights


def probe_cell(
    spec: TaskDefinition, train: np.ndarray, y_train: np.ndarray, dev: np.ndarray, y_dev: np.ndarray,
    test: np.ndarray, y_test: np.ndarray,
) -> dict[str, Any]:  # fmt: skip
    """Pick the L2 strength on the training-side dev split (never on the test set), then score the test set."""
    train, dev, test = _standardise(train, dev, test)
    picked, best, by_l2 = L2_GRID[0], -np.inf, {}
    for l2 in L2_GRID:
        score = task_metrics(spec, predict(dev, fit_probe(train, y_train, spec, l2)), y_dev)[spec.metric]
        by_l2[str(l2)] = float(score)
        if score > best:
            picked, best = l2, score
    weights = fit_probe(np.vstack([train, dev]), np.concatenate([y_train, y_dev]), spec, picked)
    metrics = task_metrics(spec, predict(test, weights), y_test)
    return {
        "l2": picked,
        "dev_score": float(best),
        "dev_by_l2": by_l2,
        "test": {k: float(v) for k, v in metrics.items()},
    }


def run(config: ProbeConfig) -> dict[str, Any]:
    import torch

    torch.set_num_threads(config.threads)
    backbone = resolve_backbone_path(config.backbone)
    cells: list[dict[str, Any]] = []
    for task in config.tasks:
        data = load_task(task, config.glue_dir)
        if not data.test:
            raise SystemExit(f"{task}: no official dev set in {config.glue_dir} to score the probe on")
        splits = {
            (size, seed): low_data_split(data.train, size, seed) for size in config.sizes for seed in config.seeds
        }
        wanted: dict[Example, int] = {}
        for example in [e for fit, dev in splits.values() for e in (*fit, *dev)] + list(data.test):
            wanted.setdefault(example, len(wanted))
        started = time.perf_counter()
        examples = list(wanted)
        vectors = encode(examples, backbone, config.max_length, config.batch_size)
        print(f"{task}: {len(examples)} examples encoded in {time.perf_counter() - started:.0f} s", flush=True)

        def rows(part: list[Example], name: str, wanted=wanted, vectors=vectors) -> tuple[np.ndarray, np.ndarray]:
            index = [wanted[e] for e in part]
            return vectors[name][index], np.asarray([e.label for e in part])

        for (size, seed), (fit, dev) in splits.items():
            for name in vectors:
                cell = probe_cell(data.spec, *rows(fit, name), *rows(dev, name), *rows(list(data.test), name))
                cells.append(
                    {"task": task, "metric": data.spec.metric, "size": size, "seed": seed, "vector": name, **cell}
                )
    return {"config": asdict(config), "machine": describe_machine(), "cells": cells}


def scores_by_setting(result: dict[str, Any]) -> dict[tuple[str, int | None, str], dict[str, list[float]]]:
    """The test metric of every seed, grouped by (task, N, metric) and then by vector (run order kept);
    N is None for the full training set."""
    grouped: dict[tuple[str, int | None, str], dict[str, list[float]]] = {}
    for cell in result["cells"]:
        setting = (cell["task"], cell["size"], cell["metric"])
        grouped.setdefault(setting, {}).setdefault(cell["vector"], []).append(cell["test"][cell["metric"]])
    return grouped


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of the test metric × 100, one row per (task, N), one column per vector."""
    table = []
    for (task, size, metric), by_vector in scores_by_setting(result).items():
        row: dict[str, Any] = {"task": task, "N": size or "full", "metric": metric}
        for name in VECTORS:
            scores = [100 * value for value in by_vector.get(name, [])]
            row[name] = (
                (statistics.fmean(scores), statistics.stdev(scores) if len(scores) > 1 else 0.0) if scores else None
            )
        table.append(row)
    return table


def print_table(table: list[dict[str, Any]]) -> None:
    print(f"\n{'task':<6} {'N':>5} {'metric':<22}" + "".join(f"{name:>14}" for name in VECTORS))
    for row in table:
        cells = "".join(f"{row[n][0]:>8.1f} ± {row[n][1]:<3.1f}" if row[n] else f"{'–':>14}" for n in VECTORS)
        print(f"{row['task']:<6} {row['N']!s:>5} {row['metric']:<22}{cells}")


def _sizes(text: str) -> list[int | None]:
    return [None if part == "full" else int(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_glue_dir_option(parser)
    parser.add_argument("--tasks", default="mrpc,rte,cola,sst2,stsb")
    parser.add_argument("--sizes", default="1000", type=_sizes, help="comma-separated N, or 'full'")
    parser.add_argument("--seeds", default="42,92,111", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--backbone", help="backbone folder or id (default: all-MiniLM-L6-v2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    config = ProbeConfig(
        glue_dir=str(args.glue_dir), tasks=args.tasks.split(","), sizes=args.sizes, seeds=args.seeds,
        backbone=args.backbone, threads=args.threads,
    )  # fmt: skip
    result = run(config)
    result["summary"] = summary(result)
    print_table(result["summary"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, result)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
