"""Export options: ExportOptions fields and `aa-deploy export` flags are one list, export_run takes the
object whole, and a run at non-default rational degrees compiles and validates."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import torch
from _export_helpers import write_tiny_backbone

from aa_deploy import AdaptableAdapterModel, AdapterConfig
from aa_deploy.cli import build_parser
from aa_deploy.cli_options import flag_of, options_from_args
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
    assert actions["quantize"].choices == ["int8"]


def test_export_help_shows_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AA_GLUE_DIR", raising=False)
    help_text = " ".join(export_parser().format_help().split())

    assert "--atol ATOL max abs logit difference ONNX vs PyTorch (fp32) (default: 0.0001)" in help_text
    assert "(default: $AA_GLUE_DIR)" in help_text


def test_flags_round_trip_into_export_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AA_GLUE_DIR", raising=False)
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
