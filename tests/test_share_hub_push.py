"""Pushing compact adapters to the Hub and loading them back by id, through the real huggingface_hub client.

Every test talks to a local FakeHub (tests/fake_hub.py); the client refuses any other host.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import huggingface_hub
import pytest
import torch
from fake_hub import DEFAULT_USER, FakeHub, fake_hub_fixture, hub_client_fixture  # noqa: F401
from huggingface_hub import HfApi, ModelCard
from safetensors.numpy import load as load_safetensors
from tiny_models import save_tiny_backbone

from aa_deploy import AdaptableAdapterModel, AdapterConfig, BackboneMismatchError
from aa_deploy.cli import main
from aa_deploy.hub import HubAuthError, HubRepoNotFoundError, NotAnArtifactError
from aa_deploy.hub_push import IncompleteArtifactError, push_to_hub

REPO = "alice/rte-adapter"
TASK = {"name": "rte", "metric": "accuracy", "label_names": ["entailment", "not_entailment"], "is_pair": True}
KEPT = (0, 2)  # of the tiny backbone's 3 layers
COMPACT = {
    "aa_adapter_config.json",
    "aa_adapter_model.safetensors",
    "selection.json",
    "metrics.json",
    "README.md",
    "activations.png",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


# ------------------------------------------------------------------------------------ helpers


def card_files(card_text: str) -> set[str]:
    """The file names a model card's "Files" table lists."""
    section = card_text.split("## Files", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE))


def search_model(backbone: Path, head_shift: float = 0.0) -> AdaptableAdapterModel:
    """An unpruned search model whose switches keep exactly the layers KEPT, with non-trivial adapters."""
    torch.manual_seed(1)
    model = AdaptableAdapterModel.from_backbone(str(backbone), AdapterConfig(recipe="search"), task=TASK)
    with torch.no_grad():
        for index, block in model.adapter_layers.items():
            block.switch.logits.copy_(torch.tensor([-1.0, 1.0] if int(index) in KEPT else [1.0, -0.5]))
            block.rational.numerator.add_(0.2 * (int(index) + 1))
            block.adapter.up.weight.normal_(0.0, 0.5)
        model.backbone.classifier.bias.add_(head_shift)
    return model.eval()


def write_run(model: AdaptableAdapterModel, folder: Path) -> Path:
    """A run folder as `aa-deploy train` writes it (without the picture: the push draws it)."""
    model.save_pretrained(folder)
    (folder / "selection.json").write_text(json.dumps(model.selection()))
    metrics = {"task": "rte", "metric": "accuracy", "value": 0.75, "test_value": 0.7, "train_examples": 135, "seed": 42}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "training_config.json").write_text(
        json.dumps({"task": "rte", "output": str(folder), "data_dir": "/private/glue"})
    )
    return folder


def write_export(model: AdaptableAdapterModel, folder: Path, backbone: Path, mode: str = "shared") -> Path:
    """An export folder as `aa-deploy export` lays it out (the ONNX files are stand-in bytes)."""
    pruned = model.pruned()
    pruned.save_pretrained(folder)
    (folder / "model.onnx").write_bytes(os.urandom(3_000))
    if mode == "shared":
        (folder / "backbone.onnx_data").write_bytes(os.urandom(50_000))
    for name in TOKENIZER_FILES:
        (folder / name).write_bytes((backbone / name).read_bytes())
    (folder / "config.json").write_text(
        json.dumps({"model_type": "bert", "id2label": {"0": "entailment", "1": "not_entailment"}})
    )
    manifest = {
        "format": "aa-deploy-onnx", "format_version": 1, "task": TASK, "num_labels": 2,
        "kept_layers": list(KEPT), "num_layers": 3, "mode": mode, "optimized": False, "quantization": None,
        "validation": {"max_abs_diff": 2e-7, "atol": 1e-4, "num_inputs": 16, "passed": True},
        "sizes": {"backbone_bytes": 50_000, "task_bytes": 9_000, "full_copy_bytes": 59_000, "ratio_to_full_copy": 0.15},
    }  # fmt: skip
    (folder / "aa_export.json").write_text(json.dumps(manifest))
    (folder / "README.md").write_text("stale card written by an older export\n")
    return folder


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def hosted(hub: FakeHub, repo: str = REPO, revision: str = "main") -> dict[str, bytes]:
    return {k: v for k, v in hub.files(repo, revision).items() if k != ".gitattributes"}


def logits(model: AdaptableAdapterModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 100, (4, 12), generator=generator)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits


