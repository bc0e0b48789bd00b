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

import collections
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Literal, Mapping, NamedTuple, Sequence, TypeVar, cast, overload

import numpy as np

from spikeforge import fixedpoint
from spikeforge.errors import GraphError, UnsupportedError

Reset = Literal["zero", "subtract"]
RESETS: tuple[str, ...] = ("zero", "subtract")
#: Fixed-point neurons also reset to a value: v <- v_reset.
FIXED_RESETS: tuple[str, ...] = ("zero", "subtract", "value")


# Fixed-point widths live in spikeforge.fixedpoint; re-exported here for the IR's users.
IntRange = fixedpoint.IntRange
BITS = fixedpoint.BITS


def _as_array(x: object, dtype: type) -> np.ndarray:
    arr: np.ndarray = np.array(x, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


def _as_float_array(x: object, where: str) -> np.ndarray:
    """A read-only float64 copy of real numbers; refuses bool, complex and non-numbers."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise GraphError(f"{where}: expected real numbers, found dtype {arr.dtype}")
    return _as_array(arr, np.float64)


def _as_int(x: object, where: str) -> int:
    """An integer scalar; refuses fractional, bool and non-numeric values instead of casting."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer, float, np.floating)):
        raise GraphError(f"{where}: expected an integer, found {x!r}")
    if isinstance(x, (float, np.floating)) and not (np.isfinite(x) and float(x) == int(x)):
        raise GraphError(f"{where}: expected an integer, found {x!r}")
    return int(x)


def _as_int_array(x: object, where: str) -> np.ndarray:
    """An int64 copy of x; refuses NaN, inf and fractional values instead of casting them."""
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise GraphError(f"{where}: expected integers, found NaN or inf")
        if not np.array_equal(arr, np.rint(arr)):
            raise GraphError(f"{where}: expected integers, found fractional values")
    elif arr.dtype.kind not in "iu":
        raise GraphError(f"{where}: expected integers, found dtype {arr.dtype}")
    return _as_array(arr, np.int64)


Shape = tuple[int, ...]


def _shape(value: object, where: str, ndim: int | None = None) -> Shape:
    """A positive tuple of ints (from a list, tuple or array), or GraphError naming ``where``."""
    try:
        dims = tuple(cast(Iterable[Any], value))
    except TypeError:
        raise GraphError(f"{where}: expected a tuple of positive integers, found {value!r}") from None
    if not dims or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
                           for d in dims):
        raise GraphError(f"{where}: expected a tuple of positive integers, found {value!r}")
    if ndim is not None and len(dims) != ndim:
        raise GraphError(f"{where}: expected {ndim} dimensions, found {len(dims)} ({dims})")
    return tuple(int(d) for d in dims)


def _ints(value: object, n: int, where: str, lo: int = 0) -> tuple[int, ...]:
    """An int (repeated n times) or a tuple of n ints >= lo."""
    vals = (value,) * n if isinstance(value, (int, np.integer)) else value
    try:
        out = tuple(cast(Iterable[Any], vals))
    except TypeError:
        raise GraphError(f"{where}: expected {n} integers, found {value!r}") from None
    if len(out) != n or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                and v >= lo for v in out):
        raise GraphError(f"{where}: expected {n} integers >= {lo}, found {value!r}")
    return tuple(int(v) for v in out)


@dataclass(frozen=True, eq=False)
class Node:
    """Base of all IR nodes. ``in_shape``/``out_shape`` are per-sample tensor shapes
    ((C, H, W) for feature maps, (n,) for vectors); ``in_size``/``out_size`` their sizes."""

    name: str

    @property
    def in_shape(self) -> Shape:
        raise NotImplementedError(type(self).__name__)  # every concrete node overrides it

    @property
    def out_shape(self) -> Shape:
        raise NotImplementedError(type(self).__name__)

    @property
    def in_size(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_size(self) -> int:
        return math.prod(self.out_shape)

    def validate(self) -> None:
        """Check the node's own parameters (ranges, shapes). Raises GraphError."""
        if not self.name or not isinstance(self.name, str):
            raise GraphError(f"node name: expected a non-empty string, found {self.name!r}")

    def replace(self: _N, **changes: object) -> _N:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]  # typeshed's replace types the fields by the first

    def where(self) -> str:
        return f"node '{self.name}' ({type(self).__name__})"


