"""The multi-task graph: one backbone, every task's adapters stacked per task and gathered by ``task_ids``.

Built at load time from the exported task graphs (nothing is re-exported; adding a task rebuilds this
graph in memory in about a second):

* the backbone is taken from one task graph with its adapters cut out: at an adapted layer the consumers
  of ``LN(s + A(LN(s)))`` are rewired to ``LN(s)``, which is exactly the backbone layer;
* at every layer where at least one member has an adapter, a stacked adapter is inserted after the
  layer's output LayerNorm: ``W_down [tasks, H, r]``, the biases and ``W_up [tasks, r, H]`` are gathered
  by ``task_ids`` and applied with batched MatMuls; the activation (rational A or B, or ReLU, mixed
  freely) is one MatMul of the power features ``[x^0..x^d, |x|^0..|x|^d]`` with a gathered per-task
  coefficient matrix (:func:`_coefficient_matrix`); then ``LN(s + A)``. A member without an adapter at
  that layer has zero weights, so ``A = 0`` and its rows get exactly ``LN(s)``, the backbone layer;
  bottleneck sizes and rational degrees are zero-padded. With one member nothing is gathered: its
  weights are constants and the graph is that member's own;
* each member's head (everything between the last layer's output and ``logits`` in its own graph) is
  copied in under a per-task prefix, and the row's own head output is selected with GatherElements.

The adapter weights come from the export's ``adapter_model.safetensors`` (read with safetensors' NumPy
API, no torch). The graph is checked against every member's own exported graph on probe inputs before
it serves; a task that does not match is served by its own session instead.

Own branches (:func:`with_own_branches`): the session also holds every member's own graph, chosen by a
``single_task`` input; a batch of one task runs its own graph (no other member's adapter layers, no
gathers), a mixed batch the stacked graph. They share the backbone's prepacked weights with it.

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
SINGLE_TASK = "single_task"  # -1: rows of several tasks (stacked graph); j: every row is member j's
LOGITS = GRAPH_OUTPUT


def own_output(slot: int) -> str:
    """The graph output of member ``slot``'s own branch (:func:`with_own_branches`): its head's logits."""
    return f"aa_own{slot}/out"


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
class TaggedNodes:
    """A member's nodes copied under a tag (:func:`_tagged_copy`) and what they read from outside."""

    nodes: list[Any]
    tensors: dict[str, Any]  # the member's own tensors the nodes read, renamed under the tag
    external: dict[str, Any]  # backbone tensors (external data) the nodes read, by name
    inputs: set[str]  # graph inputs the nodes read


def _tagged_copy(
    source: MergeSource, nodes: Sequence[Any], tag: str, mapping: dict[str, str], graph_inputs: set[str], part: str
) -> TaggedNodes:
    """Copies of ``nodes`` (of ``source``'s graph) with every name they own prefixed by ``tag``, so that
    several members' copies live in one graph: tensors they compute and the member's own initializers
    are renamed, ``mapping`` redirects tensors computed elsewhere in the new graph (e.g. the last layer's
    output), graph inputs and backbone tensors keep their names. The caller decides where the renamed
    tensors and the backbone tensors go. ``part`` names the copied part in errors."""
    from onnx import TensorProto

    src_tensors = {t.name: t for t in source.model.graph.initializer}
    local = {o for n in nodes for o in n.output if o}
    out = TaggedNodes(nodes=[], tensors={}, external={}, inputs=set())
    for node in nodes:
        copy = type(node)()
        copy.CopyFrom(node)
        copy.name = tag + node.name
        for i, name in enumerate(copy.input):
            if not name:
                continue
            if name in mapping:
                copy.input[i] = mapping[name]
            elif name in local:
                copy.input[i] = tag + name
            elif name in graph_inputs:
                out.inputs.add(name)
            elif name not in src_tensors:
                raise GraphShapeError(
                    f"{source.key}: {part} input {name!r} (node {node.name}) comes from outside the {part}"
                )
            elif src_tensors[name].data_location == TensorProto.EXTERNAL:
                out.external[name] = src_tensors[name]
            else:
                copy.input[i] = renamed = tag + name
                if renamed not in out.tensors:
                    tensor = out.tensors[renamed] = type(src_tensors[name])()
                    tensor.CopyFrom(src_tensors[name])
                    tensor.name = renamed
        for i, name in enumerate(copy.output):
            copy.output[i] = tag + name if name else name
        out.nodes.append(copy)
    return out


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


