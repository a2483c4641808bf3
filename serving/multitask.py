"""The multi-task graph: one backbone, every task's adapters stacked per task and gathered by ``task_ids``.

Built at load time from the exported task graphs (nothing is re-exported; adding a task rebuilds this
graph in memory in about a second):

* the backbone is taken from one task graph with its adapters cut out: at an adapted layer the consumers
  of ``LN(s + A(LN(s)))`` are rewired to ``LN(s)``, which is exactly the backbone layer;
* at every layer where at least one member has an adapter, a stacked adapter is inserted after the
  layer's output LayerNorm: ``W_down [tasks, H, r]``, the rational's coefficients ``[tasks, 1, 1]`` and
  ``W_up [tasks, r, H]`` are gathered by ``task_ids`` and applied with batched MatMuls, then
  ``LN(s + A)``. A member without an adapter at that layer has zero weights, so ``A = 0`` and its rows
  get exactly ``LN(s)``, the backbone layer; bottleneck sizes and rational degrees are zero-padded;
* each member's head (everything between the last layer's output and ``logits`` in its own graph) is
  copied in under a per-task prefix, and the row's own head output is selected with GatherElements.

The adapter weights come from the export's ``adapter_model.safetensors`` (read with safetensors' NumPy
API, no torch). The graph is checked against every member's own exported graph on probe inputs before
it serves; a task that does not match is served by its own session instead.

Prefix sharing: if no member has an adapter in the lowest ``k`` layers, the graph is split after layer
``k - 1``. The prefix runs once per distinct input and the suffix on the rows of every requested task,
so a multi-task call on one text computes the shared layers once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aa_deploy.contract.layout import (
    CONFIG_NAME,
    DOWN_BIAS,
    DOWN_WEIGHT,
    GRAPH_OUTPUT,
    RATIONAL_DENOMINATOR,
    RATIONAL_NUMERATOR,
    UP_BIAS,
    UP_WEIGHT,
    WEIGHTS_NAME,
    adapter_files,
    adapter_key,
    adapter_key_layer,
)
from aa_deploy.contract.manifest import ExportManifest
from aa_deploy.contract.rules import denominator_is_absolute, uses_rational

from .graph_analysis import GraphShapeError, LayerOutput, closure, consumed_names, layer_outputs

TASK_IDS = "task_ids"
LOGITS = GRAPH_OUTPUT


@dataclass(frozen=True)
class AdapterWeights:
    """One trained adapter in MatMul layout: ``x @ down_w + down_b -> f -> @ up_w + up_b``."""

    down_w: np.ndarray  # [H, r]
    down_b: np.ndarray  # [r]
    up_w: np.ndarray  # [r, H]
    up_b: np.ndarray  # [H]
    activation: str  # "A", "B" (rational versions) or "relu"
    numerator: np.ndarray  # [P + 1] (empty for relu)
    denominator: np.ndarray  # [Q] multiplying |x|^1.. (A, already |b|) or x^1.. (B)

    @property
    def bottleneck(self) -> int:
        return int(self.down_w.shape[1])


def read_adapters(manifest: ExportManifest) -> dict[int, AdapterWeights]:
    """The kept adapters of an export folder, from its adapter weights and config (WEIGHTS_NAME and
    CONFIG_NAME, or the legacy names of folders exported before the rename)."""
    from safetensors.numpy import load_file

    folder = manifest.folder
    files = adapter_files(folder)
    weights_path, config_path = files.weights, files.config
    if not weights_path.is_file() or not config_path.is_file():
        raise GraphShapeError(f"{folder} has no {WEIGHTS_NAME}/{CONFIG_NAME} to stack adapters from")
    config = json.loads(config_path.read_text())
    recipe = config.get("recipe", "search")
    rational = uses_rational(recipe)
    version = str(config.get("rational_version", "A")) if rational else "relu"
    state = load_file(str(weights_path))
    adapters: dict[int, AdapterWeights] = {}
    for index in manifest.kept_layers:
        try:
            down_w, down_b = state[adapter_key(index, DOWN_WEIGHT)], state[adapter_key(index, DOWN_BIAS)]
            up_w, up_b = state[adapter_key(index, UP_WEIGHT)], state[adapter_key(index, UP_BIAS)]
        except KeyError as exc:
            raise GraphShapeError(f"{weights_path} lacks {exc.args[0]} for kept layer {index}") from None
        numerator = state.get(adapter_key(index, RATIONAL_NUMERATOR))
        denominator = state.get(adapter_key(index, RATIONAL_DENOMINATOR))
        if rational and (numerator is None or denominator is None):
            raise GraphShapeError(f"{weights_path}: layer {index} has no rational coefficients")
        if denominator_is_absolute(version):
            denominator = np.abs(denominator)
        adapters[index] = AdapterWeights(
            down_w=np.ascontiguousarray(down_w.T, dtype=np.float32),
            down_b=down_b.astype(np.float32),
            up_w=np.ascontiguousarray(up_w.T, dtype=np.float32),
            up_b=up_b.astype(np.float32),
            activation=version,
            numerator=(numerator if numerator is not None else np.zeros(0)).astype(np.float32),
            denominator=(denominator if denominator is not None else np.zeros(0)).astype(np.float32),
        )
    in_file = {layer for layer in map(adapter_key_layer, state) if layer is not None}
    extra = sorted(in_file - set(manifest.kept_layers))
    if extra:
        raise GraphShapeError(f"{weights_path} has adapters for layers {extra} that the manifest does not keep")
    return adapters


@dataclass
class MergeSource:
    """What the compiler needs from one export: its graph (no external data), manifest and adapters."""

    key: str
    manifest: ExportManifest
    model: Any
    adapters: dict[int, AdapterWeights]
    layers: list[LayerOutput] = field(default_factory=list)

    @classmethod
    def prepare(cls, key: str, manifest: ExportManifest, model: Any) -> MergeSource:
        if manifest.optimized or manifest.quantization:
            raise GraphShapeError("optimised/quantised exports use fused kernels; they are served by their own session")
        if not manifest.num_layers:
            raise GraphShapeError("the manifest does not record num_layers")
        opset = {o.domain: o.version for o in model.opset_import}
        if opset.get("", opset.get("ai.onnx", 0)) < 13:
            raise GraphShapeError("the graph's opset is below 13")
        layers = layer_outputs(model.graph, manifest.num_layers, manifest.kept_layers)
        adapters = read_adapters(manifest)
        hidden = adapters and next(iter(adapters.values())).down_w.shape[0]
        for index, a in adapters.items():
            if a.down_w.shape[0] != hidden or a.up_w.shape[1] != hidden:
                raise GraphShapeError(f"layer {index}: adapter widths differ from the hidden size")
        return cls(key=key, manifest=manifest, model=model, adapters=adapters, layers=layers)

    def head_nodes(self) -> list[Any]:
        last = self.layers[-1].output
        nodes = list(self.model.graph.node)
        return [nodes[i] for i in closure(nodes, [LOGITS], stop=[last])]


@dataclass
class CompiledGraph:
    model: Any
    num_labels: list[int]
    split_layer: int  # k: layers 0..k-1 carry no adapter of any member
    cut: str | None  # tensor after layer k-1 (None when k == 0)
    hidden_size: int


class _Builder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: dict[str, Any] = {}
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, prefix: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(prefix)
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], prefix: str, **attrs: Any) -> str:
        return self.op_multi(op_type, inputs, prefix, 1, **attrs)[0]

    def op_multi(self, op_type: str, inputs: Sequence[str], prefix: str, outputs: int, **attrs: Any) -> list[str]:
        from onnx import helper

        name = self.name(f"{prefix}/{op_type}")
        names = [name] if outputs == 1 else [f"{name}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=name, **attrs))
        return names


def _stack(arrays: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Zero-pad each array to ``shape`` and stack them: the padding is what makes tasks without an
    adapter (or with a smaller one) compute exactly what they computed alone."""
    out = np.zeros((len(arrays), *shape), dtype=np.float32)
    for j, a in enumerate(arrays):
        if a.size:
            out[(j, *tuple(slice(0, s) for s in a.shape))] = a
    return out