@dataclass(frozen=True, eq=False)
class Input(Node):
    """Graph input; values are rates in [0, 1], sent as ``payload_bits``-bit graded spikes."""

    shape: Shape
    payload_bits: int = fixedpoint.PAYLOAD_BITS

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _shape(self.shape, f"node '{self.name}' (Input) shape"))

    @property
    def in_shape(self) -> Shape:
        return self.shape

    @property
    def out_shape(self) -> Shape:
        return self.shape

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.payload_bits, (int, np.integer)) or not 1 <= self.payload_bits <= 8:
            raise GraphError(
                f"{self.where()}: payload_bits must be an integer in [1, 8], found {self.payload_bits!r}"
            )

    @property
    def payload_max(self) -> int:
        """Integer payload that stands for the rate 1.0."""
        return 2**self.payload_bits - 1


@dataclass(frozen=True, eq=False)
class Output(Node):
    """Graph output: the readout of the node feeding it."""

    shape: Shape

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _shape(self.shape, f"node '{self.name}' (Output) shape"))

    @property
    def in_shape(self) -> Shape:
        return self.shape

    @property
    def out_shape(self) -> Shape:
        return self.shape


@dataclass(frozen=True, eq=False)
class Flatten(Node):
    """Merge dims ``start_dim .. end_dim`` of the per-sample shape (NIR's Flatten, C order;
    dims count without the batch axis, so the defaults flatten a sample to a vector)."""

    input_shape: Shape
    start_dim: int = 0
    end_dim: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape",
                           _shape(self.input_shape, f"node '{self.name}' (Flatten) input_shape"))

    def _span(self) -> tuple[int, int]:
        n = len(self.input_shape)
        s = self.start_dim + n if self.start_dim < 0 else self.start_dim
        e = self.end_dim + n if self.end_dim < 0 else self.end_dim
        return s, e

    @property
    def in_shape(self) -> Shape:
        return self.input_shape

    @property
    def out_shape(self) -> Shape:
        s, e = self._span()
        d = self.input_shape
        return d[:s] + (math.prod(d[s:e + 1]),) + d[e + 1:]

    def validate(self) -> None:
        super().validate()
        s, e = self._span()
        if not (0 <= s <= e < len(self.input_shape)):
            raise GraphError(f"{self.where()}: start_dim {self.start_dim} / end_dim {self.end_dim} "
                             f"do not fit input_shape {self.input_shape}")


@dataclass(frozen=True, eq=False)
class Affine(Node):
    """y = W x + b, float (NIR Affine). ``weight`` has shape (out, in)."""

    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _as_float_array(self.weight, f"{self.where()} weight"))
        object.__setattr__(self, "bias", _as_float_array(self.bias, f"{self.where()} bias"))

    @property
    def in_shape(self) -> Shape:
        return (int(self.weight.shape[1]),)

    @property
    def out_shape(self) -> Shape:
        return (int(self.weight.shape[0]),)

    def validate(self) -> None:
        super().validate()
        if self.weight.ndim != 2 or 0 in self.weight.shape:
            raise GraphError(f"{self.where()}: weight must be 2-D (out, in), found {self.weight.shape}")
        if self.bias.shape != (self.weight.shape[0],):
            raise GraphError(
                f"{self.where()}: bias shape expected ({self.weight.shape[0]},), found {self.bias.shape}"
            )
        if not (np.isfinite(self.weight).all() and np.isfinite(self.bias).all()):
            raise GraphError(f"{self.where()}: weight and bias must be finite, found NaN or inf")


