"""Which texts the serving benchmarks send: GLUE dev files read by the package's own GLUE reader when
$AA_GLUE_DIR has them, the built-in sentences otherwise, and the results file says which."""

from __future__ import annotations

from pathlib import Path

import pytest
from glue_fakes import WORDS, fake_glue
from serving_helpers import load_benchmark

from aa_deploy.cli_options import GLUE_DIR_ENV
from aa_deploy.data import DataError


def test_glue_pairs_and_builtin_sentences_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("serving_bench.py")
    monkeypatch.setenv(GLUE_DIR_ENV, str(fake_glue(tmp_path / "glue")))  # RTE only, no SST-2
    singles, pairs = bench.load_texts()
    assert singles == bench.FALLBACK_TEXTS
    assert pairs == [(WORDS[i % 4], WORDS[(i + 1) % 4]) for i in range(40, 48)]  # the RTE dev rows
    assert bench.texts_source() == f"sentences: built-in; pairs: {tmp_path / 'glue' / 'RTE' / 'dev.tsv'}"


def test_without_the_glue_folder_the_builtin_texts_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("serving_bench.py")
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    singles, pairs = bench.load_texts()
    assert singles == bench.FALLBACK_TEXTS and len(pairs) == len(singles)
    assert bench.texts_source() == "sentences: built-in; pairs: built-in"


def test_a_malformed_glue_file_fails_instead_of_swapping_texts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("serving_bench.py")
    glue = fake_glue(tmp_path / "glue")
    (glue / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tonly two columns\n")
    monkeypatch.setenv(GLUE_DIR_ENV, str(glue))
    with pytest.raises(DataError, match="dev.tsv"):
        bench.load_texts()