def push_cli(folder: Path, *extra: str, repo: str = REPO) -> int:
    return main(["push", str(folder), "--repo-id", repo, *extra])


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture
def logged_in(hub_client: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    monkeypatch.setenv("HF_TOKEN", hub_client.token)
    return hub_client


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private system temp folder, so a test can check that staging folders are cleaned up."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture(scope="module")
def model(tiny_backbone_dir: Path) -> AdaptableAdapterModel:
    return search_model(tiny_backbone_dir)


@pytest.fixture(scope="module")
def search_run(model: AdaptableAdapterModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(model, tmp_path_factory.mktemp("search-run") / "run")


@pytest.fixture(scope="module")
def export_dir(model: AdaptableAdapterModel, tiny_backbone_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_export(model, tmp_path_factory.mktemp("export") / "rte", tiny_backbone_dir)


# -------------------------------------------------------------------------------- round trips


def test_cli_push_then_load_by_id_gives_identical_predictions(
    logged_in: FakeHub, search_run: Path, own_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(search_run)

    assert push_cli(search_run) == 0

    out = capsys.readouterr().out.strip().splitlines()
    head = logged_in.history(REPO)[0]
    assert out[-1] == f"{logged_in.url}/{REPO}/commit/{head}"  # the commit URL, last, for scripts
    assert len(logged_in.history(REPO)) == 2  # the Hub's initial commit + one commit for the artefact
    assert set(hosted(logged_in)) == COMPACT  # no training_config.json (local paths), no ONNX
    loaded = AdaptableAdapterModel.from_pretrained(REPO)
    assert loaded.config.pruned and loaded.kept_layers() == list(KEPT)
    torch.testing.assert_close(
        logits(loaded), logits(AdaptableAdapterModel.from_pretrained(search_run)), rtol=0, atol=1e-6
    )
    assert snapshot(search_run) == before and list(own_tmp.iterdir()) == []


def test_pushed_search_artefact_is_pruned_and_smaller(
    logged_in: FakeHub, search_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = push_to_hub(search_run, REPO)

    files = hosted(logged_in)
    tensors = load_safetensors(files["aa_adapter_model.safetensors"])
    layers = {int(name.split(".")[1]) for name in tensors if name.startswith("adapter_layers.")}
    assert layers == set(KEPT)
    assert not [name for name in tensors if "switch" in name]
    assert len(files["aa_adapter_model.safetensors"]) < (search_run / "aa_adapter_model.safetensors").stat().st_size
    config = json.loads(files["aa_adapter_config.json"])
    assert config["pruned"] is True and config["selected_layers"] == list(KEPT)
    assert result.pruned and result.kept_layers == KEPT
    assert result.source_weights_bytes == (search_run / "aa_adapter_model.safetensors").stat().st_size
    assert json.loads(files["selection.json"])["switch_probabilities"][1] < 0.5  # the learned switches are kept
    card = files["README.md"].decode()
    assert f'from_pretrained("{REPO}")' in card and f"--task rte={REPO}" in card
    assert files["activations.png"].startswith(b"\x89PNG")
    assert card_files(card) == set(files)  # the card lists exactly what the commit holds


def test_model_push_to_hub_method_round_trip(logged_in: FakeHub, model: AdaptableAdapterModel, own_tmp: Path) -> None:
    url = model.push_to_hub(REPO, commit_message="rte adapter v1")

    assert url == f"{logged_in.url}/{REPO}/commit/{logged_in.history(REPO)[0]}"
    assert set(hosted(logged_in)) == COMPACT - {"metrics.json"}  # an in-memory model has no metrics
    head = logged_in.history(REPO)[0]
    assert logged_in.store.load(REPO)["commits"][head]["title"] == "rte adapter v1"
    loaded = AdaptableAdapterModel.from_pretrained(REPO)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=1e-6)
    assert "adapter_layers.1.adapter.up.weight" not in load_safetensors(
        hosted(logged_in)["aa_adapter_model.safetensors"]
    )
    assert list(own_tmp.iterdir()) == []


def test_bare_repo_name_goes_to_the_token_owner(logged_in: FakeHub, search_run: Path) -> None:
    result = push_to_hub(search_run, "rte-adapter")

    assert result.repo_id == f"{DEFAULT_USER}/rte-adapter" and logged_in.repo_exists(result.repo_id)
    assert f'from_pretrained("{DEFAULT_USER}/rte-adapter")' in hosted(logged_in, result.repo_id)["README.md"].decode()


# --------------------------------------------------------------------- visibility and revisions


def test_private_repo_needs_a_token_to_load(
    logged_in: FakeHub, search_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert push_cli(search_run, "--private") == 0
    assert logged_in.is_private(REPO)

    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubRepoNotFoundError, match="private"):
        AdaptableAdapterModel.from_pretrained(REPO)
    loaded = AdaptableAdapterModel.from_pretrained(REPO, token=logged_in.token)
    assert loaded.kept_layers() == list(KEPT)


def test_revision_branch_and_pinned_commit(
    logged_in: FakeHub, search_run: Path, tiny_backbone_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v2 = write_run(search_model(tiny_backbone_dir, head_shift=1.0), tmp_path / "run-v2")
    v1_url = push_to_hub(search_run, REPO).commit_url
    assert push_cli(v2, "--revision", "experiment") == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(f"to {REPO}@experiment in one commit:")

    main_model = AdaptableAdapterModel.from_pretrained(REPO)
    branch_model = AdaptableAdapterModel.from_pretrained(REPO, revision="experiment")
    pinned = AdaptableAdapterModel.from_pretrained(REPO, revision=v1_url.rsplit("/", 1)[1])

    assert set(logged_in.branches(REPO)) == {"main", "experiment"}
    expected_v1 = logits(AdaptableAdapterModel.from_pretrained(search_run))
    torch.testing.assert_close(logits(main_model), expected_v1, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(pinned), expected_v1, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        logits(branch_model), logits(AdaptableAdapterModel.from_pretrained(v2)), rtol=0, atol=1e-6
    )
    assert not torch.allclose(logits(branch_model), expected_v1)


def test_offline_load_is_served_from_the_cache(
    logged_in: FakeHub, search_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    push_to_hub(search_run, REPO)
    online = logits(AdaptableAdapterModel.from_pretrained(REPO))
    logged_in.stop()  # the network is really gone
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    offline = AdaptableAdapterModel.from_pretrained(REPO)

    torch.testing.assert_close(logits(offline), online, rtol=0, atol=0)


def test_backbone_fingerprint_mismatch_is_refused(logged_in: FakeHub, search_run: Path, tmp_path: Path) -> None:
    push_to_hub(search_run, REPO)
    other = save_tiny_backbone(tmp_path / "other-bert", "bert", seed=1)  # same config, other weights

    with pytest.raises(BackboneMismatchError, match="weights fingerprint mismatch"):
        AdaptableAdapterModel.from_pretrained(REPO, backbone=str(other))


# --------------------------------------------------------------------------- failures and errors


@pytest.mark.parametrize(("how", "code"), [("server-error", 1), ("ctrl-c", 130)])
def test_interrupted_upload_leaves_nothing_half_written(
    logged_in: FakeHub, search_run: Path, own_tmp: Path, capsys: pytest.CaptureFixture[str], how: str, code: int,
) -> None:  # fmt: skip
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the commit is being uploaded

    before = snapshot(search_run)
    with pytest.MonkeyPatch.context() as patch:
        if how == "server-error":
            logged_in.fail_next_commit(status=500)
        else:
            patch.setattr(HfApi, "create_commit", interrupted)
        assert push_cli(search_run) == code

    err = capsys.readouterr().err
    assert ("Nothing was committed" in err) if how == "server-error" else ("interrupted" in err)
    assert list(own_tmp.iterdir()) == []  # the staging folder (pruned weights, card) is gone
    assert snapshot(search_run) == before  # the source was only read: no card, no picture written there
    assert len(logged_in.history(REPO)) == 1  # the repo holds only the Hub's initial commit
    assert push_cli(search_run) == 0  # re-running is safe
    assert set(hosted(logged_in)) == COMPACT


def test_missing_token_fails_before_any_work(
    hub_client: FakeHub, search_run: Path, own_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert push_cli(search_run) == 1

    assert "no Hugging Face token found: run `hf auth login` or set HF_TOKEN" in capsys.readouterr().err
    assert hub_client.requests == [] and list(own_tmp.iterdir()) == []
    with pytest.raises(HubAuthError):
        push_to_hub(search_run, REPO)


def test_stored_login_is_used(hub_client: FakeHub, search_run: Path) -> None:
    huggingface_hub.login(token=hub_client.token)  # what `hf auth login` does

    push_to_hub(search_run, REPO)

    assert hub_client.repo_exists(REPO)


def test_unknown_repo_is_reported(logged_in: FakeHub) -> None:
    with pytest.raises(HubRepoNotFoundError, match="not a local folder"):
        AdaptableAdapterModel.from_pretrained("alice/does-not-exist")


def test_repo_without_adapter_is_refused(logged_in: FakeHub) -> None:
    logged_in.commit_files("alice/just-a-model", {"config.json": b"{}", "model.safetensors": b"x"})

    with pytest.raises(NotAnArtifactError, match="holds no aa-deploy adapter: aa_adapter_config.json is missing"):
        AdaptableAdapterModel.from_pretrained("alice/just-a-model")


def test_push_refuses_a_folder_without_adapter(
    logged_in: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("hello")

    assert push_cli(tmp_path) == 1

    assert "holds no aa-deploy adapter: aa_adapter_config.json is missing" in capsys.readouterr().err
    assert logged_in.requests == []


# ------------------------------------------------------------------------------- export folders


def test_export_folder_push_without_onnx_is_compact(
    logged_in: FakeHub, export_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(export_dir)

    assert push_cli(export_dir) == 0

    files = hosted(logged_in)
    assert set(files) == COMPACT - {"selection.json", "metrics.json"} | {
        "aa_export.json",
        "config.json",
        *TOKENIZER_FILES,
    }
    assert "model.onnx was left out (pass --with-onnx" in capsys.readouterr().out
    card = ModelCard(files["README.md"].decode())
    assert "onnx" not in card.data.tags and "not `model.onnx`" in card.text
    assert card_files(card.text) == set(files) and "No copy of the backbone is included" in card.text
    assert files["README.md"] != (export_dir / "README.md").read_bytes()  # a fresh card, for this repo
    assert snapshot(export_dir) == before
    loaded = AdaptableAdapterModel.from_pretrained(REPO)
    assert loaded.kept_layers() == list(KEPT)


def test_export_folder_push_with_onnx_adds_the_graph_and_its_data(
    logged_in: FakeHub, export_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert push_cli(export_dir, "--with-onnx") == 0

    files = hosted(logged_in)
    assert files["model.onnx"] == (export_dir / "model.onnx").read_bytes()
    assert files["backbone.onnx_data"] == (export_dir / "backbone.onnx_data").read_bytes()
    assert "backbone.onnx_data adds 50,000 bytes" in capsys.readouterr().out
    card = ModelCard(files["README.md"].decode())
    assert "onnx" in card.data.tags and card_files(card.text) == set(files)
    assert "also holds a copy of the backbone's weights in `backbone.onnx_data`" in card.text


def test_standalone_export_pushes_no_backbone_data(
    logged_in: FakeHub, model: AdaptableAdapterModel, tiny_backbone_dir: Path, tmp_path: Path
) -> None:
    folder = write_export(model, tmp_path / "standalone", tiny_backbone_dir, mode="standalone")
    (folder / "backbone.onnx_data").write_bytes(b"left over from an earlier shared export")

    result = push_to_hub(folder, REPO, with_onnx=True)

    assert "model.onnx" in result.files and "backbone.onnx_data" not in result.files and result.onnx_data_bytes == 0


def test_with_onnx_needs_an_export_folder(
    logged_in: FakeHub, search_run: Path, export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert push_cli(search_run, "--with-onnx") == 1
    assert "has no model.onnx, so it is not an export folder" in capsys.readouterr().err

    broken = tmp_path / "broken-export"
    broken.mkdir()
    for path in export_dir.iterdir():
        if path.name != "backbone.onnx_data":
            (broken / path.name).write_bytes(path.read_bytes())
    with pytest.raises(IncompleteArtifactError, match="ONNX Runtime needs it beside"):
        push_to_hub(broken, REPO, with_onnx=True)
    assert logged_in.requests == []


def test_folders_with_peft_style_names_load_from_the_hub_and_push_under_todays_names(
    logged_in: FakeHub, model: AdaptableAdapterModel, search_run: Path, tmp_path: Path
) -> None:
    """Older versions wrote the adapter files under PEFT's names: such repos still load by id, and pushing
    such a folder uploads today's names (so the Hub copy is never taken for a PEFT adapter)."""
    from aa_deploy.contract import layout

    compact = tmp_path / "compact"
    model.pruned().save_pretrained(compact)
    logged_in.commit_files(
        "alice/old-adapter",
        {
            layout.LEGACY_CONFIG_NAME: (compact / layout.CONFIG_NAME).read_bytes(),
            layout.LEGACY_WEIGHTS_NAME: (compact / layout.WEIGHTS_NAME).read_bytes(),
        },
    )
    old = AdaptableAdapterModel.from_pretrained("alice/old-adapter")
    torch.testing.assert_close(logits(old), logits(model), rtol=0, atol=1e-6)

    legacy_run = tmp_path / "legacy-run"
    legacy_run.mkdir()
    for source in search_run.iterdir():
        name = {layout.CONFIG_NAME: layout.LEGACY_CONFIG_NAME, layout.WEIGHTS_NAME: layout.LEGACY_WEIGHTS_NAME}
        (legacy_run / name.get(source.name, source.name)).write_bytes(source.read_bytes())
    result = push_to_hub(legacy_run, REPO)
    assert set(hosted(logged_in)) == COMPACT and result.pruned
    assert result.source_weights_bytes == (legacy_run / layout.LEGACY_WEIGHTS_NAME).stat().st_size
    torch.testing.assert_close(logits(AdaptableAdapterModel.from_pretrained(REPO)), logits(model), rtol=0, atol=1e-6)