def _coefficient_matrix(present: Sequence[AdapterWeights | None], degree: int) -> np.ndarray:
    """Per-task activation coefficients ``[tasks, 2 (degree + 1), 3]`` over the power features.

    The features of a pre-activation ``x`` are ``[x^0 .. x^d, |x|^0 .. |x|^d]``; the three columns give the
    numerator ``sum a_k x^k``, version A's denominator part ``sum |b_k| |x|^k`` and version B's
    ``sum b_k x^k`` (taken absolute in the graph). ReLU is ``(x + |x|) / 2``, exactly, in the numerator
    column with an empty denominator; a task without an adapter at the layer has all zeros (and zero
    weights, so its adapter output is 0). Zero coefficients multiply every power, so a pre-activation
    beyond ~4e7 in magnitude (``x^5`` overflows float32) would give NaN where a ReLU task alone gives a
    number; pre-activations of a LayerNorm output through a trained down-projection stay many orders of
    magnitude below that, and the load-time check against each task's own graph would show otherwise."""
    width = degree + 1
    table = np.zeros((len(present), 2 * width, 3), dtype=np.float32)
    for j, a in enumerate(present):
        if a is None:
            continue
        if a.activation == "relu":
            table[j, 1, 0] = table[j, width + 1, 0] = 0.5
            continue
        table[j, : len(a.numerator), 0] = a.numerator
        q = len(a.denominator)
        if a.activation == "A":
            table[j, width + 1 : width + 1 + q, 1] = a.denominator
        else:
            table[j, 1 : 1 + q, 2] = a.denominator
    return table


def _powers(b: _Builder, u: str, degree: int, prefix: str) -> str:
    """``[u^0, u^1, .., u^degree]`` along the last axis of ``u`` [..., 1], by repeated multiplication.
    Not one ``Pow`` with a vector of exponents: ONNX Runtime evaluates that with the generic ``pow`` per
    element, measured at ~2.5x the cost of this chain on a [1, 12, 48, 1] input (89 against 34 us per run
    with one thread), which is about 2 % of a MiniLM call at batch 1 with five adapter layers."""
    one = b.const(prefix + "/one", np.ones((), dtype=np.float32))
    terms = [b.op("Expand", [one, b.op("Shape", [u], prefix)], prefix), u]
    for _ in range(degree - 1):
        terms.append(b.op("Mul", [terms[-1], u], prefix))
    return b.op("Concat", terms, prefix, axis=-1)


