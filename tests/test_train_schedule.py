"""Training schedules (the default that learns, the paper's protocol) and the layer budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aa_deploy import AdaptableAdapterModel
from aa_deploy.contract.rules import kept_by_switches
from aa_deploy.training import TrainConfig, train
from aa_deploy.training.head_init import head_output_layer
from aa_deploy.training.protocols import DEFAULT, PAPER, epochs_for


def run_config(tmp_path: Path, backbone: Path, demo_data: Path, **overrides) -> TrainConfig:
    values = dict(
        task=str(demo_data / "sentiment_train.csv"), test_file=str(demo_data / "sentiment_test.csv"),
        output=str(tmp_path / "run"), backbone=str(backbone), epochs=3, min_steps=0, batch_size=16,
        learning_rate=1e-2, progress=False,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


# ------------------------------------------------------------------------------------------ schedules
def test_protocol_fills_the_flags_left_unset_and_a_given_flag_wins() -> None:
    default = TrainConfig(task="rte", output="o")
    assert default.protocol == "default"
    assert (default.learning_rate, default.epochs, default.min_steps, default.warmup_ratio, default.rational_init) == (
        DEFAULT.learning_rate, DEFAULT.epochs, DEFAULT.min_steps, DEFAULT.warmup_ratio, DEFAULT.rational_init,
    )  # fmt: skip
    paper = TrainConfig(task="rte", output="o", protocol="paper")
    assert (paper.learning_rate, paper.min_steps, paper.warmup_ratio, paper.rational_init) == (1e-4, 0, 0.0, "one")
    mixed = TrainConfig(task="rte", output="o", protocol="paper", learning_rate=3e-3, rational_init="gelu")
    assert (mixed.learning_rate, mixed.rational_init, mixed.epochs) == (3e-3, "gelu", PAPER.epochs)
    # The saved config records what ran; reading it back gives the same values.
    assert TrainConfig.from_dict(mixed.to_dict()) == mixed


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown protocol 'fast': choose one of default, paper"):
        TrainConfig(task="rte", output="o", protocol="fast")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"recipe": "search", "selected_layers": [0, 1]}, "--layers only applies to the focused and standard recipes"),
        ({"recipe": "search", "selection_from": "x"}, "--selection-from only applies to the focused and standard"),
        ({"recipe": "standard", "max_layers": 2}, "--max-layers only applies to the search recipe"),
        ({"recipe": "focused", "selected_layers": [0], "layer_cost": 0.1}, "--layer-cost prices the switches"),
        ({"recipe": "search", "max_layers": 0}, "--max-layers must be >= 1"),
        ({"warmup_ratio": 1.0}, "warmup ratio must be in"),
    ],
)
def test_contradictory_options_are_refused(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(task="rte", output="o", **overrides)


def test_min_steps_adds_epochs_only_where_the_data_is_small() -> None:
    assert epochs_for(20, 300, 3) == 100  # N = 100: 75 examples, batch 32
    assert epochs_for(20, 300, 24) == 20  # N = 1000: 480 steps already
    assert epochs_for(20, 0, 3) == 20


def test_run_records_its_schedule_and_takes_the_minimum_steps(tmp_path, tiny_backbone_dir, demo_data) -> None:
    # 135 training examples at batch 16 = 9 steps per epoch; 40 steps need 5 epochs.
    result = train(run_config(tmp_path, tiny_backbone_dir, demo_data, epochs=2, min_steps=40, warmup_ratio=0.2))
    metrics = result.metrics
    assert metrics["protocol"] == "default"
    assert metrics["epochs_run"] == 5 and metrics["optimizer_steps"] == 45
    assert len(metrics["history"]) == 5
    ran = json.loads((tmp_path / "run" / "training_config.json").read_text())
    assert ran["protocol"] == "default" and ran["min_steps"] == 40 and ran["warmup_ratio"] == 0.2


def test_default_schedule_starts_a_regression_head_at_the_label_mean(tmp_path, tiny_backbone_dir) -> None:
    rows = ["text,label"] + [
        f"the film is {w} .,{s}" for w, s in [("superb", 4.5), ("awful", 0.5), ("dull", 1.5), ("warm", 3.5)] * 6
    ]
    (tmp_path / "scores.csv").write_text("\n".join(rows) + "\n")
    common = dict(
        task=str(tmp_path / "scores.csv"),
        backbone=str(tiny_backbone_dir),
        epochs=1,
        min_steps=0,
        learning_rate=1e-9,
        rational_learning_rate=1e-9,
        switch_learning_rate=1e-9,
        progress=False,
    )
    from aa_deploy.data import load_task, low_data_split

    train_split, _ = low_data_split(load_task(str(tmp_path / "scores.csv")).train, None, 42, 0.25)
    mean = sum(e.label for e in train_split) / len(train_split)
    assert mean > 1.0
    # With every rate near 0 the head stays where it started: the training split's mean label, or 0.
    for protocol, expected in (("default", mean), ("paper", 0.0)):
        result = train(TrainConfig(output=str(tmp_path / protocol), protocol=protocol, **common))  # type: ignore[arg-type]
        model = AdaptableAdapterModel.from_pretrained(result.output)
        assert float(head_output_layer(model).bias.detach()[0]) == pytest.approx(expected, abs=1e-4)


# ------------------------------------------------------------------------------------------- budget
def test_budget_keeps_the_switches_that_prefer_their_adapter_most() -> None:
    logits = {0: [0.0, 2.0], 1: [0.0, 0.5], 2: [1.0, 0.0], 3: [0.0, 2.0], 4: [0.0, 3.0]}
    assert kept_by_switches(logits) == [0, 1, 3, 4]
    assert kept_by_switches(logits, 2) == [0, 4]  # 4 is strongest; 0 and 3 tie, the lower layer wins
    assert kept_by_switches(logits, 10) == [0, 1, 3, 4]
    assert kept_by_switches(logits, 1) == [4]


def test_budgeted_search_keeps_at_most_k_layers_and_its_pruned_model_matches(
    tmp_path, tiny_backbone_dir, demo_data
) -> None:
    result = train(run_config(tmp_path, tiny_backbone_dir, demo_data, recipe="search", max_layers=1))
    model = AdaptableAdapterModel.from_pretrained(result.output).eval()
    assert model.config.max_layers == 1 and model.kept_layers() == result.kept_layers
    unbudgeted = kept_by_switches(model.switch_logits())
    assert len(result.kept_layers) == min(1, len(unbudgeted)) and set(result.kept_layers) <= set(unbudgeted)
    # The model evaluated with the budget equals its pruned copy: what the compiler exports.
    ids = torch.tensor([[2, 15, 27, 33, 3]])
    with torch.no_grad():
        full = model(input_ids=ids).logits
        pruned = model.pruned().eval()(input_ids=ids).logits
    np.testing.assert_allclose(full.numpy(), pruned.numpy(), atol=1e-6)
    assert pruned.shape == full.shape and model.pruned().kept_layers() == result.kept_layers
    savings = result.metrics["savings"]
    assert savings["kept_layers"] == result.kept_layers and savings["num_layers"] == 3
    assert savings["adapter_params_kept"] * 3 == savings["adapter_params_full"] * len(result.kept_layers)
    assert savings["latency_ms_kept"] > 0 and savings["latency_ms_full"] > 0
    assert result.metrics["layer_budget"] == 1


def test_layer_cost_pushes_switches_towards_skipping(tmp_path, tiny_backbone_dir, demo_data) -> None:
    free = train(run_config(tmp_path / "free", tiny_backbone_dir, demo_data, recipe="search", epochs=2, seed=3))
    priced = train(run_config(tmp_path / "priced", tiny_backbone_dir, demo_data, recipe="search", epochs=2, seed=3,
                              layer_cost=5.0))  # fmt: skip
    free_p = json.loads((free.output / "selection.json").read_text())["switch_probabilities"]
    priced_p = json.loads((priced.output / "selection.json").read_text())["switch_probabilities"]
    assert sum(priced_p) < sum(free_p) - 0.3


def test_an_explicit_epoch_count_is_taken_literally() -> None:
    assert TrainConfig(task="rte", output="o", epochs=3).min_steps == 0
    assert TrainConfig(task="rte", output="o", epochs=3, min_steps=50).min_steps == 50
    assert TrainConfig(task="rte", output="o").min_steps == DEFAULT.min_steps


def test_card_reports_the_latency_the_kept_layers_save(tmp_path, tiny_backbone_dir, demo_data) -> None:
    from aa_deploy.card import write_model_card

    result = train(run_config(tmp_path, tiny_backbone_dir, demo_data, recipe="search", max_layers=1))
    savings = result.metrics["savings"]
    text = write_model_card(result.output).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| latency: adapters at every layer"))
    assert f"{savings['latency_ms_full']:.2f} ms" in row and f"{savings['latency_ratio']:.2f}×" in row
    assert f"| layers with an adapter | 3 | {len(result.kept_layers)} |" in text
