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
multiplied once per distinct time slice (constant current: once) and indexed over time.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import numpy as np

from spikeforge import ir
from spikeforge.backends.base import Backend, RunResult
from spikeforge.errors import DataError, SpikeforgeError
from spikeforge.fixedpoint import ACT_SHIFT, DECAY_SHIFT, DECAY_UNITY, STATE_MAX
from spikeforge.network import Layer, Network, Projection
from spikeforge.neuron import exact_float_dtype, uniform_ints

#: Working-set bound per sub-batch: samples x steps x (largest layer) values.
WORK_VALUES = 2**22  # measured: sub-batches that stay in cache run the CNN fastest
DEVICES = ("cpu", "cuda")


def _torch():
    import torch

    return torch


class Synapse(NamedTuple):
    """A projection prepared for the device: ``weight`` (src, dst) dense or the conv kernel,
    in ``dtype`` (exact for these integers); a = floor(acc * scale), |a| <= bound."""

    proj: Projection
    weight: Any  # torch.Tensor
    dtype: Any  # torch.float32 | torch.float64
    scale: float  # 2**weight_exp
    bound: int  # max |a| over all inputs


class Neurons(NamedTuple):
    """A layer prepared for the device: ``kind`` 'if' | 'lif' | 'stochastic', integer state in
    ``dtype``; ``wrap`` False when |a << 6| < 2**23 (the 24-bit wrap of u cannot occur)."""

    layer: Layer
    kind: str
    dtype: Any  # torch.int32 | torch.int64
    bias: Any  # torch.Tensor (n,) in dtype
    wrap: bool
    synapses: tuple[Synapse, ...]
    v_init: Any = None  # torch.Tensor (n,) in dtype: v at the start of every sample; None: all 0


class CpuProgram(NamedTuple):
    net: Network
    order: list[str]  # layer names in topological order
    time_batched: bool
    device: str
    layers: tuple[Neurons, ...]
    conv_im2col: bool  # convolutions as unfold + matmul (exact on any device) instead of conv2d
    closed_form: bool  # IF with reset by subtraction over all steps at once (else the step loop)


class CpuBackend(Backend):
    """Options: ``device`` 'cpu' (default) or 'cuda'; ``threads`` (CPU intra-op threads, default
    torch's); ``time_batched`` (None: feedforward graphs); ``conv_im2col`` (None: on CUDA, whose
    conv2d may use TF32 or Winograd, which are not exact); ``closed_form`` (IF with reset by
    subtraction as a cumulative sum and max over time; None: on CUDA, where it saves launches)."""

    name = "cpu"

    def __init__(self, time_batched: bool | None = None, device: str = "cpu", threads: int | None = None,
                 conv_im2col: bool | None = None, closed_form: bool | None = None) -> None:
        if device not in DEVICES:
            raise SpikeforgeError(f"device: expected one of {', '.join(DEVICES)}, found '{device}'")
        self.time_batched, self.device, self.threads = time_batched, device, threads
        self.conv_im2col = (device == "cuda") if conv_im2col is None else conv_im2col
        self.closed_form = (device == "cuda") if closed_form is None else closed_form

    def compile(self, graph: ir.Graph, **options: Any) -> CpuProgram:
        torch = _torch()
        if self.device == "cuda":
            if not torch.cuda.is_available():
                raise SpikeforgeError("device: 'cuda' asked for, but torch finds no CUDA device")
            torch.backends.cuda.matmul.allow_tf32 = False  # TF32 products would not be exact
        if self.threads:
            torch.set_num_threads(self.threads)
        net = self.lower(graph)
        batched = net.feedforward if self.time_batched is None else (self.time_batched and net.feedforward)
        layers = tuple(_prepare_layer(net, l, self.device) for l in net.layers)
        return CpuProgram(net, [l.name for l in net.layers], batched, self.device, layers, self.conv_im2col,
                          self.closed_form)

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
        torch = _torch()
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
def _prepare_synapse(net: Network, proj: Projection, device: str) -> Synapse:
    torch = _torch()
    max_in = net.input.payload_max if proj.graded else 1
    w = np.asarray(proj.weight)
    fan_in = int(np.prod(w.shape[1:]))
    max_w = int(np.abs(w).max(initial=0))
    dt = torch.float32 if exact_float_dtype(fan_in, max_w, max_in) is np.float32 else torch.float64
    tw = torch.tensor(w if proj.conv is not None else w.T, dtype=dt, device=device).contiguous()
    # |a| <= floor(fan_in * max|w| * max input * 2**exp) (an upper bound, what dtypes are chosen by)
    acc = fan_in * max_w * max_in
    bound = acc << proj.weight_exp if proj.weight_exp >= 0 else -((-acc) >> -proj.weight_exp)
    return Synapse(proj, tw, dt, 2.0 ** proj.weight_exp, abs(bound))


