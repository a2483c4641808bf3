"""The linear probe on frozen backbone vectors (benchmarks/quality/pooling_probe.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from glue_fakes import fake_glue, fake_stsb

from aa_deploy.data import TaskDefinition
from aa_deploy.metrics import task_metrics

PROBE = Path(__file__).resolve().parents[1] / "benchmarks" / "quality" / "pooling_probe.py"


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pooling_probe", PROBE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["pooling_probe"] = module
    spec.loader.exec_module(module)
    return module


def test_the_probe_separates_a_linearly_separable_task_and_fits_a_linear_target(probe: ModuleType) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    classes = TaskDefinition(name="toy", metric="accuracy", label_names=["a", "b", "c"], is_pair=False)
    labels = np.argmax(x[:, :3], axis=1)  # three classes, linear boundaries
    weights = probe.fit_probe(x[:300], labels[:300], classes, l2=1e-4)
    assert task_metrics(classes, probe.predict(x[300:], weights), labels[300:])["accuracy"] > 0.9
    # Strong L2 pulls the weights (not the bias) towards zero.
    assert np.abs(probe.fit_probe(x[:300], labels[:300], classes, l2=10.0)[:-1]).max() < np.abs(weights[:-1]).max()

    regression = TaskDefinition(name="toy", metric="spearman", label_names=None, is_pair=False)
    target = x @ np.arange(8, dtype=np.float32) + 5.0
    fitted = probe.fit_probe(x[:300], target[:300], regression, l2=0.0)
    np.testing.assert_allclose(fitted[:, 0], [*range(8), 5.0], atol=1e-3)


def test_a_probe_run_scores_every_vector_on_the_official_dev_set_and_writes_json(
    probe: ModuleType, tmp_path: Path, tiny_backbone_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    glue = fake_stsb(fake_glue(tmp_path / "glue"))
    output = tmp_path / "probe.json"
    argv = ["--glue-dir", str(glue), "--tasks", "rte,stsb", "--sizes", "24", "--seeds", "42,92",
            "--backbone", str(tiny_backbone_dir), "--output", str(output)]  # fmt: skip
    assert probe.main(argv) == 0
    result = json.loads(output.read_text())
    cells = result["cells"]
    # Both tasks are pairs: four vectors (siamese included) × two seeds each.
    assert len(cells) == 2 * 4 * 2
    assert {c["vector"] for c in cells} == set(probe.VECTORS)
    for cell in cells:
        assert cell["l2"] in probe.L2_GRID
        assert set(cell["dev_by_l2"]) == {str(v) for v in probe.L2_GRID}
        assert cell["dev_score"] == max(cell["dev_by_l2"].values())
        assert cell["metric"] in cell["test"]
    assert [row["task"] for row in result["summary"]] == ["rte", "stsb"]
    assert result["config"]["sizes"] == [24] and result["config"]["seeds"] == [42, 92]
    printed = capsys.readouterr().out
    assert "siamese" in printed and "rte" in printed


def test_single_sentence_tasks_have_no_siamese_vector(probe: ModuleType, tiny_backbone_dir: Path) -> None:
    from aa_deploy.data import Example

    # Different lengths: the tiny vocabulary may map every word to [UNK], positions still differ.
    texts = [Example("the film is superb and the cast is warm .", None, 1), Example("dull .", None, 0)]
    vectors = probe.encode(texts, str(tiny_backbone_dir), max_length=16, batch_size=1)
    assert set(vectors) == {"pooler", "cls", "mean"}
    # Batched (with padding) and one at a time give the same vectors, in the input order.
    batched = probe.encode(texts, str(tiny_backbone_dir), max_length=16, batch_size=2)
    for name in vectors:
        np.testing.assert_allclose(vectors[name], batched[name], atol=1e-5)
    assert vectors["mean"].shape[0] == 2 and not np.array_equal(vectors["mean"][0], vectors["mean"][1])


def test_a_missing_glue_folder_is_refused_before_any_model_loads(probe: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        probe.main(["--glue-dir", str(tmp_path / "nowhere"), "--tasks", "rte"])
    assert exc.value.code == 2
