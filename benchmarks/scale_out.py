"""Scale-out benchmark: the server as a Ray Serve application on a local two-node Ray cluster.

    python benchmarks/scale_out.py [--workdir /tmp/aa_serving_bench] [--seconds 8] [--rounds 3] [--concurrency 8]
                                   [--ingress proxy haproxy]

Measures, on the real MiniLM backbone (two exports made like benchmarks/serving_bench.py's, mixed sst/late
traffic of single SST-2 dev sentences, closed loop of ``--concurrency`` clients):

1. the direct server (``aa-deploy serve`` in a subprocess, 1 ONNX Runtime thread) against the same server
   behind Ray's HTTP ingress with 1 replica (1 CPU, 1 thread): what Ray's ingress costs. Two ingress
   modes: Ray Serve's default Python proxy, and HAProxy (Ray's ``RAY_SERVE_ENABLE_HA_PROXY=1``);
2. Ray Serve with 1 and with 2 replicas (each pinned to its own 1-CPU node by its CPU request).

Both sides of every comparison run interleaved in rounds (the machine is shared) and the medians are
reported; prints a table and writes benchmarks/results/scale_out.json.

Honest limits: this machine has 2 cores. The 2 replicas, Ray's proxy, the controller, and the load
generator all share them, so 2 replicas cannot show scaling here; on a cluster whose nodes each have
their own cores, replicas add throughput until the proxy (one per node) or the clients are the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from machine_info import describe_machine  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "scale_out.json"
TASKS = ("sst", "late")
# Ray's HTTP ingress: its Python proxy (default), or HAProxy routing to replicas that serve HTTP themselves
# (Ray's RAY_SERVE_ENABLE_HA_PROXY feature flag, read by the Serve controller: set when the cluster starts).
INGRESS_ENV = {"proxy": {}, "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"}}
INGRESS_NOTES = {
    "proxy": "Ray Serve's default Python HTTP proxy (an actor call per request)",
    "haproxy": "RAY_SERVE_ENABLE_HA_PROXY=1 at `ray start`: HAProxy forwards HTTP to the replicas",
}
SERVER_ARGS = {"max_batch_size": 16, "max_delay_ms": 2.0, "max_queue_rows": 4096, "intra_op_threads": 1}


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Status of one HTTP/1.1 response, body consumed (Content-Length or chunked: Ray's proxy may chunk)."""
    status = int((await reader.readline()).split()[1])
    length, chunked = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if not chunked:
        await reader.readexactly(length)
        return status
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return status


