"""The cpu backend: spikeforge.neuron's integer arithmetic on torch tensors, bit for bit,
batched over samples (and over time for feedforward graphs), on CPU threads or a CUDA device.

It is the oracle the tests compare Lava and Brian2 against, and the fast path for sweeps.
Exactness: spikes are 0/1 and payloads and weights small integers, so a float matmul or
convolution is exact while every partial sum stays below the mantissa (float32 while
fan_in * max|w| * max input < 2**24, else float64); the product times 2**weight_exp is
floored in float (a power of two: exact) and the neuron state is integer (int32 where the
bounds allow it, int64 otherwise). Prepared once at compile: weights in their exact float type,
per-layer bounds, the neuron kind (an IF fast path when du = 4095, dv = 0 and no leak,
refractory period or v_rest: u = a << 6, v = sat24(v + u + bias)). At run: a feedforward layer's
input for all steps is one product of its sources' whole spike trains; the input's payloads are
multiplied once per distinct time slice (constant current: once) and indexed over time. The IF
scan runs in float32 where these inputs keep every value below 2**23 (integers, so exact; v
clamped only where its bounds reach sat24), its spikes 0/1 float32 that the next product reads
without a conversion. Layers fed only by convolutions hold their neurons in (H, W, C) order
(channels last, conv2d's fastest layout; dense weights reading them permuted at compile).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple

import numpy as np

from spikeforge import ir
from spikeforge.backends.base import Backend, RunResult
from spikeforge.errors import DataError, SpikeforgeError
from spikeforge.fixedpoint import ACT_SHIFT, DECAY_SHIFT, DECAY_UNITY, STATE_MAX
from spikeforge.network import Layer, Network, Projection
from spikeforge.neuron import LIFParams, StochasticParams, exact_float_dtype, uniform_ints

if TYPE_CHECKING:  # torch is imported where it is used (the CLI starts without it)
    import torch
    from torch import Tensor

#: Working-set bound per sub-batch: samples x steps x (largest layer) values.
WORK_VALUES = 2**22  # measured: sub-batches that stay in cache run the CNN fastest
DEVICES = ("cpu", "cuda")


#: A neuron state on the device: (u, v, steps left in the refractory period).
State = tuple["Tensor", "Tensor", "Tensor"]


class Synapse(NamedTuple):
    """A projection prepared for the device: ``weight`` (src, dst) dense or the conv kernel,
    in ``dtype`` (exact for these integers); a = floor(acc * scale), |a| <= bound."""

    proj: Projection
    weight: Tensor
    dtype: torch.dtype  # float32 | float64
    scale: float  # 2**weight_exp
    bound: int  # max |a| over all inputs
    src_hwc: bool  # the source's neurons are held in (H, W, C) order (see Neurons.hwc)
    dst_hwc: bool  # the destination's are


class Neurons(NamedTuple):
    """A layer prepared for the device: ``kind`` 'if' | 'lif' | 'stochastic', integer state in
    ``dtype``; ``wrap`` False when |a << 6| < 2**23 (the 24-bit wrap of u cannot occur)."""

    layer: Layer
    kind: str
    dtype: torch.dtype  # int32 | int64
    bias: Tensor  # (n,) in dtype
    wrap: bool
    synapses: tuple[Synapse, ...]
    bias_max: int  # max |bias|
    float_in: bool  # IF whose summed input is exact in float32: the float32 scan may run
    bias_f: Tensor  # (n,) float32
    hwc: tuple[int, int, int] | None  # (C, H, W) when held in (H, W, C) order (channels last), else None
    v_init: Tensor | None  # (n,) in dtype: v at the start of every sample; None: all 0
    v_init_f: Tensor | None  # the same in float32
    v_init_range: tuple[int, int]  # (min, max) of v_init (0 included)


class CpuProgram(NamedTuple):
    net: Network
    order: list[str]  # layer names in topological order
    time_batched: bool
    device: str
    layers: tuple[Neurons, ...]
    conv_im2col: bool  # convolutions as unfold + matmul (exact on any device) instead of conv2d
    closed_form: bool  # IF with reset by subtraction over all steps at once (else the step loop)
    channels_last: bool  # conv outputs held in (H, W, C) order
    workspace: threading.local  # per thread: spike buffers kept between sub-batches and runs


def _spike_buffer(prog: CpuProgram, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised tensor for a layer's spike train, the same memory on every sub-batch and
    run of this thread (fresh pages cost more than writing the spikes; results are copied out)."""
    import torch

    ws = prog.workspace.__dict__
    buf = ws.get(name)
    if buf is None or buf.dtype != dtype or buf.numel() < int(np.prod(shape)):
        buf = ws[name] = torch.empty(int(np.prod(shape)), dtype=dtype, device=prog.device)
    return buf[: int(np.prod(shape))].view(shape)


