"""ONNX -> spikeforge IR (an ANN graph of Input, Conv2d, Affine, AvgPool2d, Concat, Flatten,
ReLU, Output).

Each ONNX op is handled by one small function registered in :data:`HANDLERS` (a table keyed
by op type); shapes come from ``onnx.shape_inference`` and every IR node's shape is checked
against them. Supported ops: Conv (2-D: stride, symmetric and asymmetric pads, dilation,
groups), Gemm, MatMul (+ Add), Relu, Clip(min 0), AveragePool, GlobalAveragePool,
ReduceMean over H and W, Add of two tensors (a residual sum: both branches feed the next
activation), Concat along channels, Flatten, Reshape/Squeeze to (batch, -1) (the shape a
constant or computed from the batch size: Shape, Gather, Unsqueeze, Cast, Concat, as
``x.view(x.size(0), -1)`` exports with a dynamic batch),
BatchNormalization (folded into the preceding Conv/Gemm, or after an activation into the
next one), Identity, Dropout, Constant, and a final Softmax/LogSoftmax (dropped: the argmax
is the same). Every op outside the table is reported, all at once, before anything is
converted; MaxPool is refused with what to do instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from spikeforge import ir
from spikeforge.converter.fold import identity_synapse
from spikeforge.errors import SpikeforgeError, UnsupportedError
from spikeforge.fileio import not_a_file


class OnnxImportError(SpikeforgeError):
    """A broken or unreadable ONNX file."""


#: Hints for ops that have no spiking form here.
REFUSED = {
    "MaxPool": "max pooling has no exact rate-coded spiking form here: use AveragePool "
               "(nn.AvgPool2d) and retrain",
    "GlobalMaxPool": "use GlobalAveragePool (nn.AdaptiveAvgPool2d(1)) and retrain",
}


@dataclass(frozen=True)
class _Sum:
    """A tensor that is a sum of synapse outputs (an Add of branches): its consumer
    activation is fed by all of them."""

    synapses: tuple[str, ...]


Value = str | _Sum  # what a tensor is in the IR: a node's output or a sum of synapses


@dataclass(frozen=True)
class _ShapeValue:
    """An integer tensor computed from a model tensor's shape (Shape -> Gather -> Unsqueeze
    -> Concat, as torch writes ``x.view(x.size(0), -1)`` with a dynamic batch): its entries,
    None for the batch size (unknown until run time); ``scalar`` for a 0-d tensor."""

    values: tuple[int | None, ...]
    scalar: bool = False


@dataclass
class _Ctx:
    path: Path
    onnx_nodes: list[Any]
    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]  # per-sample shapes from shape inference
    nodes: dict[str, ir.Node] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    producer: dict[str, Value] = field(default_factory=dict)
    # BatchNormalization after an activation, y = s * h + t (per channel), pending on a tensor
    pending_bn: dict[str, tuple[np.ndarray, np.ndarray, str]] = field(default_factory=dict)
    # shape arithmetic (x.view(x.size(0), -1) with a dynamic batch): tensor -> its value
    shape_values: dict[str, "_ShapeValue"] = field(default_factory=dict)

    # -- graph building ------------------------------------------------------------------
    def add(self, node: ir.Node, srcs: list[str]) -> str:
        name, k = node.name, 1
        while name in self.nodes:
            k += 1
            name = f"{node.name}_{k}"
        node = node.replace(name=name)
        for s in srcs:
            if not isinstance(node, ir.Concat) and self.nodes[s].out_shape != node.in_shape:
                raise UnsupportedError(f"{self.path}: node '{name}' expects shape {node.in_shape}, "
                                       f"'{s}' gives {self.nodes[s].out_shape}")
        self.nodes[name] = node
        self.edges += [(s, name) for s in srcs]
        return name

    def consumers(self, name: str) -> list[str]:
        return [b for a, b in self.edges if a == name]

    # -- tensors -------------------------------------------------------------------------
    def where(self, node: Any) -> str:
        return f"{self.path}: node '{node.name or node.output[0]}' ({node.op_type})"

    def value(self, tensor: str, node: Any, fold_bn: bool = False) -> Value:
        if tensor in self.pending_bn and not fold_bn:
            raise UnsupportedError(
                f"{self.where(node)} reads the output of '{self.pending_bn[tensor][2]}' "
                f"(BatchNormalization after an activation), which can only be folded into a "
                f"following Conv, Gemm or MatMul")
        if tensor not in self.producer:
            raise UnsupportedError(f"{self.where(node)} reads '{tensor}', which is not computed "
                                   f"from the model input (constants are only allowed as weights)")
        return self.producer[tensor]

    def node_in(self, tensor: str, node: Any, fold_bn: bool = False) -> str:
        """The IR node whose output ``tensor`` is (a residual sum is refused here)."""
        v = self.value(tensor, node, fold_bn)
        if isinstance(v, _Sum):
            raise UnsupportedError(f"{self.where(node)}: a residual Add must be followed by "
                                   f"Relu/Clip (its branches feed the next spiking layer)")
        return v

    def const(self, tensor: str, node: Any, what: str) -> np.ndarray:
        if tensor not in self.consts:
            raise UnsupportedError(f"{self.where(node)}: {what} must be a constant, found computed "
                                   f"tensor '{tensor}'")
        return self.consts[tensor]

    def synapses(self, v: Value, node: Any, name: str) -> list[str]:
        """The synapse nodes that a value is the sum of; an activation (or the Input) gets an
        identity synapse, so that it can join a residual sum or feed an activation."""
        if isinstance(v, _Sum):
            return list(v.synapses)
        n = self.nodes[v]
        if isinstance(n, ir.SYNAPSES) and not self.consumers(v):
            return [v]
        return [self.add(identity_synapse(f"{name}.shortcut", n.out_shape), [v])]

    def check_shape(self, tensor: str, shape: tuple[int, ...], node: Any) -> None:
        want = self.shapes.get(tensor)
        if want is not None and tuple(want) != tuple(shape):
            raise UnsupportedError(f"{self.where(node)}: output shape {shape} disagrees with ONNX "
                                   f"shape inference {tuple(want)}")


Handler = Callable[[_Ctx, Any, dict[str, Any], str], None]
HANDLERS: dict[str, Handler] = {}


def handles(*ops: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for op in ops:
            HANDLERS[op] = fn
        return fn
    return deco


def _out(ctx: _Ctx, node: Any, value: Value) -> None:
    ctx.producer[node.output[0]] = value
    if isinstance(value, str):
        ctx.check_shape(node.output[0], ctx.nodes[value].out_shape, node)


# -- handlers ------------------------------------------------------------------------------
@handles("Constant")
def _constant(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    from onnx import numpy_helper

    value = a.get("value")
    if value is None:
        raise UnsupportedError(f"{ctx.where(node)}: expected a tensor value")
    ctx.consts[node.output[0]] = _to_float(numpy_helper.to_array(value), ctx, node.output[0])


@handles("Identity", "Dropout")
def _identity(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    if node.input[0] in ctx.consts:  # e.g. torch shares equal weights through an Identity
        ctx.consts[node.output[0]] = ctx.consts[node.input[0]]
    else:
        if node.input[0] in ctx.pending_bn:
            ctx.pending_bn[node.output[0]] = ctx.pending_bn[node.input[0]]
        ctx.producer[node.output[0]] = ctx.value(node.input[0], node, fold_bn=True)


@handles("Softmax", "LogSoftmax")
def _softmax(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    if any(node.output[0] in n.input for n in ctx.onnx_nodes):
        raise UnsupportedError(f"{ctx.where(node)} is only supported as the last op")
    ctx.producer[node.output[0]] = ctx.value(node.input[0], node)


def _fold_pending(ctx: _Ctx, tensor: str, W: np.ndarray, bias: np.ndarray, node: Any,
                  padded: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """W (s h + t) + b = (W diag(s)) h + (b + W t), for a BatchNorm pending on ``tensor``
    (per input channel for a conv weight (C_out, C_in, kH, kW))."""
    if tensor not in ctx.pending_bn:
        return W, bias
    s, t, bn = ctx.pending_bn[tensor]
    if W.ndim == 2:
        return W * s[None, :], bias + W @ t
    if padded and np.any(t != 0):
        raise UnsupportedError(f"{ctx.where(node)}: the BatchNormalization '{bn}' before it shifts "
                               f"its input, which zero padding does not see; fold it before the "
                               f"activation or use padding 0")
    cout, cin_g = W.shape[:2]
    groups = len(s) // cin_g
    idx = (np.arange(cout) // (cout // groups))[:, None] * cin_g + np.arange(cin_g)[None, :]
    s_full, t_full = s[idx][:, :, None, None], t[idx]
    return W * s_full, bias + (W.sum(axis=(2, 3)) * t_full).sum(axis=1)


@handles("Gemm")
def _gemm(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    x = ctx.node_in(node.input[0], node, fold_bn=True)
    if a.get("transA", 0):
        raise UnsupportedError(f"{ctx.where(node)}: transA=1 is not supported")
    B = ctx.const(node.input[1], node, "B")
    if B.ndim != 2:
        raise UnsupportedError(f"{ctx.where(node)}: B must be 2-D, found shape {B.shape}")
    W = (B if a.get("transB", 0) else B.T) * float(a.get("alpha", 1.0))
    bias = np.zeros(W.shape[0])
    if len(node.input) > 2 and node.input[2]:
        c = ctx.const(node.input[2], node, "C").reshape(-1)
        if c.size not in (1, W.shape[0]):
            raise UnsupportedError(f"{ctx.where(node)}: bias C expected {W.shape[0]} values, found {c.size}")
        bias = bias + float(a.get("beta", 1.0)) * c
    W, bias = _fold_pending(ctx, node.input[0], W, bias, node)
    _out(ctx, node, ctx.add(ir.Affine(name, W, bias), [x]))


@handles("MatMul")
def _matmul(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    x = ctx.node_in(node.input[0], node, fold_bn=True)
    B = ctx.const(node.input[1], node, "the weight")
    if B.ndim != 2:
        raise UnsupportedError(f"{ctx.where(node)}: expected a 2-D weight, found shape {B.shape}")
    W, bias = _fold_pending(ctx, node.input[0], B.T, np.zeros(B.shape[1]), node)
    _out(ctx, node, ctx.add(ir.Affine(name, W, bias), [x]))


@handles("Conv")
def _conv(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    x = ctx.node_in(node.input[0], node, fold_bn=True)
    W = ctx.const(node.input[1], node, "the weight")
    if W.ndim != 4:
        raise UnsupportedError(f"{ctx.where(node)}: only 2-D convolutions are supported, found a "
                               f"{W.ndim - 2}-D kernel")
    shape = ctx.nodes[x].out_shape
    if len(shape) != 3:
        raise UnsupportedError(f"{ctx.where(node)}: expected a (C, H, W) input, found {shape}")
    kh, kw = W.shape[2:]
    strides = tuple(a.get("strides", (1, 1)))
    dil = tuple(a.get("dilations", (1, 1)))
    pads = list(a.get("pads", (0, 0, 0, 0)))
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for dim, k, s, d in ((shape[1], kh, strides[0], dil[0]), (shape[2], kw, strides[1], dil[1])):
            total = max(0, (-(-dim // s) - 1) * s + (k - 1) * d + 1 - dim)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads.append((lo, total - lo))
        pads = [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]
    elif auto not in ("NOTSET", "VALID", ""):
        raise UnsupportedError(f"{ctx.where(node)}: auto_pad {auto!r} is not supported")
    if len(pads) != 4 or len(strides) != 2 or len(dil) != 2:
        raise UnsupportedError(f"{ctx.where(node)}: expected 2-D strides, dilations and 4 pads, "
                               f"found strides {strides}, dilations {dil}, pads {pads}")
    bias = np.zeros(W.shape[0])
    if len(node.input) > 2 and node.input[2]:
        c = ctx.const(node.input[2], node, "the bias").reshape(-1)
        if c.size != W.shape[0]:
            raise UnsupportedError(f"{ctx.where(node)}: bias expected {W.shape[0]} values, found {c.size}")
        bias = c
    groups = int(a.get("group", 1))
    W, bias = _fold_pending(ctx, node.input[0], W, bias, node, padded=any(pads))
    conv = ir.Conv2d(name, shape, stride=strides, padding=tuple(pads), dilation=dil,
                     groups=groups, weight=W, bias=bias)
    _out(ctx, node, ctx.add(conv, [x]))


@handles("Add")
def _add(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    data = [t for t in node.input if t in ctx.producer]
    other = [t for t in node.input if t not in ctx.producer]
    if len(data) == 2:  # a residual sum of two branches
        syn = ctx.synapses(ctx.value(data[0], node), node, name) + \
            ctx.synapses(ctx.value(data[1], node), node, name)
        shapes = {ctx.nodes[s].out_shape for s in syn}
        if len(shapes) != 1:
            raise UnsupportedError(f"{ctx.where(node)}: branches of different shapes {sorted(shapes)}")
        ctx.producer[node.output[0]] = _Sum(tuple(syn))
        return
    if len(data) != 1 or len(other) != 1:
        raise UnsupportedError(f"{ctx.where(node)}: must add a constant to one tensor or two tensors")
    target = ctx.nodes.get(ctx.node_in(data[0], node))
    c = ctx.const(other[0], node, "the addend")
    if not isinstance(target, (ir.Affine, ir.Conv2d)) or ctx.consumers(target.name):
        raise UnsupportedError(f"{ctx.where(node)}: a constant Add must follow a Gemm, MatMul or Conv")
    n_out = target.bias.shape[0]
    flat = c.reshape(-1)
    if flat.size not in (1, n_out) or (isinstance(target, ir.Conv2d) and c.ndim and c.shape[-1] not in (1,)
                                        and flat.size != 1):
        raise UnsupportedError(f"{ctx.where(node)}: addend of shape {c.shape} is not a per-output bias")
    ctx.nodes[target.name] = target.replace(bias=target.bias + np.broadcast_to(flat, (n_out,)))
    ctx.producer[node.output[0]] = target.name


@handles("BatchNormalization")
def _batchnorm(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    x = ctx.node_in(node.input[0], node)
    target = ctx.nodes[x]
    gamma, beta, mean, var = (ctx.const(t, node, w).reshape(-1) for t, w in
                              zip(node.input[1:5], ("scale", "B", "mean", "var")))
    if np.any(var < 0):
        raise UnsupportedError(f"{ctx.where(node)}: running variance must be >= 0")
    scale = gamma / np.sqrt(var + float(a.get("epsilon", 1e-5)))
    shift = beta - mean * scale
    if isinstance(target, (ir.Affine, ir.Conv2d)) and not ctx.consumers(x):  # fold backwards
        w = target.weight * (scale[:, None] if target.weight.ndim == 2 else scale[:, None, None, None])
        ctx.nodes[x] = target.replace(weight=w, bias=target.bias * scale + shift)
        ctx.producer[node.output[0]] = x
    elif isinstance(target, (ir.ReLU, ir.Flatten, ir.AvgPool2d, ir.Input)):  # fold forwards
        ctx.pending_bn[node.output[0]] = (scale, shift, node.name)
        ctx.producer[node.output[0]] = x
    else:
        raise UnsupportedError(f"{ctx.where(node)}: must follow a Conv, Gemm, MatMul or activation")


@handles("Relu", "Clip")
def _relu(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    upper = None
    if node.op_type == "Clip":
        lo, hi = a.get("min"), a.get("max")
        if len(node.input) > 1 and node.input[1]:
            lo = ctx.const(node.input[1], node, "min")
        if len(node.input) > 2 and node.input[2]:
            hi = ctx.const(node.input[2], node, "max")
        for what, v in (("min", lo), ("max", hi)):
            if v is not None and np.asarray(v).size != 1:
                raise UnsupportedError(f"{ctx.where(node)}: {what} must be a scalar, found shape "
                                       f"{np.asarray(v).shape}")
        lo = None if lo is None else float(np.asarray(lo).reshape(()))
        hi = None if hi is None else float(np.asarray(hi).reshape(()))
        if lo is None or lo != 0.0:
            raise UnsupportedError(f"{ctx.where(node)}: min must be 0 (rates are non-negative), found {lo}")
        upper = None if hi is None or not np.isfinite(hi) else hi
        if upper is not None and not upper > 0:
            raise UnsupportedError(f"{ctx.where(node)}: max must be > 0, found {upper}")
    syn = ctx.synapses(ctx.value(node.input[0], node), node, name)
    shape = ctx.nodes[syn[0]].out_shape
    _out(ctx, node, ctx.add(ir.ReLU(name, int(np.prod(shape)), upper, shape=shape), syn))


def _pool_geometry(ctx: _Ctx, node: Any, a: dict[str, Any], shape: tuple[int, ...]
                   ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    k = tuple(a.get("kernel_shape", ()))
    if len(k) != 2:
        raise UnsupportedError(f"{ctx.where(node)}: only 2-D pooling is supported, found kernel {k}")
    s = tuple(a.get("strides", k))
    pads = tuple(a.get("pads", (0, 0, 0, 0)))
    if a.get("ceil_mode", 0):
        raise UnsupportedError(f"{ctx.where(node)}: ceil_mode=1 is not supported (use floor mode)")
    if any(pads) and not a.get("count_include_pad", 0):
        raise UnsupportedError(f"{ctx.where(node)}: padding with count_include_pad=0 averages the "
                               f"border windows unevenly; use count_include_pad=1 or no padding")
    auto = a.get("auto_pad", b"NOTSET")
    if (auto.decode() if isinstance(auto, bytes) else str(auto)) not in ("NOTSET", "VALID", ""):
        raise UnsupportedError(f"{ctx.where(node)}: auto_pad is not supported")
    return k, s, pads  # type: ignore[return-value]


@handles("AveragePool")
def _avgpool(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    x = ctx.node_in(node.input[0], node)
    shape = ctx.nodes[x].out_shape
    if len(shape) != 3:
        raise UnsupportedError(f"{ctx.where(node)}: expected a (C, H, W) input, found {shape}")
    k, s, pads = _pool_geometry(ctx, node, a, shape)
    _out(ctx, node, ctx.add(ir.AvgPool2d(name, shape, k, s, pads), [x]))


def _global_pool(ctx: _Ctx, node: Any, name: str) -> str:
    x = ctx.node_in(node.input[0], node)
    shape = ctx.nodes[x].out_shape
    if len(shape) != 3:
        raise UnsupportedError(f"{ctx.where(node)}: expected a (C, H, W) input, found {shape}")
    return ctx.add(ir.AvgPool2d(name, shape, shape[1:], shape[1:]), [x])


@handles("GlobalAveragePool")
def _gap(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    _out(ctx, node, _global_pool(ctx, node, name))


@handles("ReduceMean")
def _reduce_mean(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    axes = a.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = ctx.const(node.input[1], node, "axes").astype(int).tolist()
    if sorted(int(x) % 4 for x in (axes or [])) != [2, 3]:
        raise UnsupportedError(f"{ctx.where(node)}: only a mean over H and W (axes 2, 3) is "
                               f"supported, found axes {axes}")
    pooled = _global_pool(ctx, node, name)
    if a.get("keepdims", 1):
        _out(ctx, node, pooled)
    else:
        _out(ctx, node, ctx.add(ir.Flatten(f"{name}.flatten", ctx.nodes[pooled].out_shape), [pooled]))


@handles("Shape")
def _shape(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    v = ctx.value(node.input[0], node, fold_bn=True)
    n = ctx.nodes[v.synapses[0] if isinstance(v, _Sum) else v]
    full = (None, *n.out_shape)
    start, end = int(a.get("start", 0)), a.get("end")
    ctx.shape_values[node.output[0]] = _ShapeValue(full[start:None if end is None else int(end)])


def _shape_value(ctx: _Ctx, tensor: str, node: Any) -> _ShapeValue:
    if tensor in ctx.shape_values:
        return ctx.shape_values[tensor]
    raise UnsupportedError(f"{ctx.where(node)}: supported only in shape arithmetic (Shape -> Gather "
                           f"-> Unsqueeze -> Concat -> Reshape, as x.view(x.size(0), -1) writes), "
                           f"found it applied to '{tensor}'")


def _ints_of(ctx: _Ctx, tensor: str, node: Any, what: str) -> list[int]:
    return [int(i) for i in np.asarray(ctx.const(tensor, node, what)).reshape(-1)]


@handles("Gather")
def _gather(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    sv = _shape_value(ctx, node.input[0], node)
    idx = np.asarray(ctx.const(node.input[1], node, "the indices"))
    if int(a.get("axis", 0)) != 0 or sv.scalar:
        raise UnsupportedError(f"{ctx.where(node)}: expected a gather along axis 0 of a shape, found "
                               f"axis {a.get('axis', 0)}")
    picked = tuple(sv.values[int(i)] for i in idx.reshape(-1))
    ctx.shape_values[node.output[0]] = _ShapeValue(picked, scalar=idx.ndim == 0)


@handles("Unsqueeze")
def _unsqueeze(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    sv = _shape_value(ctx, node.input[0], node)
    axes: list[int] = list(a["axes"]) if "axes" in a else _ints_of(ctx, node.input[1], node, "axes")
    if not sv.scalar or axes not in ([0], [-1]):
        raise UnsupportedError(f"{ctx.where(node)}: expected a scalar unsqueezed on axis 0, found "
                               f"{len(sv.values)} values, axes {axes}")
    ctx.shape_values[node.output[0]] = _ShapeValue(sv.values)


@handles("Cast")
def _cast(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    ctx.shape_values[node.output[0]] = _shape_value(ctx, node.input[0], node)


@handles("Concat")
def _concat(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    if any(t in ctx.shape_values for t in node.input):  # shape arithmetic: 1-D integer parts
        parts: list[int | None] = []
        for t in node.input:
            parts += (list(_shape_value(ctx, t, node).values) if t in ctx.shape_values
                      else _ints_of(ctx, t, node, "a shape part"))
        ctx.shape_values[node.output[0]] = _ShapeValue(tuple(parts))
        return
    if int(a.get("axis", 1)) not in (1, -3):
        raise UnsupportedError(f"{ctx.where(node)}: only concatenation along channels (axis 1) is "
                               f"supported, found axis {a.get('axis')}")
    xs = [ctx.node_in(t, node) for t in node.input]
    shapes = tuple(ctx.nodes[x].out_shape for x in xs)
    if any(len(s) != 3 for s in shapes):
        raise UnsupportedError(f"{ctx.where(node)}: expected (C, H, W) inputs, found {list(shapes)}")
    _out(ctx, node, ctx.add(ir.Concat(name, shapes), xs))


@handles("Flatten", "Reshape", "Squeeze")
def _flatten(ctx: _Ctx, node: Any, a: dict[str, Any], name: str) -> None:
    x = ctx.node_in(node.input[0], node, fold_bn=True)
    shape = ctx.nodes[x].out_shape
    size = int(np.prod(shape))
    if node.op_type == "Flatten" and a.get("axis", 1) != 1:
        raise UnsupportedError(f"{ctx.where(node)}: axis {a.get('axis')} is not supported (only 1)")
    if node.op_type == "Reshape" and node.input[1] in ctx.shape_values:  # (x.size(0), -1)
        computed = ctx.shape_values[node.input[1]].values
        if len(computed) != 2 or computed[0] is not None or computed[1] not in (-1, size):
            shown = ["batch" if d is None else d for d in computed]
            raise UnsupportedError(f"{ctx.where(node)}: reshape to {shown}: only (batch, -1) is supported")
    elif node.op_type == "Reshape":
        target = ctx.const(node.input[1], node, "the shape").astype(int).tolist()
        if len(target) != 2 or target[1] not in (-1, size) or target[0] not in (-1, 0, 1) and target[1] == -1:
            raise UnsupportedError(f"{ctx.where(node)}: reshape to {target}: only (batch, -1) is supported")
    if node.op_type == "Squeeze":
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = ctx.const(node.input[1], node, "axes").astype(int).tolist()
        kept = [d for i, d in enumerate(shape, start=1) if not (axes is None and d == 1 or
                                                               axes is not None and i in [x % 4 for x in axes])]
        if len(kept) != 1:
            raise UnsupportedError(f"{ctx.where(node)}: only squeezing to (batch, n) is supported")
    if node.input[0] in ctx.pending_bn:
        ctx.pending_bn[node.output[0]] = ctx.pending_bn[node.input[0]]
    _out(ctx, node, ctx.add(ir.Flatten(name, shape), [x]))


# -- loading ---------------------------------------------------------------------------------
def _to_float(arr: np.ndarray, ctx_or_path: Any, tensor: str) -> np.ndarray:
    if arr.dtype.kind not in "iufb" or arr.dtype.kind == "b" and arr.size > 1:
        where = ctx_or_path.path if isinstance(ctx_or_path, _Ctx) else ctx_or_path
        raise UnsupportedError(f"{where}: tensor '{tensor}': expected numbers, found dtype {arr.dtype}")
    return arr.astype(np.float64)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _read(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise OnnxImportError(f"{path}: {not_a_file(path)} (expected an ONNX model)")
    try:
        model = onnx.load(str(path))  # external data (m.onnx.data) is read from the model's folder
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxImportError(f"{path}: not a valid ONNX model ({first[:200]})") from None
    _check_opsets(path, model)
    return model


#: Oldest default-domain opset whose ops the handlers implement (Clip's min/max attributes,
#: Gemm without 'broadcast', ...).
MIN_OPSET = 7


def _check_opsets(path: Path, model: Any) -> None:
    """The default ONNX domain at an opset in [MIN_OPSET, newest this onnx knows]; no op from
    another domain (the handlers know the default domain's semantics only)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    v = versions.get("ai.onnx")
    if v is None or not MIN_OPSET <= v <= newest:
        raise OnnxImportError(f"{path}: opset_import: expected the default ONNX domain at opset "
                              f"{MIN_OPSET}..{newest}, found {v if v is not None else 'none'}")
    foreign = [f"node '{n.name or n.output[0]}' ({n.domain}.{n.op_type})" for n in model.graph.node
               if n.domain not in ("", "ai.onnx")]
    if foreign:
        raise UnsupportedError(f"{path}: ops outside the default ONNX domain: {', '.join(foreign[:5])}")


def _per_sample_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims[1:]):
            out[vi.name] = tuple(int(d.dim_value) for d in dims[1:])
    return out


