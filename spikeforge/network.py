"""Lowering of a quantized IR graph to the plan every backend builds from.

A :class:`Network` is the graph seen as layers of neurons and projections between them
(each projection one step of delay). Lowering goes through a registry keyed by node type,
so a node type no backend can run is refused here, early, by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from spikeforge import ir
from spikeforge.errors import GraphError, UnsupportedError
from spikeforge.neuron import LIFParams, StochasticParams


class InputLayer(NamedTuple):
    name: str
    size: int
    payload_max: int  # graded payload that stands for rate 1


class Layer(NamedTuple):
    name: str
    node: ir.FixedLIF | ir.FixedStochastic

    @property
    def size(self) -> int:
        return self.node.size

    @property
    def stochastic(self) -> bool:
        return isinstance(self.node, ir.FixedStochastic)

    @property
    def v_init(self) -> np.ndarray:
        """v at the start of every sample, int64 (n,) (0 for a memoryless stochastic layer)."""
        n = self.node
        return n.v_init if isinstance(n, ir.FixedLIF) else np.zeros(n.size, np.int64)

    @property
    def params(self) -> LIFParams | StochasticParams:
        n = self.node
        if isinstance(n, ir.FixedStochastic):
            return StochasticParams(n.vth, n.bias, n.seed)
        return LIFParams(n.vth, n.du, n.dv, n.bias, n.reset, n.v_rest, n.v_reset, n.leak, n.refractory)


class Projection(NamedTuple):
    """One synapse node as backends run it: dense (``conv`` None, weight (dst, src)) or a
    convolution (``conv`` its geometry, weight (C_out, C_in/groups, kH, kW)). Both compute
    a = floor(sum w s 2**weight_exp) on flat C-order spike vectors."""

    name: str
    src: str  # input or layer name
    dst: str  # layer name
    weight: np.ndarray  # int64, 8-bit mantissas
    weight_exp: int
    graded: bool  # True when the source is the Input (graded payloads)
    recurrent: bool  # True when it closes a cycle (self-recurrence or feedback)
    conv: ir.ConvGeometry | None = None

    @property
    def max_abs_weight(self) -> int:
        return int(np.abs(self.weight).max(initial=0))

    def coo(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nonzero synapses as flat (pre, post, w) int64 arrays."""
        if self.conv is not None:
            from spikeforge.conv import connections

            return connections(self.weight, self.conv)
        post, pre = np.nonzero(self.weight)
        return pre.astype(np.int64), post.astype(np.int64), self.weight[post, pre].astype(np.int64)


@dataclass
class Network:
    input: InputLayer = None  # type: ignore[assignment]  # set by lower(); every network has one
    layers: list[Layer] = field(default_factory=list)
    projections: list[Projection] = field(default_factory=list)
    readout: str = ""
    depth: int = 0  # projections on the longest feedforward path from the input to the readout
    delays: dict[str, int] = field(default_factory=dict)  # per layer: steps until the input arrives
    aliases: dict[str, str] = field(default_factory=dict)  # Flatten name -> source name

    def layer(self, name: str) -> Layer:
        return next(l for l in self.layers if l.name == name)

    def incoming(self, name: str) -> list[Projection]:
        return [p for p in self.projections if p.dst == name]

    @property
    def feedforward(self) -> bool:
        return not any(p.recurrent for p in self.projections)

    def steps(self, timesteps: int) -> int:
        """Simulated steps for ``timesteps`` of input: T + depth, so the readout sees T steps."""
        return timesteps + self.depth



LOWER = ir.Registry("spikeforge's network lowering")


@LOWER.register(ir.Input)
def _lower_input(node: ir.Input, graph: ir.Graph, net: Network) -> None:
    if net.input is not None:
        raise UnsupportedError(f"{node.where()}: only one Input is supported, found a second")
    net.input = InputLayer(node.name, node.out_size, node.payload_max)


@LOWER.register(ir.Flatten)
def _lower_flatten(node: ir.Flatten, graph: ir.Graph, net: Network) -> None:
    src = graph.predecessors(node.name)[0]
    net.aliases[node.name] = net.aliases.get(src, src)


@LOWER.register(ir.FixedLIF, ir.FixedStochastic)
def _lower_neuron(node: ir.FixedLIF | ir.FixedStochastic, graph: ir.Graph, net: Network) -> None:
    net.layers.append(Layer(node.name, node))


@LOWER.register(ir.FixedAffine, ir.FixedConv2d)
def _lower_affine(node: ir.FixedAffine | ir.FixedConv2d, graph: ir.Graph, net: Network) -> None:
    (src,) = graph.predecessors(node.name)
    src = net.aliases.get(src, src)
    dsts = graph.successors(node.name)
    if len(dsts) != 1:
        raise GraphError(f"{node.where()}: expected one target neuron, found {len(dsts)}")
    graded = net.input is not None and src == net.input.name
    net.projections.append(
        Projection(node.name, src, dsts[0], node.weight, node.weight_exp, graded,
                   graph.is_recurrent_edge(node.name, dsts[0]) or graph.is_recurrent_edge(src, node.name),
                   node.geometry if isinstance(node, ir.FixedConv2d) else None)
    )


@LOWER.register(ir.Output)
def _lower_output(node: ir.Output, graph: ir.Graph, net: Network) -> None:
    (src,) = graph.predecessors(node.name)
    src = net.aliases.get(src, src)
    if not isinstance(graph.node(src), ir.FixedLIF):
        raise UnsupportedError(
            f"{node.where()}: the readout must be a FixedLIF layer, found '{src}' "
            f"({type(graph.node(src)).__name__})"
        )
    net.readout = src


def lower(graph: ir.Graph) -> Network:
    """Quantized graph -> Network. Raises UnsupportedError naming the first node it cannot run."""
    net = Network()
    for name in graph.topological_order():
        node = graph.node(name)
        LOWER.lookup(node)(node, graph, net)
    if net.input is None:
        raise GraphError("graph: expected an Input node, found none")
    # depth: the longest feedforward path in projections (each Affine -> neuron hop is a step)
    hops: dict[str, int] = {}
    for name in graph.topological_order():
        step = 1 if isinstance(graph.node(name), ir.FIXED_NEURONS) else 0
        preds = [p for p in graph.predecessors(name) if not graph.is_recurrent_edge(p, name)]
        hops[name] = max((hops[p] for p in preds), default=0) + step
    net.delays = {l.name: hops[l.name] for l in net.layers}
    net.depth = hops[net.readout]
    return net

