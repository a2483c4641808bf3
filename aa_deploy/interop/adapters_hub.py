"""Convert a run folder into an AdapterHub adapter (the ``adapters`` library's save format).

Users of AdapterHub load adapters with ``model.load_adapter(folder)``. Our ReLU adapters are the
library's sequential bottleneck adapter in one particular configuration, so they can be carried over
exactly. The math (docs/METHOD.md §1): with ``s = h + x`` the input of a layer's output LayerNorm
``LN``, our block computes ``LN(s + A(LN(s)))`` with ``A(z) = W_up relu(W_down z + b_down) + b_up``.
The library's ``SeqBnConfig`` computes the same with

* ``original_ln_before=True`` and ``residual_before_ln="post_add"``: the adapter reads ``LN(s)`` and
  its residual is ``s``;
* ``adapter_residual_before_ln=True`` and ``ln_after=True``: it returns ``LN'(s + A(LN(s)))``, where
  ``LN'`` is the adapter's own LayerNorm, which we fill with the layer's ``LN`` weights;
* ``original_ln_after=False`` (the layer's LayerNorm is not applied a second time), ``scaling=1.0``,
  no dropout, and ``leave_out`` = the layers whose adapters do not run at inference.

One numerical difference remains: the library builds that LayerNorm with PyTorch's default epsilon
(1e-5) where BERT-like backbones use 1e-12, which moves logits by about 1e-6.

What cannot be carried: the learnable rational activation (recipes ``search`` and ``focused``). The
library only has fixed activation functions, so such runs are refused with a message saying so;
the Gumbel switches need no carrying, as only the kept layers' adapters are written.

The task head becomes the library's classification head (``num_labels=1`` for regression), laid out
per backbone family in :data:`HUB_FAMILIES`.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..contract.families import family_for
from ..contract.layout import (
    ADAPTER_KEY_PREFIX,
    ADAPTERHUB_CONFIG_NAME,
    ADAPTERHUB_HEAD_CONFIG_NAME,
    ADAPTERHUB_HEAD_WEIGHTS_NAME,
    ADAPTERHUB_SAFE_HEAD_WEIGHTS_NAME,
    ADAPTERHUB_SAFE_WEIGHTS_NAME,
    ADAPTERHUB_WEIGHTS_NAME,
    CARD_NAME,
    DOWN_BIAS,
    DOWN_WEIGHT,
    UP_BIAS,
    UP_WEIGHT,
    adapter_key,
)
from ..fileio import atomic_write_json, atomic_write_text, replace_folder, staging_dir_for

# The library version whose save format we write (what its own `save_adapter` records as "version").
ADAPTERS_FORMAT = "adapters.1.3.0"
# The library's file names live in the contract (aa_deploy.contract.layout, ADAPTERHUB_*).
ADAPTER_CONFIG_FILE = ADAPTERHUB_CONFIG_NAME
ADAPTER_WEIGHTS_FILE = ADAPTERHUB_WEIGHTS_NAME
ADAPTER_SAFE_WEIGHTS_FILE = ADAPTERHUB_SAFE_WEIGHTS_NAME
HEAD_CONFIG_FILE = ADAPTERHUB_HEAD_CONFIG_NAME
HEAD_WEIGHTS_FILE = ADAPTERHUB_HEAD_WEIGHTS_NAME
HEAD_SAFE_WEIGHTS_FILE = ADAPTERHUB_SAFE_HEAD_WEIGHTS_NAME
README_FILE = CARD_NAME
# Our trained head lives under the backbone module of the trainable state dict.
_HEAD_PREFIX = "backbone."


class NotConvertibleError(ValueError):
    """The run uses something the ``adapters`` library cannot represent; the message says what."""


@dataclass(frozen=True)
class HubFamily:
    """Where the ``adapters`` library keeps one backbone family's adapters and how its head is laid out.

    ``head_keys`` maps our head's parameter names to the library's ``ClassificationHead`` modules: a
    ``layers=2`` head is ``[Dropout, Linear, activation, Dropout, Linear]``, so its linears are modules
    1 and 4; BERT's head reads the (frozen, backbone-owned) pooler output and is one linear (module 1).
    ``head_activation`` None means: the backbone config's ``pooler_hidden_act`` (DeBERTa-v2).
    """

    model_class: str
    adapter_module: str
    head_layers: int
    use_pooler: bool
    head_activation: str | None
    head_keys: dict[str, str] = field(default_factory=dict)


_TWO_LINEARS = {"classifier.dense.weight": "1.weight", "classifier.dense.bias": "1.bias",
                "classifier.out_proj.weight": "4.weight", "classifier.out_proj.bias": "4.bias"}  # fmt: skip
HUB_FAMILIES: dict[str, HubFamily] = {
    "bert": HubFamily("BertAdapterModel", "output", 1, True, "tanh",
                      {"classifier.weight": "1.weight", "classifier.bias": "1.bias"}),
    "roberta": HubFamily("RobertaAdapterModel", "output", 2, False, "tanh", _TWO_LINEARS),
    "xlm-roberta": HubFamily("XLMRobertaAdapterModel", "output", 2, False, "tanh", _TWO_LINEARS),
    "electra": HubFamily("ElectraAdapterModel", "output", 2, False, "gelu", _TWO_LINEARS),
    "distilbert": HubFamily("DistilBertAdapterModel", "output_adapters", 2, False, "relu",
                            {"pre_classifier.weight": "1.weight", "pre_classifier.bias": "1.bias",
                             "classifier.weight": "4.weight", "classifier.bias": "4.bias"}),
    "deberta-v2": HubFamily("DebertaV2AdapterModel", "output", 2, False, None,
                            {"pooler.dense.weight": "1.weight", "pooler.dense.bias": "1.bias",
                             "classifier.weight": "4.weight", "classifier.bias": "4.bias"}),
}  # fmt: skip


@dataclass
class AdaptersConversion:
    """What :func:`convert_to_adapters` wrote."""

    output: Path
    adapter_name: str
    model_class: str
    base_model: str | None
    kept_layers: list[int]
    left_out_layers: list[int]
    files: list[str]


def adapter_name_for(task_name: str | None) -> str:
    """A name the library accepts as a module key (no dots): the task name, cleaned."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", task_name or "").strip("_")
    return name or "aa_adapter"


