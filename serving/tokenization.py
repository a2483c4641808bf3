"""Tokenisation with the ``tokenizers`` library from the exported ``tokenizer.json`` (no transformers).

The tokenizer returns unpadded rows; padding happens when a batch is assembled, to the longest row of
that batch, because rows from many requests (and tasks) end up in one batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidInput


@dataclass(frozen=True)
class Encoded:
    """Token rows of one request: ``ids[i]`` and ``type_ids[i]`` are int64 vectors of equal length."""

    ids: tuple[np.ndarray, ...]
    type_ids: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.ids)


def tokenizer_key(path: Path, max_length: int, is_pair: bool) -> str:
    """Identity of a tokenizer configuration: the file's content plus the truncation settings."""
    return hashlib.sha256(Path(path).read_bytes() + f"|{max_length}|{is_pair}".encode()).hexdigest()[:16]


class TaskTokenizer:
    """A ``tokenizers.Tokenizer`` configured from the manifest: truncation to max_length, no padding."""

    def __init__(self, path: Path, *, max_length: int, is_pair: bool) -> None:
        from tokenizers import Tokenizer

        raw = Path(path).read_bytes()
        try:
            self._tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as exc:  # tokenizers raises plain Exceptions for malformed files
            raise ValueError(f"{path} is not a valid tokenizers file ({exc}); re-export the task") from exc
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
        self.max_length = max_length
        self.is_pair = is_pair
        # Tasks whose tokenisation is identical can share encoded rows (and the backbone prefix).
        self.fingerprint = hashlib.sha256(raw + f"|{max_length}|{is_pair}".encode()).hexdigest()[:16]

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> Encoded:
        """Token rows of ``texts`` (with ``pairs``, one per text: the request path checked they agree)."""
        try:
            if len(texts) == 1:  # encode_batch hands even one text to a thread pool; encode does not
                encodings = [self._tokenizer.encode(texts[0], pairs[0] if pairs is not None else None)]
            else:
                batch = list(zip(texts, pairs, strict=True)) if pairs is not None else list(texts)
                encodings = self._tokenizer.encode_batch(batch, add_special_tokens=True)
        except Exception as exc:  # invalid unicode and similar: the client's input, not our bug
            raise InvalidInput(f"the text could not be tokenised: {exc}") from exc
        ids = tuple(np.asarray(e.ids, dtype=np.int64) for e in encodings)
        type_ids = tuple(np.asarray(e.type_ids, dtype=np.int64) for e in encodings)
        return Encoded(ids=ids, type_ids=type_ids)


def pad_rows(encoded: Sequence[Encoded], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack the rows of several requests into ``input_ids, attention_mask, token_type_ids`` [rows, longest]."""
    rows = [(i, t) for enc in encoded for i, t in zip(enc.ids, enc.type_ids, strict=True)]
    longest = max((len(i) for i, _ in rows), default=1)
    n = len(rows)
    input_ids = np.full((n, longest), pad_id, dtype=np.int64)
    attention_mask = np.zeros((n, longest), dtype=np.int64)
    token_type_ids = np.zeros((n, longest), dtype=np.int64)
    for r, (ids, types) in enumerate(rows):
        input_ids[r, : len(ids)] = ids
        attention_mask[r, : len(ids)] = 1
        token_type_ids[r, : len(types)] = types
    return input_ids, attention_mask, token_type_ids
