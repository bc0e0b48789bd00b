"""fold_linear: AvgPool2d and Concat folded into the next affine map (an ANN-level pass).

Average pooling is a fixed linear map P, so a pool followed by a synapse W is one synapse
W' = W . P (sum pooling whose 1/k^2 scale lands in the weights): no extra spiking layer, no
extra step of latency, nothing approximate. Pool -> Conv2d gives a Conv2d whose kernel is the
conv kernel spread over the pool windows (kernel s*d*(k-1) + p, stride s*S); pool -> Flatten
-> Affine gives an Affine over the unpooled input. A channel Concat followed by a synapse is
the sum of that synapse's slices applied to each input: the consumer is split by input
channels, one piece per input, all feeding the same neurons (their latencies are then
matched by balance_latency). Where the consumer cannot be split (the readout Gemm, whose
neurons are the network's output), activations joined by the Concat become one layer that
each branch's Conv2d writes its own channels of. Every fold is checked numerically on a random input before it
is accepted; what cannot be folded exactly is refused by name.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from spikeforge import ir
from spikeforge.errors import UnsupportedError

_N = TypeVar("_N", bound=ir.Node)


def identity_synapse(name: str, shape: ir.Shape) -> ir.Node:
    """A synapse that passes a tensor through unchanged: a depthwise 1x1 Conv2d of ones for
    (C, H, W), an identity Affine for vectors (residual shortcuts, relays)."""
    if len(shape) == 3:
        c = shape[0]
        return ir.Conv2d(name, shape, groups=c, weight=np.ones((c, 1, 1, 1)), bias=np.zeros(c))
    n = int(np.prod(shape))
    return ir.Affine(name, np.eye(n), np.zeros(n))


def unique_name(graph_names: set[str], base: str) -> str:
    """``base``, or ``base_2``, ``base_3``, ... : the first not in ``graph_names`` (then added)."""
    name, k = base, 1
    while name in graph_names:
        k += 1
        name = f"{base}_{k}"
    graph_names.add(name)
    return name


class _Edit:
    """Mutable working copy of a graph's nodes and edges (edge order kept)."""

    def __init__(self, graph: ir.Graph) -> None:
        self.nodes: dict[str, ir.Node] = {n.name: n for n in graph.nodes}
        self.order = [n.name for n in graph.nodes]
        self.edges = list(graph.edges)
        self.metadata = dict(graph.metadata)

    def get(self, name: str, kind: type[_N]) -> _N:
        node = self.nodes[name]
        assert isinstance(node, kind), f"{node.where()}: expected a {kind.__name__}"
        return node

    def preds(self, name: str) -> list[str]:
        return [a for a, b in self.edges if b == name]

    def succs(self, name: str) -> list[str]:
        return [b for a, b in self.edges if a == name]

    def add(self, node: ir.Node, after: str) -> None:
        self.nodes[node.name] = node
        self.order.insert(self.order.index(after) + 1, node.name)

    def remove(self, name: str) -> None:
        del self.nodes[name]
        self.order.remove(name)
        self.edges = [e for e in self.edges if name not in e]

    def graph(self) -> ir.Graph:
        return ir.Graph(tuple(self.nodes[n] for n in self.order), tuple(self.edges), self.metadata)


def _pool_matrix_adjoint(W: np.ndarray, pool: ir.AvgPool2d) -> np.ndarray:
    """W (out, C*Hp*Wp) over the pooled map -> W' (out, C*H*W) over the pool's input, W' = W P."""
    c, h, w = pool.input_shape
    _, hp, wp = pool.out_shape
    (ph, pw), (qh, qw) = pool.kernel_size, pool.stride
    t, l, _, _ = pool.padding
    out = W.shape[0]
    Wp = W.reshape(out, c, hp, wp)
    Wx = np.zeros((out, c, h, w))
    i, j = np.arange(hp), np.arange(wp)
    for rh in range(ph):
        ys = i * qh - t + rh
        yi = (ys >= 0) & (ys < h)
        for rw in range(pw):
            xs = j * qw - l + rw
            xi = (xs >= 0) & (xs < w)
            Wx[:, :, ys[yi][:, None], xs[xi][None, :]] += Wp[:, :, i[yi][:, None], j[xi][None, :]]
    return (Wx / (ph * pw)).reshape(out, -1)