def _stacked_adapter(
    b: _Builder, layer: int, members: Sequence[dict[int, AdapterWeights]], h_in: str, hidden: int
) -> str:
    """Nodes computing the stacked adapter output ``A(h_in)`` [rows, seq, H] for the row's task.

    At batch 1 the graph's cost is its node count, so the activation is one small MatMul rather than a
    Horner chain per polynomial: the powers ``x^0..x^d`` (a chain of Mul) and their absolute values are the
    features, a per-task ``[features, 3]`` matrix gives numerator and both denominator forms at once, and
    ReLU tasks are rows of the same matrix. About a dozen nodes per layer whatever the tasks' versions
    and degrees, against ~35 for Horner chains per form plus a ReLU/rational select.
    """
    prefix = f"aa_multitask/layer{layer}"
    present = [m.get(layer) for m in members]
    width = max(a.bottleneck for a in present if a is not None)
    empty = np.zeros(0, dtype=np.float32)
    alone = len(members) == 1

    def gathered(array: np.ndarray) -> str:
        """The row's own slice of a per-task stack. With one member there is nothing to choose: its slice
        is a constant, so ORT prepacks the MatMul weights and the graph has no Gather per tensor."""
        if alone:
            return b.const(prefix + "/weight", array[0])
        return b.op("Gather", [b.const(prefix + "/stack", array), TASK_IDS], prefix, axis=0)

    down_w = gathered(_stack([a.down_w if a else empty for a in present], (hidden, width)))
    biases = _stack([np.concatenate([a.down_b, a.up_b])[None, :] if a else empty for a in present], (1, width + hidden))
    if alone:
        down_b, up_b = (
            b.const(prefix + "/weight", biases[0, :, :width]),
            b.const(prefix + "/weight", biases[0, :, width:]),
        )
    else:  # one Gather for both biases: [rows, 1, width + hidden], split in two
        sizes = b.const(prefix + "/split", np.array([width, hidden], dtype=np.int64))
        down_b, up_b = b.op_multi("Split", [gathered(biases), sizes], prefix, 2, axis=2)
    x = b.op("Add", [b.op("MatMul", [h_in, down_w], prefix), down_b], prefix)

    if all(a is None or a.activation == "relu" for a in present):
        activation = b.op("Relu", [x], prefix)
    else:
        degree = max(max(len(a.numerator) - 1, len(a.denominator), 1) for a in present if a is not None)
        axis = b.const(prefix + "/axis", np.array([-1], dtype=np.int64))
        powers = _powers(b, b.op("Unsqueeze", [x, axis], prefix), degree, prefix)  # [rows, seq, r, d+1]
        features = b.op("Concat", [powers, b.op("Abs", [powers], prefix)], prefix, axis=-1)
        table = _coefficient_matrix(present, degree)
        # [tasks, 1, F, 3]: the gathered [rows, 1, F, 3] broadcasts over the sequence axis.
        coefficients = gathered(table[:, None]) if not alone else b.const(prefix + "/weight", table[0])
        combined = b.op("MatMul", [features, coefficients], prefix)  # [rows, seq, r, 3]
        three = b.const(prefix + "/split", np.ones(3, dtype=np.int64))
        numerator, den_a, den_b = b.op_multi("Split", [combined, three], prefix, 3, axis=-1)
        one = b.const(prefix + "/one", np.ones((), dtype=np.float32))
        denominator = b.op("Add", [b.op("Add", [den_a, b.op("Abs", [den_b], prefix)], prefix), one], prefix)
        activation = b.op("Squeeze", [b.op("Div", [numerator, denominator], prefix), axis], prefix)
    up_w = gathered(_stack([a.up_w if a else empty for a in present], (width, hidden)))
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
        tag = f"aa_task{j}/"
        head = _tagged_copy(source, source.head_nodes(), tag, {source.layers[-1].output: h_last}, graph_inputs, "head")
        for name in head.external:  # a backbone tensor (e.g. the pooler)
            if name not in base_initializers:
                raise GraphShapeError(f"{source.key}: head uses backbone tensor {name} unknown to the group")
            b.initializers.setdefault(name, base_initializers[name])
        for name, tensor in head.tensors.items():
            b.initializers.setdefault(name, tensor)
        b.nodes.extend(head.nodes)
        head_outputs.append(tag + LOGITS)

    # 4. Select each row's own head output, padded to the widest head (one member: its head is the output).
    num_labels = [s.manifest.num_labels for s in sources]
    width = max(num_labels)
    if len(sources) == 1:
        b.nodes.append(helper.make_node("Identity", [head_outputs[0]], [LOGITS], name="aa_select/logits"))
    else:
        selected = []
        for j, name in enumerate(head_outputs):
            if num_labels[j] < width:
                pads = b.const("aa_select/pads", np.array([0, 0, 0, width - num_labels[j]], dtype=np.int64))
                name = b.op("Pad", [name, pads], "aa_select")
            selected.append(
                b.op("Unsqueeze", [name, b.const("aa_select/axis", np.array([1], dtype=np.int64))], "aa_select")
            )
        stacked = b.op("Concat", selected, "aa_select", axis=1)
        index = b.op(
            "Reshape", [TASK_IDS, b.const("aa_select/shape", np.array([-1, 1, 1], dtype=np.int64))], "aa_select"
        )
        index = b.op(
            "Expand", [index, b.const("aa_select/expand", np.array([1, 1, width], dtype=np.int64))], "aa_select"
        )
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
    if TASK_IDS in used:  # one member: nothing to choose, the graph takes no task ids
        inputs.append(helper.make_tensor_value_info(TASK_IDS, TensorProto.INT64, ["batch"]))
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", width])]
    merged_graph = helper.make_graph(b.nodes, "aa_multitask", inputs, outputs, initializers)
    model = helper.make_model(
        merged_graph, opset_imports=list(base.model.opset_import), ir_version=base.model.ir_version
    )

    split_layer = min([min(m) if m else num_layers for m in members])
    cut = None
    # One member: every input is seen by one task, so a prefix would be computed once anyway; splitting
    # would only add a second session run and a copy of the hidden state.
    if prefix_sharing and split_layer > 0 and len(sources) > 1:
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


