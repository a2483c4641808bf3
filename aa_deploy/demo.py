"""``aa-deploy demo``: the main job end to end on the built-in demo data.

train (search recipe, default MiniLM backbone) → export (pruned, folded, validated ONNX) → serve (HTTP on
127.0.0.1) → one real request, printed. Every step runs the same CLI a user would type, in a subprocess,
so the demo exercises exactly the user-facing contracts.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .contract.layout import MANIFEST_NAME, METRICS_NAME
from .serving.ports import free_port

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
EXAMPLES = ["what a superb film , the cast is wonderful .", "i found the script tedious and left early ."]


def _step(title: str, cmd: list[str]) -> None:
    print(f"\n=== {title}\n$ {shlex.join(cmd)}", flush=True)
    started = time.time()
    subprocess.run(cmd, check=True)
    print(f"--- {title}: done in {time.time() - started:.1f} s", flush=True)


def _http(method: str, url: str, body: dict | None = None, timeout: float = 30.0) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def _wait_ready(base: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited early with code {server.returncode}")
        try:
            urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2).read()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"the server did not become ready within {timeout:.0f} s")


def run_demo(output: Path, epochs: int, backbone: str | None) -> int:
    from .extras import require_modules

    # Each step runs in a subprocess: check every step's libraries first, so a partial install fails
    # with one message naming the extra instead of half-way through the demo.
    require_modules("torch", "transformers", "onnx", "onnxruntime", "fastapi", "uvicorn")
    exe = [sys.executable, "-m", "aa_deploy.cli"]
    run_dir, export_dir = output / "run", output / "export" / "sentiment"
    train_cmd = [
        *exe,
        "train",
        "--task",
        str(DEMO_DATA / "sentiment_train.csv"),
        "--test-file",
        str(DEMO_DATA / "sentiment_test.csv"),
        "--recipe",
        "search",
        "--epochs",
        str(epochs),
        "--batch-size",
        "16",
        "--output",
        str(run_dir),
        "--overwrite",
        "--no-progress",
    ]
    if backbone:
        train_cmd += ["--backbone", backbone]
    _step("1/4 train adaptable adapters (search recipe)", train_cmd)
    metrics = json.loads((run_dir / METRICS_NAME).read_text())
    _step(
        "2/4 compile: prune, fold, export ONNX, validate",
        [*exe, "export", str(run_dir), "--output", str(export_dir), "--task-name", "sentiment", "--overwrite"],
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_cmd = [*exe, "serve", "--task", f"sentiment={export_dir}", "--port", str(port)]
    print(f"\n=== 3/4 serve\n$ {shlex.join(serve_cmd)}", flush=True)
    server = subprocess.Popen(serve_cmd)
    try:
        _wait_ready(base, server)
        print(f"\n=== 4/4 one real request (Open Inference Protocol v2) to {base}", flush=True)
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(EXAMPLES)], "data": EXAMPLES}]}
        answer = _http("POST", f"{base}/v2/models/sentiment/infer", body)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    outputs = {o["name"]: o for o in answer["outputs"]}
    labels = outputs["label"]["data"]
    print("\nPredictions:")
    for text, label in zip(EXAMPLES, labels, strict=True):
        print(f"  {label:>9}  ←  {text}")
    manifest = json.loads((export_dir / MANIFEST_NAME).read_text())
    sizes = manifest.get("sizes", {})
    print(
        f"\nSummary: test {metrics['metric']} {metrics['test_value']:.3f}; kept layers {metrics['selected_layers']} "
        f"of {metrics['num_layers']}; task file {sizes.get('task_bytes', 0) / 1024:.0f} KiB beside a shared backbone "
        f"of {sizes.get('backbone_bytes', 0) / 2**20:.1f} MiB; everything is in {output}/"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train → export → serve → one request, on the built-in demo data")
    p.add_argument(
        "--output",
        type=Path,
        default=Path("demo-output"),
        help="folder for the run, the export and the logs (default: demo-output)",
    )
    p.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    p.add_argument("--backbone", help="backbone folder or id (default: all-MiniLM-L6-v2)")
    p.set_defaults(handler=lambda args: run_demo(args.output, args.epochs, args.backbone))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["demo", *sys.argv[1:]])
    raise SystemExit(ns.handler(ns))
