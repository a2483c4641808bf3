"""Training runs end to end: optimiser groups, loss goes down, run folder contents, CLI, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from aa_deploy import AdaptableAdapterModel, AdapterConfig
from aa_deploy.cli import main
from aa_deploy.cli_options import GLUE_DIR_ENV
from aa_deploy.training import TrainConfig, read_selection, train
from aa_deploy.training.trainer import parameter_groups

TASK = {"name": "toy", "metric": "accuracy", "label_names": ["neg", "pos"], "is_pair": False}


def demo_config(tmp_path: Path, backbone: Path, demo_data: Path, **overrides) -> TrainConfig:
    values = dict(
        task=str(demo_data / "sentiment_train.csv"),
        test_file=str(demo_data / "sentiment_test.csv"),
        output=str(tmp_path / "run"),
        backbone=str(backbone),
        epochs=4,
        batch_size=16,
        learning_rate=1e-2,
        min_steps=0,  # exactly `epochs` epochs, as the assertions count them
        progress=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_parameter_groups_follow_the_paper() -> None:
    model = AdaptableAdapterModel.from_backbone(tiny_model(), AdapterConfig(recipe="search"), task=TASK)
    groups = {g["name"]: g for g in parameter_groups(model, 1e-4, 0.05, 0.01)}
    assert {k: g["lr"] for k, g in groups.items()} == {"default": 1e-4, "switch": 0.05, "rational": 0.01}
    assert len(groups["switch"]["params"]) == 3 and len(groups["rational"]["params"]) == 6
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups.values()) == n_trainable


def test_search_run_lowers_loss_and_writes_run_folder(tmp_path, tiny_backbone_dir, demo_data) -> None:
    result = train(
        demo_config(
            tmp_path, tiny_backbone_dir, demo_data, epochs=6, save_checkpoints=True, switch_temperature_final=0.05
        )
    )
    run = tmp_path / "run"
    names = {p.name for p in run.iterdir()}
    assert {
        "aa_adapter_config.json",
        "aa_adapter_model.safetensors",
        "selection.json",
        "metrics.json",
        "training_config.json",
        "activations.png",
    } <= names
    assert not list(tmp_path.glob(".run.*"))  # the staging folder is gone
    metrics = json.loads((run / "metrics.json").read_text())
    losses = [h["train_loss"] for h in metrics["history"]]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0]
    assert metrics["metric"] == "accuracy" and metrics["value"] == result.value
    assert 0.0 <= metrics["test_value"] <= 1.0 and metrics["test_examples"] == 60
    assert metrics["train_examples"] == 135 and metrics["dev_examples"] == 45
    # Switch state is recorded every epoch, and the best epoch's selection is what is saved.
    assert all(len(h["switch_probabilities"]) == 3 for h in metrics["history"])
    best = next(h for h in metrics["history"] if h["epoch"] == metrics["best_epoch"])
    selection = json.loads((run / "selection.json").read_text())
    assert selection["selected_layers"] == best["selected_layers"] == read_selection(run)
    assert len(selection["switch_probabilities"]) == 3
    model = AdaptableAdapterModel.from_pretrained(run)
    assert model.kept_layers() == selection["selected_layers"]
    # Every epoch's checkpoint carries its switch logits (the reference code lost them).
    from safetensors.numpy import load_file

    for epoch in range(1, 7):
        keys = load_file(str(run / "checkpoints" / f"epoch-{epoch}" / "aa_adapter_model.safetensors")).keys()
        assert sum(".switch.logits" in k for k in keys) == 3
    # Annealing reached the final temperature.
    assert abs(model.adapter_layers["0"].switch.temperature - 0.1) < 1e-9  # config value on reload
    assert json.loads((run / "training_config.json").read_text())["switch_temperature_final"] == 0.05


def test_focused_run_reuses_a_selection(tmp_path, tiny_backbone_dir, demo_data) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "selection.json").write_text(json.dumps({"selected_layers": [0, 2]}))
    train(demo_config(tmp_path, tiny_backbone_dir, demo_data, recipe="focused", selection_from=str(source), epochs=1))
    cfg = json.loads((tmp_path / "run" / "aa_adapter_config.json").read_text())
    assert cfg["recipe"] == "focused" and cfg["selected_layers"] == [0, 2]
    assert json.loads((tmp_path / "run" / "selection.json").read_text())["selected_layers"] == [0, 2]


def test_focused_run_refuses_a_selection_of_another_backbone(tmp_path, tiny_backbone_dir, demo_data) -> None:
    from tiny_models import save_tiny_backbone

    from aa_deploy.modeling import BackboneMismatchError

    other = save_tiny_backbone(tmp_path / "two-layer-bert", "bert", num_layers=2)
    source = tmp_path / "source"
    AdaptableAdapterModel.from_backbone(str(other), AdapterConfig(recipe="search"), task=TASK).save_pretrained(source)
    (source / "selection.json").write_text(json.dumps({"selected_layers": [0, 1]}))
    config = demo_config(tmp_path, tiny_backbone_dir, demo_data, recipe="focused", selection_from=str(source), epochs=1)
    with pytest.raises(BackboneMismatchError, match="--selection-from .*two-layer-bert"):
        train(config)
    assert not (tmp_path / "run").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "two-layer-bert"]  # no staging folder left


def test_runs_are_seeded(tmp_path, tiny_backbone_dir, demo_data) -> None:
    a = train(
        demo_config(
            tmp_path / "a", tiny_backbone_dir, demo_data, recipe="standard", epochs=1, output=str(tmp_path / "a")
        )
    )
    b = train(
        demo_config(
            tmp_path / "b", tiny_backbone_dir, demo_data, recipe="standard", epochs=1, output=str(tmp_path / "b")
        )
    )
    assert a.metrics["train_loss"] == b.metrics["train_loss"]


def test_existing_output_is_not_overwritten(tmp_path, tiny_backbone_dir, demo_data) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(demo_config(tmp_path, tiny_backbone_dir, demo_data, epochs=1))
    assert (tmp_path / "run" / "keep.txt").read_text() == "precious"


def test_regression_file_task(tmp_path, tiny_backbone_dir) -> None:
    rows = ["text,label"] + [
        f"the film is {w} .,{s}" for w, s in [("superb", 4.5), ("awful", 0.5), ("dull", 1.5), ("warm", 3.5)] * 6
    ]
    (tmp_path / "scores.csv").write_text("\n".join(rows) + "\n")
    result = train(
        TrainConfig(
            task=str(tmp_path / "scores.csv"),
            output=str(tmp_path / "run"),
            backbone=str(tiny_backbone_dir),
            epochs=1,
            progress=False,
        )
    )
    assert result.metric == "spearman"


# -------------------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "mnli", "--data-dir", "."], "unknown task 'mnli'"),
        (["--task", "missing.csv"], "data file 'missing.csv' not found"),
        (["--task", "rte"], "data"),
        (["--task", "{demo}/sentiment_train.csv", "--recipe", "focused"], "--selection-from"),
        (
            ["--task", "{demo}/sentiment_train.csv", "--recipe", "focused", "--selection-from", "{tmp}"],
            "selection.json not found",
        ),
    ],
)
def test_cli_bad_input_gets_clear_error(tmp_path, demo_data, capsys, monkeypatch, args, message) -> None:
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    argv = ["train", *[a.format(demo=demo_data, tmp=tmp_path) for a in args], "--output", str(tmp_path / "out")]
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_cli_malformed_glue_files(tmp_path, tiny_backbone_dir, capsys) -> None:
    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    (rte / "dev.tsv").write_text(header + "0\ta\tb\tentailment\n")
    (rte / "train.tsv").write_text(header + "0\ta b\tc\tentailment\n1\tonly two columns\n")
    argv = [
        "train",
        "--task",
        "RTE",
        "--data-dir",
        str(tmp_path / "glue"),
        "--backbone",
        str(tiny_backbone_dir),
        "--output",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "train.tsv" in err and "line 3" in err
    (rte / "train.tsv").write_text(header + "0\ta b\tc\tmaybe\n")
    assert main(argv) == 1
    assert "maybe" in capsys.readouterr().err


def test_cli_unsupported_backbone(tmp_path, demo_data, capsys) -> None:
    from tiny_models import demo_vocabulary
    from transformers import AlbertConfig, AlbertForSequenceClassification, BertTokenizerFast

    folder = tmp_path / "albert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(demo_vocabulary()) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    AlbertForSequenceClassification(
        AlbertConfig(vocab_size=200, hidden_size=32, num_attention_heads=2, intermediate_size=64, embedding_size=16)
    ).save_pretrained(folder)
    argv = [
        "train",
        "--task",
        str(demo_data / "sentiment_train.csv"),
        "--backbone",
        str(folder),
        "--output",
        str(tmp_path / "o"),
        "--epochs",
        "1",
    ]
    assert main(argv) == 1
    assert "supported families" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ the real MiniLM
@pytest.mark.slow
def test_cli_trains_real_minilm_on_glue_slice(tmp_path, glue_dir) -> None:
    out = tmp_path / "rte"
    cmd = [
        sys.executable,
        "-m",
        "aa_deploy.cli",
        "train",
        "--task",
        "rte",
        "--data-dir",
        str(glue_dir),
        "--recipe",
        "search",
        "--train-size",
        "48",
        "--epochs",
        "2",
        "--max-length",
        "64",
        "--seed",
        "42",
        "--no-progress",
        "--json",
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # --json: the summary is all of stdout
    assert summary["metric"] == "accuracy" and 0.0 <= summary["test_value"] <= 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_examples"] == 277 and metrics["train_examples"] == 36
    cfg = json.loads((out / "aa_adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2" and cfg["num_hidden_layers"] == 6
    selection = json.loads((out / "selection.json").read_text())
    assert len(selection["switch_probabilities"]) == 6
    model = AdaptableAdapterModel.from_pretrained(out)
    assert model.kept_layers() == selection["selected_layers"]
    assert torch.is_tensor(next(iter(model.trainable_state_dict().values())))


def test_switch_temperature_annealing_schedule() -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from aa_deploy.training.trainer import SwitchAnnealingCallback

    model = AdaptableAdapterModel.from_backbone(tiny_model(), AdapterConfig(recipe="search"), task=TASK)
    callback = SwitchAnnealingCallback(model, start=1.0, final=0.01)
    state = TrainerState()
    state.max_steps = 100
    seen = []
    for step in (0, 50, 100):
        state.global_step = step
        callback.on_step_begin(TrainingArguments(output_dir="/tmp/unused", report_to=[]), state, TrainerControl())
        seen.append(model.adapter_layers["1"].switch.temperature)
    assert seen == pytest.approx([1.0, 0.1, 0.01])
