"""The brian2 backend: the independent reference, spikeforge's integer semantics written in
Brian2's own language.

Every layer is a ``NeuronGroup`` of int64 variables (one accumulator ``acc_k`` per incoming
projection, and the layer's state); every projection is a ``Synapses`` object whose
``on_pre`` adds ``w`` (or ``w * p_pre`` for the graded input) to its accumulator; the
neuron update is a ``run_regularly`` block at ``when='start'`` in integer arithmetic
(rounding written with ``//`` on integers, which Brian2 renders as Python's floor division
on both the numpy and the cython target; no ``sign``/``abs``, which the cython target lacks
for integers: signs are written ``int(x > 0)``); threshold and reset are Brian2's own. The
per-layer constants (decays, threshold, v_rest, v_reset, leak, refractory period, shifts)
are shared integer variables of the group. No numpy code of ours computes the dynamics:
this file only builds the Brian2 objects, computes the stochastic layers' random draws
(their input) and reads the monitors back.

``FixedLIF`` (spikeforge.neuron.lif_step): state ``u``, ``v`` and, with a refractory
period, ``ref`` (steps left) and ``held`` (1 on a refractory step: v keeps its old value,
the threshold ``v > vth and held == 0`` cannot fire); the subtractive leak and v_rest are
in the update; the reset (``v = 0``, ``v = vreset`` or ``v -= vth``, and ``ref = refr``) is
Brian2's. ``FixedStochastic``: memoryless, ``z = a * 64 + bias`` at ``start``, threshold
``z > r`` where ``r`` is this step's draw, read from a ``TimedArray`` that holds
spikeforge.neuron.uniform_ints(seed, sample, step, neuron) for every sample and step of the
run (the same counter-based stream the other backends draw).

Order within one time step (Brian2's schedule ``start, groups, thresholds, synapses,
resets, end``) gives spikeforge's one step of synaptic delay: at ``start`` a layer turns
the accumulators filled by the previous step's spikes into ``a``, zeroes them and updates
its state; at ``thresholds`` it spikes; at ``synapses`` the spikes of this step fill
the accumulators for the next; at ``resets`` ``v`` is reset. The input is a group whose
integer payload ``p`` is read from a ``TimedArray`` at ``start`` and which "spikes" where
``p > 0``.

Many samples run either as copies of the network (``mode='batch'``, the default: groups of
``copies * n`` neurons with block-diagonal synapses, one run of ``T + depth`` steps per
chunk of samples; the draws of copy c in the chunk starting at sample s are those of sample
s + c) or one after the other in one long run (``mode='concat'``: the samples' payloads and
draws concatenated in time, and ``u``, ``v``, ``ref`` and the accumulators zeroed at the
first step of every window of ``T + depth`` steps, using ``t_in_timesteps``).

Brian2 is imported lazily, inside the functions, never at module import.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from spikeforge import interrupts, ir, progress
from spikeforge.fixedpoint import ACT_SHIFT, DECAY_UNITY, STATE_MAX
from spikeforge.backends.base import Backend, RunResult
from spikeforge.errors import BackendUnavailable, DataError, SpikeforgeError, UnsupportedError
from spikeforge.network import Network
from spikeforge.neuron import uniform_ints

TARGETS = ("numpy", "cython")
MODES = ("batch", "concat")

#: Default bound on the synapses built at once in batch mode (copies * nonzero weights).
MAX_SYNAPSES = 2_000_000

_INT = np.int64
# 24-bit state: u wraps and v saturates around 2**23 (spikeforge.neuron, Lava 0.10).
_HALF = STATE_MAX
_FULL = 2 * STATE_MAX


@dataclass
class Brian2Program:
    net: Network
    target: str
    mode: str
    max_synapses: int
    nnz: dict[str, int]  # projection name -> nonzero synapses
    coo: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # projection -> (pre, post, w)


class Brian2Backend(Backend):
    """Brian2 reference backend.

    ``target``: Brian2 code generation target, ``'numpy'`` (default: no compiler needed) or
    ``'cython'`` (fast per step, but every Brian2 object is its own extension module: a cold
    compile takes about 30 s for the smallest network here, minutes for larger ones).
    ``mode``: ``'batch'`` (samples as copies of the network) or ``'concat'`` (one long
    run with a reset at every sample window). ``max_synapses`` bounds the size of one
    batch of copies.
    """

    name = "brian2"

    def __init__(self, target: str = "numpy", mode: str = "batch",
                 max_synapses: int = MAX_SYNAPSES) -> None:
        if target not in TARGETS:
            raise SpikeforgeError(f"brian2 target: expected one of {', '.join(TARGETS)}, found '{target}'")
        if mode not in MODES:
            raise SpikeforgeError(f"brian2 mode: expected one of {', '.join(MODES)}, found '{mode}'")
        if int(max_synapses) < 1:
            raise SpikeforgeError(f"brian2 max_synapses: expected >= 1, found {max_synapses}")
        self.target = target
        self.mode = mode
        self.max_synapses = int(max_synapses)

    # -- compile ---------------------------------------------------------------------------
    def compile(self, graph: ir.Graph, **options: Any) -> Brian2Program:
        net = self.lower(graph)
        _import_brian2()
        if self.target == "cython":
            with _brian2_quiet():
                from brian2.codegen.runtime.cython_rt import CythonCodeObject
                available = CythonCodeObject.is_available()
            if not available:
                raise BackendUnavailable(
                    "backend 'brian2': target 'cython' needs Cython and a C++ compiler; "
                    "use Brian2Backend(target='numpy')"
                )
        for layer in net.layers:
            node = layer.node
            if not isinstance(node, (ir.FixedLIF, ir.FixedStochastic)):  # pragma: no cover - lowering
                raise UnsupportedError(f"{node.where()}: the brian2 backend runs FixedLIF and "
                                       f"FixedStochastic layers only")
            if isinstance(node, ir.FixedLIF) and node.reset not in ir.FIXED_RESETS:  # pragma: no cover
                raise UnsupportedError(f"{node.where()}: reset '{node.reset}' is not supported")
        # explicit connectivity: a dense matrix's nonzeros or a convolution's sparse synapses
        coo = {proj.name: proj.coo() for proj in net.projections}
        nnz = {name: int(len(c[0])) for name, c in coo.items()}
        return Brian2Program(net, self.target, self.mode, self.max_synapses, nnz, coo)

    # -- run -------------------------------------------------------------------------------
    def run(self, program: Brian2Program, payloads: np.ndarray, sample_offset: int = 0) -> RunResult:
        net = program.net
        payloads = _check_payloads(net, payloads)
        batch, steps, _ = payloads.shape
        spikes = {l.name: np.zeros((batch, steps, l.size), bool) for l in net.layers}
        ro = net.layer(net.readout)
        v_final = np.zeros((batch, ro.size), _INT)
        if batch and steps:
            if program.mode == "batch":
                _run_batched(program, payloads, spikes, v_final, sample_offset)
            else:
                _run_concat(program, payloads, spikes, v_final, sample_offset)
        return RunResult(spikes, v_final, net.readout, ro.node.vth_scaled)


def _import_brian2():
    """Import Brian2 and undo its Ctrl-C handler: Brian2 turns SIGINT during a run into
    ``stop()``, a run that returns early, which a verification must never report as a
    result; here SIGINT stays the caller's (KeyboardInterrupt, or the CLI's handler)."""
    try:
        with _brian2_quiet():
            import brian2
    except ImportError as exc:  # pragma: no cover - brian2 is a dependency
        raise BackendUnavailable(f"backend 'brian2': cannot import brian2 ({exc})") from None
    brian2.prefs.core.stop_on_keyboard_interrupt = False
    handler = signal.getsignal(signal.SIGINT)
    if (isinstance(handler, getattr(brian2, "_InterruptHandler", ()))
            and threading.current_thread() is threading.main_thread()):
        signal.signal(signal.SIGINT, handler.previous_handler)
    return brian2


@contextlib.contextmanager
def _brian2_quiet() -> Iterator[None]:
    """Silence Brian2's pyparsing deprecation warnings while it parses our code."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pyparsing.*")
        warnings.filterwarnings("ignore", message=r".*pyparsing.*", category=DeprecationWarning)
        try:
            from pyparsing.warnings import PyparsingDeprecationWarning
        except ImportError:
            pass
        else:
            warnings.filterwarnings("ignore", category=PyparsingDeprecationWarning)
        yield


