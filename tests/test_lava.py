"""The lava backend against the cpu oracle, spike for spike, on the real Lava 0.10 runtime
(no mocks); robustness of the runtime wrapper; the loihi backend's refusal off-hardware."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("lava")

from spikeforge import ir  # noqa: E402
from spikeforge.backends import get_backend  # noqa: E402
from spikeforge.backends.base import RunResult  # noqa: E402
from spikeforge.backends.cpu import CpuBackend  # noqa: E402
from spikeforge.backends.lava_backend import LavaBackend, _unpack  # noqa: E402
from spikeforge.backends.loihi import ADVICE, NEEDS, LoihiBackend, hardware_status  # noqa: E402
from spikeforge.encoding import encode  # noqa: E402
from spikeforge.errors import (BackendUnavailable, DataError, SpikeforgeError,  # noqa: E402
                               UnsupportedError)
from spikeforge.testing import random_fixed_graph, random_inputs  # noqa: E402


def payloads_for(graph: ir.Graph, n: int, timesteps: int, encoding: str, seed: int) -> np.ndarray:
    net = CpuBackend().compile(graph).net
    x = random_inputs(n, net.input.size, seed=seed)
    return encode(x, timesteps, net.depth, net.input.payload_max, encoding, seed=seed)


def assert_same(got: RunResult, ref: RunResult) -> None:
    """Every layer's spikes at every step and the readout's v_final are identical."""
    assert set(got.spikes) == set(ref.spikes)
    for name, s in ref.spikes.items():
        g = got.spikes[name]
        assert g.shape == s.shape and g.dtype == bool, (name, g.shape, g.dtype)
        if not np.array_equal(g, s):
            b, t, i = np.argwhere(g != s)[0]
            pytest.fail(f"layer {name}: spikes differ first at sample {b}, step {t}, neuron {i} "
                        f"({int((g != s).sum())} differences)")
    np.testing.assert_array_equal(got.v_final, ref.v_final)
    assert got.readout == ref.readout and got.vth_scaled == ref.vth_scaled


def compare(graph: ir.Graph, payloads: np.ndarray, **options) -> RunResult:
    cpu = CpuBackend()
    ref = cpu.run(cpu.compile(graph), payloads)
    lava = LavaBackend(**options)
    got = lava.run(lava.compile(graph), payloads)
    assert_same(got, ref)
    return ref


def assert_active(ref: RunResult) -> None:
    """The case is informative: every layer spikes, but not on every step."""
    for name, s in ref.spikes.items():
        assert 0 < s.sum() < s.size, f"layer {name} is silent or saturated"


CASES = [
    # sizes, graph options, samples, timesteps, encoding
    ([12, 16, 6], dict(reset="subtract"), 4, 12, "current"),
    ([12, 16, 6], dict(reset="zero"), 3, 15, "rate"),
    ([12, 16, 6], dict(reset="subtract", du=3000, dv=500), 3, 12, "rate"),
    ([12, 16, 6], dict(reset="zero", du=3000, dv=500, recurrent=True), 3, 15, "current"),
    ([12, 16, 12, 6], dict(reset="subtract", recurrent=True, feedback=True), 3, 12, "rate"),
    ([12, 16, 12, 6], dict(reset="zero", du=3000, dv=500, recurrent=True, feedback=True), 3, 10,
     "current"),
]


@pytest.mark.parametrize("sizes,options,n,timesteps,encoding", CASES)
def test_spikes_identical_to_cpu(sizes, options, n, timesteps, encoding):
    graph = random_fixed_graph(sizes, seed=len(sizes) + n + timesteps, **options)
    ref = compare(graph, payloads_for(graph, n, timesteps, encoding, seed=timesteps))
    assert_active(ref)


@pytest.mark.parametrize("first", [1, -1])
def test_single_sign_weight_matrices(first):
    """All-positive and all-negative matrices (one holding -128) stay exact, both for the
    graded input and for binary spikes: Lava would clip an all-negative 2w = -256 to -255
    unless the sign mode is forced to MIXED."""
    graph = random_fixed_graph([12, 16, 6], seed=11, reset="subtract")
    signs = {"fc1": first, "fc2": -first}
    nodes = []
    for node in graph.nodes:
        if node.name in signs:
            w = np.abs(node.weight)
            w = np.minimum(w, 127) if signs[node.name] > 0 else -w
            if signs[node.name] < 0:
                w[w <= -100] = -128
            node = node.replace(weight=w)
        nodes.append(node)
    graph = graph.with_nodes(nodes)
    assert (graph.node("fc1").weight * first >= 0).all()
    assert (graph.node("fc2").weight * first <= 0).all()
    compare(graph, payloads_for(graph, 3, 12, "current", seed=3))


def test_all_negative_graded_input_is_exact():
    """One layer, all weights <= 0 (mostly -128) on graded payloads: v_final shows any
    change of the input sums (Lava's inferred INHIBITORY mode would use -255 for 2w = -256)."""
    rng = np.random.default_rng(4)
    w = np.where(rng.random((6, 12)) < 0.8, -128, -rng.integers(0, 128, (6, 12)))
    nodes = [ir.Input("in", (12,)), ir.FixedAffine("fc", w, -8),
             ir.FixedLIF("lif", 6, vth=1000, bias_mant=np.full(6, 3000), bias_exp=4),
             ir.Output("out", (6,))]
    graph = ir.Graph(nodes, [("in", "fc"), ("fc", "lif"), ("lif", "out")])
    ref = compare(graph, payloads_for(graph, 3, 12, "current", seed=4))
    assert ref.spikes["lif"].any()


def test_several_chunks_and_in_process():
    """Samples split over several builds (chunk_steps), and Lava run in this process."""
    graph = random_fixed_graph([12, 16, 6], seed=5, reset="subtract", recurrent=True)
    payloads = payloads_for(graph, 5, 10, "rate", seed=5)
    compare(graph, payloads, chunk_steps=2 * payloads.shape[1])
    compare(graph, payloads, isolate=False)


def test_stock_lif_equals_cpu():
    """Lava's own LIF process (PyLifModelBitAcc) gives the cpu oracle's spikes."""
    graph = random_fixed_graph([12, 16, 6], seed=8, reset="zero", du=3000, dv=500,
                               recurrent=True)
    ref = compare(graph, payloads_for(graph, 3, 12, "current", seed=8), neuron="stock")
    assert_active(ref)


def test_stock_lif_refuses_subtract():
    graph = random_fixed_graph([12, 16, 6], seed=1, reset="subtract")
    expected = (r"node 'lif1'.*reset='subtract'.*stock LIF resets to zero only; "
                r"use neuron='spikeforge'")
    with pytest.raises(UnsupportedError, match=expected):
        LavaBackend(neuron="stock").compile(graph)


def test_refuses_int32_overflow():
    """A worst-case synaptic input whose a << 6 overflows Lava's int32 is refused by name."""
    nodes = [ir.Input("in", (3000,)), ir.FixedAffine("fc", np.full((4, 3000), 127), 7),
             ir.FixedLIF("lif", 4, vth=100), ir.Output("out", (4,))]
    graph = ir.Graph(nodes, [("in", "fc"), ("fc", "lif"), ("lif", "out")])
    with pytest.raises(UnsupportedError, match="node '(fc|lif)'"):
        LavaBackend().compile(graph)


def test_bad_payloads_rejected_before_lava_starts():
    graph = random_fixed_graph([12, 16, 6], seed=2)
    backend = LavaBackend()
    program = backend.compile(graph)
    with pytest.raises(DataError, match=r"expected shape \(batch, steps, 12\)"):
        backend.run(program, np.zeros((2, 10, 11), np.int32))
    with pytest.raises(DataError, match=r"expected integers in \[0, 255\]"):
        backend.run(program, np.full((2, 10, 12), 256))
    assert multiprocessing.active_children() == []
    empty = backend.run(program, np.zeros((0, 10, 12), np.int32))
    assert empty.spikes["lif1"].shape == (0, 10, 16) and empty.v_final.shape == (0, 6)


@pytest.mark.parametrize("isolate", [True, False])
def test_failing_process_model_raises_and_does_not_hang(monkeypatch, isolate):
    """An exception inside a Lava ProcessModel (Lava 0.10's blocking run would hang) is a
    one-line error within seconds, and no Lava process is left behind."""
    from spikeforge.backends.lava_procs import models

    original = models.PySpikeforgeLIFModelFixed.run_spk

    def failing(self):
        if self.time_step == 3:
            raise ValueError("deliberate failure at step 3")
        original(self)

    monkeypatch.setattr(models.PySpikeforgeLIFModelFixed, "run_spk", failing)
    graph = random_fixed_graph([12, 16, 6], seed=2)
    backend = LavaBackend(isolate=isolate, timeout=60)
    t0 = time.monotonic()
    with pytest.raises(SpikeforgeError, match="ValueError: deliberate failure at step 3") as info:
        backend.run(backend.compile(graph), payloads_for(graph, 2, 10, "current", seed=2))
    assert time.monotonic() - t0 < 30
    assert "\n" not in str(info.value)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("isolate", [True, False])
def test_hung_run_is_killed_after_timeout(monkeypatch, isolate):
    from spikeforge.backends.lava_procs import models

    original = models.PySpikeforgeLIFModelFixed.run_spk

    def stuck(self):
        if self.time_step == 3:
            time.sleep(600)
        original(self)

    monkeypatch.setattr(models.PySpikeforgeLIFModelFixed, "run_spk", stuck)
    graph = random_fixed_graph([12, 16, 6], seed=2)
    backend = LavaBackend(isolate=isolate, timeout=3)
    t0 = time.monotonic()
    expected = "did not finish within 3 s; its processes were killed"
    with pytest.raises(SpikeforgeError, match=expected):
        backend.run(backend.compile(graph), payloads_for(graph, 2, 10, "current", seed=2))
    assert time.monotonic() - t0 < 20
    assert multiprocessing.active_children() == []


def test_unpack_spike_words():
    rng = np.random.default_rng(0)
    spikes = rng.random((3, 41, 5)) < 0.3  # batch, steps, neurons: 123 steps, 3 words
    flat = spikes.reshape(-1, 5).T.astype(np.int64)  # (n, total)
    words = np.zeros((5, 3), np.int64)
    for t in range(flat.shape[1]):
        words[:, t // 52] |= flat[:, t] << (t % 52)
    np.testing.assert_array_equal(_unpack(words.astype(np.float64), 3, 41), spikes)


def test_loihi_unavailable_message():
    status = hardware_status()
    if status["available"]:
        pytest.skip("a Loihi 2 system is available here")
    assert not status["lava_loihi"]
    expected = (f"{NEEDS}; found: lava-loihi not installed, ")
    graph = random_fixed_graph([12, 16, 6], seed=1, reset="zero")
    backend = get_backend("loihi")
    assert isinstance(backend, LoihiBackend)
    with pytest.raises(BackendUnavailable) as info:
        backend.compile(graph)
    msg = str(info.value)
    assert msg.startswith("Loihi 2 hardware backend needs Intel's lava-loihi package (not public) "
                          "and a Loihi system; found: lava-loihi not installed")
    assert msg.startswith(expected) and msg.endswith(ADVICE) and "\n" not in msg
    assert msg == status["message"]
    with pytest.raises(BackendUnavailable):
        backend.run(None, np.zeros((1, 4, 12), np.int32))


def test_backend_modules_do_not_import_lava():
    code = ("import sys; import spikeforge.backends.base, spikeforge.backends.lava_backend, "
            "spikeforge.backends.loihi; "
            "sys.exit(any(m == 'lava' or m.startswith('lava.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
