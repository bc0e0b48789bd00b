"""The lava backend: Lava 0.10's bit-accurate Loihi 2 simulation (``Loihi2SimCfg``, tag
``fixed_pt``), spike for spike equal to the cpu backend.

Lowering (one Lava Process per IR layer and projection):

* Projection (FixedAffine) -> ``lava.proc.dense.process.Dense`` with weights ``2 w`` (9-bit
  signed, in [-256, 254]), ``weight_exp - 1``, ``num_weight_bits = 8`` and sign mode forced
  to MIXED. Lava's Dense clips to 8 bits and drops ``8 - num_weight_bits + is_mixed`` low
  bits, so mixed-sign ``w`` loses its lowest bit and an all-negative matrix holding -128 is
  clipped to -255/2; ``2 w`` with MIXED is exact for every matrix:
  ``a = floor(sum_j 2 w_ij s_j 2**(weight_exp - 1))``, sent one step later.
* Projection (FixedConv2d) -> :class:`~spikeforge.backends.lava_procs.process.SpikeforgeConv`,
  spikeforge's own fixed_pt process (Lava 0.10's Conv ignores weight_exp and
  num_weight_bits, does not clip and wraps to 24 bits): ``a = floor(conv2d(s, w)
  2**weight_exp)`` exact in int64 (``spikeforge.conv``), sent one step later like Dense;
  flat C-order ports. With ``neuron="stock"`` (and on hardware) it is Lava's ``Sparse``
  over the unrolled connections (``Projection.coo``), with the same ``2 w`` /
  ``weight_exp - 1`` / MIXED encoding as Dense.
* Input -> ``lava.proc.io.source.RingBuffer`` (int32) of all samples' payloads concatenated
  along time, feeding Dense with ``num_message_bits = payload bits`` (graded, 8-bit).
* Layer (FixedLIF) -> :class:`~spikeforge.backends.lava_procs.process.SpikeforgeLIF`, whose
  fixed_pt model reuses Lava's ``AbstractPyLifModelFixed`` arithmetic (its u/v update as
  it is when v_rest = leak = 0; with a resting potential or subtractive leak, Lava's u
  update and spikeforge's v update written in the same style), adds reset to zero, by
  subtraction or to v_reset and the refractory period, and zeroes u, v, the refractory
  counter and the synaptic input at the first step of each sample's window, so one run of
  ``batch * steps`` steps equals ``batch`` fresh runs.
* Layer (FixedStochastic) -> :class:`~spikeforge.backends.lava_procs.process.SpikeforgeStochastic`,
  spikeforge's own fixed_pt simulation model: its draws are
  ``spikeforge.neuron.uniform_ints(seed, sample, step, neuron)`` with ``sample`` the index
  of the sample in the batch given to :meth:`LavaBackend.run` (chunks pass their offset),
  so they equal the cpu backend's.
* Spikes are recorded by ``SpikeRecorder`` (52 steps per int64 word) and the readout's v by
  ``WindowRecorder`` (v at each window's last step): a Lava Var.get moves one element per
  message (~30 us), which made plain RingBuffer sinks the slowest part of a run.

``LavaBackend(neuron="stock")`` uses Lava's own ``LIF`` (``PyLifModelBitAcc``) instead, for
layers that it computes (reset='zero', or 'value' with v_reset = 0; v_rest = leak =
refractory = 0; no stochastic layer) and Lava's ``Sparse`` for convolutions, one
``run(steps)`` per sample with u, v and every Dense/Sparse ``a_buff`` set to 0 between
samples (Var.set); it shows that the arithmetic above is Lava's.

Each chunk of samples runs in a forked child process group with a timeout (``isolate=True``,
the default): a failure inside a Lava ProcessModel surfaces as one-line
:class:`SpikeforgeError`, and a hung runtime is killed instead of hanging the caller.
Lava is imported only inside functions.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import multiprocessing
import os
import pickle
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import numpy as np

from spikeforge import fixedpoint, ir
from spikeforge.backends.base import Backend, RunResult
from spikeforge.backends.cpu import check_payloads
from spikeforge.errors import BackendUnavailable, SpikeforgeError, UnsupportedError
from spikeforge.network import Network, Projection
from spikeforge.neuron import shift

Neuron = Literal["spikeforge", "stock"]
NEURONS: tuple[str, ...] = ("spikeforge", "stock")

#: Lava's fixed_pt models add (a << 6) and the 24-bit state in int32 (numpy, wrapping
#: silently): a layer's summed synaptic input |a| must stay below this bound to match the
#: cpu backend's int64 arithmetic (2**31 > 64 |a| + 2**24 (u) + 2**24 (v) + 2**19 (bias)).
A_MAX = (2**31 - 2**25 - 2**19) >> 6
#: A Dense/Sparse accumulator (sum_j |2 w_ij| s_j before its shift) must fit in int32
#: (SpikeforgeConv accumulates in int64; its shifted sum a is bounded by A_MAX).
ACC_MAX = 2**31 - 1
SPIKES_PER_WORD = 52  # must equal lava_procs.process.SPIKES_PER_WORD


#: spikeforge reset names -> SpikeforgeLIF reset codes (= lava_procs.process.RESET_CODES).
RESET_CODES = dict(fixedpoint.RESET_CODES)


@dataclass(frozen=True)
class LayerSpec:
    """One FixedLIF layer as Lava gets it (all integers with their Loihi 2 widths)."""

    name: str
    size: int
    vth: int  # 17-bit unsigned
    du: int  # 12-bit unsigned
    dv: int  # 12-bit unsigned
    bias_mant: np.ndarray  # 13-bit signed per neuron
    bias_exp: int  # 3-bit unsigned
    reset: int  # 0 = zero, 1 = subtract, 2 = value (RESET_CODES)
    readout: bool
    v_rest: int = 0  # 24-bit signed
    v_reset: int = 0  # 24-bit signed
    leak: int = 0  # 23-bit unsigned
    refractory: int = 0  # 8-bit unsigned
    v_init: np.ndarray | None = None  # int32 (size,), 24-bit signed: v at each sample's start


@dataclass(frozen=True)
class StochasticSpec:
    """One FixedStochastic layer (simulation only: SpikeforgeStochastic)."""

    name: str
    size: int
    vth: int  # 17-bit unsigned, >= 1
    bias_mant: np.ndarray  # 13-bit signed per neuron
    bias_exp: int  # 3-bit unsigned
    seed: int  # 32-bit unsigned
    readout: bool = False  # never: lowering refuses a stochastic readout


@dataclass(frozen=True)
class DenseSpec:
    """One projection as a Lava Dense: weights 2w (9-bit signed, even), weight_exp - 1."""

    name: str
    src: str
    dst: str
    weights: np.ndarray  # int32 (dst, src), in [-256, 254]
    weight_exp: int  # IR weight_exp - 1, in [-9, 6]
    num_message_bits: int  # 0 for binary spikes, payload bits (<= 8) for the Input


@dataclass(frozen=True)
class ConvSpec:
    """One convolutional projection: SpikeforgeConv (w, weight_exp), or with neuron='stock'
    Lava's Sparse over its unrolled connections (2w, weight_exp - 1)."""

    name: str
    src: str
    dst: str
    weight: np.ndarray  # int32 (C_out, C_in / groups, kH, kW), 8-bit mantissas
    weight_exp: int  # the IR's weight_exp, in [-8, 7]
    geometry: ir.ConvGeometry
    num_message_bits: int  # 0 for binary spikes, payload bits (<= 8) for the Input

    def sparse_2w(self) -> Any:
        """The unrolled connections as a scipy CSR matrix (post, pre) of 2w, int32."""
        from scipy.sparse import csr_matrix

        from spikeforge.conv import connections

        pre, post, w = connections(self.weight, self.geometry)
        shape = (int(np.prod(self.geometry.output_shape)), int(np.prod(self.geometry.input_shape)))
        return csr_matrix(((2 * w).astype(np.int32), (post, pre)), shape=shape)


