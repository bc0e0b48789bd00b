"""lava-dl netx: quantization to netx's rules, the netx HDF5 exporter, and a runner that
loads the file with lava-dl's own ``netx.hdf5.Network`` under ``Loihi2SimCfg('fixed_pt')``.

netx (lava-dl 0.6.0, ``netx/hdf5.py``) builds each layer as Lava's ``Dense``/``Conv`` plus
a stock ``LIF`` with

    weights  the stored integers, exponent 0 (``utils.optimize_weight_bits`` shifts them
             into Lava's 8-bit synapse and back: the stored ``wgtExp`` is not read)
    bias     bias_mant = the stored ``bias``, bias_exp = 6 (state units: bias << 6)
    neuron   vth = ``vThMant``, du = ``iDecay`` - 1, dv = ``vDecay``; reset to zero only,
             no refractory period, resting potential or subtractive leak

so a spikeforge graph is exported exactly only when every synapse has weight_exp 0, every
bias (bias_mant << bias_exp) is a multiple of 64 and every neuron is a stock CUBA LIF.
:func:`quantize_netx` produces such a graph from a float IF graph (``convert --target
netx``); the default spikeforge quantization (per-projection exponents, bias_exp chosen per
layer) is refused by :func:`export_netx` by name.

File layout written (what ``Network._create`` reads): ``layer/{0..n-1}`` with ``type``
('input', 'flatten', 'dense', 'conv'), ``shape`` (netx reads it reversed as x, y, z:
spikeforge's (C, H, W) is written as is), integer ``weight`` and ``bias``, and
``neuron/{type='CUBA', iDecay, vDecay, vThMant, refDelay, gradedSpike}``; ``simulation/{Ts,
tSample}``. The Input layer has no neuron: its graded payloads go straight into the first
synapse (``Network(..., input_message_bits=8)``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from spikeforge import fixedpoint, ir
from spikeforge.conv import symmetric_padding
from spikeforge.errors import SpikeforgeError, UnsupportedError
from spikeforge.fileio import atomic_path

#: netx's fixed bias exponent: bias_mant << 6 state units.
NETX_BIAS_EXP = 6
#: Symmetric 8-bit mantissas, as the default quantization uses.
W_MAX = fixedpoint.W_MAX
#: Largest worst-case synaptic input |a| per step for which a << 6 fits the 24-bit current u.
U_MAX = (fixedpoint.STATE_MAX - 1) >> fixedpoint.ACT_SHIFT
ADVICE = "convert --target netx"


# -- quantization to netx's rules ------------------------------------------------------
class NetxLayer(NamedTuple):
    """What the netx rules chose for one neuron layer (and what they changed)."""

    layer: str
    neurons: int
    synapses: int  # non-zero connections into the layer (passes.synapse_count)
    vth: int
    clipped_weights: int
    zeroed_weights: int  # non-zero float weights that round to 0
    saturated_biases: int
    max_input: int  # worst-case |a| per step


def _synapse_source(graph: ir.Graph, syn: str) -> ir.Node:
    return graph.node(graph.source_through_flatten(graph.predecessors(syn)[0]))


#: Float synapse node types quantize_netx takes (their fixed twins: passes.FIXED_SYNAPSE).
QUANTIZE_SYNAPSE_TYPES: tuple[type, ...] = (ir.Affine, ir.Conv2d)


def quantize_netx(graph: ir.Graph, payload_bits: int = 8) -> ir.Graph:
    """IF (reset to zero) / Affine / Conv2d graph -> FixedLIF / FixedAffine / FixedConv2d under
    netx's rules, for each layer with threshold theta, one incoming map W (input scale s:
    1 / (2**payload_bits - 1) from the Input, 1 for spikes) and bias b:

        vth = min(floor(127 / max|W s / theta|), floor(4095 / max|b / theta|),
                  floor(U_MAX / max_i sum_j |W_ij s / theta| x_max))
        w = round(W s vth / theta), weight_exp = 0
        bias_mant = round(b vth / theta), bias_exp = 6  (bias in state units: 64 * bias_mant)

    so every weight fits 8 bits at exponent 0, every bias is a multiple of 64, no 13-bit bias
    mantissa saturates and the worst-case input (x_max: 255 from the Input, 1 for spikes)
    cannot wrap u (the last two bounds can lower vth, and so the weights' resolution).
    The per-layer choices are stored in metadata["netx"]; metadata["quantization"] holds
    the rows ``spikeforge convert`` prints.
    """
    from spikeforge.converter.passes import FIXED_SYNAPSE, _neuron_bias, synapse_count

    payload_max = 2**payload_bits - 1
    new: dict[str, ir.Node] = {}
    rows: list[NetxLayer] = []
    for n in graph.nodes:
        if isinstance(n, ir.Input):
            new[n.name] = n.replace(payload_bits=payload_bits)
        elif isinstance(n, (ir.Stochastic, ir.ReLU)) or not isinstance(
                n, (ir.Input, ir.Flatten, ir.Output, ir.IF, ir.LIF, *QUANTIZE_SYNAPSE_TYPES)):
            raise UnsupportedError(f"{n.where()}: netx builds CUBA LIF layers with dense or conv "
                                   f"synapses only, found {type(n).__name__}")
    for name in graph.topological_order():
        node = graph.node(name)
        if not isinstance(node, (ir.IF, ir.LIF)):
            continue
        _check_netx_neuron(node)
        preds = graph.predecessors(name)
        if len(preds) != 1 or graph.is_recurrent_edge(preds[0], name):
            raise UnsupportedError(f"{node.where()}: netx's dense and conv layers take one "
                                   f"feedforward input, found {len(preds)} incoming synapses")
        syn = graph.node(preds[0])
        if not isinstance(syn, (ir.Affine, ir.Conv2d)):
            raise UnsupportedError(f"{node.where()}: netx's layers take their input through a dense "
                                   f"or conv synapse, found {syn.where()}")
        src = _synapse_source(graph, syn.name)
        s = 1.0 / payload_max if isinstance(src, ir.Input) else 1.0
        gain = node.r / node.tau if isinstance(node, ir.LIF) and math.isfinite(node.tau) else \
            (node.r if isinstance(node, ir.LIF) else 1.0)
        W = np.asarray(syn.weight, dtype=np.float64) * s * gain / node.v_threshold
        b = _neuron_bias(syn) * gain / node.v_threshold
        m = float(np.abs(W).max(initial=0.0))
        mb = float(np.abs(b).max(initial=0.0))
        in_max = payload_max if isinstance(src, ir.Input) else 1
        # worst-case synaptic input per step, per unit of vth: (a << 6) must stay in 24 bits
        mu = float((np.abs(W).reshape(W.shape[0], -1).sum(axis=1) * in_max).max(initial=0.0))
        vth = min(math.floor(W_MAX / m) if m > 0 else ir.BITS["vth"].hi,
                  math.floor(ir.BITS["bias_mant"].hi / mb) if mb > 0 else ir.BITS["vth"].hi,
                  math.floor(U_MAX / mu) if mu > 0 else ir.BITS["vth"].hi)
        vth = int(min(max(vth, 1), ir.BITS["vth"].hi))
        wq = np.rint(W * vth)
        clipped = int((np.abs(wq) > W_MAX).sum())
        wq = np.clip(wq, -W_MAX, W_MAX).astype(np.int64)
        zeroed = int(((wq == 0) & (np.asarray(syn.weight) != 0)).sum())
        new[syn.name] = FIXED_SYNAPSE.lookup(syn)(syn, wq, 0)
        bias = np.rint(b * vth)
        lo, hi = ir.BITS["bias_mant"].lo, ir.BITS["bias_mant"].hi
        sat = int(((bias < lo) | (bias > hi)).sum())
        bias = np.clip(bias, lo, hi).astype(np.int64)
        dv = 0
        if isinstance(node, ir.LIF) and math.isfinite(node.tau):
            dv = fixedpoint.dv_for_tau(node.tau)
        new[name] = ir.FixedLIF(name, node.size, shape=node.shape, vth=vth, du=fixedpoint.DU_NONE, dv=dv,
                                bias_mant=bias, bias_exp=NETX_BIAS_EXP, reset="zero")
        flat = np.abs(wq).reshape(wq.shape[0], -1)
        rows.append(NetxLayer(name, node.size, synapse_count(new[syn.name]), vth, clipped, zeroed, sat,
                              int(flat.sum(axis=1).max(initial=0)) * in_max))
    out = graph.with_nodes([new.get(n.name, n) for n in graph.nodes])
    quant = [{"layer": r.layer, "neurons": r.neurons, "synapses": r.synapses, "weight_exp": [0],
              "vth": r.vth, "bias_exp": NETX_BIAS_EXP, "clipped_weights": r.clipped_weights,
              "zeroed_weights": r.zeroed_weights, "saturated_biases": r.saturated_biases,
              "max_input": r.max_input} for r in rows]
    return out.with_metadata(quantization=quant, payload_bits=payload_bits,
                             netx={"rules": "weight_exp 0, bias_exp 6, reset zero",
                                   "layers": [r._asdict() for r in rows]})


def _check_netx_neuron(node: ir.IF | ir.LIF) -> None:
    if node.reset != "zero":
        raise UnsupportedError(f"{node.where()} reset='{node.reset}': netx's CUBA neuron resets "
                               f"to zero only (convert --target netx sets --reset zero)")
    if isinstance(node, ir.LIF):
        for param, value in (("v_leak", node.v_leak), ("v_reset", node.v_reset),
                             ("refractory", node.refractory)):
            if value:
                raise UnsupportedError(f"{node.where()} {param}={value}: netx's CUBA neuron "
                                       f"has no {param}")


class NetxChange(NamedTuple):
    """One layer's default spikeforge quantization against netx's."""

    layer: str
    weight_exp: tuple[int, ...]  # default per incoming projection (netx: 0)
    vth: int  # default
    netx_vth: int
    bias_step: int  # default bias resolution in state units (2**bias_exp); netx: 64
    reset: str  # default reset


def netx_changes(default: ir.Graph, netx: ir.Graph) -> list[NetxChange]:
    """What netx's rules change against the default quantization of the same source."""
    from spikeforge.converter.passes import layer_reports

    rows = []
    for r in layer_reports(default):
        node = default.node(r.layer)
        rows.append(NetxChange(r.layer, r.weight_exp, r.vth, int(netx.node(r.layer, ir.FixedLIF).vth),
                               2**r.bias_exp, getattr(node, "reset", "zero")))
    return rows


def convert_netx(ann: ir.Graph, calib_x: np.ndarray, normalization: str = "percentile",
                 percentile: float = 99.9, payload_bits: int = 8,
                 default_reset: str = "subtract") -> tuple[ir.Graph, list[NetxChange]]:
    """fold_linear -> normalize -> relu_to_if(reset zero) -> quantize_netx, and the changes
    against the default conversion (passes.convert with ``default_reset``)."""
    from spikeforge.converter.fold import fold_linear
    from spikeforge.converter.passes import convert, normalize, relu_to_if, run_pipeline

    default = convert(ann, calib_x, default_reset, normalization, percentile, payload_bits)
    if not ann.of_type(ir.ReLU):
        float_graph = ann
    else:
        float_graph = run_pipeline(ann, [
            ("fold_linear", fold_linear),
            ("normalize", lambda g: normalize(g, calib_x, normalization, percentile)),
            ("relu_to_if", lambda g: relu_to_if(g, "zero")),
        ])
    g = run_pipeline(float_graph, [("quantize_netx", lambda g: quantize_netx(g, payload_bits))])
    g = g.with_metadata(reset="zero", neuron="if", target="netx")
    return g, netx_changes(default, g)


def netx_target_args(args: Any) -> None:
    """``convert --target netx``: refuse, by option, what netx's rules exclude."""
    if args.reset == "subtract":
        raise SpikeforgeError("--reset subtract: --target netx resets to zero only "
                              "(netx's CUBA neuron); leave --reset out or pass --reset zero")
    if args.neuron != "if":
        raise SpikeforgeError(f"--neuron {args.neuron}: --target netx builds CUBA IF neurons "
                              f"only; use --neuron if")


def describe_changes(changes: list[NetxChange]) -> list[str]:
    """One line per layer: what netx's rules changed against the default quantization."""
    lines = ["netx rules against the default quantization (weight_exp 0, bias multiples of 64 "
             "state units = bias_exp 6, reset to zero):"]
    for c in changes:
        exps = ",".join(map(str, c.weight_exp))
        lines.append(f"  {c.layer}: weight_exp {exps} -> 0, vth {c.vth} -> {c.netx_vth}, "
                     f"bias step {c.bias_step} -> 64 state units, reset {c.reset} -> zero")
    return lines


# -- export ----------------------------------------------------------------------------
class _Export(NamedTuple):
    layers: list[dict[str, Any]]  # netx layer groups, in order
    names: list[str]  # spikeforge layer (neuron) names, in the order of netx's blocks


def _neuron_group(node: ir.FixedLIF) -> dict[str, Any]:
    return {"type": "CUBA", "iDecay": int(node.du) + 1, "vDecay": int(node.dv),
            "vThMant": int(node.vth), "refDelay": 1, "gradedSpike": False}


def _netx_bias(node: ir.FixedLIF) -> np.ndarray:
    """bias_mant << bias_exp as a netx bias (state units / 64), or UnsupportedError."""
    state = node.bias_mant.astype(np.int64) << int(node.bias_exp)
    if np.any(state % 64):
        raise UnsupportedError(
            f"{node.where()} bias: netx uses bias_exp 6 (multiples of 64 state units), found "
            f"bias_mant << {node.bias_exp} not a multiple of 64 ({ADVICE})")
    bias = state // 64
    lo, hi = ir.BITS["bias_mant"].lo, ir.BITS["bias_mant"].hi
    if bias.min(initial=0) < lo or bias.max(initial=0) > hi:
        raise UnsupportedError(f"{node.where()} bias: netx's bias_mant is 13-bit, found "
                               f"[{bias.min()}, {bias.max()}] ({ADVICE})")
    return bias


def _check_synapse(node: ir.FixedAffine | ir.FixedConv2d) -> None:
    if node.weight_exp != 0:
        raise UnsupportedError(f"{node.where()} weight_exp={node.weight_exp}: netx ignores "
                               f"weight exponents (its effective exponent is 0) ({ADVICE})")


def _target_neuron(graph: ir.Graph, syn: ir.Node) -> ir.FixedLIF:
    (dst,) = graph.successors(syn.name)
    node = graph.node(dst)
    if not isinstance(node, ir.FixedLIF):
        raise UnsupportedError(f"{node.where()}: netx builds CUBA LIF neurons only"
                               f"{' (convert --neuron if)' if isinstance(node, ir.FixedStochastic) else ''}")
    from spikeforge.backends.lava_backend import stock_lif_gaps

    gaps = stock_lif_gaps(node)
    if gaps:
        param, rule = gaps[0]
        hint = " (convert --target netx, or --reset zero)" if "reset" in param else ""
        raise UnsupportedError(f"{node.where()} {param}: netx's CUBA LIF {rule}{hint}")
    if node.v_init.any():
        raise UnsupportedError(f"{node.where()} v_init: netx starts every neuron at v = 0, found "
                               f"values in [{node.v_init.min()}, {node.v_init.max()}] ({ADVICE})")
    return node


def _export_input(node: ir.Input, graph: ir.Graph, out: _Export) -> None:
    if out.layers:
        raise UnsupportedError(f"{node.where()}: netx networks have one input, found a second")
    out.layers.append({"type": "input", "shape": np.array(node.shape, np.int64)})


def _export_flatten(node: ir.Flatten, graph: ir.Graph, out: _Export) -> None:
    out.layers.append({"type": "flatten", "shape": np.array([node.out_size], np.int64)})


def _export_dense(node: ir.FixedAffine, graph: ir.Graph, out: _Export) -> None:
    _check_synapse(node)
    lif = _target_neuron(graph, node)
    out.layers.append({"type": "dense", "shape": np.array([lif.size], np.int64),
                       "weight": node.weight.astype(np.int64), "bias": _netx_bias(lif),
                       "neuron": _neuron_group(lif)})
    out.names.append(lif.name)


def _export_conv(node: ir.FixedConv2d, graph: ir.Graph, out: _Export) -> None:
    _check_synapse(node)
    pad = symmetric_padding(node.geometry)
    if pad is None:
        raise UnsupportedError(f"{node.where()} padding (top, left, bottom, right) = {node.padding}: netx "
                               f"pads symmetrically (pad_h, pad_w), and no symmetric padding gives the "
                               f"same windows")
    lif = _target_neuron(graph, node)
    c, h, w = node.out_shape
    bias = _netx_bias(lif).reshape(c, h, w).transpose(2, 1, 0)  # netx neurons are (x, y, z)
    out.layers.append({"type": "conv", "shape": np.array([c, h, w], np.int64),
                       "weight": node.weight.astype(np.int64),
                       "stride": np.array(node.stride, np.int64),
                       "padding": np.array(pad, np.int64),
                       "dilation": np.array(node.dilation, np.int64),
                       "groups": np.int64(node.groups), "bias": bias,
                       "neuron": _neuron_group(lif)})
    out.names.append(lif.name)


def _export_nothing(node: ir.Node, graph: ir.Graph, out: _Export) -> None:
    """Neurons are written with their synapse; the Output is the last layer."""


#: IR node type -> how it becomes netx layers. Anything else is refused by name.
EXPORT = ir.Registry("netx export")
EXPORT.register(ir.Input)(_export_input)
EXPORT.register(ir.Flatten)(_export_flatten)
EXPORT.register(ir.FixedAffine)(_export_dense)
EXPORT.register(ir.FixedConv2d)(_export_conv)
EXPORT.register(ir.FixedLIF, ir.Output)(_export_nothing)


def netx_layers(graph: ir.Graph) -> _Export:
    """The netx layer groups of a quantized feedforward chain, or UnsupportedError naming
    the first node netx cannot build."""
    for n in graph.nodes:
        if isinstance(n, ir.FixedStochastic):
            raise UnsupportedError(f"{n.where()}: stochastic neurons: netx builds CUBA LIF "
                                   f"neurons only (convert --neuron if)")
    if not graph.is_feedforward():
        a, b = next(e for e in graph.edges if graph.is_recurrent_edge(*e))
        raise UnsupportedError(f"edge {a} -> {b}: netx exports feedforward chains only "
                               f"(recurrence needs netx's dense_rec, not written here)")
    for n in graph.nodes:
        if len(graph.successors(n.name)) > 1 or len(graph.predecessors(n.name)) > 1:
            raise UnsupportedError(f"{n.where()}: netx builds a chain of layers, found a node "
                                   f"with {len(graph.successors(n.name))} successors and "
                                   f"{len(graph.predecessors(n.name))} predecessors")
    out = _Export([], [])
    for name in graph.topological_order():
        node = graph.node(name)
        EXPORT.lookup(node)(node, graph, out)
    return out


def _write_group(group: Any, items: dict[str, Any]) -> None:
    for key, value in items.items():
        if isinstance(value, dict):
            _write_group(group.create_group(key), value)
        elif isinstance(value, str):
            group.create_dataset(key, data=value.encode("ascii"))
        else:
            group.create_dataset(key, data=value)


def export_netx(graph: ir.Graph, path: str | Path, timesteps: int = 32) -> list[str]:
    """Write ``graph`` as a netx HDF5 network (atomically); returns the layer names in netx
    block order. ``timesteps``: simulation/tSample (informational for netx users)."""
    import h5py

    exported = netx_layers(graph)
    with atomic_path(path, ".net") as tmp:
        with h5py.File(tmp, "w") as f:
            sim = f.create_group("simulation")
            sim.create_dataset("Ts", data=1.0)
            sim.create_dataset("tSample", data=int(timesteps))
            layer = f.create_group("layer")
            for i, items in enumerate(exported.layers):
                _write_group(layer.create_group(str(i)), items)
    return exported.names


# -- running a netx file with lava-dl --------------------------------------------------
def import_netx() -> Any:
    """lava-dl's netx module, or UnsupportedError saying how to install it."""
    from spikeforge.backends.lava_backend import import_lava

    import_lava()
    try:
        from lava.lib.dl import netx
    except ImportError as exc:
        raise SpikeforgeError(f"lava-dl's netx is not importable ({exc}); `make env` installs "
                              f"lava-dl 0.6.0 with --no-deps") from None
    return netx


def _run_netx(path: str, payloads: np.ndarray, on_error: Callable | None = None,
              timeout: float | None = None) -> list[np.ndarray]:
    """Load ``path`` with ``netx.hdf5.Network`` and run each sample of ``payloads`` (int32
    (batch, steps, inputs)) as one run(steps), u, v and the synapses' a_buff set to 0 between
    samples. Returns per netx block bool spikes (batch, steps, n) in (C, H, W) flat order."""
    import time

    from lava.proc.io.source import RingBuffer

    from spikeforge.backends.lava_backend import _run_cfg, _run_watched, _stopped, _unpack
    from spikeforge.backends.lava_procs.process import SpikeRecorder

    netx = import_netx()
    batch, steps, n_in = payloads.shape
    deadline = None if timeout is None else (time.monotonic() + timeout, timeout)
    net = netx.hdf5.Network(net_config=str(path), input_message_bits=8)
    src = RingBuffer(data=np.ascontiguousarray(payloads.reshape(batch * steps, n_in).T))
    port = src.s_out
    if len(net.inp.shape) == 3:  # a conv input: netx's (x, y, z) = (W, H, C) from (C, H, W) rows
        port = port.reshape(tuple(net.inp.shape[::-1])).transpose([2, 1, 0])
    port.connect(net.inp)
    recorders = []
    for block in net.layers:
        port = block.neuron.s_out
        n = int(np.prod(port.shape))
        if len(port.shape) == 3:  # (x, y, z) = (W, H, C) -> C-major flat
            port = port.transpose([2, 1, 0]).flatten()
        rec = SpikeRecorder(shape=(n,), steps=batch * steps)
        port.connect(rec.a_in)
        recorders.append(rec)
    cfg = _run_cfg(False)
    with _stopped(src, on_error):
        for b in range(batch):
            if b:
                for block in net.layers:
                    syn = block.synapse
                    buf = syn.a_buff if hasattr(syn, "a_buff") else syn.a_buf  # Dense | Conv
                    for var in (block.neuron.u, block.neuron.v, buf):
                        var.set(np.zeros(var.shape, np.int32))
            _run_watched(src, steps, cfg, deadline)
        return [_unpack(rec.data.get(), batch, steps) for rec in recorders]


def run_netx(path: str | Path, names: list[str], payloads: np.ndarray,
             timeout: float | None = None) -> dict[str, np.ndarray]:
    """Run a netx file with lava-dl in an isolated child process group; spikes per layer
    (``names`` in netx block order, as :func:`export_netx` returns them)."""
    from spikeforge.backends.lava_backend import run_isolated

    import_netx()  # in this process, before the fork
    p = np.asarray(payloads).astype(np.int32)
    timeout = timeout if timeout is not None else 120 + 0.2 * p.shape[0] * p.shape[1]
    parts = run_isolated(_run_netx, (str(path), p), timeout)
    if len(parts) != len(names):
        raise SpikeforgeError(f"{path}: netx built {len(parts)} layers, expected {len(names)}")
    return dict(zip(names, parts))
