"""The artefact contract (aa_deploy.contract): torch-free, one manifest, one family table, one owner per name."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from tiny_models import FAMILIES as TINY_FAMILIES
from tiny_models import tiny_model

from aa_deploy.contract import layout, rules
from aa_deploy.contract.families import (
    FINGERPRINT_KEYS,
    LAYER_NORM_SCALE,
    SUPPORTED_FAMILIES,
    TOKENIZER_FILES,
    UnsupportedModelError,
    family_for,
)
from aa_deploy.contract.manifest import (
    FORMAT_VERSION,
    REQUIRED_KEYS,
    ExportManifest,
    ManifestError,
    backbone_data_entry,
    build_manifest,
    check_manifest,
    read_manifest,
    write_manifest,
)

REPO = Path(__file__).resolve().parents[1]


def test_contract_and_server_import_without_torch_or_transformers() -> None:
    code = """
import importlib, pkgutil, sys
import aa_deploy.contract as contract
import aa_deploy.serving as serving
for package in (contract, serving):
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "transformers"))
print(",".join(heavy))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "", f"torch/transformers imported: {done.stdout}"


# ------------------------------------------------------------------------------------------ manifest
def _manifest(shared: bool = True) -> dict:
    backbone = (
        backbone_data_entry(sha256="ab" * 32, tensors=["w"], size=4096, linked=True, store_object="sha256-ab")
        if shared
        else None
    )
    manifest = build_manifest(
        task={"name": "rte", "metric": "accuracy", "label_names": ["entailment", "not_entailment"], "is_pair": True},
        num_labels=2, is_regression=False, inputs=["input_ids", "attention_mask"], max_length=64, pad_token_id=0,
        kept_layers=[1, 2], num_layers=3,
        base_model={"name_or_path": "tiny", "model_type": "bert", "config_fingerprint": "c", "weights_fingerprint": "w"},
        backbone_data=backbone, optimized=False, quantization=None,
        validation={"max_abs_diff": 1e-6, "atol": 1e-4, "num_inputs": 12, "passed": True},
        informational={"recipe": "search"},
    )  # fmt: skip
    manifest["sizes"] = {"backbone_bytes": 4096, "task_bytes": 100, "full_copy_bytes": 4196, "ratio_to_full_copy": 0.02}
    return manifest


def _export_folder(tmp_path: Path, manifest: dict) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    write_manifest(folder, manifest)
    for name in (layout.GRAPH_NAME, layout.TOKENIZER_NAME, layout.BACKBONE_DATA_NAME):
        (folder / name).write_bytes(b"x")
    return folder


def test_manifest_round_trips_between_writer_and_both_readers(tmp_path: Path) -> None:
    manifest = _manifest()
    folder = _export_folder(tmp_path, manifest)
    assert read_manifest(folder) == manifest
    assert set(REQUIRED_KEYS) <= set(manifest) and manifest["recipe"] == "search"
    served = ExportManifest.load(folder)
    assert served.task_name == "rte" and served.label_names == ("entailment", "not_entailment") and served.is_pair
    assert served.kept_layers == (1, 2) and served.num_layers == 3 and served.shared
    assert served.backbone_path == folder / layout.BACKBONE_DATA_NAME and served.raw == manifest
    assert not served.is_regression and served.public_info()["max_length"] == 64


def test_standalone_manifest_has_no_backbone_data(tmp_path: Path) -> None:
    folder = _export_folder(tmp_path, _manifest(shared=False))
    served = ExportManifest.load(folder)
    assert served.mode == "standalone" and served.backbone_path is None


def test_one_version_rule_for_every_reader(tmp_path: Path) -> None:
    folder = _export_folder(tmp_path, _manifest())
    path = folder / layout.MANIFEST_NAME
    for bad, message in (
        ({"format_version": FORMAT_VERSION + 1}, "upgrade aa-deploy"),
        ({"format_version": "1"}, "format_version '1' is not supported"),
        ({"format": "something-else"}, "not an aa-deploy export"),
    ):
        path.write_text(json.dumps({**_manifest(), **bad}))
        with pytest.raises(ManifestError, match=message):
            read_manifest(folder)
        with pytest.raises(ManifestError, match=message):
            ExportManifest.load(folder)


