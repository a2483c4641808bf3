"""KServe: the generated manifests against the KServe SDK's typed models, and the server started the way the
ServingRuntime starts it (``aa-deploy serve --models-dir``) answering the manifest's probes and the v2 protocol.

The SDK's pins clash with this project's environment, so its checks run tests/kserve_validate.py in the
KServe environment (``make kserve-env``; ``$AA_KSERVE_PYTHON``, else ./.venv-kserve when it exists).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from serving_helpers import TEXTS, Reference

from aa_deploy.cli import build_parser, main
from aa_deploy.serving import kserve
from aa_deploy.serving.cli import build_config
from aa_deploy.serving.config import MODELS_DIR_TASKS_ENV, discover_tasks
from aa_deploy.serving.server import BackgroundServer

REPO = Path(__file__).resolve().parents[1]
VALIDATOR = Path(__file__).resolve().parent / "kserve_validate.py"


def _kserve_python() -> str:
    python = os.environ.get("AA_KSERVE_PYTHON") or str(REPO / ".venv-kserve" / "bin" / "python")
    if not Path(python).is_file():
        pytest.skip("the KServe SDK environment is missing: run `make kserve-env` (or set AA_KSERVE_PYTHON)")
    return python


def _validate(*files: Path) -> list[dict]:
    proc = subprocess.run(
        [_kserve_python(), str(VALIDATOR), *map(str, files)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ manifests
def test_kserve_cli_manifests_are_valid_sdk_objects_that_fit_together(tmp_path: Path, capsys) -> None:
    out = tmp_path / "manifests"
    code = main(
        [
            "kserve", "--task", "rte", "--task", "sst2", "--storage-uri", "s3://bucket/exports",
            "--image", "registry.example/aa-deploy:0.1.0-cuda", "--gpus", "1", "--cpu-limit", "3500m",
            "--serve-arg=--max-batch=32", "--output", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["inferenceservice.yaml", "servingruntime.yaml"]
    runtime, isvc = _validate(out / "servingruntime.yaml", out / "inferenceservice.yaml")

    for doc in (runtime, isvc):
        assert doc["errors"] == [] and doc["round_trip_equal"], doc
    assert runtime["sdk_class"] == "V1alpha1ServingRuntime" and isvc["sdk_class"] == "V1beta1InferenceService"
    # The InferenceService selects this runtime, and the runtime supports its format and protocol.
    assert isvc["runtime"] == runtime["name"] == "aa-deploy"
    assert isvc["format"] in runtime["formats"] and isvc["protocol"] in runtime["protocols"] == ["v2"]
    assert isvc["storage_uri"] == "s3://bucket/exports"
    assert isvc["env"] == {MODELS_DIR_TASKS_ENV: "rte,sst2"}
    assert isvc["limits"]["nvidia.com/gpu"] == "1" and runtime["limits"]["nvidia.com/gpu"] == "1"
    # The container runs the server on KServe's port over KServe's model folder; probes hit that port.
    assert runtime["container"] == "kserve-container" and runtime["image"] == "registry.example/aa-deploy:0.1.0-cuda"
    assert runtime["ports"] == [8080]
    assert runtime["startup"] == runtime["liveness"] == ["/health", 8080] and runtime["readiness"] == ["/ready", 8080]
    command = runtime["command"]
    assert command[:2] == ["aa-deploy", "serve"] and command[-1] == "--max-batch=32"
    assert command[command.index("--models-dir") + 1] == "/mnt/models"
    assert command[command.index("--threads") + 1] == "3"
    # What the container runs is a command line the real CLI accepts.
    args = build_parser().parse_args(command[1:])
    assert (args.host, args.port, args.models_dir, args.allow_hub) == ("0.0.0.0", 8080, "/mnt/models", False)


def test_kserve_stdout_stream_and_validator_rejects_what_kserve_would(tmp_path: Path, capsys) -> None:
    assert main(["kserve", "--task", "cola", "--storage-uri", "pvc://exports-claim/exports"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["ServingRuntime", "InferenceService"]
    assert docs[1]["metadata"]["name"] == "aa-cola"
    stream = tmp_path / "all.yaml"
    stream.write_text(kserve.to_yaml(docs))
    assert all(r["errors"] == [] and r["round_trip_equal"] for r in _validate(stream))

    # The check is not vacuous: an unknown key and a missing required field are both reported.
    docs[1]["spec"]["predictor"]["model"]["storageURI"] = "s3://typo"
    del docs[0]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(kserve.to_yaml(docs))
    runtime, isvc = _validate(broken)
    assert any("readinessProbe.httpGet" in e and "port" in e for e in runtime["errors"]), runtime["errors"]
    assert any("storageURI: not a field of V1beta1ModelSpec" in e for e in isvc["errors"]), isvc["errors"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "rte", "--storage-uri", "/local/exports"], "not one KServe downloads"),
        (["--task", "rte", "--storage-uri", "s3://b/e", "--name", "Bad_Name"], "invalid InferenceService name"),
        (["--task", "../etc", "--storage-uri", "s3://b/e"], "invalid task name"),
        (["--task", "rte", "--storage-uri", "s3://b/e", "--cpu-limit", "lots"], "not a Kubernetes CPU quantity"),
    ],
)
def test_kserve_cli_refuses_bad_input_with_a_clear_message(argv: list[str], message: str, tmp_path, capsys) -> None:
    assert main(["kserve", *argv, "--output", str(tmp_path / "out")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- --models-dir + server
@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, serving_exports: dict[str, Path]) -> Path:
    """What KServe's storage initializer leaves in /mnt/models for a storageUri holding <task>/ exports,
    plus things a bucket may also hold (a folder without a manifest, a loose file)."""
    root = tmp_path_factory.mktemp("mnt-models")
    for task, export in (("sst2", "sst"), ("rte", "rte"), ("topic", "topic")):
        shutil.copytree(serving_exports[export], root / task)
    (root / "notes").mkdir()
    (root / "notes" / "README.md").write_text("not an export")
    (root / "index.json").write_text("{}")
    return root


def test_kserve_models_dir_discovery_and_its_errors(models_dir: Path, serving_exports: dict[str, Path]) -> None:
    assert [(t.name, Path(t.source).name) for t in discover_tasks(models_dir)] == [
        ("rte", "rte"), ("sst2", "sst2"), ("topic", "topic"),
    ]  # fmt: skip
    assert [t.name for t in discover_tasks(models_dir, ["sst2", "rte"])] == ["sst2", "rte"]
    with pytest.raises(FileNotFoundError, match=r"no export folder for task\(s\) \['mnli'\]"):
        discover_tasks(models_dir, ["sst2", "mnli"])
    with pytest.raises(ValueError, match="is itself an export folder"):
        discover_tasks(serving_exports["sst"])
    with pytest.raises(FileNotFoundError, match="no export folders"):
        discover_tasks(models_dir / "notes")


def test_kserve_runtime_command_serves_the_named_tasks_with_v2_and_probes(
    models_dir: Path, serving_exports: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ServingRuntime's own command line (host and port made local) on the folder layout KServe
    produces, with the InferenceService's env: only the named tasks load, every manifest probe says 200,
    and /v2/models/<task>/infer gives each export's own logits."""
    manifests = kserve.manifests(kserve.RuntimeSpec(), kserve.DeploymentSpec("aa-test", ["sst2", "rte"], "s3://b/e"))
    container = manifests["servingruntime.yaml"]["spec"]["containers"][0]
    command = container["command"] + container["args"]
    command[command.index("--models-dir") + 1] = str(models_dir)
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = "0"
    env = manifests["inferenceservice.yaml"]["spec"]["predictor"]["model"]["env"]
    for variable in env:
        monkeypatch.setenv(variable["name"], variable["value"])
    config = build_config(build_parser().parse_args(command[1:]))
    assert sorted(t.name for t in config.tasks) == ["rte", "sst2"]

    with BackgroundServer(config) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            r = client.get(container[probe]["httpGet"]["path"])
            assert r.status_code == 200, (probe, r.text)
        assert client.get("/ready").json()["tasks"] == ["rte", "sst2"]
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2/models/topic/ready").status_code == 404  # on disk, not named: not served
        for task, export, pair in (("sst2", "sst", None), ("rte", "rte", "a dog is sleeping")):
            texts = TEXTS[:4]
            inputs = [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]
            if pair:
                inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [len(texts)], "data": [pair] * 4})
            r = client.post(f"/v2/models/{task}/infer", json={"id": task, "inputs": inputs})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model_name"] == task and body["id"] == task
            logits = next(o for o in body["outputs"] if o["name"] == "logits")
            expected = Reference(serving_exports[export]).logits(texts, [pair] * 4 if pair else None)
            np.testing.assert_allclose(np.array(logits["data"]).reshape(logits["shape"]), expected, atol=1e-4)


def test_kserve_models_dir_cli_flag_beats_env_and_task_wins_on_a_name(
    models_dir: Path, serving_exports: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MODELS_DIR_TASKS_ENV, "sst2")
    parse = build_parser().parse_args
    assert [t.name for t in build_config(parse(["serve", "--models-dir", str(models_dir)])).tasks] == ["sst2"]
    args = parse(["serve", "--models-dir", str(models_dir), "--models-tasks", "topic,rte"])
    assert [t.name for t in build_config(args).tasks] == ["topic", "rte"]
    args = parse(["serve", "--models-dir", str(models_dir), "--task", f"sst2={serving_exports['late']}"])
    (task,) = build_config(args).tasks
    assert task.source == str(serving_exports["late"])
