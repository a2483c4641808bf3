"""The install is split into extras: the serving extra holds no training library, every extra a message
names exists, and a command whose libraries are missing says which extra to install (no traceback)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aa_deploy.extras import COMMAND_EXTRAS, MODULE_EXTRAS, PACKAGE, install_command

REPO = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

SELF = re.compile(rf"^{re.escape(PACKAGE)}\[(?P<extras>[^\]]+)\]$")


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _closure(names: str) -> set[str]:
    """The distributions an install of ``aa-deploy[names]`` pulls in directly (self-references expanded)."""
    table, out = _extras(), set()
    for name in names.split(","):
        for requirement in table[name]:
            match = SELF.match(requirement.split(";")[0].strip())
            if match:
                out |= _closure(match["extras"])
            else:
                out.add(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower())
    return out


def test_serve_extra_is_torch_free_and_complete() -> None:
    serve = _closure("serve")
    assert not serve & {"torch", "transformers", "accelerate", "scipy", "matplotlib"}
    assert {"onnx", "tokenizers", "fastapi", "uvicorn", "prometheus-client", "onnxruntime-gpu", "onnxruntime"} <= serve
    # The CPU variant swaps the ONNX Runtime build only (both install the same module: never both).
    assert _closure("serve-cpu") == (serve - {"onnxruntime-gpu"}) | {"onnxruntime"}
    assert "onnxruntime-gpu" not in _closure("serve-cpu")
    assert {"torch", "transformers"} <= _closure("train") <= _closure("export")
    assert "ray" in _closure("ray") and serve <= _closure("ray")
    everything = set().union(*(_closure(name) for name in _extras() if name != "test"))
    assert _closure("all") == everything


def test_every_extra_named_in_a_message_exists() -> None:
    declared = set(_extras())
    for extra in [*COMMAND_EXTRAS.values(), *MODULE_EXTRAS.values()]:
        assert set(extra.split(",")) <= declared, extra
    assert install_command("train") == 'pip install "aa-deploy[train]"'


# Runs the real CLI in a subprocess where the training libraries cannot be imported, as in a serve-only
# install (the clean-environment test in test_install_serve_only.py checks the same in a real one).
BLOCKED_RUNNER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"torch", "transformers", "accelerate", "scipy", "matplotlib"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
    from aa_deploy.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _run_without_training_libraries(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUNNER, *argv], capture_output=True, text=True, timeout=120, cwd=REPO
    )


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["train", "--task", "rte", "--output", "unused"], "train"),
        (["export", "some-run", "--output", "unused"], "export"),
        (["demo", "--output", "unused"], "export,serve"),
    ],
)
def test_command_without_its_extra_names_the_install(argv: list[str], extra: str) -> None:
    proc = _run_without_training_libraries(*argv)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f'pip install "aa-deploy[{extra}]"' in proc.stderr
    assert f"`aa-deploy {argv[0]}` needs" in proc.stderr


def test_help_and_serve_need_no_training_library(tmp_path: Path) -> None:
    assert _run_without_training_libraries("--help").returncode == 0
    proc = _run_without_training_libraries("serve", "--task", f"rte={tmp_path}", "--print-config")
    assert proc.returncode == 0, proc.stderr
    assert '"rte"' in proc.stdout


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_copies_every_package_folder_and_runs_unprivileged(name: str) -> None:
    """A new package folder must reach the image: the Dockerfile copies, and .dockerignore lets through,
    exactly pyproject's package folders (plus the files the build reads)."""
    text = (REPO / "docker" / name).read_text()
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    needed = {"pyproject.toml", "README.md", *setuptools["package-dir"].values()}
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ") and "--from" not in line]
    copied = {source for sources in copies for source in sources}
    assert copied == needed
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line[:1] == "!"}
    assert needed <= allowed
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert "HEALTHCHECK" in text and "/ready" in text and "EXPOSE 8000" in text and "AA_DEPLOY_PORT=8000" in text
