"""Shared fixtures: tiny backbones, the demo data, the GLUE folder (from $AA_GLUE_DIR)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import DEMO_DATA, save_tiny_backbone  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(int(os.environ.get("AA_TEST_THREADS", "1")))


@pytest.fixture(scope="session", autouse=True)
def private_backbone_store(tmp_path_factory: pytest.TempPathFactory):
    """Exports that use the default backbone store write into a temporary folder, not ~/.cache."""
    previous = os.environ.get("AA_DEPLOY_HOME")
    os.environ["AA_DEPLOY_HOME"] = str(tmp_path_factory.mktemp("aa-deploy-home"))
    yield
    if previous is None:
        os.environ.pop("AA_DEPLOY_HOME", None)
    else:
        os.environ["AA_DEPLOY_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def demo_data() -> Path:
    return DEMO_DATA


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = Path(os.environ.get("AA_GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))
    if not (path / "RTE" / "train.tsv").is_file():
        pytest.skip(f"GLUE data not found at {path}: set AA_GLUE_DIR to the GLUE folder")
    return path


@pytest.fixture(scope="session")
def serving_exports(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_dir: Path) -> dict[str, Path]:
    """Tiny tasks exported by the real exporter for the serving tests (see tests/serving_helpers.py)."""
    from serving_helpers import build_exports

    return build_exports(tmp_path_factory.mktemp("serving"), tiny_backbone_dir)