def _horner(b: _Builder, prefix: str, coefficient_names: list[str], x: str) -> str:
    """``c0 + c1 x + ... + cn x^n`` with per-row coefficients ([rows, 1, 1]), Horner order as the trainer."""
    result = b.op("Mul", [coefficient_names[-1], x], prefix)
    for k in range(len(coefficient_names) - 2, -1, -1):
        result = b.op("Add", [result, coefficient_names[k]], prefix)
        if k > 0:
            result = b.op("Mul", [result, x], prefix)
    return result


def _stacked_adapter(
    b: _Builder, layer: int, members: Sequence[dict[int, AdapterWeights]], h_in: str, hidden: int
) -> str:
    """Nodes computing the stacked adapter output ``A(h_in)`` [rows, seq, H] for the row's task."""
    prefix = f"aa_multitask/layer{layer}"
    present = [m.get(layer) for m in members]
    width = max(a.bottleneck for a in present if a is not None)
    empty = np.zeros(0, dtype=np.float32)

    def gathered(array: np.ndarray) -> str:
        return b.op("Gather", [b.const(prefix + "/stack", array), TASK_IDS], prefix, axis=0)

    down_w = gathered(_stack([a.down_w if a else empty for a in present], (hidden, width)))
    down_b = gathered(_stack([a.down_b[None, :] if a else empty for a in present], (1, width)))
    x = b.op("Add", [b.op("MatMul", [h_in, down_w], prefix), down_b], prefix)

    def coefficient_stacks(values: list[np.ndarray], degree_offset: int) -> list[str]:
        """Per-row coefficients [rows, 1, 1], one per degree. One Gather of a [tasks, 1, degrees] table and
        one Split, rather than a Gather per coefficient: at batch 1 the graph's cost is its op count."""
        length = max((len(v) for v in values), default=0)
        if length == 0:
            return []
        table = np.zeros((len(values), 1, length), dtype=np.float32)
        for j, v in enumerate(values):
            table[j, 0, : len(v)] = v
        rows = gathered(table)
        if length == 1:
            return [rows]
        sizes = b.const(prefix + "/split", np.ones(length, dtype=np.int64))
        return b.op_multi("Split", [rows, sizes], prefix, length, axis=2)

    kinds = {a.activation for a in present if a is not None}
    numerators = [a.numerator if a is not None and a.activation != "relu" else empty for a in present]
    num = coefficient_stacks(numerators, 0)
    activation = None
    if num:
        activation = (
            _horner(b, prefix, num, x)
            if len(num) > 1
            else b.op(
                "Add", [b.op("Mul", [x, b.const(prefix + "/zero", np.zeros((), np.float32))], prefix), num[0]], prefix
            )
        )
        one = b.const(prefix + "/one", np.ones((), dtype=np.float32))
        denominator = None
        for version in ("A", "B"):
            coeffs = [a.denominator if a is not None and a.activation == version else empty for a in present]
            if not any(len(c) for c in coeffs):
                continue
            names = coefficient_stacks(coeffs, 1)
            zero_c = b.const(prefix + "/zero", np.zeros((1, 1, 1), dtype=np.float32))
            t = b.op("Abs", [x], prefix) if version == "A" else x
            poly = _horner(b, prefix, [zero_c, *names], t)
            if version == "B":
                poly = b.op("Abs", [poly], prefix)
            denominator = poly if denominator is None else b.op("Add", [denominator, poly], prefix)
        if denominator is not None:
            activation = b.op("Div", [activation, b.op("Add", [denominator, one], prefix)], prefix)
    if "relu" in kinds:
        relu = b.op("Relu", [x], prefix)
        if activation is None:
            activation = relu
        else:
            mask = np.array([a is not None and a.activation == "relu" for a in present]).reshape(-1, 1, 1)
            activation = b.op("Where", [gathered(mask), relu, activation], prefix)
    if activation is None:  # pragma: no cover - every adapter has an activation
        raise GraphShapeError(f"layer {layer}: no activation")
    up_w = gathered(_stack([a.up_w if a else empty for a in present], (width, hidden)))
    up_b = gathered(_stack([a.up_b[None, :] if a else empty for a in present], (1, hidden)))
    return b.op("Add", [b.op("MatMul", [activation, up_w], prefix), up_b], prefix)


