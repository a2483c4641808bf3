"""The server as a Ray Serve application: the Serve config (validated by Ray's own schema), task-set
convergence on a real registry, the refusal of per-replica task changes, and a real two-node Ray cluster
(``ray start`` head + worker on this machine) serving mixed-task traffic while a task is added and removed
through a config redeploy, every answer equal to the single-process server's."""

from __future__ import annotations

import importlib.util
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serving_helpers import PAIRS, TEXTS

from aa_deploy.serving.config import RAY_TASK_CHANGES_MESSAGE, ServerConfig, TaskSpec
from aa_deploy.serving.errors import TaskLoadError
from aa_deploy.serving.registry import TaskRegistry
from aa_deploy.serving.server import BackgroundServer
from aa_deploy.serving.task_set import TaskSetApplier, parse_task_set, plan_task_set

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed: pip install 'aa-deploy[ray]'"
)


# ------------------------------------------------------------------------------------------- Serve config
@needs_ray
def test_ray_config_cli_writes_a_serve_config_rays_schema_accepts(tmp_path: Path, serving_exports) -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from aa_deploy.cli import main

    out = tmp_path / "serve.yaml"
    args = ["ray-config", "--task", f"rte={serving_exports['rte']}", "--task", "sst2=org/sst2-adapter@v2"]
    assert main([*args, "--replicas", "2", "--num-cpus", "0.5", "--max-batch", "8", "--output", str(out)]) == 0
    schema = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    (app,) = schema.applications
    assert (app.name, app.route_prefix, app.import_path) == ("aa-deploy", "/", "aa_deploy.serving.ray_serve:build_app")
    assert app.args == {"max_batch_size": 8, "intra_op_threads": 1}
    (deployment,) = app.deployments
    assert deployment.name == "AdapterServer" and deployment.num_replicas == 2
    assert (deployment.ray_actor_options.num_cpus, deployment.ray_actor_options.num_gpus) == (0.5, 0.0)
    assert deployment.user_config == {"tasks": {"rte": str(serving_exports["rte"]), "sst2": "org/sst2-adapter@v2"}}
    assert parse_task_set(deployment.user_config) == [
        TaskSpec("rte", str(serving_exports["rte"])),
        TaskSpec("sst2", "org/sst2-adapter", "v2"),
    ]

    auto = tmp_path / "auto.yaml"
    assert main([*args, "--autoscale-min", "1", "--autoscale-max", "4", "--num-gpus", "1", "--output", str(auto)]) == 0
    (deployment,) = ServeDeploySchema.model_validate(yaml.safe_load(auto.read_text())).applications[0].deployments
    assert deployment.autoscaling_config["min_replicas"] == 1 and deployment.autoscaling_config["max_replicas"] == 4
    assert "num_replicas" not in deployment.model_fields_set
    assert deployment.ray_actor_options.num_gpus == 1.0


@needs_ray
def test_ray_app_builder_takes_server_config_from_args() -> None:
    from ray.serve.deployment import Application

    from aa_deploy.serving.ray_serve import build_app, server_config_from_args

    config = server_config_from_args({"engine": "sessions", "max_batch_size": 4})
    assert (config.engine, config.max_batch_size, config.deployment, config.tasks) == ("sessions", 4, "ray", [])
    assert isinstance(build_app({"engine": "multitask"}), Application)
    with pytest.raises(ValueError, match="user_config.tasks"):
        build_app({"tasks": [{"name": "rte", "source": "x"}]})
    with pytest.raises(ValueError, match="unknown server config keys"):
        build_app({"max_batch": 4})


def test_ray_config_refuses_what_the_serve_config_owns(tmp_path: Path) -> None:
    from aa_deploy.serving.ray_config import RayServeSpec

    with pytest.raises(ValueError, match="no tasks"):
        RayServeSpec(tasks=[])
    with pytest.raises(ValueError, match="Serve config owns"):
        RayServeSpec(tasks=[TaskSpec("a", "org/a")], server={"port": 9000})
    with pytest.raises(ValueError, match="unknown server config keys"):
        RayServeSpec(tasks=[TaskSpec("a", "org/a")], server={"batch": 9})


