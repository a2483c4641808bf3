"""Tiny GLUE-shaped folders for the benchmark tests (the real GLUE files are never copied into tests)."""

from __future__ import annotations

from pathlib import Path

WORDS = ["the film is superb .", "the story was dull .", "the cast feels warm .", "the script is awful ."]


def fake_glue(root: Path) -> Path:
    """A tiny RTE-shaped folder (the real GLUE files are never copied into tests)."""
    rte = root / "RTE"
    rte.mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    rows = [
        f"{i}\t{WORDS[i % 4]}\t{WORDS[(i + 1) % 4]}\t{'entailment' if i % 2 else 'not_entailment'}" for i in range(48)
    ]
    (rte / "train.tsv").write_text(header + "\n".join(rows[:40]) + "\n")
    (rte / "dev.tsv").write_text(header + "\n".join(rows[40:]) + "\n")
    return root


def fake_stsb(root: Path) -> Path:
    """A tiny STS-B-shaped folder: a regression score (Spearman) moves with any change of the outputs."""
    folder = root / "STS-B"
    folder.mkdir(parents=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = [f"{i}\tmain\tf\t2012\t{i:04d}\tnone\tnone\t{WORDS[i % 4]}\t{WORDS[(i * 3 + 1) % 4]} {WORDS[i % 3]}\t{(i * 7) % 11 / 2:.3f}"
            for i in range(48)]  # fmt: skip
    (folder / "train.tsv").write_text(header + "\n".join(rows[:40]) + "\n")
    (folder / "dev.tsv").write_text(header + "\n".join(rows[40:]) + "\n")
    return root
