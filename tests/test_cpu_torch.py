"""The torch cpu backend (every execution path, on the CPU device) against the plain numpy
simulation it replaced (spikeforge.neuron.reference_simulate), on random graphs of every
neuron kind: spikes and readout potentials identical."""

from __future__ import annotations

import numpy as np
import pytest

from spikeforge import ir
from spikeforge.backends import cpu as cpu_mod
from spikeforge.backends.cpu import CpuBackend
from spikeforge.encoding import encode
from spikeforge.errors import SpikeforgeError
from spikeforge.network import lower
from spikeforge.neuron import reference_simulate
from spikeforge.testing import (assert_identical, random_conv_graph, random_fixed_graph, random_inputs,
                                with_initial_state)
from spikeforge.backends.base import RunResult

SIZES = [24, 20, 16, 6]


def lif(graph: ir.Graph, **changes) -> ir.Graph:
    return graph.with_nodes([n.replace(**changes) if isinstance(n, ir.FixedLIF) else n for n in graph.nodes])


def stochastic(graph: ir.Graph, layers=("lif1",)) -> ir.Graph:
    return graph.with_nodes([
        ir.FixedStochastic(n.name, n.size, vth=n.vth, bias_mant=n.bias_mant, bias_exp=n.bias_exp,
                           seed=17 + i) if n.name in layers else n for i, n in enumerate(graph.nodes)])


def stronger(graph: ir.Graph, by: int) -> ir.Graph:
    """Projections 2**by stronger: sums past 2**23 << 6, where u wraps."""
    return graph.with_nodes([n.replace(weight_exp=min(7, n.weight_exp + by)) if isinstance(n, ir.FixedAffine)
                             else n for n in graph.nodes])


def _vs(g: ir.Graph) -> int:
    return next(n for n in g.nodes if isinstance(n, ir.FixedLIF)).vth_scaled


GRAPHS = {
    "if-subtract": lambda: random_fixed_graph(SIZES, seed=1),
    "if-zero": lambda: random_fixed_graph(SIZES, seed=2, reset="zero"),
    "if-value": lambda: lif(random_fixed_graph(SIZES, seed=3), reset="value", v_reset=-3000),
    "if-wrapping": lambda: stronger(random_fixed_graph(SIZES, seed=4), 4),
    "lif-decay": lambda: random_fixed_graph(SIZES, seed=5, du=3000, dv=300),
    "lif-leak-rest": lambda: lif(random_fixed_graph(SIZES, seed=6, du=2000, dv=100), leak=500, v_rest=-2000),
    "lif-refractory-value": lambda: lif(random_fixed_graph(SIZES, seed=7, du=3500, dv=0), refractory=2,
                                        reset="value", v_reset=1000),
    "if-refractory": lambda: lif(random_fixed_graph(SIZES, seed=8), refractory=3),
    "if-v_rest": lambda: lif(random_fixed_graph(SIZES, seed=9), v_rest=700),
    "stochastic": lambda: stochastic(random_fixed_graph(SIZES, seed=10, du=3000, dv=300), ("lif1", "lif2")),
    "recurrent": lambda: random_fixed_graph(SIZES, seed=11, recurrent=True),
    "feedback-lif": lambda: random_fixed_graph(SIZES, seed=12, du=3900, dv=50, recurrent=True, feedback=True),
    "stochastic-recurrent": lambda: stochastic(random_fixed_graph(SIZES, seed=13, recurrent=True)),
    "conv-if": lambda: random_conv_graph((2, 8, 8), (4, 6), (1, 2), n_out=5, seed=14),
    "conv-lif-zero": lambda: random_conv_graph((1, 7, 9), (3, 4), (2, 1), n_out=4, seed=18, reset="zero",
                                               du=3000, dv=200, padding=0),
    # per-neuron initial membrane potentials, some above threshold (the closed form's loop)
    "if-subtract-v_init": lambda: with_initial_state(random_fixed_graph(SIZES, seed=19), seed=1),
    "if-zero-v_init": lambda: with_initial_state(random_fixed_graph(SIZES, seed=20, reset="zero"), seed=2),
    "lif-v_init": lambda: with_initial_state(random_fixed_graph(SIZES, seed=21, du=3000, dv=300, recurrent=True),
                                             seed=3),
    "conv-v_init": lambda: with_initial_state(random_conv_graph((2, 8, 8), (4, 6), (1, 2), n_out=5, seed=22), seed=4),
}


def payloads(graph: ir.Graph, n: int = 9, timesteps: int = 12, encoding: str = "current", seed: int = 0):
    net = lower(graph)
    x = random_inputs(n, net.input.size, seed=seed)
    return encode(x, timesteps, net.depth, net.input.payload_max, encoding, seed=seed + 1)


def reference(graph: ir.Graph, p: np.ndarray, offset: int = 0) -> RunResult:
    net = lower(graph)
    spikes, v = reference_simulate(net, p, offset)
    return RunResult(spikes, v, net.readout, net.layer(net.readout).node.vth_scaled)


