"""NIR (neuromorphs/NIR) import and export.

**Import** (:func:`load_nir`): a NIR file or an in-memory ``nir.NIRGraph`` -> spikeforge's float
IR. NIR's time is continuous, so one simulation step must be given a length in seconds: the
``dt`` recorded in the graph's metadata when there is one, else ``dt`` (a number, or a producer's
convention, :data:`CONVENTIONS`). Per step of ``dt`` seconds (forward Euler, as the producers):

    IF       v <- v + r dt I
    LIF      v <- v + (dt / tau) (v_leak - v + r I)
    CubaLIF  I <- I + (dt / tau_syn) (w_in x - I);  v <- v + (dt / tau_mem) (v_leak - v + r I)
    LI       v <- v + (dt / tau) (v_leak - v + r I)   (no spikes: the readout only)

spike where v > v_threshold, then v <- v_reset. Per-neuron thresholds and input gains are folded
into the incoming weights (exact; into a Conv2d per channel); time constants, v_leak / v_threshold
and v_reset / v_threshold must be uniform per layer (Loihi 2 has one per layer). Scale and zero
Delay nodes fold away, nested NIRGraph nodes (snnTorch's RLeaky) are inlined. Pooling between
neuron layers folds into the next synapse (:func:`spikeforge.converter.fold.fold_linear`:
W' = W P, SumPool2d = k_h k_w AvgPool2d). Each NIR node type is read by its entry in
:data:`IMPORTERS` (or :data:`PASS_THROUGH`). A layer whose parameters clip when quantized, or
that cannot reach its threshold, is named in a :class:`NIRImportWarning`.

**Export** (:func:`save_nir`): a quantized graph -> NIR in state units (weights ``w 2**e << 6``,
thresholds ``vth << 6``: integer-valued, so a consumer's float sums are exact; spikeforge's
``floor(acc 2**e)`` for ``weight_exp < 0`` has no NIR equivalent and is where spikes can differ), IF as ``r = 1 / dt``; the whole quantized graph travels in the metadata,
so spikeforge -> NIR -> spikeforge is the identical graph. Each IR node type is written by its
entry in :data:`EXPORTERS` (FixedConv2d / Conv2d as NIR Conv2d, symmetric padding, groups = 1;
Flatten with dims counted from the end, so torch consumers keep the batch dim). ``target='snntorch'`` writes IF layers
as snnTorch-loadable LIF (beta = 1 at snnTorch's hard-coded dt = 1e-4 s). NIR has no reset by
subtraction: such layers are refused by name, except for ``target='sinabs'``: Sinabs' from_nir
runs IF with reset by subtraction and fires on v >= threshold, so IF layers that reset by
subtraction are written with thresholds :func:`sinabs_threshold` and, for Sinabs' nir <= 1.0.4,
without v_reset. NIR has no initial state and no synaptic delay: consumers start each layer at
v = 0 when its input starts, what the conversion's ``v_init`` computes.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import numpy as np

from spikeforge import fixedpoint, ir
from spikeforge.conv import symmetric_padding
from spikeforge.errors import SpikeforgeError, UnsupportedError
from spikeforge.fileio import atomic_path, not_a_file

if TYPE_CHECKING:
    import nir


class NIRImportWarning(UserWarning):
    """An imported layer whose parameters clip, or which cannot fire."""


class StepLength(NamedTuple):
    """Seconds per simulation step, for LIF-type time constants and for IF's r dt."""

    lif: float
    if_: float
    name: str


#: What the common producers' files need (none of them records its time step).
CONVENTIONS: dict[str, StepLength] = {
    "snntorch": StepLength(1e-4, 1e-4, "snntorch"),  # tau = dt / (1 - beta), r = tau / dt, dt = 1e-4
    "norse": StepLength(1e-6, 1.0, "norse"),  # LIF tau = dt / tau_mem_inv (dt = 1e-3): dt**2; IAF per step
    "sinabs": StepLength(1.0, 1.0, "sinabs"),  # IAF per step
}
DT_HINT = ("snnTorch files need --dt 1e-4 (or --dt snntorch); Norse's LIF (LIFBoxCell, LIFCell, LIBoxCell) "
           "need Norse's dt squared, 1e-6 for its default dt = 1e-3, and its IAFCell 1: --dt norse (or norse:DT) "
           "sets both; Norse's and Sinabs' IF alone need --dt 1")
PRODUCER = "spikeforge"


def step_length(dt: float | str | StepLength | None) -> StepLength | None:
    """``dt`` as given: seconds (one for all nodes), a producer's name, or 'norse:DT'."""
    if dt is None or isinstance(dt, StepLength):
        return dt
    if isinstance(dt, str):
        key, _, arg = dt.strip().lower().partition(":")
        if key in CONVENTIONS and not arg:
            return CONVENTIONS[key]
        if key == "norse" and arg:
            try:
                d = float(arg)
            except ValueError:
                d = float("nan")
            if d > 0:
                return StepLength(d * d, 1.0, f"norse:{arg}")
        try:
            dt = float(dt)
        except ValueError:
            raise SpikeforgeError(f"dt: expected seconds per step or one of {', '.join(CONVENTIONS)}, norse:DT, "
                                  f"found {dt!r}") from None
    dt = float(dt)
    if not (dt > 0 and math.isfinite(dt)):
        raise SpikeforgeError(f"dt: expected a step length > 0 seconds, found {dt}")
    return StepLength(dt, dt, str(dt))


# -- import ----------------------------------------------------------------------------------
def _read(source: "str | Path | nir.NIRGraph") -> tuple["nir.NIRGraph", str]:
    import nir

    if isinstance(source, nir.NIRGraph):
        return source, "NIR graph"
    path = Path(source)
    if not path.is_file():
        raise SpikeforgeError(f"{path}: {not_a_file(path)} (expected a NIR graph)")
    return _read_isolated(path), str(path)


#: Seconds a NIR file may take to read: HDF5 can loop forever inside C on a corrupted file.
READ_TIMEOUT = 60.0


def _read_isolated(path: Path, timeout: float = READ_TIMEOUT) -> "nir.NIRGraph":
    """nir.read(path) in a forked child with a time limit, the graph pickled back through a
    temporary file: a hostile file that hangs h5py is killed and refused, never hangs the caller."""
    import multiprocessing
    import pickle
    import tempfile

    import nir

    with tempfile.TemporaryDirectory(prefix="spikeforge-nir-") as tmp:
        result = Path(tmp) / "graph.pickle"

        def child() -> None:
            try:
                payload: Any = ("ok", nir.read(str(path)))
            except Exception as exc:  # reported by the parent as one line
                payload = ("error", f"{type(exc).__name__}: {str(exc)[:160]}")
            with open(result, "wb") as fh:
                pickle.dump(payload, fh)

        proc = multiprocessing.get_context("fork").Process(target=child, daemon=True)
        proc.start()
        try:
            proc.join(timeout)
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join()
        if not result.is_file():
            why = f"reading took over {timeout:.0f} s" if proc.exitcode in (None, -9) else \
                f"the reader exited with code {proc.exitcode}"
            raise SpikeforgeError(f"{path}: not a readable NIR file ({why})")
        with open(result, "rb") as fh:
            status, value = pickle.load(fh)  # written by our own child process
    if status != "ok":
        raise SpikeforgeError(f"{path}: not a readable NIR file ({value})")
    return value