def with_own_branches(
    model: Any, sources: Sequence[MergeSource], *, cut: str | None = None, split_layer: int = 0
) -> Any:
    """``model`` (the stacked graph, or its suffix that reads tensor ``cut``, the output of layer
    ``split_layer - 1``) with every member's own graph beside it, chosen by the scalar input
    ``single_task``: ``-1`` runs the stacked graph, ``j`` runs member ``j``'s own graph (from the cut on)
    on every row.

    Why in the same graph: a batch of one task alone (every request at concurrency 1) is cheapest on that
    task's own graph; the stacked graph pays for every member's adapter layers and the per-row gathers
    (0.93-0.96x a plain session at batch 1 with four MiniLM tasks). A session per task would hold its own
    prepacked copy of the backbone's MatMul weights (~45 MiB on MiniLM). Within one session, ONNX Runtime
    prepacks an initializer once for the subgraphs that use it, but only for subgraphs directly below the
    graph that holds it: a member's graph two ``If`` levels down ran its MatMuls unpacked, 1.7x slower.
    So every branch is one level deep: the top level has one ``If`` per member (``single_task == j``) and
    one for the stacked graph (``single_task < 0``); the branches not taken give an empty
    ``[0, labels]`` tensor. Each untaken ``If`` costs a few microseconds.

    Each part is a graph output of its own: ``logits`` (the stacked graph, the group's widest head) and
    :func:`own_output` ``j`` (member ``j``'s own head width); the caller fetches the one it chose. ONNX
    Runtime runs every node whatever is fetched, but the untaken parts are empty, and a member's output
    needs no Pad to the group's width nor a Concat of the parts: those two nodes were ~25 us of a ~4 ms
    MiniLM call at batch 1.

    Each member's nodes and adapter/head tensors are copied under ``aa_own<j>/``; its backbone tensors
    (external data in the shared backbone file) are the top-level initializers of the same name, which
    must point at the same bytes.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    # Top level: the backbone tensors (shared, prepacked once) and the routing constants; everything
    # else belongs to the branch that uses it.
    top_tensors = {t.name: t for t in graph.initializer if t.data_location == TensorProto.EXTERNAL}
    inputs = {i.name: i for i in graph.input}
    width = max(s.manifest.num_labels for s in sources)

    def const(name: str, number: int) -> str:
        top_tensors.setdefault(name, helper.make_tensor(name, TensorProto.INT64, [], [number]))
        return name

    def external_key(tensor: Any) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((e.key, e.value) for e in tensor.external_data if e.key != "location"))

    def own_nodes(j: int, source: MergeSource) -> tuple[list[Any], dict[str, Any], str]:
        """Member ``j``'s nodes (from the cut on) under ``aa_own<j>/``, its own tensors (renamed) and output."""
        tag = f"aa_own{j}/"
        nodes = list(source.model.graph.node)
        src_inputs = {i.name: i for i in source.model.graph.input}
        mapping: dict[str, str] = {}
        if cut is not None:
            mapping[source.layers[split_layer - 1].output] = cut
        chosen = [nodes[i] for i in closure(nodes, [LOGITS], stop=list(mapping))]
        for node in chosen:
            if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
                raise GraphShapeError(f"{source.key}: control flow ({node.op_type}) in a task graph is not supported")
        part = _tagged_copy(source, chosen, tag, mapping, set(src_inputs), "task graph")
        for name in part.inputs:
            inputs.setdefault(name, src_inputs[name])
        for name, tensor in part.external.items():
            if external_key(top_tensors.setdefault(name, tensor)) != external_key(tensor):
                raise GraphShapeError(f"{source.key}: backbone tensor {name} differs from the group's")
        return part.nodes, part.tensors, tag + LOGITS

    top: list[Any] = []

    def routed(
        nodes: list[Any], tensors: dict[str, Any], output: str, cond: str, tag: str, out: str, labels: int
    ) -> None:
        """``nodes`` as the branch taken where ``cond`` holds, giving ``out`` (an empty [0, labels] tensor elsewhere)."""
        branch = _branch_graph(tag, nodes, tensors, output)
        empty = f"aa_route/empty{labels}"
        top_tensors.setdefault(empty, helper.make_tensor(empty, TensorProto.FLOAT, [0, labels], []))
        nothing = helper.make_graph(
            [helper.make_node("Identity", [empty], [tag + "/none"], name=tag + "/none")],
            tag + "/none", [], [helper.make_tensor_value_info(tag + "/none", TensorProto.FLOAT, None)],
        )  # fmt: skip
        top.append(helper.make_node("If", [cond], [out], name=tag + "/If", then_branch=branch, else_branch=nothing))

    stacked_nodes = []
    for node in graph.node:
        copy = type(node)()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.output):
            if name == LOGITS:  # the top level's LOGITS is the If's output
                copy.output[i] = "aa_stacked/" + LOGITS
        stacked_nodes.append(copy)
    mixed = "aa_route/mixed"
    top.append(helper.make_node("Less", [SINGLE_TASK, const("aa_route/task0", 0)], [mixed], name=mixed))
    stacked_tensors = {t.name: t for t in graph.initializer if t.name not in top_tensors}
    routed(stacked_nodes, stacked_tensors, "aa_stacked/" + LOGITS, mixed, "aa_stacked", LOGITS, width)
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", width])]
    for j, source in enumerate(sources):
        nodes, tensors, output = own_nodes(j, source)
        chosen = f"aa_own{j}/chosen"
        labels = source.manifest.num_labels
        top.append(helper.make_node("Equal", [SINGLE_TASK, const(f"aa_route/task{j}", j)], [chosen], name=chosen))
        routed(nodes, tensors, output, chosen, f"aa_own{j}", own_output(j), labels)
        outputs.append(helper.make_tensor_value_info(own_output(j), TensorProto.FLOAT, ["batch", labels]))
    graph_out = helper.make_graph(
        top,
        "aa_multitask_routed",
        [*inputs.values(), helper.make_tensor_value_info(SINGLE_TASK, TensorProto.INT64, [])],
        outputs,
        list(top_tensors.values()),
    )
    return helper.make_model(graph_out, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _branch_graph(name: str, nodes: list[Any], tensors: dict[str, Any], output: str, small: int = 64) -> Any:
    """A branch of :func:`with_own_branches`: ``nodes``, computing ``output``, with the tensors of
    ``tensors`` they use as its own initializers.

    Small tensors with equal contents (Unsqueeze axes, shape constants, also those written as ``Constant``
    nodes) become one: ONNX Runtime merges equal constants only in the main graph, and only then can it
    merge the equal shape computations that use them (its common-subexpression pass); in a MiniLM branch
    that is ~50 fewer nodes, ~1 % at batch 1.
    """
    from onnx import TensorProto, helper, numpy_helper

    tensors = dict(tensors)
    computing = []
    for node in nodes:  # Constant nodes (exporters write shape constants as nodes) become tensors too
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is None or len(node.attribute) != 1:
            computing.append(node)
            continue
        tensor = type(value)()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        tensors[tensor.name] = tensor
    nodes = computing
    kept: dict[str, Any] = {}
    by_content: dict[tuple[Any, ...], str] = {}
    for node in nodes:
        for i, input_name in enumerate(node.input):
            tensor = tensors.get(input_name)
            if tensor is None:
                continue
            if int(np.prod(tensor.dims)) <= small:
                key = (tensor.data_type, tuple(tensor.dims), numpy_helper.to_array(tensor).tobytes())
                node.input[i] = input_name = by_content.setdefault(key, input_name)
                tensor = tensors[input_name]
            kept.setdefault(input_name, tensor)
    value = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
    return helper.make_graph(nodes, name, [], [value], list(kept.values()))


def load_task_graph(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)
