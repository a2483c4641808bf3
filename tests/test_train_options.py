"""Training options: TrainConfig fields and `aa-deploy train` flags are one list; the rational degrees
are options, and every preset is either valid at the asked degrees or refused with a clear error."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from aa_deploy import AdaptableAdapterModel, AdapterConfig
from aa_deploy.cli import build_parser, main
from aa_deploy.cli_options import GLUE_DIR_ENV, flag_of, options_from_args
from aa_deploy.modeling.rational import RationalActivation
from aa_deploy.rational_presets import MAX_DEGREE, RATIONAL_PRESETS, preset_coefficients
from aa_deploy.training import TrainConfig
from aa_deploy.training.run import build_adapter_config
from aa_deploy.training.run_metrics import RunMetrics

TASK = {"name": "toy", "metric": "accuracy", "label_names": ["neg", "pos"], "is_pair": False}
# The format of metrics.json: the quality grid, the card, push and the export manifest read these keys.
METRICS_KEYS = [
    "task", "recipe", "metric", "value", "test_value", "best_epoch", "dev", "test", "history", "selected_layers",
    "layers_kept", "num_layers", "train_size", "train_examples", "dev_examples", "test_examples", "seed",
    "trained_params", "adapter_params", "adapter_bytes", "train_loss", "wall_time_s", "device", "torch", "host",
    "protocol", "epochs_run", "optimizer_steps", "layer_budget", "savings",
]  # fmt: skip


def train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def test_every_train_config_field_is_a_flag_and_every_flag_a_field() -> None:
    actions = option_actions(train_parser())

    # --json only chooses how the summary is printed: the one flag that is not a training option.
    assert set(actions) - {"json"} == {f.name for f in dataclasses.fields(TrainConfig)}
    for field in dataclasses.fields(TrainConfig):
        assert actions[field.name].option_strings == [flag_of(field)]
    # the flags users already type keep their names
    assert flag_of(next(f for f in dataclasses.fields(TrainConfig) if f.name == "selected_layers")) == "--layers"
    assert actions["switch_temperature_final"].option_strings == ["--anneal-to"]
    assert actions["progress"].option_strings == ["--no-progress"]


def test_train_help_shows_every_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    help_text = " ".join(train_parser().format_help().split())

    for field in dataclasses.fields(TrainConfig):
        default = field.default
        if default is dataclasses.MISSING or default is None or isinstance(default, bool):
            continue
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        assert f"(default: {shown})" in help_text, field.name
    assert "--numerator-degree NUMERATOR_DEGREE degree of the rational's numerator P (default: 5)" in help_text
    assert "--denominator-degree DENOMINATOR_DEGREE degree of the rational's denominator Q (default: 4)" in help_text
    assert "(default: $AA_GLUE_DIR)" in help_text


def test_flags_round_trip_into_train_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    parser = train_parser()

    plain = options_from_args(TrainConfig, parser.parse_args(["--task", "rte", "--output", "out"]))
    assert plain == TrainConfig(task="rte", output="out")  # CLI defaults are the dataclass defaults

    argv = [
        "--task", "a.csv", "--output", "run", "--recipe", "focused", "--layers", "3,0,3",
        "--no-progress", "--overwrite", "--rational-init", "identity", "--rational-version", "B",
        "--numerator-degree", "3", "--denominator-degree", "2", "--dev-fraction", "0.5",
    ]  # fmt: skip
    cfg = options_from_args(TrainConfig, parser.parse_args(argv))
    assert cfg.selected_layers == [0, 3]
    assert cfg.progress is False and cfg.overwrite is True
    # the switch options belong to the search recipe (tests/test_train_cli.py: contradictions are refused)
    search = ["--task", "a.csv", "--output", "run", "--anneal-to", "0.02", "--switch-learning-rate", "0.1"]
    searching = options_from_args(TrainConfig, parser.parse_args(search))
    assert searching.switch_temperature_final == 0.02 and searching.switch_learning_rate == 0.1
    assert (cfg.rational_version, cfg.numerator_degree, cfg.denominator_degree) == ("B", 3, 2)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_glue_dir_from_the_environment_is_the_flag_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GLUE_DIR_ENV, "/data/glue")

    args = train_parser().parse_args(["--task", "rte", "--output", "out"])

    assert options_from_args(TrainConfig, args).data_dir == "/data/glue"
    assert TrainConfig(task="rte", output="out").data_dir is None  # library callers are not affected


# ------------------------------------------------------------------------------ the rational degrees
@pytest.mark.parametrize("version", ["A", "B"])
@pytest.mark.parametrize(("numerator", "denominator"), [(1, 1), (3, 2), (5, 4), (7, 6), (MAX_DEGREE, MAX_DEGREE)])
def test_exact_presets_are_their_function_at_every_degree(version: str, numerator: int, denominator: int) -> None:
    x = torch.linspace(-4, 4, 101)

    one = RationalActivation("one", version, numerator, denominator)
    identity = RationalActivation("identity", version, numerator, denominator)

    assert one.numerator.numel() == numerator + 1 and one.denominator.numel() == denominator
    torch.testing.assert_close(one(x), torch.ones_like(x))
    torch.testing.assert_close(identity(x), x)


@pytest.mark.parametrize("init", ["gelu", "relu", "leaky_relu"])
def test_tabulated_presets_refuse_other_degrees_and_version_b(init: str) -> None:
    preset_coefficients(init, "A", 5, 4)  # the tabulated case is valid
    for version, numerator, denominator in (("A", 3, 2), ("A", 5, 5), ("B", 5, 4)):
        with pytest.raises(ValueError, match=r"tabulated for version A only, at degrees 5/4 .*one, identity"):
            TrainConfig(
                task="t", output="o", rational_init=init, rational_version=version,
                numerator_degree=numerator, denominator_degree=denominator,
            )  # fmt: skip
        with pytest.raises(ValueError, match="tabulated"):
            AdapterConfig(rational_init=init, rational_version=version, numerator_degree=numerator,  # type: ignore[arg-type]
                          denominator_degree=denominator)  # fmt: skip


@pytest.mark.parametrize(("numerator", "denominator"), [(0, 4), (5, 0), (MAX_DEGREE + 1, 4), (5, -1)])
def test_degrees_out_of_range_are_refused(numerator: int, denominator: int) -> None:
    with pytest.raises(ValueError, match=r"degree must be an integer from 1 to 10"):
        TrainConfig(task="t", output="o", numerator_degree=numerator, denominator_degree=denominator)


def test_every_preset_name_is_allowed_at_the_default_degrees() -> None:
    for init in RATIONAL_PRESETS:
        numerator, denominator = preset_coefficients(init)
        assert (len(numerator), len(denominator)) == (6, 4)


def test_degrees_reach_the_model(tiny_backbone_dir: Path) -> None:
    cfg = TrainConfig(task="t", output="o", numerator_degree=3, denominator_degree=2, rational_init="identity")

    adapter_config = build_adapter_config(cfg)
    model = AdaptableAdapterModel.from_backbone(tiny_model(), adapter_config, task=TASK)

    assert (adapter_config.numerator_degree, adapter_config.denominator_degree) == (3, 2)
    for rational in model.rationals().values():
        assert rational.numerator.numel() == 4 and rational.denominator.numel() == 2


def test_cli_refuses_a_preset_without_coefficients_at_the_asked_degrees(tmp_path, demo_data, capsys) -> None:
    argv = ["train", "--task", str(demo_data / "sentiment_train.csv"), "--rational-init", "gelu",
            "--numerator-degree", "3", "--output", str(tmp_path / "out")]  # fmt: skip

    assert main(argv) == 1

    err = capsys.readouterr().err
    assert "rational init 'gelu' is a fit tabulated for version A only, at degrees 5/4" in err
    assert not (tmp_path / "out").exists()


def test_a_run_at_other_degrees_trains_and_reloads(tmp_path, tiny_backbone_dir, demo_data) -> None:
    from aa_deploy.training import train

    result = train(TrainConfig(
        task=str(demo_data / "sentiment_train.csv"), output=str(tmp_path / "run"), backbone=str(tiny_backbone_dir),
        epochs=1, min_steps=0, progress=False, numerator_degree=3, denominator_degree=2,
    ))  # fmt: skip

    model = AdaptableAdapterModel.from_pretrained(result.output)
    assert {tuple(r.numerator.shape) + tuple(r.denominator.shape) for r in model.rationals().values()} == {(4, 2)}
    # metrics.json keeps its format, and RunMetrics reads it back whole
    written = json.loads((result.output / "metrics.json").read_text())
    assert sorted(written) == sorted(METRICS_KEYS)  # the file is written with sorted keys
    assert [f.name for f in dataclasses.fields(RunMetrics)] == METRICS_KEYS
    assert RunMetrics.from_dict(written).to_dict() == written == result.metrics
    assert json.loads((result.output / "training_config.json").read_text())["numerator_degree"] == 3
