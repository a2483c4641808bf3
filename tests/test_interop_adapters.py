"""`aa-deploy convert --to adapters`: AdapterHub's `adapters` library loads our run and computes our logits.

`adapters` 1.3.0 pins transformers~=4.57.6, older than this project's, so the loading half runs in its
own environment (`make adapters-env` builds .venv-adapters; `make test` points AA_ADAPTERS_PYTHON at its
interpreter) as a subprocess on real files, like the Optimum test in test_export.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import FAMILIES, save_tiny_backbone
from transformers import AutoTokenizer

from aa_deploy.cli import main
from aa_deploy.config import AdapterConfig
from aa_deploy.interop.adapters_hub import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    HEAD_CONFIG_FILE,
    HEAD_WEIGHTS_FILE,
    HUB_FAMILIES,
    NotConvertibleError,
    convert_to_adapters,
)
from aa_deploy.modeling import AdaptableAdapterModel

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["a truly wonderful film", "boring and far too long", "not bad at all", "the plot was awful"]
CLASSIFY = {"name": "sentiment", "metric": "accuracy", "label_names": ["negative", "positive"], "is_pair": False}
REGRESS = {"name": "score", "metric": "spearman", "label_names": None, "is_pair": False}

# Runs in the adapters environment: load each case's backbone with AutoAdapterModel, load the converted
# folder with load_adapter (adapter and head), activate it and print the logits per case.
_ADAPTERS_SCRIPT = """
import json, sys
import torch
from adapters import AutoAdapterModel
cases = json.loads(open(sys.argv[1]).read())
out = {}
for case in cases:
    model = AutoAdapterModel.from_pretrained(case["backbone"])
    name = model.load_adapter(case["adapter"], set_active=True)
    model.set_active_adapters(name)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(case["input_ids"]), attention_mask=torch.tensor(case["attention_mask"])).logits
    out[case["id"]] = {"name": name, "active": str(model.active_adapters), "logits": logits.tolist()}