def test_ray_user_config_task_set_parsing() -> None:
    specs = parse_task_set({"tasks": {"a": "org/a@v1", "b": {"source": "/x/b", "revision": None}}})
    assert specs == [TaskSpec("a", "org/a", "v1"), TaskSpec("b", "/x/b")]
    assert parse_task_set(None) == [] and parse_task_set({"tasks": {}}) == []
    for bad, message in [
        ({"task": {}}, "unknown user_config keys"),
        ({"tasks": ["a"]}, "must map task names"),
        ({"tasks": {"a": 3}}, "expected an export folder"),
        ({"tasks": {"../a": "x"}}, "invalid task name"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_task_set(bad)
    plan = plan_task_set(
        {"a": TaskSpec("a", "org/a"), "b": TaskSpec("b", "org/b")}, [TaskSpec("a", "org/a", "v2"), TaskSpec("c", "x/c")]
    )
    assert [s.name for s in plan.add] == ["c"] and [s.name for s in plan.replace] == ["a"] and plan.remove == ("b",)


# ------------------------------------------------------------------------------------------- convergence
def test_ray_reconfigure_converges_a_real_registry(serving_exports: dict[str, Path]) -> None:
    """Add, replace (also with the unchanged folder: that once emptied the artifact), remove; a failing load
    removes nothing. Checked through the HTTP API of a server running on the converged registry."""
    from aa_deploy.serving.app import create_app

    config = ServerConfig(port=0, intra_op_threads=1)
    registry = TaskRegistry(config)
    tasks = TaskSetApplier(registry)
    sst, late, topic = (str(serving_exports[n]) for n in ("sst", "late", "topic"))
    server = BackgroundServer(config, app=create_app(config, registry=registry)).start()

    def logits(name: str) -> np.ndarray:
        r = httpx.post(
            f"{server.url}/v1/tasks/{name}/predict", json={"texts": TEXTS, "return_logits": True}, timeout=60
        )
        assert r.status_code == 200, r.text
        return np.asarray([p["logits"] for p in r.json()["predictions"]])

    def served() -> list[str]:
        return [t["name"] for t in httpx.get(f"{server.url}/v1/tasks", timeout=60).json()["tasks"]]

    try:
        tasks.converge([TaskSpec("a", sst), TaskSpec("b", topic)])
        assert served() == ["a", "b"]
        sst_logits, late_logits = logits("a"), None

        registry.load("a", sst, replace=True)  # the same files again: nothing to do, still serving
        np.testing.assert_allclose(logits("a"), sst_logits, atol=1e-6)

        plan = tasks.converge([TaskSpec("a", late), TaskSpec("c", sst)])
        assert ([s.name for s in plan.add], [s.name for s in plan.replace], plan.remove) == (["c"], ["a"], ("b",))
        assert served() == ["a", "c"]
        np.testing.assert_allclose(logits("c"), sst_logits, atol=1e-5)
        late_logits = logits("a")
        assert not np.allclose(late_logits, sst_logits, atol=1e-3), "the replaced task still answers as before"

        with pytest.raises(TaskLoadError, match="no task was removed"):
            tasks.converge([TaskSpec("d", "/nonexistent/export")])
        assert served() == ["a", "c"] and "d" in registry.failed

        tasks.converge([TaskSpec("c", sst)])
        assert served() == ["c"] and not registry.failed
        np.testing.assert_allclose(logits("c"), sst_logits, atol=1e-5)
    finally:
        server.stop()
        registry.close()


def test_ray_deployment_mode_refuses_per_process_task_changes(serving_exports: dict[str, Path]) -> None:
    config = ServerConfig(tasks=[TaskSpec("sst", str(serving_exports["sst"]))], port=0, deployment="ray")
    with BackgroundServer(config) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        _assert_task_changes_refused(client, str(serving_exports["topic"]))
        assert client.get("/v1/tasks").json()["tasks"][0]["name"] == "sst"


def _assert_task_changes_refused(client: httpx.Client, source: str) -> None:
    for response in (client.put("/v1/tasks/extra", json={"source": source}), client.delete("/v1/tasks/sst")):
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "task_changes_refused" and error["message"] == RAY_TASK_CHANGES_MESSAGE
        assert "user_config.tasks" in error["message"] and "serve deploy" in error["message"]


# ------------------------------------------------------------------------------------------- real cluster
BASE = ("sst", "rte", "late")  # always served
CHURN = "topic"  # added, then removed, while traffic runs


def _requests() -> list[tuple[str, str, dict[str, Any]]]:
    """(task of interest, path, body): /v1 single, /v1 multi-task and /v2 calls over all tasks."""
    rng = random.Random(0)
    out = []
    for i in range(24):
        k = rng.randint(1, 3)
        start = rng.randint(0, len(TEXTS) - k)
        texts, pairs = TEXTS[start : start + k], PAIRS[start : start + k]
        task = (*BASE, CHURN)[i % 4]
        is_pair = task == "rte"
        kind = i % 3
        if kind == 0 or (kind == 1 and is_pair):
            body = {"texts": texts, "return_logits": True, **({"text_pairs": pairs} if is_pair else {})}
            out.append((task, f"/v1/tasks/{task}/predict", body))
        elif kind == 1:
            out.append((task, "/v1/predict", {"tasks": [task, "sst"], "texts": texts, "return_logits": True}))
        else:
            inputs = [{"name": "text", "datatype": "BYTES", "shape": [k], "data": texts}]
            if is_pair:
                inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [k], "data": pairs})
            out.append((task, f"/v2/models/{task}/infer", {"inputs": inputs, "outputs": [{"name": "logits"}]}))
    return out


