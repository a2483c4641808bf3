"""Which texts the serving benchmarks send: GLUE dev files read by the package's own GLUE reader when
$AA_GLUE_DIR has them, the built-in sentences otherwise, and the results file says which."""

from __future__ import annotations

from pathlib import Path

import pytest
from glue_fakes import WORDS, fake_glue
from serving_helpers import load_benchmark

from aa_deploy.cli_options import GLUE_DIR_ENV


def test_glue_pairs_and_builtin_sentences_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("serving_bench.py")
    monkeypatch.setenv(GLUE_DIR_ENV, str(fake_glue(tmp_path / "glue")))  # RTE only, no SST-2
    singles, pairs = bench.load_texts()
    assert singles == bench.FALLBACK_TEXTS
    assert pairs == [(WORDS[i % 4], WORDS[(i + 1) % 4]) for i in range(40, 48)]  # the RTE dev rows
    assert bench.texts_source() == f"built-in sentences / GLUE RTE dev (from {tmp_path / 'glue'})"


def test_without_the_glue_folder_the_builtin_texts_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("serving_bench.py")
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    singles, pairs = bench.load_texts()
    assert singles == bench.FALLBACK_TEXTS and len(pairs) == len(singles)
    assert bench.texts_source() == "built-in sentences / built-in pairs ($AA_GLUE_DIR unset)"