def _pool_into_conv(conv: ir.Conv2d, pool: ir.AvgPool2d, name: str) -> ir.Conv2d:
    """Conv2d(AvgPool2d(x)) as one Conv2d on x."""
    co, cig, kh, kw = conv.weight.shape
    (ph, pw), (qh, qw) = pool.kernel_size, pool.stride
    (dh, dw), (sh, sw) = conv.dilation, conv.stride
    KH, KW = qh * dh * (kh - 1) + ph, qw * dw * (kw - 1) + pw
    K = np.zeros((co, cig, KH, KW))
    for a in range(kh):
        for b in range(kw):
            K[:, :, qh * dh * a:qh * dh * a + ph, qw * dw * b:qw * dw * b + pw] += \
                conv.weight[:, :, a:a + 1, b:b + 1] / (ph * pw)
    _, h, w = pool.input_shape
    top = qh * conv.padding[0] + pool.padding[0]
    left = qw * conv.padding[1] + pool.padding[1]
    _, ho, wo = conv.out_shape
    S_h, S_w = qh * sh, qw * sw
    bottom = max(0, (ho - 1) * S_h + KH - h - top)
    right = max(0, (wo - 1) * S_w + KW - w - left)
    return ir.Conv2d(name, pool.input_shape, stride=(S_h, S_w), padding=(top, left, bottom, right),
                     dilation=(1, 1), groups=conv.groups, weight=K, bias=conv.bias)


def _check_same(before: list[ir.Node], after: ir.Node, what: str) -> None:
    """The folded map equals the chain it replaces on a random input, or UnsupportedError."""
    from spikeforge.converter.ann import EVAL

    rng = np.random.default_rng(0)
    x = rng.random((2, before[0].in_size))
    y = x
    for node in before:
        y = EVAL.lookup(node)(node, y)
    z = EVAL.lookup(after)(after, x)
    if y.shape != z.shape or not np.allclose(y, z, rtol=1e-9, atol=1e-9):
        raise UnsupportedError(f"{what} cannot be folded exactly (the pool's windows and the next "
                               f"layer's stride and padding do not compose into one map); use pooling "
                               f"with kernel = stride, or no padding in the layer after an overlapping pool")


def _fold_pool(ed: _Edit, pool: ir.AvgPool2d, names: set[str]) -> None:
    succs = ed.succs(pool.name)
    (src,) = ed.preds(pool.name)
    if not succs:
        raise UnsupportedError(f"{pool.where()}: a pool must be followed by a Conv2d or a Flatten "
                               f"and Gemm (pooling folds into the next affine map)")
    for s in succs:
        node = ed.nodes[s]
        if isinstance(node, ir.Conv2d):
            new = _pool_into_conv(node, pool, node.name)
            _check_same([pool, node], new, f"{pool.where()} followed by {node.where()}")
            ed.nodes[s] = new
            ed.edges = [(src, s) if e == (pool.name, s) else e for e in ed.edges]
        elif isinstance(node, ir.Flatten) and len(node.out_shape) == 1 \
                and all(isinstance(ed.nodes[a], ir.Affine) for a in ed.succs(s)):
            flat = ir.Flatten(unique_name(names, f"{node.name}_unpooled"), pool.input_shape)
            ed.add(flat, s)
            ed.edges.append((src, flat.name))
            for a in ed.succs(s):
                aff = ed.get(a, ir.Affine)
                folded = aff.replace(weight=_pool_matrix_adjoint(aff.weight, pool))
                _check_same([pool, node, aff], folded, f"{pool.where()} followed by {aff.where()}")
                ed.nodes[a] = folded
                ed.edges = [(flat.name, a) if e == (s, a) else e for e in ed.edges]
            ed.remove(s)
        else:
            raise UnsupportedError(
                f"{pool.where()} feeds {node.where()}: a pool must be followed by a Conv2d or a "
                f"Flatten and Gemm (pooling folds into the next affine map)")
    ed.remove(pool.name)


