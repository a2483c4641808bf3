"""Concurrent exports to one output, and the leftovers of killed exports (real files, real processes)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnxruntime as ort
import pytest
from _export_helpers import make_run, write_tiny_backbone

from aa_deploy.contract.layout import MANIFEST_NAME
from aa_deploy.contract.manifest import read_manifest
from aa_deploy.export import export_run
from aa_deploy.fileio import LEFTOVER_GRACE_SECONDS, publish_new_folder, replace_folder

TESTS = Path(__file__).resolve().parent
OLD = time.time() - 2 * LEFTOVER_GRACE_SECONDS


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    backbone = write_tiny_backbone(tmp_path_factory.mktemp("backbone") / "bert", "bert")
    return make_run(tmp_path_factory.mktemp("run") / "rte", backbone, selected=[0, 2])


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _leftover(path: Path, *, size: int = 1000, mtime: float = OLD) -> Path:
    path.mkdir(parents=True)
    (path / "payload.bin").write_bytes(b"\0" * size)
    os.utime(path, (mtime, mtime))
    return path


# ---------------------------------------------------------------------------------- the publish step
def _race(publish, tmp_path: Path, racers: int = 8) -> tuple[list[int], list[BaseException]]:
    output = tmp_path / "out"
    stagings = []
    for i in range(racers):
        staging = tmp_path / f".out.{i}.partial"
        staging.mkdir()
        (staging / "who.txt").write_text(str(i))
        stagings.append(staging)
    barrier = threading.Barrier(racers)
    winners: list[int] = []
    errors: list[BaseException] = []

    def go(i: int) -> None:
        barrier.wait()
        try:
            publish(stagings[i], output)
            winners.append(i)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return winners, errors


def test_publish_without_overwrite_has_exactly_one_winner(tmp_path: Path) -> None:
    winners, errors = _race(publish_new_folder, tmp_path)
    assert len(winners) == 1
    assert len(errors) == 7 and all(isinstance(e, FileExistsError) and "--overwrite" in str(e) for e in errors)
    assert (tmp_path / "out" / "who.txt").read_text() == str(winners[0])


def test_publish_without_overwrite_takes_an_empty_folder_but_never_a_full_one(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    publish_new_folder(staging, tmp_path / "out")
    assert (tmp_path / "out" / "new.txt").read_text() == "new"
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(FileExistsError):
        publish_new_folder(other, tmp_path / "out")
    assert other.is_dir() and (tmp_path / "out" / "new.txt").read_text() == "new"


def test_concurrent_overwrites_leave_one_complete_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "who.txt").write_text("before")
    winners, errors = _race(replace_folder, tmp_path)
    assert errors == [] and len(winners) == 8
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["who.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or moved-aside folder left


def test_a_failed_overwrite_keeps_the_old_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "who.txt").write_text("before")
    with pytest.raises(FileNotFoundError):
        replace_folder(tmp_path / "missing-staging", tmp_path / "out")
    assert (tmp_path / "out" / "who.txt").read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


_EXPORT = """
import sys
from aa_deploy.export import export_run
try:
    export_run(sys.argv[1], sys.argv[2], backbone_store=sys.argv[3])
except FileExistsError as exc:
    print("REFUSED", type(exc).__name__, exc)
    sys.exit(3)
print("EXPORTED")
"""


def test_two_processes_exporting_to_one_output(tmp_path: Path, run_dir: Path) -> None:
    output, store = tmp_path / "exports" / "rte", tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _EXPORT, str(run_dir), str(output), str(store)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in processes]  # type: ignore[union-attr]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 3], results
    refused = next(out for code, out, _ in results if code == 3)
    assert "REFUSED OutputExistsError" in refused
    assert "--overwrite" in refused
    # The winner's folder is whole: it loads and runs, and nothing else was left beside it.
    manifest = read_manifest(output)
    assert manifest["task"]["name"] == "rte" and (output / MANIFEST_NAME).is_file()
    session = ort.InferenceSession(str(output / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert [p.name for p in output.parent.iterdir()] == ["rte"]
    assert not [p for p in (store / "objects").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------- leftovers
def test_next_export_removes_stale_leftovers_only(
    tmp_path: Path, run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exports, store = tmp_path / "exports", tmp_path / "store"
    dead, live = _dead_pid(), os.getpid()
    stale = [
        _leftover(exports / f".rte.{dead}-abcdefgh.partial"),
        _leftover(exports / f".other.{dead}-abcdefgh.partial.scratch"),
        _leftover(exports / f".sst2.{dead}-0123abcd.old"),
        _leftover(store / "objects" / f".put-{dead}-abcdefgh", size=200_000),
    ]
    kept = [
        _leftover(exports / f".busy.{live}-abcdefgh.partial"),  # its process still runs
        _leftover(exports / f".fresh.{dead}-abcdefgh.partial", mtime=time.time()),  # within the grace period
        _leftover(exports / ".legacy.abcdefgh.partial"),  # no PID recorded: reported, not removed
        _leftover(exports / ".my-notes.old"),  # not a name aa-deploy gives
        _leftover(store / "objects" / f".put-{live}-abcdefgh"),
    ]
    with caplog.at_level(logging.INFO, logger="aa_deploy"):
        export_run(run_dir, exports / "rte", backbone_store=store)

    assert not any(path.exists() for path in stale)
    assert all(path.is_dir() for path in kept)
    assert (exports / "rte" / MANIFEST_NAME).is_file()
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed ")]
    assert len(removed) == 4 and all(f"process {dead}" in m and " MB" in m for m in removed)
    assert any(".put-" in m and "0.2 MB" in m for m in removed)
    assert any(".legacy.abcdefgh.partial" in r.getMessage() and "by hand" in r.getMessage() for r in caplog.records)
    store_objects = json.loads(next((store / "refs").iterdir()).read_text())["object"]
    assert (store / "objects" / store_objects).is_dir()