def test_writer_refuses_an_incomplete_manifest_and_writes_nothing(tmp_path: Path) -> None:
    manifest = _manifest()
    del manifest["validation"]["passed"]
    with pytest.raises(ManifestError, match=r"missing keys \['validation.passed'\]"):
        write_manifest(tmp_path, manifest)
    assert not (tmp_path / layout.MANIFEST_NAME).exists()
    with pytest.raises(ManifestError, match="num_labels=3 but 2 label names"):
        check_manifest({**_manifest(), "num_labels": 3})


def test_informational_keys_cannot_overwrite_the_contract() -> None:
    with pytest.raises(ValueError, match="would overwrite contract keys"):
        build_manifest(
            task={}, num_labels=1, is_regression=True, inputs=["input_ids"], max_length=8, pad_token_id=0,
            kept_layers=[], num_layers=1, base_model={}, backbone_data=None, optimized=False, quantization=None,
            validation={}, informational={"mode": "shared"},
        )  # fmt: skip


def test_server_reader_keeps_its_checks(tmp_path: Path) -> None:
    folder = _export_folder(tmp_path, _manifest())
    path = folder / layout.MANIFEST_NAME
    path.write_text(json.dumps({**_manifest(), "inputs": ["input_ids", "pixel_values"]}))
    with pytest.raises(ManifestError, match="must include input_ids and only use"):
        ExportManifest.load(folder)
    path.write_text(json.dumps(_manifest()))
    (folder / layout.TOKENIZER_NAME).unlink()
    with pytest.raises(ManifestError, match=r"\(the tokenizer\) is missing"):
        ExportManifest.load(folder)


# ------------------------------------------------------------------------------------------- families
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_family_table_matches_the_real_models(family: str) -> None:
    """Each row's facts hold for the real transformers model: the LayerNorm the adapter hooks, the scale
    name the server finds in the graph, and the attention-shape and position keys the compiler reads."""
    from aa_deploy.export.optimize import attention_shape
    from aa_deploy.modeling.injection import output_layer_norms

    model = tiny_model(family)
    row = family_for(model.config.model_type)
    assert row is SUPPORTED_FAMILIES[family]
    norms = output_layer_norms(model)
    names = {id(p): n for n, p in model.named_parameters()}
    for index, norm in enumerate(norms):
        match = LAYER_NORM_SCALE.search(names[id(norm.weight)])
        assert match is not None and int(match.group(1)) == index
    heads, hidden = attention_shape(model.config)
    assert (heads, hidden) == (2, 32)
    assert getattr(model.config, row.positions_key) == 160


def test_every_family_has_a_tiny_test_model_except_camembert() -> None:
    # CamemBERT is architecturally XLM-RoBERTa (same row values); the others are exercised end to end.
    assert set(SUPPORTED_FAMILIES) - set(TINY_FAMILIES) == {"camembert"}
    assert replace(SUPPORTED_FAMILIES["camembert"], model_type="xlm-roberta") == SUPPORTED_FAMILIES["xlm-roberta"]
    with pytest.raises(UnsupportedModelError, match="supported families: .*bert.*distilbert"):
        family_for("gpt2")


def test_fingerprint_keys_are_pinned() -> None:
    """Fingerprints are recorded in artefacts and compared on load: changing the key set breaks old runs."""
    assert set(FINGERPRINT_KEYS) == {
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "hidden_act", "vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
        "position_embedding_type", "dim", "n_layers", "n_heads", "hidden_dim", "activation",
        "embedding_size", "relative_attention", "pos_att_type", "max_relative_positions", "position_buckets",
    }  # fmt: skip
    assert layout.TOKENIZER_NAME in TOKENIZER_FILES and "vocab.txt" in TOKENIZER_FILES