def _feeds_readout(ed: _Edit, cat: ir.Concat) -> bool:
    """The Concat reaches the Output through a consumer and its successor (Flatten, Gemm)."""
    return any(isinstance(ed.nodes[d], ir.Output) for s in ed.succs(cat.name) for a in ed.succs(s)
               for d in ed.succs(a))


def _splittable(ed: _Edit, cat: ir.Concat) -> bool:
    """Whether every consumer of the Concat can be split by input: a Conv2d (groups 1) or a
    Flatten and Gemm whose pieces feed a hidden layer (the readout's input must be one map)."""
    if _feeds_readout(ed, cat):
        return False
    for s in ed.succs(cat.name):
        node, targets = ed.nodes[s], ed.succs(s)
        if not (isinstance(node, ir.Conv2d) and node.groups == 1 or isinstance(node, ir.Flatten)
                and len(node.out_shape) == 1 and all(isinstance(ed.nodes[a], ir.Affine) for a in targets)):
            return False
    return True


def _merge_concat(ed: _Edit, cat: ir.Concat) -> bool:
    """A Concat of activations that only it reads, each fed by convolutions (groups 1) of the
    same output size, becomes one activation layer: every producing Conv2d writes its own
    channel range of the joined map (zero weights and bias elsewhere), so the sum at each
    neuron is exactly the concatenated tensor. False (nothing changed) when it does not apply."""
    relus = [ed.nodes[r] for r in ed.preds(cat.name)]
    if not all(isinstance(r, ir.ReLU) and ed.succs(r.name) == [cat.name] for r in relus):
        return False
    uppers = {r.upper for r in relus if isinstance(r, ir.ReLU)}
    convs = {r.name: [ed.nodes[c] for c in ed.preds(r.name)] for r in relus}
    if len(uppers) != 1 or not all(cs and all(isinstance(c, ir.Conv2d) and c.groups == 1 for c in cs)
                                   for cs in convs.values()):
        return False
    total = sum(s[0] for s in cat.input_shapes)
    # named as the Concat: the ANN's activation of that name is the layer's (conversion checks)
    merged = ir.ReLU(cat.name, total * cat.input_shapes[0][1] * cat.input_shapes[0][2],
                     shape=(total, *cat.input_shapes[0][1:]), upper=uppers.pop())
    ed.edges = [(merged.name, b) if a == cat.name else (a, b) for a, b in ed.edges if b != cat.name]
    ed.nodes[cat.name] = merged
    offset = 0
    for r, shape in zip(relus, cat.input_shapes):
        for c in convs[r.name]:
            assert isinstance(c, ir.Conv2d)
            weight = np.zeros((total, *c.weight.shape[1:]))
            weight[offset:offset + shape[0]] = c.weight
            bias = np.zeros(total)
            bias[offset:offset + shape[0]] = c.bias
            ed.nodes[c.name] = c.replace(weight=weight, bias=bias)
            ed.edges.append((c.name, merged.name))
        offset += shape[0]
        ed.remove(r.name)
    return True


