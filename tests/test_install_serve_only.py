"""The serving-only install, for real: a fresh virtual environment with nothing but the project's wheel and
its ``serve`` extra (``make serve-env``, the same steps as docker/Dockerfile), torch and transformers absent,
serves an export made in the full environment, configured the container way (environment variables and a
YAML config file), and answers with the full environment's logits.

The environments are kept (``.venv-serve``, ``.venv-serve-cpu``; rebuilt by make when the package
changes), so a rerun costs seconds. The first run needs PyPI.
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
from serving_helpers import SST, TEXTS, Reference, make_run_folder, wait_until_ready

from aa_deploy.serving.config import ServerConfig
from aa_deploy.serving.ports import free_port
from aa_deploy.serving.server import BackgroundServer

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _tree_size(root: Path) -> int:
    """Bytes on disk under ``root`` (files counted once, links not followed): what ``du -s`` reports."""
    seen, total = set(), 0
    for path in root.rglob("*"):
        stat = path.lstat()
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_blocks * 512
    return total


def _serve_env(venv: Path, extra: str) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed: the serving environment is built by `make serve-env`")
    proc = subprocess.run(
        ["make", "--no-print-directory", "serve-env", f"SERVE_VENV={venv}", f"SERVE_EXTRA={extra}"],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, f"make serve-env failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return venv


def _clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment: nothing from this test process (no PYTHONPATH, no AA_DEPLOY_* of the suite)."""
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    return {**keep, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def dockerfile_healthcheck(dockerfile: Path) -> list[str]:
    """The exec-form command of a Dockerfile's HEALTHCHECK (its continuation lines joined)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("HEALTHCHECK"))
    return json.loads(line.partition(" CMD ")[2])


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_dir: Path) -> Path:
    from aa_deploy.export import export_run

    root = tmp_path_factory.mktemp("serve-install")
    run = make_run_folder(root / "run", tiny_backbone_dir, SST, "search", "A", [1, 2], seed=1)
    return export_run(run, root / "exports" / "sst", backbone_store=root / "store").output


@pytest.mark.parametrize(("venv_name", "extra"), [(".venv-serve", "serve"), (".venv-serve-cpu", "serve-cpu")])
def test_serve_install_without_torch_serves_an_export(
    venv_name: str, extra: str, tiny_export: Path, tmp_path: Path, repo_build_slot: None
) -> None:
    venv = _serve_env(REPO / venv_name, extra)
    python, cli = venv / "bin" / "python", venv / "bin" / "aa-deploy"

    # Only the serving libraries are there.
    probe = "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in %r}))"
    modules = ["torch", "transformers", "onnx", "onnxruntime", "tokenizers", "fastapi", "uvicorn"]
    found = json.loads(subprocess.run([python, "-c", probe % modules], capture_output=True, text=True).stdout)
    assert found == {m: m not in ("torch", "transformers") for m in modules}

    # Training commands say which extra to install; --help works.
    assert subprocess.run([cli, "--help"], capture_output=True, env=_clean_env()).returncode == 0
    train = subprocess.run(
        [cli, "train", "--task", "rte", "--output", str(tmp_path / "run")], capture_output=True, text=True,
        env=_clean_env(), cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 1 and "Traceback" not in train.stderr
    assert 'pip install "aa-deploy[train]"' in train.stderr, train.stderr

    # Serve the export the container way: tasks, port and threads from the environment, the rest from a file.
    port = free_port()
    (tmp_path / "server.yaml").write_text("max_batch_size: 8\nlog_level: warning\n")
    env = _clean_env(
        AA_DEPLOY_TASKS=f"sst={tiny_export}",
        AA_DEPLOY_PORT=str(port),
        AA_DEPLOY_THREADS="1",
        AA_DEPLOY_CONFIG=str(tmp_path / "server.yaml"),
        AA_DEPLOY_HOME=str(tmp_path / "home"),
    )
    printed = subprocess.run([cli, "serve", "--print-config"], capture_output=True, text=True, env=env)
    effective = json.loads(printed.stdout)
    assert (effective["port"], effective["intra_op_threads"], effective["max_batch_size"]) == (port, 1, 8)

    body = {"texts": TEXTS, "return_logits": True}
    healthcheck = dockerfile_healthcheck(REPO / "docker" / "Dockerfile")
    proc = subprocess.Popen([cli, "serve"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, proc, 120)
        # The images' HEALTHCHECK command, as written in the Dockerfile, passes against the ready server.
        assert subprocess.run([python, *healthcheck[1:]], env=env, timeout=30).returncode == 0
        response = httpx.post(url + "/v1/tasks/sst/predict", json=body, timeout=60)
        assert response.status_code == 200, response.text
        served = np.array([p["logits"] for p in response.json()["predictions"]])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    assert subprocess.run([python, *healthcheck[1:]], env=env, capture_output=True, timeout=30).returncode != 0

    # The full environment's server, same export and settings, gives the same numbers.
    config = ServerConfig(tasks=[{"name": "sst", "source": str(tiny_export)}], port=0, intra_op_threads=1)
    config.max_batch_size = 8
    with BackgroundServer(config) as server:
        full = httpx.post(server.url + "/v1/tasks/sst/predict", json=body, timeout=60)
    np.testing.assert_allclose(served, np.array([p["logits"] for p in full.json()["predictions"]]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(served, Reference(tiny_export).logits(TEXTS), atol=1e-4, rtol=0)

    import torch

    full_env = Path(torch.__file__).resolve().parents[4]  # <venv>/lib/pythonX.Y/site-packages/torch/__init__.py
    size, full_size = _tree_size(venv), _tree_size(full_env)
    print(
        f"\n{venv_name} ({extra}): {size / 2**20:,.0f} MiB; full environment {full_env}: {full_size / 2**20:,.0f} MiB"
    )