def seq_bn_config(*, reduction_factor: float, left_out: list[int]) -> dict[str, Any]:
    """The ``SeqBnConfig`` (as the library saves it) that computes our ReLU adapter block exactly."""
    return {
        "adapter_residual_before_ln": True, "cross_adapter": False, "dropout": 0.0,
        "factorized_phm_W": True, "factorized_phm_rule": False, "hypercomplex_nonlinearity": "glorot-uniform",
        "init_weights": "bert", "init_weights_seed": None, "inv_adapter": None, "inv_adapter_reduction_factor": None,
        "is_parallel": False, "learn_phm": True, "leave_out": list(left_out), "ln_after": True, "ln_before": False,
        "mh_adapter": False, "non_linearity": "relu", "original_ln_after": False, "original_ln_before": True,
        "output_adapter": True, "phm_bias": True, "phm_c_init": "normal", "phm_dim": 4, "phm_init_range": 0.0001,
        "phm_layer": False, "phm_rank": 1, "reduction_factor": reduction_factor, "residual_before_ln": "post_add",
        "scaling": 1.0, "shared_W_phm": False, "shared_phm_rule": True, "stochastic_depth": 0.0, "use_gating": False,
    }  # fmt: skip


def check_convertible(recipe: str, uses_rational: bool, model_type: str | None) -> HubFamily:
    """The family row for the conversion, or :class:`NotConvertibleError` naming what cannot be carried."""
    if uses_rational:
        raise NotConvertibleError(
            f"this run's adapters use learnable rational activations (recipe {recipe!r}); AdapterHub's adapters "
            "library only has fixed activation functions (relu, gelu, tanh, swish, ...), so it cannot compute them. "
            "Convert a run of the standard or adapterdrop recipe (ReLU adapters), or deploy this run with "
            "`aa-deploy export` and `aa-deploy serve`"
        )
    if model_type not in HUB_FAMILIES:
        family_for(model_type or "")  # an unknown family gets the usual message
        raise NotConvertibleError(
            f"the adapters library has no adapter model for backbones of type {model_type!r}; convertible "
            f"families: {', '.join(sorted(HUB_FAMILIES))}"
        )
    return HUB_FAMILIES[model_type]


