"""Tiny random encoders of every supported family, and a tiny tokenizer, for fast tests."""

from __future__ import annotations

import csv
import string
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertTokenizerFast,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    PreTrainedModel,
    RobertaConfig,
    XLMRobertaConfig,
)

DEMO_DATA = Path(__file__).resolve().parents[1] / "aa_deploy" / "demo_data"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_config(family: str, vocab_size: int = 128, num_layers: int = 3, **kwargs) -> AutoConfig:
    # A large init scale makes the random encoder's features differ enough between sentences for a
    # head to learn from them in a few steps.
    common = dict(vocab_size=vocab_size, max_position_embeddings=160, pad_token_id=0, initializer_range=0.5)
    if family == "distilbert":
        return DistilBertConfig(dim=32, n_layers=num_layers, n_heads=2, hidden_dim=64, **common, **kwargs)
    bert_like = dict(
        hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=64, **common
    )
    factories = {
        "bert": lambda: BertConfig(**bert_like, **kwargs),
        "roberta": lambda: RobertaConfig(**bert_like, type_vocab_size=1, **kwargs),
        "xlm-roberta": lambda: XLMRobertaConfig(**bert_like, type_vocab_size=1, **kwargs),
        "electra": lambda: ElectraConfig(**{**bert_like, "embedding_size": 32}, **kwargs),
        "deberta-v2": lambda: DebertaV2Config(**bert_like, type_vocab_size=0, **kwargs),
    }
    return factories[family]()


FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta-v2")


def tiny_model(family: str = "bert", num_labels: int = 2, seed: int = 0, **kwargs) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = tiny_config(family, **kwargs)
    config.num_labels = num_labels
    if num_labels == 1:
        config.problem_type = "regression"
    model = AutoModelForSequenceClassification.from_config(config)
    return model.eval()


def demo_vocabulary() -> list[str]:
    words: set[str] = set()
    for name in ("sentiment_train.csv", "sentiment_test.csv"):
        with open(DEMO_DATA / name, newline="") as f:
            for row in csv.DictReader(f):
                words.update(row["text"].lower().split())
    return SPECIALS + sorted(words) + list(string.ascii_lowercase) + list(string.digits) + list(".,!?'\"-")


def save_tiny_backbone(directory: Path, family: str = "bert", seed: int = 0, num_layers: int = 3) -> Path:
    """A loadable model folder (weights + tokenizer), like a real Hub checkpoint but a few KB."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = demo_vocabulary()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    if family in ("distilbert", "roberta", "xlm-roberta"):
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.save_pretrained(directory)
    model = tiny_model(family, seed=seed, vocab_size=len(vocab), num_layers=num_layers)
    model.save_pretrained(directory)
    return directory
