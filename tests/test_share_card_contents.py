"""The model card tells the truth about the files beside it, and its usage snippets run.

Every statement about contents (is a copy of the backbone inside? the ONNX graph? its data?) is derived
from the files that travel with the card; these tests compare the card with the real folder, on the
committed fixture exports (shared and standalone) and on a run-like folder.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from aa_deploy.card import build_model_card, write_model_card
from aa_deploy.contract.layout import CONFIG_NAME, METRICS_NAME, SELECTION_NAME, WEIGHTS_NAME

NO_COPY = "No copy of the backbone is included"
DATA_COPY = "also holds a copy of the backbone's weights in `backbone.onnx_data`"
STANDALONE_COPY = "holds the backbone's weights inside the standalone `model.onnx`"


def files_table(text: str) -> set[str]:
    section = text.split("## Files", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE))


def onnx_snippet(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    (snippet,) = [b for b in blocks if "onnxruntime" in b]
    return snippet


@pytest.fixture()
def export_copy(serving_exports: dict[str, Path], tmp_path: Path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(serving_exports[name], tmp_path / name))

    return copy


@pytest.mark.parametrize(("name", "claim"), [("sst", DATA_COPY), ("sst_standalone", STANDALONE_COPY)])
def test_card_in_an_export_folder_lists_exactly_its_files(name: str, claim: str, export_copy) -> None:
    folder = export_copy(name)
    text = write_model_card(folder).read_text()
    assert files_table(text) == {p.name for p in folder.iterdir()}  # README.md and picture included
    assert claim in text and NO_COPY not in text
    assert "This artefact includes `model.onnx`" in text
    assert ("and `backbone.onnx_data` beside it" in text) == (folder / "backbone.onnx_data").exists()


def test_card_without_the_onnx_files_says_so(serving_exports: dict[str, Path]) -> None:
    """A push without --with-onnx: the graph and the backbone data stay behind, and the card knows."""
    card = build_model_card(serving_exports["sst"], repo_id="alice/sst", include_onnx=False)
    assert NO_COPY in card.text and DATA_COPY not in card.text
    assert "model.onnx" not in files_table(card.text) and "backbone.onnx_data" not in files_table(card.text)
    assert "onnxruntime" not in card.text and "not `model.onnx`" in card.text


def test_card_follows_the_given_file_list(serving_exports: dict[str, Path]) -> None:
    names = ["adapter_config.json", "adapter_model.safetensors", "model.onnx", "tokenizer.json"]
    card = build_model_card(serving_exports["sst"], repo_id="alice/sst")
    assert DATA_COPY in card.text
    from aa_deploy.card.artifact import read_artifact
    from aa_deploy.card.render import render

    partial = render(read_artifact(serving_exports["sst"]), [], "alice/sst", None, files=names)
    assert files_table(partial.text) == {*names, "README.md"}
    assert "includes `model.onnx` but not `backbone.onnx_data`" in partial.text
    assert "onnxruntime" not in partial.text  # the snippet would fail without the data file


def test_run_folder_card_claims_no_backbone(serving_exports: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in (CONFIG_NAME, WEIGHTS_NAME, SELECTION_NAME, METRICS_NAME):
        shutil.copyfile(serving_exports["sst"] / name, run / name)
    text = write_model_card(run, repo_id="alice/run").read_text()
    assert NO_COPY in text and "## ONNX export" not in text and "onnxruntime" not in text
    assert files_table(text) == {p.name for p in run.iterdir()}
    assert 'AdaptableAdapterModel.from_pretrained("alice/run")' in text


@pytest.mark.parametrize("name", ["sst", "sst_standalone", "stsb"])
def test_onnx_runtime_snippet_runs_and_gives_the_models_answers(name: str, serving_exports, references, capsys) -> None:
    folder = serving_exports[name]
    snippet = onnx_snippet(build_model_card(folder, repo_id="alice/task").text)
    runnable = snippet.replace('snapshot_download("alice/task")', repr(str(folder)))
    namespace: dict = {}
    exec(compile(runnable, f"<card snippet {name}>", "exec"), namespace)  # noqa: S102 - our own card's snippet
    logits = namespace["logits"]
    texts = ["a first text", "a second text"]
    reference = references[name]
    if reference.manifest["task"].get("is_pair"):
        expected = reference.logits(["first sentence", "another sentence"], ["its pair", "its pair"])
    else:
        expected = reference.logits(texts)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
    assert capsys.readouterr().out.strip()  # it prints the labels (or scores)