def compile_multitask(sources: Sequence[MergeSource], *, prefix_sharing: bool = True) -> CompiledGraph:
    """Build the multi-task graph for ``sources`` (same backbone); member j answers to task id j."""
    from onnx import TensorProto, helper

    if not sources:
        raise ValueError("no tasks to compile")
    base = sources[0]
    graph = base.model.graph
    num_layers = len(base.layers)
    for s in sources[1:]:
        if len(s.layers) != num_layers:
            raise GraphShapeError(f"{s.key}: {len(s.layers)} layers, the group's backbone has {num_layers}")
    hidden = next((a.down_w.shape[0] for s in sources for a in s.adapters.values()), None)
    members = [s.adapters for s in sources]

    # 1. The backbone: the base graph with its own adapters cut out, up to the last layer's output.
    nodes = list(graph.node)
    adapted_out = {lo.adapted.output[0]: lo.base.output[0] for lo in base.layers if lo.adapted is not None}
    backbone_last = base.layers[-1].base.output[0]
    stripped = []
    for node in nodes:
        if any(o in adapted_out for o in node.output):
            continue
        copy = type(node)()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            copy.input[i] = adapted_out.get(name, name)
        stripped.append(copy)
    keep = closure(stripped, [backbone_last])
    backbone_nodes = [stripped[i] for i in keep]

    # 2. Stacked adapters after each layer's LN(s) where any member has an adapter.
    b = _Builder()
    layer_of_base = {lo.base.output[0]: lo for lo in base.layers}
    rewired: dict[str, str] = {}
    adapter_layers = sorted({i for m in members for i in m})
    for node in backbone_nodes:
        for i, name in enumerate(node.input):
            node.input[i] = rewired.get(name, name)
        b.nodes.append(node)
        lo = layer_of_base.get(node.output[0])
        if lo is None or lo.index not in adapter_layers:
            continue
        if hidden is None:  # pragma: no cover
            raise GraphShapeError("adapters without a hidden size")
        adapter = _stacked_adapter(b, lo.index, members, node.output[0], hidden)
        summed = b.op("Add", [lo.residual, adapter], f"aa_multitask/layer{lo.index}")
        out = b.name(f"aa_multitask/layer{lo.index}/LayerNormalization")
        b.nodes.append(helper.make_node("LayerNormalization", [summed, *node.input[1:]], [out], name=out))
        b.nodes[-1].attribute.extend(node.attribute)
        rewired[node.output[0]] = out
    h_last = rewired.get(backbone_last, backbone_last)

    # 3. Each member's head, renamed, reading the merged last hidden state.
    base_initializers = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    head_outputs = []
    for j, source in enumerate(sources):
        src_inits = {t.name: t for t in source.model.graph.initializer}
        last = source.layers[-1].output
        tag = f"aa_task{j}/"
        local = {o for n in source.head_nodes() for o in n.output}
        mapping = {last: h_last}
        for node in source.head_nodes():
            copy = type(node)()
            copy.CopyFrom(node)
            copy.name = tag + node.name
            for i, name in enumerate(copy.input):
                if not name or name in graph_inputs:
                    continue
                if name in mapping:
                    copy.input[i] = mapping[name]
                elif name in local:
                    copy.input[i] = tag + name
                elif name in src_inits:
                    tensor = src_inits[name]
                    if tensor.data_location == TensorProto.EXTERNAL:  # a backbone tensor (e.g. the pooler)
                        if name not in base_initializers:
                            raise GraphShapeError(
                                f"{source.key}: head uses backbone tensor {name} unknown to the group"
                            )
                        b.initializers.setdefault(name, base_initializers[name])
                    else:
                        renamed = tag + name
                        if renamed not in b.initializers:
                            t = type(tensor)()
                            t.CopyFrom(tensor)
                            t.name = renamed
                            b.initializers[renamed] = t
                        copy.input[i] = renamed
                else:
                    raise GraphShapeError(f"{source.key}: head input {name!r} comes from outside the head")
            for i, name in enumerate(copy.output):
                copy.output[i] = tag + name
            b.nodes.append(copy)
        head_outputs.append(tag + LOGITS)

    # 4. Select each row's own head output, padded to the widest head.
    num_labels = [s.manifest.num_labels for s in sources]
    width = max(num_labels)
    selected = []
    for j, name in enumerate(head_outputs):
        if num_labels[j] < width:
            pads = b.const("aa_select/pads", np.array([0, 0, 0, width - num_labels[j]], dtype=np.int64))
            name = b.op("Pad", [name, pads], "aa_select")
        selected.append(
            b.op("Unsqueeze", [name, b.const("aa_select/axis", np.array([1], dtype=np.int64))], "aa_select")
        )
    stacked = b.op("Concat", selected, "aa_select", axis=1) if len(selected) > 1 else selected[0]
    index = b.op("Reshape", [TASK_IDS, b.const("aa_select/shape", np.array([-1, 1, 1], dtype=np.int64))], "aa_select")
    index = b.op("Expand", [index, b.const("aa_select/expand", np.array([1, 1, width], dtype=np.int64))], "aa_select")
    picked = b.op("GatherElements", [stacked, index], "aa_select", axis=1)
    b.nodes.append(
        helper.make_node(
            "Squeeze",
            [picked, b.const("aa_select/axis", np.array([1], dtype=np.int64))],
            [LOGITS],
            name="aa_select/logits",
        )
    )

    # 5. Assemble: backbone initializers referenced, the new stacks and heads, inputs + task_ids.
    used = consumed_names(b.nodes)
    initializers = [t for name, t in base_initializers.items() if name in used and name not in b.initializers]
    initializers += [t for name, t in b.initializers.items() if name in used]
    inputs = [i for i in graph.input if i.name in used]
    inputs.append(helper.make_tensor_value_info(TASK_IDS, TensorProto.INT64, ["batch"]))
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", width])]
    merged_graph = helper.make_graph(b.nodes, "aa_multitask", inputs, outputs, initializers)
    model = helper.make_model(
        merged_graph, opset_imports=list(base.model.opset_import), ir_version=base.model.ir_version
    )

    split_layer = min([min(m) if m else num_layers for m in members])
    cut = None
    if prefix_sharing and split_layer > 0:
        cut = base.layers[split_layer - 1].base.output[0]
    return CompiledGraph(model=model, num_labels=num_labels, split_layer=split_layer, cut=cut, hidden_size=hidden or 0)


def split_model(model: Any, cut: str, hidden_size: int) -> tuple[Any, Any]:
    """Cut the graph at tensor ``cut``: prefix (inputs -> cut) and suffix (cut + inputs it needs -> logits)."""
    from onnx import TensorProto, helper

    graph = model.graph
    nodes = list(graph.node)
    inits = {t.name: t for t in graph.initializer}

    def sub(indices: list[int], inputs: list[Any], outputs: list[Any], name: str) -> Any:
        chosen = [nodes[i] for i in indices]
        used = consumed_names(chosen)
        g = helper.make_graph(
            chosen, name, [i for i in inputs if i.name in used], outputs, [t for n, t in inits.items() if n in used]
        )
        return helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)

    hidden_info = helper.make_tensor_value_info(cut, TensorProto.FLOAT, ["rows", "sequence", hidden_size or None])
    prefix = sub(closure(nodes, [cut]), list(graph.input), [hidden_info], "aa_prefix")
    suffix = sub(closure(nodes, [LOGITS], stop=[cut]), [hidden_info, *graph.input], list(graph.output), "aa_suffix")
    return prefix, suffix


def load_task_graph(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)