def _prepare_layer(net: Network, layer: Layer, device: str) -> Neurons:
    torch = _torch()
    syn = tuple(_prepare_synapse(net, p, device) for p in net.incoming(layer.name))
    n = layer.node
    bias = np.asarray(layer.params.bias, np.int64)
    a_max = sum(s.bound for s in syn)
    if layer.stochastic:
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
    v0 = layer.v_init
    return Neurons(layer, kind, dt, torch.tensor(bias, dtype=dt, device=device), x >= STATE_MAX, syn,
                   torch.tensor(v0, dtype=dt, device=device) if v0.any() else None)


def _v_start(nr: Neurons, batch: int, device: str):
    """A fresh (batch, n) membrane potential at the start of the samples: v_init (or 0)."""
    torch = _torch()
    v = torch.zeros((batch, nr.layer.size), dtype=nr.dtype, device=device)
    return v if nr.v_init is None else v.add_(nr.v_init)


# -- arithmetic on tensors ----------------------------------------------------------------------
def _acc(prog: CpuProgram, syn: Synapse, s):
    """floor(W s 2**exp) for s (N, src) in syn.dtype -> (N, dst) float, exact."""
    import torch.nn.functional as F

    g = syn.proj.conv
    if g is None:
        y = s @ syn.weight
    else:
        x = s.reshape(len(s), *g.input_shape)
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
        y = y.reshape(len(s), -1)
    return y.mul_(syn.scale).floor_() if syn.scale != 1.0 else y


