"""benchmarks/peers.py end to end on the tiny fixture exports: ``aa-deploy serve`` and the hand-rolled
server (benchmarks/handrolled_server.py) as real subprocesses on 127.0.0.1, a short quick run, the JSON
it writes and the prediction check. No peer environments needed; no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serving_helpers import load_benchmark


@pytest.mark.parametrize("interleave", [False, True], ids=["one-at-a-time", "interleaved"])
def test_peers_quick_run_writes_json_and_predictions_agree(
    interleave: bool, serving_exports: dict[str, Path], tmp_path: Path
) -> None:
    peers = load_benchmark("peers.py")
    output = tmp_path / "peers.json"
    config = peers.BenchConfig.quick(
        servers=["ours", "handrolled"],
        task_counts=[1, 3],  # 3 > the 2 exports given: the third task is a hard-linked copy under its own name
        concurrencies=[1, 4],
        threads=1,
        rounds=2 if interleave else 1,
        interleave=interleave,
        seconds=0.5,
        warmup_s=0.2,
        exports=[str(serving_exports["sst"]), str(serving_exports["topic"])],
        workdir=str(tmp_path / "work"),
        output=str(output),
    )
    result = peers.run_benchmark(config)
    written = json.loads(output.read_text())
    assert written == json.loads(json.dumps(result))
    assert written["config"]["servers"] == ["ours", "handrolled"] and written["skipped"] == {}
    assert set(written["servers"]) == {"ours", "handrolled"}
    runs = {(r["server"], r["tasks"]): r for r in written["runs"]}
    assert set(runs) == {("ours", 1), ("handrolled", 1), ("ours", 3), ("handrolled", 3)}, written["runs"]
    for (server, tasks), run in runs.items():
        assert "error" not in run, run
        assert run["rss_loaded_mib"] > 0 and run["rss_peak_mib"] > 0 and run["startup_s"] > 0
        expected = {("single", 1), ("single", 4)} | ({("mixed", 1), ("mixed", 4)} if tasks > 1 else set())
        assert {(s["traffic"], s["concurrency"]) for s in run["scenarios"]} == expected
        for s in run["scenarios"]:
            assert s["errors"] == 0 and s["requests"] > 0 and s["rps"] > 0
            assert 0 < s["p50_ms"] <= s["p99_ms"] and len(s["rounds_rps"]) == config.rounds
        if server == "ours":
            assert run["predictions"] is None  # ours is the reference
        else:
            check = run["predictions"]
            assert check["ok"] and check["labels_equal"] == check["texts"] == tasks * peers.CHECK_TEXTS, check
            assert check["max_abs_diff"] <= check["tolerance"] == 1e-3
    assert (tmp_path / "work" / "copies" / "shared" / "sst_2" / "aa_export.json").is_file()
    report = peers.table(written)
    assert "| 3 | mixed | 4 |" in report and "ours / handrolled" in report
    assert [r["server"] for r in written["runs"]] == ["ours", "handrolled"] * 2  # ours first: the reference


def test_peers_rejects_pair_tasks_and_unmatched_standalone_lists(
    serving_exports: dict[str, Path], tmp_path: Path
) -> None:
    peers = load_benchmark("peers.py")
    with pytest.raises(SystemExit, match="single-text classification"):
        peers.base_tasks(peers.BenchConfig(exports=[str(serving_exports["rte"])], workdir=str(tmp_path)))
    with pytest.raises(SystemExit, match="one folder per --exports folder"):
        peers.base_tasks(
            peers.BenchConfig(
                exports=[str(serving_exports["sst"]), str(serving_exports["topic"])],
                standalone_exports=[str(serving_exports["sst_standalone"])],
                workdir=str(tmp_path),
            )
        )
    # A standalone export paired with a shared one is served under the shared one's (the task's) name.
    (task,) = peers.base_tasks(
        peers.BenchConfig(
            exports=[str(serving_exports["sst"])],
            standalone_exports=[str(serving_exports["sst_standalone"])],
            workdir=str(tmp_path),
        )
    )
    assert task.name == "sst" and task.standalone is not None and task.standalone.name == "sst"
    manifest = json.loads((serving_exports["sst"] / "aa_export.json").read_text())
    assert task.labels == tuple(manifest["task"]["label_names"])
