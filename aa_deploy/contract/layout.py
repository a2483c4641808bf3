"""The file names of every folder aa-deploy writes, and the key patterns of the trained state dict.

One owner per name: every stage (training, card, Hub push/pull, compiler, server) imports these
instead of spelling the strings again, so renaming a file is a one-line change here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# The library name recorded in adapter configs and given to the Hub (library tag, user agent).
LIBRARY_NAME = "aa-deploy"
# How long any one Hub operation (a download, a push, the login check) may wait before it fails with a
# clear error (aa_deploy.hub.HubTimeoutError): a reachable but silent endpoint must never hang a push or a
# server. `aa-deploy push/serve --hub-timeout` and ServerConfig.hub_timeout_s override it.
DEFAULT_HUB_TIMEOUT_S = 300.0

# ------------------------------------------------------------------ run folder (`aa-deploy train`)
# The adapter files carry an ``aa_`` prefix: PEFT's names (adapter_config.json, adapter_model.safetensors)
# make transformers (with peft installed) and peft itself take a folder for a PEFT adapter, which ours is
# not (no ``peft_type``). Folders written before the rename keep loading: readers go through
# ``adapter_files``, which falls back to the legacy names.
CONFIG_NAME = "aa_adapter_config.json"  # aa_deploy.config.AdapterConfig
WEIGHTS_NAME = "aa_adapter_model.safetensors"  # the trainable state dict (adapters + head)
LEGACY_CONFIG_NAME = "adapter_config.json"  # the same files, as older aa-deploy versions named them
LEGACY_WEIGHTS_NAME = "adapter_model.safetensors"
# Config names a reader accepts, current first (Hub downloads: the required file is any one of them).
ADAPTER_CONFIG_NAMES = (CONFIG_NAME, LEGACY_CONFIG_NAME)
SELECTION_NAME = "selection.json"  # what the switches kept, under KEPT_LAYERS_KEY
# The key of selection.json and metrics.json listing the layers whose adapters run at inference (the
# switch outcome). Named before "kept" became the word; kept as is so existing run folders stay readable.
# Not to be confused with AdapterConfig.selected_layers: where adapters are placed (focused/pruned).
KEPT_LAYERS_KEY = "selected_layers"
METRICS_NAME = "metrics.json"
TRAINING_CONFIG_NAME = "training_config.json"  # holds local paths: never pushed to the Hub
PICTURE_NAME = "activations.png"  # the learned activations; the card reuses the run's copy
CARD_NAME = "README.md"

# ---------------------------------------------------------------- export folder (`aa-deploy export`)
MANIFEST_NAME = "aa_export.json"  # see aa_deploy.contract.manifest
GRAPH_NAME = "model.onnx"  # the task graph
BACKBONE_DATA_NAME = "backbone.onnx_data"  # shared mode: the backbone tensors (the store copy's bytes)
MODEL_CONFIG_NAME = "config.json"  # the transformers config of the sequence classifier
TOKENIZER_NAME = "tokenizer.json"  # what the server tokenizes with (the `tokenizers` library)
# Files of a run folder the export carries along so that the export folder describes itself.
RUN_FILES_FOR_CARD = (SELECTION_NAME, METRICS_NAME, PICTURE_NAME)

# Hidden siblings an export (or training run) writes beside its output while it works: a staging folder
# renamed onto the output at the end, a scratch folder for >2 GiB graphs, and the previous output moved
# aside during an --overwrite publish. Each is named ``.<output name>.<pid>-<random><suffix>`` so that a
# later export can tell the leftovers of a killed process (see aa_deploy.fileio.remove_stale_leftovers).
STAGING_SUFFIX = ".partial"
SCRATCH_SUFFIX = ".scratch"  # appended to the staging folder's name
TRASH_SUFFIX = ".old"

# ------------------------------------------------------------------------- the task graph's I/O
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the names a graph may take, in order
GRAPH_OUTPUT = "logits"

# ------------------------------------------------------------------ backbone store (export/backbone_store)
STORE_GRAPH_NAME = "backbone.onnx"
# The store keeps its data file under BACKBONE_DATA_NAME too: each export reflinks, copies or hard-links it.
STORE_INDEX_NAME = "index.json"
STORE_STAGING_PREFIX = ".put-"  # STORE/objects/.put-<pid>-<random>: an object being written

# ----------------------------------------------------------------------------- Hub downloads
# What a Hub download of a run needs (patterns for huggingface_hub's allow_patterns).
RUN_DOWNLOAD_PATTERNS = (
    CONFIG_NAME,
    WEIGHTS_NAME,
    LEGACY_CONFIG_NAME,
    LEGACY_WEIGHTS_NAME,
    SELECTION_NAME,
    METRICS_NAME,
    "*.md",
)

# ---------------------------------------------------------- keys of the adapter weights (WEIGHTS_NAME)
# One adapter block per layer lives under ``adapter_layers.<i>.``; the rest of the file is the head.
ADAPTER_KEY_PREFIX = "adapter_layers."
ADAPTER_KEY = re.compile(r"adapter_layers\.(\d+)\.(.+)")
SWITCH_MARKER = ".switch."  # every key of a switch holds this (pruning drops them)
SWITCH_LOGITS = "switch.logits"
DOWN_WEIGHT, DOWN_BIAS = "adapter.down.weight", "adapter.down.bias"
UP_WEIGHT, UP_BIAS = "adapter.up.weight", "adapter.up.bias"
RATIONAL_NUMERATOR = "adapter.activation.numerator"
RATIONAL_DENOMINATOR = "adapter.activation.denominator"


def adapter_key(layer: int, part: str) -> str:
    """The state-dict key of ``part`` (one of the names above) of layer ``layer``'s adapter block."""
    return f"{ADAPTER_KEY_PREFIX}{int(layer)}.{part}"