class ConvGeometry(NamedTuple):
    """A 2-D convolution's geometry: ``padding`` is (top, left, bottom, right) zeros."""

    input_shape: Shape  # (C_in, H, W)
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int
    channels: int  # C_out

    @property
    def output_shape(self) -> Shape:
        _, h, w = self.input_shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        t, l, b, r = self.padding
        return (self.channels, (h + t + b - dh * (kh - 1) - 1) // sh + 1,
                (w + l + r - dw * (kw - 1) - 1) // sw + 1)


def _padding4(value: object, where: str) -> tuple[int, int, int, int]:
    """NIR's (pad_h, pad_w) or explicit (top, left, bottom, right)."""
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    vals = tuple(cast(Iterable[Any], value))
    if len(vals) == 2:
        vals = (vals[0], vals[1], vals[0], vals[1])
    top, left, bottom, right = _ints(vals, 4, where)
    return top, left, bottom, right


class _Windowed:
    """Nodes whose output shape follows from their ConvGeometry (convolutions, pools)."""

    input_shape: Shape

    @property
    def geometry(self) -> ConvGeometry:
        raise NotImplementedError(type(self).__name__)  # Conv2d, FixedConv2d and AvgPool2d define it

    @property
    def in_shape(self) -> Shape:
        return self.input_shape

    @property
    def out_shape(self) -> Shape:
        return self.geometry.output_shape


@dataclass(frozen=True, eq=False)
class _ConvBase(_Windowed, Node):
    """Shared geometry of Conv2d and FixedConv2d (NIR Conv2d field names). ``weight`` is
    (C_out, C_in / groups, kH, kW); ``padding`` (pad_h, pad_w) or (top, left, bottom, right)."""

    input_shape: Shape
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def _init_geometry(self) -> None:
        w = f"node '{self.name}' ({type(self).__name__})"
        object.__setattr__(self, "input_shape", _shape(self.input_shape, f"{w} input_shape", 3))
        object.__setattr__(self, "stride", _ints(self.stride, 2, f"{w} stride", 1))
        object.__setattr__(self, "padding", _padding4(self.padding, f"{w} padding"))
        object.__setattr__(self, "dilation", _ints(self.dilation, 2, f"{w} dilation", 1))
        if not isinstance(self.groups, (int, np.integer)) or isinstance(self.groups, bool) or self.groups < 1:
            raise GraphError(f"{w} groups: expected an integer >= 1, found {self.groups!r}")
        object.__setattr__(self, "groups", int(self.groups))

    @property
    def geometry(self) -> ConvGeometry:
        weight: np.ndarray = getattr(self, "weight")
        return ConvGeometry(self.input_shape, (int(weight.shape[2]), int(weight.shape[3])),
                            self.stride, self.padding, self.dilation, self.groups,
                            int(weight.shape[0]))

    def validate(self) -> None:
        super().validate()
        weight: np.ndarray = getattr(self, "weight")
        if weight.ndim != 4 or 0 in weight.shape:
            raise GraphError(f"{self.where()}: weight must be 4-D (C_out, C_in/groups, kH, kW), "
                             f"found {weight.shape}")
        c_in, g = self.input_shape[0], self.groups
        if c_in % g or weight.shape[0] % g or weight.shape[1] != c_in // g:
            raise GraphError(f"{self.where()}: weight {weight.shape} does not fit {c_in} input "
                             f"channels in {g} groups (expected C_in/groups = {c_in // g if c_in % g == 0 else '?'}, "
                             f"C_out divisible by {g})")
        if min(self.geometry.output_shape) < 1:
            raise GraphError(f"{self.where()}: kernel {weight.shape[2:]} with dilation {self.dilation} "
                             f"does not fit input {self.input_shape} padded by {self.padding}")


@dataclass(frozen=True, eq=False)
class Conv2d(_ConvBase):
    """y = conv2d(x, W, stride, padding, dilation, groups) + b[c], float (NIR Conv2d)."""

    weight: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 0)), kw_only=True)
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0), kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _as_float_array(self.weight, f"{self.where()} weight"))
        bias = np.asarray(self.bias)
        if bias.size == 0 and self.weight.ndim == 4:
            bias = np.zeros(self.weight.shape[0])
        object.__setattr__(self, "bias", _as_float_array(bias, f"{self.where()} bias"))
        self._init_geometry()

    def validate(self) -> None:
        super().validate()
        if self.bias.shape != (self.weight.shape[0],):
            raise GraphError(f"{self.where()}: bias shape expected ({self.weight.shape[0]},), "
                             f"found {self.bias.shape}")
        if not (np.isfinite(self.weight).all() and np.isfinite(self.bias).all()):
            raise GraphError(f"{self.where()}: weight and bias must be finite, found NaN or inf")


