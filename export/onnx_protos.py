"""Small, dependency-free operations on ONNX protos: renaming values, hashing tensors, contract checks.

They are kept apart from the torch side so that the backbone store, the optimiser and the tests can
use them on any graph, whichever exporter or optimiser produced it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping

import onnx
from onnx import GraphProto, ModelProto, TensorProto, numpy_helper

# ONNX's default domain ("" and its alias "ai.onnx") and ONNX Runtime's built-in contrib domain, which
# only the transformer fusions and INT8 quantisation introduce. Anything else would be a custom op that
# needs a library next to the model: never allowed.
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
ORT_BUILTIN_DOMAINS = frozenset({"com.microsoft"})

# Ops that only a Gumbel switch (or dropout left in training mode) would bring into the graph.
RANDOM_OPS = frozenset(
    {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Multinomial", "Bernoulli", "Dropout"}
)


def subgraphs(graph: GraphProto) -> Iterator[GraphProto]:
    """The graph and every nested subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from subgraphs(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for g in attribute.graphs:
                    yield from subgraphs(g)


def all_nodes(model: ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in subgraphs(model.graph):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def value_names(graph: GraphProto) -> set[str]:
    """Every name a value can have in the graph (inputs, outputs, node outputs, initializers)."""
    names: set[str] = set()
    for g in subgraphs(graph):
        names.update(v.name for v in g.input)
        names.update(v.name for v in g.output)
        names.update(t.name for t in g.initializer)
        for node in g.node:
            names.update(node.output)
    return names


def rename_values(graph: GraphProto, mapping: Mapping[str, str]) -> None:
    """Rename values everywhere they occur (initializers, node inputs/outputs, I/O, value_info).

    Subgraphs are included because a nested graph may read an outer initializer by name.
    """
    if not mapping:
        return
    for g in subgraphs(graph):
        for tensor in g.initializer:
            if tensor.name in mapping:
                tensor.name = mapping[tensor.name]
        for sparse in g.sparse_initializer:
            if sparse.values.name in mapping:
                sparse.values.name = mapping[sparse.values.name]
        for info in list(g.input) + list(g.output) + list(g.value_info):
            if info.name in mapping:
                info.name = mapping[info.name]
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in mapping:
                    node.input[i] = mapping[name]
            for i, name in enumerate(node.output):
                if name in mapping:
                    node.output[i] = mapping[name]


def ensure_raw_data(tensor: TensorProto) -> None:
    """Store the tensor's values in ``raw_data`` (exporters sometimes use typed fields for small ones).

    Raw bytes are what we hash, compare and write to external data, so every initializer is brought
    into that one form first.
    """
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ValueError(f"tensor {tensor.name!r} uses external data; load the model with its data first")
    if tensor.HasField("raw_data"):
        return
    array = numpy_helper.to_array(tensor)
    name = tensor.name
    tensor.CopyFrom(numpy_helper.from_array(array, name))


def tensor_digest(tensor: TensorProto) -> str:
    """Content key of a tensor: dtype, shape and the sha256 of its raw bytes."""
    ensure_raw_data(tensor)
    digest = hashlib.sha256(tensor.raw_data).hexdigest()
    return f"{tensor.data_type}:{'x'.join(str(d) for d in tensor.dims)}:{digest}"


def domains_used(model: ModelProto) -> set[str]:
    return {node.domain for node in all_nodes(model)}


def check_domains(model: ModelProto, allow_ort_builtin: bool) -> None:
    """Refuse any op outside ONNX (and, for optimised graphs, ONNX Runtime's built-in contrib ops)."""
    allowed = STANDARD_DOMAINS | (ORT_BUILTIN_DOMAINS if allow_ort_builtin else frozenset())
    bad = sorted(domains_used(model) - allowed)
    if bad:
        raise ValueError(
            f"the graph uses op domains {bad}; only {sorted(allowed)} are allowed (no custom ops). "
            "This is a bug in the exporter: please report it with the run folder"
        )
    if model.functions:
        raise ValueError("the graph defines local functions; the deployment contract allows plain graphs only")


def check_no_switch(model: ModelProto) -> None:
    """A compiled task must not contain switch parameters or any random op (Gumbel noise, dropout)."""
    random_ops = sorted({node.op_type for node in all_nodes(model) if node.op_type in RANDOM_OPS})
    if random_ops:
        raise ValueError(f"the graph contains random ops {random_ops}: the model was not exported in eval mode")
    switch_names = sorted(t.name for g in subgraphs(model.graph) for t in g.initializer if "switch" in t.name.lower())
    if switch_names:
        raise ValueError(f"the graph still holds switch tensors {switch_names[:3]}: the model was not pruned")


def io_signature(model: ModelProto) -> dict[str, list[dict[str, object]]]:
    """Names, element types and symbolic/fixed dims of the graph's inputs and outputs."""

    def describe(values: list[onnx.ValueInfoProto]) -> list[dict[str, object]]:
        result = []
        for value in values:
            tensor_type = value.type.tensor_type
            dims: list[object] = [d.dim_param if d.dim_param else d.dim_value for d in tensor_type.shape.dim]
            result.append(
                {"name": value.name, "elem_type": onnx.TensorProto.DataType.Name(tensor_type.elem_type), "dims": dims}
            )
        return result

    initializer_names = {t.name for t in model.graph.initializer}
    return {
        "inputs": describe([v for v in model.graph.input if v.name not in initializer_names]),
        "outputs": describe(list(model.graph.output)),
    }
