"""The integer neuron and synapse arithmetic, as pure functions on typed NamedTuples.

This is spikeforge's written semantics in code (docs/semantics.md in prose). It reproduces
Lava 0.10's bit-accurate fixed-point models (``PyLifModelBitAcc``, ``PyDenseModelBitAcc``)
bit for bit; the Lava backend runs Lava's own arithmetic and the tests compare the two.
All arrays are batched: state has shape (batch, neurons).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

STATE_BITS = 24
STATE_MAX = 2 ** (STATE_BITS - 1)  # 2**23: u wraps and v saturates here
DECAY_UNITY = 4096  # du, dv are 12-bit fractions of 4096
ACT_SHIFT = 6  # synaptic input and threshold are MSB-aligned by 6 bits


class LIFParams(NamedTuple):
    """Per-layer constants. ``bias`` is in state units (bias_mant << bias_exp), shape (n,)."""

    vth: int  # 17-bit unsigned; compared as vth << 6
    du: int  # 12-bit unsigned current decay: u *= (4096 - du - 1) / 4096
    dv: int  # 12-bit unsigned voltage decay: v *= (4096 - dv) / 4096
    bias: np.ndarray  # int64, state units
    reset: str  # "zero" | "subtract"


class LIFState(NamedTuple):
    u: np.ndarray  # int64 (batch, n), 24-bit wrapped
    v: np.ndarray  # int64 (batch, n), 24-bit saturated


def lif_init(batch: int, n: int) -> LIFState:
    z = np.zeros((batch, n), np.int64)
    return LIFState(z, z.copy())


def decay(x: np.ndarray, d: int) -> np.ndarray:
    """trunc(x * (4096 - d) / 4096), rounding toward zero (Lava: sign * (|x| >> 12))."""
    p = x * (DECAY_UNITY - d)
    return np.sign(p) * (np.abs(p) >> 12)


def wrap24(x: np.ndarray) -> np.ndarray:
    """Lava's 24-bit wrap of u: values > 2**23 lose 2**24, values <= -2**23 gain 2**24."""
    w = np.where(x > STATE_MAX, x - 2 * STATE_MAX, x)
    return np.where(w <= -STATE_MAX, x + 2 * STATE_MAX, w)


def saturate24(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -STATE_MAX + 1, STATE_MAX - 1)


def lif_step(p: LIFParams, s: LIFState, a: np.ndarray) -> tuple[LIFState, np.ndarray]:
    """One step; ``a`` is this step's synaptic input (integer, batch x n).

        u' = wrap24(trunc(u (4096 - du - 1) / 4096) + (a << 6))
        v' = sat24(trunc(v (4096 - dv) / 4096) + u' + bias)
        spike = v' > vth << 6;  v' = 0 | v' - (vth << 6) where spiked
    """
    u = wrap24(decay(s.u, p.du + 1) + (a << ACT_SHIFT))
    v = saturate24(decay(s.v, p.dv) + u + p.bias)
    spike = v > (p.vth << ACT_SHIFT)
    if p.reset == "zero":
        v = np.where(spike, 0, v)
    else:
        v = np.where(spike, v - (p.vth << ACT_SHIFT), v)
    return LIFState(u, v), spike


def shift(acc: np.ndarray, exp: int) -> np.ndarray:
    """acc * 2**exp with floor rounding (an arithmetic shift), as Lava's Dense applies it."""
    return acc << exp if exp >= 0 else acc >> -exp


def exact_float_dtype(fan_in: int, max_weight: int, max_input: int) -> type:
    """Smallest float type whose matmul of these integers is exact (partial sums < 2**24/2**53)."""
    bound = fan_in * max(1, max_weight) * max(1, max_input)
    if bound < 2**24:
        return np.float32
    if bound < 2**53:
        return np.float64
    raise OverflowError(f"integer sums up to {bound} cannot be computed exactly in float64")


def dense(weight: np.ndarray, exp: int, s: np.ndarray, max_input: int) -> np.ndarray:
    """a = floor(sum_j w_ij s_j 2**exp) for a batch of inputs s (..., in) -> (..., out), exact.

    Spikes are 0/1 (or graded payloads <= max_input) and weights 8-bit, so a float matmul
    is exact while partial sums stay below the float mantissa; BLAS makes it fast.
    """
    dt = exact_float_dtype(weight.shape[1], int(np.abs(weight).max(initial=0)), max_input)
    acc = np.rint(s.astype(dt) @ weight.T.astype(dt)).astype(np.int64)
    return shift(acc, exp)
