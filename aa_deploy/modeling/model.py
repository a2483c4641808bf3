"""The trainable model: a frozen Hugging Face encoder with adapter blocks and a task head."""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import logging as hf_logging

from ..backbones import (
    canonical_backbone_reference,
    config_fingerprint,
    frozen_parameter_names,
    resolve_backbone_path,
    weights_fingerprint,
)
from ..config import AdapterConfig
from ..contract.families import family_for
from ..contract.layout import (
    ADAPTER_CONFIG_NAMES,
    ADAPTER_KEY_PREFIX,
    KEPT_LAYERS_KEY,
    RUN_DOWNLOAD_PATTERNS,
    SWITCH_MARKER,
    WEIGHTS_NAME,
    adapter_files,
    adapter_key_layer,
)
from ..contract.rules import adapterdrop_keeps_layer, kept_by_switches
from ..fileio import atomic_write_with
from .adapter import AdapterBlock, BottleneckAdapter
from .injection import attach_adapter_blocks, encoder_layers, output_layer_norms
from .rational import RationalActivation
from .switch import GumbelSwitch

_DTYPE_KWARG = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


class BackboneMismatchError(ValueError):
    """The adapter was trained on a different backbone than the one it is being loaded onto."""


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the expected "classifier weights newly initialised" report while loading backbones."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def load_sequence_classifier(
    name_or_path: str | None, task: dict[str, Any] | None = None, **kwargs: Any
) -> PreTrainedModel:
    """Load ``AutoModelForSequenceClassification`` with the head shaped for ``task`` (a TaskDefinition dict)."""
    head_kwargs: dict[str, Any] = {}
    if task is not None:
        label_names = task.get("label_names")
        if label_names is None:
            head_kwargs.update(num_labels=1, problem_type="regression")
        else:
            head_kwargs.update(
                num_labels=len(label_names),
                problem_type="single_label_classification",
                id2label=dict(enumerate(label_names)),
                label2id={name: i for i, name in enumerate(label_names)},
            )
    # A backbone folder may carry a head of another size (a model fine-tuned on another task): the head
    # is ours to train, so a size mismatch there is expected, not an error.
    kwargs.setdefault("ignore_mismatched_sizes", True)
    # transformers 5 loads a checkpoint in its stored dtype by default; adapters train in fp32
    # (docs/METHOD.md §5) next to an fp32 backbone, also when the checkpoint was saved in fp16/bf16.
    kwargs.setdefault(_DTYPE_KWARG, torch.float32)
    with _quiet_transformers():
        return AutoModelForSequenceClassification.from_pretrained(
            resolve_backbone_path(name_or_path), **head_kwargs, **kwargs
        )


