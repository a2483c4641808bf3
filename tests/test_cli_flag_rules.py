"""Flags that contradict each other are refused with one clear line instead of one silently winning."""

from __future__ import annotations

from pathlib import Path

import pytest

from aa_deploy.cli import main

SST = str(Path(__file__).parent / "fixtures" / "serving_exports" / "sst")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--task", f"a={SST}", "--models-tasks", "x", "--print-config"], "--models-tasks only works with --models-dir"),
        (["serve", "--task", f"a={SST}", "--token", "t", "--token-file", "{tmp}/t", "--print-config"], "--token and --token-file"),
        (["ray-config", "--task", f"a={SST}", "--replicas", "2", "--autoscale-min", "1", "--autoscale-max", "3", "--output", "{tmp}/r.yaml"],
         "--replicas and --autoscale-min cannot be used together"),
        (["export", "{tmp}/run", "--output", "{tmp}/out", "--standalone", "--backbone-store", "{tmp}/store"],
         "--standalone and --backbone-store cannot be used together"),
    ],
    ids=["serve-models-tasks", "serve-token", "ray-replicas", "export-store"],
)  # fmt: skip
def test_contradictory_flags_are_refused_before_any_work(argv, message, tmp_path: Path, capsys) -> None:
    (tmp_path / "t").write_text("secret")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("aa-deploy: error: contradictory options: ") and message in captured.err
    assert captured.out == "" and not (tmp_path / "r.yaml").exists() and not (tmp_path / "out").exists()


def test_a_default_from_the_environment_is_not_a_typed_flag(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("AA_DEPLOY_MODELS_TASKS", "x")
    assert main(["serve", "--task", f"a={SST}", "--print-config"]) == 0
    assert '"tasks"' in capsys.readouterr().out