@dataclass(frozen=True, eq=False)
class AvgPool2d(_Windowed, Node):
    """y = average of ``kernel_size`` windows (NIR AvgPool2d; zero padding counted in the
    average). An ANN-level node: conversion folds it into the next affine map."""

    input_shape: Shape
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __post_init__(self) -> None:
        w = f"node '{self.name}' (AvgPool2d)"
        object.__setattr__(self, "input_shape", _shape(self.input_shape, f"{w} input_shape", 3))
        object.__setattr__(self, "kernel_size", _ints(self.kernel_size, 2, f"{w} kernel_size", 1))
        object.__setattr__(self, "stride", _ints(self.stride, 2, f"{w} stride", 1))
        object.__setattr__(self, "padding", _padding4(self.padding, f"{w} padding"))

    @property
    def geometry(self) -> ConvGeometry:
        return ConvGeometry(self.input_shape, self.kernel_size, self.stride, self.padding, (1, 1),
                            self.input_shape[0], self.input_shape[0])

    def validate(self) -> None:
        super().validate()
        if min(self.out_shape) < 1:
            raise GraphError(f"{self.where()}: kernel {self.kernel_size} does not fit input {self.input_shape}")


@dataclass(frozen=True, eq=False)
class Concat(Node):
    """Concatenation of its inputs (in edge order) along the channel axis (dim 0 per sample).
    An ANN-level node: conversion splits the next affine map by input instead."""

    input_shapes: tuple[Shape, ...]

    def __post_init__(self) -> None:
        shapes = tuple(_shape(s, f"node '{self.name}' (Concat) input_shapes") for s in self.input_shapes)
        object.__setattr__(self, "input_shapes", shapes)

    @property
    def in_shape(self) -> Shape:  # per input: see input_shapes
        return self.out_shape

    @property
    def out_shape(self) -> Shape:
        first = self.input_shapes[0]
        return (sum(s[0] for s in self.input_shapes),) + first[1:]

    def validate(self) -> None:
        super().validate()
        if len(self.input_shapes) < 2:
            raise GraphError(f"{self.where()}: expected at least two inputs, found {len(self.input_shapes)}")
        if len({s[1:] for s in self.input_shapes}) != 1:
            raise GraphError(f"{self.where()}: inputs must agree in all but the channel dim, "
                             f"found {list(self.input_shapes)}")


