"""How long a 1-text request of one task waits behind a 512-row request of another (docs/SERVING.md,
"Reliability").

    python benchmarks/fair_scheduling.py [--workdir /tmp/aa_serving_bench] [--fixtures] [--repeats 3]

The batcher (no HTTP) on two tasks of one backbone, ``max_batch_size`` 16 and ``max_queue_rows`` 512 (the
defaults): a request of 256 texts for both tasks (512 rows, the most the queue admits) is queued, 5 ms
later a 1-text request for a third task arrives. Measured: the small request's wait (enqueue to answer)
and the large request's total time, median of ``--repeats`` rounds, for

* ``before``: whole requests, first come first served (the batcher without splitting: what the server
  did before this change, when a large request formed one batch that the small one waited behind);
* ``after``: large requests split into parts of at most ``max_batch_size`` texts, taken round robin.

Tasks: the MiniLM exports of ``benchmarks/serving_bench.py`` (cached in ``--workdir``; building them needs
torch), or with ``--fixtures`` the tiny test exports. Prints a table and writes
benchmarks/results/fair_scheduling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "fair_scheduling.json"
TEXTS = [
    "the service was quick and the food was excellent",
    "a bleak , joyless slog that never finds its footing",
    "it rained all day so we stayed in and read a long book about the history of the sea and its ships",
    "great",
]


def exports(args: argparse.Namespace) -> dict[str, Path]:
    if args.fixtures:
        root = REPO / "tests" / "fixtures" / "serving_exports"
        return {"a": root / "sst", "b": root / "late", "small": root / "topic"}
    sys.path.insert(0, str(REPO / "benchmarks"))
    from serving_bench import build_exports

    built = build_exports(Path(args.workdir))
    return {"a": built["sst"], "b": built["late"], "small": built["mid"]}


async def one_round(registry: Any, config: Any, large_texts: list[str]) -> tuple[float, float]:
    from aa_deploy.serving.batcher import DynamicBatcher
    from aa_deploy.serving.engine import WorkItem

    batcher = DynamicBatcher(config)
    await batcher.start()
    view = registry.view
    a, b, small = view.get("a"), view.get("b"), view.get("small")
    started = time.perf_counter()
    large = batcher.enqueue(WorkItem(a.artifact.tokenizer.encode(large_texts), (a.target, b.target)))
    await asyncio.sleep(0.005)
    small_started = time.perf_counter()
    await batcher.submit(WorkItem(small.artifact.tokenizer.encode(["is this one served soon?"]), (small.target,)))
    small_wait = time.perf_counter() - small_started
    await large
    large_total = time.perf_counter() - started
    await batcher.stop()
    return small_wait, large_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/aa_serving_bench")
    parser.add_argument("--fixtures", action="store_true", help="the tiny test exports instead of MiniLM")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from aa_deploy.serving import batcher as batcher_module
    from aa_deploy.serving.config import ServerConfig
    from aa_deploy.serving.registry import TaskRegistry

    config = ServerConfig(intra_op_threads=args.threads, max_batch_size=16, max_queue_rows=512, max_delay_ms=5)
    registry = TaskRegistry(config)
    for name, folder in exports(args).items():
        registry.load(name, str(folder))
    large_texts = [TEXTS[i % len(TEXTS)] for i in range(256)]  # x 2 tasks = 512 rows
    asyncio.run(one_round(registry, config, large_texts[:32]))  # warm-up
    split = batcher_module.split_item
    modes = {"before": lambda item, max_texts: [item], "after": split}
    rounds: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    for _ in range(args.repeats):  # interleaved, so both sides see the same machine load
        for mode, splitter in modes.items():
            batcher_module.split_item = splitter
            rounds[mode].append(asyncio.run(one_round(registry, config, large_texts)))
    batcher_module.split_item = split
    registry.close()

    result: dict[str, Any] = {
        "setup": {
            "tasks": "fixtures (tiny BERT)" if args.fixtures else "MiniLM",
            "large_request_rows": 512,
            "small_request_rows": 1,
            "max_batch_size": 16,
            "max_queue_rows": 512,
            "intra_op_threads": args.threads,
            "repeats": args.repeats,
        }
    }
    print(f"\n| scheduling | small request wait (ms) | large request total (ms) |  ({result['setup']['tasks']})")
    print("|---|---|---|")
    for mode, values in rounds.items():
        wait = statistics.median(v[0] for v in values) * 1000
        total = statistics.median(v[1] for v in values) * 1000
        result[mode] = {"small_wait_ms": round(wait, 1), "large_total_ms": round(total, 1), "rounds": values}
        print(f"| {mode} | {wait:.1f} | {total:.1f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