def _check_payloads(net: Network, payloads: np.ndarray) -> np.ndarray:
    p = np.asarray(payloads)
    if p.ndim != 3 or p.shape[2] != net.input.size:
        raise DataError(f"payloads: expected shape (batch, steps, {net.input.size}), found {p.shape}")
    if p.size and not np.issubdtype(p.dtype, np.integer):
        if not np.array_equal(p, np.rint(p)):
            raise DataError(f"payloads: expected integers, found dtype {p.dtype} with fractions")
    if p.size and (p.min() < 0 or p.max() > net.input.payload_max):
        raise DataError(
            f"payloads: expected integers in [0, {net.input.payload_max}], found [{p.min()}, {p.max()}]"
        )
    return p.astype(_INT)


# -- the Brian2 model ----------------------------------------------------------------------
def _input_equations(n_in: int, window: bool) -> list[str]:
    lines = []
    for k in range(n_in):
        lines += [f"acc_{k} : integer",
                  f"mul_{k} : integer (constant, shared)",  # 2**max(exp, 0)
                  f"div_{k} : integer (constant, shared)"]  # 2**max(-exp, 0)
    if window:
        lines.append("window : integer (constant, shared)")
    return lines


def _lif_equations(node: ir.FixedLIF, n_in: int, window: bool) -> str:
    lines = ["u : integer", "v : integer", "bias : integer (constant)",
             "vinit : integer (constant)",  # v at the start of every sample
             "fu : integer (constant, shared)",  # 4096 - du - 1
             "fv : integer (constant, shared)",  # 4096 - dv
             "vth : integer (constant, shared)",  # vth << 6
             "vrest : integer (constant, shared)"]
    if node.reset == "value":
        lines.append("vreset : integer (constant, shared)")
    if node.leak:
        lines.append("leak : integer (constant, shared)")
    if node.refractory:
        lines += ["ref : integer",  # refractory steps left
                  "held : integer",  # 1 on a refractory step: v held, no spike
                  "refr : integer (constant, shared)"]
    return "\n".join(lines + _input_equations(n_in, window))


