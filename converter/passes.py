"""Conversion passes, each a pure ``Graph -> Graph`` function (the result validates itself).

    fold_linear      AvgPool2d and Concat disappear into the next affine map (Conv2d, or
                     Flatten + Affine): pooling is linear, so  W' = W . P  exactly; a Concat
                     splits its consumer's weights by input
    normalize        data-based weight normalization (SNN Toolbox): each layer's activations are
                     divided by lambda_l, a percentile (default 99.9) of its positive activations on
                     calibration data:  W_l <- W_l * lambda_{l-1} / lambda_l,  b_l <- b_l / lambda_l;
                     weights from units that never activate on the calibration data are zeroed
    relu_to_if       ReLU -> IF(v_threshold = 1, reset); a readout IF after a final synapse
    quantize         IF + Affine/Conv2d -> FixedLIF + FixedAffine/FixedConv2d in Loihi 2 fixed point
    balance_latency  every neuron's inputs arrive with the same latency: relay (copy) layers
                     delay the shorter branches of residual and concat blocks
    align_initial_state  v_init per neuron so that v = 0 when a layer's first input arrives
                     (its bias does not integrate alone during the synaptic delay steps)

:func:`convert` runs them as a pipeline; a failing pass is named with the passes before it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, NamedTuple, Sequence, cast

import numpy as np

from spikeforge import fixedpoint, ir
from spikeforge.converter.ann import forward, trajectory
from spikeforge.converter.fold import fold_linear
from spikeforge.converter.latency import align_initial_state, balance_latency
from spikeforge.errors import SpikeforgeError, UnsupportedError

Normalization = Literal["percentile", "max", "none"]
VTH_TARGET = 1024  # vth lands in [1024, 2048) with weights using the full 8-bit range
W_MAX = fixedpoint.W_MAX  # symmetric 8-bit mantissas: [-127, 127] (Lava's inhibitory-only clip is -255 on 2w)
ANN_TYPES: tuple[type, ...] = (ir.Input, ir.Flatten, ir.Affine, ir.Conv2d, ir.ReLU, ir.Output)


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


def _dead_inputs(graph: ir.Graph, node: ir.Node, acts: dict[str, np.ndarray]) -> np.ndarray | None:
    """Input units of synapse ``node`` that never activate on the calibration data (a ReLU
    source whose output is 0 on every sample), as a bool mask over its flat input; None if
    the source is not a ReLU."""
    src = graph.source_through_flatten(graph.predecessors(node.name)[0])
    if not isinstance(graph.node(src), ir.ReLU) or src not in acts:
        return None
    return ~(acts[src] > 0).any(axis=0)


def _prune(node: ir.Affine | ir.Conv2d, dead: np.ndarray) -> tuple[ir.Affine | ir.Conv2d, int]:
    """Zero the weights that read dead inputs (for Conv2d: channels dead at every position).
    Their ANN contribution is 0 on all calibration data, while a BatchNorm folded forward can
    have scaled them by 1/sqrt(var + eps) ~ 300 and so set the whole layer's weight exponent."""
    if isinstance(node, ir.Affine):
        w = node.weight.copy()
        hit = int((w[:, dead] != 0).sum())
        w[:, dead] = 0.0
        return node.replace(weight=w), hit
    if isinstance(node, ir.Conv2d):
        c = node.input_shape[0]
        dead_c = dead.reshape(c, -1).all(axis=1)
        w = node.weight.copy()
        cin_g, cout_g = c // node.groups, w.shape[0] // node.groups
        hit = 0
        for ch in np.flatnonzero(dead_c):
            g, k = divmod(int(ch), cin_g)
            hit += int((w[g * cout_g:(g + 1) * cout_g, k] != 0).sum())
            w[g * cout_g:(g + 1) * cout_g, k] = 0.0
        return node.replace(weight=w), hit
    return node, 0


