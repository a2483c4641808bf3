"""The compiler on the real default backbone (all-MiniLM-L6-v2, shipped on PyPI): slow but realistic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _export_helpers import make_run

from aa_deploy.backbones import resolve_backbone_path
from aa_deploy.contract.layout import BACKBONE_DATA_NAME as DATA_NAME
from aa_deploy.contract.manifest import read_manifest
from aa_deploy.export import export_run
from aa_deploy.export.size_report import fleet_report

pytestmark = pytest.mark.slow

SST2 = {"name": "sst2", "metric": "accuracy", "label_names": ["0", "1"], "is_pair": False}


@pytest.fixture(scope="module")
def minilm() -> Path:
    return Path(resolve_backbone_path(None))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("minilm")


@pytest.fixture(scope="module")
def runs(work: Path, minilm: Path) -> dict[str, Path]:
    return {
        "rte": make_run(work / "run-rte", minilm, selected=[1, 4], reduction_factor=16, max_length=128),
        "sst2": make_run(work / "run-sst2", minilm, selected=[0, 3, 5], task=SST2, reduction_factor=16, seed=7),
    }


def test_minilm_shared_export_two_tasks(work: Path, runs: dict[str, Path], glue_dir: Path) -> None:
    store = work / "store"
    rte = export_run(runs["rte"], work / "out-rte", backbone_store=store, data_dir=glue_dir)
    sst2 = export_run(runs["sst2"], work / "out-sst2", backbone_store=store, data_dir=glue_dir)
    for result, source in ((rte, "glue:rte/dev"), (sst2, "glue:sst2/dev")):
        assert result.validation.passed and result.validation.max_abs_diff <= 1e-4
        assert result.validation.inputs_source == source
        assert result.validation.pruned_max_abs_diff <= 1e-5
    # Each folder has its own backbone file (one link: the onnx package accepts it), byte-identical, so a
    # server shares one copy in memory; a reflink or --hardlink-backbone shares it on disk too.
    a, b = (work / "out-rte" / DATA_NAME).stat(), (work / "out-sst2" / DATA_NAME).stat()
    assert a.st_ino != b.st_ino and a.st_nlink == b.st_nlink == 1
    assert rte.manifest["backbone_data"]["sha256"] == sst2.manifest["backbone_data"]["sha256"]
    assert rte.sizes.backbone_bytes > 80_000_000 and rte.sizes.ratio_to_full_copy < 0.02
    fleet = fleet_report([work / "out-rte", work / "out-sst2"])
    assert fleet["bytes_on_disk"] == fleet["full_copies_bytes"]  # distinct inodes (reflinked blocks: not seen)
    manifest = read_manifest(work / "out-rte")
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["base_model"]["name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest["kept_layers"] == [1, 4] and manifest["num_layers"] == 6 and manifest["max_length"] == 128


def test_minilm_standalone_loads_in_plain_onnxruntime(work: Path, runs: dict[str, Path]) -> None:
    result = export_run(runs["rte"], work / "solo", standalone=True)
    assert result.validation.passed and not (work / "solo" / DATA_NAME).exists()
    session = ort.InferenceSession(str(work / "solo" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    ids = np.array([[101, 7592, 2088, 102, 0, 0], [101, 2023, 2003, 1037, 3231, 102]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    (logits,) = session.run(
        ["logits"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    )
    assert logits.shape == (2, 2) and np.isfinite(logits).all()


def test_minilm_optimized_graph_fuses_completely(work: Path, runs: dict[str, Path]) -> None:
    result = export_run(runs["sst2"], work / "opt", backbone_store=work / "store", optimize=True)
    assert result.validation.passed
    fused = result.manifest["graph"]["fused_operators"]
    assert fused["Attention"] == 6 and fused["EmbedLayerNormalization"] == 1
    assert fused["SkipLayerNormalization"] >= 12
    model = onnx.load(str(work / "opt" / "model.onnx"), load_external_data=False)
    assert {n.domain for n in model.graph.node} <= {"", "com.microsoft"}


def test_minilm_int8_with_dev_metric(work: Path, runs: dict[str, Path], glue_dir: Path) -> None:
    result = export_run(
        runs["rte"], work / "int8", backbone_store=work / "store", optimize=True, quantize="int8",
        data_dir=glue_dir, max_eval_examples=int(os.environ.get("AA_TEST_INT8_EXAMPLES", "96")),
    )  # fmt: skip
    metrics = result.metrics
    assert metrics is not None and metrics["metric"] == "accuracy"
    assert abs(metrics["int8"] - metrics["fp32"]) < 0.2
    assert result.sizes.backbone_bytes < 40_000_000  # int8 weights: about a quarter of fp32