@dataclass(frozen=True)
class LavaProgram:
    net: Network
    layers: tuple[LayerSpec | StochasticSpec, ...]
    denses: tuple[DenseSpec, ...]
    neuron: str
    hardware: bool = False
    convs: tuple[ConvSpec, ...] = ()


class LavaBackend(Backend):
    """Loihi 2 bit-accurate simulation with Lava 0.10 (CPU, ``Loihi2SimCfg('fixed_pt')``).

    Options: ``neuron`` 'spikeforge' (own LIF and stochastic processes: spikeforge's whole
    neuron family, all samples of a chunk in one run) or 'stock' (Lava's LIF: reset to
    zero, no v_rest, leak, refractory or stochastic layer; one run per sample); ``isolate`` runs
    Lava in a forked child process group killed after ``timeout`` seconds (default
    120 + 0.05 s per step); ``chunk_steps`` caps the steps (samples x steps) per build.
    """

    name = "lava"

    def __init__(self, neuron: Neuron = "spikeforge", isolate: bool = True,
                 timeout: float | None = None, chunk_steps: int = 20_000) -> None:
        if neuron not in NEURONS:
            raise SpikeforgeError(
                f"lava backend: neuron expected one of {NEURONS}, found {neuron!r}")
        if chunk_steps < 1:
            raise SpikeforgeError(f"lava backend: chunk_steps expected >= 1, found {chunk_steps}")
        self.neuron = neuron
        self.isolate = isolate
        self.timeout = timeout
        self.chunk_steps = chunk_steps

    # -- compile -----------------------------------------------------------------------
    def compile(self, graph: ir.Graph, **options: Any) -> LavaProgram:
        """Lower ``graph`` and check that Lava expresses every layer exactly."""
        net = self.lower(graph)
        program = build_program(net, graph, self.neuron)
        import_lava()
        return program

    # -- run ---------------------------------------------------------------------------
    def run(self, program: LavaProgram, payloads: np.ndarray, sample_offset: int = 0) -> RunResult:
        """payloads int (batch, steps, inputs), 8-bit -> spikes of every layer, v_final."""
        net = program.net
        p = check_payloads(net, payloads).astype(np.int32)
        batch, steps, _ = p.shape
        ro = net.layer(net.readout)
        if batch == 0 or steps == 0:
            spikes = {l.name: np.zeros((batch, steps, l.size), bool) for l in net.layers}
            return RunResult(spikes, np.zeros((batch, ro.size), np.int64), net.readout,
                             ro.node.vth_scaled)
        import_lava()
        per_chunk = max(1, self.chunk_steps // steps)
        parts = []
        for start in range(0, batch, per_chunk):
            chunk = p[start:start + per_chunk]
            timeout = self.timeout
            if timeout is None:
                timeout = 120 + 0.05 * chunk.shape[0] * steps
            # stochastic layers draw by the sample's index in this whole batch
            fn = functools.partial(execute, sample_offset=sample_offset + start)
            if self.isolate:
                parts.append(run_isolated(fn, (program, chunk), timeout,
                                          on_progress=functools.partial(_progress, start)))
            else:
                parts.append(fn(program, chunk, timeout=timeout))
        spikes = {l.name: np.concatenate([s[l.name] for s, _ in parts]) for l in net.layers}
        v_final = np.concatenate([v for _, v in parts]).astype(np.int64)
        return RunResult(spikes, v_final, net.readout, ro.node.vth_scaled)


def _progress(start: int, done: int) -> None:
    from spikeforge import progress

    progress.within(start + done)


def import_lava() -> None:
    """Import Lava in this process (before any fork: importing lava calls
    multiprocessing.set_start_method('fork'), which fails once a start method is set). A
    start method already fixed to 'fork' (torch's dynamo ONNX exporter fixes it) is what Lava
    wants: it is unfixed so that Lava's own call succeeds and sets it again."""
    import sys

    if "lava.magma.runtime.message_infrastructure.multiprocessing" not in sys.modules and \
            multiprocessing.get_start_method(allow_none=True) == "fork":
        multiprocessing.context._default_context._actual_context = None  # type: ignore[attr-defined]
    try:
        import lava.magma.runtime.message_infrastructure.multiprocessing  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            f"lava backend needs lava-nc 0.10 (pip install lava-nc==0.10.0); found: {exc}"
        ) from None
    except RuntimeError as exc:
        raise SpikeforgeError(
            f"lava: importing Lava failed ({exc}); Lava sets the multiprocessing "
            f"start method to 'fork' and must be imported before anything sets another"
        ) from None
    import spikeforge.backends.lava_procs.models  # noqa: F401
    from spikeforge.backends.lava_procs.process import RESET_CODES as codes
    from spikeforge.backends.lava_procs.process import SPIKES_PER_WORD as recorded

    assert recorded == SPIKES_PER_WORD, "lava_procs and lava_backend disagree on word size"
    assert codes == RESET_CODES, "lava_procs and lava_backend disagree on reset codes"


