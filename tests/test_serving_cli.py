"""``aa-deploy serve``: flags, config file, and a real server process stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serving_helpers import wait_until_ready

from aa_deploy.cli import build_parser
from aa_deploy.serving.cli import build_config
from aa_deploy.serving.ports import free_port

REPO = Path(__file__).resolve().parents[1]


def parse(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_serve_is_registered_and_builds_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AA_DEPLOY_TOKEN", raising=False)
    args = parse(
        "--task",
        "rte=exports/rte",
        "--task",
        "sst=exports/sst",
        "--max-batch",
        "32",
        "--max-delay-ms",
        "2",
        "--port",
        "9000",
        "--no-prepacking",
        "--engine",
        "sessions",
    )
    config = build_config(args)
    assert [t.name for t in config.tasks] == ["rte", "sst"]
    assert (config.max_batch_size, config.max_delay_ms, config.port, config.prepacking, config.engine) == (
        32,
        2.0,
        9000,
        False,
        "sessions",
    )
    assert config.host == "127.0.0.1" and config.token is None
    # A config file, overridden by flags; the token from a file.
    (tmp_path / "server.json").write_text(
        json.dumps({"max_batch_size": 4, "tasks": [{"name": "rte", "source": "old"}]})
    )
    (tmp_path / "token").write_text("from-file\n")
    config = build_config(
        parse("--config", str(tmp_path / "server.json"), "--task", "rte=new", "--token-file", str(tmp_path / "token"))
    )
    assert config.max_batch_size == 4 and config.tasks[0].source == "new" and config.token == "from-file"
    monkeypatch.setenv("AA_DEPLOY_TOKEN", "from-env")
    assert build_config(parse("--task", "a=b")).token == "from-env"


def test_bad_flags_and_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--task", "no-equals-sign")
    from aa_deploy.cli import main

    assert main(["serve", "--task", "rte=x", "--token", "secret", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["token"] == "***" and printed["tasks"][0]["name"] == "rte"
    assert main(["serve"]) == 1
    assert "nothing to serve" in capsys.readouterr().err


def test_serve_process_answers_and_stops_cleanly_on_sigterm(serving_exports: dict[str, Path]) -> None:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "aa_deploy.cli",
        "serve",
        "--task",
        f"rte={serving_exports['rte']}",
        "--task",
        f"entail={serving_exports['rte']}",
        "--port",
        str(port),
        "--threads",
        "1",
        "--log-level",
        "info",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, proc, 90)
        r = httpx.post(
            url + "/v1/predict", json={"tasks": ["rte", "entail"], "texts": ["a cat"], "text_pairs": ["a dog"]}
        )
        assert r.status_code == 200
        results = r.json()["results"]
        assert results["rte"] == results["entail"]
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says "terminated".
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        output = proc.stdout.read() if proc.stdout else ""
        assert "Application shutdown complete" in output, output[-2000:]
        assert "serving 2 task(s): entail, rte" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_exits_when_no_named_task_loads(tmp_path) -> None:
    """A typo in every --task must not leave an empty server running (Triton's default, too)."""
    import subprocess
    import sys

    (tmp_path / "not-an-export").mkdir()
    cmd = [sys.executable, "-m", "aa_deploy.cli", "serve", "--task", f"rte={tmp_path / 'not-an-export'}", "--port", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert "is not an aa-deploy export" in proc.stderr and "--start-empty" in proc.stderr


def test_every_config_field_has_an_environment_variable_and_is_documented() -> None:
    from dataclasses import fields

    from aa_deploy.serving.config import CONFIG_ENV, ServerConfig, env_variable, env_variables

    variables = env_variables()
    assert {f.name for f in fields(ServerConfig)} == set(variables.values())
    assert variables[env_variable("port")] == "port" and variables["AA_DEPLOY_THREADS"] == "intra_op_threads"
    deploy_doc = (REPO / "docs" / "DEPLOY.md").read_text()
    missing = [v for v in [*variables, CONFIG_ENV] if f"`{v}`" not in deploy_doc]
    assert not missing, f"document these in docs/DEPLOY.md: {missing}"


def test_environment_values_are_parsed_to_the_field_types() -> None:
    from aa_deploy.serving.config import config_from_env

    env = {
        "AA_DEPLOY_TASKS": "rte=/models/rte, sst2=org/sst2@v1",
        "AA_DEPLOY_PORT": "9000",
        "AA_DEPLOY_THREADS": "2",
        "AA_DEPLOY_MAX_DELAY_MS": "2.5",
        "AA_DEPLOY_ALLOW_HUB": "false",
        "AA_DEPLOY_PREFIX_SHARING": "On",
        "AA_DEPLOY_ALLOWED_ROOTS": "/models,/data",
        "AA_DEPLOY_PROVIDERS": "",
        "AA_DEPLOY_HOME": "/not/a/server/field",
    }
    data = config_from_env(env)
    assert data == {
        "tasks": [
            {"name": "rte", "source": "/models/rte", "revision": None},
            {"name": "sst2", "source": "org/sst2", "revision": "v1"},
        ],
        "port": 9000,
        "intra_op_threads": 2,
        "max_delay_ms": 2.5,
        "allow_hub": False,
        "prefix_sharing": True,
        "allowed_roots": ["/models", "/data"],
        "providers": None,
    }
    with pytest.raises(ValueError, match="AA_DEPLOY_PORT='eighty'"):
        config_from_env({"AA_DEPLOY_PORT": "eighty"})
    with pytest.raises(ValueError, match="AA_DEPLOY_ALLOW_HUB"):
        config_from_env({"AA_DEPLOY_ALLOW_HUB": "maybe"})
    with pytest.raises(ValueError, match="AA_DEPLOY_TASKS"):
        config_from_env({"AA_DEPLOY_TASKS": "no-equals-sign"})


def test_config_file_then_environment_then_flags(tmp_path: Path) -> None:
    """defaults < config file ($AA_DEPLOY_CONFIG, YAML here) < AA_DEPLOY_* variables < flags."""
    (tmp_path / "server.yaml").write_text(
        "max_batch_size: 4\nport: 8100\nintra_op_threads: 3\ntasks:\n  - {name: rte, source: /file/rte}\n"
        "  - {name: cola, source: /file/cola}\n"
    )
    env = {
        "AA_DEPLOY_CONFIG": str(tmp_path / "server.yaml"),
        "AA_DEPLOY_PORT": "8200",
        "AA_DEPLOY_TASKS": "rte=/env/rte,sst2=/env/sst2",
        "AA_DEPLOY_TOKEN": "from-env",
    }
    config = build_config(parse(), env)
    assert (config.max_batch_size, config.port, config.intra_op_threads, config.token) == (4, 8200, 3, "from-env")
    assert {t.name: t.source for t in config.tasks} == {"cola": "/file/cola", "rte": "/env/rte", "sst2": "/env/sst2"}
    config = build_config(parse("--port", "8300", "--task", "sst2=/flag/sst2", "--token", "flag"), env)
    assert config.port == 8300 and config.token == "flag"
    assert {t.name: t.source for t in config.tasks}["sst2"] == "/flag/sst2"
    # A JSON config file given by flag wins over $AA_DEPLOY_CONFIG; a config that is not a mapping is refused.
    (tmp_path / "server.json").write_text(json.dumps({"max_batch_size": 7}))
    assert build_config(parse("--config", str(tmp_path / "server.json")), env).max_batch_size == 7
    (tmp_path / "list.yml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping of ServerConfig fields"):
        build_config(parse("--config", str(tmp_path / "list.yml")), {})