@pytest.mark.parametrize("encoding", ["current", "rate"])
@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_torch_paths_equal_numpy_reference(kind, encoding):
    graph = GRAPHS[kind]()
    p = payloads(graph, encoding=encoding, seed=len(kind))
    want = reference(graph, p, offset=5)
    rates = [s.mean() for s in want.spikes.values()]
    assert all(0.0 < r < 1.0 for r in rates), rates  # every layer lively: a wrong step shows
    for options in ({}, {"time_batched": False}, {"conv_im2col": True}, {"closed_form": True},
                    {"channels_last": False}):
        be = CpuBackend(**options)
        assert_identical(want, be.run(be.compile(graph), p, sample_offset=5))


def test_wrap_and_int64_paths_are_taken():
    prog = CpuBackend().compile(GRAPHS["if-wrapping"]())
    assert any(nr.wrap for nr in prog.layers)
    assert {nr.kind for nr in prog.layers} == {"if"}
    kinds = {nr.kind for g in ("lif-decay", "if-v_rest", "stochastic", "if-zero") for nr in CpuBackend().compile(GRAPHS[g]()).layers}
    assert kinds == {"if", "lif", "stochastic"}
    assert {nr.kind for nr in CpuBackend().compile(GRAPHS["if-v_rest"]()).layers} == {"lif"}
    import torch

    assert CpuBackend().compile(GRAPHS["if-subtract"]()).layers[0].dtype == torch.int32


def test_sub_batches_record_and_time_varying_input(monkeypatch):
    graph = GRAPHS["if-subtract"]()
    p = payloads(graph, n=7, encoding="rate")
    p[:, 3:5] = p[:, 3:4]  # equal consecutive slices among varying ones
    want = reference(graph, p)
    be = CpuBackend()
    prog = be.compile(graph)
    monkeypatch.setattr(cpu_mod, "WORK_VALUES", 2 * p.shape[1] * 24)  # 2 samples per sub-batch
    assert_identical(want, be.run(prog, p))
    got = be.run(prog, p, record=["lif1"])
    assert set(got.spikes) == {"lif1", "lif3"}  # the readout always
    np.testing.assert_array_equal(got.spikes["lif1"], want.spikes["lif1"])
    np.testing.assert_array_equal(got.v_final, want.v_final)
    with pytest.raises(SpikeforgeError, match="record: expected layer names"):
        be.run(prog, p, record=["nope"])


def test_device_option():
    with pytest.raises(SpikeforgeError, match="device: expected one of cpu, cuda, found 'tpu'"):
        CpuBackend(device="tpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SpikeforgeError, match="no CUDA device"):
            CpuBackend(device="cuda").compile(GRAPHS["if-subtract"]())


def test_float32_scan_saturates_exactly():
    """Sums near the 24-bit state: the float32 IF scan clamps where v can reach +-(2**23 - 1)."""
    graph = stronger(random_fixed_graph(SIZES, seed=1), 2)
    p = payloads(graph, timesteps=40)
    want = reference(graph, p)
    assert np.abs(want.v_final).max() == 2**23 - 1  # the readout saturated
    prog = CpuBackend().compile(graph)
    assert all(nr.float_in for nr in prog.layers)
    for options in ({}, {"time_batched": False}, {"closed_form": True}):
        be = CpuBackend(**options)
        assert_identical(want, be.run(be.compile(graph), p))


def test_conv_readout_held_channels_last():
    """A readout fed by a convolution: its spikes and potentials come back in C order."""
    g = random_conv_graph((2, 6, 5), (3, 4), (1, 2), seed=21)
    keep = [n for n in g.nodes if n.name in ("in", "conv1", "lif1", "conv2", "lif2")]
    graph = ir.Graph(tuple(keep) + (ir.Output("out", (4, 3, 3)),),
                     tuple(e for e in g.edges if e[1] in {n.name for n in keep}) + (("lif2", "out"),))
    p = payloads(graph, timesteps=10)
    want = reference(graph, p)
    prog = CpuBackend().compile(graph)
    assert all(nr.hwc is not None for nr in prog.layers)
    for options in ({}, {"time_batched": False}, {"conv_im2col": True}):
        be = CpuBackend(**options)
        assert_identical(want, be.run(be.compile(graph), p))


@pytest.mark.parametrize("kind", ["if-subtract", "if-zero", "lif-decay", "stochastic", "conv-if"])
def test_silent_inputs(kind):
    """Zero payloads: sources without a spike for some or all steps (no product computed for
    them), the layers driven by their biases alone."""
    graph = GRAPHS[kind]()
    p = payloads(graph, timesteps=3)
    p[:] = 0
    want = reference(graph, p)
    for options in ({}, {"time_batched": False}, {"closed_form": True}, {"channels_last": False}):
        be = CpuBackend(**options)
        assert_identical(want, be.run(be.compile(graph), p))


@pytest.mark.parametrize("kind", ["if-subtract", "if-wrapping", "conv-if"])
def test_results_do_not_share_reused_buffers(kind):
    """Spike buffers are reused between runs: a result stays as it was after later runs."""
    graph = GRAPHS[kind]()
    p1, p2 = payloads(graph, n=1, seed=1), payloads(graph, n=1, seed=2)
    for options in ({}, {"closed_form": True}):  # float32 and bool spike buffers
        be = CpuBackend(**options)
        prog = be.compile(graph)
        first = be.run(prog, p1)
        kept = {k: s.copy() for k, s in first.spikes.items()}
        be.run(prog, p2)
        assert_identical(reference(graph, p1), first)
        assert all(np.array_equal(kept[k], first.spikes[k]) for k in kept)