# -- program ---------------------------------------------------------------------------
def stock_lif_gaps(node: ir.FixedLIF) -> list[tuple[str, str]]:
    """What Lava's stock LIF (Loihi 2's CUBA LIF) lacks of this layer, as (the parameter as
    written, what the stock LIF does instead); [] if the stock LIF computes it exactly.
    reset='value' with v_reset = 0 is reset to zero."""
    gaps = []
    if node.reset == "subtract":
        gaps.append(("reset='subtract'", "resets to zero only"))
    elif node.reset == "value" and node.v_reset != 0:
        gaps.append((f"reset='value' (v_reset={node.v_reset})", "resets to zero only"))
    if node.v_rest:
        gaps.append((f"v_rest={node.v_rest}", "decays v toward 0 (it has no resting potential)"))
    if node.leak:
        gaps.append((f"leak={node.leak}", "has no subtractive leak (only the decay dv)"))
    if node.refractory:
        gaps.append((f"refractory={node.refractory}", "has no refractory period"))
    return gaps


def stock_violations(net: Network) -> list[str]:
    """Every layer feature Lava's stock LIF lacks (neuron='stock'), naming node and parameter."""
    problems = []
    for layer in net.layers:
        n = layer.node
        if isinstance(n, ir.FixedStochastic):
            problems.append(f"{n.where()}: stochastic neurons: Lava has no stock stochastic "
                            f"neuron (spikeforge's SpikeforgeStochastic simulates it)")
            continue
        problems += [f"{n.where()} {param}: Lava's stock LIF {rule}"
                     for param, rule in stock_lif_gaps(n)]
    return problems


