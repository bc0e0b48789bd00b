"""Conversion passes, each a pure ``Graph -> Graph`` function (the result validates itself).

    normalize   data-based weight normalization (SNN Toolbox): each layer's activations are
                divided by lambda_l, a percentile (default 99.9) of its positive activations on
                calibration data:  W_l <- W_l * lambda_{l-1} / lambda_l,  b_l <- b_l / lambda_l
    relu_to_if  ReLU -> IF(v_threshold = 1, reset); a readout IF after a final Affine
    quantize    IF + Affine -> FixedLIF + FixedAffine in Loihi 2 fixed point
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np

from spikeforge import ir
from spikeforge.converter.ann import forward, trajectory
from spikeforge.errors import SpikeforgeError

Normalization = Literal["percentile", "max", "none"]
VTH_TARGET = 1024  # vth lands in [1024, 2048) with weights using the full 8-bit range
W_MAX = 127  # symmetric 8-bit mantissas: [-127, 127] (Lava's inhibitory-only clip is -255 on 2w)


def _check_graph(graph: ir.Graph, allowed: tuple[type, ...], pass_name: str) -> None:
    for n in graph.nodes:
        if not isinstance(n, allowed):
            raise SpikeforgeError(f"{pass_name}: {n.where()} is not expected at this stage")


# -- normalization -------------------------------------------------------------------------
def _scale_stat(a: np.ndarray, method: Normalization, percentile: float) -> float:
    pos = a[a > 0]
    if method == "none" or pos.size == 0:
        return 1.0
    if method == "max":
        return float(pos.max())
    return float(np.percentile(pos, percentile))


def normalize(graph: ir.Graph, calib_x: np.ndarray, method: Normalization = "percentile",
              percentile: float = 99.9) -> ir.Graph:
    """Scale each layer so that its activation lambda_l maps to rate 1 (clip above)."""
    if method not in ("percentile", "max", "none"):
        raise SpikeforgeError(f"normalization: expected percentile, max or none, found {method!r}")
    if not 0 < percentile <= 100:
        raise SpikeforgeError(f"percentile: expected a value in (0, 100], found {percentile}")
    _check_graph(graph, (ir.Input, ir.Flatten, ir.Affine, ir.ReLU, ir.Output), "normalize")
    if graph.is_feedforward():
        acts = forward(graph, calib_x)
    else:  # statistics over every iteration of the rate model
        acts = {k: v.reshape(-1, v.shape[-1]) for k, v in trajectory(graph, calib_x).items()}
    lam: dict[str, float] = {}  # activation that maps to rate 1, per node output
    for node in graph.nodes:
        if isinstance(node, ir.Input):
            lam[node.name] = 1.0
        elif isinstance(node, ir.ReLU):
            scale = _scale_stat(acts[node.name], method, percentile)
            lam[node.name] = max(min(scale, node.upper) if node.upper is not None else scale, 1e-12)
    new: dict[str, ir.Node] = {}
    for name in graph.topological_order():
        node = graph.node(name)
        preds = graph.predecessors(name)
        if isinstance(node, (ir.Flatten, ir.Output)) and name not in lam:
            lam[name] = lam[preds[0]]
        elif isinstance(node, ir.Affine):
            succ = graph.successors(name)
            if len(succ) != 1:
                raise SpikeforgeError(f"normalize: {node.where()} feeds {len(succ)} nodes; expected one")
            dst = succ[0]
            if isinstance(graph.node(dst), ir.ReLU):
                lam_dst = lam[dst]
            else:  # the final affine map: its positive outputs set the readout's scale
                lam_dst = max(_scale_stat(acts[name], method, percentile), 1e-12)
            lam[name] = lam_dst
            lam_src = lam[graph.source_through_flatten(preds[0])]
            new[name] = node.replace(weight=node.weight * lam_src / lam_dst, bias=node.bias / lam_dst)
        elif isinstance(node, ir.ReLU):
            new[name] = node.replace(upper=1.0)
    nodes = [new.get(n.name, n) for n in graph.nodes]
    meta = {"normalization": {"method": method, "percentile": percentile,
                              "lambda": {k: v for k, v in lam.items()
                                         if isinstance(graph.node(k), ir.Affine)}}}
    return graph.with_nodes(nodes).with_metadata(**meta)


# -- ReLU -> IF --------------------------------------------------------------------------------
NEURON_KINDS = ("if", "stochastic")


def relu_to_if(graph: ir.Graph, reset: ir.Reset = "subtract", neuron: str = "if", seed: int = 0) -> ir.Graph:
    """Each ReLU becomes IF(v_threshold=1, reset), or with ``neuron='stochastic'`` a
    Stochastic neuron (seeded per layer from ``seed``); a final Affine gets a readout IF layer."""
    if reset not in ir.RESETS:
        raise SpikeforgeError(f"reset: expected one of {ir.RESETS}, found {reset!r}")
    if neuron not in NEURON_KINDS:
        raise SpikeforgeError(f"neuron: expected one of {NEURON_KINDS}, found {neuron!r}")
    _check_graph(graph, (ir.Input, ir.Flatten, ir.Affine, ir.ReLU, ir.Output), "relu_to_if")

    def spiking(i: int, n: ir.ReLU) -> ir.Node:
        if neuron == "stochastic":
            return ir.Stochastic(n.name, n.size, seed=(seed * 1_000_003 + i + 1) % 2**32)
        return ir.IF(n.name, n.size, 1.0, reset)

    nodes = [spiking(i, n) if isinstance(n, ir.ReLU) else n for i, n in enumerate(graph.nodes)]
    edges = list(graph.edges)
    out = graph.output
    (pred,) = graph.predecessors(out.name)
    if isinstance(graph.node(pred), ir.Affine):
        name = "readout" if "readout" not in graph.by_name else f"{pred}_readout"
        nodes.insert(len(nodes) - 1, ir.IF(name, graph.node(pred).out_size, 1.0, reset))
        edges = [e for e in edges if e != (pred, out.name)] + [(pred, name), (name, out.name)]
    return ir.Graph(tuple(nodes), tuple(edges), graph.metadata)


# -- quantization ------------------------------------------------------------------------------
class LayerReport(NamedTuple):
    layer: str
    neurons: int
    synapses: int  # non-zero quantized weights into the layer
    weight_exp: tuple[int, ...]  # per incoming projection
    vth: int
    bias_exp: int
    clipped_weights: int  # weights beyond the 8-bit range, saturated
    zeroed_weights: int  # non-zero weights that round to 0
    saturated_biases: int  # biases beyond 13 bits << 7, saturated
    max_input: int  # worst-case |a| per step (synaptic input, before << 6)

    @property
    def may_wrap(self) -> bool:
        """True if the worst case could wrap u (24 bits): (max_input << 6) >= 2**23."""
        return (self.max_input << 6) >= 2**23


def _ceil_log2(x: float) -> int:
    return int(math.ceil(math.log2(x))) if x > 0 else 0


def _exp_for(m: float, vth: int) -> int:
    """Smallest weight exponent e with max |W| * vth / 2**e <= 127, within [-8, 7]."""
    lo, hi = ir.BITS["weight_exp"].lo, ir.BITS["weight_exp"].hi
    e = _ceil_log2(m * vth / W_MAX) if m > 0 else 0
    return int(min(max(e, lo), hi))


def quantize(graph: ir.Graph, payload_bits: int = 8) -> ir.Graph:
    """IF/Affine graph -> FixedLIF/FixedAffine graph (Loihi 2 fixed point).

    For a neuron layer with threshold theta and incoming affine maps W_k (input scale s_k:
    1 / (2**payload_bits - 1) from the Input, 1 for spikes), choose an integer vth and per
    projection an exponent e_k so that  w_k = round(W_k s_k vth / (theta 2**e_k))  uses the
    8-bit range; the bias becomes  round(b vth 64 / theta) = bias_mant << bias_exp  in state
    units. The per-layer report is stored in the graph's metadata under "quantization".
    """
    _check_graph(graph, (ir.Input, ir.Flatten, ir.Affine, ir.IF, ir.LIF, ir.Stochastic, ir.Output), "quantize")
    if not 1 <= payload_bits <= 8:
        raise SpikeforgeError(f"payload_bits: expected 1..8, found {payload_bits}")
    payload_max = 2**payload_bits - 1
    nodes = {n.name: n for n in graph.nodes}
    new: dict[str, ir.Node] = {}
    reports: list[LayerReport] = []
    for inp in graph.inputs:
        new[inp.name] = inp.replace(payload_bits=payload_bits)

    def source(affine: str) -> ir.Node:
        s = graph.source_through_flatten(graph.predecessors(affine)[0])
        return nodes[s]

    for name in graph.topological_order():
        node = nodes[name]
        if not isinstance(node, (ir.IF, ir.LIF, ir.Stochastic)):
            continue
        theta = 1.0 if isinstance(node, ir.Stochastic) else node.v_threshold
        # the input current's gain: r / tau for a LIF (v += (r / tau) I), 1 otherwise
        gain = 1.0
        if isinstance(node, ir.LIF):
            gain = node.r / node.tau if np.isfinite(node.tau) else node.r
        incoming = [nodes[p] for p in graph.predecessors(name)]
        scaled = []
        for aff in incoming:
            assert isinstance(aff, ir.Affine)
            src = source(aff.name)
            s = 1.0 / payload_max if isinstance(src, ir.Input) else 1.0
            scaled.append((aff, src, aff.weight * s * gain / theta))
        m_primary = max(float(np.abs(W).max(initial=0.0)) for _, _, W in scaled)
        e0 = _exp_for(m_primary, VTH_TARGET)
        vth = int(round(W_MAX * 2.0**e0 / m_primary)) if m_primary > 0 else VTH_TARGET
        vth = int(min(max(vth, 1), ir.BITS["vth"].hi))
        exps, clipped, zeroed, synapses, max_input = [], 0, 0, 0, 0
        for aff, src, W in scaled:
            e = _exp_for(float(np.abs(W).max(initial=0.0)), vth)
            wq = np.rint(W * vth / 2.0**e)
            clipped += int((np.abs(wq) > W_MAX).sum())
            wq = np.clip(wq, -W_MAX, W_MAX).astype(np.int64)
            zeroed += int(((wq == 0) & (aff.weight != 0)).sum())
            synapses += int((wq != 0).sum())
            in_max = payload_max if isinstance(src, ir.Input) else 1
            acc = int((np.abs(wq) * in_max).sum(axis=1).max(initial=0))
            max_input += acc << e if e >= 0 else acc >> -e
            new[aff.name] = ir.FixedAffine(aff.name, wq, e)
            exps.append(e)
        bias_v = sum(aff.bias for aff in incoming) * gain * vth * 64.0 / theta
        bias_exp, mant_hi = 0, ir.BITS["bias_mant"].hi
        while bias_exp < ir.BITS["bias_exp"].hi and np.abs(np.rint(bias_v / 2.0**bias_exp)).max(initial=0) > mant_hi:
            bias_exp += 1
        mant = np.rint(bias_v / 2.0**bias_exp)
        sat = int(((mant > mant_hi) | (mant < ir.BITS["bias_mant"].lo)).sum())
        mant = np.clip(mant, ir.BITS["bias_mant"].lo, mant_hi).astype(np.int64)
        if isinstance(node, ir.LIF):
            state = ir.BITS["v_rest"]

            def to_state(value: float) -> int:
                return int(np.clip(round(value / theta * vth * 64), state.lo, state.hi))

            dv = int(min(max(round(4096 / node.tau), 0), ir.BITS["dv"].hi)) if np.isfinite(node.tau) else 0
            new[name] = ir.FixedLIF(name, node.size, vth=vth, du=4095, dv=dv, bias_mant=mant,
                                    bias_exp=bias_exp, reset=node.reset, v_rest=to_state(node.v_leak),
                                    v_reset=to_state(node.v_reset), refractory=int(node.refractory))
        elif isinstance(node, ir.Stochastic):
            new[name] = ir.FixedStochastic(name, node.size, vth=vth, bias_mant=mant, bias_exp=bias_exp,
                                           seed=node.seed)
        else:
            new[name] = ir.FixedLIF(name, node.size, vth=vth, du=4095, dv=0, bias_mant=mant,
                                    bias_exp=bias_exp, reset=node.reset)
        reports.append(LayerReport(name, node.size, synapses, tuple(exps), vth, bias_exp,
                                   clipped, zeroed, sat, max_input))
    out_nodes = [new.get(n.name, n) for n in graph.nodes]
    meta = {"quantization": [r._asdict() | {"weight_exp": list(r.weight_exp)} for r in reports],
            "payload_bits": payload_bits}
    return graph.with_nodes(out_nodes).with_metadata(**meta)


def layer_reports(graph: ir.Graph) -> list[LayerReport]:
    rows = graph.metadata.get("quantization", [])
    return [LayerReport(**{**r, "weight_exp": tuple(r["weight_exp"])}) for r in rows]


def convert(ann: ir.Graph, calib_x: np.ndarray, reset: ir.Reset = "subtract",
            normalization: Normalization = "percentile", percentile: float = 99.9,
            payload_bits: int = 8, neuron: str = "if", seed: int = 0) -> ir.Graph:
    """The whole pipeline: normalize -> relu_to_if -> quantize. A graph that is already
    spiking (IF/LIF/Stochastic neurons, no ReLU: from NIR or a spiking model) is only quantized."""
    if not ann.of_type(ir.ReLU) and ann.of_type(ir.IF, ir.LIF, ir.Stochastic):
        return quantize(ann, payload_bits).with_metadata(neuron="spiking source")
    g = normalize(ann, calib_x, normalization, percentile)
    g = relu_to_if(g, reset, neuron, seed)
    g = quantize(g, payload_bits)
    return g.with_metadata(reset=reset, neuron=neuron)