def _library_reduction_factor(hidden_size: int, bottleneck: int, ours: float) -> float:
    """A reduction factor from which the library derives our bottleneck size (``int(hidden // factor)``)."""
    for factor in (ours, hidden_size / bottleneck, float(hidden_size // bottleneck)):
        if int(hidden_size // factor) == bottleneck:
            return factor
    raise NotConvertibleError(
        f"no reduction factor gives the adapters library a bottleneck of {bottleneck} for hidden size {hidden_size}"
    )


def _library_header(
    name: str, family: HubFamily, model_type: str, hidden_size: int, base: str | None
) -> dict[str, Any]:
    return {"hidden_size": hidden_size, "model_class": family.model_class, "model_name": base,
            "model_type": model_type, "name": name, "version": ADAPTERS_FORMAT}  # fmt: skip


def _readme(name: str, family: HubFamily, base: str | None, kept: list[int], task: dict[str, Any] | None) -> str:
    from ..hub import is_hub_id

    base_text = base or "<the backbone the run was trained on>"
    labels = (task or {}).get("label_names")
    head = (
        f"a classification head over {len(labels)} labels ({', '.join(map(str, labels))})"
        if labels
        else "a regression head"
    )
    return (
        "---\n"
        "library_name: adapter-transformers\n"
        "tags:\n- adapter-transformers\n- adapterhub\n- aa-deploy\n"
        + (f"base_model: {base}\n" if base and is_hub_id(base) else "")  # never a local path
        + "---\n\n"
        f"# {name}\n\n"
        f"A sequential bottleneck adapter (ReLU) for `{base_text}` with {head}, converted from an aa-deploy run "
        "with `aa-deploy convert --to adapters`. It computes the same logits as the aa-deploy model.\n\n"
        f"Adapters run in layers {', '.join(map(str, kept))}; the other layers are left out.\n\n"
        "```python\n"
        "from adapters import AutoAdapterModel\n"
        "from transformers import AutoTokenizer\n\n"
        f'model = AutoAdapterModel.from_pretrained("{base_text}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{base_text}")\n'
        'name = model.load_adapter("PATH_OR_REPO_OF_THIS_FOLDER", set_active=True)  # adapter and head\n'
        'logits = model(**tokenizer(["a first example"], return_tensors="pt")).logits\n'
        "```\n"
    )


def convert_to_adapters(
    run_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    backbone: str | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> AdaptersConversion:
    """Write the run's adapter and head as an AdapterHub adapter folder that ``load_adapter`` reads.

    ``backbone`` replaces the backbone recorded in the run (it must be the same model: the fingerprint
    is checked). Rational runs raise :class:`NotConvertibleError`. The folder appears whole or not at all.
    """
    from ..config import AdapterConfig
    from ..modeling import AdaptableAdapterModel
    from ..modeling.injection import output_layer_norms

    config = AdapterConfig.load(run_dir)  # fails clearly on a folder that is not a run
    family = check_convertible(config.recipe, config.uses_rational, config.base_model_type)
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} already exists and is not empty: choose another --output or pass --overwrite")
    model = AdaptableAdapterModel.from_pretrained(run_dir, backbone=backbone)
    config = model.config
    kept = model.kept_layers()
    num_layers = int(config.num_hidden_layers or 0)
    if not kept:
        raise NotConvertibleError(f"no layer of {run_dir} runs an adapter at inference: there is nothing to convert")
    state = model.trainable_state_dict()
    head = {k.removeprefix(_HEAD_PREFIX): v for k, v in state.items() if not k.startswith(ADAPTER_KEY_PREFIX)}
    if set(head) != set(family.head_keys):
        raise NotConvertibleError(
            f"the task head of {run_dir} has the parameters {sorted(head)}, not the {config.base_model_type} "
            f"classification head the adapters library expects ({sorted(family.head_keys)})"
        )
    backbone_model = model.backbone
    if family.head_activation is None and getattr(backbone_model.config, "pooler_hidden_size", None) not in (
        None, backbone_model.config.hidden_size,
    ):  # fmt: skip
        raise NotConvertibleError(
            "the backbone's pooler size differs from its hidden size: the adapters head cannot hold it"
        )
    adapter_name = adapter_name_for(name or (config.task or {}).get("name"))
    prefix = f"{backbone_model.base_model_prefix}.{family_for(config.base_model_type).layers}"
    norms = output_layer_norms(backbone_model)
    adapter_state: dict[str, torch.Tensor] = {}
    for layer in kept:
        base = f"{prefix}.{layer}.{family.adapter_module}.adapters.{adapter_name}."
        adapter_state[base + "adapter_down.0.weight"] = state[adapter_key(layer, DOWN_WEIGHT)]
        adapter_state[base + "adapter_down.0.bias"] = state[adapter_key(layer, DOWN_BIAS)]
        adapter_state[base + "adapter_up.weight"] = state[adapter_key(layer, UP_WEIGHT)]
        adapter_state[base + "adapter_up.bias"] = state[adapter_key(layer, UP_BIAS)]
        adapter_state[base + "adapter_norm_after.weight"] = norms[layer].weight.detach()
        adapter_state[base + "adapter_norm_after.bias"] = norms[layer].bias.detach()
    head_state = {f"heads.{adapter_name}.{family.head_keys[k]}": v for k, v in head.items()}
    adapter_state = {k: v.detach().cpu().contiguous().clone() for k, v in adapter_state.items()}
    head_state = {k: v.detach().cpu().contiguous().clone() for k, v in head_state.items()}

    hidden_size = int(config.hidden_size or backbone_model.config.hidden_size)
    reduction_factor = _library_reduction_factor(hidden_size, int(state[adapter_key(kept[0], DOWN_WEIGHT)].shape[0]),
                                                 config.reduction_factor)  # fmt: skip
    header = _library_header(adapter_name, family, config.base_model_type, hidden_size, config.base_model_name_or_path)
    left_out = [i for i in range(num_layers) if i not in kept]
    task = config.task or {}
    label_names = task.get("label_names")
    activation = family.head_activation or str(getattr(backbone_model.config, "pooler_hidden_act", "gelu"))
    head_config = {
        "activation_function": activation, "bias": True, "dropout_prob": None, "head_type": "classification",
        "label2id": {str(n): i for i, n in enumerate(label_names)} if label_names else None,
        "layers": family.head_layers, "num_labels": len(label_names) if label_names else 1,
        "use_pooler": family.use_pooler,
    }  # fmt: skip

    staging = staging_dir_for(output)
    try:
        atomic_write_json(staging / ADAPTER_CONFIG_FILE, {"config": seq_bn_config(
            reduction_factor=reduction_factor, left_out=left_out), **header})  # fmt: skip
        atomic_write_json(staging / HEAD_CONFIG_FILE, {"config": head_config, **header})
        torch.save(adapter_state, staging / ADAPTER_WEIGHTS_FILE)
        torch.save(head_state, staging / HEAD_WEIGHTS_FILE)
        save_file(adapter_state, str(staging / ADAPTER_SAFE_WEIGHTS_FILE), metadata={"format": "pt"})
        save_file(head_state, str(staging / HEAD_SAFE_WEIGHTS_FILE), metadata={"format": "pt"})
        atomic_write_text(
            staging / README_FILE, _readme(adapter_name, family, config.base_model_name_or_path, kept, config.task)
        )
        files = sorted(p.name for p in staging.iterdir())
        replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return AdaptersConversion(
        output=output, adapter_name=adapter_name, model_class=family.model_class,
        base_model=config.base_model_name_or_path, kept_layers=kept, left_out_layers=left_out, files=files,
    )  # fmt: skip
