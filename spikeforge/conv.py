"""2-D convolution for every part of spikeforge: the float ANN evaluation, the exact integer
synaptic sums of the cpu backend (and Lava's conv process model), and the explicit
connection list (pre, post, w) that Brian2 builds its synapses from.

Layouts are C order throughout: a (C, H, W) tensor is flat index ``c*H*W + h*W + w``.
Geometry: :class:`spikeforge.ir.ConvGeometry` (padding = (top, left, bottom, right)).
"""

from __future__ import annotations

import math

import numpy as np

from spikeforge.ir import ConvGeometry


def _torch():
    import torch

    return torch


def conv2d(x: np.ndarray, weight: np.ndarray, geom: ConvGeometry, dtype: str = "float64") -> np.ndarray:
    """y = conv2d(x, weight) for x (N, C_in*H*W) flat -> (N, C_out*H_out*W_out) in ``dtype``
    (``'float64'`` for the ANN; integer data in float32/float64 is exact below the mantissa)."""
    torch = _torch()
    import torch.nn.functional as F

    tdt = getattr(torch, dtype)
    n = x.shape[0]
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=dtype)).reshape(n, *geom.input_shape)
    t, l, b, r = geom.padding
    if t or l or b or r:
        xt = F.pad(xt, (l, r, t, b))
    wt = torch.tensor(np.asarray(weight), dtype=tdt)
    with torch.no_grad():
        y = F.conv2d(xt, wt, stride=geom.stride, dilation=geom.dilation, groups=geom.groups)
    return y.reshape(n, -1).numpy()


def symmetric_padding(geom: ConvGeometry) -> tuple[int, int] | None:
    """Symmetric (pad_h, pad_w) computing the same windows as ``geom``'s (top, left, bottom,
    right) padding, or None. (top, left) on both sides does when bottom <= top, right <= left
    and the extra rows/columns start no further window (same output shape): window (i, j)
    reads rows i*sh - top + ky*dh either way. Folding an AvgPool2d into a padded strided
    Conv2d gives such paddings (NIR and netx pad symmetrically)."""
    t, l, b, r = geom.padding
    if b > t or r > l:
        return None
    return (t, l) if geom._replace(padding=(t, l, t, l)).output_shape == geom.output_shape else None


def fan_in(weight: np.ndarray) -> int:
    """Inputs per output neuron: C_in/groups * kH * kW (4-D) or in (2-D)."""
    return int(math.prod(weight.shape[1:]))


def exact_dtype(weight: np.ndarray, max_input: int) -> str:
    """The cheaper float type whose sums of these integers are exact (spikeforge.neuron.exact_float_dtype)."""
    from spikeforge.neuron import exact_float_dtype

    dt = exact_float_dtype(fan_in(weight), int(np.abs(weight).max(initial=0)), max_input)
    return np.dtype(dt).name


def conv2d_int(s: np.ndarray, weight: np.ndarray, geom: ConvGeometry, max_input: int) -> np.ndarray:
    """acc = conv2d(s, w) exactly, for integer spikes/payloads s (N, C_in*H*W) -> int64."""
    y = conv2d(s, weight, geom, exact_dtype(weight, max_input))
    return np.rint(y).astype(np.int64)


def connections(weight: np.ndarray, geom: ConvGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every nonzero synapse of the convolution as flat (pre, post, w) arrays (int64): the
    sparse connectivity Brian2 builds, and what fan-in/fan-out counts are taken from."""
    c_in, h, w = geom.input_shape
    c_out, ho, wo = geom.output_shape
    (kh, kw), (sh, sw), (dh, dw), g = geom.kernel, geom.stride, geom.dilation, geom.groups
    t, l, _, _ = geom.padding
    cin_g, cout_g = c_in // g, c_out // g
    pre_l, post_l, w_l = [], [], []
    oy, ox = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
    for co in range(c_out):
        grp = co // cout_g
        for ci in range(cin_g):
            for ky in range(kh):
                iy = oy * sh - t + ky * dh
                for kx in range(kw):
                    wv = int(weight[co, ci, ky, kx])
                    if wv == 0:
                        continue
                    ix = ox * sw - l + kx * dw
                    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
                    if not ok.any():
                        continue
                    cin = grp * cin_g + ci
                    pre_l.append((cin * h + iy[ok]) * w + ix[ok])
                    post_l.append((co * ho + oy[ok]) * wo + ox[ok])
                    w_l.append(np.full(int(ok.sum()), wv, np.int64))
    if not pre_l:
        z = np.zeros(0, np.int64)
        return z, z.copy(), z.copy()
    return (np.concatenate(pre_l).astype(np.int64), np.concatenate(post_l).astype(np.int64),
            np.concatenate(w_l))


def synapse_count(weight: np.ndarray, geom: ConvGeometry) -> int:
    """Connections of the convolution: per kernel offset, its nonzero weights times the output
    positions where that offset lands inside the (unpadded) input."""
    _, h, w = geom.input_shape
    _, ho, wo = geom.output_shape
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.stride, geom.dilation
    t, l, _, _ = geom.padding
    oy, ox = np.arange(ho) * sh - t, np.arange(wo) * sw - l
    total = 0
    nz = (np.asarray(weight) != 0).sum(axis=(0, 1))
    for ky in range(kh):
        ny = int(((oy + ky * dh >= 0) & (oy + ky * dh < h)).sum())
        for kx in range(kw):
            nx = int(((ox + kx * dw >= 0) & (ox + kx * dw < w)).sum())
            total += int(nz[ky, kx]) * ny * nx
    return total
