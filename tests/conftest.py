"""Shared fixtures: tiny backbones, the demo data, the GLUE folder (from $AA_GLUE_DIR), the pre-built
serving exports (tests/fixtures/serving_exports).

``AA_BLOCK_TORCH=1`` makes ``import torch`` and ``import transformers`` fail for the whole session, the
way they fail in a serving-only install: the serving tests must pass like that
(tests/test_serving_fixtures.py runs one such session). Nothing here imports torch at module level.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BLOCKED_MODULES = ("torch", "transformers")
if os.environ.get("AA_BLOCK_TORCH") == "1":
    for _name in BLOCKED_MODULES:
        sys.modules[_name] = None  # type: ignore[assignment]  # `import torch` now raises ImportError

sys.path.insert(0, str(Path(__file__).resolve().parent))

SERVING_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "serving_exports"


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch
    except ImportError:  # a serving-only environment, or AA_BLOCK_TORCH=1
        return
    torch.set_num_threads(int(os.environ.get("AA_TEST_THREADS", "1")))


def _held(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[None]:
    """Hold the lock ``name`` shared by every pytest-xdist worker of this run (their temporary folders
    share one parent), for the whole test."""
    from filelock import FileLock

    with FileLock(str(tmp_path_factory.getbasetemp().parent / f"aa-deploy-{name}.lock")):
        yield


@pytest.fixture()
def ray_cluster_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray cluster at a time: two clusters of two nodes on a 2-core runner starve each other."""
    yield from _held(tmp_path_factory, "ray-cluster")


@pytest.fixture()
def repo_build_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One `make serve-env` at a time: it rebuilds the repository's build/serve-wheel folder."""
    yield from _held(tmp_path_factory, "repo-build")


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
    from tiny_models import save_tiny_backbone

    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def demo_data() -> Path:
    from tiny_models import DEMO_DATA

    return DEMO_DATA


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    from aa_deploy.cli_options import glue_dir_from_env

    folder = glue_dir_from_env()
    if folder is None or not (Path(folder) / "RTE" / "train.tsv").is_file():
        pytest.skip(f"GLUE data not found (AA_GLUE_DIR={folder!r}): set AA_GLUE_DIR to the GLUE folder")
    return Path(folder)


@pytest.fixture(scope="session")
def serving_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny tasks exported by the real exporter (committed by tests/fixtures/build_fixtures.py, so the
    serving tests need no torch), copied so that no test can change the committed files."""
    root = tmp_path_factory.mktemp("serving")
    exports = {}
    for folder in sorted(p for p in SERVING_FIXTURES.iterdir() if p.is_dir()):
        exports[folder.name] = Path(shutil.copytree(folder, root / folder.name))
    if not exports:
        raise FileNotFoundError(f"no exports in {SERVING_FIXTURES}: run tests/fixtures/build_fixtures.py")
    return exports


@pytest.fixture(scope="session")
def references(serving_exports: dict[str, Path]) -> dict[str, Any]:
    """Every fixture export's own answers, computed without the server (serving_helpers.Reference)."""
    from serving_helpers import Reference

    return {name: Reference(path) for name, path in serving_exports.items()}


@pytest.fixture(scope="module")
def server(serving_exports: dict[str, Path]) -> Iterator[Any]:
    """The real server on 127.0.0.1 with the HTTP tests' configuration (serving_helpers.served_config);
    one per test module, so no module sees another's loads and unloads."""
    from serving_helpers import served_config

    from aa_deploy.serving.server import BackgroundServer

    with BackgroundServer(served_config(serving_exports)) as srv:
        yield srv


@pytest.fixture()
def client(server: Any) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