def normalize(graph: ir.Graph, calib_x: np.ndarray, method: Normalization = "percentile",
              percentile: float = 99.9) -> ir.Graph:
    """Scale each layer so that its activation lambda_l maps to rate 1 (clip above)."""
    if method not in ("percentile", "max", "none"):
        raise SpikeforgeError(f"normalization: expected percentile, max or none, found {method!r}")
    if not 0 < percentile <= 100:
        raise SpikeforgeError(f"percentile: expected a value in (0, 100], found {percentile}")
    _check_graph(graph, ANN_TYPES, "normalize")
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
    pruned: dict[str, int] = {}
    for name in graph.topological_order():
        node = graph.node(name)
        preds = graph.predecessors(name)
        if isinstance(node, (ir.Flatten, ir.Output)) and name not in lam:
            lam[name] = lam[preds[0]]
        elif isinstance(node, (ir.Affine, ir.Conv2d)):
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
            scaled = node.replace(weight=node.weight * lam_src / lam_dst, bias=node.bias / lam_dst)
            dead = _dead_inputs(graph, node, acts)
            if dead is not None and dead.any():
                scaled, hit = _prune(scaled, dead)
                if hit:
                    pruned[name] = hit
            new[name] = scaled
        elif isinstance(node, ir.ReLU):
            new[name] = node.replace(upper=1.0)
    nodes = [new.get(n.name, n) for n in graph.nodes]
    meta = {"normalization": {"method": method, "percentile": percentile,
                              "lambda": {k: v for k, v in lam.items()
                                         if isinstance(graph.node(k), ir.SYNAPSES)},
                              "dead_input_weights_zeroed": pruned}}
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
    _check_graph(graph, ANN_TYPES, "relu_to_if")

    def spiking(i: int, n: ir.ReLU) -> ir.Node:
        if neuron == "stochastic":
            return ir.Stochastic(n.name, n.size, seed=(seed * 1_000_003 + i + 1) % 2**32, shape=n.shape)
        return ir.IF(n.name, n.size, 1.0, reset, shape=n.shape)

    nodes = [spiking(i, n) if isinstance(n, ir.ReLU) else n for i, n in enumerate(graph.nodes)]
    edges = list(graph.edges)
    out = graph.output
    (pred,) = graph.predecessors(out.name)
    if isinstance(graph.node(pred), ir.SYNAPSES):
        name = "readout" if "readout" not in graph.by_name else f"{pred}_readout"
        last = graph.node(pred)
        nodes.insert(len(nodes) - 1, ir.IF(name, last.out_size, 1.0, reset, shape=last.out_shape))
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
        return (self.max_input << fixedpoint.ACT_SHIFT) >= fixedpoint.STATE_MAX


def _ceil_log2(x: float) -> int:
    """ceil(log2 x), with x = 2**k (up to float rounding, e.g. 127 * 2040 / 255 / 8 / 127) giving k."""
    return int(math.ceil(math.log2(x) - 1e-9)) if x > 0 else 0


def _exp_for(m: float, vth: int) -> int:
    """Smallest weight exponent e with round(max |W| * vth / 2**e) <= 127, within [-8, 7]: the
    largest mantissa then lies in [64, 127] (the full signed 8-bit range) unless e is at a bound."""
    lo, hi = ir.BITS["weight_exp"].lo, ir.BITS["weight_exp"].hi
    e = _ceil_log2(m * vth / W_MAX) if m > 0 else 0
    if m > 0 and np.rint(m * vth / 2.0 ** (e - 1)) <= W_MAX:  # rounding admits up to 127.49
        e -= 1
    return int(min(max(e, lo), hi))


#: Float synapse + (mantissas, exponent) -> its fixed-point node.
FIXED_SYNAPSE = ir.Registry("quantization")


@FIXED_SYNAPSE.register(ir.Affine)
def _fixed_affine(node: ir.Affine, wq: np.ndarray, e: int) -> ir.Node:
    return ir.FixedAffine(node.name, wq, e)


@FIXED_SYNAPSE.register(ir.Conv2d)
def _fixed_conv(node: ir.Conv2d, wq: np.ndarray, e: int) -> ir.Node:
    return ir.FixedConv2d(node.name, node.input_shape, node.stride, node.padding, node.dilation,
                          node.groups, weight=wq, weight_exp=e)


def _neuron_bias(node: ir.Node) -> np.ndarray:
    """A synapse's bias per target neuron (a conv's per-channel bias at every position)."""
    bias = getattr(node, "bias")
    per = node.out_size // bias.shape[0]
    return np.repeat(bias, per)


def synapse_count(node: ir.Node) -> int:
    """Nonzero synapses (connections) of a fixed or float synapse node."""
    if isinstance(node, (ir.Conv2d, ir.FixedConv2d)):
        from spikeforge.conv import synapse_count as conv_count

        return conv_count(node.weight, node.geometry)
    return int(np.count_nonzero(getattr(node, "weight")))