def _stochastic_equations(n_in: int, window: bool) -> str:
    lines = ["z : integer",  # (a << 6) + bias
             "r : integer",  # this step's draw in [0, vth << 6)
             "bias : integer (constant)"]
    return "\n".join(lines + _input_equations(n_in, window))


def _trunc4096(x: str) -> str:
    """trunc(x / 4096) toward zero, in integers only (Lava: sign(x) * (|x| >> 12))."""
    return f"(int({x} >= 0) * ({x} // {DECAY_UNITY}) - int({x} < 0) * ((-{x}) // {DECAY_UNITY}))"


def _input_code(n_in: int, window: bool) -> list[str]:
    """``a`` is the sum over incoming projections of floor(acc_k * 2**exp_k): each
    projection's shift applies to its own sum. With ``window`` (concat mode) the input is
    dropped at the first step of every sample window (``keep`` = 0)."""
    terms = " + ".join(f"(acc_{k} * mul_{k}) // div_{k}" for k in range(n_in))
    code = []
    if window:
        code.append("keep = 1 - int(t_in_timesteps % window == 0)")
    code.append(f"a_in = {'keep * ' if window else ''}({terms})")
    code += [f"acc_{k} = 0" for k in range(n_in)]
    return code


def _lif_update(node: ir.FixedLIF, n_in: int, window: bool) -> str:
    """The neuron update, run at ``when='start'`` (spikeforge.neuron.lif_step, integers only;
    no sign()/abs(), which the cython target does not provide for integers).

    With ``window`` (concat mode) the state (u, ref) is zero and v is ``vinit`` at the first
    step of every sample window (otherwise v starts at vinit, the stored initial state).
    Threshold (``v > vth``, not while ``held``) and reset are Brian2's.
    """
    keep = "keep * " if window else ""
    code = _input_code(n_in, window)
    code += [
        f"p_u = {keep}u * fu",
        f"x_u = {_trunc4096('p_u')} + a_in * {1 << ACT_SHIFT}",
        # wrap24: a value > 2**23 loses 2**24; then a value <= -2**23 gains 2**24 (from x)
        f"w_u = x_u - {_FULL} * int(x_u > {_HALF})",
        f"u = w_u + int(w_u <= -{_HALF}) * (x_u + {_FULL} - w_u)",
        "v_old = keep * v + (1 - keep) * vinit" if window else "v_old = v",
        "p_v = (v_old - vrest) * fv",
        f"d_v = {_trunc4096('p_v')}",
    ]
    if node.leak:
        # linear leak: |d| shrinks by leak, stopping at 0 (sign(d) * max(|d| - leak, 0))
        code.append("d_v = int(d_v > leak) * (d_v - leak) + int(d_v < -leak) * (d_v + leak)")
    code += [
        "x_v = vrest + d_v + u + bias",
        f"s_v = x_v - int(x_v > {_HALF - 1}) * (x_v - {_HALF - 1}) - int(x_v < -{_HALF - 1}) * (x_v + {_HALF - 1})",
    ]
    if node.refractory:
        code += [
            f"ref_old = {keep}ref",
            "held = int(ref_old > 0)",
            "v = s_v + held * (v_old - s_v)",
            "ref = ref_old - held",
        ]
    else:
        code.append("v = s_v")
    return "\n".join(code)