# ---------------------------------------------------------------------------------------------- rules
def test_switch_rule_agrees_between_the_model_and_stored_logits() -> None:
    import torch

    from aa_deploy.modeling import GumbelSwitch

    for logits in ((0.2, 0.9), (0.9, 0.2), (0.5, 0.5)):
        switch = GumbelSwitch(init=logits)
        assert switch.selected == rules.switch_keeps_adapter(list(logits))
        assert abs(switch.adapter_probability() - rules.switch_adapter_probability(logits)) < 1e-6
        assert rules.switch_keeps_adapter(torch.tensor(logits)) == switch.selected
    assert rules.kept_by_switches({0: [0.0, 1.0], 1: [1.0, 0.0], 2: [0.0, 2.0]}) == [0, 2]
    assert rules.uses_rational("search") and rules.uses_rational("focused") and not rules.uses_rational("standard")


def test_state_dict_keys() -> None:
    key = layout.adapter_key(3, layout.RATIONAL_NUMERATOR)
    assert key == "adapter_layers.3.adapter.activation.numerator" and layout.adapter_key_layer(key) == 3
    assert layout.adapter_key_layer("classifier.weight") is None


# ---------------------------------------------------------------------------------- one owner per name
# Files still owned elsewhere (pending a merge with another change), each with the one name allowed.
_PENDING: dict[str, set[str]] = {}


def test_artefact_file_names_are_spelled_only_in_the_contract() -> None:
    names = [
        layout.MANIFEST_NAME, layout.SELECTION_NAME, layout.BACKBONE_DATA_NAME, layout.GRAPH_NAME,
        layout.TRAINING_CONFIG_NAME, layout.METRICS_NAME, layout.CONFIG_NAME, layout.WEIGHTS_NAME,
        layout.TOKENIZER_NAME, layout.PICTURE_NAME, layout.STORE_GRAPH_NAME, layout.STORE_INDEX_NAME,
        layout.LEGACY_CONFIG_NAME, layout.LEGACY_WEIGHTS_NAME,
    ]  # fmt: skip
    literal = re.compile("|".join(rf"""["']{re.escape(name)}["']""" for name in names))
    offenders = []
    for folder in ("aa_deploy", "export", "serving"):
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if relative.startswith("aa_deploy/contract/"):
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for match in literal.finditer(line):
                    if match.group(0)[1:-1] not in _PENDING.get(relative, ()):
                        offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, "import these names from aa_deploy.contract.layout:\n" + "\n".join(offenders)


def test_adapter_files_prefer_todays_names_and_fall_back_to_peft_names(tmp_path: Path) -> None:
    """Runs and exports are written under aa_-prefixed names (PEFT's names made transformers and peft take
    them for PEFT adapters); folders of older versions, with PEFT's names, keep loading."""
    assert layout.CONFIG_NAME != "adapter_config.json" and layout.WEIGHTS_NAME != "adapter_model.safetensors"
    empty, legacy, both = tmp_path / "empty", tmp_path / "legacy", tmp_path / "both"
    for folder in (empty, legacy, both):
        folder.mkdir()
    (legacy / layout.LEGACY_CONFIG_NAME).write_text("{}")
    (both / layout.LEGACY_CONFIG_NAME).write_text("{}")
    (both / layout.CONFIG_NAME).write_text("{}")
    assert layout.adapter_files(empty) == layout.AdapterFiles(empty / layout.CONFIG_NAME, empty / layout.WEIGHTS_NAME)
    found = layout.adapter_files(legacy)
    assert found.legacy and found.weights == legacy / layout.LEGACY_WEIGHTS_NAME
    assert not layout.adapter_files(both).legacy
    assert set(layout.ADAPTER_CONFIG_NAMES) <= set(layout.RUN_DOWNLOAD_PATTERNS)
    assert layout.LEGACY_WEIGHTS_NAME in layout.RUN_DOWNLOAD_PATTERNS
