"""The model card: Hub metadata, content, pictures, run folders and export folders, robustness, speed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from safetensors.numpy import save_file

from aa_deploy.card import GLUE_HUB_CONFIGS, PICTURE_NAME, build_model_card, write_model_card
from aa_deploy.config import AdapterConfig

H, D, LAYERS = 32, 2, 4  # hidden size, bottleneck (h / 16), layers
KEPT = [1, 3]
TASK = {"name": "rte", "metric": "accuracy", "label_names": ["entailment", "not_entailment"], "is_pair": True}
PNG = b"\x89PNG\r\n\x1a\n"


def adapter_tensors(layers: list[int], switches: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {
        "backbone.classifier.weight": rng.normal(size=(2, H)).astype(np.float32),
        "backbone.classifier.bias": np.zeros(2, np.float32),
    }
    for i in layers:
        prefix = f"adapter_layers.{i}"
        tensors |= {
            f"{prefix}.adapter.down.weight": rng.normal(size=(D, H)).astype(np.float32),
            f"{prefix}.adapter.down.bias": np.zeros(D, np.float32),
            f"{prefix}.adapter.up.weight": rng.normal(size=(H, D)).astype(np.float32),
            f"{prefix}.adapter.up.bias": np.zeros(H, np.float32),
            f"{prefix}.adapter.activation.numerator": np.array([0.0, 1.0, 0.3 * i, 0, 0, 0], np.float32),
            f"{prefix}.adapter.activation.denominator": np.array([0.1 * i, 0, 0, 0], np.float32),
        }
        if switches:
            tensors[f"{prefix}.switch.logits"] = np.array([0.0, 1.0] if i in KEPT else [1.0, 0.0], np.float32)
    return tensors


def write_run(folder: Path, *, base_model: str = "google-bert/bert-base-uncased", metrics: bool = True) -> Path:
    """A search run folder (unpruned: every layer, switches) written without torch."""
    folder.mkdir(parents=True, exist_ok=True)
    config = AdapterConfig(recipe="search", task=TASK)
    config.num_hidden_layers, config.hidden_size, config.base_model_type = LAYERS, H, "bert"
    config.base_model_name_or_path = base_model
    config.save(folder)
    save_file(adapter_tensors(list(range(LAYERS)), switches=True), str(folder / "aa_adapter_model.safetensors"))
    probabilities = [0.73 if i in KEPT else 0.27 for i in range(LAYERS)]
    selection = {"selected_layers": KEPT, "switch_probabilities": probabilities, "num_layers": LAYERS}
    (folder / "selection.json").write_text(json.dumps(selection))
    if metrics:
        values = {"metric": "accuracy", "value": 0.7512, "test_value": 0.6931, "train_examples": 1000, "seed": 42}
        (folder / "metrics.json").write_text(json.dumps(values))
    return folder


def write_export(folder: Path, *, mode: str = "shared") -> Path:
    """An export folder: pruned adapter files + manifest + ONNX stand-ins, no metrics.json or selection.json."""
    folder.mkdir(parents=True, exist_ok=True)
    config = AdapterConfig(recipe="search", task=TASK, pruned=True, selected_layers=KEPT)
    config.num_hidden_layers, config.hidden_size = LAYERS, H
    config.base_model_name_or_path = "google-bert/bert-base-uncased"
    config.save(folder)
    save_file(adapter_tensors(KEPT, switches=False), str(folder / "aa_adapter_model.safetensors"))
    (folder / "model.onnx").write_bytes(b"onnx graph stand-in")
    manifest = {
        "format": "aa-deploy-onnx", "format_version": 1, "task": TASK, "kept_layers": KEPT, "num_layers": LAYERS,
        "mode": mode, "optimized": True, "quantization": "dynamic-int8", "max_length": 128,
        "validation": {"max_abs_diff": 3.1e-6, "atol": 1e-4, "num_inputs": 16, "passed": True},
        "sizes": {"backbone_bytes": 437_000_000, "task_bytes": 1_200_000, "full_copy_bytes": 438_200_000,
                  "ratio_to_full_copy": 0.00274},
        "metrics": {"metric": "accuracy", "trained_dev_split": 0.75, "trained_test": 0.69},
    }  # fmt: skip
    (folder / "aa_export.json").write_text(json.dumps(manifest))
    return folder


def metadata(readme: Path) -> dict:
    return ModelCard.load(readme).data.to_dict()


# --------------------------------------------------------------------------------------- tests


def test_run_folder_card_has_valid_hub_metadata(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")

    readme = write_model_card(run, repo_id="alice/rte-adapter")

    assert readme == run / "README.md"
    data = metadata(readme)
    assert data["base_model"] == "google-bert/bert-base-uncased"
    assert data["library_name"] == "aa-deploy" and data["pipeline_tag"] == "text-classification"
    assert data["tags"] == ["adapters", "adaptable-adapters", "rational-activation", "rte"]
    assert data["datasets"] == ["glue"] and data["metrics"] == ["accuracy"]
    (official, dev_split) = data["model-index"][0]["results"]
    assert official["dataset"] == {"name": "GLUE RTE", "type": "glue", "config": "rte", "split": "validation"}
    assert official["metrics"][0]["type"] == "accuracy" and official["metrics"][0]["value"] == 0.6931
    assert dev_split["metrics"][0]["value"] == 0.7512
    assert data["model-index"][0]["name"] == "rte-adapter"
    assert (run / PICTURE_NAME).read_bytes().startswith(PNG)
    assert f"]({PICTURE_NAME})" in readme.read_text()


def test_run_folder_card_content(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")

    text = write_model_card(run, repo_id="alice/rte-adapter").read_text()

    assert "| official GLUE dev set | 0.6931 |" in text and "0.7512" in text
    assert "Adapters kept at layers **1, 3** of 4" in text
    assert "layer  3  ███████···  P(adapter)=0.73  adapter" in text
    assert "layer  0  ███·······  P(adapter)=0.27  skipped" in text
    # standard adapter: 4 layers x (2*32*2 + 2 + 32) + head (2*32 + 2) = 648 + 66 = 714 parameters;
    # this one when deployed: 2 layers x (162 + 10 rational coefficients) + 66 = 410
    assert "| parameters (adapters + head) | 714 | 410 (57.4 %) |" in text
    assert "| tensor bytes | 2.9 kB (2,856 bytes) | 1.6 kB (1,640 bytes) |" in text
    assert 'AdaptableAdapterModel.from_pretrained("alice/rte-adapter")' in text
    assert "aa-deploy serve --task rte=alice/rte-adapter" in text
    assert "## ONNX export" not in text  # a run folder has no export report


def test_export_folder_card_reports_onnx_and_sizes(tmp_path: Path) -> None:
    export = write_export(tmp_path / "export")

    readme = write_model_card(export)

    text = readme.read_text()
    data = metadata(readme)
    assert "onnx" in data["tags"] and data["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.69
    assert "## ONNX export" in text and "shared mode" in text
    assert "| validation vs PyTorch | passed: max abs diff 3.1e-06 on 16 inputs (atol 0.0001) |" in text
    assert (
        "| shared backbone | 437.0 MB (437,000,000 bytes) |" in text and "| task share of a full copy | 0.3 % |" in text
    )
    assert "| quantization | dynamic-int8 |" in text
    assert "Adapters kept at layers **1, 3** of 4" in text and "P(adapter)=" not in text  # switches were pruned away
    assert 'from_pretrained("ORG/NAME")' in text  # no repo yet: a placeholder, explained
    assert (export / PICTURE_NAME).read_bytes().startswith(PNG)


def test_onnx_tag_follows_what_travels_with_the_card(tmp_path: Path) -> None:
    export = write_export(tmp_path / "export")

    without = build_model_card(export, repo_id="alice/x", include_onnx=False)

    assert "onnx" not in without.data.tags and "not `model.onnx`" in without.text
    assert "onnx" in build_model_card(export).data.tags


def test_card_written_elsewhere_leaves_the_folder_alone(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())

    readme = write_model_card(run, repo_id="alice/x", output_dir=tmp_path / "staging")

    assert readme == tmp_path / "staging" / "README.md"
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == ["README.md", PICTURE_NAME]
    assert sorted(p.name for p in run.iterdir()) == before


def test_existing_picture_is_reused(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    (run / PICTURE_NAME).write_bytes(PNG + b"drawn by aa-deploy train")

    write_model_card(run, output_dir=tmp_path / "out")

    assert (tmp_path / "out" / PICTURE_NAME).read_bytes() == PNG + b"drawn by aa-deploy train"


@pytest.mark.parametrize(
    "damage", ["no-metrics", "bad-metrics", "no-selection", "no-weights", "bad-weights", "bad-manifest", "odd-manifest"]
)
def test_missing_or_broken_optional_files_never_fail(tmp_path: Path, damage: str) -> None:
    folder = write_export(tmp_path / "export") if "manifest" in damage else write_run(tmp_path / "run")
    broken = {
        "no-metrics": ("metrics.json", None), "bad-metrics": ("metrics.json", b"{not json"),
        "no-selection": ("selection.json", None), "no-weights": ("aa_adapter_model.safetensors", None),
        "bad-weights": ("aa_adapter_model.safetensors", b"truncated"), "bad-manifest": ("aa_export.json", b"[1, 2]"),
        "odd-manifest": ("aa_export.json", b'{"kept_layers": ["x"], "validation": 3, "sizes": {"task_bytes": "many"}}'),
    }  # fmt: skip
    name, content = broken[damage]
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_bytes(content)

    readme = write_model_card(folder)

    data = metadata(readme)
    assert data["library_name"] == "aa-deploy"
    if damage in ("no-metrics", "bad-metrics"):
        assert "model-index" not in data and "No metrics were recorded" in readme.read_text()
    if damage in ("no-weights", "bad-weights"):
        assert "## Size vs a standard adapter" not in readme.read_text()


def test_folder_without_adapter_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        write_model_card(tmp_path)
    assert not (tmp_path / "README.md").exists()


def test_local_backbone_path_is_not_published_as_base_model(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", base_model=str(tmp_path / "my-local-bert"))

    card = build_model_card(run)

    assert "base_model" not in card.data.to_dict()
    assert "local folder" in card.text


def test_file_task_card(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    config = json.loads((run / "aa_adapter_config.json").read_text())
    config["task"] = {"name": "sentiment_train", "metric": "f1", "label_names": ["neg", "pos"], "is_pair": False}
    (run / "aa_adapter_config.json").write_text(json.dumps(config))
    (run / "training_config.json").write_text(json.dumps({"test_file": "/data/sentiment_test.csv"}))

    card = build_model_card(run, repo_id="bob/sentiment")

    data = card.data.to_dict()
    assert "datasets" not in data and data["metrics"] == ["f1"] and "sentiment_train" in data["tags"]
    assert "| test file `sentiment_test.csv` | 0.6931 |" in card.text
    assert "--task sentiment_train=bob/sentiment" in card.text


def test_glue_configs_match_the_data_package() -> None:
    from aa_deploy.data import GLUE_TASKS

    assert set(GLUE_HUB_CONFIGS) == set(GLUE_TASKS)


def test_card_is_fast_when_the_picture_exists(tmp_path: Path) -> None:
    export = write_export(tmp_path / "export")
    write_model_card(export)  # warm-up: imports and the first drawing

    started = time.perf_counter()
    write_model_card(export)
    assert time.perf_counter() - started < 1.0


def test_card_needs_neither_torch_nor_scipy(tmp_path: Path) -> None:
    export = write_export(tmp_path / "export")
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.modules["torch"] = None  # any `import torch` now fails
        started = time.perf_counter()
        from aa_deploy.card import write_model_card
        write_model_card({str(export)!r}, repo_id="alice/x")
        print(round(time.perf_counter() - started, 3), "scipy" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    seconds, scipy_loaded = done.stdout.split()
    print(f"cold card with picture: {seconds} s")
    assert scipy_loaded == "False"
    assert (export / PICTURE_NAME).is_file()


def test_card_of_a_real_training_run(tmp_path: Path, tiny_backbone_dir: Path, demo_data: Path) -> None:
    from aa_deploy.training import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(
        task=str(demo_data / "sentiment_train.csv"), test_file=str(demo_data / "sentiment_test.csv"),
        backbone=str(tiny_backbone_dir), epochs=1, min_steps=0, output=str(run), progress=False,
    ))  # fmt: skip
    drawn_by_training = (run / PICTURE_NAME).read_bytes()

    readme = write_model_card(run, repo_id="alice/sentiment")

    data = metadata(readme)
    assert data["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"
    assert "| test file `sentiment_test.csv` |" in readme.read_text()
    assert (run / PICTURE_NAME).read_bytes() == drawn_by_training


def test_card_records_the_rational_degrees(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    config = json.loads((run / "aa_adapter_config.json").read_text())
    config |= {"numerator_degree": 3, "denominator_degree": 2}
    (run / "aa_adapter_config.json").write_text(json.dumps(config))

    text = build_model_card(run).text

    assert "| rational version | `A` |" in text and "| rational degrees | `3/2` |" in text


def test_card_template_ships_with_the_package() -> None:
    from aa_deploy.card.render import TEMPLATE

    assert TEMPLATE.is_file() and TEMPLATE.read_text().startswith("---\n{{ card_data }}\n---")
