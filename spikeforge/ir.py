"""spikeforge's intermediate representation.

A :class:`Graph` is a set of frozen node dataclasses and directed edges. Node names follow
NIR where NIR has the concept (``Input``, ``Output``, ``Affine``, ``Flatten``, ``IF``, ``LIF``);
the rest is what conversion to Loihi 2 needs and NIR lacks: ``ReLU`` (the ANN activation
before conversion), reset by subtraction, and the fixed-point nodes ``FixedAffine`` and
``FixedLIF`` whose every integer states its bit width and range (see :data:`BITS`).

A graph validates itself on construction; passes are pure ``Graph -> Graph`` functions.
Time is discrete (dt = 1 step). Every edge that enters a neuron through an affine map
carries exactly one step of delay (docs/semantics.md), so cycles are allowed as long as each
one passes through a neuron node.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Literal, Mapping, Sequence, TypeVar

import numpy as np

from spikeforge.errors import GraphError, UnsupportedError

Reset = Literal["zero", "subtract"]
RESETS: tuple[str, ...] = ("zero", "subtract")
#: Fixed-point neurons also reset to a value: v <- v_reset.
FIXED_RESETS: tuple[str, ...] = ("zero", "subtract", "value")


@dataclass(frozen=True)
class IntRange:
    """A fixed-point field: ``bits`` wide, values in ``[lo, hi]``."""

    bits: int
    lo: int
    hi: int
    signed: bool

    def check(self, where: str, value: np.ndarray | int) -> None:
        arr = np.asarray(value)
        if arr.size == 0:
            return
        if not np.issubdtype(arr.dtype, np.integer):
            raise GraphError(f"{where}: expected integers, found dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < self.lo or hi > self.hi:
            kind = "signed" if self.signed else "unsigned"
            raise GraphError(
                f"{where}: expected {kind} {self.bits}-bit values in [{self.lo}, {self.hi}], "
                f"found [{lo}, {hi}]"
            )


#: Loihi 2 fixed-point fields as Lava 0.10's bit-accurate models declare them.
BITS: Mapping[str, IntRange] = {
    # Weight mantissa: 8 bits signed. Lava is given 2*w with weight_exp - 1 so that no bit is lost.
    "weight": IntRange(8, -128, 127, True),
    "weight_exp": IntRange(4, -8, 7, True),
    "vth": IntRange(17, 0, 2**17 - 1, False),
    "du": IntRange(12, 0, 4095, False),
    "dv": IntRange(12, 0, 4095, False),
    "bias_mant": IntRange(13, -4096, 4095, True),
    "bias_exp": IntRange(3, 0, 7, False),
    "refractory": IntRange(8, 0, 255, False),
    "leak": IntRange(23, 0, 2**23 - 1, False),
    "v_rest": IntRange(24, -(2**23) + 1, 2**23 - 1, True),
    "v_reset": IntRange(24, -(2**23) + 1, 2**23 - 1, True),
    "seed": IntRange(32, 0, 2**32 - 1, False),
    "payload": IntRange(8, 0, 255, False),
    # State: v saturates at 24 bits signed; u wraps once as Lava does (x > 2**23 loses 2**24,
    # then x <= -2**23 gains 2**24), so an input far beyond 24 bits can leave u outside them.
    "state": IntRange(24, -(2**23) + 1, 2**23 - 1, True),
}


def _as_array(x: object, dtype: type) -> np.ndarray:
    arr = np.array(x, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


def _as_int_array(x: object, where: str) -> np.ndarray:
    """An int64 copy of x; refuses NaN, inf and fractional values instead of casting them."""
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise GraphError(f"{where}: expected integers, found NaN or inf")
        if not np.array_equal(arr, np.rint(arr)):
            raise GraphError(f"{where}: expected integers, found fractional values")
    elif arr.dtype.kind not in "biu":
        raise GraphError(f"{where}: expected integers, found dtype {arr.dtype}")
    return _as_array(arr, np.int64)


@dataclass(frozen=True, eq=False)
class Node:
    """Base of all IR nodes. ``in_size``/``out_size`` are flat feature counts per sample."""

    name: str

    @property
    def in_size(self) -> int:
        raise NotImplementedError(type(self).__name__)  # every concrete node overrides it

    @property
    def out_size(self) -> int:
        raise NotImplementedError(type(self).__name__)

    def validate(self) -> None:
        """Check the node's own parameters (ranges, shapes). Raises GraphError."""
        if not self.name or not isinstance(self.name, str):
            raise GraphError(f"node name: expected a non-empty string, found {self.name!r}")

    def replace(self, **changes: object) -> "Node":
        return dataclasses.replace(self, **changes)

    def where(self) -> str:
        return f"node '{self.name}' ({type(self).__name__})"


