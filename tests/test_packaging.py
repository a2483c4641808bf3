"""Packaging: the three top-level folders install under the one import name ``aa_deploy``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def _setuptools_table() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def _import_name(folder: Path, package_dir: dict[str, str]) -> str:
    relative = folder.relative_to(REPO).as_posix()
    for name, source in sorted(package_dir.items(), key=lambda item: -len(item[1])):
        if relative == source or relative.startswith(source + "/"):
            return name + relative[len(source) :].replace("/", ".")
    raise AssertionError(f"{relative} is under no package-dir entry")


def test_every_package_folder_is_listed_under_its_import_name():
    table = _setuptools_table()
    package_dir = table["package-dir"]
    folders = [p.parent for top in package_dir.values() for p in (REPO / top).rglob("__init__.py")]
    code_packages = {_import_name(folder, package_dir) for folder in folders}
    # A data-only folder (no __init__.py) is a package too once package-data names it: setuptools
    # ships it only if it is listed.
    data_packages = set(table.get("package-data", {}))
    assert code_packages | data_packages == set(table["packages"]), (
        "list every package folder in pyproject.toml [tool.setuptools] packages"
    )


def test_every_data_only_package_exists_and_holds_its_files():
    table = _setuptools_table()
    package_dir = table["package-dir"]
    for name, patterns in table.get("package-data", {}).items():
        root = max((key for key in package_dir if name == key or name.startswith(key + ".")), key=len)
        source = REPO / package_dir[root] / Path(*name[len(root) :].split(".")[1:])
        assert source.is_dir(), f"package-data names {name}, but {source} is not a folder"
        assert any(f for pattern in patterns for f in source.glob(pattern)), f"{name} ships no files"


def test_no_top_level_export_or_serving_import_name():
    import aa_deploy.export
    import aa_deploy.serving

    assert Path(aa_deploy.export.__file__).parent == REPO / "export"
    assert Path(aa_deploy.serving.__file__).parent == REPO / "serving"
    assert set(_setuptools_table()["package-dir"]) == {"aa_deploy", "aa_deploy.export", "aa_deploy.serving"}
