"""Running samples through backends, and comparing backends spike for spike."""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Sequence

import numpy as np

from spikeforge import ir
from spikeforge.backends import RunResult, get_backend
from spikeforge.encoding import Encoding, encode, encode_spikes
from spikeforge.errors import DataError, SpikeforgeError
from spikeforge.network import Network, lower


class Simulation(NamedTuple):
    backend: str
    result: RunResult
    timesteps: int
    steps: int
    seconds: float  # compile + run

    @property
    def predictions(self) -> np.ndarray:
        return self.result.predictions


def payloads_for(graph: ir.Graph, x: np.ndarray, timesteps: int, encoding: Encoding = "current",
                 seed: int = 0) -> np.ndarray:
    """Inputs x (samples, features) as the integer payloads the graph's backends run."""
    return _payloads(lower(graph), x, timesteps, encoding, seed)


def _as_samples(x: np.ndarray) -> np.ndarray:
    """Rates (samples, features...) flattened to (samples, features); spike trains (3-D bool) kept."""
    x = np.asarray(x)
    if x.ndim == 3 and x.dtype == bool:
        return x
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


def _payloads(net: Network, x: np.ndarray, timesteps: int, encoding: Encoding, seed: int) -> np.ndarray:
    x = _as_samples(x)
    if x.ndim == 3:  # recorded spike trains, run as binary input spikes
        if x.shape[2] != net.input.size:
            raise DataError(f"data: expected {net.input.size} inputs per step, found {x.shape[2]}")
        return encode_spikes(x, timesteps, net.depth, net.input.payload_max)
    if x.shape[1] != net.input.size:
        raise DataError(f"data: expected {net.input.size} features per sample, found {x.shape[1]}")
    return encode(x, timesteps, net.depth, net.input.payload_max, encoding, seed)


#: Largest payload array (samples x steps x inputs) encoded and run at once: bounds memory.
CHUNK_VALUES = 2**25


def simulate(graph: ir.Graph, backend: str, x: np.ndarray, timesteps: int,
             encoding: Encoding = "current", seed: int = 0, **options: Any) -> Simulation:
    """Encode x, compile the graph on ``backend`` once, run all samples (in chunks of at most
    CHUNK_VALUES payload values; the spikes do not depend on the chunking). ``x``: rates
    (samples, features), or recorded spike trains, bool (samples, T, inputs)."""
    x = _as_samples(x)
    net = lower(graph)
    steps = net.steps(timesteps)
    per_chunk = max(1, CHUNK_VALUES // max(1, steps * x.shape[-1]))
    be = get_backend(backend, **options)
    t0 = time.perf_counter()
    program = be.compile(graph)
    parts = []
    for start in range(0, max(len(x), 1), per_chunk):
        chunk = x[start:start + per_chunk]
        # the rate code draws per chunk from (seed, chunk start): reproducible for a given data set
        payloads = _payloads(net, chunk, timesteps, encoding, seed + start)
        parts.append(be.run(program, payloads, sample_offset=start))
    result = parts[0] if len(parts) == 1 else RunResult(
        {k: np.concatenate([p.spikes[k] for p in parts]) for k in parts[0].spikes},
        np.concatenate([p.v_final for p in parts]), parts[0].readout, parts[0].vth_scaled)
    seconds = time.perf_counter() - t0
    return Simulation(backend, result, timesteps, steps, seconds)


class Divergence(NamedTuple):
    sample: int
    layer: str
    neuron: int
    step: int
    reference: bool
    other: bool


class Comparison(NamedTuple):
    spikes: int  # spikes of the compared backend
    reference_spikes: int
    mismatched_spikes: int  # spikes present in one and not the other (layer, neuron, step)
    mismatched_v_final: int  # readout potentials that differ at the last step
    per_layer: dict[str, int]  # mismatched spikes per layer
    first_divergence: Divergence | None


def compare(ref: RunResult, other: RunResult, layer_order: Sequence[str]) -> Comparison:
    """Spike-for-spike comparison; the first divergence is the earliest step (then the
    earliest layer in topological order, then the lowest neuron) of the first sample that differs."""
    per_layer, first = {}, None
    best: tuple[int, int, int, int] | None = None
    for li, name in enumerate(layer_order):
        a, b = ref.spikes[name], other.spikes[name]
        if a.shape != b.shape:
            raise SpikeforgeError(f"layer '{name}': spike arrays differ in shape, {a.shape} vs {b.shape}")
        diff = a != b
        per_layer[name] = int(diff.sum())
        if per_layer[name]:
            idx = np.argwhere(diff)  # (sample, step, neuron), lexicographic
            keys = [(int(s), int(t), li, int(n)) for s, t, n in idx]
            k = min(keys)
            if best is None or k < best:
                best = k
    if best is not None:
        s, t, li, n = best
        name = layer_order[li]
        first = Divergence(s, name, n, t, bool(ref.spikes[name][s, t, n]), bool(other.spikes[name][s, t, n]))
    return Comparison(
        spikes=int(sum(other.spikes[n].sum() for n in layer_order)),
        reference_spikes=int(sum(ref.spikes[n].sum() for n in layer_order)),
        mismatched_spikes=int(sum(per_layer.values())),
        mismatched_v_final=int((ref.v_final != other.v_final).sum()),
        per_layer=per_layer,
        first_divergence=first,
    )


def verify(graph: ir.Graph, backends: Sequence[str], x: np.ndarray, timesteps: int,
           encoding: Encoding = "current", seed: int = 0) -> tuple[dict[str, Simulation], dict[str, Comparison]]:
    """Run the same inputs on every backend; compare each to the first."""
    if len(backends) < 2:
        raise SpikeforgeError(f"backends: expected at least two to compare, found {list(backends)}")
    order = [l.name for l in lower(graph).layers]
    sims = {b: simulate(graph, b, x, timesteps, encoding, seed) for b in backends}
    ref = sims[backends[0]].result
    return sims, {b: compare(ref, sims[b].result, order) for b in backends[1:]}
