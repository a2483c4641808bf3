"""End-to-end compiler tests on tiny random encoders of every supported family (seconds each)."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _export_helpers import FAMILIES, make_run, write_tiny_backbone
from safetensors import safe_open
from tokenizers import Tokenizer

from aa_deploy.contract.layout import ADAPTER_KEY_PREFIX
from aa_deploy.contract.layout import BACKBONE_DATA_NAME as DATA_NAME
from aa_deploy.contract.manifest import MANIFEST_NAME, REQUIRED_KEYS, read_manifest
from aa_deploy.export import export_run
from aa_deploy.export.errors import RunFolderError, ValidationError
from aa_deploy.export.size_report import fleet_report
from aa_deploy.modeling import AdaptableAdapterModel

SST2 = {"name": "sst2", "metric": "accuracy", "label_names": ["negative", "positive"], "is_pair": False}
STSB = {"name": "stsb", "metric": "spearman", "label_names": None, "is_pair": True}


@pytest.fixture(scope="module")
def backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {family: write_tiny_backbone(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory: pytest.TempPathFactory, backbones: dict[str, Path]) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "rte", backbones["bert"], selected=[0, 2])


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory: pytest.TempPathFactory, bert_run: Path, store: Path) -> Path:
    out = tmp_path_factory.mktemp("exports") / "rte"
    export_run(bert_run, out, backbone_store=store)
    return out


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _encode_like_server(folder: Path, texts: list[tuple[str, str | None]], max_length: int) -> dict[str, np.ndarray]:
    """Tokenise with the `tokenizers` library from the exported tokenizer.json, as the server does."""
    manifest = read_manifest(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=manifest["pad_token_id"])
    encodings = tokenizer.encode_batch([t if p is None else (t, p) for t, p in texts])
    arrays = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    return {name: arrays[name] for name in manifest["inputs"]}


def _torch_logits(run: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    model = AdaptableAdapterModel.from_pretrained(run)
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()


# ------------------------------------------------------------------------------------ every family
@pytest.mark.parametrize("family", FAMILIES)
def test_export_validates_for_every_family(
    family: str, backbones: dict[str, Path], store: Path, tmp_path: Path
) -> None:
    run = make_run(tmp_path / "run", backbones[family], selected=[1])
    result = export_run(run, tmp_path / "out", backbone_store=store)
    report = result.validation
    assert report.passed and report.max_abs_diff <= 1e-4
    assert report.pruned_max_abs_diff <= 1e-5
    assert {c["name"] for c in report.cases} >= {"single", "shortest", "padded_batch", "max_length"}
    assert any(c["batch"] == 1 for c in report.cases) and any(c["batch"] > 1 and c["padded"] for c in report.cases)
    manifest = read_manifest(tmp_path / "out")
    assert manifest["kept_layers"] == [1] and manifest["num_layers"] == 3
    expected_inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if family in ("bert", "electra") else [])
    assert manifest["inputs"] == expected_inputs
    assert manifest["base_model"]["model_type"] == family
    # Independent check: the server's tokenisation path, ORT on the final folder vs. the trained model.
    texts = [("the cat sat on the mat", "two dogs are playing"), ("no", "what time does the train leave")]
    inputs = _encode_like_server(tmp_path / "out", texts, manifest["max_length"])
    (logits,) = _session(tmp_path / "out" / "model.onnx").run(["logits"], inputs)
    np.testing.assert_allclose(logits, _torch_logits(run, inputs), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------- the folder
def test_folder_layout_and_manifest_contract(bert_export: Path, bert_run: Path) -> None:
    names = {p.name for p in bert_export.iterdir()}
    assert {"model.onnx", DATA_NAME, MANIFEST_NAME, "config.json", "tokenizer.json", "aa_adapter_config.json",
            "aa_adapter_model.safetensors"} <= names  # fmt: skip
    assert not [n for n in bert_export.parent.iterdir() if n.name.startswith(".")]  # no staging leftovers
    manifest = json.loads((bert_export / MANIFEST_NAME).read_text())
    assert set(REQUIRED_KEYS) <= set(manifest)
    assert manifest["format"] == "aa-deploy-onnx" and manifest["format_version"] == 1
    assert manifest["task"] == {"name": "rte", "metric": "accuracy", "label_names": ["entailment", "not_entailment"],
                                "is_pair": True}  # fmt: skip
    assert manifest["num_labels"] == 2 and manifest["problem_type"] == "single_label_classification"
    assert manifest["outputs"] == ["logits"] and manifest["pad_token_id"] == 0 and manifest["max_length"] == 48
    assert manifest["mode"] == "shared" and manifest["optimized"] is False and manifest["quantization"] is None
    data = manifest["backbone_data"]
    assert data["file"] == DATA_NAME and len(data["sha256"]) == 64
    assert "bert.embeddings.word_embeddings.weight" in data["tensors"]
    assert set(manifest["base_model"]) >= {"name_or_path", "model_type", "config_fingerprint", "weights_fingerprint"}
    assert manifest["validation"]["passed"] is True and manifest["validation"]["num_inputs"] > 10
    sizes = manifest["sizes"]
    assert sizes["backbone_bytes"] == (bert_export / DATA_NAME).stat().st_size
    assert sizes["full_copy_bytes"] == sizes["backbone_bytes"] + sizes["task_bytes"]
    assert 0 < sizes["ratio_to_full_copy"] < 1
    on_disk = sum(p.stat().st_size for p in bert_export.iterdir() if p.name != DATA_NAME)
    assert sizes["task_bytes"] == on_disk
    config = json.loads((bert_export / "config.json").read_text())
    assert config["id2label"] == {"0": "entailment", "1": "not_entailment"} and config["model_type"] == "bert"


def test_graph_io_signature_and_no_custom_domains(bert_export: Path) -> None:
    model = onnx.load(str(bert_export / "model.onnx"), load_external_data=False)
    # The onnx package's own checks on the shared folder: tests/test_export_tools.py.
    assert {node.domain for node in model.graph.node} <= {""}
    assert not model.functions
    assert not [t.name for t in model.graph.initializer if "switch" in t.name]
    assert not {"RandomUniform", "RandomUniformLike", "Dropout"} & {n.op_type for n in model.graph.node}
    inputs = {v.name: v.type.tensor_type for v in model.graph.input}
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    for tensor_type in inputs.values():
        assert tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in tensor_type.shape.dim] == ["batch", "sequence"]
    (output,) = model.graph.output
    assert output.name == "logits" and output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == ["batch", 2]
    # Backbone tensors are external (in the store file), adapters and head are inline.
    external = {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    inline = {t.name for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL}
    assert "bert.embeddings.word_embeddings.weight" in external
    assert {"adapter_layers.0.adapter.down.weight.T", "classifier.weight"} <= inline
    assert not [n for n in inline | external if n.startswith("adapter_layers.1.")]  # deselected: removed
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            assert info["location"] == DATA_NAME and int(info["offset"]) % 4096 == 0


def test_plain_onnxruntime_loads_the_shared_folder(bert_export: Path, bert_run: Path) -> None:
    session = ort.InferenceSession(str(bert_export / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = _encode_like_server(bert_export, [("a quick brown fox", None)], 48)
    (logits,) = session.run(None, inputs)
    np.testing.assert_allclose(logits, _torch_logits(bert_run, inputs), atol=1e-4, rtol=0)


def test_compact_artefact_is_pruned_and_loads(bert_export: Path, bert_run: Path) -> None:
    with safe_open(str(bert_export / "aa_adapter_model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert not [k for k in keys if ".switch." in k]
    assert {int(k.split(".")[1]) for k in keys if k.startswith("adapter_layers.")} == {0, 2}
    assert any(k.endswith("activation.numerator") for k in keys) and "backbone.classifier.weight" in keys
    compact = AdaptableAdapterModel.from_pretrained(bert_export)
    assert compact.config.pruned and compact.config.selected_layers == [0, 2]
    inputs = _encode_like_server(bert_export, [("she said she would come", "but she never did"), ("no", "yes")], 48)
    with torch.no_grad():
        got = compact(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
    np.testing.assert_allclose(got, _torch_logits(bert_run, inputs), atol=1e-5, rtol=0)


def test_pruned_model_equals_trained_model(bert_run: Path) -> None:
    trained = AdaptableAdapterModel.from_pretrained(bert_run)
    pruned = trained.pruned().eval()
    assert sorted(int(i) for i in pruned.adapter_layers) == [0, 2]
    assert not [n for n, _ in pruned.named_parameters() if ".switch." in n]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(trained.config.base_model_name_or_path))
    enc = tokenizer(["the cat sat", "a much longer sentence about the museum collection"], ["x", "y z"],
                    padding=True, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        diff = (trained(**enc).logits - pruned(**enc).logits).abs().max().item()
    assert diff <= 1e-5


# --------------------------------------------------------------------------------------- sharing
def test_hardlink_option_shares_one_backbone_inode(tmp_path: Path, backbones: dict[str, Path], store: Path) -> None:
    a = make_run(tmp_path / "a", backbones["bert"], selected=[0], seed=3)
    b = make_run(tmp_path / "b", backbones["bert"], selected=[1, 2], task=SST2, seed=4)
    ra = export_run(a, tmp_path / "out_a", backbone_store=store, hardlink_backbone=True)
    rb = export_run(b, tmp_path / "out_b", backbone_store=store, hardlink_backbone=True)
    assert ra.manifest["backbone_data"]["sharing"] == "hardlink" and ra.sizes.backbone_sharing == "hardlink"
    assert ra.manifest["backbone_data"]["linked"] is True and "hard-linked" in ra.sizes.summary
    sa, sb = (tmp_path / "out_a" / DATA_NAME).stat(), (tmp_path / "out_b" / DATA_NAME).stat()
    assert (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
    assert ra.manifest["backbone_data"]["sha256"] == rb.manifest["backbone_data"]["sha256"]
    stored = store / "objects" / f"sha256-{ra.manifest['backbone_data']['sha256']}" / DATA_NAME
    assert stored.stat().st_ino == sa.st_ino and sa.st_nlink >= 3
    fleet = fleet_report([tmp_path / "out_a", tmp_path / "out_b"])
    assert fleet["bytes_on_disk"] == ra.sizes.task_bytes + rb.sizes.task_bytes + sa.st_size
    assert fleet["bytes_on_disk"] < fleet["full_copies_bytes"]
    assert rb.manifest["task"]["is_pair"] is False and rb.manifest["task"]["name"] == "sst2"


def test_own_file_when_hard_links_fail(
    tmp_path: Path, bert_run: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr("aa_deploy.export.backbone_store.os.link", no_link)
    with pytest.warns(UserWarning, match="gave the folder its own file"):
        result = export_run(bert_run, tmp_path / "out", backbone_store=store, hardlink_backbone=True)
    assert result.manifest["backbone_data"]["linked"] is False and result.warnings
    assert result.manifest["backbone_data"]["sharing"] in ("reflink", "copy")
    copy = (tmp_path / "out" / DATA_NAME).stat()
    assert copy.st_nlink == 1
    _session(tmp_path / "out" / "model.onnx")


def test_standalone_is_self_contained(tmp_path: Path, bert_run: Path, bert_export: Path) -> None:
    result = export_run(bert_run, tmp_path / "solo", standalone=True)
    folder = tmp_path / "solo"
    assert not (folder / DATA_NAME).exists()
    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    model = onnx.load(str(folder / "model.onnx"))
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert result.manifest["mode"] == "standalone" and result.manifest["backbone_data"] is None
    assert result.sizes.backbone_bytes == 0 and result.sizes.ratio_to_full_copy == 1.0
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    inputs = _encode_like_server(folder, [("the cat", "the dog"), ("water boils at sea level", "no")], 48)
    (solo,) = _session(folder / "model.onnx").run(["logits"], inputs)
    (shared,) = _session(bert_export / "model.onnx").run(["logits"], inputs)
    np.testing.assert_array_equal(solo, shared)


def test_reexport_is_byte_identical(tmp_path: Path, bert_run: Path, bert_export: Path, store: Path) -> None:
    export_run(bert_run, tmp_path / "again", backbone_store=store)
    files = sorted(p.name for p in bert_export.iterdir())
    assert files == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in files:
        assert (bert_export / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    # A fresh store reproduces the same content-addressed backbone.
    fresh = export_run(bert_run, tmp_path / "fresh", backbone_store=tmp_path / "store2")
    assert fresh.manifest["backbone_data"]["sha256"] == read_manifest(bert_export)["backbone_data"]["sha256"]
    assert (tmp_path / "fresh" / "model.onnx").read_bytes() == (bert_export / "model.onnx").read_bytes()


# ------------------------------------------------------------------------------------ edge cases
def test_no_layer_selected_exports_backbone_and_head(tmp_path: Path, backbones: dict[str, Path], store: Path) -> None:
    run = make_run(tmp_path / "run", backbones["bert"], selected=[])
    result = export_run(run, tmp_path / "out", backbone_store=store)
    assert result.manifest["kept_layers"] == [] and result.validation.passed
    model = onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False)
    assert not [t.name for t in model.graph.initializer if t.name.startswith("adapter_layers.")]
    assert result.manifest["adapter"]["folded_rationals"] == {}


def test_every_layer_selected(tmp_path: Path, backbones: dict[str, Path], store: Path) -> None:
    run = make_run(tmp_path / "run", backbones["roberta"], selected=[0, 1, 2])
    result = export_run(run, tmp_path / "out", backbone_store=store)
    assert result.manifest["kept_layers"] == [0, 1, 2] and result.validation.passed


def test_zero_denominators_become_polynomials(tmp_path: Path, backbones: dict[str, Path], store: Path) -> None:
    counts = {}
    for zero in (False, True):
        run = make_run(tmp_path / f"run{zero}", backbones["bert"], selected=[0, 2], zero_denominator=zero)
        result = export_run(run, tmp_path / f"out{zero}", backbone_store=store)
        assert result.validation.passed
        model = onnx.load(str(tmp_path / f"out{zero}" / "model.onnx"), load_external_data=False)
        counts[zero] = Counter(n.op_type for n in model.graph.node)
        if zero:
            assert all(not s["denominator"] for s in result.manifest["adapter"]["folded_rationals"].values())
    assert counts[False]["Abs"] - counts[True]["Abs"] == 2  # one |x| per rational layer, gone
    assert counts[False]["Div"] - counts[True]["Div"] == 2


def test_version_b_relu_recipe_and_regression(tmp_path: Path, backbones: dict[str, Path], store: Path) -> None:
    b = make_run(tmp_path / "b", backbones["distilbert"], selected=[0, 2], rational_version="B")
    assert export_run(b, tmp_path / "out_b", backbone_store=store).validation.passed
    relu = make_run(tmp_path / "relu", backbones["bert"], recipe="standard", task=SST2)
    result = export_run(relu, tmp_path / "out_relu", backbone_store=store)
    assert result.manifest["kept_layers"] == [0, 1, 2] and result.manifest["adapter"]["kind"] == "relu"
    reg = make_run(tmp_path / "reg", backbones["electra"], selected=[2], task=STSB)
    result = export_run(reg, tmp_path / "out_reg", backbone_store=store)
    assert result.manifest["num_labels"] == 1 and result.manifest["problem_type"] == "regression"
    assert result.manifest["task"]["label_names"] is None


def test_optimized_and_int8(tmp_path: Path, bert_run: Path, store: Path) -> None:
    opt = export_run(bert_run, tmp_path / "opt", backbone_store=store, optimize=True)
    assert opt.validation.passed and opt.manifest["optimized"] is True
    fused = opt.manifest["graph"]["fused_operators"]
    assert fused.get("Attention") == 3 and fused.get("SkipLayerNormalization", 0) >= 3
    domains = {n.domain for n in onnx.load(str(tmp_path / "opt" / "model.onnx"), load_external_data=False).graph.node}
    assert domains <= {"", "com.microsoft"}
    q = export_run(bert_run, tmp_path / "int8", backbone_store=store, optimize=True, quantize="int8")
    assert q.manifest["quantization"] == "int8" and q.validation.enforced is False
    assert q.validation.max_abs_diff < 0.5  # reported, not enforced
    model = onnx.load(str(tmp_path / "int8" / "model.onnx"), load_external_data=False)
    assert {"MatMulInteger", "DynamicQuantizeLinear"} & {n.op_type for n in model.graph.node}
    assert q.manifest["backbone_data"]["sha256"] != opt.manifest["backbone_data"]["sha256"]
    assert q.manifest["backbone_data"]["tensors"]  # quantised backbone weights are shared too


def _adapter_weight_types(folder: Path) -> dict[str, int]:
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return {t.name: t.data_type for t in model.graph.initializer if t.name.startswith(ADAPTER_KEY_PREFIX)}


def test_int8_quantises_the_adapters_and_int8_backbone_keeps_them_fp32(
    tmp_path: Path, bert_run: Path, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    every = export_run(bert_run, tmp_path / "int8", backbone_store=store, quantize="int8")
    caplog.clear()  # the first export's own record is captured too when an earlier test left INFO on
    with caplog.at_level(logging.INFO, logger="aa_deploy.export"):
        backbone_only = export_run(bert_run, tmp_path / "int8b", backbone_store=store, quantize="int8-backbone")
    # The bare backbone has no adapters: the int8 export's store entry serves, nothing is exported again.
    assert not [r for r in caplog.records if r.getMessage().startswith("exporting the bare backbone")]
    quantised = _adapter_weight_types(tmp_path / "int8")
    assert quantised["adapter_layers.0.adapter.down.weight.T_quantized"] == onnx.TensorProto.INT8
    assert "adapter_layers.0.adapter.down.weight.T" not in quantised
    kept = _adapter_weight_types(tmp_path / "int8b")
    assert kept["adapter_layers.0.adapter.down.weight.T"] == onnx.TensorProto.FLOAT
    assert not any(name.endswith("_quantized") for name in kept)
    assert every.manifest["quantization"] == "int8" and backbone_only.manifest["quantization"] == "int8-backbone"
    assert every.manifest["graph"]["quantization"]["adapters"] == "int8"
    assert backbone_only.manifest["graph"]["quantization"]["adapters"] == "float32"
    # The same quantised backbone: one store object serves both kinds of INT8 task.
    assert every.manifest["backbone_data"]["sha256"] == backbone_only.manifest["backbone_data"]["sha256"]


def test_int8_reports_the_dev_metric(tmp_path: Path, bert_run: Path, store: Path, glue_dir: Path) -> None:
    result = export_run(
        bert_run, tmp_path / "int8", backbone_store=store, quantize="int8", data_dir=glue_dir, max_eval_examples=64
    )
    metrics = result.manifest["metrics"]["quantization"]
    assert metrics["metric"] == "accuracy" and metrics["num_examples"] == 64
    assert 0.0 <= metrics["fp32"] <= 1.0 and 0.0 <= metrics["int8"] <= 1.0
    assert result.validation.inputs_source == "glue:rte/dev"


# ------------------------------------------------------------------------------------------ errors
def test_failed_validation_writes_nothing(tmp_path: Path, bert_run: Path, store: Path) -> None:
    out = tmp_path / "exports" / "rte"
    with pytest.raises(ValidationError, match="differs from PyTorch") as info:
        export_run(bert_run, out, backbone_store=store, atol=1e-15)
    assert info.value.report["cases"]
    assert not out.exists()
    assert list((tmp_path / "exports").iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path: Path, bert_run: Path, store: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_run(bert_run, out, backbone_store=store)
    export_run(bert_run, out, backbone_store=store, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.onnx").is_file()


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing_weights", "no aa_adapter_model.safetensors"),
        ("truncated_weights", "corrupted"),
        ("bad_config", "not valid JSON"),
        ("selection_mismatch", "different runs"),
        ("missing_folder", "does not exist"),
    ],
)
def test_damaged_run_folder_gives_clear_error(
    damage: str, message: str, tmp_path: Path, bert_run: Path, store: Path
) -> None:
    run = _copy_run(bert_run, tmp_path / "run")
    if damage == "missing_weights":
        (run / "aa_adapter_model.safetensors").unlink()
    elif damage == "truncated_weights":
        data = (run / "aa_adapter_model.safetensors").read_bytes()
        (run / "aa_adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "bad_config":
        (run / "aa_adapter_config.json").write_text("{not json")
    elif damage == "selection_mismatch":
        selection = json.loads((run / "selection.json").read_text())
        selection["selected_layers"] = [1]
        (run / "selection.json").write_text(json.dumps(selection))
    elif damage == "missing_folder":
        run = tmp_path / "nowhere" / "run"
    with pytest.raises(RunFolderError, match=message):
        export_run(run, tmp_path / "out", backbone_store=store)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_export(tmp_path: Path, bert_run: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aa_deploy.cli import main

    code = main(["export", str(bert_run), "--output", str(tmp_path / "out"), "--backbone-store", str(store),
                 "--task-name", "rte-small"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "validation" in printed and "of a full copy" in printed
    assert read_manifest(tmp_path / "out")["task"]["name"] == "rte-small"
    code = main(["export", str(tmp_path / "missing"), "--output", str(tmp_path / "out2")])
    assert code == 1 and "does not exist" in capsys.readouterr().err


def test_store_location_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from aa_deploy.export.backbone_store import default_store_path

    monkeypatch.setenv("AA_DEPLOY_HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / "backbones"
    monkeypatch.delenv("AA_DEPLOY_HOME")
    assert default_store_path() == Path(os.path.expanduser("~/.cache/aa_deploy/backbones"))


# -------------------------------------------------------------------------------------------- Optimum
@pytest.fixture(scope="module")
def standalone_export(tmp_path_factory: pytest.TempPathFactory, bert_run: Path) -> Path:
    out = tmp_path_factory.mktemp("standalone") / "rte"
    export_run(bert_run, out, standalone=True)
    return out


def test_optimum_layout_contract(standalone_export: Path) -> None:
    """What ORTModelForSequenceClassification.from_pretrained(DIR) reads: model.onnx, a transformers
    config with the labels, and a tokenizer whose outputs feed the graph's inputs by name.

    optimum-onnx 0.1.0 pins transformers<4.58 and cannot be installed beside this project's
    transformers; it was checked by hand in a separate environment (see the export report).
    """
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(standalone_export)
    assert config.model_type == "bert" and config.id2label == {0: "entailment", 1: "not_entailment"}
    assert config.architectures == ["BertForSequenceClassification"]
    tokenizer = AutoTokenizer.from_pretrained(standalone_export)
    encoded = tokenizer(["the cat sat", "no"], ["two dogs", "yes"], padding=True, return_tensors="np")
    session = _session(standalone_export / "model.onnx")
    names = [i.name for i in session.get_inputs()]
    assert set(names) <= set(encoded)
    (logits,) = session.run(["logits"], {n: encoded[n].astype(np.int64) for n in names})
    assert logits.shape == (2, config.num_labels)


_OPTIMUM_SCRIPT = """
import json, sys
import numpy as np
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer
folder = sys.argv[1]
model = ORTModelForSequenceClassification.from_pretrained(folder, provider="CPUExecutionProvider")
tokenizer = AutoTokenizer.from_pretrained(folder)
encoded = tokenizer(["the cat sat", "no"], ["two dogs", "yes"], padding=True, return_tensors="pt")
print(json.dumps(model(**encoded).logits.detach().numpy().tolist()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["standalone", "shared"])
def test_optimum_loads_the_export(kind: str, standalone_export: Path, bert_export: Path) -> None:
    """Optimum's ORTModelForSequenceClassification loads our folders and gives ONNX Runtime's logits.

    optimum-onnx 0.1.0 pins transformers<4.58, so it cannot live in this project's environment; `make test`
    builds a separate one (.venv-optimum) and points AA_OPTIMUM_PYTHON at its interpreter.
    """
    python = os.environ.get("AA_OPTIMUM_PYTHON")
    if not python:
        pytest.skip("AA_OPTIMUM_PYTHON is not set: run through `make test`, which builds the Optimum environment")
    folder = standalone_export if kind == "standalone" else bert_export
    proc = subprocess.run([python, "-c", _OPTIMUM_SCRIPT, str(folder)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    optimum_logits = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(["the cat sat", "no"], ["two dogs", "yes"], padding=True, return_tensors="np")
    session = _session(folder / "model.onnx")
    names = [i.name for i in session.get_inputs()]
    (expected,) = session.run(["logits"], {n: encoded[n].astype(np.int64) for n in names})
    np.testing.assert_allclose(optimum_logits, expected, rtol=0, atol=1e-5)


def test_export_folder_describes_itself_with_a_model_card(bert_export: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(bert_export / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "aa-deploy" and "onnx" in data["tags"]
    assert "aa-deploy serve" in card.text
    manifest = json.loads((bert_export / "aa_export.json").read_text())
    # The manifest's size report includes the card's own files.
    on_disk = sum(p.stat().st_size for p in bert_export.iterdir() if p.name != DATA_NAME)
    assert manifest["sizes"]["task_bytes"] == on_disk
