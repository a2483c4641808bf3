"""Rational activation, switch, adapter insertion, pruning and save/load on tiny random encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import FAMILIES, tiny_model
from transformers import AlbertConfig, AlbertForSequenceClassification

from aa_deploy import AdaptableAdapterModel, AdapterConfig, BackboneMismatchError, UnsupportedModelError
from aa_deploy.modeling import GumbelSwitch, RationalActivation
from aa_deploy.modeling.rational import RATIONAL_INITS
from aa_deploy.plotting import rational_curve

TASK = {"name": "toy", "metric": "accuracy", "label_names": ["neg", "pos"], "is_pair": False}


def inputs(vocab: int = 128, batch: int = 4, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2 :] = 0  # padding in the batch
    return {"input_ids": ids, "attention_mask": mask}


def build(recipe: str = "search", family: str = "bert", **cfg) -> AdaptableAdapterModel:
    return AdaptableAdapterModel.from_backbone(tiny_model(family), AdapterConfig(recipe=recipe, **cfg), task=TASK)


def set_switches(model: AdaptableAdapterModel, keep: set[int]) -> None:
    with torch.no_grad():
        for index, block in model.adapter_layers.items():
            block.switch.logits.copy_(torch.tensor([0.0, 1.0] if int(index) in keep else [1.0, 0.0]))


# ------------------------------------------------------------------------------------------- rational
@pytest.mark.parametrize("version", ["A", "B"])
def test_rational_equals_its_formula(version: str) -> None:
    torch.manual_seed(0)
    r = RationalActivation("one", version)
    with torch.no_grad():
        r.numerator.copy_(torch.randn(6))
        r.denominator.copy_(torch.randn(4))
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    a = r.numerator.double().detach()
    b = r.denominator.double().detach()
    p = sum(a[i] * x**i for i in range(6))
    if version == "A":
        q = 1 + sum(torch.abs(b[j - 1] * x**j) for j in range(1, 5))
    else:
        q = 1 + torch.abs(sum(b[j - 1] * x**j for j in range(1, 5)))
    expected = p / q
    torch.testing.assert_close(r(x.float()).double(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rational_curve(a.tolist(), b.tolist(), x.numpy(), version), expected.numpy(), rtol=1e-9)


def test_denominator_moves_from_one_init() -> None:
    """sign(0) = +1: with b = 0 a plain abs() would freeze the denominator forever (docs/METHOD.md §2)."""
    torch.manual_seed(0)
    r = RationalActivation("one")
    assert torch.count_nonzero(r.denominator) == 0
    opt = torch.optim.Adam(r.parameters(), lr=0.01)
    x = torch.randn(256)
    for _ in range(3):
        opt.zero_grad()
        ((r(x) - torch.tanh(x)) ** 2).mean().backward()
        assert r.denominator.grad is not None and torch.count_nonzero(r.denominator.grad) == 4
        opt.step()
    assert torch.count_nonzero(r.denominator) == 4


@pytest.mark.parametrize(
    ("init", "reference"),
    [
        ("gelu", torch.nn.functional.gelu),
        ("relu", torch.relu),
        ("leaky_relu", torch.nn.functional.leaky_relu),
        ("identity", lambda x: x),
    ],
)
def test_tabulated_inits_approximate_their_function(init, reference) -> None:
    x = torch.linspace(-3, 3, 601)
    assert (RationalActivation(init)(x) - reference(x)).abs().max() < 0.1


def test_rational_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown rational init"):
        RationalActivation("tanh")
    with pytest.raises(ValueError, match="version A only"):
        RationalActivation("gelu", "B")
    assert set(RATIONAL_INITS) >= {"one", "gelu", "relu", "leaky_relu", "identity"}


# --------------------------------------------------------------------------------------------- switch
def test_switch_rule_and_soft_weights() -> None:
    s = GumbelSwitch(temperature=0.1)
    assert not s.selected  # a tie keeps the layer out: adapter iff logit_adapter > logit_skip
    with torch.no_grad():
        s.logits.copy_(torch.tensor([0.2, 0.3]))
    assert s.selected
    w = s.sample_weights(1000)
    torch.testing.assert_close(w.sum(-1), torch.ones(1000))
    # Low temperature: nearly one-hot, and the adapter wins more often than not.
    assert (w.max(-1).values > 0.9).float().mean() > 0.8
    assert 0.5 < (w[:, 1] > 0.5).float().mean() < 0.75


# ------------------------------------------------------------------------------------------ insertion
@pytest.mark.parametrize("family", FAMILIES)
def test_injection_each_family(family: str) -> None:
    bare = tiny_model(family)
    x = inputs()
    with torch.no_grad():
        reference = bare(**x).logits.clone()
    model = AdaptableAdapterModel.from_backbone(bare, AdapterConfig(recipe="search"), task=TASK).eval()
    assert model.config.num_hidden_layers == 3 and model.config.base_model_type == family
    # Switches start at a tie: every layer skipped, so eval output is exactly the backbone's.
    assert torch.equal(model(**x).logits, reference)
    set_switches(model, {0, 2})
    assert model.kept_layers() == [0, 2]
    assert not torch.allclose(model(**x).logits, reference)
    trainable = set(model.trainable_parameter_names())
    assert all(
        name.startswith("adapter_layers.") or not name.startswith(f"backbone.{bare.base_model_prefix}.")
        for name in trainable
    )
    assert any(".switch.logits" in n for n in trainable) and any(".activation.denominator" in n for n in trainable)
    frozen = [p for n, p in model.named_parameters() if n not in trainable]
    assert frozen and not any(p.requires_grad for p in frozen)


def test_unsupported_family_gets_clear_error() -> None:
    albert = AlbertForSequenceClassification(
        AlbertConfig(vocab_size=64, hidden_size=32, num_attention_heads=2, intermediate_size=64, embedding_size=16)
    )
    with pytest.raises(UnsupportedModelError, match="supported families: .*bert.*distilbert"):
        AdaptableAdapterModel.from_backbone(albert, AdapterConfig(), task=TASK)


def test_skipped_layer_is_exactly_the_backbone_layer() -> None:
    torch.manual_seed(1)
    bare = tiny_model("bert")
    x = inputs()
    hidden_ref = bare.bert(**x).last_hidden_state.detach().clone()
    model = AdaptableAdapterModel.from_backbone(bare, AdapterConfig(recipe="search"), task=TASK).eval()
    set_switches(model, set())
    assert torch.equal(model.backbone.bert(**x).last_hidden_state, hidden_ref)


def test_eval_uses_hard_selection_and_training_is_stochastic() -> None:
    model = build("search")
    set_switches(model, {1})
    x = inputs()
    model.eval()
    first = model(**x).logits
    assert torch.equal(first, model(**x).logits)
    torch.testing.assert_close(first, model.pruned().eval()(**x).logits, rtol=0, atol=1e-6)
    model.train()
    torch.manual_seed(0)
    a = model(**x).logits
    torch.manual_seed(1)
    b = model(**x).logits
    assert not torch.equal(a, b)


def test_pruned_model_removes_adapters_and_switches() -> None:
    model = build("search")
    set_switches(model, {0, 2})
    pruned = model.pruned().eval()
    assert sorted(pruned.adapter_layers.keys()) == ["0", "2"]
    assert all(block.switch is None for block in pruned.adapter_layers.values())
    assert pruned.config.pruned and pruned.config.selected_layers == [0, 2]
    x = inputs()
    torch.testing.assert_close(model.eval()(**x).logits, pruned(**x).logits, rtol=0, atol=1e-5)
    # The original keeps working after the copy (its hooks were re-attached).
    assert model.kept_layers() == [0, 2]


def test_standard_and_focused_recipes() -> None:
    standard = build("standard")
    assert isinstance(standard.adapter_layers["0"].adapter.activation, torch.nn.ReLU)
    assert standard.kept_layers() == [0, 1, 2] and standard.switch_logits() == {}
    focused = build("focused", selected_layers=[2, 0])
    assert sorted(focused.adapter_layers.keys()) == ["0", "2"]
    assert isinstance(focused.adapter_layers["2"].adapter.activation, RationalActivation)
    assert focused.switch_probabilities() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="needs a layer selection"):
        AdapterConfig(recipe="focused")
    with pytest.raises(ValueError, match="do not exist"):
        build("focused", selected_layers=[7])


def test_adapterdrop_drops_lowest_layers() -> None:
    model = build("adapterdrop", adapterdrop_max_layers=2, adapterdrop_eval_layers=1)
    x = inputs()
    model.train()
    seen = set()
    torch.manual_seed(0)
    for _ in range(30):
        model(**x)
        seen.add(tuple(int(i) for i, b in model.adapter_layers.items() if b.dropped))
    assert seen == {(), (0,), (0, 1)}
    model.eval()
    model(**x)
    assert [int(i) for i, b in model.adapter_layers.items() if b.dropped] == [0]
    assert model.kept_layers() == [1, 2]


def test_adapter_shapes_and_init() -> None:
    model = build("standard", reduction_factor=4)
    adapter = model.adapter_layers["0"].adapter
    assert adapter.down.weight.shape == (8, 32) and adapter.up.weight.shape == (32, 8)
    assert torch.count_nonzero(adapter.up.weight) > 0  # not zero-initialised
    assert torch.count_nonzero(adapter.down.bias) == 0


# ------------------------------------------------------------------------------------- persistence
def test_config_round_trips_json() -> None:
    cfg = AdapterConfig(recipe="focused", selected_layers=[3, 1], switch_temperature_final=0.05)
    again = AdapterConfig.from_dict(json.loads(cfg.to_json_string()))
    assert again == cfg and again.selected_layers == [1, 3]
    with pytest.raises(ValueError, match="unknown adapter config keys"):
        AdapterConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown recipe"):
        AdapterConfig(recipe="lora")  # type: ignore[arg-type]


@pytest.mark.parametrize("recipe", ["search", "standard", "focused", "adapterdrop"])
def test_save_load_gives_identical_outputs(tmp_path, tiny_backbone_dir, recipe: str) -> None:
    extra = {"selected_layers": [1]} if recipe == "focused" else {}
    model = AdaptableAdapterModel.from_backbone(
        str(tiny_backbone_dir), AdapterConfig(recipe=recipe, **extra), task=TASK
    )
    if recipe == "search":
        set_switches(model, {0, 2})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(tmp_path / "run")
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["aa_adapter_config.json", "aa_adapter_model.safetensors"]
    loaded = AdaptableAdapterModel.from_pretrained(tmp_path / "run")
    x = inputs(vocab=100)
    assert torch.equal(model(**x).logits, loaded(**x).logits)
    assert loaded.kept_layers() == model.kept_layers()
    # Only trained tensors are saved: a few KB, not the backbone.
    assert (tmp_path / "run" / "aa_adapter_model.safetensors").stat().st_size < 100_000


def test_loading_onto_another_backbone_is_refused(tmp_path, tiny_backbone_dir) -> None:
    model = AdaptableAdapterModel.from_backbone(str(tiny_backbone_dir), AdapterConfig(recipe="search"), task=TASK)
    model.save_pretrained(tmp_path / "run")
    other = tiny_model("bert", seed=123, vocab_size=model.backbone.config.vocab_size)
    with pytest.raises(BackboneMismatchError, match="fingerprint mismatch"):
        AdaptableAdapterModel.from_pretrained(tmp_path / "run", backbone=other)


def test_corrupted_folders_get_clear_errors(tmp_path, tiny_backbone_dir) -> None:
    with pytest.raises(FileNotFoundError, match="not an aa-deploy adapter folder"):
        AdaptableAdapterModel.from_pretrained(tmp_path)
    model = AdaptableAdapterModel.from_backbone(str(tiny_backbone_dir), AdapterConfig(recipe="search"), task=TASK)
    model.save_pretrained(tmp_path / "run")
    weights = tmp_path / "run" / "aa_adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupted"):
        AdaptableAdapterModel.from_pretrained(tmp_path / "run")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        AdaptableAdapterModel.from_pretrained(tmp_path / "run")


def test_half_precision_checkpoint_is_trained_in_fp32(tmp_path, tiny_backbone_dir) -> None:
    """transformers 5 keeps a checkpoint's dtype by default; the adapters' backbone must be fp32."""
    from transformers import AutoModelForSequenceClassification

    half = tmp_path / "half"
    AutoModelForSequenceClassification.from_pretrained(tiny_backbone_dir).half().save_pretrained(half)
    model = AdaptableAdapterModel.from_backbone(str(half), AdapterConfig(recipe="search"), task=TASK)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    out = model.train()(**inputs(vocab=100), labels=torch.tensor([0, 1, 0, 1]))
    out.loss.backward()