def worst_sum(proj: Projection) -> int:
    """max_i sum_j |w_ij| over the projection's target neurons: for a convolution the
    kernel sum of its heaviest output channel (an upper bound: at the borders, padding
    leaves fewer inputs)."""
    w = np.abs(proj.weight)
    return int(w.reshape(w.shape[0], -1).sum(axis=1).max(initial=0))


def int32_violations(net: Network, graph: ir.Graph, stock: bool = False) -> list[str]:
    """Projections whose Lava int32 accumulator (Dense; Sparse for convolutions when
    ``stock``), and layers whose a << 6, can overflow. SpikeforgeConv accumulates in int64."""
    problems = []
    a_bound = {l.name: 0 for l in net.layers}
    for proj in net.projections:
        node = graph.node(proj.name)
        max_in = net.input.payload_max if proj.graded else 1
        acc = worst_sum(proj) * max_in  # worst-case |sum_j w_ij s_j|
        if proj.conv is None or stock:
            what = "Dense" if proj.conv is None else "Sparse (the unrolled convolution)"
            if 2 * acc > ACC_MAX:
                problems.append(
                    f"{node.where()} weight: Lava's {what} accumulates in int32; the sum of "
                    f"|2 w| x {max_in} reaches {2 * acc} > {ACC_MAX}"
                )
        a_bound[proj.dst] += int(shift(np.int64(acc), proj.weight_exp))
    for layer in net.layers:
        if a_bound[layer.name] > A_MAX:
            problems.append(
                f"{layer.node.where()} synaptic input: Lava's LIF computes a << 6 in int32; "
                f"worst-case |a| = {a_bound[layer.name]} exceeds {A_MAX} "
                f"(lower the weight_exp of its projections)"
            )
    return problems


def build_program(net: Network, graph: ir.Graph, neuron: str,
                  hardware: bool = False) -> LavaProgram:
    """Network -> Lava specs. Raises UnsupportedError naming every node and parameter that
    Lava (with ``neuron``'s processes) cannot express exactly, in one line."""
    if neuron == "stock":
        problems = stock_violations(net)
        if problems:
            raise UnsupportedError("; ".join(problems) + "; use neuron='spikeforge'")
    problems = int32_violations(net, graph, stock=neuron == "stock")
    if problems:
        raise UnsupportedError("; ".join(problems))
    layers: list[LayerSpec | StochasticSpec] = []
    for layer in net.layers:
        n = layer.node
        if isinstance(n, ir.FixedStochastic):
            layers.append(StochasticSpec(layer.name, n.size, int(n.vth),
                                         n.bias_mant.astype(np.int32), int(n.bias_exp),
                                         int(n.seed)))
            continue
        layers.append(LayerSpec(layer.name, n.size, int(n.vth), int(n.du), int(n.dv),
                                n.bias_mant.astype(np.int32), int(n.bias_exp),
                                RESET_CODES[n.reset], layer.name == net.readout,
                                int(n.v_rest), int(n.v_reset), int(n.leak), int(n.refractory),
                                n.v_init.astype(np.int32)))
    bits = {proj.name: net.input.payload_max.bit_length() if proj.graded else 0
            for proj in net.projections}
    denses = [DenseSpec(proj.name, proj.src, proj.dst, (2 * proj.weight).astype(np.int32),
                        int(proj.weight_exp) - 1, bits[proj.name])
              for proj in net.projections if proj.conv is None]
    convs = [ConvSpec(proj.name, proj.src, proj.dst, proj.weight.astype(np.int32),
                      int(proj.weight_exp), proj.conv, bits[proj.name])
             for proj in net.projections if proj.conv is not None]
    return LavaProgram(net, tuple(layers), tuple(denses), neuron, hardware, tuple(convs))