def _inline(g: "nir.NIRGraph", where: str, prefix: str = "") -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Nodes and edges with nested NIRGraph nodes replaced by their contents (names 'sub.node')."""
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    entry: dict[str, list[str]] = {}  # subgraph name -> nodes its Input feeds
    exit_: dict[str, list[str]] = {}  # subgraph name -> nodes feeding its Output
    for name, n in g.nodes.items():
        if type(n).__name__ == "NIRGraph":
            sub_nodes, sub_edges = _inline(n, where, f"{prefix}{name}.")
            ins = {k for k, v in sub_nodes.items() if type(v).__name__ == "Input"}
            outs = {k for k, v in sub_nodes.items() if type(v).__name__ == "Output"}
            if len(ins) != 1 or len(outs) != 1:
                raise UnsupportedError(f"{where}: node '{prefix}{name}' (NIRGraph): expected one Input and one "
                                       f"Output in a nested graph, found {len(ins)} and {len(outs)}")
            entry[name] = [b for a, b in sub_edges if a in ins]
            exit_[name] = [a for a, b in sub_edges if b in outs]
            nodes.update({k: v for k, v in sub_nodes.items() if k not in ins | outs})
            edges += [(a, b) for a, b in sub_edges if a not in ins and b not in outs]
        else:
            nodes[prefix + name] = n
    for a, b in g.edges:
        srcs = exit_.get(a, [prefix + a])
        dsts = entry.get(b, [prefix + b])
        edges += [(s, d) for s in srcs for d in dsts]
    return nodes, edges


def _uniform(where: str, name: str, what: str, values: Any, size: int) -> float:
    v = np.broadcast_to(np.asarray(values, dtype=np.float64).reshape(-1), (size,)) if np.size(values) in (1, size) else None
    if v is None:
        raise UnsupportedError(f"{where}: node '{name}' {what}: expected 1 or {size} values, found {np.size(values)}")
    finite = v[np.isfinite(v)]
    same = np.isinf(v).all() or (finite.size == v.size and np.allclose(v, v[0], rtol=1e-6, atol=1e-12))
    if not same:
        raise UnsupportedError(
            f"{where}: node '{name}' {what}: expected one value for the layer (Loihi 2 has one per "
            f"layer), found {v.size} values in [{v.min():.4g}, {v.max():.4g}]")
    return float(v[0])


def _per_neuron(values: Any, size: int, where: str, name: str, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size not in (1, size):
        raise UnsupportedError(f"{where}: node '{name}' {what}: expected 1 or {size} values, found {arr.size}")
    return np.broadcast_to(arr, (size,)).copy()


def _gain(n: Any, size: int, where: str, name: str) -> np.ndarray:
    """The input gain r per neuron: > 0 (inf is snnTorch's beta = 1); r <= 0 or NaN would invert
    or erase the input, and is refused."""
    r = _per_neuron(n.r, size, where, name, "r")
    if not (r > 0).all():
        bad = r[~(r > 0)][0]
        raise UnsupportedError(f"{where}: node '{name}' r: expected values > 0, found {bad:.4g}")
    return r


class _Neuron(NamedTuple):
    node: ir.Node  # threshold 1: theta and the per-step input gain are folded into the weights
    fold: np.ndarray  # per neuron: multiply incoming weights and biases by this


def _if(name: str, n: Any, size: int, dt: StepLength, where: str, notes: list[str]) -> _Neuron:
    theta = _threshold(n, size, where, name)
    r = _gain(n, size, where, name)
    if np.isinf(r).any():  # snnTorch's beta = 1 convention: r = tau / dt
        notes.append(f"{where}: node '{name}' (IF) r: inf read as one unit of input per step")
        r = np.where(np.isinf(r), 1.0 / dt.if_, r)
    return _Neuron(_reset_node(name, n, size, theta, where, math.inf), r * dt.if_ / theta)


def _threshold(n: Any, size: int, where: str, name: str) -> np.ndarray:
    theta = _per_neuron(n.v_threshold, size, where, name, "v_threshold")
    if not (np.isfinite(theta).all() and (theta > 0).all()):
        raise UnsupportedError(f"{where}: node '{name}' v_threshold: expected finite values > 0, "
                               f"found [{theta.min():.4g}, {theta.max():.4g}]")
    return theta


def _reset_node(name: str, n: Any, size: int, theta: np.ndarray, where: str, tau: float,
                v_leak: float = 0.0, tau_syn: float = 1.0) -> ir.Node:
    v_reset = getattr(n, "v_reset", None)
    value = 0.0 if v_reset is None else _uniform(where, name, "v_reset / v_threshold",
                                                 _per_neuron(v_reset, size, where, name, "v_reset") / theta, size)
    reset = "zero" if value == 0 else "value"
    if math.isinf(tau) and reset == "zero" and v_leak == 0 and tau_syn == 1:
        return ir.IF(name, size, 1.0, "zero")
    r = tau if math.isfinite(tau) else 1.0  # quantize's gain r / tau = 1: the gain is folded
    return ir.LIF(name, size, tau=tau, v_leak=v_leak, v_reset=value, r=r, reset=reset, tau_syn=tau_syn)


def _tau_steps(value: Any, size: int, dt: float, where: str, name: str, what: str) -> float:
    tau = _uniform(where, name, what, value, size)
    steps = tau / dt
    if not steps >= 1:
        raise UnsupportedError(f"{where}: node '{name}' {what}: {tau:.4g} s is shorter than one step "
                               f"dt = {dt:.4g} s (is dt right? {DT_HINT})")
    return steps


def _lif(name: str, n: Any, size: int, dt: StepLength, where: str, notes: list[str]) -> _Neuron:
    theta = _threshold(n, size, where, name)
    tau = _tau_steps(n.tau, size, dt.lif, where, name, "tau")
    r = _gain(n, size, where, name)
    v_leak = _uniform(where, name, "v_leak / v_threshold", _per_neuron(n.v_leak, size, where, name, "v_leak") / theta, size)
    if math.isinf(tau):  # dv/dt = (r / tau) I; snnTorch's beta = 1 writes tau = r = inf: r / tau = 1 / dt
        gain = np.where(np.isinf(r), 1.0, 0.0)
        if np.isinf(r).any():
            notes.append(f"{where}: node '{name}' (LIF) tau = r = inf (snnTorch beta = 1): read as an IF neuron "
                         f"with one unit of input per step")
        v_leak = 0.0
    else:
        gain = r / tau
    return _Neuron(_reset_node(name, n, size, theta, where, tau, v_leak), gain / theta)


def _cuba_lif(name: str, n: Any, size: int, dt: StepLength, where: str, notes: list[str]) -> _Neuron:
    theta = _threshold(n, size, where, name)
    tau = _tau_steps(n.tau_mem, size, dt.lif, where, name, "tau_mem")
    tau_syn = _tau_steps(n.tau_syn, size, dt.lif, where, name, "tau_syn")
    r = _gain(n, size, where, name)
    w_in = _per_neuron(getattr(n, "w_in", 1.0), size, where, name, "w_in")
    v_leak = _uniform(where, name, "v_leak / v_threshold", _per_neuron(n.v_leak, size, where, name, "v_leak") / theta, size)
    gain = w_in / tau_syn * (r / tau if math.isfinite(tau) else np.where(np.isinf(r), 1.0, 0.0))
    return _Neuron(_reset_node(name, n, size, theta, where, tau, v_leak if math.isfinite(tau) else 0.0, tau_syn),
                   gain / theta)


def _li(name: str, n: Any, size: int, dt: StepLength, where: str, notes: list[str]) -> _Neuron:
    tau = _tau_steps(n.tau, size, dt.lif, where, name, "tau")
    r = _gain(n, size, where, name)
    v_leak = _uniform(where, name, "v_leak", n.v_leak, size)
    if v_leak != 0:
        raise UnsupportedError(f"{where}: node '{name}' (LI) v_leak: expected 0 for a readout, found {v_leak:.4g}")
    # a readout that never fires: the threshold is set after folding (see _li_threshold)
    node = ir.LIF(name, size, tau=tau, r=tau if math.isfinite(tau) else 1.0, reset="zero")
    return _Neuron(node, r / tau if math.isfinite(tau) else r * dt.lif)


NEURON_IMPORTERS: dict[str, Callable[..., _Neuron]] = {"IF": _if, "LIF": _lif, "CubaLIF": _cuba_lif, "LI": _li}
#: LI readouts: threshold = this many times the largest input a neuron can receive in one step.
LI_HEADROOM = 256.0


class _Context(NamedTuple):
    step: StepLength
    where: str
    notes: list[str]
    gain_after: dict[str, float]  # SumPool2d name -> k**2: its successors' weights are multiplied by it


#: (name, NIR node, input shape per sample, context) -> an IR node, or a neuron with its weight fold.
Importer = Callable[[str, Any, "ir.Shape | None", _Context], "ir.Node | _Neuron"]
#: NIR node type -> its importer. Adding a NIR node type means adding an entry here.
IMPORTERS: dict[str, Importer] = {}
#: NIR node types removed before the graph is built (folded into a neighbour): type -> function.
PASS_THROUGH: dict[str, Callable[..., None]] = {}
#: NIR node types refused with a reason of their own.
REFUSED: dict[str, str] = {"Conv1d": "1-D convolution is not supported (write it as a Conv2d with a height of 1)"}


def _imports(table: dict[str, Any], *kinds: str) -> Callable[[Any], Any]:
    def deco(fn: Any) -> Any:
        for k in kinds:
            table[k] = fn
        return fn
    return deco


def _shape(types: Any) -> tuple[int, ...]:
    arr = np.asarray(next(iter(types.values())) if types else [], dtype=np.int64).reshape(-1)
    return tuple(int(d) for d in arr)


def _ints(value: Any, n: int, where: str, name: str, what: str) -> tuple[int, ...]:
    """NIR's int or per-dimension ints (lists, arrays) as a tuple of n ints."""
    arr = np.asarray(value).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, n)
    if arr.size != n or arr.dtype.kind not in "iuf" or not np.array_equal(arr, np.rint(arr)) or (arr < 0).any():
        raise UnsupportedError(f"{where}: node '{name}' {what}: expected {n} integers >= 0, found {value!r}")
    return tuple(int(v) for v in arr)


