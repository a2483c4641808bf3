"""Small, dependency-free analysis of ONNX protos: closures and locating each layer's output.

The multi-task compiler relies on one property of aa-deploy exports (docs/DESIGN.md): the backbone keeps
the ``transformers`` parameter names, so each layer's output LayerNorm is found by the name of its scale
tensor (``...layer.<i>.output.LayerNorm.weight``; each family's names are a row of
:mod:`aa_deploy.contract.families`), in every task graph, whatever the node names are.
In a layer with an adapter that scale is used twice: ``LN(s)`` (the backbone's output, the adapter's
input) and ``LN(s + A(LN(s)))`` (the adapted output).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aa_deploy.contract.families import LAYER_NORM_SCALE


class GraphShapeError(ValueError):
    """The graph does not have the structure the multi-task compiler needs (the task is served alone)."""


def producers(nodes: Iterable[Any]) -> dict[str, int]:
    return {out: i for i, node in enumerate(nodes) for out in node.output if out}


def closure(nodes: list[Any], targets: Iterable[str], stop: Iterable[str] = ()) -> list[int]:
    """Indices (in graph order) of the nodes needed to compute ``targets`` when ``stop`` tensors are given."""
    produced = producers(nodes)
    stop_set = set(stop)
    needed: set[int] = set()
    frontier = [t for t in targets if t not in stop_set]
    seen: set[str] = set(frontier)
    while frontier:
        tensor = frontier.pop()
        index = produced.get(tensor)
        if index is None or index in needed:
            continue
        needed.add(index)
        node = nodes[index]
        inputs = list(node.input)
        for attr in node.attribute:  # subgraphs (If/Loop) read outer tensors implicitly
            if attr.g is not None and attr.g.node:
                inputs.extend(outer_inputs(attr.g))
        for name in inputs:
            if name and name not in stop_set and name not in seen:
                seen.add(name)
                frontier.append(name)
    return sorted(needed)


def outer_inputs(graph: Any) -> set[str]:
    """Names a subgraph reads from enclosing scopes, its own nested subgraphs included."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    local |= {o for n in graph.node for o in n.output}
    return {name for name in consumed_names(graph.node) if name not in local}


def consumed_names(nodes: Iterable[Any]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        names.update(i for i in node.input if i)
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                names |= outer_inputs(attr.g)
    return names


@dataclass
class LayerOutput:
    """Where layer ``index`` ends: ``base`` = LN(s) node, ``adapted`` = LN(s + A) node (None if no adapter)."""

    index: int
    base: Any
    adapted: Any | None
    residual: str

    @property
    def output(self) -> str:
        return (self.adapted or self.base).output[0]


def layer_outputs(graph: Any, num_layers: int, kept_layers: Iterable[int]) -> list[LayerOutput]:
    """Locate every layer's output LayerNorm(s) and check the adapter wiring matches ``kept_layers``."""
    by_layer: dict[int, list[Any]] = {}
    for node in graph.node:
        if node.op_type == "LayerNormalization" and len(node.input) >= 2:
            match = LAYER_NORM_SCALE.search(node.input[1])
            if match:
                by_layer.setdefault(int(match.group(1)), []).append(node)
    kept = set(kept_layers)
    if sorted(by_layer) != list(range(num_layers)):
        raise GraphShapeError(
            f"found output LayerNorms for layers {sorted(by_layer)}, expected 0..{num_layers - 1} (optimised or "
            "quantised graphs fuse them; such tasks are served by their own session)"
        )
    produced = {out: node for node in graph.node for out in node.output}
    result = []
    for index in range(num_layers):
        norms = by_layer[index]
        residual = norms[0].input[0]
        if index in kept:
            if len(norms) != 2:
                raise GraphShapeError(f"layer {index} has an adapter but {len(norms)} output LayerNorms (expected 2)")
            add = produced.get(norms[1].input[0])
            if add is None or add.op_type != "Add" or residual not in add.input:
                raise GraphShapeError(f"layer {index}: the adapted LayerNorm does not read LN input + adapter output")
            result.append(LayerOutput(index, norms[0], norms[1], residual))
        else:
            if len(norms) != 1:
                raise GraphShapeError(f"layer {index} has no adapter but {len(norms)} output LayerNorms (expected 1)")
            result.append(LayerOutput(index, norms[0], None, residual))
    return result