def quantize(graph: ir.Graph, payload_bits: int = 8) -> ir.Graph:
    """IF/Affine graph -> FixedLIF/FixedAffine graph (Loihi 2 fixed point).

    For a neuron layer with threshold theta and incoming affine maps W_k (input scale s_k:
    1 / (2**payload_bits - 1) from the Input, 1 for spikes), choose an integer vth and per
    projection an exponent e_k so that  w_k = round(W_k s_k vth / (theta 2**e_k))  uses the
    8-bit range; the bias becomes  round(b vth 64 / theta) = bias_mant << bias_exp  in state
    units. The per-layer report is stored in the graph's metadata under "quantization".
    """
    _check_graph(graph, (ir.Input, ir.Flatten, ir.Affine, ir.Conv2d, ir.IF, ir.LIF, ir.Stochastic,
                         ir.Output), "quantize")
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
            assert isinstance(aff, ir.SYNAPSES)
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
            fixed = FIXED_SYNAPSE.lookup(aff)(aff, wq, e)
            synapses += synapse_count(fixed)
            in_max = payload_max if isinstance(src, ir.Input) else 1
            acc = int(np.abs(wq).reshape(wq.shape[0], -1).sum(axis=1).max(initial=0)) * in_max
            max_input += acc << e if e >= 0 else acc >> -e
            new[aff.name] = fixed
            exps.append(e)
        bias_v = sum(_neuron_bias(aff) for aff in incoming) * gain * fixedpoint.act_to_state(vth) / theta
        bias_exp, mant_hi = 0, ir.BITS["bias_mant"].hi
        while bias_exp < ir.BITS["bias_exp"].hi and np.abs(np.rint(bias_v / 2.0**bias_exp)).max(initial=0) > mant_hi:
            bias_exp += 1
        mant = np.rint(bias_v / 2.0**bias_exp)
        sat = int(((mant > mant_hi) | (mant < ir.BITS["bias_mant"].lo)).sum())
        mant = np.clip(mant, ir.BITS["bias_mant"].lo, mant_hi).astype(np.int64)
        if isinstance(node, ir.LIF):
            state = ir.BITS["v_rest"]

            def to_state(value: float) -> int:
                return int(np.clip(round(fixedpoint.act_to_state(value / theta * vth)), state.lo, state.hi))

            dv = fixedpoint.dv_for_tau(node.tau)
            # current decay (4095 - du) / 4096 = 1 - 1 / tau_syn
            du = int(min(max(round(fixedpoint.DECAY_UNITY / node.tau_syn) - 1, 0), ir.BITS["du"].hi))
            new[name] = ir.FixedLIF(name, node.size, vth=vth, du=du, dv=dv, bias_mant=mant,
                                    bias_exp=bias_exp, reset=node.reset, v_rest=to_state(node.v_leak),
                                    v_reset=to_state(node.v_reset), refractory=int(node.refractory),
                                    shape=node.shape)
        elif isinstance(node, ir.Stochastic):
            new[name] = ir.FixedStochastic(name, node.size, vth=vth, bias_mant=mant, bias_exp=bias_exp,
                                           seed=node.seed, shape=node.shape)
        else:
            new[name] = ir.FixedLIF(name, node.size, vth=vth, du=fixedpoint.DU_NONE, dv=0, bias_mant=mant,
                                    bias_exp=bias_exp, reset=node.reset, shape=node.shape)
        reports.append(LayerReport(name, node.size, synapses, tuple(exps), vth, bias_exp,
                                   clipped, zeroed, sat, max_input))
    out_nodes = [new.get(n.name, n) for n in graph.nodes]
    meta = {"quantization": [r._asdict() | {"weight_exp": list(r.weight_exp)} for r in reports],
            "payload_bits": payload_bits}
    return graph.with_nodes(out_nodes).with_metadata(**meta)


def layer_reports(graph: ir.Graph) -> list[LayerReport]:
    rows = cast(list[dict[str, Any]], graph.metadata.get("quantization", []))
    return [LayerReport(**{**r, "weight_exp": tuple(r["weight_exp"])}) for r in rows]


Pass = Callable[[ir.Graph], ir.Graph]


class PassError(SpikeforgeError):
    """A conversion pass failed; the message names it and the passes that ran before it."""


def run_pipeline(graph: ir.Graph, passes: Sequence[tuple[str, Pass]]) -> ir.Graph:
    """Apply the named passes in order; each result is a validated Graph. A failure is
    re-raised as PassError naming the pass and its predecessors (the cause chained)."""
    done: list[str] = []
    for name, fn in passes:
        try:
            graph = fn(graph)
        except SpikeforgeError as exc:
            after = f" (after {', '.join(done)})" if done else ""
            cls = UnsupportedError if isinstance(exc, UnsupportedError) else PassError
            raise cls(f"pass '{name}'{after}: {exc}") from exc
        if not isinstance(graph, ir.Graph):  # pragma: no cover - a programming error
            raise PassError(f"pass '{name}' returned {type(graph).__name__}, expected a Graph")
        done.append(name)
    return graph


def convert(ann: ir.Graph, calib_x: np.ndarray, reset: ir.Reset = "subtract",
            normalization: Normalization = "percentile", percentile: float = 99.9,
            payload_bits: int = 8, neuron: str = "if", seed: int = 0) -> ir.Graph:
    """The whole pipeline: fold_linear -> normalize -> relu_to_if -> quantize ->
    balance_latency -> align_initial_state. A graph that is already spiking (IF/LIF/Stochastic
    neurons, no ReLU: from NIR or a spiking model) is only folded, quantized, balanced and aligned."""
    if not ann.of_type(ir.ReLU) and ann.of_type(ir.IF, ir.LIF, ir.Stochastic):
        g = run_pipeline(ann, [("fold_linear", fold_linear),  # pooling between spiking layers
                               ("quantize", lambda g: quantize(g, payload_bits)),
                               ("balance_latency", balance_latency),
                               ("align_initial_state", align_initial_state)])
        return g.with_metadata(neuron="spiking source")
    g = run_pipeline(ann, [
        ("fold_linear", fold_linear),
        ("normalize", lambda g: normalize(g, calib_x, normalization, percentile)),
        ("relu_to_if", lambda g: relu_to_if(g, reset, neuron, seed)),
        ("quantize", lambda g: quantize(g, payload_bits)),
        ("balance_latency", balance_latency),
        ("align_initial_state", align_initial_state),
    ])
    return g.with_metadata(reset=reset, neuron=neuron)