def load_onnx(path: str | Path) -> ir.Graph:
    """Read an ONNX model file and return its ANN graph."""
    from onnx import numpy_helper

    path = Path(path)
    model = _read(path)
    g = model.graph
    unsupported = [f"node '{n.name or n.output[0]}' ({n.op_type}"
                   + (f": {REFUSED[n.op_type]})" if n.op_type in REFUSED else ")")
                   for n in g.node if n.op_type not in HANDLERS]
    if unsupported:
        raise UnsupportedError(f"{path}: unsupported ops: {', '.join(unsupported)}; "
                               f"supported: {', '.join(sorted(HANDLERS))}")
    consts = {}
    for t in g.initializer:
        try:
            consts[t.name] = _to_float(numpy_helper.to_array(t), path, t.name)
        except SpikeforgeError:
            raise
        except Exception as exc:
            import onnx

            if t.data_type not in onnx.TensorProto.DataType.values():
                raise OnnxImportError(f"{path}: initializer '{t.name}' data_type: expected an ONNX "
                                      f"tensor type, found {t.data_type}") from None
            raise OnnxImportError(f"{path}: initializer '{t.name}' is unreadable ({str(exc)[:120]})") from None
    data_inputs = [i for i in g.input if i.name not in consts]
    if len(data_inputs) != 1:
        raise UnsupportedError(f"{path}: expected one data input, found {len(data_inputs)}")
    inp = data_inputs[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    shape = tuple(int(d) for d in dims[1:])
    if not shape or any(d <= 0 for d in shape):
        raise UnsupportedError(
            f"{path}: input '{inp.name}' needs a static per-sample shape after the batch axis, found {dims}")
    ctx = _Ctx(path, list(g.node), consts, _per_sample_shapes(model))
    inp_name = ctx.add(ir.Input(_clean(inp.name), shape), [])
    ctx.producer[inp.name] = inp_name
    for node in g.node:
        HANDLERS[node.op_type](ctx, node, _attrs(node), _node_name(node))
    outs = list(g.output)
    if len(outs) != 1:
        raise UnsupportedError(f"{path}: expected one model output, found {len(outs)}")
    last = ctx.value(outs[0].name, outs[0])
    if isinstance(last, _Sum):
        raise UnsupportedError(f"{path}: the model output is a residual sum; end with a Gemm/Conv")
    ctx.add(ir.Output("output", ctx.nodes[last].out_shape), [last])
    try:
        return ir.Graph(tuple(ctx.nodes.values()), tuple(ctx.edges), {"source": str(path)})
    except SpikeforgeError as exc:
        raise UnsupportedError(f"{path}: {exc}") from None


def _node_name(node: Any) -> str:
    """The IR name of an ONNX node: the torch module path when the exporter recorded it (the
    dynamo exporter's ``namespace`` metadata, e.g. 'features.3'), else :func:`_clean` of its name."""
    meta = {p.key: p.value for p in node.metadata_props}
    scope = meta.get("namespace")
    if scope:
        names = [part.split(":")[0].strip() for part in scope.split("/")]
        path = ".".join(n for n in names[1:-1] if n)
        if path:
            return path
    return _clean(node.name or node.output[0], node.op_type)


def _clean(name: str, op: str = "") -> str:
    """A readable IR name from an ONNX node name: torch's '/net/net.2/Clip' becomes 'net.2'
    (the module path's last part); other names keep their text with '/' as '_'."""
    parts = [p for p in name.strip("/").split("/") if p]
    if len(parts) > 1 and op and parts[-1].split("_")[0] == op:
        return parts[-2]
    return "_".join(parts) or "node"