def _answer(path: str, body: dict[str, Any]) -> list[np.ndarray]:
    """The logits in a 200 answer, per task, in a comparable form."""
    if path.startswith("/v2"):
        (out,) = body["outputs"]
        return [np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])]
    if "results" in body:
        return [np.asarray([p["logits"] for p in preds]) for _, preds in sorted(body["results"].items())]
    return [np.asarray([p["logits"] for p in body["predictions"]])]


@pytest.mark.slow
@needs_ray
@pytest.mark.parametrize("ingress", ["proxy", "haproxy"])
def test_ray_cluster_two_replicas_serve_mixed_traffic_while_tasks_change(
    ingress: str, serving_exports: dict[str, Path], tmp_path: Path, ray_cluster_slot: None
) -> None:
    """``ingress``: Ray Serve's Python proxy, or its HAProxy ingress (feature flag set at ``ray start``)."""
    from aa_deploy.serving.ray_config import RayServeSpec
    from aa_deploy.serving.ray_local import LocalRayCluster, free_port

    jobs = _requests()
    sources = {n: str(serving_exports[n]) for n in (*BASE, CHURN)}
    # What one process answers for every request (all tasks loaded).
    single = ServerConfig(tasks=[TaskSpec(n, s) for n, s in sources.items()], port=0, intra_op_threads=1)
    with BackgroundServer(single) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        expected = []
        for _, path, body in jobs:
            response = client.post(path, json=body)
            assert response.status_code == 200, response.text
            expected.append(_answer(path, response.json()))

    port = free_port()

    def write_config(names: tuple[str, ...]) -> Path:
        # 0.6 CPU per replica on 1-CPU nodes: Ray must place the two replicas on different nodes.
        spec = RayServeSpec(
            tasks=[TaskSpec(n, sources[n]) for n in names], replicas=2, num_cpus=0.6,
            host="127.0.0.1", port=port, proxy_location="HeadOnly",
        )  # fmt: skip
        return spec.save(tmp_path / "serve.yaml")

    env = {"RAY_SERVE_ENABLE_HA_PROXY": "1"} if ingress == "haproxy" else {}
    with LocalRayCluster(nodes=2, cpus_per_node=1, env=env) as cluster:
        cluster.serve("deploy", str(write_config(BASE)))
        info = cluster.wait_running("aa-deploy", timeout=600)
        assert info["deployments"]["AdapterServer"]["replica_states"] == {"RUNNING": 2}
        url = f"http://127.0.0.1:{port}"
        outcomes: list[tuple[int, int, str]] = []  # (job, status, error code)
        mismatches: list[str] = []
        stop = threading.Event()

        def hammer(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=url, timeout=120) as c:
                while not stop.is_set():
                    i = rng.randrange(len(jobs))
                    _, path, body = jobs[i]
                    try:
                        r = c.post(path, json=body)
                    except httpx.HTTPError as exc:
                        outcomes.append((i, -1, type(exc).__name__))
                        continue
                    if r.status_code != 200:
                        err = (
                            r.json().get("error")
                            if r.headers.get("content-type", "").startswith("application/json")
                            else r.text
                        )
                        outcomes.append((i, r.status_code, str(err)))
                        continue
                    outcomes.append((i, 200, ""))
                    for got, want in zip(_answer(path, r.json()), expected[i], strict=True):
                        if got.shape != want.shape or not np.allclose(got, want, atol=1e-5, rtol=0):
                            mismatches.append(f"job {i} {path}: max diff {np.max(np.abs(got - want))}")

        def until(status: int, count: int = 12, timeout: float = 120) -> None:
            """``count`` calls in a row to the churned task answer ``status`` (so every replica converged)."""
            path, body = f"/v1/tasks/{CHURN}/predict", {"texts": ["x"]}
            deadline, streak = time.monotonic() + timeout, 0
            with httpx.Client(base_url=url, timeout=60) as c:
                while streak < count:
                    assert time.monotonic() < deadline, f"replicas did not converge to {status} for {CHURN}"
                    streak = streak + 1 if c.post(path, json=body).status_code == status else 0

        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(hammer, s) for s in range(4)]
            time.sleep(2)
            started = time.time()
            cluster.serve("deploy", str(write_config((*BASE, CHURN))))  # add a task
            cluster.wait_running("aa-deploy", after=started - 1)
            until(200)
            time.sleep(3)
            started = time.time()
            cluster.serve("deploy", str(write_config(BASE)))  # remove it again
            cluster.wait_running("aa-deploy", after=started - 1)
            until(404)
            time.sleep(2)
            stop.set()
            for w in workers:
                w.result()

        with httpx.Client(base_url=url, timeout=60) as client:
            _assert_task_changes_refused(client, sources[CHURN])
        # No `serve shutdown` (33 s here): leaving the cluster kills its processes anyway.

    failed = [(jobs[i][1], status, err) for i, status, err in outcomes if status != 200 and jobs[i][0] != CHURN]
    churn = [(status, err) for i, status, err in outcomes if jobs[i][0] == CHURN]
    assert len(outcomes) >= 200, f"only {len(outcomes)} requests were sent"
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed: {failed[:5]}"
    # The churned task answers or is "not loaded" (before the add, after the remove), never anything else.
    assert all(s == 200 or (s == 404 and ("task_not_found" in e or "is not loaded" in e)) for s, e in churn), churn[:5]
    assert any(s == 200 for s, _ in churn) and any(s == 404 for s, _ in churn)
    assert not mismatches, mismatches[:5]


def test_local_cluster_retries_a_start_that_ray_gave_up_on(monkeypatch) -> None:
    """Ray's fixed 30 s node-registration wait can time out on a starved machine: one fresh retry."""
    from aa_deploy.serving import ray_local

    cluster = ray_local.LocalRayCluster()
    calls: list[tuple[int, int]] = []

    def flaky_start(self):
        calls.append((self.gcs_port, self.dashboard_port))
        if len(calls) == 1:
            raise RuntimeError("ray start failed (1):\nException: The current node timed out during startup.")
        return self

    monkeypatch.setattr(ray_local.LocalRayCluster, "_start_nodes", flaky_start)
    monkeypatch.setattr(ray_local.time, "sleep", lambda s: None)
    assert cluster.start() is cluster
    assert len(calls) == 2 and calls[0] != calls[1]  # the retry runs on fresh ports

    def broken_start(self):
        raise RuntimeError("ray start failed (1): some other error")

    monkeypatch.setattr(ray_local.LocalRayCluster, "_start_nodes", broken_start)
    with pytest.raises(RuntimeError, match="some other error"):
        cluster.start()