@dataclass(frozen=True, eq=False)
class Population(Node):
    """A layer of ``size`` neurons (or ANN units): as many values in as out, laid out as
    ``shape`` ((size,) unless given, e.g. (C, H, W) after a convolution)."""

    size: int
    shape: Shape = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        if isinstance(self.size, (np.integer, float)) and float(self.size) == int(self.size):
            object.__setattr__(self, "size", int(self.size))
        shape = tuple(self.shape) if self.shape is not None else ()
        if not shape and isinstance(self.size, int):
            shape = (self.size,)
        object.__setattr__(self, "shape", _shape(shape, f"node '{self.name}' ({type(self).__name__}) shape"))

    @property
    def in_shape(self) -> Shape:
        return self.shape

    @property
    def out_shape(self) -> Shape:
        return self.shape

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.size, (int, np.integer)) or isinstance(self.size, bool) or self.size < 1:
            raise GraphError(f"{self.where()}: size must be a positive integer, found {self.size!r}")
        if math.prod(self.shape) != self.size:
            raise GraphError(f"{self.where()}: shape {self.shape} does not hold size {self.size}")


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
    ``tau_syn`` >= 1 steps (NIR's CubaLIF): the input passes a current I_t = (1 - 1/tau_syn) I_{t-1}
    + input_t first (FixedLIF's du); tau_syn = 1 is no current memory.
    """

    tau: float
    v_threshold: float = 1.0
    v_leak: float = 0.0
    v_reset: float = 0.0
    r: float = 1.0
    reset: str = "subtract"
    refractory: int = 0
    tau_syn: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.reset not in FIXED_RESETS:
            raise GraphError(f"{self.where()}: reset must be one of {FIXED_RESETS}, found {self.reset!r}")
        if not self.tau_syn >= 1:
            raise GraphError(f"{self.where()} tau_syn: expected >= 1 step, found {self.tau_syn}")
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
        object.__setattr__(self, "weight_exp", _as_int(self.weight_exp, f"{self.where()} weight_exp"))

    @property
    def in_shape(self) -> Shape:
        return (int(self.weight.shape[1]),)

    @property
    def out_shape(self) -> Shape:
        return (int(self.weight.shape[0]),)

    def validate(self) -> None:
        super().validate()
        if self.weight.ndim != 2 or 0 in self.weight.shape:
            raise GraphError(f"{self.where()}: weight must be 2-D (out, in), found {self.weight.shape}")
        BITS["weight"].check(f"{self.where()} weight", self.weight)
        BITS["weight_exp"].check(f"{self.where()} weight_exp", self.weight_exp)


@dataclass(frozen=True, eq=False)
class FixedConv2d(_ConvBase):
    """Loihi 2 convolutional synapses: a = floor(conv2d(s, w) * 2**weight_exp), the same
    8-bit mantissas and exponent as FixedAffine, with Conv2d's geometry. No bias: the
    biases live in the neurons."""

    weight: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 0), np.int64), kw_only=True)
    weight_exp: int = field(default=0, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _as_int_array(self.weight, f"{self.where()} weight"))
        object.__setattr__(self, "weight_exp", _as_int(self.weight_exp, f"{self.where()} weight_exp"))
        self._init_geometry()

    def validate(self) -> None:
        super().validate()
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
        super().__post_init__()
        bias = np.asarray(self.bias_mant)
        if bias.size == 0 and isinstance(self.size, int):
            bias = np.zeros(self.size, np.int64)
        object.__setattr__(self, "bias_mant", _as_int_array(bias, f"{self.where()} bias_mant"))
        for name in self.SCALARS:
            value = getattr(self, name)
            if isinstance(value, (np.integer, float)) and not isinstance(value, bool) \
                    and np.isfinite(value) and float(value) == int(value):
                object.__setattr__(self, name, int(value))

    @property
    def vth_scaled(self) -> int:
        """Threshold in state units: vth << 6."""
        return self.vth << fixedpoint.ACT_SHIFT

    @property
    def bias(self) -> np.ndarray:
        """Effective per-step bias in state units: bias_mant << bias_exp."""
        return self.bias_mant << self.bias_exp

    def validate(self) -> None:
        super().validate()
        for key in self.SCALARS:
            value = getattr(self, key)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
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
    ``v_init`` is v at the start of every sample (u = 0), per neuron (default 0; conversion
    sets it so that v = 0 when the layer's first input arrives, see
    spikeforge.converter.latency.align_initial_state).
    Fields: du/dv 12-bit unsigned, v_rest/v_reset 24-bit signed, leak 23-bit unsigned,
    refractory 8-bit unsigned, v_init 24-bit signed per neuron (and those of FixedPopulation). With v_rest = v_reset = leak =
    refractory = 0 and reset 'zero' this is Lava's stock LIF; everything else runs in
    spikeforge's own Lava process model.
    """

    du: int = fixedpoint.DU_NONE
    dv: int = 0
    reset: str = "subtract"
    v_rest: int = 0
    v_reset: int = 0
    leak: int = 0
    refractory: int = 0
    v_init: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    SCALARS: ClassVar[tuple[str, ...]] = ("vth", "du", "dv", "bias_exp", "v_rest", "v_reset", "leak", "refractory")

    def __post_init__(self) -> None:
        super().__post_init__()
        v0 = np.asarray(self.v_init)
        if v0.size == 0 and isinstance(self.size, int):
            v0 = np.zeros(self.size, np.int64)
        object.__setattr__(self, "v_init", _as_int_array(v0, f"{self.where()} v_init"))

    def validate(self) -> None:
        super().validate()
        if self.v_init.shape != (self.size,):
            raise GraphError(f"{self.where()}: v_init shape expected ({self.size},), found {self.v_init.shape}")
        BITS["state"].check(f"{self.where()} v_init", self.v_init)
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
SYNAPSES = (Affine, FixedAffine, Conv2d, FixedConv2d)
#: Fixed-point synapse nodes.
FIXED_SYNAPSES = (FixedAffine, FixedConv2d)
#: Nodes with exactly one incoming edge.
SINGLE_INPUT = (Affine, FixedAffine, Conv2d, FixedConv2d, AvgPool2d, Flatten, Output)
#: Node types that hold state and spike (or, for ReLU, the ANN activation they replace).
NEURONS = (ReLU, IF, LIF, Stochastic, FixedLIF, FixedStochastic)
#: Spiking neurons of a quantized graph.
FIXED_NEURONS = (FixedLIF, FixedStochastic)
#: Nodes a quantized (deployable) graph is made of.
FIXED_TYPES: tuple[type, ...] = (Input, Output, Flatten, FixedAffine, FixedConv2d, FixedLIF, FixedStochastic)


@dataclass(frozen=True, eq=False)
class Graph:
    """Nodes and directed edges ``(src, dst)``; validates itself on construction.

    Rules: names unique; every edge's endpoints exist and their shapes agree; at least one
    Input and exactly one Output; synapses, pools, Flatten and Output have exactly one
    predecessor, a Concat one per input shape (in edge order); neurons (ReLU, IF, LIF,
    FixedLIF, ...) are fed only by synapse nodes, whose outputs they sum;
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

    # -- access (adjacency computed once: every accessor is O(degree)) -------------------
    @functools.cached_property
    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    @functools.cached_property
    def _adjacency(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        preds: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        succs: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for a, b in self.edges:
            succs.setdefault(a, []).append(b)
            preds.setdefault(b, []).append(a)
        return preds, succs

    @overload
    def node(self, name: str, /) -> Node: ...
    @overload
    def node(self, name: str, kind: type[_N], /) -> _N: ...

    def node(self, name: str, kind: type = Node, /) -> Any:
        """The node called ``name``; with ``kind``, checked to be one (GraphError otherwise)."""
        try:
            found = self.by_name[name]
        except KeyError:
            raise GraphError(f"no node named '{name}'") from None
        if not isinstance(found, kind):
            raise GraphError(f"{found.where()}: expected a node of type {kind.__name__} here")
        return found

    def predecessors(self, name: str) -> list[str]:
        """Sources of edges into ``name``, in edge order (a Concat's inputs in order)."""
        return list(self._adjacency[0].get(name, ()))

    def successors(self, name: str) -> list[str]:
        return list(self._adjacency[1].get(name, ()))

    @overload
    def of_type(self, types: type[_N], /) -> list[_N]: ...
    @overload
    def of_type(self, *types: type) -> list[Node]: ...

    def of_type(self, *types: type) -> list[Any]:
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

    # -- validation (linear in nodes + edges) ---------------------------------------------
    def validate(self) -> None:
        for n in self.nodes:
            if not isinstance(n, Node):
                raise GraphError(f"graph: expected IR nodes, found {type(n).__name__}")
        counts = collections.Counter(n.name for n in self.nodes)
        dup = sorted(str(x) for x, c in counts.items() if c > 1)
        if dup:
            raise GraphError(f"graph: node names must be unique, found duplicates {dup[:10]}")
        for n in self.nodes:
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
            dense_in = isinstance(nodes[b], (Affine, FixedAffine))  # reads its input flattened
            if isinstance(nodes[b], Concat) or dense_in and nodes[a].out_size == nodes[b].in_size:
                continue
            if nodes[a].out_shape != nodes[b].in_shape:
                raise GraphError(
                    f"edge {a} -> {b}: '{a}' gives shape {nodes[a].out_shape}, "
                    f"'{b}' expects {nodes[b].in_shape}"
                )
        if not self.inputs:
            raise GraphError("graph: expected at least one Input node, found none")
        outs = [n for n in self.nodes if isinstance(n, Output)]
        if len(outs) != 1:
            raise GraphError(f"graph: expected exactly one Output node, found {len(outs)}")
        for n in self.nodes:
            preds = self.predecessors(n.name)
            if isinstance(n, SINGLE_INPUT) and len(preds) != 1:
                raise GraphError(f"{n.where()}: expected exactly one input edge, found {len(preds)}")
            if isinstance(n, Concat):
                got = [nodes[p].out_shape for p in preds]
                if got != list(n.input_shapes):
                    raise GraphError(f"{n.where()}: inputs expected shapes {list(n.input_shapes)}, "
                                     f"found {got}")
            if isinstance(n, NEURONS):
                if not preds:
                    raise GraphError(f"{n.where()}: expected at least one input edge, found none")
                for p in preds:
                    if not isinstance(nodes[p], SYNAPSES):
                        raise GraphError(
                            f"{n.where()}: inputs must come through a synapse node "
                            f"(Affine, Conv2d or their fixed-point forms), "
                            f"found '{p}' ({type(nodes[p]).__name__})"
                        )
            if isinstance(n, FIXED_SYNAPSES):
                src = self.source_through_flatten(preds[0])
                if not isinstance(nodes[src], (Input, *FIXED_NEURONS)):
                    raise GraphError(
                        f"{n.where()}: expected input from an Input or a fixed-point neuron, "
                        f"found '{src}' ({type(nodes[src]).__name__})"
                    )
        reached = self._depths
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
        return list(self._topological_order)

    @functools.cached_property
    def _topological_order(self) -> list[str]:
        ff = [(a, b) for a, b in self.edges if not self.is_recurrent_edge(a, b)]
        order = _toposort([n.name for n in self.nodes], ff)
        assert order is not None  # guaranteed by _check_cycles
        return order

    def is_recurrent_edge(self, a: str, b: str) -> bool:
        """True for an edge that closes a cycle, e.g. self-recurrence or feedback: a back
        edge of the depth-first search from the inputs (nodes and edges in graph order), so
        that reconverging feedforward paths (a residual sum, a concat) are not cycles."""
        return (a, b) in self._recurrent_edges

    @functools.cached_property
    def _recurrent_edges(self) -> frozenset[tuple[str, str]]:
        state: dict[str, int] = {}  # 1 = on the search stack, 2 = done
        back: set[tuple[str, str]] = set()
        for root in [n.name for n in self.inputs] + [n.name for n in self.nodes]:
            if root in state:
                continue
            if not isinstance(self.by_name[root], Input):  # unreachable: all its edges count
                back.update((root, b) for b in self.successors(root))
                continue
            state[root] = 1
            stack = [(root, iter(self.successors(root)))]
            while stack:
                node, succ = stack[-1]
                nxt = next(succ, None)
                if nxt is None:
                    state[node] = 2
                    stack.pop()
                elif state.get(nxt) == 1:
                    back.add((node, nxt))
                elif nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, iter(self.successors(nxt))))
        return frozenset(back)

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
    ready = collections.deque(n for n in names if indeg[n] == 0)
    order = []
    while ready:
        n = ready.popleft()
        order.append(n)
        for m in succ[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
    return order if len(order) == len(names) else None


# -- registries ------------------------------------------------------------------------------
_N = TypeVar("_N", bound="Node")  # Graph.of_type(X) -> list[X]
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
