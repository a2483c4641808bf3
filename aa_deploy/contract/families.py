"""The supported backbone families: one row per ``model_type`` with every fact a stage needs.

Adding a family is adding a row here (and a tiny test model in ``tests/tiny_models.py``): the
adapter injection, the compiler (max length, ORT fusions, fingerprint), the server's multi-task graph
(layer-norm scale names) and the Hub push (tokenizer files) all read this table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Config fields that change what every family's backbone computes (see :data:`FINGERPRINT_KEYS`).
_COMMON_FINGERPRINT_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
    "position_embedding_type",
)  # fmt: skip
# What ``tokenizer.save_pretrained`` writes for any family (``spiece.model`` is sentencepiece's
# default name, used by some checkpoints' tokenizers whatever their family).
_COMMON_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "spiece.model",
)  # fmt: skip


class UnsupportedModelError(ValueError):
    """The backbone's ``model_type`` is not in :data:`SUPPORTED_FAMILIES` (no known place for adapters)."""


@dataclass(frozen=True)
class BackboneFamily:
    """What aa-deploy needs to know about one encoder family.

    ``layers`` is the module path of the layer list relative to the base model and
    ``output_layer_norm`` the path of each layer's final ``LN(h + x)`` inside a layer: the adapter
    hooks that module, and since parameter names are kept, the exported graph names its scale
    ``...<layers>.<i>.<output_layer_norm>.weight`` (how the server finds each layer's output).
    """

    model_type: str
    layers: str = "encoder.layer"
    output_layer_norm: str = "output.LayerNorm"
    # Config attribute names of the attention shape (DistilBERT: n_heads, dim).
    heads_key: str = "num_attention_heads"
    hidden_key: str = "hidden_size"
    # The config key bounding the sequence length, and whether position ids start after padding_idx
    # (RoBERTa-like), which takes ``pad_token_id + 1`` positions off the usable length.
    positions_key: str = "max_position_embeddings"
    positions_after_padding: bool = False
    # onnxruntime.transformers.optimizer ``model_type`` (every supported family uses the BERT fusions).
    ort_optimizer_model_type: str = "bert"
    # Family-specific config fields that change the computation (added to the common ones).
    extra_fingerprint_keys: tuple[str, ...] = ()
    # Vocabulary files its tokenizer writes (besides the common ones).
    vocabulary_files: tuple[str, ...] = ("vocab.txt",)

    @property
    def fingerprint_keys(self) -> tuple[str, ...]:
        return _COMMON_FINGERPRINT_KEYS + self.extra_fingerprint_keys

    @property
    def tokenizer_files(self) -> tuple[str, ...]:
        return _COMMON_TOKENIZER_FILES + self.vocabulary_files


_ROBERTA_LIKE = {"positions_after_padding": True}
SUPPORTED_FAMILIES: dict[str, BackboneFamily] = {
    family.model_type: family
    for family in (
        BackboneFamily("bert"),
        BackboneFamily("roberta", vocabulary_files=("vocab.json", "merges.txt"), **_ROBERTA_LIKE),
        BackboneFamily("xlm-roberta", vocabulary_files=("sentencepiece.bpe.model",), **_ROBERTA_LIKE),
        BackboneFamily("camembert", vocabulary_files=("sentencepiece.bpe.model",), **_ROBERTA_LIKE),
        BackboneFamily("electra", extra_fingerprint_keys=("embedding_size",)),
        BackboneFamily(
            "deberta-v2",
            extra_fingerprint_keys=("relative_attention", "pos_att_type", "max_relative_positions", "position_buckets"),
            vocabulary_files=("spm.model",),
        ),
        BackboneFamily(
            "distilbert",
            layers="transformer.layer",
            output_layer_norm="output_layer_norm",
            heads_key="n_heads",
            hidden_key="dim",
            extra_fingerprint_keys=("dim", "n_layers", "n_heads", "hidden_dim", "activation"),
        ),
    )
}


def _union(groups: list[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for group in groups for name in group))


# The fingerprint hashes the union over all families, so that a config's fingerprint does not depend
# on which family row it matched (fingerprints are recorded in artefacts and compared on load).
FINGERPRINT_KEYS: tuple[str, ...] = _union([f.fingerprint_keys for f in SUPPORTED_FAMILIES.values()])
# Every tokenizer file any supported family writes (what a push copies when present).
TOKENIZER_FILES: tuple[str, ...] = _union([f.tokenizer_files for f in SUPPORTED_FAMILIES.values()])


def family_for(model_type: str) -> BackboneFamily:
    """The family row of ``model_type``, or an error naming the supported families."""
    try:
        return SUPPORTED_FAMILIES[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported for adapter insertion; supported families: "
            f"{', '.join(sorted(SUPPORTED_FAMILIES))}. Use a backbone of one of these families "
            "(e.g. bert-base-uncased, roberta-base, distilbert-base-uncased)."
        ) from None


def _layer_norm_scale_pattern() -> re.Pattern[str]:
    layer_lists = sorted({re.escape(f.layers.rsplit(".", 1)[-1]) for f in SUPPORTED_FAMILIES.values()})
    norms = sorted({re.escape(f.output_layer_norm) for f in SUPPORTED_FAMILIES.values()})
    return re.compile(rf"(?:^|[./])(?:{'|'.join(layer_lists)})\.(\d+)\.(?:{'|'.join(norms)})\.weight$")


# Matches the scale initializer of any family's layer output LayerNorm; group 1 is the layer index.
LAYER_NORM_SCALE = _layer_norm_scale_pattern()