print(json.dumps(out))
"""


def adapters_python() -> str | None:
    python = os.environ.get("AA_ADAPTERS_PYTHON")
    if python:
        return python
    local = REPO / ".venv-adapters" / "bin" / "python"
    return str(local) if local.exists() else None


def write_run(folder: Path, backbone: Path, recipe: str, task: dict, seed: int = 0, **config: object) -> Path:
    """A run folder as `aa-deploy train` writes it, with large random adapters so that they matter."""
    model = AdaptableAdapterModel.from_backbone(str(backbone), AdapterConfig(recipe=recipe, **config), task=task)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)
    return folder


def our_logits(run: Path, encoded: dict) -> np.ndarray:
    model = AdaptableAdapterModel.from_pretrained(run)
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(encoded["input_ids"]), attention_mask=torch.tensor(encoded["attention_mask"])
        ).logits.numpy()


CASES = {
    **{f"{family}-standard": (family, "standard", CLASSIFY, {}) for family in FAMILIES if family in HUB_FAMILIES},
    "bert-regression": ("bert", "standard", REGRESS, {}),
    "bert-adapterdrop": ("bert", "adapterdrop", CLASSIFY, {"adapterdrop_eval_layers": 1}),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every case converted, with our logits and the inputs (token ids from the backbone's tokenizer)."""
    root = tmp_path_factory.mktemp("adapters-interop")
    backbones: dict[str, Path] = {}
    cases = {}
    for case_id, (family, recipe, task, extra) in CASES.items():
        if family not in backbones:
            backbones[family] = save_tiny_backbone(root / f"backbone-{family}", family)
        run = write_run(root / f"run-{case_id}", backbones[family], recipe, task, **extra)
        result = convert_to_adapters(run, root / f"adapter-{case_id}")
        tokenizer = AutoTokenizer.from_pretrained(backbones[family])
        encoded = {k: v.tolist() for k, v in tokenizer(TEXTS, padding=True, return_tensors="np").items()}
        cases[case_id] = {"id": case_id, "backbone": str(backbones[family]), "adapter": str(result.output),
                          "input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                          "ours": our_logits(run, encoded).tolist(), "result": result}  # fmt: skip
    return cases


def test_conversion_writes_the_library_files(converted: dict[str, dict]) -> None:
    case = converted["bert-adapterdrop"]
    folder = Path(case["adapter"])
    assert {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE, "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    config = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())
    assert config["config"]["leave_out"] == [0] and case["result"].kept_layers == [1, 2]
    assert config["config"]["non_linearity"] == "relu" and config["name"] == "sentiment"
    head = json.loads((folder / HEAD_CONFIG_FILE).read_text())["config"]
    assert head["num_labels"] == 2 and head["label2id"] == {"negative": 0, "positive": 1}
    weights = torch.load(folder / ADAPTER_WEIGHTS_FILE, weights_only=True)
    assert not any(".layer.0." in key for key in weights)  # the dropped layer carries no adapter


@pytest.fixture(scope="module")
def library_logits(converted: dict[str, dict], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The adapters environment run once for every case (its start-up dominates the time)."""
    python = adapters_python()
    if python is None:
        pytest.skip(
            "no adapters environment: run `make adapters-env` (or set AA_ADAPTERS_PYTHON); `make test` builds it"
        )
    cases_file = tmp_path_factory.mktemp("adapters-cases") / "cases.json"
    cases_file.write_text(
        json.dumps([{k: v for k, v in c.items() if k not in ("ours", "result")} for c in converted.values()])
    )
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(
        [python, "-c", _ADAPTERS_SCRIPT, str(cases_file)], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_adapters_library_computes_our_logits(
    case_id: str, converted: dict[str, dict], library_logits: dict[str, dict]
) -> None:
    loaded = library_logits[case_id]
    assert loaded["name"] == CASES[case_id][2]["name"] and loaded["name"] in loaded["active"]
    np.testing.assert_allclose(np.array(loaded["logits"]), np.array(converted[case_id]["ours"]), rtol=0, atol=1e-4)


def test_rational_runs_are_refused_naming_what_cannot_be_carried(
    tiny_backbone_dir: Path, tmp_path: Path, capsys
) -> None:
    run = write_run(tmp_path / "search", tiny_backbone_dir, "search", CLASSIFY)
    with pytest.raises(NotConvertibleError, match="rational"):
        convert_to_adapters(run, tmp_path / "out")
    assert main(["convert", str(run), "--to", "adapters", "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "learnable rational activations" in err and "standard or adapterdrop" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_converts_and_refuses_to_overwrite(tiny_backbone_dir: Path, tmp_path: Path, capsys) -> None:
    run = write_run(tmp_path / "run", tiny_backbone_dir, "standard", CLASSIFY)
    out = tmp_path / "adapter"
    assert main(["convert", str(run), "--to", "adapters", "--output", str(out), "--name", "my-task", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["adapter_name"] == "my-task" and record["kept_layers"] == [0, 1, 2] and Path(record["output"]) == out
    assert main(["convert", str(run), "--to", "adapters", "--output", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", str(run), "--to", "adapters", "--output", str(out), "--overwrite"]) == 0
    assert "load_adapter" in capsys.readouterr().out


def test_convert_is_listed_without_importing_torch() -> None:
    code = "import sys; from aa_deploy.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


@pytest.mark.slow
def test_adapters_library_computes_our_logits_on_real_minilm(tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 (BERT, LayerNorm eps 1e-12 against the library's 1e-5) stays within 1e-4."""
    from aa_deploy.backbones import resolve_backbone_path

    python = adapters_python()
    if python is None:
        pytest.skip(
            "no adapters environment: run `make adapters-env` (or set AA_ADAPTERS_PYTHON); `make test` builds it"
        )
    backbone = Path(resolve_backbone_path(None))
    if not backbone.is_dir():
        pytest.skip("the packaged all-MiniLM-L6-v2 is not installed")
    run = write_run(tmp_path / "run", backbone, "standard", CLASSIFY)
    run_config = AdapterConfig.load(run)
    assert run_config.num_hidden_layers == 6
    result = convert_to_adapters(run, tmp_path / "adapter")
    encoded = {
        k: v.tolist()
        for k, v in AutoTokenizer.from_pretrained(backbone)(TEXTS, padding=True, return_tensors="np").items()
    }
    case = {
        "id": "minilm",
        "backbone": str(backbone),
        "adapter": str(result.output),
        **{k: encoded[k] for k in ("input_ids", "attention_mask")},
    }
    (tmp_path / "cases.json").write_text(json.dumps([case]))
    proc = subprocess.run(
        [python, "-c", _ADAPTERS_SCRIPT, str(tmp_path / "cases.json")], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = np.array(json.loads(proc.stdout.strip().splitlines()[-1])["minilm"]["logits"])
    np.testing.assert_allclose(loaded, our_logits(run, encoded), rtol=0, atol=1e-4)


def test_readme_names_a_hub_base_model_but_never_a_local_path(converted: dict[str, dict]) -> None:
    text = (Path(converted["bert-standard"]["adapter"]) / "README.md").read_text()
    assert "library_name: adapter-transformers" in text and "aa-deploy" in text
    assert "base_model:" not in text  # the tiny backbone is a local folder
    assert "load_adapter(" in text and "layers 0, 1, 2" in text