@dataclass(frozen=True, eq=False)
class Input(Node):
    """Graph input; values are rates in [0, 1], sent as ``payload_bits``-bit graded spikes."""

    shape: tuple[int, ...]
    payload_bits: int = 8

    @property
    def in_size(self) -> int:
        return math.prod(self.shape)

    @property
    def out_size(self) -> int:
        return math.prod(self.shape)

    def validate(self) -> None:
        super().validate()
        if not self.shape or any(int(d) <= 0 for d in self.shape):
            raise GraphError(f"{self.where()}: shape must be positive, found {self.shape}")
        if not 1 <= self.payload_bits <= 8:
            raise GraphError(
                f"{self.where()}: payload_bits must be in [1, 8], found {self.payload_bits}"
            )

    @property
    def payload_max(self) -> int:
        """Integer payload that stands for the rate 1.0."""
        return 2**self.payload_bits - 1


@dataclass(frozen=True, eq=False)
class Output(Node):
    """Graph output: the readout of the node feeding it."""

    shape: tuple[int, ...]

    @property
    def in_size(self) -> int:
        return math.prod(self.shape)

    @property
    def out_size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, eq=False)
class Flatten(Node):
    """Reshape to a flat vector (a no-op on flat per-sample data)."""

    input_shape: tuple[int, ...]

    @property
    def in_size(self) -> int:
        return math.prod(self.input_shape)

    @property
    def out_size(self) -> int:
        return math.prod(self.input_shape)


@dataclass(frozen=True, eq=False)
class Affine(Node):
    """y = W x + b, float (NIR Affine). ``weight`` has shape (out, in)."""

    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _as_array(self.weight, np.float64))
        object.__setattr__(self, "bias", _as_array(self.bias, np.float64))

    @property
    def in_size(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_size(self) -> int:
        return int(self.weight.shape[0])

    def validate(self) -> None:
        super().validate()
        if self.weight.ndim != 2:
            raise GraphError(f"{self.where()}: weight must be 2-D (out, in), found {self.weight.shape}")
        if self.bias.shape != (self.weight.shape[0],):
            raise GraphError(
                f"{self.where()}: bias shape expected ({self.weight.shape[0]},), found {self.bias.shape}"
            )
        if not (np.isfinite(self.weight).all() and np.isfinite(self.bias).all()):
            raise GraphError(f"{self.where()}: weight and bias must be finite, found NaN or inf")


@dataclass(frozen=True, eq=False)
class Population(Node):
    """A layer of ``size`` neurons (or ANN units): as many values in as out."""

    size: int

    @property
    def in_size(self) -> int:
        return self.size

    @property
    def out_size(self) -> int:
        return self.size

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.size, (int, np.integer)) or self.size < 1:
            raise GraphError(f"{self.where()}: size must be a positive integer, found {self.size!r}")


@dataclass(frozen=True, eq=False)
class ReLU(Population):
    """y = clip(x, 0, upper) (ANN activation; ``upper=None`` is an unbounded ReLU)."""

    upper: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.upper is not None and not self.upper > 0:
            raise GraphError(f"{self.where()}: upper bound must be > 0, found {self.upper}")