def _lif_threshold_reset(node: ir.FixedLIF) -> tuple[str, str]:
    threshold = "v > vth and held == 0" if node.refractory else "v > vth"
    reset = {"zero": "v = 0", "value": "v = vreset", "subtract": "v -= vth"}[node.reset]
    if node.refractory:
        reset += "\nref = refr"
    return threshold, reset


def _stochastic_update(n_in: int, window: bool, draws: str) -> str:
    """Memoryless: z = (a << 6) + bias, and this step's draw r (computed outside, by
    spikeforge.neuron.uniform_ints) read from the TimedArray ``draws``; threshold z > r."""
    code = _input_code(n_in, window)
    code += [f"z = a_in * {1 << ACT_SHIFT} + bias", f"r = int({draws}(t, i))"]
    return "\n".join(code)


def _draws_name(li: int) -> str:
    return f"sf_draws{li}"


class _Model:
    """One Brian2 Network holding ``copies`` independent copies of the network; with
    ``window`` (concat mode) the state is zeroed at the first step of every window."""

    def __init__(self, program: Brian2Program, copies: int, window: int | None) -> None:
        with _brian2_quiet():
            self._build(program, copies, window)

    def _build(self, program: Brian2Program, copies: int, window: int | None) -> None:
        b2 = _import_brian2()
        from brian2 import ms
        from brian2.devices.device import RuntimeDevice, get_device

        if not isinstance(get_device(), RuntimeDevice):
            raise BackendUnavailable(
                f"backend 'brian2': needs Brian2's runtime device, found "
                f"'{type(get_device()).__name__}' (a set_device() call elsewhere in this process)"
            )
        net = program.net
        if program.target == "numpy":
            from brian2.codegen.runtime.numpy_rt import NumpyCodeObject as codeobj
        else:
            from brian2.codegen.runtime.cython_rt import CythonCodeObject as codeobj
        self.net, self.copies, self.window = net, copies, window
        self.dt = 1 * ms
        self.clock = b2.Clock(dt=self.dt, name="sf_clock")
        common = dict(clock=self.clock, codeobj_class=codeobj)
        self.payload = b2.TimedArray(np.zeros((1, copies * net.input.size)), dt=self.dt, name="sf_payload")
        # Input: integer payload p per step; "spikes" where p > 0 (graded spike p).
        self.inp = b2.NeuronGroup(copies * net.input.size, "p : integer", threshold="p > 0", reset="",
                                  namespace={"sf_payload": self.payload}, dtype={"p": _INT},
                                  name="sf_input", **common)
        self.inp.run_regularly("p = int(sf_payload(t, i))", when="start", name="sf_input_read",
                               codeobj_class=codeobj)
        groups = {net.input.name: self.inp}
        self.layers = {}
        self.draws: dict[str, Any] = {}  # stochastic layer name -> its TimedArray of draws
        win = window is not None
        for li, layer in enumerate(net.layers):
            node, incoming = layer.node, net.incoming(layer.name)
            namespace: dict[str, Any] = {}
            if layer.stochastic:
                draws = _draws_name(li)
                namespace[draws] = b2.TimedArray(np.zeros((1, copies * layer.size)), dt=self.dt, name=draws)
                self.draws[layer.name] = namespace[draws]
                eqs = _stochastic_equations(len(incoming), win)
                threshold, reset = "z > r", ""
                update = _stochastic_update(len(incoming), win, draws)
            else:
                assert isinstance(node, ir.FixedLIF)
                eqs = _lif_equations(node, len(incoming), win)
                threshold, reset = _lif_threshold_reset(node)
                update = _lif_update(node, len(incoming), win)
            names = [line.split(":")[0].strip() for line in eqs.splitlines()]
            g = b2.NeuronGroup(copies * layer.size, eqs, threshold=threshold, reset=reset,
                               namespace=namespace, dtype={name: _INT for name in names},
                               name=f"sf_layer{li}", **common)
            g.bias = np.tile(np.asarray(node.bias, _INT), copies)
            if isinstance(node, ir.FixedLIF):
                g.vinit = np.tile(np.asarray(node.v_init, _INT), copies)
                g.v = np.tile(np.asarray(node.v_init, _INT), copies)
                g.fu = DECAY_UNITY - node.du - 1
                g.fv = DECAY_UNITY - node.dv
                g.vth = node.vth_scaled
                g.vrest = node.v_rest
                if node.reset == "value":
                    g.vreset = node.v_reset
                if node.leak:
                    g.leak = node.leak
                if node.refractory:
                    g.refr = node.refractory
            for k, proj in enumerate(incoming):
                setattr(g, f"mul_{k}", 2 ** max(proj.weight_exp, 0))
                setattr(g, f"div_{k}", 2 ** max(-proj.weight_exp, 0))
            if win:
                g.window = window
            g.run_regularly(update, when="start", name=f"sf_layer{li}_update", codeobj_class=codeobj)
            groups[layer.name] = g
            self.layers[layer.name] = g
        self.synapses = []
        for pi, proj in enumerate(net.projections):
            if not program.nnz[proj.name]:
                continue  # all weights zero: acc_k stays 0 (Brian2's connect() rejects empty lists)
            k = net.incoming(proj.dst).index(proj)
            on_pre = f"acc_{k}_post += w * p_pre" if proj.graded else f"acc_{k}_post += w"
            s = b2.Synapses(groups[proj.src], groups[proj.dst], "w : integer (constant)",
                            on_pre=on_pre, namespace={}, dtype={"w": _INT},
                            name=f"sf_proj{pi}", **common)
            pre, post, w = _block_diagonal(program.coo[proj.name], _size(net, proj.src),
                                           _size(net, proj.dst), copies)
            s.connect(i=pre, j=post)
            s.w = w
            self.synapses.append(s)
        self.monitors = {name: b2.SpikeMonitor(g, record=True, name=f"sf_spikes{li}",
                                               codeobj_class=codeobj)
                         for li, (name, g) in enumerate(self.layers.items())}
        objs = [self.inp, *self.layers.values(), *self.synapses, *self.monitors.values()]
        self.vmon = None
        if window is not None:
            self.vmon = b2.StateMonitor(self.layers[net.readout], "v", record=True, when="end",
                                        name="sf_vfinal", codeobj_class=codeobj)
            objs.append(self.vmon)
        self.network = b2.Network(*objs, name="sf_network")
        self.network.store("init")

    def run(self, values: np.ndarray, draws: dict[str, np.ndarray] | None = None,
            report: Any = None) -> None:
        """Run from the initial state with payload rows ``values`` (steps, copies * n_in)
        and, per stochastic layer, the draws ``draws[name]`` (steps, copies * n);
        ``report(fraction done)`` is called about once a second."""
        draws = {} if draws is None else draws
        missing = [l.name for l in self.net.layers if l.stochastic and l.name not in draws]
        if missing:  # pragma: no cover - the backend always passes them
            raise SpikeforgeError(f"brian2 model: no draws given for stochastic layers {missing}")
        b2 = _import_brian2()
        with _brian2_quiet():
            self.network.restore("init")
            self.payload = b2.TimedArray(values.astype(np.float64), dt=self.dt, name="sf_payload")
            self.inp.namespace["sf_payload"] = self.payload
            for li, layer in enumerate(self.net.layers):
                if layer.stochastic:
                    name = _draws_name(li)
                    ta = b2.TimedArray(draws[layer.name].astype(np.float64), dt=self.dt, name=name)
                    self.draws[layer.name] = self.layers[layer.name].namespace[name] = ta
            callback = (None if report is None or not progress.enabled()
                        else (lambda elapsed, done, start, length: report(float(done))))
            self.network.run(values.shape[0] * self.dt, namespace={}, report=callback,
                             report_period=1 * b2.second)
        done = int(round(float(self.network.t / self.dt)))
        if done != values.shape[0]:  # stopped early (brian2.stop(), its Ctrl-C handler)
            raise KeyboardInterrupt(f"brian2: the run stopped at step {done} of {values.shape[0]}")

    def spikes(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(neuron index, step) of every spike of layer ``name``."""
        mon = self.monitors[name]
        idx = np.asarray(mon.i[:], _INT)
        step = np.rint(np.asarray(mon.t_[:]) / float(self.dt)).astype(_INT)
        return idx, step


def _size(net: Network, name: str) -> int:
    return net.input.size if name == net.input.name else net.layer(name).size


def _block_diagonal(coo: tuple[np.ndarray, np.ndarray, np.ndarray], n_src: int, n_dst: int,
                    copies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synapse lists (pre, post, w) of ``copies`` independent copies of a projection."""
    cols, rows, w = coo
    w = np.asarray(w, _INT)
    off = np.arange(copies, dtype=_INT)[:, None]
    pre = (off * n_src + cols[None, :]).ravel()
    post = (off * n_dst + rows[None, :]).ravel()
    return pre, post, np.tile(w, copies)


def _batch_size(program: Brian2Program, batch: int) -> int:
    per_copy = max(1, sum(program.nnz.values()))
    return max(1, min(batch, program.max_synapses // per_copy))


def _draws(layer, samples: np.ndarray, steps: int) -> np.ndarray:
    """A stochastic layer's draws r, int64 (len(samples), steps, n): step t of sample s is
    spikeforge.neuron.uniform_ints(seed, s, t), the counter-based stream every backend uses
    (s is the index of the sample in the run's batch, t the step in its window)."""
    p = layer.params
    out = np.empty((len(samples), steps, layer.size), _INT)
    for t in range(steps):
        out[:, t] = uniform_ints(p.seed, samples, t, layer.size, p.vth << ACT_SHIFT)
    return out


def _run_batched(program: Brian2Program, payloads: np.ndarray, spikes: dict, v_final: np.ndarray,
                 offset: int = 0) -> None:
    net = program.net
    batch, steps, n_in = payloads.shape
    copies = _batch_size(program, batch)
    model = _Model(program, copies, None)
    for start in range(0, batch, copies):
        chunk = payloads[start:start + copies]
        used = chunk.shape[0]
        values = np.zeros((steps, copies, n_in), _INT)  # padding copies get no input
        values[:, :used] = chunk.transpose(1, 0, 2)
        draws = {layer.name: _draws(layer, np.arange(offset + start, offset + start + copies), steps)
                 .transpose(1, 0, 2).reshape(steps, copies * layer.size)
                 for layer in net.layers if layer.stochastic}  # padding copies: unused draws
        model.run(values.reshape(steps, copies * n_in), draws,
                  report=lambda f, s=start, n=used: progress.within(s + int(f * n)))
        progress.within(start + used)
        interrupts.check()
        for layer in net.layers:
            idx, step = model.spikes(layer.name)
            b, j = np.divmod(idx, layer.size)
            keep = b < used
            spikes[layer.name][start + b[keep], step[keep], j[keep]] = True
        ro = model.layers[net.readout]
        v_final[start:start + used] = np.asarray(ro.v[:], _INT).reshape(copies, -1)[:used]


def _run_concat(program: Brian2Program, payloads: np.ndarray, spikes: dict, v_final: np.ndarray,
                offset: int = 0) -> None:
    net = program.net
    batch, steps, n_in = payloads.shape
    model = _Model(program, 1, steps)
    draws = {layer.name: _draws(layer, np.arange(offset, offset + batch), steps).reshape(batch * steps, layer.size)
             for layer in net.layers if layer.stochastic}
    model.run(payloads.reshape(batch * steps, n_in), draws,
              report=lambda f: progress.within(int(f * batch)))
    for layer in net.layers:
        idx, step = model.spikes(layer.name)
        b, k = np.divmod(step, steps)
        spikes[layer.name][b, k, idx] = True
    assert model.vmon is not None
    v = np.asarray(model.vmon.v[:], _INT)  # (neurons, batch * steps), after the step's reset
    v_final[:] = v[:, steps - 1::steps].T
