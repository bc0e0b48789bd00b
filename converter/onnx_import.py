"""ONNX -> spikeforge IR (an ANN graph of Input, Flatten, Affine, ReLU, Output).

Supported ops: Gemm, MatMul (+ Add), Relu, Clip(min 0), Flatten, Reshape to (batch, -1),
Identity, Dropout, BatchNormalization after Gemm/MatMul (folded into that affine map) or after
an activation (folded into the next one),
Constant, and a final Softmax/LogSoftmax (dropped: the argmax is the same). Every op outside
that list is reported, all at once, before anything is converted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spikeforge import ir
from spikeforge.errors import SpikeforgeError, UnsupportedError

SUPPORTED_OPS = ("Gemm", "MatMul", "Add", "Relu", "Clip", "Flatten", "Reshape", "Identity",
                 "Dropout", "BatchNormalization", "Constant", "Softmax", "LogSoftmax")


class OnnxImportError(SpikeforgeError):
    """A broken or unreadable ONNX file."""


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def load_onnx(path: str | Path) -> ir.Graph:
    """Read an ONNX model file and return its ANN graph."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise OnnxImportError(f"{path}: no such file (expected an ONNX model)")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxImportError(f"{path}: not a valid ONNX model ({first[:200]})") from None
    g = model.graph

    unsupported = [f"node '{n.name or n.output[0]}' ({n.op_type})" for n in g.node
                   if n.op_type not in SUPPORTED_OPS]
    if unsupported:
        raise UnsupportedError(
            f"{path}: unsupported ops: {', '.join(unsupported)}; supported: {', '.join(SUPPORTED_OPS)}"
        )

    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t).astype(np.float64)
                                     for t in g.initializer}
    data_inputs = [i for i in g.input if i.name not in consts]
    if len(data_inputs) != 1:
        raise UnsupportedError(f"{path}: expected one data input, found {len(data_inputs)}")
    inp = data_inputs[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    shape = tuple(int(d) for d in dims[1:])
    if not shape or any(d <= 0 for d in shape):
        raise UnsupportedError(
            f"{path}: input '{inp.name}' needs a static per-sample shape after the batch axis, found {dims}"
        )
    b = _Builder(path)
    b.add(ir.Input(_clean(inp.name), shape), [])
    producer: dict[str, str] = {inp.name: _clean(inp.name)}  # tensor -> IR node
    # BatchNormalization after an activation, y = s * h + t: folded into the next affine map
    pending_bn: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}

    def src(tensor: str, node: Any, affine: bool = False) -> str:
        if tensor in pending_bn and not affine:
            raise UnsupportedError(
                f"{path}: node '{node.name}' ({node.op_type}) reads the output of "
                f"'{pending_bn[tensor][2]}' (BatchNormalization after an activation), which can only "
                f"be folded into a following Gemm or MatMul"
            )
        if tensor not in producer:
            raise UnsupportedError(
                f"{path}: node '{node.name}' ({node.op_type}) reads '{tensor}', which is not "
                f"computed from the model input (constants are only allowed as weights)"
            )
        return producer[tensor]

    def const(tensor: str, node: Any, what: str) -> np.ndarray:
        if tensor not in consts:
            raise UnsupportedError(
                f"{path}: node '{node.name}' ({node.op_type}): {what} must be a constant, "
                f"found computed tensor '{tensor}'"
            )
        return consts[tensor]

    def fold_bn(tensor: str, W: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """W (s h + t) + b = (W diag(s)) h + (b + W t) for a BatchNorm pending on ``tensor``."""
        if tensor not in pending_bn:
            return W, bias
        scale, shift, _ = pending_bn[tensor]
        return W * scale[None, :], bias + W @ shift

    nodes = list(g.node)
    for i, node in enumerate(nodes):
        op, name, a = node.op_type, _clean(node.name or node.output[0], node.op_type), _attrs(node)
        if op == "Constant":
            from onnx import numpy_helper as nh

            value = a.get("value")
            if value is None:
                raise UnsupportedError(f"{path}: node '{node.name}' (Constant) without a tensor value")
            consts[node.output[0]] = nh.to_array(value).astype(np.float64)
            continue
        if op in ("Identity", "Dropout"):
            if node.input[0] in consts:  # e.g. torch shares equal weights through an Identity
                consts[node.output[0]] = consts[node.input[0]]
            else:
                producer[node.output[0]] = src(node.input[0], node)
            continue
        if op in ("Softmax", "LogSoftmax"):
            if any(node.output[0] in n.input for n in nodes[i + 1:]):
                raise UnsupportedError(f"{path}: node '{node.name}' ({op}) is only supported as the last op")
            producer[node.output[0]] = src(node.input[0], node)
            continue
        if op == "Gemm":
            x = src(node.input[0], node, affine=True)
            if a.get("transA", 0):
                raise UnsupportedError(f"{path}: node '{node.name}' (Gemm) with transA=1")
            B = const(node.input[1], node, "B")
            W = B if a.get("transB", 0) else B.T
            W = a.get("alpha", 1.0) * W
            bias = np.zeros(W.shape[0])
            if len(node.input) > 2 and node.input[2]:
                bias = bias + a.get("beta", 1.0) * const(node.input[2], node, "C")
            producer[node.output[0]] = b.add(ir.Affine(name, *fold_bn(node.input[0], W, bias)), [x])
            continue
        if op == "MatMul":
            x = src(node.input[0], node, affine=True)
            B = const(node.input[1], node, "the weight")
            if B.ndim != 2:
                raise UnsupportedError(f"{path}: node '{node.name}' (MatMul) with a {B.ndim}-D weight")
            producer[node.output[0]] = b.add(ir.Affine(name, *fold_bn(node.input[0], B.T, np.zeros(B.shape[1]))), [x])
            continue
        if op == "Add":
            data = [t for t in node.input if t in producer]
            other = [t for t in node.input if t not in producer]
            if len(data) != 1 or len(other) != 1:
                raise UnsupportedError(f"{path}: node '{node.name}' (Add) must add a constant to one tensor")
            target = b.graph_node(producer[data[0]])
            c = const(other[0], node, "the addend")
            if not isinstance(target, ir.Affine) or b.consumers(target.name):
                raise UnsupportedError(f"{path}: node '{node.name}' (Add) must follow a Gemm or MatMul")
            b.replace(target.replace(bias=target.bias + np.broadcast_to(c.reshape(-1), target.bias.shape)))
            producer[node.output[0]] = target.name
            continue
        if op == "BatchNormalization":
            target = b.graph_node(src(node.input[0], node))
            gamma, beta, mean, var = (const(t, node, w) for t, w in zip(node.input[1:5],
                                                                       ("scale", "B", "mean", "var")))
            scale = gamma / np.sqrt(var + a.get("epsilon", 1e-5))
            if isinstance(target, ir.Affine) and not b.consumers(target.name):  # fold backwards
                b.replace(target.replace(weight=target.weight * scale[:, None],
                                         bias=(target.bias - mean) * scale + beta))
            elif isinstance(target, (ir.ReLU, ir.Flatten)):  # after an activation: fold forwards
                pending_bn[node.output[0]] = (scale, beta - mean * scale, node.name)
            else:
                raise UnsupportedError(
                    f"{path}: node '{node.name}' (BatchNormalization) must follow a Gemm, MatMul or activation"
                )
            producer[node.output[0]] = target.name
            continue
        if op == "Relu":
            x = src(node.input[0], node)
            producer[node.output[0]] = b.add(ir.ReLU(name, b.size_of(x)), [x])
            continue
        if op == "Clip":
            x = src(node.input[0], node)
            lo = a.get("min")
            hi = a.get("max")
            if len(node.input) > 1 and node.input[1]:
                lo = float(const(node.input[1], node, "min"))
            if len(node.input) > 2 and node.input[2]:
                hi = float(const(node.input[2], node, "max"))
            if lo is None or float(lo) != 0.0:
                raise UnsupportedError(
                    f"{path}: node '{node.name}' (Clip): min must be 0 (rates are non-negative), found {lo}"
                )
            upper = None if hi is None or not np.isfinite(hi) else float(hi)
            producer[node.output[0]] = b.add(ir.ReLU(name, b.size_of(x), upper), [x])
            continue
        if op in ("Flatten", "Reshape"):
            x = src(node.input[0], node)
            if op == "Flatten" and a.get("axis", 1) != 1:
                raise UnsupportedError(f"{path}: node '{node.name}' (Flatten) with axis {a.get('axis')}")
            if op == "Reshape":
                target_shape = const(node.input[1], node, "the shape").astype(int).tolist()
                if len(target_shape) != 2 or target_shape[1] not in (-1, b.size_of(x)):
                    raise UnsupportedError(
                        f"{path}: node '{node.name}' (Reshape) to {target_shape}: only (batch, -1) is supported"
                    )
            shape_in = b.shape_of(x)
            producer[node.output[0]] = b.add(ir.Flatten(name, shape_in), [x])
            continue
        raise UnsupportedError(f"{path}: node '{node.name}' ({op}) is not supported")  # unreachable

    outs = list(g.output)
    if len(outs) != 1:
        raise UnsupportedError(f"{path}: expected one model output, found {len(outs)}")
    last = src(outs[0].name, outs[0])
    b.add(ir.Output("output", (b.size_of(last),)), [last])
    return b.build(source=str(path))


def _clean(name: str, op: str = "") -> str:
    """A readable IR name from an ONNX node name: torch's '/net/net.2/Clip' becomes 'net.2'
    (the module path's last part); other names keep their text with '/' as '_'."""
    parts = [p for p in name.strip("/").split("/") if p]
    if len(parts) > 1 and op and parts[-1].split("_")[0] == op:
        return parts[-2]
    return "_".join(parts) or "node"


class _Builder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.nodes: dict[str, ir.Node] = {}
        self.edges: list[tuple[str, str]] = []

    def add(self, node: ir.Node, srcs: list[str]) -> str:
        name, k = node.name, 1
        while name in self.nodes:
            k += 1
            name = f"{node.name}_{k}"
        node = node.replace(name=name)
        self.nodes[name] = node
        self.edges += [(s, name) for s in srcs]
        for s in srcs:
            if self.nodes[s].out_size != node.in_size:
                raise UnsupportedError(
                    f"{self.path}: node '{name}' expects {node.in_size} inputs, "
                    f"'{s}' gives {self.nodes[s].out_size}"
                )
        return name

    def replace(self, node: ir.Node) -> None:
        self.nodes[node.name] = node

    def graph_node(self, name: str) -> ir.Node:
        return self.nodes[name]

    def consumers(self, name: str) -> list[str]:
        return [b for a, b in self.edges if a == name]

    def size_of(self, name: str) -> int:
        return self.nodes[name].out_size

    def shape_of(self, name: str) -> tuple[int, ...]:
        n = self.nodes[name]
        return tuple(n.shape) if isinstance(n, ir.Input) else (n.out_size,)

    def build(self, **metadata: object) -> ir.Graph:
        return ir.Graph(tuple(self.nodes.values()), tuple(self.edges), metadata)
