"""How `aa-deploy train` talks to its user: contradictory flags refused, a bar per epoch with the dev
metric, a readable summary at the end, and `--json` for scripts (then stdout holds only the JSON)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aa_deploy.cli import main
from aa_deploy.training import TrainConfig
from aa_deploy.training.option_rules import RECIPE_OPTIONS, option_conflicts


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--recipe", "adapterdrop", "--layers", "0,2"], "--layers only applies to the focused and standard recipes"),
        (
            ["--recipe", "search", "--selection-from", "{tmp}"],
            "--selection-from only applies to the focused and standard",
        ),
        (["--recipe", "standard", "--max-layers", "2"], "--max-layers only applies to the search recipe"),
        (
            ["--recipe", "focused", "--layers", "0", "--layer-cost", "0"],
            "--layer-cost only applies to the search recipe",
        ),
        (["--recipe", "standard", "--rational-init", "gelu"], "--rational-init only applies to the search and focused"),
        # typed with its default value: still a contradiction, the user believes it does something
        (["--recipe", "adapterdrop", "--switch-temperature", "0.1"], "--switch-temperature only applies to the search"),
        (["--recipe", "standard", "--anneal-to", "0.01"], "--anneal-to only applies to the search recipe"),
        (["--recipe", "search", "--adapterdrop-eval-layers", "2"], "--adapterdrop-eval-layers only applies"),
        (["--recipe", "focused", "--layers", "0", "--selection-from", "{tmp}"], "--selection-from and --layers both"),
        # prefix abbreviations are what argparse accepts, so they count as typed too
        (["--recipe", "standard", "--numerator-deg", "3"], "--numerator-degree only applies"),
    ],
)
def test_contradictory_flags_are_refused(flags, message, demo_data: Path, tmp_path: Path, capsys) -> None:
    argv = ["train", "--task", str(demo_data / "sentiment_train.csv"), "--output", str(tmp_path / "out"),
            *[f.format(tmp=tmp_path) for f in flags]]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("aa-deploy: error: contradictory options")
    assert not (tmp_path / "out").exists()


def test_library_callers_get_the_same_refusal_for_options_they_set() -> None:
    with pytest.raises(ValueError, match="--layers only applies to the focused and standard recipes"):
        TrainConfig(task="rte", output="o", recipe="search", selected_layers=[0, 1])
    TrainConfig(task="rte", output="o", recipe="focused", selected_layers=[0, 1])  # fine where it applies
    TrainConfig(task="rte", output="o", recipe="standard", selected_layers=[4, 5])  # a fixed-layer standard adapter


def test_every_recipe_specific_option_is_a_train_option() -> None:
    fields = set(TrainConfig.__dataclass_fields__)
    assert set(RECIPE_OPTIONS) <= fields
    assert option_conflicts("focused", ["selected_layers", "epochs"]) == []


def test_train_prints_a_readable_summary(demo_data: Path, tiny_backbone_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--task", str(demo_data / "sentiment_train.csv"), "--test-file", str(demo_data / "sentiment_test.csv"),
            "--backbone", str(tiny_backbone_dir), "--recipe", "standard", "--epochs", "2", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "sentiment"  # the file stem without its split word
    text = captured.out
    assert "Trained standard adapters for sentiment" in text
    assert f"dev  accuracy: {metrics['value']:.4f} (best epoch {metrics['best_epoch']} of 2" in text
    assert f"test accuracy: {metrics['test_value']:.4f}" in text and f"Run folder: {out}" in text
    assert "{'" not in text + captured.err  # no raw Trainer log dicts
    assert "epoch 1/2" in captured.err and "epoch 2/2" in captured.err and "dev accuracy" in captured.err


def test_json_flag_leaves_only_the_json_on_stdout(demo_data: Path, tiny_backbone_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "aa_deploy.cli", "train", "--task", str(demo_data / "sentiment_train.csv"),
           "--backbone", str(tiny_backbone_dir), "--recipe", "standard", "--epochs", "1", "--json", "--output", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary == {"output": str(out), "metric": "accuracy", "value": round(metrics["value"], 4), "test_value": None,
                       "selected_layers": metrics["selected_layers"]}  # fmt: skip
    assert "epoch 1/1" in proc.stderr and "dev accuracy" in proc.stderr