class AdaptableAdapterModel(nn.Module):
    """Frozen encoder + per-layer adapter blocks (+ switches) + trainable head.

    Only the adapters, switches, rational coefficients and head are trained and saved; the backbone is
    referenced by name/path and fingerprint, like PEFT's ``base_model_name_or_path``.
    """

    def __init__(self, backbone: PreTrainedModel, config: AdapterConfig) -> None:
        super().__init__()
        family_for(backbone.config.model_type)  # fails early, naming the supported families
        self.backbone = backbone
        self.config = config
        norms = output_layer_norms(backbone)
        num_layers = len(encoder_layers(backbone))
        hidden_size = int(getattr(norms[0], "normalized_shape", [backbone.config.hidden_size])[0])
        config.num_hidden_layers = num_layers
        config.hidden_size = hidden_size
        config.base_model_type = backbone.config.model_type
        config.base_model_config_fingerprint = config_fingerprint(backbone.config)
        if config.base_model_weights_fingerprint is None:
            config.base_model_weights_fingerprint = weights_fingerprint(backbone.base_model)
        if config.uses_adapterdrop and config.adapterdrop_max_layers is None:
            config.adapterdrop_max_layers = num_layers // 2
        frozen = frozen_parameter_names(backbone)
        for name, param in backbone.named_parameters():
            param.requires_grad = name not in frozen
        self.adapter_layers = nn.ModuleDict(
            {str(i): self._build_block(hidden_size) for i in config.adapter_layers(num_layers)}
        )
        self._hooks: list[Any] = []
        self.attach()

    # ----------------------------------------------------------------------------------- construction
    def _build_block(self, hidden_size: int) -> AdapterBlock:
        cfg = self.config
        if cfg.uses_rational:
            activation: nn.Module = RationalActivation(
                cfg.rational_init, cfg.rational_version, cfg.numerator_degree, cfg.denominator_degree
            )
        else:
            activation = nn.ReLU()
        adapter = BottleneckAdapter(hidden_size, cfg.bottleneck_size(hidden_size), activation, cfg.init_std)
        switch = GumbelSwitch(cfg.switch_temperature, cfg.switch_init) if cfg.uses_switch else None
        return AdapterBlock(adapter, switch)

    def attach(self) -> None:
        """(Re)attach the adapter blocks' hooks to the backbone's layers."""
        self.detach()
        self._hooks = attach_adapter_blocks(self.backbone, {int(i): block for i, block in self.adapter_layers.items()})

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @classmethod
    def from_backbone(
        cls, backbone: str | PreTrainedModel | None, config: AdapterConfig, task: dict[str, Any] | None = None
    ) -> AdaptableAdapterModel:
        """Build fresh adapters around a backbone given by Hub id, local folder or loaded model."""
        task = task if task is not None else config.task
        if isinstance(backbone, PreTrainedModel):
            model = backbone
            if config.base_model_name_or_path is None:
                config.base_model_name_or_path = getattr(backbone.config, "_name_or_path", None)
        else:
            model = load_sequence_classifier(backbone, task)
            config.base_model_name_or_path = canonical_backbone_reference(backbone)
        config.task = task
        return cls(model, config)

    # ---------------------------------------------------------------------------------------- forward
    def _set_dropped_layers(self) -> None:
        cfg = self.config
        if cfg.uses_switch and cfg.max_layers is not None:
            # Layer budget: in eval only the budget's layers run (the rule the compiler applies); in
            # training every switch keeps mixing softly so that all of them go on learning.
            kept = set(self.kept_layers()) if not self.training else None
            for index, block in self.adapter_layers.items():
                block.dropped = kept is not None and int(index) not in kept
            return
        if not cfg.uses_adapterdrop:
            return
        if self.training:
            k = cfg.adapterdrop_max_layers or 0
            n_drop = int(torch.randint(0, k + 1, ()).item())
        else:
            n_drop = cfg.adapterdrop_eval_layers
        for index, block in self.adapter_layers.items():
            block.dropped = int(index) < n_drop

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        self._set_dropped_layers()
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    # ------------------------------------------------------------------------- transformers pipelines
    # transformers' pipelines accept a model object that answers like a PreTrainedModel in a few
    # respects: where it lives (``device``, ``dtype``), whether it generates, and the head's labels on
    # ``config`` (AdapterConfig derives num_labels, id2label and problem_type from the task). With these,
    # ``pipeline("text-classification", model=AdaptableAdapterModel.from_pretrained(run), tokenizer=...)``
    # scores with this model, adapters included. (A PreTrainedModel subclass would have to carry a
    # transformers config as ``config``, which is the AdapterConfig here, on purpose.)
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @classmethod
    def can_generate(cls) -> bool:
        return False

    # ------------------------------------------------------------------------------------- selection
    def kept_layers(self) -> list[int]:
        """Layers whose adapters contribute in eval mode: what the compiler keeps."""
        cfg = self.config
        by_switch = set(kept_by_switches(self.switch_logits(), cfg.max_layers))
        kept = []
        for index, block in self.adapter_layers.items():
            i = int(index)
            if cfg.uses_adapterdrop and not adapterdrop_keeps_layer(i, cfg.adapterdrop_eval_layers):
                continue
            if block.switch is not None and i not in by_switch:
                continue
            kept.append(i)
        return sorted(kept)

    def switch_probabilities(self) -> list[float]:
        """Per layer, the probability of the adapter branch (1/0 for layers without a switch)."""
        kept = set(self.kept_layers())
        probs = []
        for i in range(self.config.num_hidden_layers or 0):
            block = self.adapter_layers[str(i)] if str(i) in self.adapter_layers else None
            if block is not None and block.switch is not None:
                probs.append(block.switch.adapter_probability())
            else:
                probs.append(1.0 if i in kept else 0.0)
        return probs

    def switch_logits(self) -> dict[int, list[float]]:
        return {
            int(i): [float(v) for v in block.switch.logits.detach().cpu()]
            for i, block in self.adapter_layers.items()
            if block.switch is not None
        }

    def selection(self) -> dict[str, Any]:
        return {
            KEPT_LAYERS_KEY: self.kept_layers(),
            "switch_probabilities": self.switch_probabilities(),
            "switch_logits": {str(k): v for k, v in self.switch_logits().items()},
            "num_layers": self.config.num_hidden_layers,
            "recipe": self.config.recipe,
        }

    def rationals(self) -> dict[int, RationalActivation]:
        return {int(i): b.rational for i, b in self.adapter_layers.items() if b.rational is not None}

    # --------------------------------------------------------------------------------------- pruning
    def bare_backbone_copy(self) -> PreTrainedModel:
        """A deep copy of the backbone without this model's adapter hooks (they would run twice)."""
        self.detach()
        try:
            return copy.deepcopy(self.backbone)
        finally:
            self.attach()

    def pruned(self) -> AdaptableAdapterModel:
        """A copy in which deselected adapters and all switches are physically removed.

        In eval mode it computes exactly what this model computes in eval mode (the skip branch is the
        untouched backbone layer), with fewer modules and no switch logic.
        """
        kept = self.kept_layers()
        backbone = self.bare_backbone_copy()
        config = AdapterConfig.from_dict(self.config.to_dict())
        config.pruned = True
        config.selected_layers = kept
        config.adapterdrop_eval_layers = 0
        clone = AdaptableAdapterModel(backbone, config)
        state = {k: v for k, v in self.trainable_state_dict().items() if SWITCH_MARKER not in k}
        state = {k: v for k, v in state.items() if adapter_key_layer(k) in (None, *kept)}
        clone.load_trainable_state_dict(state)
        clone.train(self.training)
        return clone

    def every_layer_counterpart(self) -> AdaptableAdapterModel:
        """This model (pruned) with an adapter at every layer: the kept layers' own adapters, every other
        layer a copy of the first kept layer's (freshly initialised ones when no layer is kept), the same
        head. In eval mode, like the model the caller measures it against.

        What the kept layers are compared with when their saving is measured (the end of training, and
        ``aa-deploy export --measure-latency``): the same adapter, so the same cost, at every layer; the
        values of the added adapters do not matter for that.
        """
        source = self if self.config.pruned else self.pruned()
        kept = source.kept_layers()
        num_layers = int(source.config.num_hidden_layers or 0)
        config = AdapterConfig.from_dict(source.config.to_dict())
        config.selected_layers = list(range(num_layers))
        full = AdaptableAdapterModel(source.bare_backbone_copy(), config)
        state, fresh = source.trainable_state_dict(), full.trainable_state_dict()

        def value(name: str) -> torch.Tensor:
            layer = adapter_key_layer(name)
            if layer is None or layer in kept:  # the head, a kept layer
                return state[name]
            if not kept:
                return fresh[name]
            return state[name.replace(f"adapter_layers.{layer}.", f"adapter_layers.{kept[0]}.", 1)]

        full.load_trainable_state_dict({name: value(name) for name in full.trainable_parameter_names()})
        return full.eval()

    # ---------------------------------------------------------------------------------- persistence
    def trainable_parameter_names(self) -> list[str]:
        frozen = {f"backbone.{n}" for n in frozen_parameter_names(self.backbone)}
        return [name for name, _ in self.named_parameters() if name not in frozen]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        params = dict(self.named_parameters())
        return {name: params[name].detach() for name in self.trainable_parameter_names()}

    def num_trainable_parameters(self, include_head: bool = True) -> int:
        return sum(
            v.numel()
            for k, v in self.trainable_state_dict().items()
            if include_head or k.startswith(ADAPTER_KEY_PREFIX)
        )

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_parameter_names())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                "adapter weights do not match the adapter config: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. "
                "The folder is corrupted or its files come from different runs."
            )
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                if params[name].shape != value.shape:
                    raise ValueError(
                        f"shape of {name} is {tuple(value.shape)} in the file but {tuple(params[name].shape)} "
                        "in the model: the weights were trained with another config or backbone"
                    )
                params[name].copy_(value)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write the adapter config and weights (CONFIG_NAME, WEIGHTS_NAME: trained weights only)."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()}
        atomic_write_with(
            directory / WEIGHTS_NAME,
            # One metadata key: safetensors writes a multi-key map in hash order, which would make
            # re-saves (and therefore re-exports) differ byte for byte.
            lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}),
        )
        self.config.save(directory)
        return directory

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool = False,
        revision: str | None = None,
        token: str | bool | None = None,
        commit_message: str | None = None,
    ) -> str:
        """Publish the compact artefact to the Hub in one commit and return the commit URL.

        Deselected adapters and switches are pruned into a temporary folder first (with a model card),
        so only the kept layers' tensors are uploaded. The token comes from ``token``, ``HF_TOKEN`` or
        the stored login (``hf auth login``).
        """
        from ..hub_push import push_model_to_hub  # the Hub client is only needed when pushing

        return push_model_to_hub(
            self, repo_id, private=private, revision=revision, token=token, commit_message=commit_message
        ).commit_url

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | os.PathLike,
        *,
        backbone: str | PreTrainedModel | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        check_fingerprint: bool = True,
    ) -> AdaptableAdapterModel:
        """Load an adapter folder (or Hub id) onto its backbone (or the one given), in eval mode."""
        directory = _resolve_adapter_folder(pretrained, revision=revision, token=token)
        config = AdapterConfig.load(directory)
        files = adapter_files(directory)  # today's names, or PEFT's in folders of older versions
        weights = files.weights
        if not weights.is_file():
            raise FileNotFoundError(
                f"{weights} not found: the adapter folder {directory} is incomplete (it has {files.config.name} "
                "but no weights); re-run the training or export that wrote it"
            )
        if isinstance(backbone, PreTrainedModel):
            model_backbone = backbone
        else:
            model_backbone = load_sequence_classifier(backbone or config.base_model_name_or_path, config.task)
        if check_fingerprint:
            check_backbone_matches(config, model_backbone)
        model = cls(model_backbone, config)
        try:
            state = load_file(str(weights))
        except Exception as exc:  # safetensors raises its own error types for truncated files
            raise ValueError(f"{weights} could not be read ({exc}): the file is corrupted") from exc
        model.load_trainable_state_dict(state)
        model.eval()
        return model


