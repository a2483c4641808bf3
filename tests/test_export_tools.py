"""Export and run folders work with the tools users already have (the real libraries, no stand-ins):

* the ``onnx`` package (``onnx.load``, ``onnx.checker``) reads every export folder, shared or standalone,
  while a server still keeps one backbone in memory for many tasks (also old, hard-linked folders);
* the tokenizer files truncate where the server does (``model_max_length`` = the manifest's max length);
* transformers' pipelines run ``AdaptableAdapterModel``; Optimum's ORTModel, its pipeline and its
  ORTQuantizer take export folders (in their own environment, AA_OPTIMUM_PYTHON, as in test_export.py);
* with ``peft`` installed, neither transformers nor peft mistakes a run folder for a PEFT adapter, and
  folders written under PEFT's file names by older versions still load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _export_helpers import make_run, write_tiny_backbone
from serving_helpers import logits_of, predict
from tokenizers import Tokenizer

from aa_deploy.contract import layout
from aa_deploy.contract.manifest import read_manifest
from aa_deploy.export import export_run
from aa_deploy.modeling import AdaptableAdapterModel
from aa_deploy.serving.config import ServerConfig, TaskSpec
from aa_deploy.serving.server import BackgroundServer

MAX_LENGTH = 48  # the runs' training max length; the tiny tokenizer's own limit is 64
# About 60 word pieces: longer than the manifest's max length, shorter than the tokenizer's own limit,
# so a tool that truncated at the tokenizer's limit would see more tokens than the server.
LONG_TEXT = (
    "the committee postponed its decision until the auditors had reviewed every account in detail while the "
    "farmer watches from the porch and the quick brown fox jumps over the lazy dog then prices rose sharply "
    "in march and fell back by the end of the quarter as researchers found that the new treatment reduced"
)
SHORT_TEXT = "i loved this film"
SST2 = {"name": "sst2", "metric": "accuracy", "label_names": ["negative", "positive"], "is_pair": False}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_backbone(tmp_path_factory.mktemp("backbone") / "bert", "bert")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, backbone: Path) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "sst", backbone, selected=[0, 2], task=SST2, max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, run: Path, store: Path) -> dict[str, Path]:
    """The same run exported three ways: the default shared folder, hard-linked (as older versions
    wrote every shared folder) and standalone."""
    root = tmp_path_factory.mktemp("exports")
    options = {"shared": {}, "hardlinked": {"hardlink_backbone": True}, "standalone": {"standalone": True}}
    return {kind: export_run(run, root / kind, backbone_store=store, **opts).output for kind, opts in options.items()}


def _ort_logits(folder: Path, texts: list[str]) -> np.ndarray:
    """ONNX Runtime on the folder, fed by transformers' tokenizer read from the folder's own files."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
    session = ort.InferenceSession(str(folder / layout.GRAPH_NAME), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run([layout.GRAPH_OUTPUT], {n: encoded[n].astype(np.int64) for n in names})[0]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------ the onnx package
@pytest.mark.parametrize("kind", ["shared", "standalone"])
def test_every_default_export_passes_the_onnx_package(kind: str, exports: dict[str, Path]) -> None:
    folder = exports[kind]
    path = str(folder / layout.GRAPH_NAME)
    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path)  # with the external data
    assert not [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    manifest = read_manifest(folder)
    if kind == "shared":
        data = folder / layout.BACKBONE_DATA_NAME
        assert data.stat().st_nlink == 1, "one link: the onnx package refuses hard-linked external data"
        assert manifest["backbone_data"]["sharing"] in ("reflink", "copy")
        assert manifest["backbone_data"]["linked"] is False
        assert manifest["sizes"]["backbone_sharing"] == manifest["backbone_data"]["sharing"]
    # The loaded proto runs in ONNX Runtime and reproduces the folder's own outputs.
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(folder)([SHORT_TEXT], return_tensors="np")
    feeds = {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()}
    np.testing.assert_allclose(session.run(["logits"], feeds)[0], _ort_logits(folder, [SHORT_TEXT]), atol=1e-6)


def test_hard_linked_folders_are_what_the_onnx_package_refuses(exports: dict[str, Path]) -> None:
    """Why hard links are opt-in (``--hardlink-backbone``): the onnx package refuses them."""
    folder = exports["hardlinked"]
    assert (folder / layout.BACKBONE_DATA_NAME).stat().st_nlink > 1
    with pytest.raises(Exception, match="hard link"):
        onnx.load(str(folder / layout.GRAPH_NAME))
    assert "onnx package refuse" in export_summary(folder)


def export_summary(folder: Path) -> str:
    from aa_deploy.export.size_report import folder_report

    return folder_report(folder, sharing=read_manifest(folder)["backbone_data"]["sharing"]).summary


def test_size_summary_says_what_is_shared_on_disk_and_in_memory(exports: dict[str, Path]) -> None:
    summary = export_summary(exports["shared"])
    sharing = read_manifest(exports["shared"])["backbone_data"]["sharing"]
    assert ("copy of its own" in summary) if sharing == "copy" else ("reflink" in summary)
    assert "one backbone in memory for all its tasks" in summary and "of a full copy" in summary


def test_one_backbone_in_the_servers_memory_for_own_files_and_hard_links(
    exports: dict[str, Path], backbone: Path, store: Path, tmp_path: Path
) -> None:
    """Two folders with their own backbone files (byte-identical) and an old-style hard-linked one:
    the server keys the backbone by the manifest's content hash and maps it once."""
    other = make_run(tmp_path / "run-b", backbone, selected=[1], task=SST2, seed=5, max_length=MAX_LENGTH)
    second = export_run(other, tmp_path / "second", backbone_store=store).output
    folders = {"a": exports["shared"], "b": second, "old": exports["hardlinked"]}
    files = [(f / layout.BACKBONE_DATA_NAME).stat() for f in (folders["a"], folders["b"])]
    assert (files[0].st_dev, files[0].st_ino) != (files[1].st_dev, files[1].st_ino), "two files on disk"
    config = ServerConfig(port=0, intra_op_threads=1, tasks=[TaskSpec(n, str(f)) for n, f in folders.items()])
    with BackgroundServer(config) as srv, httpx.Client(base_url=srv.url, timeout=120) as client:
        listing = client.get("/v1/tasks").json()
        assert len(listing["backbones"]) == 1 and listing["backbones"][0]["exports"] == 3
        for name, folder in folders.items():
            response = predict(client, name, [SHORT_TEXT, LONG_TEXT])
            assert response.status_code == 200, response.text
            got = logits_of(response.json()["predictions"])
            np.testing.assert_allclose(got, _ort_logits(folder, [SHORT_TEXT, LONG_TEXT]), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------- truncation
def test_tokenizer_files_truncate_where_the_server_does(exports: dict[str, Path], run: Path) -> None:
    folder = exports["shared"]
    manifest = read_manifest(folder)
    assert manifest["max_length"] == MAX_LENGTH
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == MAX_LENGTH
    # The `tokenizers` library on tokenizer.json alone truncates there too.
    ids = Tokenizer.from_file(str(folder / layout.TOKENIZER_NAME)).encode(LONG_TEXT).ids
    assert len(ids) == MAX_LENGTH
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(run_backbone(run))(LONG_TEXT)["input_ids"]) > MAX_LENGTH
    # Server, ONNX Runtime fed by the tokenizer files, and the trained model agree on a long text.
    config = ServerConfig(port=0, intra_op_threads=1, tasks=[TaskSpec("sst", str(folder))])
    with BackgroundServer(config) as srv, httpx.Client(base_url=srv.url, timeout=120) as client:
        served = logits_of(predict(client, "sst", [LONG_TEXT, SHORT_TEXT]).json()["predictions"])
    np.testing.assert_allclose(served, _ort_logits(folder, [LONG_TEXT, SHORT_TEXT]), atol=1e-4, rtol=0)
    model = AdaptableAdapterModel.from_pretrained(run)
    encoded = AutoTokenizer.from_pretrained(folder)([LONG_TEXT, SHORT_TEXT], padding=True, truncation=True,
                                                    return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        np.testing.assert_allclose(served, model(**encoded).logits.numpy(), atol=1e-4, rtol=0)


def run_backbone(run: Path) -> str:
    return json.loads((run / layout.CONFIG_NAME).read_text())["base_model_name_or_path"]


# ------------------------------------------------------------------------ transformers pipelines
def test_transformers_pipeline_runs_the_torch_model(run: Path, backbone: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, pipeline

    model = AdaptableAdapterModel.from_pretrained(run)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    texts = [SHORT_TEXT, "the plot makes no sense at all"]
    scored = classifier(texts, top_k=None)
    with torch.no_grad():
        expected = _softmax(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy())
    for row, probabilities in zip(scored, expected, strict=True):
        by_label = {item["label"]: item["score"] for item in row}
        np.testing.assert_allclose([by_label["negative"], by_label["positive"]], probabilities, atol=1e-5)
    pair_run = make_run(tmp_path / "rte", backbone, selected=[1])
    pair_model = AdaptableAdapterModel.from_pretrained(pair_run)
    pair = pipeline("text-classification", model=pair_model, tokenizer=tokenizer, device="cpu")
    best = pair({"text": "the cat sat", "text_pair": "a dog ran"})
    with torch.no_grad():
        logits = pair_model(**tokenizer("the cat sat", "a dog ran", return_tensors="pt")).logits.numpy()
    assert best["label"] == ["entailment", "not_entailment"][int(logits.argmax())]
    assert best["score"] == pytest.approx(float(_softmax(logits).max()), abs=1e-5)
    assert model.device.type == "cpu" and model.dtype == torch.float32 and not model.can_generate()


# -------------------------------------------------------------------------------------- PEFT
_PEFT_SCRIPT = """
import json, sys
from peft import PeftConfig
from transformers.utils import find_adapter_config_file
out = {}
for folder in sys.argv[1:]:
    try:
        PeftConfig.from_pretrained(folder)
        peft = "loaded"
    except Exception as exc:
        peft = type(exc).__name__ + ": " + str(exc)
    out[folder] = {"transformers": find_adapter_config_file(folder), "peft": peft}
print(json.dumps(out))
"""


def test_peft_does_not_take_a_run_folder_for_its_adapter(run: Path, exports: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("peft", reason="checks the behaviour of the real peft package")
    legacy = _legacy_copy(run, tmp_path / "legacy-run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a local path peft does not find is tried on the Hub
    folders = [str(run), str(exports["shared"]), str(legacy)]
    done = subprocess.run([sys.executable, "-c", _PEFT_SCRIPT, *folders], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    for folder in folders[:2]:  # today's folders: neither library finds an adapter config
        assert seen[folder]["transformers"] is None
        assert "peft_type" not in seen[folder]["peft"] and seen[folder]["peft"] != "loaded"
    # What the rename fixes: PEFT's names made both libraries take the folder for a PEFT adapter.
    assert seen[str(legacy)]["transformers"] is not None and "peft_type" in seen[str(legacy)]["peft"]


def _legacy_copy(folder: Path, target: Path, *, link: bool = False) -> Path:
    """``folder`` as an older aa-deploy wrote it: the adapter files under PEFT's names (``link``: every
    file hard-linked, so the backbone file keeps being one hard-linked inode, as old exports had it)."""
    shutil.copytree(folder, target, copy_function=os.link if link else shutil.copy2)
    (target / layout.CONFIG_NAME).rename(target / layout.LEGACY_CONFIG_NAME)
    (target / layout.WEIGHTS_NAME).rename(target / layout.LEGACY_WEIGHTS_NAME)
    return target


def test_folders_with_the_old_names_still_load_export_and_serve(
    run: Path, exports: dict[str, Path], store: Path, tmp_path: Path
) -> None:
    legacy_run = _legacy_copy(run, tmp_path / "legacy-run")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_backbone(run))
    encoded = tokenizer([SHORT_TEXT, LONG_TEXT], padding=True, truncation=True, max_length=MAX_LENGTH,
                        return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        expected = AdaptableAdapterModel.from_pretrained(run)(**encoded).logits.numpy()
        old = AdaptableAdapterModel.from_pretrained(legacy_run)(**encoded).logits.numpy()
    np.testing.assert_array_equal(old, expected)
    exported = export_run(legacy_run, tmp_path / "from-legacy", backbone_store=store).output
    assert (exported / layout.CONFIG_NAME).is_file() and not (exported / layout.LEGACY_CONFIG_NAME).exists()
    # An export folder of an older version (PEFT's names, hard-linked backbone) serves on both engines.
    old_export = _legacy_copy(exports["hardlinked"], tmp_path / "old-export", link=True)
    assert (old_export / layout.BACKBONE_DATA_NAME).stat().st_nlink > 2
    compact = AdaptableAdapterModel.from_pretrained(old_export)
    assert compact.config.pruned
    for engine in ("multitask", "sessions"):
        config = ServerConfig(port=0, intra_op_threads=1, engine=engine, tasks=[TaskSpec("old", str(old_export))])
        with BackgroundServer(config) as srv, httpx.Client(base_url=srv.url, timeout=120) as client:
            got = logits_of(predict(client, "old", [SHORT_TEXT, LONG_TEXT]).json()["predictions"])
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------- Optimum
_OPTIMUM_SCRIPT = """
import json, sys, tempfile
from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
from transformers import AutoTokenizer, pipeline
folder, texts = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = ORTModelForSequenceClassification.from_pretrained(folder, provider="CPUExecutionProvider")
classifier = pipeline("text-classification", model=model, tokenizer=tokenizer)
scores = [{d["label"]: d["score"] for d in row} for row in classifier(texts, top_k=None, truncation=True)]
with tempfile.TemporaryDirectory() as out:
    quantizer = ORTQuantizer.from_pretrained(folder)
    quantizer.quantize(save_dir=out, quantization_config=AutoQuantizationConfig.avx2(is_static=False))
    quantized = ORTModelForSequenceClassification.from_pretrained(
        out, file_name="model_quantized.onnx", provider="CPUExecutionProvider"
    )
    encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    int8 = quantized(**encoded).logits.detach().numpy().tolist()
print(json.dumps({"scores": scores, "int8": int8}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["shared", "standalone"])
def test_optimum_pipeline_and_quantizer_take_the_export(kind: str, exports: dict[str, Path]) -> None:
    """Optimum (own environment: optimum-onnx pins transformers<4.58; `make test` builds it) loads the
    folder into a transformers pipeline that scores like our server, and ORTQuantizer (built on the onnx
    package) quantises it."""
    python = os.environ.get("AA_OPTIMUM_PYTHON")
    if not python:
        pytest.skip("AA_OPTIMUM_PYTHON is not set: run through `make test`, which builds the Optimum environment")
    folder = exports[kind]
    texts = [SHORT_TEXT, LONG_TEXT]
    done = subprocess.run(
        [python, "-c", _OPTIMUM_SCRIPT, str(folder), json.dumps(texts)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    config = ServerConfig(port=0, intra_op_threads=1, tasks=[TaskSpec("sst", str(folder))])
    with BackgroundServer(config) as srv, httpx.Client(base_url=srv.url, timeout=120) as client:
        served = logits_of(predict(client, "sst", texts).json()["predictions"])
    scores = np.array([[row["negative"], row["positive"]] for row in result["scores"]])
    np.testing.assert_allclose(scores, _softmax(served), atol=1e-5, rtol=0)
    int8 = np.array(result["int8"])
    assert int8.shape == served.shape and np.abs(int8 - served).max() < 0.5