# -- execution (imports lava) -------------------------------------------------------------
class LavaRunError(SpikeforgeError):
    """A Lava ProcessModel raised during a run (message: its exception, one line)."""


def execute(program: LavaProgram, payloads: np.ndarray,
            on_error: Callable[[BaseException], None] | None = None,
            timeout: float | None = None,
            sample_offset: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Build the Lava network for these samples, run it, read the recorders, stop.

    payloads int32 (batch, steps, inputs) -> ({layer: bool (batch, steps, n)}, v_final
    int (batch, n_readout)). On a failure ``on_error(exc)`` is called first, then the
    runtime's processes are killed (``stop()`` hangs after a ProcessModel exception).
    ``timeout`` (seconds) bounds the runs when Lava runs in this process.
    ``sample_offset`` is the index of ``payloads[0]`` in the batch given to
    :meth:`LavaBackend.run` (stochastic layers draw by it).
    """
    deadline = None if timeout is None else (time.monotonic() + timeout, timeout)
    if program.neuron == "stock":
        return _execute_stock(program, payloads, on_error, deadline)
    from spikeforge.backends.lava_procs.process import (SpikeforgeLIF, SpikeforgeStochastic,
                                                        WindowRecorder)

    batch, steps, _ = payloads.shape
    lifs: dict[str, Any] = {}
    for l in program.layers:
        if isinstance(l, StochasticSpec):
            lifs[l.name] = SpikeforgeStochastic(
                shape=(l.size,), vth=l.vth, bias_mant=l.bias_mant, bias_exp=l.bias_exp,
                seed=l.seed, window=steps, sample_offset=sample_offset, name=l.name)
        else:
            lifs[l.name] = SpikeforgeLIF(
                shape=(l.size,), vth=l.vth, du=l.du, dv=l.dv, bias_mant=l.bias_mant,
                bias_exp=l.bias_exp, reset=l.reset, v_rest=l.v_rest, v_reset=l.v_reset,
                leak=l.leak, refractory=l.refractory, window=steps, readout=l.readout,
                v_init=_v_init(l), name=l.name)
    src, recorders, _ = _wire(program, payloads, lifs)
    ro = lifs[program.net.readout]
    v_rec = WindowRecorder(shape=(ro.a_in.shape[0],), window=steps, windows=batch)
    ro.v_out.connect(v_rec.a_in)
    with _stopped(src, on_error):
        _run_watched(src, batch * steps, _run_cfg(program.hardware), deadline)
        spikes = {name: _unpack(rec.data.get(), batch, steps) for name, rec in recorders.items()}
        v_final = v_rec.data.get().T.astype(np.int64)
    return spikes, v_final


@contextlib.contextmanager
def _stopped(src: Any, on_error: Callable[[BaseException], None] | None) -> Iterator[None]:
    """Stop the runtime of ``src`` after the block; on any error call ``on_error(exc)``, kill
    the runtime's processes (``stop()`` hangs after a ProcessModel exception) and re-raise."""
    from spikeforge.interrupts import held

    try:
        yield
    except BaseException as exc:
        with held():  # a SIGTERM now must not cut the release of shared memory short
            if on_error is not None:
                try:
                    on_error(exc)
                except Exception:
                    pass
            _abort(src)
        raise
    with held():
        src.stop()


def _execute_stock(program: LavaProgram, payloads: np.ndarray,
                   on_error: Callable[[BaseException], None] | None,
                   deadline: tuple[float, float] | None
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Lava's stock LIF: one run(steps) per sample; between samples u, v and every Dense
    and Sparse a_buff are set to 0 (the source RingBuffer moves on to the next sample's payloads).
    build_program has refused every layer the stock LIF does not compute exactly."""
    from lava.proc.lif.process import LIF

    batch, steps, _ = payloads.shape
    lifs = {
        l.name: LIF(shape=(l.size,), vth=l.vth, du=l.du, dv=l.dv, bias_mant=l.bias_mant,
                    bias_exp=l.bias_exp, v=_v_init(l), name=l.name)
        for l in program.layers if isinstance(l, LayerSpec)  # build_program: no stochastic layer
    }
    src, recorders, denses = _wire(program, payloads, lifs)
    ro = lifs[program.net.readout]
    v_final = np.zeros((batch, ro.v.shape[0]), np.int64)
    cfg = _run_cfg(program.hardware)
    with _stopped(src, on_error):
        for b in range(batch):
            if b:
                for spec in program.layers:
                    lif = lifs[spec.name]
                    lif.u.set(np.zeros(lif.u.shape, np.int32))
                    lif.v.set(np.asarray(_v_init(spec), np.int32).reshape(lif.v.shape))
                for d in denses:
                    d.a_buff.set(np.zeros(d.a_buff.shape, np.int32))
            _run_watched(src, steps, cfg, deadline)
            v_final[b] = ro.v.get().astype(np.int64)
        spikes = {name: _unpack(rec.data.get(), batch, steps) for name, rec in recorders.items()}
    return spikes, v_final


def _v_init(spec: LayerSpec | StochasticSpec) -> np.ndarray:
    """The layer's v at the start of every sample, int32 (size,)."""
    v0 = getattr(spec, "v_init", None)
    return np.zeros(spec.size, np.int32) if v0 is None else np.asarray(v0, np.int32)


def _run_watched(proc: Any, num_steps: int, run_cfg: Any,
                 deadline: tuple[float, float] | None = None, poll: float = 0.05) -> None:
    """``proc.run(RunSteps(num_steps))`` that raises LavaRunError as soon as a ProcessModel
    dies, or once ``time.monotonic()`` passes ``deadline`` = (monotonic time, timeout in
    seconds). (Lava 0.10's blocking run then
    waits for every process to finish and hangs; here the run is non-blocking and its
    worker processes are watched.)"""
    from lava.magma.core.run_conditions import RunSteps

    proc.run(condition=RunSteps(num_steps=num_steps, blocking=False), run_cfg=run_cfg)
    runtime = proc.runtime
    failure: list[BaseException] = []

    def wait() -> None:
        try:
            runtime.wait()
        except BaseException as exc:  # reported by the loop below
            failure.append(exc)

    waiter = threading.Thread(target=wait, name="lava-wait", daemon=True)
    waiter.start()
    actors = getattr(getattr(runtime, "_messaging_infrastructure", None), "actors", [])
    while waiter.is_alive():
        waiter.join(poll)
        dead = [a for a in actors if a.exitcode is not None]
        if dead and waiter.is_alive():
            raise LavaRunError(f"lava: a process model failed: {_actor_error(dead[0])}")
        if deadline is not None and time.monotonic() > deadline[0] and waiter.is_alive():
            raise LavaRunError(timeout_message(deadline[1]))
    if failure:
        raise failure[0]


def _actor_error(actor: Any) -> str:
    """Last line of the traceback a dead Lava actor (SystemProcess) sent, or its exit code."""
    try:
        exc = actor.exception
    except Exception:  # the pipe may be gone
        exc = None
    if exc:
        lines = [line for line in str(exc[1]).strip().splitlines() if line.strip()]
        return " ".join(lines[-1].split())[:300] if lines else describe(exc[0])
    return f"process exited with code {actor.exitcode}"


def _abort(proc: Any) -> None:
    """After a failure: kill the runtime's worker processes (ours, by pid) and shut down
    its shared-memory manager, instead of ``stop()``, which waits for them forever."""
    runtime = getattr(proc, "runtime", None)
    infra = getattr(runtime, "_messaging_infrastructure", None)
    if runtime is None or infra is None:
        return
    for actor in list(getattr(infra, "actors", [])):
        try:
            if actor.exitcode is None:
                actor.kill()
            multiprocessing.Process.join(actor, 2.0)
        except Exception:
            pass
    try:
        if infra.smm is not None:
            infra.smm.shutdown()
    except Exception:
        pass
    runtime._is_running = False
    runtime._is_started = False


def _run_cfg(hardware: bool) -> Any:
    if hardware:
        from lava.magma.core.run_configs import Loihi2HwCfg
        return Loihi2HwCfg()
    from lava.magma.core.run_configs import Loihi2SimCfg
    return Loihi2SimCfg(select_tag="fixed_pt")


def _wire(program: LavaProgram, payloads: np.ndarray, lifs: dict) -> tuple[Any, dict, list]:
    """Source -> Dense / SpikeforgeConv (stock: Sparse) -> neurons -> spike recorders
    (adapters between host and chip when ``program.hardware``). Returns (source,
    {layer: recorder}, synapse processes)."""
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import RingBuffer
    from lava.proc.sparse.process import Sparse
    from lava.utils.weightutils import SignMode

    from spikeforge.backends.lava_procs.process import SpikeforgeConv, SpikeRecorder

    batch, steps, n_in = payloads.shape
    src = RingBuffer(data=np.ascontiguousarray(payloads.reshape(batch * steps, n_in).T))
    src_port = src.s_out
    if program.hardware:  # lava-loihi's host <-> chip adapters (lava.proc.embedded_io)
        from lava.proc import embedded_io as eio
        adapter = eio.spike.PyToNxAdapter(shape=(n_in,), num_message_bits=8)
        src.s_out.connect(adapter.inp)
        src_port = adapter.out
    denses = []
    for d in program.denses:
        dense = Dense(weights=d.weights, weight_exp=d.weight_exp, num_weight_bits=8,
                      sign_mode=SignMode.MIXED, num_message_bits=d.num_message_bits, name=d.name)
        (src_port if d.num_message_bits else lifs[d.src].s_out).connect(dense.s_in)
        dense.a_out.connect(lifs[d.dst].a_in)
        denses.append(dense)
    for c in program.convs:
        if program.neuron == "stock":
            conn = Sparse(weights=c.sparse_2w(), weight_exp=c.weight_exp - 1, num_weight_bits=8,
                          sign_mode=SignMode.MIXED, num_message_bits=c.num_message_bits,
                          name=c.name)
        else:
            g = c.geometry
            conn = SpikeforgeConv(weight=c.weight, weight_exp=c.weight_exp,
                                  input_shape=g.input_shape, stride=g.stride, padding=g.padding,
                                  dilation=g.dilation, groups=g.groups,
                                  num_message_bits=c.num_message_bits, name=c.name)
        (src_port if c.num_message_bits else lifs[c.src].s_out).connect(conn.s_in)
        conn.a_out.connect(lifs[c.dst].a_in)
        denses.append(conn)
    recorders = {}
    for name, lif in lifs.items():
        n = lif.a_in.shape[0]
        rec = SpikeRecorder(shape=(n,), steps=batch * steps)
        if program.hardware:
            from lava.proc import embedded_io as eio
            out = eio.spike.NxToPyAdapter(shape=(n,), num_message_bits=0)
            lif.s_out.connect(out.inp)
            out.out.connect(rec.a_in)
        else:
            lif.s_out.connect(rec.a_in)
        recorders[name] = rec
    return src, recorders, denses


def _unpack(words: np.ndarray, batch: int, steps: int) -> np.ndarray:
    """Recorder words (n, ceil(total / 52)) -> bool (batch, steps, n); bit k of word j is
    step 52 j + k of the run."""
    w = np.asarray(words).astype(np.int64)
    bits = (w[:, :, None] >> np.arange(SPIKES_PER_WORD, dtype=np.int64)) & 1
    bits = bits.reshape(w.shape[0], -1)[:, :batch * steps].astype(bool)
    return np.ascontiguousarray(bits.T.reshape(batch, steps, w.shape[0]))


# -- isolation ---------------------------------------------------------------------------
def timeout_message(timeout: float) -> str:
    return f"lava: the run did not finish within {timeout:g} s; its processes were killed"


def describe(exc: BaseException) -> str:
    """One line for an exception from a Lava run: spikeforge's own message as it is,
    anything else as 'lava: the run failed: Type: message'."""
    text = " ".join(str(exc).split())
    if isinstance(exc, SpikeforgeError):
        return text[:400]
    return f"lava: the run failed: {type(exc).__name__}: {text}"[:400]


def _child_main(recv: Any, send: Any, fn: Callable, args: tuple, result_path: str,
                parent: int) -> None:
    """The forked child: its own process group; SIGTERM (from the parent, or from the kernel
    when the parent dies: PR_SET_PDEATHSIG) raises Interrupted, so the Lava runtime is
    stopped and its shared memory released (``_stopped``/``_abort``) before it exits. The
    result goes to a file (a large result written into a pipe blocks until it is read),
    the pipe carries only ('ok', None) or ('error', one line)."""
    from spikeforge import interrupts

    code = 1
    try:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        recv.close()  # never hold the read end: a write then fails instead of blocking
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides and tells us
        signal.signal(signal.SIGTERM, interrupts._raise_once)
        interrupts._received.clear()
        _die_with_parent(signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, interrupts.SIGNALS)
        if os.getppid() != parent:  # the parent died before prctl
            raise interrupts.Interrupted(signal.SIGTERM)
        result = fn(*args, on_error=lambda exc: send.send(("error", describe(exc))))
        tmp = result_path + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, result_path)
        send.send(("ok", None))
        code = 0
    except BaseException as exc:  # report and leave; the parent kills what is left
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            send.send(("error", describe(exc)))
        except BaseException:
            pass
        if os.getppid() != parent:  # orphaned: nobody will remove the result folder
            shutil.rmtree(os.path.dirname(result_path), ignore_errors=True)
    finally:
        os._exit(code)


def _die_with_parent(signum: int) -> None:
    """Linux: the kernel sends ``signum`` to this process when its parent dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signum), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def run_isolated(fn: Callable, args: tuple, timeout: float, grace: float = 4.0,
                 on_progress: Callable[[int], None] | None = None) -> Any:
    """Run ``fn(*args, on_error=...)`` in a forked child in its own process group.

    Returns its result; raises SpikeforgeError (one line) if it fails, dies or exceeds
    ``timeout`` seconds. On any way out (error, timeout, KeyboardInterrupt/SIGTERM) the
    child is asked to stop (SIGTERM: it stops Lava's runtime and releases its shared
    memory), and whatever is left of its group ``grace`` seconds later is killed; signals
    that arrive meanwhile wait until that is done. ``on_progress(samples)`` is called
    while the child runs, with the samples the readout has finished.
    """
    import tempfile
    from multiprocessing import resource_tracker

    from spikeforge import interrupts

    # The tracker is started here, outside the child's process group, so shared memory
    # left by a killed runtime is unlinked (at the latest when this process exits).
    resource_tracker.ensure_running()
    ctx = multiprocessing.get_context("fork")
    folder = tempfile.mkdtemp(prefix="spikeforge-lava-")
    result_path = os.path.join(folder, "result.pickle")
    counter = mmap.mmap(-1, 8)  # shared with the child and its Lava processes
    recv, send = ctx.Pipe(duplex=False)
    child = None
    done = None
    try:
        with interrupts.held():
            _set_progress_counter(counter)
            # the child starts with both signals blocked, until its handlers are set
            old = signal.pthread_sigmask(signal.SIG_BLOCK, interrupts.SIGNALS)
            try:
                child = ctx.Process(target=_child_main,
                                    args=(recv, send, fn, args, result_path, os.getpid()),
                                    daemon=False)
                child.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
                _set_progress_counter(None)
            assert child.pid is not None
            try:
                os.setpgid(child.pid, child.pid)  # also set in the child: whichever runs first
            except OSError:
                pass
            send.close()
        done = np.frombuffer(counter, dtype=np.int64, count=1)
        deadline = time.monotonic() + timeout
        while not recv.poll(0.25):
            if on_progress is not None:
                on_progress(int(done[0]))
            if time.monotonic() > deadline:
                raise LavaRunError(timeout_message(timeout))
        try:
            status, value = recv.recv()
        except EOFError:
            child.join(1.0)
            raise LavaRunError(
                f"lava: the runtime process died (exit code {child.exitcode}) without a result"
            ) from None
        if status != "ok":
            raise LavaRunError(value)
        with open(result_path, "rb") as f:
            result = pickle.load(f)
        child.join(30.0)
        return result
    finally:
        with interrupts.held():
            if child is not None:
                _end_child(child, grace)
            recv.close()
            shutil.rmtree(folder, ignore_errors=True)
            del done
            with contextlib.suppress(BufferError):
                counter.close()


def _set_progress_counter(counter: mmap.mmap | None) -> None:
    from spikeforge import progress

    progress.counter = None if counter is None else np.frombuffer(counter, dtype=np.int64, count=1)


def _end_child(child: Any, grace: float) -> None:
    """SIGTERM the child if it runs (it stops Lava and releases shared memory), wait up to
    ``grace`` seconds, then SIGKILL whatever is left of its process group."""
    if child.exitcode is None:
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        child.join(grace)
    _kill_group(child.pid)
    child.join(5.0)


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group of our own child (Lava's processes were forked into it)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
