"""Tiny backbones, tokenizers and run folders for the export tests (built in seconds, no downloads)."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch

from aa_deploy.config import AdapterConfig
from aa_deploy.modeling import AdaptableAdapterModel

HIDDEN, LAYERS, HEADS, INTERMEDIATE, POSITIONS = 32, 3, 4, 64, 64

_WORDS = (
    "the a an cat sat on mat quick brown fox jumps over lazy dog while farmer watches from porch i loved this "
    "film committee postponed its decision until auditors had reviewed every account in detail no prices rose "
    "sharply march then fell back by end of quarter she said would come but never did researchers found that "
    "new treatment reduced symptoms most patients what time does train to berlin leave tomorrow morning is "
    "without any doubt worst service have ever experienced water boils at degrees celsius sea level museum "
    "collection includes paintings sculptures and rare manuscripts he didn like it results were not "
    "statistically significant two dogs are playing snow"
).split()


def write_tiny_tokenizer(directory: Path) -> Path:
    """A BERT WordPiece tokenizer over a small vocabulary (letters as a fallback for unknown words)."""
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    letters = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(_WORDS)) + letters + [f"##{c}" for c in letters]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=POSITIONS)
    tokenizer.save_pretrained(str(directory))
    return directory


def tiny_config(family: str, vocab_size: int) -> Any:
    import transformers as tf

    common = dict(
        vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE, max_position_embeddings=POSITIONS, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )  # fmt: skip
    if family == "bert":
        return tf.BertConfig(**common)
    if family == "roberta":
        return tf.RobertaConfig(**common, pad_token_id=0, bos_token_id=2, eos_token_id=3, type_vocab_size=1)
    if family == "xlm-roberta":
        return tf.XLMRobertaConfig(**common, pad_token_id=0, bos_token_id=2, eos_token_id=3, type_vocab_size=1)
    if family == "electra":
        return tf.ElectraConfig(**common, embedding_size=HIDDEN)
    if family == "deberta-v2":
        return tf.DebertaV2Config(
            **common, relative_attention=True, position_buckets=16, max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0, pad_token_id=0,
        )  # fmt: skip
    if family == "distilbert":
        return tf.DistilBertConfig(
            vocab_size=vocab_size, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTERMEDIATE,
            max_position_embeddings=POSITIONS, dropout=0.1, attention_dropout=0.1,
        )  # fmt: skip
    raise ValueError(family)


FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "deberta-v2", "distilbert")


def write_tiny_backbone(directory: Path, family: str = "bert", seed: int = 0) -> Path:
    """Save a randomly initialised encoder of ``family`` with the tiny tokenizer, as a local backbone."""
    from transformers import AutoModel

    write_tiny_tokenizer(directory)
    vocab_size = len((directory / "vocab.txt").read_text().split())
    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_config(family, vocab_size))
    # LayerNorm weights 1 / biases 0 everywhere would make many tensors byte-identical; vary them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(str(directory))
    return directory


def make_run(
    directory: Path,
    backbone: Path,
    *,
    recipe: str = "search",
    selected: list[int] | None = None,
    task: dict[str, Any] | None = None,
    rational_version: str = "A",
    zero_denominator: bool = False,
    seed: int = 1,
    max_length: int = 48,
    reduction_factor: float = 4,
    denominator: tuple[float, float, float, float] = (-0.4, 0.8, 0.0, 0.0),
) -> Path:
    """A run folder as ``aa-deploy train`` writes it, with switch logits set to select ``selected``."""
    task = task or {
        "name": "rte",
        "metric": "accuracy",
        "label_names": ["entailment", "not_entailment"],
        "is_pair": True,
    }
    torch.manual_seed(seed)
    config = AdapterConfig(recipe=recipe, rational_version=rational_version, reduction_factor=reduction_factor)  # type: ignore[arg-type]
    model = AdaptableAdapterModel.from_backbone(str(backbone), config, task=task)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in model.trainable_parameter_names() and ".switch." not in name:
                param.normal_(0.0, 0.3)
        for index, rational in model.rationals().items():
            rational.numerator.copy_(torch.tensor([0.02, 0.6, 0.3, 0.05 * index, 0.01, 0.0]))
            if zero_denominator:
                rational.denominator.zero_()
            else:
                rational.denominator.copy_(torch.tensor(denominator) * (1 + index))
        if selected is not None:
            for index, block in model.adapter_layers.items():
                if block.switch is not None:
                    on = int(index) in selected
                    block.switch.logits.copy_(torch.tensor([0.0, 1.0] if on else [1.0, 0.0]))
    model.eval()
    model.save_pretrained(directory)
    (directory / "selection.json").write_text(json.dumps(model.selection()))
    (directory / "training_config.json").write_text(json.dumps({"task": task["name"], "max_length": max_length}))
    (directory / "metrics.json").write_text(json.dumps({"metric": task["metric"], "value": 0.5, "test_value": 0.5}))
    return directory
