"""The integer neuron and synapse arithmetic, as pure functions on typed NamedTuples.

This is spikeforge's written semantics in code (docs/semantics.md in prose). It reproduces
Lava 0.10's bit-accurate fixed-point models (``PyLifModelBitAcc``, ``PyDenseModelBitAcc``)
bit for bit; the Lava backend runs Lava's own arithmetic and the tests compare the two.
All arrays are batched: state has shape (batch, neurons).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from spikeforge.fixedpoint import ACT_SHIFT, DECAY_SHIFT, DECAY_UNITY, STATE_BITS, STATE_MAX

__all__ = ["ACT_SHIFT", "DECAY_UNITY", "STATE_BITS", "STATE_MAX"]


class LIFParams(NamedTuple):
    """Per-layer constants, all integers in state units (``bias`` = bias_mant << bias_exp, (n,)).

    The defaults of the last four fields give Lava's stock Loihi 2 LIF exactly.
    """

    vth: int  # 17-bit unsigned; compared as vth << 6
    du: int  # 12-bit unsigned current decay: u *= (4096 - du - 1) / 4096
    dv: int  # 12-bit unsigned voltage decay toward v_rest: (v - v_rest) *= (4096 - dv) / 4096
    bias: np.ndarray  # int64 (n,), state units
    reset: str  # "zero" | "subtract" | "value"
    v_rest: int = 0  # 24-bit signed resting potential (decay and leak pull v toward it)
    v_reset: int = 0  # 24-bit signed, the reset value of reset="value"
    leak: int = 0  # 23-bit unsigned subtractive leak: |v - v_rest| shrinks by it, never crossing
    refractory: int = 0  # 8-bit unsigned: steps after a spike in which v is held and no spike occurs


class LIFState(NamedTuple):
    u: np.ndarray  # int64 (batch, n), 24-bit wrapped
    v: np.ndarray  # int64 (batch, n), 24-bit saturated
    ref: np.ndarray  # int64 (batch, n), refractory steps left


def lif_init(batch: int, n: int, v_init: np.ndarray | None = None) -> LIFState:
    """Every sample's starting state: u = ref = 0, v = v_init (per neuron, default 0)."""
    z = np.zeros((batch, n), np.int64)
    v = z.copy() if v_init is None else np.broadcast_to(np.asarray(v_init, np.int64), (batch, n)).copy()
    return LIFState(z, v, z.copy())


def decay(x: np.ndarray, d: int) -> np.ndarray:
    """trunc(x * (4096 - d) / 4096), rounding toward zero (Lava: sign * (|x| >> 12))."""
    p = x * (DECAY_UNITY - d)
    return np.sign(p) * (np.abs(p) >> DECAY_SHIFT)


def linear_leak(d: np.ndarray, leak: int) -> np.ndarray:
    """Move d toward 0 by ``leak`` without crossing it: sign(d) * max(|d| - leak, 0)."""
    return np.sign(d) * np.maximum(np.abs(d) - leak, 0) if leak else d


def wrap24(x: np.ndarray) -> np.ndarray:
    """Lava's 24-bit wrap of u: values > 2**23 lose 2**24, values <= -2**23 gain 2**24."""
    w = np.where(x > STATE_MAX, x - 2 * STATE_MAX, x)
    return np.where(w <= -STATE_MAX, x + 2 * STATE_MAX, w)


def saturate24(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -STATE_MAX + 1, STATE_MAX - 1)


def voltage(p: LIFParams, v: np.ndarray, u: np.ndarray | int) -> np.ndarray:
    """v' = sat24(v_rest + leak(trunc((v - v_rest) (4096 - dv) / 4096)) + u + bias), before the
    threshold test (monotone non-decreasing in v)."""
    return saturate24(p.v_rest + linear_leak(decay(v - p.v_rest, p.dv), p.leak) + u + p.bias)


def lif_step(p: LIFParams, s: LIFState, a: np.ndarray) -> tuple[LIFState, np.ndarray]:
    """One step; ``a`` is this step's synaptic input (integer, batch x n).

        u' = wrap24(trunc(u (4096 - du - 1) / 4096) + (a << 6))
        d  = leak(trunc((v - v_rest) (4096 - dv) / 4096))        leak: |d| -= leak, stop at 0
        v' = sat24(v_rest + d + u' + bias)                        (v' = v while refractory)
        spike = v' > vth << 6 (never while refractory)
        where spiked: v' = 0 | v_reset | v' - (vth << 6);  ref = refractory
    """
    u = wrap24(decay(s.u, p.du + 1) + (a << ACT_SHIFT))
    v = voltage(p, s.v, u)
    ref = s.ref
    if p.refractory:
        held = ref > 0
        v = np.where(held, s.v, v)
        ref = np.where(held, ref - 1, ref)
    spike = v > (p.vth << ACT_SHIFT)
    if p.refractory:
        spike &= ~held
        ref = np.where(spike, p.refractory, ref)
    if p.reset == "zero":
        v = np.where(spike, 0, v)
    elif p.reset == "value":
        v = np.where(spike, p.v_reset, v)
    else:
        v = np.where(spike, v - (p.vth << ACT_SHIFT), v)
    return LIFState(u, v, ref), spike