@dataclass(frozen=True, eq=False)
class IF(Population):
    """Integrate-and-fire, discrete time: v += I; spike if v > v_threshold; reset.

    ``reset='zero'`` sets v = 0 after a spike (NIR's v_reset = 0); ``'subtract'`` sets
    v -= v_threshold, which NIR lacks and conversion accuracy needs.
    """

    v_threshold: float = 1.0
    reset: Reset = "subtract"

    def validate(self) -> None:
        super().validate()
        if self.reset not in RESETS:
            raise GraphError(f"{self.where()}: reset must be one of {RESETS}, found {self.reset!r}")
        if not self.v_threshold > 0:
            raise GraphError(f"{self.where()}: v_threshold must be > 0, found {self.v_threshold}")


@dataclass(frozen=True, eq=False)
class LIF(Population):
    """Leaky integrate-and-fire, discrete time (dt = 1 step), NIR's LIF with a step as time unit:

        v_t = v_leak + (1 - 1/tau) (v_{t-1} - v_leak) + (r / tau) I_t
        spike if v_t > v_threshold; then v = 0 ('zero'), v_reset ('value') or v - v_threshold
        ('subtract'); ``refractory`` steps after a spike hold v and allow no spike.

    ``tau`` >= 1 in steps (tau = 1 has no memory); tau = inf is an IF neuron: v_t = v_{t-1} + r I_t.
    """

    tau: float
    v_threshold: float = 1.0
    v_leak: float = 0.0
    v_reset: float = 0.0
    r: float = 1.0
    reset: str = "subtract"
    refractory: int = 0

    def validate(self) -> None:
        super().validate()
        if self.reset not in FIXED_RESETS:
            raise GraphError(f"{self.where()}: reset must be one of {FIXED_RESETS}, found {self.reset!r}")
        if not self.tau >= 1:
            raise GraphError(f"{self.where()} tau: expected >= 1 step, found {self.tau}")
        if not self.v_threshold > 0:
            raise GraphError(f"{self.where()} v_threshold: expected > 0, found {self.v_threshold}")
        if not self.r > 0:
            raise GraphError(f"{self.where()} r: expected > 0, found {self.r}")
        BITS["refractory"].check(f"{self.where()} refractory", int(self.refractory))


@dataclass(frozen=True, eq=False)
class Stochastic(Population):
    """Memoryless stochastic neuron: fires on each step with probability clip(I, 0, 1), I its
    input current (weights times the previous step's spikes, plus bias). Its mean is a
    clipped ReLU of the mean input; quantized to :class:`FixedStochastic`."""

    seed: int = 0

    def validate(self) -> None:
        super().validate()
        BITS["seed"].check(f"{self.where()} seed", self.seed)


