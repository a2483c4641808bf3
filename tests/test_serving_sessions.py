"""Which ONNX Runtime graph optimisers the server's sessions turn off (serving/sessions.py).

On the CPU provider SkipLayerNormFusion is off by default (the fused kernel was slower there than the
Add and LayerNormalization it replaces); on CUDA nothing is turned off; a config can choose either way.
The sessions are real; the optimised graphs are read back from ONNX Runtime's own dump."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from aa_deploy.cli import build_parser
from aa_deploy.serving.cli import build_config
from aa_deploy.serving.config import ServerConfig
from aa_deploy.serving.registry import TaskRegistry
from aa_deploy.serving.sessions import CPU_DISABLED_OPTIMIZERS, SessionSettings, create_session

HIDDEN = 8


def residual_layer_norm() -> onnx.ModelProto:
    """``LayerNorm(x + y)``: the pattern SkipLayerNormFusion fuses."""
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [HIDDEN], np.linspace(0.5, 1.5, HIDDEN).tolist())
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [HIDDEN], np.linspace(-0.1, 0.1, HIDDEN).tolist())
    nodes = [
        helper.make_node("Add", ["x", "y"], ["s"]),
        helper.make_node("LayerNormalization", ["s", "scale", "bias"], ["out"], axis=-1, epsilon=1e-12),
    ]
    shape = ["batch", "seq", HIDDEN]
    graph = helper.make_graph(
        nodes,
        "residual_ln",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "y")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
        [scale, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def optimised_ops(model: onnx.ModelProto, settings: SessionSettings, tmp_path: Path) -> list[str]:
    """The op types of ``model`` after ORT's optimisers, as a session with ``settings`` runs it."""
    options = settings.options()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(
        model.SerializeToString(),
        options,
        providers=settings.resolved_providers(),
        disabled_optimizers=settings.resolved_disabled_optimizers(),
    )
    return [node.op_type for node in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]


def test_default_turns_skip_layer_norm_fusion_off_on_cpu_only() -> None:
    assert SessionSettings(providers=("CPUExecutionProvider",)).resolved_disabled_optimizers() == list(
        CPU_DISABLED_OPTIMIZERS
    )
    assert "SkipLayerNormFusion" in CPU_DISABLED_OPTIMIZERS
    cuda = ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert SessionSettings(providers=cuda).resolved_disabled_optimizers() == []
    assert SessionSettings(providers=cuda, disabled_optimizers=("X",)).resolved_disabled_optimizers() == ["X"]
    chosen = SessionSettings(disabled_optimizers=()).with_providers(["CPUExecutionProvider"])
    assert chosen.resolved_disabled_optimizers() == []  # with_providers keeps the choice


def test_cpu_sessions_keep_add_and_layer_norm_unless_told_otherwise(tmp_path: Path) -> None:
    model = residual_layer_norm()
    cpu = SessionSettings(intra_op_threads=1, providers=("CPUExecutionProvider",))
    assert "SkipLayerNormalization" not in optimised_ops(model, cpu, tmp_path)
    fused = SessionSettings(intra_op_threads=1, providers=("CPUExecutionProvider",), disabled_optimizers=())
    assert "SkipLayerNormalization" in optimised_ops(model, fused, tmp_path)

    # Both compute the same LayerNorm(x + y).
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((2, 3, HIDDEN)).astype(np.float32) for n in ("x", "y")}
    (a,) = create_session(model, cpu).run(["out"], feeds)
    (b,) = create_session(model, fused).run(["out"], feeds)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_create_session_hands_the_choice_to_onnx_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    real = ort.InferenceSession

    def recording(*args, **kwargs):  # the real session, recording what it was asked to turn off
        seen.append(kwargs.get("disabled_optimizers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    create_session(residual_layer_norm(), SessionSettings(providers=("CPUExecutionProvider",)))
    create_session(
        residual_layer_norm(), SessionSettings(providers=("CPUExecutionProvider",), disabled_optimizers=("A", "B"))
    )
    assert seen == [list(CPU_DISABLED_OPTIMIZERS), ["A", "B"]]


def test_server_config_reaches_the_registry_settings() -> None:
    def parse(*argv: str):
        return build_parser().parse_args(["serve", *argv])

    flagged = build_config(parse("--ort-disabled-optimizers", "SkipLayerNormFusion, GeluFusion"), {})
    assert flagged.ort_disabled_optimizers == ["SkipLayerNormFusion", "GeluFusion"]
    assert build_config(parse("--ort-disabled-optimizers", ""), {}).ort_disabled_optimizers == []
    from_env = build_config(parse(), {"AA_DEPLOY_ORT_DISABLED_OPTIMIZERS": "GeluFusion"})
    assert from_env.ort_disabled_optimizers == ["GeluFusion"]
    assert build_config(parse(), {}).ort_disabled_optimizers is None
    # An empty variable means what an empty flag means (turn none off); "none" is the default.
    assert build_config(parse(), {"AA_DEPLOY_ORT_DISABLED_OPTIMIZERS": ""}).ort_disabled_optimizers == []
    assert build_config(parse(), {"AA_DEPLOY_ORT_DISABLED_OPTIMIZERS": "none"}).ort_disabled_optimizers is None
    assert ServerConfig.from_dict(ServerConfig(ort_disabled_optimizers=[]).to_dict()).ort_disabled_optimizers == []

    registry = TaskRegistry(ServerConfig(providers=["CPUExecutionProvider"], ort_disabled_optimizers=["GeluFusion"]))
    try:
        assert registry.settings.resolved_disabled_optimizers() == ["GeluFusion"]
    finally:
        registry.close()
    registry = TaskRegistry(ServerConfig(providers=["CPUExecutionProvider"]))
    try:
        assert registry.settings.resolved_disabled_optimizers() == list(CPU_DISABLED_OPTIMIZERS)
    finally:
        registry.close()


def test_throwaway_sessions_build_light_without_raising_the_optimisation_level() -> None:
    """A load-time check session: no arena, no prepacking, at most basic optimisation (a user's
    ``disable`` stays disabled); a serving session keeps the configured level."""
    levels = ort.GraphOptimizationLevel
    serving = SessionSettings().options()
    assert serving.graph_optimization_level == levels.ORT_ENABLE_ALL and serving.enable_cpu_mem_arena
    with pytest.raises(RuntimeError):  # ORT's way of saying the entry was never set
        serving.get_session_config_entry("session.disable_prepacking")
    check = SessionSettings().options(throwaway=True)
    assert check.graph_optimization_level == levels.ORT_ENABLE_BASIC and not check.enable_cpu_mem_arena
    assert check.get_session_config_entry("session.disable_prepacking") == "1"
    disabled = SessionSettings(graph_optimization_level="disable").options(throwaway=True)
    assert disabled.graph_optimization_level == levels.ORT_DISABLE_ALL
