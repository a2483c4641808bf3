"""The committed serving fixture (tests/fixtures/serving_exports) is what the exporter writes today, and
the serving tests need neither torch nor transformers (they run on that fixture)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aa_deploy.contract.manifest import ExportManifest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
COMMITTED = FIXTURES / "serving_exports"
# What may differ between two generations on different machines: tool versions, float round-off in
# the validation report, file sizes and content hashes (another onnx version serialises differently).
VOLATILE = {"backbone_sha256", "base_model", "sizes", "folder", "raw"}


def shape_of(value: Any) -> Any:
    """The key structure of a JSON value (dict keys recursively; lists by their first item)."""
    if isinstance(value, dict):
        return {k: shape_of(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape_of(value[0])] if value else []
    return type(value).__name__


def contract(folder: Path) -> dict[str, Any]:
    manifest = ExportManifest.load(folder)
    fields = {f.name: getattr(manifest, f.name) for f in dataclasses.fields(manifest) if f.name not in VOLATILE}
    return {"fields": fields, "keys": shape_of(json.loads((folder / "aa_export.json").read_text()))}


def test_the_committed_fixture_is_what_the_exporter_writes(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="regenerating the fixture exports with the real exporter")
    sys.path.insert(0, str(FIXTURES))
    from build_fixtures import build

    fresh = build(tmp_path / "serving_exports")
    committed = sorted(p.name for p in COMMITTED.iterdir() if p.is_dir())
    assert sorted(fresh) == committed, "rerun tests/fixtures/build_fixtures.py"
    for name, folder in fresh.items():
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (COMMITTED / name).iterdir()), name
        assert contract(folder) == contract(COMMITTED / name), f"{name}: rerun tests/fixtures/build_fixtures.py"
    size = sum(f.stat().st_size for f in COMMITTED.rglob("*") if f.is_file())
    assert size < 2_000_000, f"the serving fixture grew to {size} bytes; keep it tiny"


def test_torch_is_blocked_when_asked() -> None:
    """Run by the check below: with AA_BLOCK_TORCH=1 neither library can be imported."""
    if os.environ.get("AA_BLOCK_TORCH") != "1":
        pytest.skip("only meaningful with AA_BLOCK_TORCH=1")
    for name in ("torch", "transformers"):
        with pytest.raises(ImportError):
            __import__(name)


def test_serving_tests_pass_without_torch() -> None:
    """A serving test module (the real server, tritonclient, the metrics) in a session where importing
    torch or transformers fails, as in a serving-only install."""
    env = {**os.environ, "AA_BLOCK_TORCH": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
        "tests/test_serving_oip.py", "tests/test_serving_fixtures.py::test_torch_is_blocked_when_asked",
    ]  # fmt: skip
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "skipped" not in out.stdout, out.stdout[-2000:]