@dataclass(frozen=True, eq=False)
class FixedAffine(Node):
    """Loihi 2 dense synapses: a = floor(sum_j w_ij * s_j * 2**weight_exp).

    ``weight`` (out, in): 8-bit signed mantissas in [-128, 127]; ``weight_exp`` in [-8, 7].
    ``s_j`` is a binary spike or, from an Input, a graded payload in [0, 255].
    """

    weight: np.ndarray
    weight_exp: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _as_int_array(self.weight, f"{self.where()} weight"))
        object.__setattr__(self, "weight_exp", int(self.weight_exp))

    @property
    def in_size(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_size(self) -> int:
        return int(self.weight.shape[0])

    def validate(self) -> None:
        super().validate()
        if self.weight.ndim != 2:
            raise GraphError(f"{self.where()}: weight must be 2-D (out, in), found {self.weight.shape}")
        BITS["weight"].check(f"{self.where()} weight", self.weight)
        BITS["weight_exp"].check(f"{self.where()} weight_exp", self.weight_exp)


@dataclass(frozen=True, eq=False)
class FixedPopulation(Population):
    """Fixed-point neurons with a threshold and a bias: vth 17-bit unsigned (compared as
    vth << 6), bias_mant 13-bit signed per neuron, bias_exp 3-bit unsigned; the effective
    per-step bias is bias_mant << bias_exp state units. ``SCALARS`` are validated by BITS."""

    vth: int
    bias_mant: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    bias_exp: int = 0

    SCALARS: ClassVar[tuple[str, ...]] = ("vth", "bias_exp")

    def __post_init__(self) -> None:
        bias = np.asarray(self.bias_mant)
        if bias.size == 0:
            bias = np.zeros(self.size, np.int64)
        object.__setattr__(self, "bias_mant", _as_int_array(bias, f"{self.where()} bias_mant"))
        for name in ("size", *self.SCALARS):
            value = getattr(self, name)
            if isinstance(value, (np.integer, float)) and float(value) == int(value):
                object.__setattr__(self, name, int(value))

    @property
    def vth_scaled(self) -> int:
        """Threshold in state units: vth << 6."""
        return self.vth << 6

    @property
    def bias(self) -> np.ndarray:
        """Effective per-step bias in state units: bias_mant << bias_exp."""
        return self.bias_mant << self.bias_exp

    def validate(self) -> None:
        super().validate()
        for key in self.SCALARS:
            value = getattr(self, key)
            if not isinstance(value, (int, np.integer)):
                raise GraphError(f"{self.where()} {key}: expected an integer, found {value!r}")
            BITS[key].check(f"{self.where()} {key}", value)
        if self.bias_mant.shape != (self.size,):
            raise GraphError(
                f"{self.where()}: bias_mant shape expected ({self.size},), found {self.bias_mant.shape}"
            )
        BITS["bias_mant"].check(f"{self.where()} bias_mant", self.bias_mant)


@dataclass(frozen=True, eq=False)
class FixedLIF(FixedPopulation):
    """Loihi 2 CUBA LIF in fixed point (Lava 0.10 bit-accurate arithmetic), per step:

        u = wrap24(trunc(u * (4096 - du - 1) / 4096) + (a << 6))
        v = sat24(v_rest + leak(trunc((v - v_rest) * (4096 - dv) / 4096)) + u + (bias_mant << bias_exp))
        s = v > vth << 6 ;  v = 0 ('zero') | v_reset ('value') | v - (vth << 6) ('subtract') where s

    ``leak`` shrinks |v - v_rest| by a constant without crossing v_rest (subtractive leak);
    ``refractory`` steps after a spike hold v and allow no spike. IF is du = 4095, dv = 0.
    Fields: du/dv 12-bit unsigned, v_rest/v_reset 24-bit signed, leak 23-bit unsigned,
    refractory 8-bit unsigned (and those of FixedPopulation). With v_rest = v_reset = leak =
    refractory = 0 and reset 'zero' this is Lava's stock LIF; everything else runs in
    spikeforge's own Lava process model.
    """

    du: int = 4095
    dv: int = 0
    reset: str = "subtract"
    v_rest: int = 0
    v_reset: int = 0
    leak: int = 0
    refractory: int = 0

    SCALARS: ClassVar[tuple[str, ...]] = ("vth", "du", "dv", "bias_exp", "v_rest", "v_reset", "leak", "refractory")

    def validate(self) -> None:
        super().validate()
        if self.reset not in FIXED_RESETS:
            raise GraphError(f"{self.where()}: reset must be one of {FIXED_RESETS}, found {self.reset!r}")


@dataclass(frozen=True, eq=False)
class FixedStochastic(FixedPopulation):
    """Memoryless stochastic neuron in fixed point: with z = (a << 6) + (bias_mant << bias_exp),

        spike = z > r,  r uniform in [0, vth << 6)  =>  P(spike) = clip(z / (vth << 6), 0, 1)

    r comes from spikeforge.neuron.uniform_ints(seed, sample, step, neuron), so every backend
    draws the same numbers. ``seed``: 32-bit unsigned. Simulation only: no Loihi 2 neuron
    implements it.
    """

    seed: int = 0

    SCALARS: ClassVar[tuple[str, ...]] = ("vth", "bias_exp", "seed")

    def validate(self) -> None:
        super().validate()
        if self.vth < 1:
            raise GraphError(f"{self.where()} vth: expected >= 1, found {self.vth}")


#: Node types that carry synaptic weights (their input arrives one step later).
SYNAPSES: tuple[type, ...] = (Affine, FixedAffine)
#: Node types that hold state and spike (or, for ReLU, the ANN activation they replace).
NEURONS: tuple[type, ...] = (ReLU, IF, LIF, Stochastic, FixedLIF, FixedStochastic)
#: Spiking neurons of a quantized graph.
FIXED_NEURONS: tuple[type, ...] = (FixedLIF, FixedStochastic)
#: Nodes a quantized (deployable) graph is made of.
FIXED_TYPES: tuple[type, ...] = (Input, Output, Flatten, FixedAffine, FixedLIF, FixedStochastic)


@dataclass(frozen=True, eq=False)
class Graph:
    """Nodes and directed edges ``(src, dst)``; validates itself on construction.

    Rules: names unique; every edge's endpoints exist and their sizes agree; at least one
    Input and exactly one Output; Affine/Flatten/Output have exactly one predecessor;
    neurons (ReLU, IF, FixedLIF) are fed only by synapse nodes, whose outputs they sum;
    every node is reachable from an Input; every cycle passes through a synapse node into a
    neuron (so it has a delay).
    """

    nodes: tuple[Node, ...]
    edges: tuple[tuple[str, str], ...]
    metadata: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "edges", tuple((str(a), str(b)) for a, b in self.edges))
        object.__setattr__(self, "metadata", dict(self.metadata))
        self.validate()

    # -- access --------------------------------------------------------------------------
    @property
    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def node(self, name: str) -> Node:
        try:
            return self.by_name[name]
        except KeyError:
            raise GraphError(f"no node named '{name}'") from None

    def predecessors(self, name: str) -> list[str]:
        return [a for a, b in self.edges if b == name]

    def successors(self, name: str) -> list[str]:
        return [b for a, b in self.edges if a == name]

    def of_type(self, *types: type) -> list[Node]:
        return [n for n in self.nodes if isinstance(n, types)]

    @property
    def inputs(self) -> list[Input]:
        return [n for n in self.nodes if isinstance(n, Input)]

    @property
    def output(self) -> Output:
        return [n for n in self.nodes if isinstance(n, Output)][0]

    def with_nodes(self, nodes: Iterable[Node], edges: Iterable[tuple[str, str]] | None = None) -> "Graph":
        return Graph(tuple(nodes), tuple(self.edges if edges is None else edges), self.metadata)

    def with_metadata(self, **items: object) -> "Graph":
        return Graph(self.nodes, self.edges, {**self.metadata, **items})

    def is_fixed(self) -> bool:
        return all(isinstance(n, FIXED_TYPES) for n in self.nodes)

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        names = [n.name for n in self.nodes]
        dup = {x for x in names if names.count(x) > 1}
        if dup:
            raise GraphError(f"graph: node names must be unique, found duplicates {sorted(dup)}")
        for n in self.nodes:
            if not isinstance(n, Node):
                raise GraphError(f"graph: expected IR nodes, found {type(n).__name__}")
            n.validate()
        nodes = self.by_name
        for a, b in self.edges:
            for end in (a, b):
                if end not in nodes:
                    raise GraphError(f"edge {a} -> {b}: no node named '{end}'")
            if isinstance(nodes[b], Input):
                raise GraphError(f"edge {a} -> {b}: an Input takes no incoming edge")
            if isinstance(nodes[a], Output):
                raise GraphError(f"edge {a} -> {b}: an Output has no outgoing edge")
            if nodes[a].out_size != nodes[b].in_size:
                raise GraphError(
                    f"edge {a} -> {b}: '{a}' gives {nodes[a].out_size} values, "
                    f"'{b}' expects {nodes[b].in_size}"
                )
        if not self.inputs:
            raise GraphError("graph: expected at least one Input node, found none")
        outs = [n for n in self.nodes if isinstance(n, Output)]
        if len(outs) != 1:
            raise GraphError(f"graph: expected exactly one Output node, found {len(outs)}")
        for n in self.nodes:
            preds = self.predecessors(n.name)
            if isinstance(n, (Affine, FixedAffine, Flatten, Output)) and len(preds) != 1:
                raise GraphError(f"{n.where()}: expected exactly one input edge, found {len(preds)}")
            if isinstance(n, NEURONS):
                if not preds:
                    raise GraphError(f"{n.where()}: expected at least one input edge, found none")
                for p in preds:
                    if not isinstance(nodes[p], SYNAPSES):
                        raise GraphError(
                            f"{n.where()}: inputs must come through Affine/FixedAffine, "
                            f"found '{p}' ({type(nodes[p]).__name__})"
                        )
            if isinstance(n, FixedAffine):
                src = self.source_through_flatten(preds[0])
                if not isinstance(nodes[src], (Input, *FIXED_NEURONS)):
                    raise GraphError(
                        f"{n.where()}: expected input from an Input or a fixed-point neuron, "
                        f"found '{src}' ({type(nodes[src]).__name__})"
                    )
        reached = self.depths()
        for n in self.nodes:
            if n.name not in reached:
                raise GraphError(f"{n.where()}: not reachable from any Input")
        self._check_cycles()

    def source_through_flatten(self, name: str) -> str:
        nodes = self.by_name
        seen = set()
        while isinstance(nodes[name], Flatten) and name not in seen:
            seen.add(name)
            preds = self.predecessors(name)
            if len(preds) != 1:
                break
            name = preds[0]
        return name

    def _check_cycles(self) -> None:
        """Every cycle must contain a synapse -> neuron hop (a one-step delay).

        Equivalently: the graph without synapse->neuron edges is acyclic.
        """
        nodes = self.by_name
        instant = [(a, b) for a, b in self.edges
                   if not (isinstance(nodes[a], SYNAPSES) and isinstance(nodes[b], NEURONS))]
        order = _toposort([n.name for n in self.nodes], instant)
        if order is None:
            raise GraphError("graph: found a cycle with no synapse->neuron delay in it")

    # -- structure -----------------------------------------------------------------------
    def topological_order(self) -> list[str]:
        """Order in which a feedforward evaluation can run (delayed edges are ignored)."""
        ff = [(a, b) for a, b in self.edges if not self.is_recurrent_edge(a, b)]
        order = _toposort([n.name for n in self.nodes], ff)
        assert order is not None  # guaranteed by _check_cycles
        return order

    def is_recurrent_edge(self, a: str, b: str) -> bool:
        """True for an edge that closes a cycle: it does not lead away from the inputs
        (breadth-first depth of ``b`` <= depth of ``a``), e.g. self-recurrence or feedback."""
        depth = self._depths
        return depth.get(b, math.inf) <= depth.get(a, math.inf)

    def depths(self) -> dict[str, int]:
        """Shortest number of edges from any Input to each node (breadth first)."""
        return dict(self._depths)

    @functools.cached_property
    def _depths(self) -> dict[str, int]:
        dist: dict[str, int] = {n.name: 0 for n in self.inputs}
        frontier = list(dist)
        while frontier:
            nxt = []
            for a in frontier:
                for b in self.successors(a):
                    if b not in dist:
                        dist[b] = dist[a] + 1
                        nxt.append(b)
            frontier = nxt
        return dist

    def is_feedforward(self) -> bool:
        return not any(self.is_recurrent_edge(a, b) for a, b in self.edges)


def _toposort(names: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[str] | None:
    indeg = {n: 0 for n in names}
    succ: dict[str, list[str]] = {n: [] for n in names}
    for a, b in edges:
        indeg[b] += 1
        succ[a].append(b)
    ready = [n for n in names if indeg[n] == 0]
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for m in succ[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
    return order if len(order) == len(names) else None


# -- registries ------------------------------------------------------------------------------
F = TypeVar("F", bound=Callable)


class Registry:
    """Functions keyed by node type (lowering, evaluation, file encoding)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._fns: dict[type, Callable] = {}

    def register(self, *types: type) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            for t in types:
                self._fns[t] = fn
            return fn
        return deco

    def lookup(self, node: Node) -> Callable:
        for t in type(node).__mro__:
            if t in self._fns:
                return self._fns[t]
        supported = ", ".join(sorted(t.__name__ for t in self._fns))
        raise UnsupportedError(
            f"{node.where()}: {self.what} does not support {type(node).__name__} "
            f"(supported: {supported})"
        )

    def __contains__(self, t: type) -> bool:
        return t in self._fns