def _pair(value: Any, where: str, name: str, what: str) -> tuple[int, int]:
    """NIR's int or (h, w) as two ints (:func:`_ints`)."""
    h, w = _ints(value, 2, where, name, what)
    return h, w


def _padding(value: Any, kernel: tuple[int, int], dilation: tuple[int, int], where: str,
             name: str) -> tuple[int, int, int, int]:
    """NIR padding: 'valid', 'same' (stride 1; torch puts the odd pixel at the bottom/right),
    (pad_h, pad_w) or (top, left, bottom, right), as (top, left, bottom, right)."""
    if isinstance(value, str):
        if value == "valid":
            return (0, 0, 0, 0)
        if value == "same":
            tot = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return (tot[0] // 2, tot[1] // 2, tot[0] - tot[0] // 2, tot[1] - tot[1] // 2)
        raise UnsupportedError(f"{where}: node '{name}' padding: expected 'valid', 'same' or integers, found {value!r}")
    if np.asarray(value).size == 4:
        t, l, b, r = _ints(value, 4, where, name, "padding")
        return t, l, b, r
    h, w = _pair(value, where, name, "padding")
    return h, w, h, w


@_imports(IMPORTERS, "Input")
def _import_input(name: str, n: Any, in_shape: Any, ctx: _Context) -> ir.Node:
    return ir.Input(name, _shape(n.input_type))


@_imports(IMPORTERS, "Output")
def _import_output(name: str, n: Any, in_shape: Any, ctx: _Context) -> ir.Node:
    return ir.Output(name, in_shape)


@_imports(IMPORTERS, "Affine", "Linear")
def _import_affine(name: str, n: Any, in_shape: Any, ctx: _Context) -> ir.Node:
    kind = type(n).__name__
    w = np.asarray(n.weight, dtype=np.float64)
    if w.ndim != 2:
        raise UnsupportedError(f"{ctx.where}: node '{name}' ({kind}): expected a 2-D weight, found {w.shape}")
    if math.prod(in_shape) != w.shape[1]:
        raise UnsupportedError(f"{ctx.where}: node '{name}' ({kind}): weight {w.shape} expects {w.shape[1]} "
                               f"inputs, found {math.prod(in_shape)} (shape {in_shape})")
    b = getattr(n, "bias", None) if kind == "Affine" else None
    b = np.zeros(w.shape[0]) if b is None else np.asarray(b, dtype=np.float64)
    return ir.Affine(name, w, np.broadcast_to(b, (w.shape[0],)))


@_imports(IMPORTERS, "Conv2d")
def _import_conv(name: str, n: Any, in_shape: Any, ctx: _Context) -> ir.Node:
    """NIR Conv2d: weight (C_out, C_in / groups, kH, kW); input_shape (H, W) (or (C, H, W))."""
    where = ctx.where
    w = np.asarray(n.weight, dtype=np.float64)
    if w.ndim != 4:
        raise UnsupportedError(f"{where}: node '{name}' (Conv2d): expected a 4-D weight (C_out, C_in/groups, kH, kW), "
                               f"found {w.shape}")
    groups = int(np.asarray(n.groups).reshape(-1)[0])
    c_in = w.shape[1] * groups
    hw = None if n.input_shape is None else tuple(int(d) for d in np.asarray(n.input_shape).reshape(-1))
    shape = tuple(in_shape) if in_shape is not None and len(in_shape) == 3 else None
    if shape is None and hw and len(hw) in (2, 3):
        shape = (c_in, *hw[-2:])
    if shape is None and in_shape is not None and math.prod(in_shape) % c_in == 0:
        side = math.isqrt(math.prod(in_shape) // c_in)
        shape = (c_in, side, side) if side * side * c_in == math.prod(in_shape) else None
    if shape is None or shape[0] != c_in or (hw and tuple(hw[-2:]) != shape[1:]) \
            or (in_shape is not None and math.prod(in_shape) != math.prod(shape)):
        raise UnsupportedError(f"{where}: node '{name}' (Conv2d): weight {w.shape} with groups={groups} and "
                               f"input_shape {hw} does not fit its input of shape {in_shape}")
    kernel = (int(w.shape[2]), int(w.shape[3]))
    dilation = _pair(n.dilation, where, name, "dilation")
    b = getattr(n, "bias", None)
    b = np.zeros(w.shape[0]) if b is None else np.broadcast_to(np.asarray(b, dtype=np.float64).reshape(-1), (w.shape[0],))
    return ir.Conv2d(name, shape, stride=_pair(n.stride, where, name, "stride"),
                     padding=_padding(n.padding, kernel, dilation, where, name), dilation=dilation,
                     groups=groups, weight=w, bias=b)


@_imports(IMPORTERS, "AvgPool2d", "SumPool2d")
def _import_pool(name: str, n: Any, in_shape: Any, ctx: _Context) -> ir.Node:
    """AvgPool2d as is; SumPool2d = k_h k_w AvgPool2d (the factor goes into the next synapse).
    Both fold into the next synapse at the end of the import (converter.fold.fold_linear)."""
    kind = type(n).__name__
    if in_shape is None or len(in_shape) != 3:
        raise UnsupportedError(f"{ctx.where}: node '{name}' ({kind}): expected a (C, H, W) input, found {in_shape}")
    kernel = _pair(n.kernel_size, ctx.where, name, "kernel_size")
    stride = kernel if getattr(n, "stride", None) is None else _pair(n.stride, ctx.where, name, "stride")
    if kind == "SumPool2d":
        ctx.gain_after[name] = float(kernel[0] * kernel[1])
    return ir.AvgPool2d(name, in_shape, kernel, stride, _padding(n.padding, kernel, (1, 1), ctx.where, name))


@_imports(IMPORTERS, "Flatten")
def _import_flatten(name: str, n: Any, in_shape: Any, ctx: _Context) -> ir.Node:
    node = ir.Flatten(name, in_shape, int(n.start_dim), int(n.end_dim))
    try:
        node.validate()
    except SpikeforgeError:
        raise UnsupportedError(f"{ctx.where}: node '{name}' (Flatten): start_dim {n.start_dim} / end_dim {n.end_dim} "
                               f"do not fit its input of shape {in_shape} (dims count without the batch)") from None
    return node


def _import_neuron(name: str, n: Any, in_shape: Any, ctx: _Context) -> _Neuron:
    neuron = NEURON_IMPORTERS[type(n).__name__](name, n, math.prod(in_shape), ctx.step, ctx.where, ctx.notes)
    return neuron._replace(node=neuron.node.replace(shape=tuple(in_shape)))


for _kind in NEURON_IMPORTERS:
    IMPORTERS[_kind] = _import_neuron


def _imported() -> tuple[str, ...]:
    return (*IMPORTERS, *PASS_THROUGH, "NIRGraph")


def load_nir(source: "str | Path | nir.NIRGraph", dt: float | str | StepLength | None = None) -> ir.Graph:
    """Read a NIR file (or graph) into a float IR graph, or, for a file spikeforge wrote, the
    quantized graph it came from. One step is the ``dt`` in the file's metadata, else ``dt``
    (seconds, or 'snntorch' / 'norse' / 'norse:DT' / 'sinabs'); neither is refused with the
    producers' conventions (:data:`DT_HINT`). Pooling folds into the following synapse."""
    g, where = _read(source)
    meta = dict(getattr(g, "metadata", {}) or {})
    step = step_length(dt)  # checked even where the file's own graph makes it unneeded
    if str(meta.get("producer", "")) == PRODUCER and "spikeforge.graph" in meta:
        recorded_graph = _spikeforge_graph(meta, where)
        edited = _edited_nodes(g, recorded_graph, meta)
        if not edited:
            return recorded_graph
        warnings.warn(f"{where}: edited after spikeforge exported it ({', '.join(edited[:5])}"
                      f"{' ...' if len(edited) > 5 else ''} changed): the file's nodes are imported, "
                      f"the quantized graph recorded in its metadata is ignored",
                      NIRImportWarning, stacklevel=2)
    recorded = meta.get("dt")
    if recorded is not None:
        rec = step_length(float(np.asarray(recorded).reshape(-1)[0]))
        assert rec is not None  # a number gives a StepLength
        if step is not None and step != rec:
            warnings.warn(f"{where}: the file records dt = {rec.lif} s; using the dt given, {step.name}",
                          NIRImportWarning, stacklevel=2)
        step = step or rec
    if step is None:
        raise SpikeforgeError(f"{where}: the file records no time step: give one with --dt. {DT_HINT}")
    nodes_in, edges = _inline(g, where)
    refused = [f"node '{k}' ({type(v).__name__}): {REFUSED[type(v).__name__]}" for k, v in nodes_in.items()
               if type(v).__name__ in REFUSED]
    if refused:
        raise UnsupportedError(f"{where}: {'; '.join(refused)}")
    bad = [f"node '{k}' ({type(v).__name__})" for k, v in nodes_in.items() if type(v).__name__ not in _imported()]
    if bad:
        raise UnsupportedError(f"{where}: unsupported NIR nodes: {', '.join(bad)}; supported: {', '.join(_imported())}")
    nodes_in, edges = _fold_pass_through(nodes_in, edges, where)
    graph, notes = _build(nodes_in, edges, step, where)
    for note in notes + _quantization_notes(graph, where):
        warnings.warn(note, NIRImportWarning, stacklevel=2)
    return graph.with_metadata(source=where, dt=step.lif if step.lif == step.if_ else
                               {"lif": step.lif, "if": step.if_}, nir_dt=step.name)


@_imports(PASS_THROUGH, "Delay")
def _drop_delay(name: str, n: Any, nodes: dict[str, Any], preds: list[str], succs: list[str],
                edges: list[tuple[str, str]], where: str) -> None:
    d = np.asarray(n.delay, np.float64)
    if d.size and np.any(d != 0):
        raise UnsupportedError(f"{where}: node '{name}' (Delay): a delay of {d.max():.4g} s cannot be "
                               f"expressed (every synapse has exactly one step of delay); only 0 folds away")


@_imports(PASS_THROUGH, "Scale")
def _fold_scale(name: str, n: Any, nodes: dict[str, Any], preds: list[str], succs: list[str],
                edges: list[tuple[str, str]], where: str) -> None:
    """x -> s x folded into the Affine/Linear map before it (rows) or after it (columns)."""
    import nir

    s = np.asarray(n.scale, np.float64).reshape(-1)
    if len(preds) == 1 and type(nodes[preds[0]]).__name__ in ("Affine", "Linear") \
            and len([b for a, b in edges if a == preds[0]]) == 1:
        p = nodes[preds[0]]
        w = np.asarray(p.weight, np.float64)
        b = np.asarray(getattr(p, "bias", np.zeros(w.shape[0])), np.float64)
        nodes[preds[0]] = nir.Affine(w * s[:, None] if s.size > 1 else w * s, b * s)
    elif len(succs) == 1 and type(nodes[succs[0]]).__name__ in ("Affine", "Linear") \
            and len([a for a, b in edges if b == succs[0]]) == 1:
        p = nodes[succs[0]]
        w = np.asarray(p.weight, np.float64)
        nodes[succs[0]] = nir.Affine(w * s[None, :] if s.size > 1 else w * s,
                                     np.asarray(getattr(p, "bias", np.zeros(w.shape[0])), np.float64))
    else:
        raise UnsupportedError(f"{where}: node '{name}' (Scale): expected next to an Affine or Linear map "
                               f"it can fold into, found {preds} -> {succs}")


def _fold_pass_through(nodes: dict[str, Any], edges: list[tuple[str, str]], where: str):
    """Remove the PASS_THROUGH nodes (Scale into the neighbouring affine map, zero Delay)."""
    nodes = dict(nodes)
    for name, n in list(nodes.items()):
        fn = PASS_THROUGH.get(type(n).__name__)
        if fn is None:
            continue
        preds = [a for a, b in edges if b == name]
        succs = [b for a, b in edges if a == name]
        fn(name, n, nodes, preds, succs, edges, where)
        del nodes[name]
        edges = [(a, b) for a, b in edges if name not in (a, b)] + [(a, b) for a in preds for b in succs]
    return nodes, edges


def _scaled(node: ir.Node, rows: np.ndarray | float, where: str) -> ir.Node:
    """A synapse with its output (per target neuron) multiplied by ``rows``: an Affine by
    rows, a Conv2d by channel (the factor must then be uniform over each channel's positions)."""
    rows = np.broadcast_to(np.asarray(rows, np.float64), (node.out_size,))
    assert isinstance(node, (ir.Affine, ir.Conv2d)), node.where()  # the import builds float synapses
    if isinstance(node, ir.Conv2d):
        per = rows.reshape(node.out_shape[0], -1)
        if not np.allclose(per, per[:, :1], rtol=1e-9, atol=0):
            raise UnsupportedError(f"{where}: {node.where()}: the neurons it feeds have thresholds or gains that "
                                   f"differ within a channel; a convolution needs one per channel")
        c = per[:, 0]
        return node.replace(weight=node.weight * c[:, None, None, None], bias=node.bias * c)
    return node.replace(weight=node.weight * rows[:, None], bias=node.bias * rows)


def _abs_drive(node: ir.Node) -> np.ndarray:
    """Per target neuron: sum |w| + |b| (the largest input from binary sources)."""
    assert isinstance(node, (ir.Affine, ir.Conv2d)), node.where()  # the import builds float synapses
    if isinstance(node, ir.Conv2d):
        per_c = np.abs(node.weight).reshape(node.weight.shape[0], -1).sum(axis=1) + np.abs(node.bias)
        return np.repeat(per_c, node.out_size // node.out_shape[0])
    return np.abs(node.weight).sum(axis=1) + np.abs(node.bias)


def _build(nodes_in: dict[str, Any], edges: list[tuple[str, str]], step: StepLength, where: str):
    """IR nodes from NIR nodes through :data:`IMPORTERS`, in an order where each node's input
    shape is known (a neuron in a cycle takes it from any built input); then identity synapses
    before neurons fed directly, SumPool gains and neuron folds into the synapses, LI thresholds,
    and pooling folded into the next synapse."""
    from spikeforge.converter.fold import fold_linear, identity_synapse

    ctx = _Context(step, where, [], {})
    preds = {k: [a for a, b in edges if b == k] for k in nodes_in}
    nodes: dict[str, ir.Node] = {}
    folds: dict[str, np.ndarray] = {}
    pending = list(nodes_in)
    while pending:
        progress = False
        for name in list(pending):
            n = nodes_in[name]
            kind = type(n).__name__
            known = [p for p in preds[name] if p in nodes]
            ready = kind == "Input" or (known and (kind in NEURON_IMPORTERS or len(known) == len(preds[name])))
            if not ready:
                continue
            made = IMPORTERS[kind](name, n, nodes[known[0]].out_shape if known else None, ctx)
            if isinstance(made, _Neuron):
                nodes[name], folds[name] = made.node, made.fold
            else:
                nodes[name] = made
            pending.remove(name)
            progress = True
        if not progress:
            raise UnsupportedError(f"{where}: nodes not reachable from an Input: "
                                   f"{', '.join(repr(p) for p in pending)}")
    # neurons fed directly (by an Input, a neuron, a pool, a nested graph's Input): an identity synapse
    new_edges: list[tuple[str, str]] = []
    for a, b in edges:
        if b in folds and not isinstance(nodes[a], ir.SYNAPSES):
            ident = f"{a}->{b}"
            nodes[ident] = identity_synapse(ident, nodes[a].out_shape)
            new_edges += [(a, ident), (ident, b)]
        else:
            new_edges.append((a, b))
    for pool, gain in ctx.gain_after.items():  # SumPool2d = k**2 AvgPool2d
        stack = [b for a, b in new_edges if a == pool]
        while stack:
            s = stack.pop()
            succ = nodes[s]
            if isinstance(succ, ir.Flatten):
                stack += [b for a, b in new_edges if a == s]
            elif isinstance(succ, ir.SYNAPSES):
                nodes[s] = succ.replace(weight=succ.weight * gain)
            else:
                raise UnsupportedError(f"{where}: node '{pool}' (SumPool2d) feeds {succ.where()}: a pool must be "
                                       f"followed by a synapse (Conv2d, or Flatten and Affine) it folds into")
    for a, b in new_edges:
        if b in folds:
            nodes[a] = _scaled(nodes[a], folds[b], where)
    li = [k for k, v in nodes_in.items() if type(v).__name__ == "LI"]
    for name in li:
        if any(not isinstance(nodes[b], ir.Output) for a, b in new_edges if a == name):
            raise UnsupportedError(f"{where}: node '{name}' (LI): supported as the readout (feeding the Output) only")
        drive = sum(_abs_drive(nodes[a]) for a, b in new_edges if b == name)
        readout = nodes[name]
        assert isinstance(readout, ir.LIF)  # _li builds one
        tau = readout.tau
        theta = float(np.max(drive, initial=0.0)) * (tau if math.isfinite(tau) else LI_HEADROOM) * 2 or 1.0
        nodes[name] = readout.replace(v_threshold=theta)
    order = [k for k in nodes_in] + [k for k in nodes if k not in nodes_in]
    try:
        graph = ir.Graph(tuple(nodes[k] for k in order), tuple(new_edges), {})
        graph = fold_linear(graph)
    except SpikeforgeError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    return graph, ctx.notes


def _quantization_notes(graph: ir.Graph, where: str) -> list[str]:
    """Layers whose quantized parameters clip, or that cannot reach their threshold."""
    from spikeforge.converter.passes import quantize

    notes = []
    for node in graph.of_type(ir.LIF):
        if math.isfinite(node.tau) and fixedpoint.dv_for_tau(node.tau) == 0:
            notes.append(f"{where}: node '{node.name}' tau: {node.tau:.4g} steps rounds to no leak (dv = 0): "
                         f"it runs as IF (is dt right? {DT_HINT})")
        if node.tau_syn > 1 and round(fixedpoint.DECAY_UNITY / node.tau_syn) - 1 <= 0:
            notes.append(f"{where}: node '{node.name}' tau_syn: {node.tau_syn:.4g} steps clips to du = 0")
    try:
        fixed = quantize(graph)
    except SpikeforgeError:
        return notes
    reports = {r["layer"]: r for r in fixed.metadata.get("quantization", [])}
    for node in fixed.of_type(ir.FixedLIF):
        rep = reports.get(node.name, {})
        source = graph.node(node.name)
        if isinstance(source, ir.LIF) and source.v_threshold > 1:
            continue  # an LI readout: it does not fire
        if node.vth == ir.BITS["vth"].hi:
            notes.append(f"{where}: node '{node.name}': its threshold is {1 / max(_max_weight(graph, node.name), 1e-300):.4g} "
                         f"times its largest weight: vth clipped to {ir.BITS['vth'].hi} (is dt right? {DT_HINT})")
        if rep.get("clipped_weights") or rep.get("saturated_biases"):
            notes.append(f"{where}: node '{node.name}': {rep['clipped_weights']} weights and "
                         f"{rep['saturated_biases']} biases clipped to their bit widths")
        if not _can_fire(fixed, node):
            notes.append(f"{where}: node '{node.name}': its largest possible input cannot reach its threshold: "
                         f"the layer cannot fire (is dt right? {DT_HINT})")
    return notes


def _max_weight(graph: ir.Graph, layer: str) -> float:
    syns = [graph.node(a) for a in graph.predecessors(layer)]
    return max((float(np.abs(s.weight).max(initial=0)) for s in syns if isinstance(s, ir.SYNAPSES)), default=0.0)


def _can_fire(graph: ir.Graph, node: ir.FixedLIF) -> bool:
    """Upper bound of v (every excitatory input at its maximum every step) > vth << 6."""
    drive = node.bias.astype(np.float64)
    for a in graph.predecessors(node.name):
        aff = graph.node(a)
        assert isinstance(aff, ir.FIXED_SYNAPSES), aff.where()  # a quantized graph's neurons are fed so
        src = graph.node(graph.source_through_flatten(graph.predecessors(a)[0]))
        in_max = src.payload_max if isinstance(src, ir.Input) else 1
        pos = np.clip(aff.weight, 0, None).reshape(aff.weight.shape[0], -1).sum(axis=1)
        pos = np.repeat(pos, aff.out_size // pos.size)  # a conv: per channel, at every position
        drive = drive + pos * in_max * fixedpoint.act_to_state(2.0**aff.weight_exp)
    if node.du < fixedpoint.DU_NONE:
        drive = drive * fixedpoint.tau_for_decay(node.du + 1)
    if node.dv == 0:
        return bool((drive > 0).any())
    return bool((node.v_rest + drive * fixedpoint.tau_for_decay(node.dv) > node.vth_scaled).any())


# -- export ----------------------------------------------------------------------------------
TARGETS = ("nir", "snntorch", "sinabs")
SNNTORCH_DT = 1e-4  # snnTorch's import_from_nir hard-codes dt = 1e-4 s


def sinabs_threshold(theta: int) -> float:
    """The threshold written for Sinabs, which fires on v >= threshold and subtracts it:
    theta + delta, delta = 2**(floor(log2 theta) - 22) (two float32 ulps of theta). On integer
    sums v >= theta + delta is v > theta, and the k-th spike's extra k delta keeps it so while
    (k + 1) delta <= 1: the first 1 / delta - 1 spikes of each neuron (63 for theta ~ 1e5)."""
    return float(theta) + 2.0 ** (math.floor(math.log2(max(theta, 1))) - 22)
IF_AS_LIF_STEPS = 2.0**30  # tau of an IF written as LIF: beta = 1 - 2**-30 == 1 in float32


def _encode_spikeforge(graph: ir.Graph) -> dict[str, Any]:
    from spikeforge import graphio

    arrays: dict[str, np.ndarray] = {}
    doc = graphio._encode_graph("snn", graph, arrays)
    meta: dict[str, Any] = {"spikeforge.graph": json.dumps(doc)}
    for ref, arr in arrays.items():
        meta["spikeforge.array." + ref.replace("/", ":")] = np.ascontiguousarray(arr)
    return meta


def _spikeforge_graph(meta: dict[str, Any], where: str) -> ir.Graph:
    """The quantized graph spikeforge recorded in a NIR file's metadata, decoded and checked as
    a graph file's graph.json is (spikeforge.graphio.decode_graph)."""
    from spikeforge import graphio

    doc = graphio.parse_document(str(meta["spikeforge.graph"]), f"{where}: spikeforge metadata")

    def read(node: str, fname: str, ref: str) -> np.ndarray:
        key = "spikeforge.array." + ref.replace("/", ":")
        if key not in meta:
            raise SpikeforgeError(f"{where}: spikeforge metadata: node '{node}' array {fname} is missing")
        return graphio.check_array(np.asarray(meta[key]), f"{where}: spikeforge metadata: node '{node}' array {fname}")

    return graphio.decode_graph(f"{where}: spikeforge metadata", "snn", doc, read)


def _edited_nodes(g: Any, recorded: ir.Graph, meta: dict[str, Any]) -> list[str]:
    """The nodes (and edges) of a NIR file spikeforge wrote that are no longer what the
    recorded quantized graph exports to (with the file's dt and target): a file edited after
    export must run as its nodes say, not as the record says. Values compare exactly as
    float64 (the file holds what the exporter wrote); [] when nothing was changed."""
    try:
        target = str(meta.get("target", "nir"))
        expected = to_nir(recorded, float(np.asarray(meta.get("dt", 1.0)).reshape(-1)[0]),
                          target if target in TARGETS else "nir")
    except (SpikeforgeError, ValueError, TypeError):
        return ["the nodes (the record no longer exports)"]
    changed = [f"node '{k}'" for k in sorted(set(g.nodes) ^ set(expected.nodes))]
    for name in sorted(set(g.nodes) & set(expected.nodes)):
        a, b = g.nodes[name], expected.nodes[name]
        if type(a).__name__ != type(b).__name__:
            changed.append(f"node '{name}' ({type(a).__name__})")
            continue
        for field in sorted(set(vars(a)) | set(vars(b))):
            if field in ("metadata", "input_type", "output_type"):
                continue
            if field not in vars(a) or field not in vars(b):
                if not (target == "sinabs" and field == "v_reset"):  # dropped for Sinabs' nir
                    changed.append(f"node '{name}' ({type(a).__name__}) {field}")
                continue
            x, y = vars(a)[field], vars(b)[field]
            try:
                same = np.array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))
            except (TypeError, ValueError):
                same = str(x) == str(y)
            if not same:
                changed.append(f"node '{name}' ({type(a).__name__}) {field}")
    if sorted(map(tuple, g.edges)) != sorted(map(tuple, expected.edges)):
        changed.append("the edges")
    return changed


def _export_problems(graph: ir.Graph, target: str = "nir") -> list[str]:
    """Every node the target cannot run as spikeforge does, each named with the reason."""
    neuron_problems = _sinabs_neuron_problems if target == "sinabs" else _nir_neuron_problems
    problems = []
    for node in graph.nodes:
        if isinstance(node, (ir.FixedLIF, ir.IF, ir.LIF)):
            problems += neuron_problems(node)
        elif isinstance(node, (ir.Conv2d, ir.FixedConv2d)):
            if symmetric_padding(node.geometry) is None:
                problems.append(f"{node.where()}: padding (top, left, bottom, right) = {node.padding}: NIR's "
                                f"Conv2d pads symmetrically (pad_h, pad_w)")
            if node.groups != 1:
                problems.append(f"{node.where()}: groups = {node.groups}: nir 1.0.8's type inference, Norse and "
                                f"snnTorch read C_in = weight.shape[1], so the file would not load")
        elif type(node) not in EXPORTERS:
            problems.append(f"{node.where()}: no NIR equivalent")
    return problems


def _sinabs_neuron_problems(node: ir.FixedLIF | ir.IF | ir.LIF) -> list[str]:
    """Sinabs' from_nir runs NIR's IF as its IAF: reset by subtraction (whatever v_reset says),
    r ignored; spikeforge's IF layers that reset by subtraction are what it computes."""
    if_ = (node.du == fixedpoint.DU_NONE and node.dv == 0 and not node.leak) \
        if isinstance(node, ir.FixedLIF) else isinstance(node, ir.IF)
    if not if_:
        return [f"{node.where()}: --target sinabs writes IF layers only (du = 4095, dv = 0, "
                f"no leak: Sinabs' LIF import decays differently)"]
    if node.reset != "subtract" or bool(getattr(node, "refractory", 0)):
        return [f"{node.where()}: reset='{node.reset}': Sinabs' from_nir runs IF with reset "
                f"by subtraction only (convert with --reset subtract)"]
    return []


def _nir_neuron_problems(node: ir.FixedLIF | ir.IF | ir.LIF) -> list[str]:
    """NIR's IF/LIF/CubaLIF reset to v_reset and have no leak or refractory period."""
    if isinstance(node, ir.FixedLIF):
        problems = []
        if node.reset == "subtract":
            problems.append(f"{node.where()}: reset by subtraction has no NIR equivalent "
                            f"(convert with --reset zero)")
        if node.leak or node.refractory:
            problems.append(f"{node.where()}: leak={node.leak}, refractory={node.refractory}: "
                            f"only leak=0, refractory=0 map to NIR's IF/LIF/CubaLIF")
        return problems
    if node.reset == "subtract" or bool(getattr(node, "refractory", 0)):
        return [f"{node.where()}: reset='{node.reset}', refractory={getattr(node, 'refractory', 0)} "
                f"have no NIR equivalent"]
    return []


class _Export(NamedTuple):
    """What the exporters share: the graph, one step in seconds, the target, per neuron layer
    the factor on its incoming weights, each Input's payload for rate 1, Flattens left out."""

    graph: ir.Graph
    dt: float
    target: str
    weight_scale: dict[str, float]
    payload: dict[str, int]
    skip: set[str]


#: IR node type -> (node, context) -> its NIR node. Adding a layer type means adding an entry.
EXPORTERS = ir.Registry("NIR export")


@EXPORTERS.register(ir.Input)
def _export_input(node: ir.Input, ctx: _Export) -> Any:
    import nir

    # an affine map reads a flat vector: an (8, 8) input straight into one is written flat
    flat = any(s in ctx.skip or isinstance(ctx.graph.node(s), (ir.Affine, ir.FixedAffine))
               for s in ctx.graph.successors(node.name))
    return nir.Input(input_type={"input": np.array((node.in_size,) if flat else node.shape)})


@EXPORTERS.register(ir.Output)
def _export_output(node: ir.Output, ctx: _Export) -> Any:
    import nir

    return nir.Output(output_type={"output": np.array(node.shape)})


@EXPORTERS.register(ir.Flatten)
def _export_flatten(node: ir.Flatten, ctx: _Export) -> Any:
    """Dims written counted from the end (NIR's meaning per sample, and a torch consumer's
    Flatten then leaves the batch dim alone)."""
    import nir

    s, e = node._span()
    n = len(node.input_shape)
    return nir.Flatten(input_type={"input": np.array(node.input_shape)}, start_dim=s - n, end_dim=e - n)


@EXPORTERS.register(ir.AvgPool2d)
def _export_pool(node: ir.AvgPool2d, ctx: _Export) -> Any:
    import nir

    pad = symmetric_padding(node.geometry)
    if pad is None:
        raise UnsupportedError(f"{node.where()}: padding {node.padding}: NIR pads symmetrically")
    return nir.AvgPool2d(kernel_size=np.array(node.kernel_size), stride=np.array(node.stride), padding=np.array(pad))


def _synapse_weights(node: ir.Affine | ir.FixedAffine | ir.Conv2d | ir.FixedConv2d,
                     ctx: _Export) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias per output neuron) in the units the consumer integrates: state units
    (w 2**e << 6, times the payload of a rate 1) for fixed synapses, scaled by the target
    layer's factor; the target FixedLIF's bias is carried by its first incoming synapse
    (Lava adds it to v, not to u: through a current filter it is divided by its gain)."""
    (dst,) = ctx.graph.successors(node.name)
    k = ctx.weight_scale.get(dst, 1.0)
    if isinstance(node, ir.FIXED_SYNAPSES):
        src = ctx.graph.source_through_flatten(ctx.graph.predecessors(node.name)[0])
        w = node.weight * (fixedpoint.act_to_state(2.0**node.weight_exp) * ctx.payload.get(src, 1))
        b = np.zeros(node.out_size)
    else:
        w = node.weight
        b = np.repeat(node.bias, node.out_size // node.bias.shape[0])
    target = ctx.graph.node(dst)
    if isinstance(target, ir.FixedLIF) and ctx.graph.predecessors(dst)[0] == node.name:
        tau_syn = fixedpoint.tau_for_decay(target.du + 1) if target.du < fixedpoint.DU_NONE else 1.0
        b = b + target.bias / tau_syn
    return w * k, b * k


@EXPORTERS.register(ir.Affine, ir.FixedAffine)
def _export_affine(node: ir.Affine | ir.FixedAffine, ctx: _Export) -> Any:
    import nir

    w, b = _synapse_weights(node, ctx)
    return nir.Affine(w, b)


@EXPORTERS.register(ir.Conv2d, ir.FixedConv2d)
def _export_conv(node: ir.Conv2d | ir.FixedConv2d, ctx: _Export) -> Any:
    """NIR Conv2d: input_shape (H, W), symmetric padding (pad_h, pad_w), a bias per channel."""
    import nir

    w, b = _synapse_weights(node, ctx)
    per = b.reshape(node.out_shape[0], -1)
    if not np.allclose(per, per[:, :1], rtol=1e-12, atol=0):
        raise UnsupportedError(f"{node.where()}: the neurons it feeds have biases that differ within a channel; "
                               f"NIR's Conv2d has one per channel")
    pad = symmetric_padding(node.geometry)
    assert pad is not None  # refused by the export checks
    return nir.Conv2d(input_shape=tuple(node.input_shape[1:]), weight=w, stride=tuple(node.stride),
                      padding=pad, dilation=tuple(node.dilation), groups=node.groups, bias=per[:, 0].copy())


@EXPORTERS.register(ir.FixedLIF)
def _export_fixed_lif(node: ir.FixedLIF, ctx: _Export) -> Any:
    ones = np.ones(node.shape)
    theta = ones * (sinabs_threshold(node.vth_scaled) if ctx.target == "sinabs" else float(node.vth_scaled))
    v_reset = ones * (float(node.v_reset) if node.reset == "value" else 0.0)
    tau = fixedpoint.tau_for_decay(node.dv)
    return _neuron(ones, theta, v_reset, tau, float(node.v_rest),
                   fixedpoint.tau_for_decay(node.du + 1) if node.du < fixedpoint.DU_NONE else 1.0, ctx.dt, ctx.target)


@EXPORTERS.register(ir.IF, ir.LIF)
def _export_float_neuron(node: ir.IF | ir.LIF, ctx: _Export) -> Any:
    ones = np.ones(node.shape)
    theta = ones * node.v_threshold
    if ctx.target == "sinabs":  # Sinabs fires on v >= threshold
        theta = np.nextafter(theta, np.inf)
    tau = getattr(node, "tau", math.inf)
    v_reset = ones * (node.v_reset if isinstance(node, ir.LIF) and node.reset == "value" else 0.0)
    return _neuron(ones, theta, v_reset, tau, getattr(node, "v_leak", 0.0), getattr(node, "tau_syn", 1.0),
                   ctx.dt, ctx.target)


def to_nir(graph: ir.Graph, dt: float = 1.0, target: str = "nir") -> "nir.NIRGraph":
    """The NIR graph :func:`save_nir` writes (see the module docstring); each node through
    :data:`EXPORTERS`."""
    import nir

    if target not in TARGETS:
        raise SpikeforgeError(f"target: expected one of {', '.join(TARGETS)}, found {target!r}")
    if not (dt > 0 and math.isfinite(dt)):
        raise SpikeforgeError(f"dt: expected a step length > 0 seconds, found {dt}")
    if target == "snntorch":
        dt = SNNTORCH_DT
    problems = _export_problems(graph, target)
    if problems:
        raise UnsupportedError("cannot export to NIR: " + "; ".join(problems))
    # per neuron layer: (its threshold and gain as written) -> factor on its incoming weights
    weight_scale: dict[str, float] = {}
    for node in graph.nodes:
        if isinstance(node, ir.FixedLIF):
            weight_scale[node.name] = fixedpoint.tau_for_decay(node.dv) if node.dv else 1.0
        elif isinstance(node, ir.LIF):
            weight_scale[node.name] = node.r
    # a Flatten right after the Input of 1-D data is left out: consumers run it over the batch
    skip = {n.name for n in graph.of_type(ir.Flatten)
            if isinstance(graph.node(graph.predecessors(n.name)[0]), ir.Input) and len(n.out_shape) == 1}
    edges = []
    for a, b in graph.edges:
        if a in skip:
            continue
        if b in skip:
            b = graph.successors(b)[0]
        edges.append((a, b))
    ctx = _Export(graph, dt, target, weight_scale, {n.name: n.payload_max for n in graph.inputs}, skip)
    out = {node.name: EXPORTERS.lookup(node)(node, ctx) for node in graph.nodes if node.name not in skip}
    meta: dict[str, Any] = {"dt": float(dt), "producer": PRODUCER, "target": target}
    if graph.is_fixed():
        meta.update(_encode_spikeforge(graph))
    return nir.NIRGraph(nodes=out, edges=[list(e) for e in edges], metadata=meta)


def _neuron(ones: np.ndarray, theta: np.ndarray, v_reset: np.ndarray, tau: float, v_leak: float,
            tau_syn: float, dt: float, target: str) -> Any:
    """One neuron layer, per step: v += (1 / tau)(v_leak - v) + I (the incoming weights carry tau)."""
    import nir

    if tau_syn > 1:  # CubaLIF: I += (1 / tau_syn)(w_in x - I) with w_in = tau_syn: a gain of one
        tau_mem = tau if math.isfinite(tau) else IF_AS_LIF_STEPS
        return nir.CubaLIF(tau_syn=ones * tau_syn * dt, tau_mem=ones * tau_mem * dt, r=ones * (1.0 if math.isfinite(tau) else tau_mem),
                           v_leak=ones * v_leak, v_threshold=theta, v_reset=v_reset, w_in=ones * tau_syn)
    if math.isfinite(tau):
        return nir.LIF(tau=ones * tau * dt, r=ones, v_leak=ones * v_leak, v_threshold=theta, v_reset=v_reset)
    if target == "snntorch":  # snnTorch reads IF as a leaky neuron (beta 0.9): write LIF with beta = 1
        return nir.LIF(tau=ones * IF_AS_LIF_STEPS * dt, r=ones * IF_AS_LIF_STEPS, v_leak=0 * ones,
                       v_threshold=theta, v_reset=v_reset)
    return nir.IF(r=ones / dt, v_threshold=theta, v_reset=v_reset)


def save_nir(graph: ir.Graph, path: str | Path, dt: float = 1.0, target: str = "nir") -> None:
    """Write a quantized (or float IF/LIF) graph to NIR; one step = ``dt`` seconds."""
    import nir

    path = Path(path)
    try:
        nir_graph = to_nir(graph, dt, target)
    except SpikeforgeError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    except ValueError as exc:  # NIR's own type inference along the edges
        raise UnsupportedError(f"{path}: cannot export to NIR: NIR refuses the graph's types "
                               f"({str(exc).splitlines()[0][:200]})") from None
    with atomic_path(path) as tmp:
        nir.write(str(tmp), nir_graph)
        if target == "sinabs":
            _drop_if_v_reset(tmp)


def _drop_if_v_reset(path: Path) -> None:
    """Remove IF nodes' v_reset from a written file: Sinabs pins nir <= 1.0.4, whose IF has no
    v_reset (and refuses it); nir >= 1.0.5 reads a missing v_reset as 0."""
    import h5py

    with h5py.File(path, "r+") as f:
        nodes = f["node/nodes"]
        for name in list(nodes):
            group = nodes[name]
            kind = group["type"][()]
            if (kind.decode() if isinstance(kind, bytes) else str(kind)) == "IF" and "v_reset" in group:
                del group["v_reset"]