def _conv_im2col(x, w, g: ir.ConvGeometry):
    """conv2d as unfold + (grouped) matmul: plain dot products, exact for these integers."""
    torch = _torch()
    import torch.nn.functional as F

    n = x.shape[0]
    cols = F.unfold(x, g.kernel, dilation=g.dilation, stride=g.stride)  # (N, C_in*kh*kw, L)
    k = cols.shape[1] // g.groups
    cols = cols.reshape(n, g.groups, k, -1)
    wg = w.reshape(g.groups, w.shape[0] // g.groups, k)
    return torch.einsum("gok,ngkl->ngol", wg, cols).reshape(n, w.shape[0], -1)


def _wrap24(x):
    """Lava's 24-bit wrap of u (spikeforge.neuron.wrap24), on a tensor."""
    torch = _torch()
    w = torch.where(x > STATE_MAX, x - 2 * STATE_MAX, x)
    return torch.where(w <= -STATE_MAX, x + 2 * STATE_MAX, w)


def _decay(x, d: int):
    torch = _torch()
    p = x * (DECAY_UNITY - d)
    return torch.sign(p) * (torch.abs(p) >> DECAY_SHIFT)


class _Inputs(NamedTuple):
    """A layer's synaptic input a over time, (R, B, n) values and for each step the row of it
    (inputs constant over stretches of time are computed once per stretch)."""

    values: Any
    rows: list[int]


def _layer_inputs(prog: CpuProgram, nr: Neurons, sources: dict[str, Any], src_rows: dict[str, list[int]],
                  steps: int, batch: int) -> _Inputs:
    """a[t] = sum over projections of floor(W s[t - 1] 2**exp), a[0] = 0, in nr.dtype."""
    torch = _torch()
    n = nr.layer.size
    if not nr.synapses:
        return _Inputs(torch.zeros((1, batch, n), dtype=nr.dtype, device=prog.device), [0] * steps)
    # one row structure for all projections: the shared one if every source has it, else per step
    structs = {tuple(src_rows[s.proj.src][: steps - 1]) for s in nr.synapses}
    shared = len(structs) == 1
    rows_prev = list(next(iter(structs))) if shared else list(range(steps - 1))
    uniq = sorted(set(rows_prev))
    values = torch.empty((len(uniq) + 1, batch, n), dtype=nr.dtype, device=prog.device)
    values[0] = 0
    for i, syn in enumerate(nr.synapses):
        src = sources[syn.proj.src]  # (R_src, B, n_src)
        pick = uniq if shared else src_rows[syn.proj.src][: steps - 1]
        sel = src[: len(pick)] if pick == list(range(len(pick))) else src[pick]
        a = _acc(prog, syn, sel.reshape(-1, sel.shape[-1]).to(syn.dtype)).reshape(len(sel), batch, n)
        if i == 0:
            values[1:].copy_(a)  # exact integers in float: the cast is exact
        else:
            values[1:] += a.to(nr.dtype)
    remap = {r: i + 1 for i, r in enumerate(uniq)}
    return _Inputs(values, [0] + [remap[r] for r in rows_prev])


def _scan(prog: CpuProgram, nr: Neurons, inp: _Inputs, steps: int, batch: int, offset: int):
    """The neuron layer over all steps given its inputs: spikes (steps, B, n) bool and final v."""
    torch = _torch()
    p = nr.layer.params
    n, dev, dt = nr.layer.size, prog.device, nr.dtype
    spikes = torch.empty((steps, batch, n), dtype=torch.bool, device=dev)
    if nr.kind == "stochastic":
        z = (inp.values << ACT_SHIFT) + nr.bias
        samples = np.arange(offset, offset + batch)
        for t in range(steps):
            r = torch.from_numpy(uniform_ints(p.seed, samples, t, n, p.vth << ACT_SHIFT)).to(dev)
            torch.gt(z[inp.rows[t]], r, out=spikes[t])
        return spikes, torch.zeros((batch, n), dtype=torch.int64, device=dev)
    th = p.vth << ACT_SHIFT
    lo, hi = -STATE_MAX + 1, STATE_MAX - 1
    if nr.kind == "if":  # u = wrap24(a << 6) (decay to 0), v = sat24(v + u + bias)
        a_max = max(abs(int(m)) for m in inp.values.aminmax()) << ACT_SHIFT
        w = inp.values.mul_(1 << ACT_SHIFT)  # ours: in place
        if nr.wrap and a_max >= STATE_MAX:  # the static bound allows a wrap, and these inputs reach it
            w = _wrap24(w)
        w += nr.bias
        # |v| grows by at most max|w| per step (a reset moves v toward 0 or to v_reset, and a
        # subtraction only happens above vth << 6 > 0, leaving v > 0): below 2**23 - 1, no saturation
        v0 = 0 if nr.v_init is None else int(nr.v_init.abs().max())
        reach = steps * (a_max + int(nr.bias.abs().max())) + abs(p.v_reset) + v0  # |wrap24(x)| <= |x|
        saturates = reach >= hi
        if p.reset == "subtract" and not saturates and prog.closed_form:
            return _if_subtract_closed(w, inp.rows, th, spikes, nr.v_init)
        v = _v_start(nr, batch, dev)
        tht = torch.tensor(th, dtype=dt, device=dev)  # a same-typed 0-d threshold compares faster
        for t in range(steps):
            v += w[inp.rows[t]]
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
    u = torch.zeros((batch, n), dtype=dt, device=dev)
    state = (u, _v_start(nr, batch, dev), torch.zeros_like(u))
    a6 = inp.values << ACT_SHIFT
    for t in range(steps):
        state, spikes[t] = _lif_update(p, nr, state, a6[inp.rows[t]])
    return spikes, state[1]


def _lif_update(p, nr: Neurons, state, a6):
    """spikeforge.neuron.lif_step on tensors: state (u, v, ref), a6 = a << 6."""
    torch = _torch()
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


def _reset(p, v, s, dt):
    if p.reset == "zero":
        return v.masked_fill(s, 0)
    if p.reset == "value":
        return v.masked_fill(s, p.v_reset)
    return v - s.to(dt) * (p.vth << ACT_SHIFT)


def _if_subtract_closed(w, rows: list[int], th: int, spikes, v_init=None):
    """IF with reset by subtraction and no saturation, over all steps at once. With
    C_t = v_init + sum_{k<=t} w_k and N_t the spikes up to t, v_t = C_t - th N_t and a spike at t iff
    C_t > th (N_{t-1} + 1), i.e. floor((C_t - 1) / th) > N_{t-1}. Where no step's w exceeds th
    and v_init <= th (one spike per step is always enough), N_t = max(0, max_{k<=t}
    floor((C_k - 1) / th)): a cumulative sum and a cumulative max over time. Other neurons run
    the loop."""
    torch = _torch()
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


def _input_series(prog: CpuProgram, payloads: np.ndarray) -> tuple[Any, list[int]]:
    """Payloads (B, steps, n) -> their distinct consecutive time slices (R, B, n) on the device
    and the row of each step."""
    torch = _torch()
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


def _run(prog: CpuProgram, payloads: np.ndarray, offset: int, keep: set[str]) -> tuple[dict, np.ndarray]:
    run = _run_time_batched if prog.time_batched else _run_stepwise
    spikes, v = run(prog, payloads, offset, keep)
    out = {k: s.permute(1, 0, 2).contiguous().cpu().numpy() for k, s in spikes.items()}
    return out, v.to(_torch().int64).cpu().numpy()


def _run_time_batched(prog: CpuProgram, payloads: np.ndarray, offset: int, keep: set[str]):
    """Feedforward: a layer's synaptic input for all steps from its sources' whole spike trains
    (one product), then the neuron scan over time."""
    net = prog.net
    batch, steps, _ = payloads.shape
    sources, rows = {}, {}
    sources[net.input.name], rows[net.input.name] = _input_series(prog, payloads)
    uses = {}
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
    recorded, v_final = {}, None
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
    return recorded, v_final


def _run_stepwise(prog: CpuProgram, payloads: np.ndarray, offset: int, keep: set[str]):
    """Any graph: all layers update synchronously from the previous step's spikes."""
    torch = _torch()
    net, dev = prog.net, prog.device
    batch, steps, _ = payloads.shape
    pay = torch.from_numpy(np.ascontiguousarray(payloads)).to(dev)
    spikes = {nr.layer.name: torch.zeros((steps, batch, nr.layer.size), dtype=torch.bool, device=dev)
              for nr in prog.layers}
    v_final = None
    states = {}
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


def _step(prog: CpuProgram, nr: Neurons, a, state, t: int, batch: int, offset: int):
    """One step of one layer (stepwise run), state (u, v, ref) or None at the start."""
    torch = _torch()
    p = nr.layer.params
    n, dev = nr.layer.size, prog.device
    if state is None:
        z = torch.zeros((batch, n), dtype=nr.dtype, device=dev)
        state = (z, _v_start(nr, batch, dev), z.clone())
    if nr.kind == "stochastic":
        r = torch.from_numpy(uniform_ints(p.seed, np.arange(offset, offset + batch), t, n,
                                          p.vth << ACT_SHIFT)).to(dev)
        return ((a << ACT_SHIFT) + nr.bias) > r, state
    state, s = _lif_update(p, nr, state, a << ACT_SHIFT)
    return s, state
