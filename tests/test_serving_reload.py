"""Hot reload under load on the real server: mixed traffic from several threads over several tasks,
one of them broken at run time, while a task is replaced again and again (another folder, back, the same
folder, refused replaces) and another is loaded and unloaded. Tasks that stay loaded never fail a
request, and the listing is consistent after every step (docs/SERVING.md, "Reliability")."""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from serving_helpers import BREAKING_TEXT, PAIRS, TEXTS, TOKEN, Reference, break_at_length, logits_of, predict

from aa_deploy.serving.config import ServerConfig, TaskSpec
from aa_deploy.serving.server import BackgroundServer

ROUNDS = 3


def _listing(admin: httpx.Client) -> tuple[list[str], dict[str, str], list[str]]:
    tasks = admin.get("/v1/tasks").json()
    ready = admin.get("/ready").json()
    return [t["name"] for t in tasks["tasks"]], tasks["failed"], ready["tasks"]


def test_hot_reload_under_mixed_load_with_a_broken_task_fails_no_healthy_request(
    serving_exports: dict[str, Path], references: dict[str, Reference], tmp_path: Path
) -> None:
    broken = break_at_length(Path(shutil.copytree(serving_exports["sst"], tmp_path / "broken")))
    invalid = Path(shutil.copytree(serving_exports["late"], tmp_path / "invalid"))
    manifest = json.loads((invalid / "aa_export.json").read_text())
    manifest["max_length"] = 10_000  # beyond the backbone's positions
    (invalid / "aa_export.json").write_text(json.dumps(manifest))
    config = ServerConfig(
        port=0,
        intra_op_threads=1,
        max_batch_size=8,
        max_delay_ms=3,
        token=TOKEN,
        tasks=[
            TaskSpec("sst", str(serving_exports["sst"])),
            TaskSpec("rte", str(serving_exports["rte"])),
            TaskSpec("swap", str(serving_exports["sst"])),
            TaskSpec("broken", str(broken)),
        ],
    )
    texts, pairs = TEXTS[:3], PAIRS[:3]
    expected = {"sst": references["sst"].logits(texts), "rte": references["rte"].logits(texts, pairs)}
    stop = threading.Event()
    sent: Counter[str] = Counter()
    failures: list[str] = []

    def record(kind: str, response: httpx.Response, allowed: tuple[int, ...] = (200,)) -> bool:
        sent[kind] += 1
        if response.status_code not in allowed:
            failures.append(f"{kind}: {response.status_code} {response.text[:200]}")
            return False
        return response.status_code == 200

    def traffic(seed: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            turn = seed
            while not stop.is_set():
                turn += 1
                kind = ("sst", "rte", "multi", "swap")[turn % 4]
                if kind == "rte":
                    r = predict(c, "rte", texts, pairs)
                    if record(kind, r):
                        np.testing.assert_allclose(logits_of(r.json()["predictions"]), expected["rte"], atol=1e-4)
                elif kind == "multi":  # rows that also trip the broken task's graph, for healthy tasks
                    r = c.post("/v1/predict", json={"tasks": ["sst", "swap"], "texts": [BREAKING_TEXT, *texts]})
                    record(kind, r)
                else:
                    r = predict(c, kind, texts)
                    if record(kind, r) and kind == "sst":
                        np.testing.assert_allclose(logits_of(r.json()["predictions"]), expected["sst"], atol=1e-4)

    def broken_traffic() -> None:  # the broken task: 500 on the rows that trip it, 200 on the others
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            while not stop.is_set():
                record("broken-trip", predict(c, "broken", [BREAKING_TEXT]), allowed=(500,))
                record("broken-fine", predict(c, "broken", ["fine"]))

    def churn() -> None:  # the task being loaded and unloaded: 200 or 404
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            while not stop.is_set():
                record("hot", predict(c, "hot", ["hello there"]), allowed=(200, 404))

    steps = 0
    with (
        BackgroundServer(config) as srv,
        httpx.Client(base_url=srv.url, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as admin,
    ):
        threads = [threading.Thread(target=traffic, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=broken_traffic), threading.Thread(target=churn)]
        for t in threads:
            t.start()
        try:
            loaded = ["broken", "rte", "sst", "swap"]
            for _ in range(ROUNDS):
                for source in ("late", "sst", "sst"):  # another folder, back, the same folder again
                    r = admin.put("/v1/tasks/swap", json={"source": str(serving_exports[source]), "replace": True})
                    assert r.status_code == 201, r.text
                    assert _listing(admin) == (loaded, {}, loaded)
                    steps += 1
                for source, code in ((tmp_path / "missing", "task_load_failed"), (invalid, "invalid_export")):
                    r = admin.put("/v1/tasks/swap", json={"source": str(source), "replace": True})
                    assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
                    names, failed, ready = _listing(admin)
                    assert names == ready == loaded and list(failed) == ["swap"]
                    assert str(tmp_path) not in failed["swap"]
                    steps += 1
                r = admin.put("/v1/tasks/hot", json={"source": str(serving_exports["topic"])})
                assert r.status_code == 201, r.text
                assert _listing(admin)[0] == sorted([*loaded, "hot"])
                r = admin.delete("/v1/tasks/hot")
                assert r.status_code == 200 and r.json()["tasks"] == loaded
                assert _listing(admin)[0] == loaded
                steps += 2
        finally:
            stop.set()
            for t in threads:
                t.join()
        # Unload forgets the task's metric series (a last load/unload after the traffic stopped).
        assert admin.put("/v1/tasks/hot", json={"source": str(serving_exports["topic"])}).status_code == 201
        assert predict(admin, "hot", ["x"]).status_code == 200
        assert 'task="hot"' in admin.get("/metrics").text
        assert admin.delete("/v1/tasks/hot").status_code == 200
        assert 'task="hot"' not in admin.get("/metrics").text
    total = sum(sent.values())
    print(f"\nhot reload under load: {steps} registry steps, {total} requests, {len(failures)} failed: {dict(sent)}")
    assert not failures, failures[:5]
    assert min(sent[k] for k in ("sst", "rte", "multi", "swap", "broken-trip", "broken-fine")) > 0
