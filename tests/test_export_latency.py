"""``--measure-latency``: the export times the graph it wrote against the same model with an adapter at
every layer (ONNX Runtime, batch 1) and records it in the manifest and the model card, when it removed
layers. Off by default, as timings would make re-exports differ byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _export_helpers import make_run, write_tiny_backbone

from aa_deploy import AdaptableAdapterModel
from aa_deploy.export import ExportOptions, export_run

TASK = {"name": "sst2", "metric": "accuracy", "label_names": ["negative", "positive"], "is_pair": False}


def _search_run(tmp_path: Path, keep: set[int]) -> tuple[Path, AdaptableAdapterModel]:
    """A search run whose switches keep the layers of ``keep`` (random adapters), and its model."""
    backbone = write_tiny_backbone(tmp_path / "bert", "bert")
    run = make_run(tmp_path / "run", backbone, selected=sorted(keep), task=TASK)
    return run, AdaptableAdapterModel.from_pretrained(run)


def test_the_every_layer_counterpart_has_the_kept_layers_weights_everywhere_and_the_same_head(tmp_path: Path) -> None:
    _, model = _search_run(tmp_path, keep={1})
    pruned = model.pruned().eval()
    full = pruned.every_layer_counterpart()
    num_layers = int(model.config.num_hidden_layers)

    assert full.kept_layers() == list(range(num_layers)) and not full.training
    kept_state = pruned.adapter_layers["1"].state_dict()
    for index, block in full.adapter_layers.items():
        for name, value in block.state_dict().items():
            torch.testing.assert_close(value, kept_state[name], rtol=0, atol=0, msg=f"layer {index} {name}")
    for name, value in pruned.trainable_state_dict().items():
        if ".adapter_layers." not in f".{name}":  # the head
            torch.testing.assert_close(full.trainable_state_dict()[name], value, rtol=0, atol=0)
    # No layer kept: fresh adapters everywhere, the same head.
    bare = _search_run(tmp_path / "none", keep=set())[1].pruned()
    none_kept = bare.every_layer_counterpart()
    assert none_kept.kept_layers() == list(range(num_layers))
    for name, value in bare.trainable_state_dict().items():  # only the head: no adapter is kept
        torch.testing.assert_close(none_kept.trainable_state_dict()[name], value, rtol=0, atol=0)


def test_an_export_that_removed_layers_records_what_they_save_in_onnx_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, model = _search_run(tmp_path, keep={1})
    store = str(tmp_path / "store")

    plain = export_run(run, tmp_path / "plain", ExportOptions(backbone_store=store))
    assert "latency" not in plain.manifest  # off by default

    result = export_run(run, tmp_path / "out", ExportOptions(backbone_store=store, measure_latency=True))

    latency = result.manifest["latency"]
    assert result.manifest["kept_layers"] == [1]
    assert latency["kept_ms"] > 0 and latency["full_ms"] > 0
    assert latency["ratio"] == pytest.approx(latency["kept_ms"] / latency["full_ms"], rel=0.02)  # both rounded to µs
    assert "ONNX Runtime on CPU, 1 thread" in latency["setting"] and "batch 1" in latency["setting"]
    manifest = json.loads((tmp_path / "out" / "aa_export.json").read_text())
    assert manifest["latency"] == latency
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"{latency['full_ms']:.2f} ms | {latency['kept_ms']:.2f} ms" in card
    assert "the exported ONNX graph against the same model with an adapter at every layer" in card
    from aa_deploy.cli import main

    argv = ["export", str(run), "--output", str(tmp_path / "cli"), "--backbone-store", store, "--measure-latency"]
    assert main(argv) == 0
    assert "with an adapter at every layer" in capsys.readouterr().out


def test_an_export_that_keeps_every_layer_has_nothing_to_compare(tmp_path: Path) -> None:
    run, model = _search_run(tmp_path, keep=set(range(64)))  # more than the layers: every one
    options = ExportOptions(backbone_store=str(tmp_path / "store"), measure_latency=True)
    result = export_run(run, tmp_path / "out", options)
    assert result.manifest["kept_layers"] == list(range(int(model.config.num_hidden_layers)))
    assert "latency" not in result.manifest