def adapter_key_layer(key: str) -> int | None:
    """The layer an adapter key belongs to (None for head keys)."""
    match = ADAPTER_KEY.fullmatch(key)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class AdapterFiles:
    """The adapter config and weights of one run or export folder, under the names it uses."""

    config: Path
    weights: Path

    @property
    def legacy(self) -> bool:
        """True for a folder written before the ``aa_`` names (PEFT's names)."""
        return self.config.name == LEGACY_CONFIG_NAME


def adapter_files(folder: str | os.PathLike) -> AdapterFiles:
    """Where ``folder`` keeps its adapter config and weights.

    The current names when the folder has the current config file, else the legacy (PEFT-named) pair
    when it has that config, else the current names (so that "missing" errors name today's files).
    Config and weights always come from the same generation: a folder is written whole by one version.
    """
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file() and (folder / LEGACY_CONFIG_NAME).is_file():
        return AdapterFiles(folder / LEGACY_CONFIG_NAME, folder / LEGACY_WEIGHTS_NAME)
    return AdapterFiles(folder / CONFIG_NAME, folder / WEIGHTS_NAME)


# ------------------------------------------- AdapterHub folder (`aa-deploy convert --to adapters`)
# The `adapters` library's own file names (its adapters.utils CONFIG_NAME, WEIGHTS_NAME, ...), which its
# load_adapter reads. That library fixes them: they stay as they are even if our run-folder names change.
ADAPTERHUB_CONFIG_NAME = "adapter_config.json"
ADAPTERHUB_WEIGHTS_NAME = "pytorch_adapter.bin"
ADAPTERHUB_SAFE_WEIGHTS_NAME = "adapter.safetensors"
ADAPTERHUB_HEAD_CONFIG_NAME = "head_config.json"
ADAPTERHUB_HEAD_WEIGHTS_NAME = "pytorch_model_head.bin"
ADAPTERHUB_SAFE_HEAD_WEIGHTS_NAME = "model_head.safetensors"
