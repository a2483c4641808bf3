"""Export options: ExportOptions fields and `aa-deploy export` flags are one list, export_run takes the
object whole, and a run at non-default rational degrees compiles and validates."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _export_helpers import make_run, write_tiny_backbone

from aa_deploy import AdaptableAdapterModel, AdapterConfig
from aa_deploy.cli import build_parser
from aa_deploy.cli_options import GLUE_DIR_ENV, flag_of, options_from_args
from aa_deploy.export import ExportOptions, export_run

# Arguments of `aa-deploy export` that are not export settings: what to compile, where, how to print.
CLI_ONLY = {"run_dir", "output", "json"}


def export_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["export"]


def test_every_export_option_is_a_flag_and_every_flag_an_option() -> None:
    parser = export_parser()
    dests = {a.dest for a in parser._actions if a.dest != "help"}

    assert dests - CLI_ONLY == {f.name for f in dataclasses.fields(ExportOptions)}
    actions = {a.dest: a for a in parser._actions}
    for field in dataclasses.fields(ExportOptions):
        assert actions[field.name].option_strings == [flag_of(field)]
    assert actions["quantize"].choices == ["int8", "int8-backbone"]


def test_export_help_shows_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    help_text = " ".join(export_parser().format_help().split())

    assert "--atol ATOL max abs logit difference ONNX vs PyTorch (fp32) (default: 0.0001)" in help_text
    assert "(default: $AA_GLUE_DIR)" in help_text


def test_flags_round_trip_into_export_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    parser = export_parser()

    plain = parser.parse_args(["run", "--output", "out"])
    assert options_from_args(ExportOptions, plain) == ExportOptions()

    argv = ["run", "--output", "out", "--standalone", "--optimize", "--quantize", "int8", "--backbone-store", "s",
            "--data-dir", "g", "--atol", "0.01", "--task-name", "x", "--overwrite", "--max-eval-examples", "7"]  # fmt: skip
    options = options_from_args(ExportOptions, parser.parse_args(argv))
    expected = ExportOptions(
        standalone=True, optimize=True, quantize="int8", backbone_store="s", data_dir="g", atol=0.01, task_name="x",
        overwrite=True, max_eval_examples=7,
    )  # fmt: skip
    assert options == expected
    assert ExportOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options


def test_options_check_their_values_and_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        ExportOptions(quantize="int4")
    with pytest.raises(ValueError, match="atol must be > 0"):
        ExportOptions(atol=0)
    assert ExportOptions(backbone_store=tmp_path).backbone_store == str(tmp_path)  # type: ignore[arg-type]
    # keyword overrides are the fields' names: a typo is refused before any work, naming the options
    with pytest.raises(TypeError, match=r"unknown export option\(s\) \['quantise'\].*'quantize'"):
        export_run(tmp_path / "run", tmp_path / "out", quantise="int8")
    assert not (tmp_path / "out").exists()
    assert list(inspect.signature(export_run).parameters)[:3] == ["run_dir", "output", "options"]


def test_export_run_takes_the_options_whole_and_other_degrees_compile(tmp_path: Path) -> None:
    backbone = write_tiny_backbone(tmp_path / "bert", "bert")
    config = AdapterConfig(recipe="search", numerator_degree=3, denominator_degree=2, reduction_factor=4)
    task = {"name": "rte", "metric": "accuracy", "label_names": ["entailment", "not_entailment"], "is_pair": True}
    torch.manual_seed(0)
    model = AdaptableAdapterModel.from_backbone(str(backbone), config, task=task)
    with torch.no_grad():
        for rational in model.rationals().values():
            rational.numerator.copy_(torch.tensor([0.1, 0.7, 0.2, -0.05]))
            rational.denominator.copy_(torch.tensor([-0.3, 0.4]))
        for block in model.adapter_layers.values():
            block.switch.logits.copy_(torch.tensor([0.0, 1.0]))
    model.save_pretrained(tmp_path / "run")
    options = ExportOptions(backbone_store=str(tmp_path / "store"), task_name="rte-3-2")

    result = export_run(tmp_path / "run", tmp_path / "out", options)

    assert result.validation.passed and result.manifest["task"]["name"] == "rte-3-2"
    assert result.manifest["export_options"]["task_name"] == "rte-3-2"
    folded = result.manifest["adapter"]["folded_rationals"]
    assert folded and all(len(f["numerator"]) == 4 and len(f["denominator"]) == 2 for f in folded.values())
    assert all(f["denominator"] == pytest.approx([0.3, 0.4]) for f in folded.values())  # version A stores |b_j|


def test_an_adapterdrop_run_exports_at_the_depth_the_deployment_picks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AdapterDrop trains one model for every depth: ``--adapterdrop-eval-layers N`` exports it with the
    adapters of the N lowest layers removed (validated against the PyTorch model at that depth), and the
    option is refused for runs that were not trained that way or would lose every adapter."""
    import onnxruntime as ort
    from safetensors import safe_open

    from aa_deploy.contract.layout import WEIGHTS_NAME, adapter_key_layer
    from aa_deploy.export import RunFolderError

    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)  # built-in sentences: no score at the new depth
    backbone = write_tiny_backbone(tmp_path / "bert", "bert")
    task = {"name": "sst2", "metric": "accuracy", "label_names": ["negative", "positive"], "is_pair": False}
    model = AdaptableAdapterModel.from_pretrained(make_run(tmp_path / "run", backbone, recipe="adapterdrop", task=task))
    num_layers = int(model.config.num_hidden_layers)
    store = str(tmp_path / "store")

    full = export_run(tmp_path / "run", tmp_path / "full", ExportOptions(backbone_store=store))
    dropped = export_run(
        tmp_path / "run", tmp_path / "drop1", ExportOptions(backbone_store=store, adapterdrop_eval_layers=1)
    )

    assert full.manifest["kept_layers"] == list(range(num_layers))
    assert dropped.manifest["kept_layers"] == list(range(1, num_layers))
    assert dropped.validation.passed and dropped.manifest["export_options"]["adapterdrop_eval_layers"] == 1
    with safe_open(str(tmp_path / "drop1" / WEIGHTS_NAME), "np") as weights:
        assert {adapter_key_layer(k) for k in weights.keys()} - {None} == set(range(1, num_layers))
    ids = np.array([[2, 5, 6, 7, 3]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}

    def logits(folder: Path) -> np.ndarray:
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        return session.run(["logits"], {k: v for k, v in feeds.items() if k in names})[0]

    assert not np.allclose(logits(tmp_path / "full"), logits(tmp_path / "drop1"), atol=1e-4)
    # The folder describes the exported depth, not the one the run was trained to run at.
    selection = json.loads((tmp_path / "drop1" / "selection.json").read_text())
    assert selection["selected_layers"] == list(range(1, num_layers))
    metrics = json.loads((tmp_path / "drop1" / "metrics.json").read_text())
    assert metrics["adapterdrop_eval_layers"] == 1 and metrics["trained_adapterdrop_eval_layers"] == 0
    assert metrics["layers_kept"] == num_layers - 1 and "value" not in metrics and metrics["test_value"] is None
    assert dropped.manifest["metrics"]["trained_test"] is None and "at_export_depth" in dropped.manifest["metrics"]
    assert "at_export_depth" not in full.manifest["metrics"]
    # The run's own depth asked for explicitly is the plain export.
    same = export_run(tmp_path / "run", tmp_path / "d0", ExportOptions(backbone_store=store, adapterdrop_eval_layers=0))
    assert "at_export_depth" not in same.manifest["metrics"] and same.manifest["kept_layers"] == list(range(num_layers))

    with pytest.raises(RunFolderError, match=f"choose 0 to {num_layers - 1}"):
        export_run(
            tmp_path / "run", tmp_path / "all", ExportOptions(backbone_store=store, adapterdrop_eval_layers=num_layers)
        )
    with pytest.raises(ValueError, match="adapterdrop_eval_layers must be >= 0"):
        ExportOptions(adapterdrop_eval_layers=-1)
    make_run(tmp_path / "search", backbone, recipe="search", task=task)
    with pytest.raises(RunFolderError, match="applies to runs of the adapterdrop recipe.*'search' run"):
        export_run(tmp_path / "search", tmp_path / "s", ExportOptions(backbone_store=store, adapterdrop_eval_layers=1))
    assert not (tmp_path / "all").exists() and not (tmp_path / "s").exists()


def test_an_adapterdrop_export_at_another_depth_scores_itself_on_the_official_dev_set(
    tmp_path: Path, glue_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With GLUE data the export measures the score of the depth it wrote (the run's own scores were
    measured at another depth) and the card quotes that one."""
    backbone = write_tiny_backbone(tmp_path / "bert", "bert")
    task = {"name": "sst2", "metric": "accuracy", "label_names": ["negative", "positive"], "is_pair": False}
    make_run(tmp_path / "run", backbone, recipe="adapterdrop", task=task)
    options = ExportOptions(
        backbone_store=str(tmp_path / "store"), adapterdrop_eval_layers=1, data_dir=str(glue_dir), max_eval_examples=64
    )

    result = export_run(tmp_path / "run", tmp_path / "out", options)

    measured = result.manifest["metrics"]["at_export_depth"]
    assert measured["source"] == "glue:sst2/dev" and measured["num_examples"] == 64 and 0 <= measured["value"] <= 1
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["test_value"] == measured["value"] and metrics["test_examples"] == 64
    assert f"| official GLUE dev set | {measured['value']:.4f} |" in (tmp_path / "out" / "README.md").read_text()
    # The command line prints it.
    from aa_deploy.cli import main

    argv = ["export", str(tmp_path / "run"), "--output", str(tmp_path / "cli"), "--backbone-store", str(tmp_path / "store"),
            "--adapterdrop-eval-layers", "1", "--data-dir", str(glue_dir), "--max-eval-examples", "64"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"accuracy      {measured['value']:.4f} on 64 examples (glue:sst2/dev)" in printed
    assert "with the adapters of the 1 lowest layers dropped" in printed


def test_an_empty_environment_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """``AA_GLUE_DIR=`` (set but empty, as a Makefile may export it) is no explicit ``--data-dir``: the
    CLI would refuse a missing folder, while no folder falls back to built-in sentences."""
    monkeypatch.setenv(GLUE_DIR_ENV, "")
    assert build_parser().parse_args(["export", "run", "--output", "out"]).data_dir is None
    monkeypatch.setenv(GLUE_DIR_ENV, "/data/glue")
    assert build_parser().parse_args(["export", "run", "--output", "out"]).data_dir == "/data/glue"
