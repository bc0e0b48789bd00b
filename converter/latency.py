"""balance_latency: every neuron layer's inputs arrive with the same latency.

Each synapse adds one step (docs/semantics.md), so in a residual block the shortcut reaches
the sum one step before the branch with an extra layer, and the two would add different time
steps of the input. For every quantized neuron layer whose feedforward inputs come from
sources at different depths (neuron hops from the Input), the shallower sources are delayed
by relay layers: a relay is a FixedLIF that copies its input spike train one step later,

    identity synapse (w = 1, weight_exp = 0) ;  vth = 0, du = 4095, dv = 0, bias 0, reset zero
    => u = a << 6 = 64 s,  v = 64 s > 0 exactly when s = 1, then v = 0

so a chain of k relays is an exact k-step delay (on Loihi 2 as in every backend). Graded
input payloads cannot be relayed by binary neurons: a branch from the Input that needs a
delay is refused by name.
"""

from __future__ import annotations

import numpy as np

from spikeforge import fixedpoint, ir
from spikeforge.converter.fold import unique_name
from spikeforge.errors import UnsupportedError
from spikeforge.neuron import LIFParams, voltage


def _relay_synapse(name: str, shape: ir.Shape) -> ir.Node:
    if len(shape) == 3:
        c = shape[0]
        return ir.FixedConv2d(name, shape, groups=c, weight=np.ones((c, 1, 1, 1), np.int64), weight_exp=0)
    n = int(np.prod(shape))
    return ir.FixedAffine(name, np.eye(n, dtype=np.int64), 0)


def hops(graph: ir.Graph) -> dict[str, int]:
    """Neuron layers on the longest feedforward path from the Input to each node (the step on
    which a node's first input arrives, counting one per synapse -> neuron hop)."""
    out: dict[str, int] = {}
    for name in graph.topological_order():
        step = 1 if isinstance(graph.node(name), ir.NEURONS) else 0
        preds = [p for p in graph.predecessors(name) if not graph.is_recurrent_edge(p, name)]
        out[name] = max((out[p] for p in preds), default=0) + step
    return out


def balance_latency(graph: ir.Graph) -> ir.Graph:
    """Insert relay layers so that all feedforward inputs of each neuron layer have equal depth."""
    depth = hops(graph)
    nodes = list(graph.nodes)
    edges = list(graph.edges)
    names = {n.name for n in nodes}
    relays: dict[tuple[str, int], str] = {}  # (source, delay) -> relay layer delaying it
    added = 0

    def unique(base: str) -> str:
        return unique_name(names, base)

    def delayed(src: str, k: int) -> str:
        """The relay chain's layer that carries ``src`` k steps later."""
        nonlocal added
        if k == 0:
            return src
        if (src, k) in relays:
            return relays[(src, k)]
        prev = delayed(src, k - 1)
        shape = graph.node(src).out_shape
        syn = _relay_synapse(unique(f"{src}.relay{k}.syn"), shape)
        relay = ir.FixedLIF(unique(f"{src}.relay{k}"), int(np.prod(shape)), vth=0, du=fixedpoint.DU_NONE, dv=0,
                            reset="zero", shape=shape)
        nodes.extend([syn, relay])
        edges.extend([(prev, syn.name), (syn.name, relay.name)])
        relays[(src, k)] = relay.name
        added += 1
        return relay.name

    for node in graph.nodes:
        if not isinstance(node, ir.FIXED_NEURONS):
            continue
        ins = [p for p in graph.predecessors(node.name) if not graph.is_recurrent_edge(p, node.name)]
        srcs = {p: graph.source_through_flatten(graph.predecessors(p)[0]) for p in ins}
        want = max((depth[s] for s in srcs.values()), default=0)
        for syn, src in srcs.items():
            lag = want - depth[src]
            if lag == 0:
                continue
            if isinstance(graph.node(src), ir.Input):
                raise UnsupportedError(
                    f"{graph.node(syn).where()}: reads the Input directly but its layer "
                    f"'{node.name}' also hears a path {lag} layer(s) deeper; graded input cannot be "
                    f"delayed by relay neurons (start the block after a first spiking layer)")
            relay = delayed(src, lag)
            (pred,) = graph.predecessors(syn)
            if pred == src:
                edges = [(relay, syn) if e == (src, syn) else e for e in edges]
            else:  # through a Flatten: a Flatten of the relay instead
                flat = graph.node(pred)
                assert isinstance(flat, ir.Flatten)
                new_flat = flat.replace(name=unique(f"{pred}.d{lag}"))
                nodes.append(new_flat)
                edges = [(new_flat.name, syn) if e == (pred, syn) else e for e in edges]
                edges.append((relay, new_flat.name))
    if not added:
        return graph
    out = graph.with_nodes(nodes, edges)
    return out.with_metadata(relay_layers=added)


def _no_input_step(params: LIFParams, v: np.ndarray) -> np.ndarray:
    """v after one step without synaptic input from u = 0 (u stays 0); monotone in v."""
    return voltage(params, v, 0)


def _preimage(params: LIFParams, target: np.ndarray) -> np.ndarray:
    """Per neuron the smallest v in the 24-bit range with one input-free step >= target
    (a binary search: that step is monotone; where it equals target, it is an exact preimage)."""
    bits = ir.BITS["state"]
    lo = np.full(target.shape, bits.lo, np.int64)
    hi = np.full(target.shape, bits.hi, np.int64)
    while (lo < hi).any():
        mid = (lo + hi) // 2
        up = _no_input_step(params, mid) >= target
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid + 1)
    return lo


def initial_state(node: ir.FixedLIF, delay: int) -> np.ndarray:
    """v_init per neuron so that a layer whose first synaptic input arrives at step ``delay``
    has v = 0 exactly then, as if its bias had waited for the input (what a simulator without
    synaptic delay, e.g. a NIR consumer, computes): v_init = f^-delay(0), with f the input-free
    step (IF: v_init = -delay * bias). Exact where no spike occurs on the way; where one would
    (a negative bias above vth << 6 / (delay - 1)), the largest k < delay steps that reach 0
    without a spike are undone instead (v then starts as k fewer steps of bias alone)."""
    from spikeforge.network import Layer

    params = Layer(node.name, node).params
    assert isinstance(params, LIFParams)
    n = node.size
    best = np.zeros(n, np.int64)
    todo = np.ones(n, bool) if node.bias.any() else np.zeros(n, bool)
    chain = [np.zeros(n, np.int64)]  # chain[k]: the input-free step undone k times from 0
    for _ in range(delay if todo.any() else 0):
        chain.append(_preimage(params, chain[-1]))
    for k in range(delay, 0, -1):
        if not todo.any():
            break
        start, x, ok = chain[k], chain[k], np.ones(n, bool)
        for _ in range(k):  # forward again: no spike, and exactly 0 after k steps
            x = _no_input_step(params, x)
            ok &= x <= node.vth_scaled
        ok &= x == 0
        pick = todo & ok
        best[pick] = start[pick]
        todo &= ~ok
    return best


def align_initial_state(graph: ir.Graph) -> ir.Graph:
    """Every FixedLIF layer with a bias gets ``v_init = initial_state(layer, hops)``: its bias
    no longer integrates alone during the synaptic delay steps before its first input, so the
    network computes what a delay-free simulator of the same layers computes (and the readout
    integrates its bias for exactly T steps, as the ANN's logit times T)."""
    depth = hops(graph)
    nodes = [node.replace(v_init=initial_state(node, depth[node.name]))
             if isinstance(node, ir.FixedLIF) and node.bias.any() else node for node in graph.nodes]
    return graph.with_nodes(nodes)