def _split_concat(ed: _Edit, cat: ir.Concat, names: set[str]) -> None:
    if not _splittable(ed, cat):
        if _merge_concat(ed, cat):
            return
        if _feeds_readout(ed, cat):
            raise UnsupportedError(
                f"{cat.where()} feeds the readout Gemm through a Flatten: its inputs must be "
                f"activations read only by the Concat and fed by Conv2d layers (groups 1), to be "
                f"merged into one layer; or add a hidden layer after the Concat")
    inputs = ed.preds(cat.name)
    chans = [s[0] for s in cat.input_shapes]
    bounds = np.cumsum([0] + chans)
    for s in ed.succs(cat.name):
        node = ed.nodes[s]
        targets = ed.succs(s)
        if isinstance(node, ir.Conv2d) and node.groups == 1:
            pieces = [ir.Conv2d(unique_name(names, f"{node.name}.{k}") if k else node.name, shp,
                                stride=node.stride, padding=node.padding, dilation=node.dilation,
                                weight=node.weight[:, bounds[k]:bounds[k + 1]],
                                bias=node.bias if k == 0 else np.zeros_like(node.bias))
                      for k, shp in enumerate(cat.input_shapes)]
            ed.nodes[s] = pieces[0]
            ed.edges = [e for e in ed.edges if e != (cat.name, s)]
            for k, (inp, piece) in enumerate(zip(inputs, pieces)):
                if k:
                    ed.add(piece, s)
                    ed.edges += [(piece.name, t) for t in targets]
                ed.edges.append((inp, piece.name))
        elif isinstance(node, ir.Flatten) and len(node.out_shape) == 1 \
                and all(isinstance(ed.nodes[a], ir.Affine) for a in targets):
            sizes = [int(np.prod(shp)) for shp in cat.input_shapes]
            cols = np.cumsum([0] + sizes)
            for a in targets:
                aff = ed.get(a, ir.Affine)
                dsts = ed.succs(a)
                for k, (inp, shp) in enumerate(zip(inputs, cat.input_shapes)):
                    flat = ir.Flatten(unique_name(names, f"{node.name}.{k}"), shp)
                    part = aff.replace(name=aff.name if k == 0 else unique_name(names, f"{aff.name}.{k}"),
                                       weight=aff.weight[:, cols[k]:cols[k + 1]],
                                       bias=aff.bias if k == 0 else np.zeros_like(aff.bias))
                    ed.add(flat, s)
                    ed.edges.append((inp, flat.name))
                    if k == 0:
                        ed.nodes[a] = part
                        ed.edges = [(flat.name, a) if e == (s, a) else e for e in ed.edges]
                    else:
                        ed.add(part, a)
                        ed.edges += [(flat.name, part.name)] + [(part.name, d) for d in dsts]
            ed.remove(s)
        else:
            raise UnsupportedError(
                f"{cat.where()} feeds {node.where()}: a channel Concat must be followed by a "
                f"Conv2d with groups=1 or a Flatten and Gemm (its consumer is split by input), "
                f"or join activations fed only by Conv2d layers (merged into one layer)")
    ed.remove(cat.name)


def fold_linear(graph: ir.Graph) -> ir.Graph:
    """Remove every AvgPool2d and Concat by folding them into the following synapses."""
    if not graph.of_type(ir.AvgPool2d, ir.Concat):
        return graph
    ed = _Edit(graph)
    names = set(ed.nodes)
    while True:  # concats first (a pool behind a concat then meets the split consumer)
        cats = [n for n in ed.order if isinstance(ed.nodes[n], ir.Concat)]
        if cats:
            _split_concat(ed, ed.get(cats[0], ir.Concat), names)
            continue
        pools = [n for n in ed.order if isinstance(ed.nodes[n], ir.AvgPool2d)]
        if not pools:
            break
        # fold the last pool first, so that a pool feeding a pool is met by the second's fold
        pool = ed.get(pools[-1], ir.AvgPool2d)
        if isinstance(ed.nodes[ed.preds(pool.name)[0]], ir.AvgPool2d):
            raise UnsupportedError(f"{pool.where()}: two pools in a row are not supported; "
                                   f"use one pool with the combined window")
        _fold_pool(ed, pool, names)
    return ed.graph()
