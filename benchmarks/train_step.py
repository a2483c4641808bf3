"""Training step time and peak memory: search vs standard adapters vs full fine-tuning (MiniLM, batch 32).

    python benchmarks/train_step.py [--backbone PATH] [--seq-lens 64,128] [--steps 8] [--threads 2]

Each configuration runs in its own subprocess so that peak memory (ru_maxrss on CPU,
max_memory_allocated on CUDA) belongs to that configuration alone. Prints a table and writes
benchmarks/results/train_step.json. Ratios are relative to full fine-tuning measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import describe_machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"
CONFIGS = ("full", "standard", "search")


def worker(config: str, seq_len: int, batch: int, steps: int, warmup: int, backbone: str | None, device: str) -> dict:
    import torch

    from aa_deploy import AdaptableAdapterModel, AdapterConfig
    from aa_deploy.modeling import load_sequence_classifier
    from aa_deploy.training.trainer import parameter_groups

    torch.manual_seed(0)
    task = {"name": "bench", "metric": "accuracy", "label_names": ["a", "b"], "is_pair": False}
    if config == "full":
        model = load_sequence_classifier(backbone, task)
        for p in model.parameters():
            p.requires_grad = True
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-5)
    else:
        model = AdaptableAdapterModel.from_backbone(backbone, AdapterConfig(recipe=config), task=task)
        optimizer = torch.optim.Adam(parameter_groups(model, 1e-4, 0.05, 0.01))
    model.to(device).train()
    vocab = model.config.vocab_size if config == "full" else model.backbone.config.vocab_size
    ids = torch.randint(1000, vocab, (batch, seq_len), device=device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (batch,), device=device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "config": config,
        "seq_len": seq_len,
        "batch": batch,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "steps": steps,
        "trainable_params": trainable,
        "peak_bytes": peak,
        "device": device,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", help="backbone folder or id (default: all-MiniLM-L6-v2)")
    parser.add_argument("--seq-lens", default="64,128")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        config, seq = args.worker.split(":")
        print(json.dumps(worker(config, int(seq), args.batch, args.steps, args.warmup, args.backbone, args.device)))
        return 0
    rows = []
    for seq in [int(s) for s in args.seq_lens.split(",")]:
        for config in CONFIGS:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                f"{config}:{seq}",
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--threads",
                str(args.threads),
                "--device",
                args.device,
            ]
            if args.backbone:
                cmd += ["--backbone", args.backbone]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    for row in rows:
        full = next(r for r in rows if r["seq_len"] == row["seq_len"] and r["config"] == "full")
        row["time_vs_full"] = row["median_s"] / full["median_s"]
        row["memory_vs_full"] = row["peak_bytes"] / full["peak_bytes"]
    header = (
        f"{'seq':>4} {'config':>9} {'median step':>12} {'vs full':>8} {'peak mem':>10} {'vs full':>8} {'trainable':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['seq_len']:>4} {r['config']:>9} {r['median_s'] * 1000:>9.0f} ms {r['time_vs_full']:>7.2f}x "
            f"{r['peak_bytes'] / 2**20:>7.0f} MiB {r['memory_vs_full']:>7.2f}x {r['trainable_params']:>11,}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": describe_machine(),
        "threads": args.threads,
        "batch": args.batch,
        "device": args.device,
        "note": "peak memory on CPU is the worker process's max RSS (includes Python/torch)",
    }
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
