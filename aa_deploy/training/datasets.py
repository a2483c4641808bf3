"""Tokenised examples for the Trainer; padding happens per batch (pad to the longest in the batch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ..data import Example, TaskDefinition


class TokenizedDataset(torch.utils.data.Dataset):
    """Pre-tokenised once (fast tokenizers batch well), unpadded; the collator pads each batch."""

    def __init__(
        self, examples: Sequence[Example], spec: TaskDefinition, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> None:
        texts = [e.text for e in examples]
        pairs = [e.text_pair or "" for e in examples] if spec.is_pair else None
        encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        self.features: list[dict[str, Any]] = []
        for i, example in enumerate(examples):
            item = {key: values[i] for key, values in encoded.items()}
            item["labels"] = float(example.label) if spec.is_regression else int(example.label)
            self.features.append(item)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]