class CpuBackend(Backend):
    """Options: ``device`` 'cpu' (default) or 'cuda'; ``threads`` (CPU intra-op threads, default
    torch's); ``time_batched`` (None: feedforward graphs); ``conv_im2col`` (None: on CUDA, whose
    conv2d may use TF32 or Winograd, which are not exact); ``closed_form`` (IF with reset by
    subtraction as a cumulative sum and max over time; None: on CUDA, where it saves launches);
    ``channels_last`` (default True: layers fed only by convolutions hold their neurons in
    (H, W, C) order, the layout conv2d runs fastest in; results come back in C order)."""

    name = "cpu"

    def __init__(self, time_batched: bool | None = None, device: str = "cpu", threads: int | None = None,
                 conv_im2col: bool | None = None, closed_form: bool | None = None,
                 channels_last: bool = True) -> None:
        if device not in DEVICES:
            raise SpikeforgeError(f"device: expected one of {', '.join(DEVICES)}, found '{device}'")
        self.time_batched, self.device, self.threads = time_batched, device, threads
        self.conv_im2col = (device == "cuda") if conv_im2col is None else conv_im2col
        self.closed_form = (device == "cuda") if closed_form is None else closed_form
        self.channels_last = channels_last

    def compile(self, graph: ir.Graph, **options: Any) -> CpuProgram:
        import torch

        if self.device == "cuda":
            if not torch.cuda.is_available():
                raise SpikeforgeError("device: 'cuda' asked for, but torch finds no CUDA device")
            torch.backends.cuda.matmul.allow_tf32 = False  # TF32 products would not be exact
        if self.threads:
            torch.set_num_threads(self.threads)
        net = self.lower(graph)
        batched = net.feedforward if self.time_batched is None else (self.time_batched and net.feedforward)
        hwc = {l.name: _hwc_shape(net, l) for l in net.layers} if self.channels_last else {}
        layers = tuple(_prepare_layer(net, l, self.device, hwc) for l in net.layers)
        return CpuProgram(net, [l.name for l in net.layers], batched, self.device, layers, self.conv_im2col,
                          self.closed_form, self.channels_last, threading.local())

    def run(self, program: CpuProgram, payloads: np.ndarray, sample_offset: int = 0,
            record: Iterable[str] | None = None) -> RunResult:
        """``record``: the layers whose spikes are returned (default all; the readout always)."""
        net = program.net
        payloads = check_payloads(net, payloads)
        keep = set(program.order) if record is None else (set(record) | {net.readout})
        unknown = keep - set(program.order)
        if unknown:
            raise SpikeforgeError(f"record: expected layer names of this network, found {sorted(unknown)}")
        batch, steps, _ = payloads.shape
        widest = max([net.input.size] + [l.size for l in net.layers])
        per = max(1, WORK_VALUES // max(1, steps * widest))
        import torch

        parts = []
        with torch.no_grad():
            for i in range(0, max(batch, 1), per):
                parts.append(_run(program, payloads[i:i + per], sample_offset + i, keep))
        if len(parts) == 1:
            spikes, v_final = parts[0]
        else:  # sub-batches bound the working set by the widest layer; spikes do not depend on it
            spikes = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
            v_final = np.concatenate([p[1] for p in parts])
        ro = net.layer(net.readout)
        return RunResult({k: spikes[k] for k in program.order if k in spikes}, v_final, net.readout,
                         ro.node.vth_scaled)


def check_payloads(net: Network, payloads: np.ndarray) -> np.ndarray:
    p = np.asarray(payloads)
    if p.ndim != 3 or p.shape[2] != net.input.size:
        raise DataError(
            f"payloads: expected shape (batch, steps, {net.input.size}), found {p.shape}"
        )
    if p.size and not np.issubdtype(p.dtype, np.integer) and not np.array_equal(p, np.rint(p)):
        raise DataError("payloads: expected integers, found fractional values")
    if p.size and (p.min() < 0 or p.max() > net.input.payload_max):
        raise DataError(
            f"payloads: expected integers in [0, {net.input.payload_max}], found [{p.min()}, {p.max()}]"
        )
    return p.astype(np.int32, copy=False)


# -- preparation (once per compile) ------------------------------------------------------------
def _hwc_shape(net: Network, layer: Layer) -> tuple[int, int, int] | None:
    """(C, H, W) of a layer fed by convolutions only (held channels last), else None."""
    inc = net.incoming(layer.name)
    if layer.stochastic or not inc or any(p.conv is None for p in inc):
        return None
    c, h, w = inc[0].conv.output_shape if inc[0].conv is not None else (0, 0, 0)
    return (int(c), int(h), int(w))


def _hwc_order(shape: tuple[int, int, int]) -> np.ndarray:
    """For each position of the (H, W, C) order, its index in C order."""
    return np.arange(int(np.prod(shape))).reshape(shape).transpose(1, 2, 0).ravel()


def _prepare_synapse(net: Network, proj: Projection, device: str,
                     hwc: dict[str, tuple[int, int, int] | None]) -> Synapse:
    import torch

    max_in = net.input.payload_max if proj.graded else 1
    w = np.asarray(proj.weight)
    fan_in = int(np.prod(w.shape[1:]))
    max_w = int(np.abs(w).max(initial=0))
    dt = torch.float32 if exact_float_dtype(fan_in, max_w, max_in) is np.float32 else torch.float64
    src_shape = hwc.get(proj.src)
    if proj.conv is not None:
        cl = torch.channels_last if hwc.get(proj.dst) else torch.contiguous_format
        tw = torch.tensor(w, dtype=dt, device=device).contiguous(memory_format=cl)
    else:  # (src, dst), the source's rows in its order
        tw = torch.tensor((w if src_shape is None else w[:, _hwc_order(src_shape)]).T, dtype=dt,
                          device=device).contiguous()
    # |a| <= floor(fan_in * max|w| * max input * 2**exp) (an upper bound, what dtypes are chosen by)
    acc = fan_in * max_w * max_in
    bound = acc << proj.weight_exp if proj.weight_exp >= 0 else -((-acc) >> -proj.weight_exp)
    return Synapse(proj, tw, dt, 2.0 ** proj.weight_exp, abs(bound), src_shape is not None,
                   hwc.get(proj.dst) is not None)


def _prepare_layer(net: Network, layer: Layer, device: str,
                   hwc: dict[str, tuple[int, int, int] | None]) -> Neurons:
    import torch

    syn = tuple(_prepare_synapse(net, p, device, hwc) for p in net.incoming(layer.name))
    n = layer.node
    shape = hwc.get(layer.name)
    bias = np.asarray(layer.params.bias, np.int64)
    v0 = np.asarray(layer.v_init, np.int64)
    if shape is not None:
        bias, v0 = bias[_hwc_order(shape)], v0[_hwc_order(shape)]
    a_max = sum(s.bound for s in syn)
    if isinstance(n, ir.FixedStochastic):
        kind = "stochastic"
    elif n.du == DECAY_UNITY - 1 and n.dv == 0 and not n.leak and not n.refractory and not n.v_rest:
        kind = "if"
    else:
        kind = "lif"
    x = a_max << ACT_SHIFT
    bmax = int(np.abs(bias).max(initial=0))
    # int32 while a << 6 (wrapped: |u| <= |a << 6|), v (24 bit), bias and vth << 6 sum below 2**31
    fits32 = kind == "if" and x + 2 * STATE_MAX + bmax + (int(n.vth) << ACT_SHIFT) < 2**31
    dt = torch.int32 if fits32 else torch.int64
    # the float32 scan: every product float32 and their sum below 2**24; thresholds exact
    float_in = (kind == "if" and all(s.dtype == torch.float32 for s in syn) and a_max < 2**24
                and (int(n.vth) << ACT_SHIFT) < STATE_MAX)
    return Neurons(layer, kind, dt, torch.tensor(bias, dtype=dt, device=device), x >= STATE_MAX, syn,
                   bmax, float_in, torch.tensor(bias, dtype=torch.float32, device=device), shape,
                   torch.tensor(v0, dtype=dt, device=device) if v0.any() else None,
                   torch.tensor(v0, dtype=torch.float32, device=device) if v0.any() else None,
                   (min(0, int(v0.min(initial=0))), max(0, int(v0.max(initial=0)))))


def _v_start(nr: Neurons, batch: int, device: str) -> Tensor:
    """A fresh (batch, n) membrane potential at the start of the samples: v_init (or 0)."""
    import torch

    v = torch.zeros((batch, nr.layer.size), dtype=nr.dtype, device=device)
    return v if nr.v_init is None else v.add_(nr.v_init)


# -- arithmetic on tensors ----------------------------------------------------------------------
def _acc(prog: CpuProgram, syn: Synapse, s: Tensor) -> Tensor:
    """floor(W s 2**exp) for s (N, src) in syn.dtype -> (N, dst) float, exact."""
    import torch.nn.functional as F

    g = syn.proj.conv
    if g is None:
        y = s @ syn.weight
    else:
        c, h, w = g.input_shape
        x = s.reshape(len(s), h, w, c).permute(0, 3, 1, 2) if syn.src_hwc else s.reshape(len(s), c, h, w)
        t, l, b, r = g.padding
        pad: tuple[int, int] = (0, 0)
        if (t, l) == (b, r) and not prog.conv_im2col:
            pad = (t, l)  # symmetric: conv2d pads itself, no padded copy
        elif t or l or b or r:
            x = F.pad(x, (l, r, t, b))
        if prog.conv_im2col:
            y = _conv_im2col(x, syn.weight, g)
        else:
            y = F.conv2d(x, syn.weight, stride=g.stride, padding=pad, dilation=g.dilation, groups=g.groups)
        y = y.reshape(len(s), *g.output_shape)
        y = (y.permute(0, 2, 3, 1) if syn.dst_hwc else y).reshape(len(s), -1)  # channels last: a view
    return y.mul_(syn.scale).floor_() if syn.scale != 1.0 else y


def _conv_im2col(x: Tensor, w: Tensor, g: ir.ConvGeometry) -> Tensor:
    """conv2d as unfold + (grouped) matmul: plain dot products, exact for these integers."""
    import torch

    import torch.nn.functional as F

    n = x.shape[0]
    cols = F.unfold(x, g.kernel, dilation=g.dilation, stride=g.stride)  # (N, C_in*kh*kw, L)
    k = cols.shape[1] // g.groups
    cols = cols.reshape(n, g.groups, k, -1)
    wg = w.reshape(g.groups, w.shape[0] // g.groups, k)
    return torch.einsum("gok,ngkl->ngol", wg, cols).reshape(n, w.shape[0], -1)


def _wrap24(x: Tensor) -> Tensor:
    """Lava's 24-bit wrap of u (spikeforge.neuron.wrap24), on a tensor."""
    import torch

    w = torch.where(x > STATE_MAX, x - 2 * STATE_MAX, x)
    return torch.where(w <= -STATE_MAX, x + 2 * STATE_MAX, w)


def _decay(x: Tensor, d: int) -> Tensor:
    import torch

    p = x * (DECAY_UNITY - d)
    return torch.sign(p) * (torch.abs(p) >> DECAY_SHIFT)


class _Inputs(NamedTuple):
    """A layer's synaptic input a over time: (R, B, n) values and for each step its row of
    them, -1 where a = 0 (inputs constant over stretches of time are computed once per stretch)."""

    values: Tensor
    rows: list[int]


def _layer_inputs(prog: CpuProgram, nr: Neurons, sources: dict[str, Tensor], src_rows: dict[str, list[int]],
                  steps: int, batch: int) -> _Inputs:
    """a[t] = sum over projections of floor(W s[t - 1] 2**exp), a[0] = 0: in float32 where
    nr.float_in (exact: below 2**24), else in nr.dtype."""
    import torch

    n = nr.layer.size
    dt = torch.float32 if nr.float_in else nr.dtype
    if not nr.synapses or steps < 2:
        return _Inputs(torch.zeros((0, batch, n), dtype=dt, device=prog.device), [-1] * steps)
    # one row structure for all projections: the shared one if every source has it, else per step
    structs = {tuple(src_rows[s.proj.src][: steps - 1]) for s in nr.synapses}
    shared = len(structs) == 1
    rows_prev = list(next(iter(structs))) if shared else list(range(steps - 1))
    uniq = sorted(set(rows_prev))
    if shared:  # leading slices without a spike in any source (the layers' latency) give a = 0
        k = 0
        while k < len(uniq) and not any(bool(sources[s.proj.src][uniq[k]].any()) for s in nr.synapses):
            k += 1
        uniq = uniq[k:]
    values = torch.zeros((0, batch, n), dtype=dt, device=prog.device)
    for i, syn in enumerate(nr.synapses):
        src = sources[syn.proj.src]  # (R_src, B, n_src)
        pick = uniq if shared else src_rows[syn.proj.src][: steps - 1]
        if not pick:
            break
        sel = src[pick[0]: pick[0] + len(pick)] if pick == list(range(pick[0], pick[0] + len(pick))) else src[pick]
        a = _acc(prog, syn, sel.reshape(-1, sel.shape[-1]).to(syn.dtype)).reshape(len(sel), batch, n)
        if i == 0:
            values = a if a.dtype == dt else a.to(dt)  # exact integers in float: the cast is exact
        else:
            values += a.to(dt)
    remap = {r: i for i, r in enumerate(uniq)}
    return _Inputs(values, [-1] + [remap.get(r, -1) for r in rows_prev])


def _scan(prog: CpuProgram, nr: Neurons, inp: _Inputs, steps: int, batch: int, offset: int) -> tuple[Tensor, Tensor]:
    """The neuron layer over all steps given its inputs: spikes (steps, B, n) (bool, or 0/1 in
    float32 from the float32 IF scan, which the next product reads as is) and final v."""
    import torch

    p = nr.layer.params
    n, dev, dt = nr.layer.size, prog.device, nr.dtype
    if isinstance(p, StochasticParams):
        spikes = torch.empty((steps, batch, n), dtype=torch.bool, device=dev)
        z = (inp.values.to(dt) << ACT_SHIFT) + nr.bias
        samples = np.arange(offset, offset + batch)
        for t in range(steps):
            r = torch.from_numpy(uniform_ints(p.seed, samples, t, n, p.vth << ACT_SHIFT)).to(dev)
            if inp.rows[t] < 0:
                torch.gt(nr.bias.expand(batch, n), r, out=spikes[t])
            else:
                torch.gt(z[inp.rows[t]], r, out=spikes[t])
        return spikes, torch.zeros((batch, n), dtype=torch.int64, device=dev)
    th = p.vth << ACT_SHIFT
    lo, hi = -STATE_MAX + 1, STATE_MAX - 1
    if nr.kind == "if":  # u = wrap24(a << 6) (decay to 0), v = sat24(v + u + bias)
        vals = inp.values
        a_lo, a_hi = (int(m) for m in vals.aminmax()) if vals.numel() else (0, 0)
        a_max = max(-a_lo, a_hi) << ACT_SHIFT
        # |v| grows by at most max|w| per step (a reset moves v toward 0 or to v_reset, and a
        # subtraction only happens above vth << 6 > 0, leaving v > 0): below 2**23 - 1, no saturation
        v0 = max(-nr.v_init_range[0], nr.v_init_range[1])
        reach = steps * (a_max + nr.bias_max) + abs(p.v_reset) + v0  # |wrap24(x)| <= |x|
        saturates = reach >= hi
        if vals.is_floating_point() and a_max + nr.bias_max < STATE_MAX and not prog.closed_form:
            # no wrap, and |v + w| < 2**24 before any saturation: exact in float32
            w_lo = (min(a_lo, 0) << ACT_SHIFT) - nr.bias_max
            w_hi = (max(a_hi, 0) << ACT_SHIFT) + nr.bias_max
            return _if_float32(prog, p, nr, inp, steps, batch, th, _v_bounds(p, steps, th, w_lo, w_hi, nr.v_init_range))
        vals = vals.to(dt)
        w = torch.empty((len(vals) + 1, batch, n), dtype=dt, device=dev)
        w[0] = 0
        torch.mul(vals, 1 << ACT_SHIFT, out=w[1:])
        del vals
        if nr.wrap and a_max >= STATE_MAX:  # the static bound allows a wrap, and these inputs reach it
            w = _wrap24(w)
        w += nr.bias
        rows = [r + 1 for r in inp.rows]
        spikes = _spike_buffer(prog, nr.layer.name, (steps, batch, n), torch.bool)
        if p.reset == "subtract" and not saturates and prog.closed_form:
            return _if_subtract_closed(w, rows, th, spikes, nr.v_init)
        v = _v_start(nr, batch, dev)
        tht = torch.tensor(th, dtype=dt, device=dev)  # a same-typed 0-d threshold compares faster
        for t in range(steps):
            v += w[rows[t]]
            if saturates:
                v.clamp_(lo, hi)
            s = spikes[t]
            torch.gt(v, tht, out=s)
            if p.reset == "zero":
                v.masked_fill_(s, 0)
            elif p.reset == "value":
                v.masked_fill_(s, p.v_reset)
            else:
                v.sub_(s.view(torch.uint8), alpha=th)  # the bool's bytes, promoted: no copy
        return spikes, v
    # general LIF (spikeforge.neuron.lif_step), in int64
    spikes = torch.empty((steps, batch, n), dtype=torch.bool, device=dev)
    u = torch.zeros((batch, n), dtype=dt, device=dev)
    state = (u, _v_start(nr, batch, dev), torch.zeros_like(u))
    a6 = inp.values.to(dt) << ACT_SHIFT
    zero = torch.zeros((batch, n), dtype=dt, device=dev)
    for t in range(steps):
        state, spikes[t] = _lif_update(p, nr, state, zero if inp.rows[t] < 0 else a6[inp.rows[t]])
    return spikes, state[1]


def _v_bounds(p: LIFParams, steps: int, th: int, w_lo: int, w_hi: int,
              v0: tuple[int, int]) -> tuple[int | None, int | None]:
    """The saturation bounds of v that IF inputs w in [w_lo, w_hi] over ``steps`` can reach
    from v_init in [v0_lo, v0_hi] (0 included): (lo, hi) of sat24, None where v cannot get
    there. Above: with m = max(th, v0_hi), after a reset v <= m (zero), max(m, v_reset)
    (value), or with subtraction m + t max(0, w_hi - th) (a spike removes th from anything
    above th); before it v is at most that plus w_hi. Below: v falls by at most max(0, -w_lo)
    a step from min(v0_lo, v_reset)."""
    m = max(th, v0[1])
    after = {"zero": m, "value": max(m, p.v_reset)}.get(p.reset, m + (steps - 1) * max(0, w_hi - th))
    top = after + max(0, w_hi)
    bottom = min(v0[0], p.v_reset) - steps * max(0, -w_lo)
    return (None if bottom > -STATE_MAX + 1 else -STATE_MAX + 1), (None if top < STATE_MAX - 1 else STATE_MAX - 1)


def _if_float32(prog: CpuProgram, p: LIFParams, nr: Neurons, inp: _Inputs, steps: int, batch: int, th: int,
                clamp: tuple[int | None, int | None]) -> tuple[Tensor, Tensor]:
    """The IF step in float32 for inputs |w| = |a << 6 + bias| < 2**23 (no wrap; v + w, |v| <=
    2**23 - 1, below 2**24: integers, so exact): v = sat24(v + w[t]) (``clamp``: the bounds v
    can reach, None where not); s = v > vth << 6; reset (v -= s th | v -= s v | v -= s (v -
    v_reset)). Spikes come out as 0/1 float32, read by the next layer's product as they are."""
    import torch

    n, dev = nr.layer.size, nr.bias_f.device
    w = torch.add(nr.bias_f, inp.values, alpha=1 << ACT_SHIFT, out=inp.values)  # in place, exact
    spikes = _spike_buffer(prog, nr.layer.name, (steps, batch, n), torch.float32)
    v = torch.zeros((batch, n), dtype=torch.float32, device=dev)
    if nr.v_init_f is not None:
        v += nr.v_init_f
    tht = torch.tensor(float(th), dtype=torch.float32, device=dev)
    lo, hi = clamp
    for t in range(steps):
        r = inp.rows[t]
        v += w[r] if r >= 0 else nr.bias_f
        if lo is not None or hi is not None:
            v.clamp_(lo, hi)
        s = spikes[t]
        torch.gt(v, tht, out=s)
        if p.reset == "subtract":
            v.sub_(s, alpha=th)
        else:
            v.addcmul_(v, s, value=-1)  # 0 where it spiked
            if p.reset == "value":
                v.add_(s, alpha=p.v_reset)
    return spikes, v


def _lif_update(p: LIFParams, nr: Neurons, state: State, a6: Tensor) -> tuple[State, Tensor]:
    """spikeforge.neuron.lif_step on tensors: state (u, v, ref), a6 = a << 6."""
    import torch

    u, v, ref = state
    if nr.kind == "if":  # decay of u to 0, none of v: u = wrap24(a << 6), v = sat24(v + u + bias)
        u = _wrap24(a6) if nr.wrap else a6
        vn = torch.clamp(v + u + nr.bias, -STATE_MAX + 1, STATE_MAX - 1)
        s = vn > (p.vth << ACT_SHIFT)
        return (u, _reset(p, vn, s, nr.dtype), ref), s
    u = _wrap24(_decay(u, p.du + 1) + a6)
    d = _decay(v - p.v_rest, p.dv)
    if p.leak:
        d = torch.sign(d) * torch.clamp(torch.abs(d) - p.leak, min=0)
    vn = torch.clamp(p.v_rest + d + u + nr.bias, -STATE_MAX + 1, STATE_MAX - 1)
    if p.refractory:
        held = ref > 0
        vn = torch.where(held, v, vn)
        ref = torch.where(held, ref - 1, ref)
    s = vn > (p.vth << ACT_SHIFT)
    if p.refractory:
        s &= ~held
        ref = torch.where(s, torch.full_like(ref, p.refractory), ref)
    return (u, _reset(p, vn, s, nr.dtype), ref), s


def _reset(p: LIFParams, v: Tensor, s: Tensor, dt: torch.dtype) -> Tensor:
    if p.reset == "zero":
        return v.masked_fill(s, 0)
    if p.reset == "value":
        return v.masked_fill(s, p.v_reset)
    return v - s.to(dt) * (p.vth << ACT_SHIFT)


def _if_subtract_closed(w: Tensor, rows: list[int], th: int, spikes: Tensor,
                        v_init: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """IF with reset by subtraction and no saturation, over all steps at once. With
    C_t = v_init + sum_{k<=t} w_k and N_t the spikes up to t, v_t = C_t - th N_t and a spike at t iff
    C_t > th (N_{t-1} + 1), i.e. floor((C_t - 1) / th) > N_{t-1}. Where no step's w exceeds th
    and v_init <= th (one spike per step is always enough), N_t = max(0, max_{k<=t}
    floor((C_k - 1) / th)): a cumulative sum and a cumulative max over time. Other neurons run
    the loop."""
    import torch

    steps = spikes.shape[0]
    if rows == list(range(len(w))) and len(w) == steps:
        wf = w
    else:
        wf = w.index_select(0, torch.tensor(rows, device=w.device))
    c = torch.cumsum(wf, 0, dtype=w.dtype)
    if v_init is not None:
        c += v_init
    k = torch.div(c - 1, th, rounding_mode="floor")
    k = torch.cummax(k, 0).values.clamp_(min=0)
    spikes[0] = k[0] > 0
    torch.gt(k[1:], k[:-1], out=spikes[1:])
    v = c[-1] - th * k[-1]
    del c, k
    bad = (wf > th).any(0)  # (B, n): neurons that may owe two spikes at once
    if v_init is not None:
        bad |= v_init > th
    if bool(bad.any()):
        wb = wf[:, bad]
        vb = torch.zeros_like(wb[0]) if v_init is None else v_init.expand_as(bad)[bad].clone()
        sb = torch.empty(wb.shape, dtype=torch.bool, device=w.device)
        for t in range(steps):
            vb += wb[t]
            torch.gt(vb, th, out=sb[t])
            vb.sub_(sb[t].view(torch.uint8), alpha=th)
        spikes[:, bad] = sb
        v[bad] = vb
    return spikes, v


def _input_series(prog: CpuProgram, payloads: np.ndarray) -> tuple[Tensor, list[int]]:
    """Payloads (B, steps, n) -> their distinct consecutive time slices (R, B, n) on the device
    and the row of each step."""
    import torch

    steps = payloads.shape[1]
    if steps > 1:
        change = np.flatnonzero((payloads[:, 1:] != payloads[:, :-1]).any(axis=(0, 2)))
        starts = np.concatenate([[0], change + 1])
        rows = np.zeros(steps, np.int64)
        rows[change + 1] = 1
        rows_l = np.cumsum(rows).tolist()
    else:
        starts, rows_l = np.zeros(1, np.int64), [0] * steps
    p = np.ascontiguousarray(payloads[:, starts].transpose(1, 0, 2))  # (R, B, n)
    return torch.from_numpy(p).to(prog.device), rows_l


def _run(prog: CpuProgram, payloads: np.ndarray, offset: int,
         keep: set[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    import torch

    run = _run_time_batched if prog.time_batched else _run_stepwise
    spikes, v = run(prog, payloads, offset, keep)
    shapes = {nr.layer.name: nr.hwc for nr in prog.layers}
    out = {}
    for k, s in spikes.items():  # copied out (the buffers are reused), (steps, B, n) -> (B, steps, n) bool
        o = torch.empty((s.shape[1], s.shape[0], s.shape[2]), dtype=torch.bool, device=s.device)
        out[k] = o.copy_(_c_order(s, shapes[k]).permute(1, 0, 2)).cpu().numpy()
    return out, _c_order(v.to(torch.int64), shapes[prog.net.readout]).cpu().numpy()


def _c_order(x: Tensor, hwc: tuple[int, int, int] | None) -> Tensor:
    """(..., n) values of a layer in its held order -> in C order."""
    if hwc is None:
        return x
    c, h, w = hwc
    lead = x.shape[:-1]
    return x.reshape(*lead, h, w, c).movedim(-1, -3).reshape(*lead, c * h * w)


def _run_time_batched(prog: CpuProgram, payloads: np.ndarray, offset: int,
                      keep: set[str]) -> tuple[dict[str, Tensor], Tensor]:
    """Feedforward: a layer's synaptic input for all steps from its sources' whole spike trains
    (one product), then the neuron scan over time."""
    net = prog.net
    batch, steps, _ = payloads.shape
    sources: dict[str, Tensor] = {}
    rows: dict[str, list[int]] = {}
    sources[net.input.name], rows[net.input.name] = _input_series(prog, payloads)
    uses: dict[str, int] = {}
    for p in net.projections:
        uses[p.src] = uses.get(p.src, 0) + 1
    # steps each layer is simulated for: all if recorded, else as long as a consumer needs it
    consumers: dict[str, list[str]] = {}
    for p in net.projections:
        consumers.setdefault(p.src, []).append(p.dst)
    need: dict[str, int] = {}
    for nr in reversed(prog.layers):
        name = nr.layer.name
        need[name] = steps if name in keep else max([need[c] - 1 for c in consumers.get(name, [])] + [1])
    recorded: dict[str, Tensor] = {}
    v_final: Tensor | None = None
    for nr in prog.layers:
        name = nr.layer.name
        inp = _layer_inputs(prog, nr, sources, rows, need[name], batch)
        for syn in nr.synapses:  # free source trains nobody else reads
            uses[syn.proj.src] -= 1
            if uses[syn.proj.src] == 0 and syn.proj.src not in keep:
                sources.pop(syn.proj.src, None)
        s, v = _scan(prog, nr, inp, need[name], batch, offset)
        del inp
        if uses.get(name):
            sources[name], rows[name] = s, list(range(need[name]))
        if name in keep:
            recorded[name] = s
        if name == net.readout:
            v_final = v
    assert v_final is not None  # the readout is a layer
    return recorded, v_final


def _run_stepwise(prog: CpuProgram, payloads: np.ndarray, offset: int,
                  keep: set[str]) -> tuple[dict[str, Tensor], Tensor]:
    """Any graph: all layers update synchronously from the previous step's spikes."""
    import torch

    net, dev = prog.net, prog.device
    batch, steps, _ = payloads.shape
    pay = torch.from_numpy(np.ascontiguousarray(payloads)).to(dev)
    spikes = {nr.layer.name: torch.zeros((steps, batch, nr.layer.size), dtype=torch.bool, device=dev)
              for nr in prog.layers}
    states: dict[str, State] = {}
    for t in range(steps):
        for nr in prog.layers:
            n = nr.layer.size
            a = torch.zeros((batch, n), dtype=nr.dtype, device=dev)
            if t > 0:
                for syn in nr.synapses:
                    src = pay[:, t - 1] if syn.proj.src == net.input.name else spikes[syn.proj.src][t - 1]
                    a += _acc(prog, syn, src.to(syn.dtype)).to(nr.dtype)
            s, st = _step(prog, nr, a, states.get(nr.layer.name), t, batch, offset)
            states[nr.layer.name] = st
            spikes[nr.layer.name][t] = s
    v_final = states[net.readout][1]
    return {k: s for k, s in spikes.items() if k in keep}, v_final


def _step(prog: CpuProgram, nr: Neurons, a: Tensor, state: State | None, t: int, batch: int,
          offset: int) -> tuple[Tensor, State]:
    """One step of one layer (stepwise run), state (u, v, ref) or None at the start."""
    import torch

    p = nr.layer.params
    n, dev = nr.layer.size, prog.device
    if state is None:
        z = torch.zeros((batch, n), dtype=nr.dtype, device=dev)
        state = (z, _v_start(nr, batch, dev), z.clone())
    if isinstance(p, StochasticParams):
        r = torch.from_numpy(uniform_ints(p.seed, np.arange(offset, offset + batch), t, n,
                                          p.vth << ACT_SHIFT)).to(dev)
        return ((a << ACT_SHIFT) + nr.bias) > r, state
    state, s = _lif_update(p, nr, state, a << ACT_SHIFT)
    return s, state