class StochasticParams(NamedTuple):
    """A memoryless stochastic neuron: fires with probability clip(z / (vth << 6), 0, 1)."""

    vth: int  # 17-bit unsigned; vth << 6 is the input that fires with certainty
    bias: np.ndarray  # int64 (n,), state units
    seed: int  # 32-bit unsigned; the layer's random stream


def stochastic_step(p: StochasticParams, a: np.ndarray, r: np.ndarray) -> np.ndarray:
    """z = (a << 6) + bias;  spike = z > r,  r uniform in [0, vth << 6) (see uniform_ints),
    so P(spike) = clip(z / (vth << 6), 0, 1)."""
    return ((a << ACT_SHIFT) + p.bias) > r


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(z: Any) -> Any:  # an array or a np.uint64 scalar
    z = (z + np.uint64(0x9E3779B97F4A7C15)) & _M64
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return z ^ (z >> np.uint64(31))


def uniform_ints(seed: int, samples: np.ndarray, step: int, n: int, high: int) -> np.ndarray:
    """Counter-based random integers in [0, high), a pure function of (seed, sample, step, neuron):

        h = splitmix64(splitmix64(splitmix64(seed) ^ sample) ^ (step << 32 | neuron))
        r = ((h >> 32) * high) >> 32

    Every backend draws the same numbers, whatever its batching or order of evaluation.
    Returns int64 (len(samples), n).
    """
    with np.errstate(over="ignore"):
        k = _splitmix64(np.uint64(seed) & _M64)
        k = _splitmix64(k ^ np.asarray(samples, np.uint64)[:, None])
        ctr = (np.uint64(step) << np.uint64(32)) | np.arange(n, dtype=np.uint64)[None, :]
        h = _splitmix64(k ^ ctr)
        return (((h >> np.uint64(32)) * np.uint64(high)) >> np.uint64(32)).astype(np.int64)


def shift(acc: Any, exp: int) -> Any:  # an integer array or scalar
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


# -- the reference simulation -------------------------------------------------------------------
def reference_synaptic_input(net, proj, s: np.ndarray) -> np.ndarray:
    """a = floor(W s 2**weight_exp) for spikes/payloads s (..., src) -> (..., dst) in numpy,
    dense or convolution (``net``: a spikeforge.network.Network, ``proj`` one of its Projections)."""
    max_input = net.input.payload_max if proj.graded else 1
    if proj.conv is None:
        return dense(proj.weight, proj.weight_exp, s, max_input)
    from spikeforge.conv import conv2d_int

    lead = s.shape[:-1]
    acc = conv2d_int(s.reshape(-1, s.shape[-1]), proj.weight, proj.conv, max_input)
    return shift(acc.reshape(*lead, -1), proj.weight_exp)


def _reference_neuron_step(layer, state: LIFState, a: np.ndarray, t: int, offset: int) -> tuple[LIFState, np.ndarray]:
    params = layer.params
    if layer.stochastic:
        r = uniform_ints(params.seed, np.arange(offset, offset + a.shape[0]), t, a.shape[1], params.vth << ACT_SHIFT)
        return state, stochastic_step(params, a, r)
    return lif_step(params, state, a)


def reference_simulate(net, payloads: np.ndarray, offset: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The plain numpy simulation of a Network, step by step (every graph; the semantics the
    fast cpu backend must reproduce bit for bit): all layers update synchronously from the
    previous step's spikes. payloads int (batch, steps, inputs) -> ({layer: bool (batch, steps,
    n)}, readout v after the last step)."""
    payloads = np.asarray(payloads, np.int64)
    batch, steps, _ = payloads.shape
    states = {l.name: lif_init(batch, l.size, l.v_init) for l in net.layers}
    spikes = {l.name: np.zeros((batch, steps, l.size), bool) for l in net.layers}
    prev = {l.name: np.zeros((batch, l.size), np.int64) for l in net.layers}
    prev[net.input.name] = np.zeros((batch, net.input.size), np.int64)
    for t in range(steps):
        new = {}
        for layer in net.layers:
            a = np.zeros((batch, layer.size), np.int64)
            for proj in net.incoming(layer.name):
                a += reference_synaptic_input(net, proj, prev[proj.src])
            states[layer.name], s = _reference_neuron_step(layer, states[layer.name], a, t, offset)
            spikes[layer.name][:, t] = s
            new[layer.name] = s.astype(np.int64)
        new[net.input.name] = payloads[:, t]
        prev = new
    return spikes, states[net.readout].v
