"""Running samples through backends, and comparing backends spike for spike."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Literal, NamedTuple, Sequence, Union

import numpy as np

from spikeforge import interrupts, ir, progress
from spikeforge.backends import RunResult, get_backend
from spikeforge.encoding import Encoding, encode, encode_spikes
from spikeforge.errors import DataError, SpikeforgeError
from spikeforge.network import Network, lower


class Simulation(NamedTuple):
    backend: str
    result: RunResult  # the recorded layers (the readout always) of all samples
    timesteps: int
    steps: int
    seconds: float  # compile + run
    firing_rates: dict[str, float] = {}  # every layer: spikes / (samples * steps * neurons)

    @property
    def predictions(self) -> np.ndarray:
        return self.result.predictions


def payloads_for(graph: ir.Graph, x: np.ndarray, timesteps: int, encoding: Encoding = "current",
                 seed: int = 0) -> np.ndarray:
    """Inputs x (samples, features) as the integer payloads the graph's backends run."""
    return _payloads(lower(graph), x, timesteps, encoding, seed)


def _as_samples(x: np.ndarray) -> np.ndarray:
    """Rates (samples, features...) flattened to (samples, features) (made float per chunk:
    a whole data set is never copied); spike trains (3-D bool) kept."""
    x = np.asarray(x)
    if x.ndim == 3 and x.dtype == bool:
        return x
    return x.reshape(len(x), -1)


def _payloads(net: Network, x: np.ndarray, timesteps: int, encoding: Encoding, seed: int,
              first_sample: int = 0) -> np.ndarray:
    x = _as_samples(x)
    if x.ndim == 3:  # recorded spike trains, run as binary input spikes
        if x.shape[2] != net.input.size:
            raise DataError(f"data: expected {net.input.size} inputs per step, found {x.shape[2]}")
        return encode_spikes(x, timesteps, net.depth, net.input.payload_max)
    x = np.asarray(x, dtype=np.float64)
    if x.shape[1] != net.input.size:
        raise DataError(f"data: expected {net.input.size} features per sample, found {x.shape[1]}")
    return encode(x, timesteps, net.depth, net.input.payload_max, encoding, seed, first_sample)


#: Default memory budget (MiB) of the samples a run holds at once (its chunk's working set).
MEMORY_MB = 512
#: Working set per input value and per neuron, per step of one sample: payloads (int32,
#: float64 on the way), every layer's spikes (bool) and synaptic input (int64) and the
#: backends' temporaries (a float product, its int64 cast).
BYTES_PER_INPUT_STEP = 24
BYTES_PER_NEURON_STEP = 32

Record = Union[Literal["all", "readout"], Sequence[str]]


def bytes_per_sample(net: Network, steps: int) -> int:
    """Estimated working set of one sample on one backend, all layers and steps."""
    return steps * (net.input.size * BYTES_PER_INPUT_STEP
                    + sum(l.size for l in net.layers) * BYTES_PER_NEURON_STEP)