def check_backbone_matches(config: AdapterConfig, backbone: PreTrainedModel) -> None:
    """Refuse to load adapters onto a backbone other than the one they were trained on."""
    checks = [
        ("config", config.base_model_config_fingerprint, config_fingerprint(backbone.config)),
    ]
    if config.base_model_weights_fingerprint is not None:
        checks.append(("weights", config.base_model_weights_fingerprint, weights_fingerprint(backbone.base_model)))
    for what, expected, actual in checks:
        if expected is not None and expected != actual:
            raise BackboneMismatchError(
                f"backbone {what} fingerprint mismatch: the adapter was trained on "
                f"{config.base_model_name_or_path!r} ({expected}) but the backbone given has {actual}. "
                "Load it onto the backbone it was trained on (pass backbone=... / --backbone)."
            )


def _resolve_adapter_folder(pretrained: str | os.PathLike, *, revision: str | None, token: str | bool | None) -> Path:
    path = Path(os.path.expanduser(str(pretrained)))
    if path.is_dir():
        return path
    from ..hub import resolve_pretrained_path  # imported lazily: most loads are local

    # Only the adapter files: a repo pushed with --with-onnx also holds the ONNX graph and backbone data,
    # which PyTorch loading does not need.
    patterns = list(RUN_DOWNLOAD_PATTERNS)
    return Path(
        resolve_pretrained_path(
            str(pretrained),
            revision=revision,
            token=token,
            allow_patterns=patterns,
            required_file=ADAPTER_CONFIG_NAMES,
        )
    )
