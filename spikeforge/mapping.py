"""Know before you deploy: per-layer size and a Loihi 2 mapping estimate (``spikeforge inspect``).

For every neuron layer of a quantized graph: neurons, synapses (non-zero weights into it),
fan-in (inputs per neuron), fan-out (targets per neuron), weight bits and exponent, and the
neuro cores it needs under the per-core limits of :data:`LIMITS`:

    cores = max(ceil(neurons / neurons_per_core), ceil(stored_weights / synapses_per_core))

(a layer is spread over cores by neurons; each core holding part of it stores the weights
of its neurons: all of them for a dense layer, the shared kernel for a conv layer), and a
layer whose fan-in exceeds ``fan_in_per_core`` cannot be mapped at all (every core of the
layer receives every input axon). The graph's chips = ceil(cores / 128), checked against
the per-chip neuron and synapse totals. Figures and their sources: docs/loihi2.md. This is an
estimate of a greedy per-layer placement, not Lava's compiler (lava-loihi is not public).

The synapse cost is a table keyed by synapse node type (:data:`SYNAPSE_COST`), so a new
synapse node is one entry.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from spikeforge import ir


class Limits(NamedTuple):
    """Loihi 2 capacities used by the estimate (docs/loihi2.md gives each one's source)."""

    neuro_cores_per_chip: int = 128  # Intel, Loihi 2 brief (public)
    neurons_per_chip: int = 1_000_000  # Intel, Loihi 2 brief (public)
    synapses_per_chip: int = 120_000_000  # Intel, Loihi 2 brief (public)
    neurons_per_core: int = 8_192  # "up to 8,192 per core", widely quoted (assumption)
    synapses_per_core: int = 120_000_000 // 128  # chip total / 128 cores (assumption)
    fan_in_per_core: int = 4_096  # Loihi 1's input axons per core (assumption for Loihi 2)


LIMITS = Limits()


class SynapseCost(NamedTuple):
    """One synapse node's share of its target layer."""

    fan_in: int  # inputs per target neuron
    fan_out: int  # targets per source neuron (the most any source reaches)
    synapses: int  # non-zero connections
    stored: int  # weights a core holding the whole layer stores


def _dense_cost(node: ir.FixedAffine) -> SynapseCost:
    out, inp = node.weight.shape
    return SynapseCost(inp, out, int(np.count_nonzero(node.weight)), out * inp)


def _conv_cost(node: ir.FixedConv2d) -> SynapseCost:
    c_out, c_in_g, kh, kw = node.weight.shape
    sh, sw = node.stride
    taps = c_in_g * kh * kw
    # each input reaches every kernel position that covers it: up to ceil(k / stride) per axis
    fan_out = (c_out // node.groups) * math.ceil(kh / sh) * math.ceil(kw / sw)
    from spikeforge.conv import synapse_count

    return SynapseCost(taps, fan_out, synapse_count(node.weight, node.geometry), int(node.weight.size))


#: Synapse node type -> its cost. Conv is one entry beside dense.
SYNAPSE_COST = ir.Registry("the Loihi 2 mapping estimate")
SYNAPSE_COST.register(ir.FixedAffine)(_dense_cost)
SYNAPSE_COST.register(ir.FixedConv2d)(_conv_cost)


class LayerMap(NamedTuple):
    layer: str
    kind: str  # neuron node type
    synapse_types: tuple[str, ...]  # incoming synapse node types
    neurons: int
    synapses: int
    fan_in: int
    fan_out: int
    weight_bits: int  # signed bits the largest mantissa needs
    weight_exp: tuple[int, ...]
    cores: int
    limited_by: str  # the limit that sets `cores`
    problems: tuple[str, ...]  # per-core limits the layer breaks


class MappingEstimate(NamedTuple):
    layers: list[LayerMap]
    neurons: int
    synapses: int
    cores: int
    chips: int
    fits: bool  # on one chip, no per-core limit broken
    problems: list[str]
    limits: Limits

    def as_json(self) -> dict[str, Any]:
        return {"layers": [{**l._asdict(), "synapse_types": list(l.synapse_types),
                            "weight_exp": list(l.weight_exp), "problems": list(l.problems)}
                           for l in self.layers],
                "neurons": self.neurons, "synapses": self.synapses, "cores": self.cores,
                "chips": self.chips, "fits": self.fits, "problems": self.problems,
                "limits": self.limits._asdict()}


def _weight_bits(w: np.ndarray) -> int:
    m = int(np.abs(w).max(initial=0))
    return m.bit_length() + 1 if m else 1


def estimate(graph: ir.Graph, limits: Limits = LIMITS) -> MappingEstimate:
    """The per-layer Loihi 2 mapping estimate of a quantized graph (see the module doc)."""
    rows: list[LayerMap] = []
    syn_of = {n.name: n for n in graph.nodes if isinstance(n, ir.FIXED_SYNAPSES)}
    costs = {name: SYNAPSE_COST.lookup(n)(n) for name, n in syn_of.items()}
    for node in (n for n in graph.nodes if isinstance(n, ir.FIXED_NEURONS)):
        incoming = [p for p in graph.predecessors(node.name) if p in syn_of]
        outgoing = [s for s in graph.successors(node.name)]
        outgoing += [s for f in outgoing if isinstance(graph.node(f), ir.Flatten)
                     for s in graph.successors(f)]
        outgoing = [s for s in outgoing if s in syn_of]
        fan_in = sum(costs[p].fan_in for p in incoming)
        fan_out = sum(costs[s].fan_out for s in outgoing)
        synapses = sum(costs[p].synapses for p in incoming)
        stored = sum(costs[p].stored for p in incoming)
        by_neurons = math.ceil(node.size / limits.neurons_per_core)
        by_synapses = math.ceil(stored / limits.synapses_per_core)
        cores = max(by_neurons, by_synapses, 1)
        limited_by = "neurons_per_core" if by_neurons >= by_synapses else "synapses_per_core"
        problems = []
        if fan_in > limits.fan_in_per_core:
            problems.append(f"{node.where()}: fan-in {fan_in} exceeds {limits.fan_in_per_core} "
                            f"inputs per neuro core (fan_in_per_core, docs/loihi2.md)")
        weights = [syn_of[p].weight for p in incoming]
        rows.append(LayerMap(node.name, type(node).__name__,
                             tuple(type(syn_of[p]).__name__ for p in incoming), node.size,
                             synapses, fan_in, fan_out,
                             max((_weight_bits(w) for w in weights), default=0),
                             tuple(int(syn_of[p].weight_exp) for p in incoming),
                             cores, limited_by, tuple(problems)))
    neurons = sum(r.neurons for r in rows)
    synapses = sum(r.synapses for r in rows)
    cores = sum(r.cores for r in rows)
    chips = max(math.ceil(cores / limits.neuro_cores_per_chip),
                math.ceil(neurons / limits.neurons_per_chip),
                math.ceil(synapses / limits.synapses_per_chip), 1)
    problems = [p for r in rows for p in r.problems]
    if chips > 1:
        big = max(rows, key=lambda r: r.cores)
        problems.append(f"graph: needs {cores} neuro cores ({chips} chips) against "
                        f"{limits.neuro_cores_per_chip} per chip (neuro_cores_per_chip); the "
                        f"largest layer is '{big.layer}' with {big.cores} cores ({big.limited_by})")
    return MappingEstimate(rows, neurons, synapses, cores, chips, not problems, problems, limits)


def format_table(est: MappingEstimate) -> str:
    """The estimate as a text table plus totals and problems."""
    head = ("layer", "neurons", "synapses", "fan_in", "fan_out", "w_bits", "w_exp", "cores", "limited_by")
    rows = [(r.layer, r.neurons, r.synapses, r.fan_in, r.fan_out, r.weight_bits,
             ",".join(map(str, r.weight_exp)), r.cores, r.limited_by) for r in est.layers]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in
                       enumerate(zip(row, widths))) for row in (head, *rows)]
    l = est.limits
    lines.append(f"total: {est.neurons} neurons, {est.synapses} synapses, {est.cores} neuro cores "
                 f"of {l.neuro_cores_per_chip}, {est.chips} chip{'s' if est.chips > 1 else ''}: "
                 f"{'fits' if est.fits else 'does NOT fit'} one Loihi 2 chip (estimate; limits: "
                 f"{l.neurons_per_core} neurons, {l.synapses_per_core} synapses and "
                 f"{l.fan_in_per_core} fan-in per core; docs/loihi2.md)")
    lines += [f"  - {p}" for p in est.problems]
    return "\n".join(lines)