def chunk_samples(net: Network, steps: int, memory_mb: float, backends: int = 1) -> int:
    """Samples per chunk so that ``backends`` results of a chunk fit in ``memory_mb`` MiB."""
    if not memory_mb > 0:
        raise SpikeforgeError(f"memory budget: expected a number of MiB > 0, found {memory_mb}")
    return max(1, int(memory_mb * 2**20) // max(1, backends * bytes_per_sample(net, steps)))


def _recorded(net: Network, record: Record) -> list[str]:
    names = [l.name for l in net.layers]
    if record == "all":
        return names
    if record == "readout":
        return [net.readout]
    unknown = [r for r in record if r not in names]
    if unknown:
        raise SpikeforgeError(f"record: expected layers among {names}, found {unknown}")
    return [n for n in names if n in record or n == net.readout]


class _Collector:
    """The recorded layers of every chunk, written into arrays for all samples (allocated at
    the first chunk: no copy of the whole at the end), and every layer's spike total."""

    def __init__(self, net: Network, samples: int, steps: int, keep: list[str]) -> None:
        self.net, self.samples, self.steps, self.keep = net, samples, steps, keep
        self.spikes: dict[str, np.ndarray] = {}
        self.v_final: np.ndarray | None = None
        self.totals = {l.name: 0 for l in net.layers}
        self.first: RunResult | None = None

    def add(self, start: int, r: RunResult) -> None:
        if self.first is None:
            self.first = r
            for k in self.keep:
                self.spikes[k] = np.zeros((self.samples,) + r.spikes[k].shape[1:], bool)
            self.v_final = np.zeros((self.samples,) + r.v_final.shape[1:], r.v_final.dtype)
        n = len(r.v_final)
        for k in self.keep:
            self.spikes[k][start:start + n] = r.spikes[k]
        assert self.v_final is not None
        self.v_final[start:start + n] = r.v_final
        for k in self.totals:
            self.totals[k] += int(np.count_nonzero(r.spikes[k]))

    def result(self) -> RunResult:
        assert self.first is not None and self.v_final is not None
        return RunResult(self.spikes, self.v_final, self.first.readout, self.first.vth_scaled)

    def rates(self) -> dict[str, float]:
        return {l.name: self.totals[l.name] / max(1, self.samples * self.steps * l.size)
                for l in self.net.layers}


def _chunks(net: Network, x: np.ndarray, timesteps: int, encoding: Encoding, seed: int,
            per_chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first sample, payloads) of each chunk; at least one chunk, empty for no samples."""
    for start in range(0, max(len(x), 1), per_chunk):
        yield start, _payloads(net, x[start:start + per_chunk], timesteps, encoding, seed, start)


def simulate(graph: ir.Graph, backend: str, x: np.ndarray, timesteps: int,
             encoding: Encoding = "current", seed: int = 0, record: Record = "all",
             memory_mb: float = MEMORY_MB,
             on_chunk: Callable[[int, RunResult], None] | None = None,
             **options: Any) -> Simulation:
    """Encode x, compile the graph on ``backend`` once and run all samples in chunks whose
    working set (payloads and every layer's spikes for all steps) fits ``memory_mb`` MiB;
    the spikes do not depend on the chunking. ``x``: rates (samples, features), or recorded
    spike trains, bool (samples, T, inputs). The result keeps the layers in ``record``
    ('all', 'readout' or layer names; the readout always); ``on_chunk(first sample,
    result of the chunk, every layer)`` sees each chunk before it is reduced."""
    x = _as_samples(x)
    net = lower(graph)
    steps = net.steps(timesteps)
    keep = _recorded(net, record)
    per_chunk = chunk_samples(net, steps, memory_mb)
    be = get_backend(backend, **options)
    t0 = time.perf_counter()
    program = be.compile(graph)
    out = _Collector(net, len(x), steps, keep)
    with progress.bar(len(x), backend) as bar:
        for start, payloads in _chunks(net, x, timesteps, encoding, seed, per_chunk):
            r = be.run(program, payloads, sample_offset=start)  # every layer: its firing rate is summed
            interrupts.check()
            del payloads
            if on_chunk is not None:
                on_chunk(start, r)
            out.add(start, r)
            del r
            progress.settle()
            bar.update(min(per_chunk, len(x) - start))
    seconds = time.perf_counter() - t0
    return Simulation(backend, out.result(), timesteps, steps, seconds, out.rates())


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
    per_layer: dict[str, int] = {}
    best: tuple[int, int, int, int] | None = None
    for li, name in enumerate(layer_order):
        a, b = ref.spikes[name], other.spikes[name]
        if a.shape != b.shape:
            raise SpikeforgeError(f"layer '{name}': spike arrays differ in shape, {a.shape} vs {b.shape}")
        diff = a != b
        per_layer[name] = int(np.count_nonzero(diff))
        if per_layer[name]:  # C order is (sample, step, neuron): the first True is this layer's earliest
            s, t, n = (int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape))
            if best is None or (s, t, li, n) < best:
                best = (s, t, li, n)
    first = None
    if best is not None:
        s, t, li, n = best
        name = layer_order[li]
        first = Divergence(s, name, n, t, bool(ref.spikes[name][s, t, n]), bool(other.spikes[name][s, t, n]))
    return Comparison(
        spikes=int(sum(np.count_nonzero(other.spikes[n]) for n in layer_order)),
        reference_spikes=int(sum(np.count_nonzero(ref.spikes[n]) for n in layer_order)),
        mismatched_spikes=int(sum(per_layer.values())),
        mismatched_v_final=int((ref.v_final != other.v_final).sum()),
        per_layer=per_layer,
        first_divergence=first,
    )


def _merge(total: Comparison | None, c: Comparison, offset: int) -> Comparison:
    """Comparisons of consecutive chunks as one; ``offset`` = the chunk's first sample."""
    first = c.first_divergence
    if first is not None:
        first = first._replace(sample=first.sample + offset)
    if total is None:
        return c._replace(first_divergence=first)
    return Comparison(
        spikes=total.spikes + c.spikes,
        reference_spikes=total.reference_spikes + c.reference_spikes,
        mismatched_spikes=total.mismatched_spikes + c.mismatched_spikes,
        mismatched_v_final=total.mismatched_v_final + c.mismatched_v_final,
        per_layer={k: total.per_layer[k] + c.per_layer[k] for k in total.per_layer},
        first_divergence=total.first_divergence or first,
    )


def verify(graph: ir.Graph, backends: Sequence[str], x: np.ndarray, timesteps: int,
           encoding: Encoding = "current", seed: int = 0, record: Record = "readout",
           memory_mb: float = MEMORY_MB) -> tuple[dict[str, Simulation], dict[str, Comparison]]:
    """Run the same inputs on every backend and compare each to the first, spike for spike
    in every layer, chunk by chunk (all backends' results of a chunk fit ``memory_mb``
    MiB); the simulations keep the layers in ``record`` (default: the readout)."""
    if len(backends) < 2:
        raise SpikeforgeError(f"backends: expected at least two to compare, found {list(backends)}")
    x = _as_samples(x)
    net = lower(graph)
    steps = net.steps(timesteps)
    order = [l.name for l in net.layers]
    keep = _recorded(net, record)
    per_chunk = chunk_samples(net, steps, memory_mb, len(backends))
    seconds = dict.fromkeys(backends, 0.0)
    bes, programs = {}, {}
    for b in backends:
        t0 = time.perf_counter()
        bes[b] = get_backend(b)
        programs[b] = bes[b].compile(graph)
        seconds[b] += time.perf_counter() - t0
    outs = {b: _Collector(net, len(x), steps, keep) for b in backends}
    comps: dict[str, Comparison | None] = dict.fromkeys(backends[1:])
    with progress.bar(len(x) * len(backends), "verify " + ",".join(backends)) as bar:
        for start, payloads in _chunks(net, x, timesteps, encoding, seed, per_chunk):
            results = {}
            for b in backends:
                t0 = time.perf_counter()
                results[b] = bes[b].run(programs[b], payloads, sample_offset=start)
                interrupts.check()
                seconds[b] += time.perf_counter() - t0
                progress.settle()
                bar.update(len(payloads))
            for b in backends[1:]:
                comps[b] = _merge(comps[b], compare(results[backends[0]], results[b], order), start)
            for b in backends:
                outs[b].add(start, results[b])
            del results, payloads
    sims = {b: Simulation(b, outs[b].result(), timesteps, steps, seconds[b], outs[b].rates())
            for b in backends}
    return sims, {b: c for b, c in comps.items() if c is not None}