async def closed_loop(url: str, concurrency: int, seconds: float, texts: list[str]) -> dict[str, Any]:
    """``concurrency`` keep-alive clients on raw sockets (a client library would take CPU from the server)."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def client(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < stop_at:
                task = TASKS[rng.randrange(len(TASKS))]
                payload = json.dumps({"texts": [rng.choice(texts)]}).encode()
                head = (
                    f"POST /v1/tasks/{task}/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n"
                ).encode()
                started = time.perf_counter()
                writer.write(head + payload)
                await writer.drain()
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - started)
                errors += status != 200
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "rps": n / elapsed,
        "p50_ms": 1000 * latencies[n // 2] if n else None,
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else None,
    }


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rounds": len(rounds),
        "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "rps": round(statistics.median(r["rps"] for r in rounds), 1),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in rounds), 1),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in rounds), 1),
    }


def start_direct(exports: dict[str, Path], port: int) -> subprocess.Popen:
    from serving_bench import start_server

    return start_server({n: exports[n] for n in TASKS}, SERVER_ARGS["intra_op_threads"], port)


def ray_config(exports: dict[str, Path], replicas: int, port: int, path: Path) -> Path:
    from aa_deploy.serving.config import TaskSpec
    from aa_deploy.serving.ray_config import RayServeSpec

    spec = RayServeSpec(
        tasks=[TaskSpec(n, str(exports[n])) for n in TASKS], replicas=replicas, num_cpus=1.0,
        max_ongoing_requests=64, server=SERVER_ARGS, host="127.0.0.1", port=port, proxy_location="HeadOnly",
    )  # fmt: skip
    return spec.save(path)


def wait_replicas(url: str, replicas: int, timeout: float = 300) -> None:
    """Every replica answers (Serve reports RUNNING once replicas started; the first calls warm them)."""
    import httpx

    deadline = time.monotonic() + timeout
    ok = 0
    while ok < 10 * replicas:
        if time.monotonic() > deadline:
            raise TimeoutError("the Ray Serve replicas did not answer")
        try:
            status = httpx.post(f"{url}/v1/tasks/sst/predict", json={"texts": ["warm up"]}, timeout=30).status_code
        except httpx.TransportError:
            status = 0
        ok = ok + 1 if status == 200 else 0
        if status != 200:
            time.sleep(0.5)


def table(result: dict[str, Any]) -> str:
    lines = [
        f"## Scale-out on a local Ray cluster (2 nodes x 1 CPU on a {result['machine']['cpus']}-core machine), "
        f"MiniLM, concurrency {result['concurrency']}",
        "",
        "| setup | requests | errors | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["setups"].items():
        lines.append(
            f"| {name} | {row['requests']} | {row['errors']} | {row['rps']} | {row['p50_ms']} | {row['p99_ms']} |"
        )
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result["ratios"].items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/aa_serving_bench"))
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per measurement round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--ingress", nargs="+", choices=sorted(INGRESS_ENV), default=["proxy", "haproxy"], help="Ray ingress modes"
    )
    args = parser.parse_args()

    from serving_bench import build_exports, load_texts

    from aa_deploy.serving.ports import free_ports
    from aa_deploy.serving.ray_local import LocalRayCluster

    exports = build_exports(args.workdir)
    texts = load_texts()[0]
    direct_port, proxy_port = free_ports(2)
    direct_url, proxy_url = f"http://127.0.0.1:{direct_port}", f"http://127.0.0.1:{proxy_port}"

    def measure(url: str) -> dict[str, Any]:
        return asyncio.run(closed_loop(url, args.concurrency, args.seconds, texts))

    # Each phase measures the direct server and Ray's ingress in alternating rounds; ratios are paired per round.
    rounds: dict[str, list[dict[str, Any]]] = {}
    ratios: dict[str, float] = {}
    direct = start_direct(exports, direct_port)
    try:
        for ingress in args.ingress:
            env = INGRESS_ENV[ingress]
            with LocalRayCluster(nodes=2, cpus_per_node=1, env=env) as cluster:
                for replicas in (1, 2):
                    config = ray_config(exports, replicas, proxy_port, args.workdir / f"serve_{replicas}.yaml")
                    cluster.serve("deploy", str(config))
                    cluster.wait_running("aa-deploy", timeout=600)
                    wait_replicas(proxy_url, replicas)
                    measure(direct_url), measure(proxy_url)  # warm-up (arenas, connections)
                    name = f"ray {ingress}, {replicas} replica{'s' if replicas > 1 else ''}"
                    direct_rounds = rounds.setdefault(f"direct (next to {name})", [])
                    ray_rounds = rounds.setdefault(name, [])
                    for _ in range(args.rounds):
                        direct_rounds.append(measure(direct_url))
                        ray_rounds.append(measure(proxy_url))
                        print(f"{name}: direct {direct_rounds[-1]['rps']:.1f} req/s, "
                              f"ray {ray_rounds[-1]['rps']:.1f} req/s", flush=True)  # fmt: skip
                    # Median over rounds of ray/direct measured back to back (the machine's load drifts).
                    pairs = zip(ray_rounds, direct_rounds, strict=True)
                    ratios[f"{name} / direct"] = round(statistics.median(r["rps"] / d["rps"] for r, d in pairs), 2)
                cluster.serve("shutdown", "-y")
    finally:
        direct.terminate()
        direct.wait(30)

    result = {
        "machine": describe_machine(),
        "concurrency": args.concurrency,
        "seconds_per_round": args.seconds,
        "server": SERVER_ARGS,
        "tasks": list(TASKS),
        "ingress": {k: INGRESS_NOTES[k] for k in args.ingress},
        "setups": {name: median_of(r) for name, r in rounds.items()},
        "ratios": ratios,
        "note": "2 cores shared by both replicas, Ray's proxy and controller, and the clients: no scaling can show "
        "here; the ingress/direct ratio is the number that carries over to larger machines.",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwritten: {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
