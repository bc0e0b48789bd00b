"""The cpu backend: vectorized integer simulation, batched over samples, and over time for
feedforward graphs (each layer's input for all steps in one exact matrix product).

It implements spikeforge.neuron's arithmetic, which matches Lava's fixed-point models bit
for bit; it is the oracle the tests compare Lava and Brian2 against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spikeforge import ir
from spikeforge.backends.base import Backend, RunResult
from spikeforge.errors import DataError
from spikeforge.network import Layer, Network, Projection
from spikeforge.neuron import (LIFParams, LIFState, StochasticParams, dense, lif_init, lif_step, shift,
                               stochastic_step, uniform_ints)

#: Working-set bound per sub-batch: samples x steps x (largest layer) int64 values.
WORK_VALUES = 2**24


@dataclass
class CpuProgram:
    net: Network
    order: list[str]  # layer names in topological order
    time_batched: bool


class CpuBackend(Backend):
    name = "cpu"

    def __init__(self, time_batched: bool | None = None) -> None:
        self.time_batched = time_batched

    def compile(self, graph: ir.Graph, **options: Any) -> CpuProgram:
        net = self.lower(graph)
        batched = net.feedforward if self.time_batched is None else (self.time_batched and net.feedforward)
        return CpuProgram(net, [l.name for l in net.layers], batched)

    def run(self, program: CpuProgram, payloads: np.ndarray, sample_offset: int = 0) -> RunResult:
        net = program.net
        payloads = check_payloads(net, payloads)
        run = _run_time_batched if program.time_batched else _run_stepwise
        batch, steps, _ = payloads.shape
        widest = max([net.input.size] + [l.size for l in net.layers])
        per = max(1, WORK_VALUES // max(1, steps * widest))
        if batch <= per:
            spikes, v_final = run(net, payloads, sample_offset)
        else:  # sub-batches bound the working set by the widest layer; spikes do not depend on it
            parts = [run(net, payloads[i:i + per], sample_offset + i) for i in range(0, batch, per)]
            spikes = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
            v_final = np.concatenate([p[1] for p in parts])
        ro = net.layer(net.readout)
        return RunResult(spikes, v_final, net.readout, ro.node.vth_scaled)


def check_payloads(net: Network, payloads: np.ndarray) -> np.ndarray:
    p = np.asarray(payloads)
    if p.ndim != 3 or p.shape[2] != net.input.size:
        raise DataError(
            f"payloads: expected shape (batch, steps, {net.input.size}), found {p.shape}"
        )
    if p.size and not np.issubdtype(p.dtype, np.integer) and not np.array_equal(p, np.rint(p)):
        raise DataError("payloads: expected integers, found fractional values")
    if p.size and (p.min() < 0 or p.max() > net.input.payload_max):
        raise DataError(
            f"payloads: expected integers in [0, {net.input.payload_max}], found [{p.min()}, {p.max()}]"
        )
    return p.astype(np.int64)


def _max_input(net: Network, proj: Projection) -> int:
    return net.input.payload_max if proj.graded else 1


def synaptic_input(net: Network, proj: Projection, s: np.ndarray) -> np.ndarray:
    """a = floor(W s 2**weight_exp) for spikes/payloads s (..., src) -> (..., dst), exact:
    a dense product or a native convolution (spikeforge.conv), by the projection's kind."""
    if proj.conv is None:
        return dense(proj.weight, proj.weight_exp, s, _max_input(net, proj))
    from spikeforge.conv import conv2d_int

    lead = s.shape[:-1]
    acc = conv2d_int(s.reshape(-1, s.shape[-1]), proj.weight, proj.conv, _max_input(net, proj))
    return shift(acc.reshape(*lead, -1), proj.weight_exp)


def _run_time_batched(net: Network, payloads: np.ndarray, offset: int) -> tuple[dict, np.ndarray]:
    """Feedforward: a layer's synaptic input for all steps is one matmul of its sources'
    whole spike trains, shifted by the one-step delay; then the neuron scan over time."""
    batch, steps, _ = payloads.shape
    out: dict[str, np.ndarray] = {net.input.name: payloads}
    v_final = None
    for layer in net.layers:
        a = np.zeros((batch, steps, layer.size), np.int64)
        for proj in net.incoming(layer.name):
            src = out[proj.src]
            a[:, 1:] += synaptic_input(net, proj, src[:, :-1])
        params, state = layer.params, lif_init(batch, layer.size)
        s = np.zeros((batch, steps, layer.size), bool)
        for t in range(steps):
            state, s[:, t] = _neuron_step(layer, params, state, a[:, t], t, offset)
        out[layer.name] = s
        if layer.name == net.readout:
            v_final = state.v
    assert v_final is not None
    return {l.name: out[l.name] for l in net.layers}, v_final


def _run_stepwise(net: Network, payloads: np.ndarray, offset: int) -> tuple[dict, np.ndarray]:
    """Any graph: all layers update synchronously from the previous step's spikes."""
    batch, steps, _ = payloads.shape
    states = {l.name: lif_init(batch, l.size) for l in net.layers}
    params = {l.name: l.params for l in net.layers}
    spikes = {l.name: np.zeros((batch, steps, l.size), bool) for l in net.layers}
    prev: dict[str, np.ndarray] = {l.name: np.zeros((batch, l.size), np.int64) for l in net.layers}
    prev[net.input.name] = np.zeros((batch, net.input.size), np.int64)
    for t in range(steps):
        new = {}
        for layer in net.layers:
            a = np.zeros((batch, layer.size), np.int64)
            for proj in net.incoming(layer.name):
                a += synaptic_input(net, proj, prev[proj.src])
            states[layer.name], s = _neuron_step(layer, params[layer.name], states[layer.name], a, t, offset)
            spikes[layer.name][:, t] = s
            new[layer.name] = s.astype(np.int64)
        new[net.input.name] = payloads[:, t]
        prev = new
    return spikes, states[net.readout].v


def _neuron_step(layer: Layer, params: LIFParams | StochasticParams, state: LIFState, a: np.ndarray,
                 t: int, offset: int) -> tuple[LIFState, np.ndarray]:
    """One step of a layer: LIF (stateful) or stochastic (memoryless, counter-based draws
    for samples offset .. offset + batch - 1)."""
    if isinstance(params, StochasticParams):
        r = uniform_ints(params.seed, np.arange(offset, offset + a.shape[0]), t, a.shape[1], params.vth << 6)
        return state, stochastic_step(params, a, r)
    return lif_step(params, state, a)
