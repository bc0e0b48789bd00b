"""The lava backend against the cpu oracle, spike for spike, on the real Lava 0.10 runtime
(no mocks), for the whole neuron family (reset to value, resting potential, subtractive
leak, refractory period; stochastic neurons); robustness of the runtime wrapper; the
loihi backend's chip-fit check and its refusal off-hardware."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time

import numpy as np
import pytest

import lava as _lava_runtime  # noqa: F401  (the real runtime; CI installs it)

from spikeforge import ir  # noqa: E402
from spikeforge.backends import get_backend  # noqa: E402
from spikeforge.backends.base import RunResult  # noqa: E402
from spikeforge.backends.cpu import CpuBackend  # noqa: E402
from spikeforge.backends.lava_backend import LavaBackend, _unpack  # noqa: E402
from spikeforge.backends.loihi import (ADVICE, NEEDS, LoihiBackend, check_file,  # noqa: E402
                                       check_loihi2, hardware_status)
from spikeforge.encoding import encode  # noqa: E402
from spikeforge.errors import (BackendUnavailable, DataError, SpikeforgeError,  # noqa: E402
                               UnsupportedError)
from spikeforge import graphio  # noqa: E402
from spikeforge.testing import assert_identical, random_fixed_graph, random_inputs, with_initial_state  # noqa: E402


def payloads_for(graph: ir.Graph, n: int, timesteps: int, encoding: str, seed: int) -> np.ndarray:
    net = CpuBackend().compile(graph).net
    x = random_inputs(n, net.input.size, seed=seed)
    return encode(x, timesteps, net.depth, net.input.payload_max, encoding, seed=seed)


def compare(graph: ir.Graph, payloads: np.ndarray, **options) -> RunResult:
    cpu = CpuBackend()
    ref = cpu.run(cpu.compile(graph), payloads)
    lava = LavaBackend(**options)
    got = lava.run(lava.compile(graph), payloads)
    assert_identical(ref, got)
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


# -- the neuron family ------------------------------------------------------------------
#: FixedLIF parameters of the neuron family and their stock (Lava LIF) values.
STOCK = dict(reset="zero", v_reset=0, v_rest=0, leak=0, refractory=0)


def with_family(graph: ir.Graph, layers: dict[str, dict] | None = None, **options) -> ir.Graph:
    """Set neuron-family parameters on FixedLIF layers: ``options`` on all of them, or
    ``layers[name]`` per layer. A float v_reset, v_rest or leak is a fraction of the
    layer's threshold vth << 6."""
    nodes = []
    for node in graph.nodes:
        if isinstance(node, ir.FixedLIF):
            opts = dict(options if layers is None else layers.get(node.name, {}))
            for key in ("v_reset", "v_rest", "leak"):
                if isinstance(opts.get(key), float):
                    opts[key] = int(round(opts[key] * node.vth_scaled))
            node = node.replace(**opts)
        nodes.append(node)
    return graph.with_nodes(nodes)


def with_stochastic(graph: ir.Graph, names: tuple[str, ...], seed: int = 12345) -> ir.Graph:
    """Replace the FixedLIF layers ``names`` by FixedStochastic layers (same vth and bias),
    with seeds ``seed - i`` (i: the node's position)."""
    nodes = []
    for i, node in enumerate(graph.nodes):
        if node.name in names:
            node = ir.FixedStochastic(node.name, node.size, vth=node.vth, bias_mant=node.bias_mant,
                                      bias_exp=node.bias_exp, seed=seed - i)
        nodes.append(node)
    return graph.with_nodes(nodes)


def cpu_run(graph: ir.Graph, payloads: np.ndarray) -> RunResult:
    cpu = CpuBackend()
    return cpu.run(cpu.compile(graph), payloads)


def features_without_effect(graph: ir.Graph, payloads: np.ndarray, ref: RunResult) -> list[str]:
    """The family parameters of a layer that, set back to their stock value one at a time,
    change neither a spike nor the readout's v_final of the cpu oracle."""
    idle = []
    for node in graph.of_type(ir.FixedLIF):
        for key, stock in STOCK.items():
            if key == "v_reset" and node.reset != "value" or getattr(node, key) == stock:
                continue
            plain = graph.with_nodes(n.replace(**{key: stock}) if n is node else n
                                     for n in graph.nodes)
            other = cpu_run(plain, payloads)
            if (all(np.array_equal(other.spikes[k], ref.spikes[k]) for k in ref.spikes)
                    and np.array_equal(other.v_final, ref.v_final)):
                idle.append(f"{node.name}.{key}")
    return idle


IF = dict(du=4095, dv=0)
LIF = dict(du=3000, dv=500)
FAMILY_CASES = {
    # id: sizes, graph options and seed, neuron family (float: fraction of vth << 6) on all
    # FixedLIF layers or per layer, samples, timesteps, encoding
    "value-IF-current": ([12, 16, 6], dict(IF, seed=3), dict(reset="value", v_reset=-0.5),
                         3, 12, "current"),
    "value-LIF-rate-recurrent": ([12, 16, 6], dict(LIF, recurrent=True, seed=3),
                                 dict(reset="value", v_reset=-0.5), 3, 12, "rate"),
    "v_rest-LIF-rate": ([12, 16, 6], dict(LIF, seed=3), dict(reset="subtract", v_rest=-0.6),
                        3, 12, "rate"),
    "v_rest-LIF-current": ([12, 16, 6], dict(du=3500, dv=1200, seed=3),
                           dict(reset="zero", v_rest=0.3), 3, 12, "current"),
    "leak-IF-rate": ([12, 16, 6], dict(IF, seed=4), dict(reset="subtract", leak=0.1), 3, 12,
                     "rate"),
    "leak-LIF-current-recurrent": ([12, 16, 6], dict(LIF, recurrent=True, seed=3),
                                   dict(reset="zero", leak=0.05), 3, 12, "current"),
    "refractory-IF-current": ([12, 16, 6], dict(IF, seed=3),
                              dict(reset="subtract", refractory=2), 3, 12, "current"),
    "refractory-LIF-rate": ([12, 16, 6], dict(LIF, seed=3), dict(reset="zero", refractory=2),
                            3, 12, "rate"),
    "all-IF-current": ([12, 16, 6], dict(IF, seed=8),
                       dict(reset="value", v_reset=-0.5, v_rest=-0.4, leak=0.05, refractory=2),
                       3, 12, "current"),
    "all-LIF-rate-feedback": ([12, 16, 12, 6], dict(LIF, recurrent=True, feedback=True, seed=9),
                              dict(reset="value", v_reset=-0.5, v_rest=-0.4, leak=0.05,
                                   refractory=2), 4, 12, "rate"),
    # one network, its layers on different paths: Lava's subthr_dynamics with refractory
    # (lif1), spikeforge's v update (lif2, lif3)
    "mixed-layers-LIF-current-feedback": (
        [12, 16, 12, 6], dict(LIF, recurrent=True, feedback=True, seed=3),
        {"lif1": dict(reset="zero", refractory=2),
         "lif2": dict(reset="value", v_reset=-0.5, v_rest=0.2, leak=0.05),
         "lif3": dict(reset="subtract", v_rest=-0.5)}, 3, 12, "current"),
}


def family_graph(case: str) -> tuple[ir.Graph, np.ndarray]:
    sizes, options, family, n, timesteps, encoding = FAMILY_CASES[case]
    graph = random_fixed_graph(sizes, **options)
    if set(family) <= {"lif1", "lif2", "lif3"}:
        graph = with_family(graph, layers=family)
    else:
        graph = with_family(graph, **family)
    return graph, payloads_for(graph, n, timesteps, encoding, seed=timesteps + n)


@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_neuron_family_identical_to_cpu(case):
    graph, payloads = family_graph(case)
    ref = compare(graph, payloads)
    assert_active(ref)
    assert features_without_effect(graph, payloads, ref) == []  # the case exercises them all


def test_stock_lif_accepts_reset_to_value_zero():
    """reset='value' with v_reset = 0 is reset to zero: Lava's stock LIF runs it."""
    graph = with_family(random_fixed_graph([12, 16, 6], seed=8, **LIF), reset="value", v_reset=0)
    compare(graph, payloads_for(graph, 2, 10, "current", seed=8), neuron="stock")


# -- stochastic neurons ---------------------------------------------------------------------
STOCHASTIC_CASES = {
    # id: sizes, graph options, stochastic layers and their seed, samples, T, encoding
    "feedforward-rate": ([12, 16, 12, 6], dict(IF), (("lif1", "lif2"), 1000), 3, 12, "rate"),
    "feedforward-current-LIF-readout": ([12, 16, 6], dict(LIF), (("lif1",), 2**31), 3, 12,
                                        "current"),
    "recurrent-feedback-current": ([12, 16, 12, 6], dict(IF, recurrent=True, feedback=True),
                                   (("lif1", "lif2"), 2**32 - 1), 3, 12, "current"),
    "recurrent-rate-family-readout": ([12, 16, 6], dict(LIF, recurrent=True), (("lif1",), 99),
                                      3, 12, "rate"),
}


@pytest.mark.parametrize("case", list(STOCHASTIC_CASES))
def test_stochastic_identical_to_cpu(case):
    sizes, options, (names, seed), n, timesteps, encoding = STOCHASTIC_CASES[case]
    graph = random_fixed_graph(sizes, seed=5, **options)
    if case.endswith("family-readout"):
        graph = with_family(graph, layers={"lif2": dict(reset="value", v_reset=-0.5,
                                                        leak=0.05, refractory=1)})
    graph = with_stochastic(graph, names, seed)
    ref = compare(graph, payloads_for(graph, n, timesteps, encoding, seed=n + timesteps))
    assert_active(ref)


@pytest.mark.parametrize("isolate", [True, False])
def test_stochastic_draws_follow_the_sample_across_chunks(isolate):
    """Five copies of one sample, split into chunks of 2, 2, 1 samples: the stochastic
    layers draw by the sample's index in the whole batch (chunk offset + index), so the
    copies' spikes differ from each other and equal the cpu backend's."""
    graph = with_stochastic(random_fixed_graph([12, 16, 12, 6], seed=6, recurrent=True),
                            ("lif1", "lif2"))
    one = payloads_for(graph, 1, 10, "rate", seed=6)
    payloads = np.repeat(one, 5, axis=0)
    ref = compare(graph, payloads, chunk_steps=2 * payloads.shape[1], isolate=isolate)
    s = ref.spikes["lif1"]
    assert all(not np.array_equal(s[i], s[j]) for i in range(5) for j in range(i))


def test_stochastic_readout_refused():
    graph = with_stochastic(random_fixed_graph([12, 16, 6], seed=1), ("lif2",))
    with pytest.raises(UnsupportedError, match=r"node 'out'.*readout must be a FixedLIF.*'lif2'"):
        LavaBackend().compile(graph)


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


@pytest.mark.parametrize("neuron", ["spikeforge", "stock"])
def test_initial_state_identical_to_cpu(neuron):
    """Per-neuron v_init (some above threshold): Lava's stock LIF starts from it (and is set to
    it between samples); spikeforge's LIF sets v = v_init at every sample window."""
    graph = with_initial_state(random_fixed_graph([12, 16, 6], seed=9, reset="zero", du=3000, dv=500,
                                                  recurrent=True), seed=6)
    ref = compare(graph, payloads_for(graph, 3, 12, "current", seed=9), neuron=neuron)
    assert_active(ref)
    assert ref.spikes["lif1"][:, 0].any()  # v_init above threshold: a spike on step 0


def test_stock_lif_refuses_subtract():
    graph = random_fixed_graph([12, 16, 6], seed=1, reset="subtract")
    expected = (r"node 'lif1'.*reset='subtract'.*stock LIF resets to zero only; "
                r"use neuron='spikeforge'")
    with pytest.raises(UnsupportedError, match=expected):
        LavaBackend(neuron="stock").compile(graph)


def several_violations() -> ir.Graph:
    """lif1 stochastic; lif2 reset to -1000 with v_rest, leak and refractory; lif3 reset by
    subtraction; lif4 (the readout) Lava's stock LIF exactly."""
    graph = random_fixed_graph([12, 16, 12, 8, 6], seed=1, reset="zero")
    graph = with_family(graph, layers={
        "lif2": dict(reset="value", v_reset=-1000, v_rest=100, leak=3, refractory=2),
        "lif3": dict(reset="subtract")})
    return with_stochastic(graph, ("lif1",))


def test_stock_lif_refuses_every_missing_feature_by_name():
    with pytest.raises(UnsupportedError) as info:
        LavaBackend(neuron="stock").compile(several_violations())
    msg = str(info.value)
    expected = [
        "node 'lif1' (FixedStochastic): stochastic neurons: Lava has no stock stochastic neuron",
        "node 'lif2' (FixedLIF) reset='value' (v_reset=-1000): Lava's stock LIF resets to "
        "zero only",
        "node 'lif2' (FixedLIF) v_rest=100: Lava's stock LIF decays v toward 0",
        "node 'lif2' (FixedLIF) leak=3: Lava's stock LIF has no subtractive leak",
        "node 'lif2' (FixedLIF) refractory=2: Lava's stock LIF has no refractory period",
        "node 'lif3' (FixedLIF) reset='subtract': Lava's stock LIF resets to zero only",
    ]
    positions = [msg.find(e) for e in expected]
    assert all(p >= 0 for p in positions), msg
    assert positions == sorted(positions) and "lif4" not in msg and "\n" not in msg
    assert msg.endswith("; use neuron='spikeforge'")
    # the spikeforge processes run the same graph exactly
    compare(several_violations(), payloads_for(several_violations(), 2, 10, "rate", seed=1))


# -- Loihi 2 chip fit -----------------------------------------------------------------------
LOIHI2_VIOLATIONS = [
    "node 'lif1' (FixedStochastic): stochastic neurons have no Loihi 2 process model here "
    "(simulation only: use --backend cpu|brian2|lava)",
    "node 'lif2' (FixedLIF) reset='value' (v_reset=-1000): Loihi 2's stock CUBA LIF resets to "
    "zero only",
    "node 'lif2' (FixedLIF) v_rest=100: Loihi 2's stock CUBA LIF decays v toward 0 (it has no "
    "resting potential)",
    "node 'lif2' (FixedLIF) leak=3: Loihi 2's stock CUBA LIF has no subtractive leak (only the "
    "decay dv)",
    "node 'lif2' (FixedLIF) refractory=2: Loihi 2's stock CUBA LIF has no refractory period",
    "node 'lif3' (FixedLIF) reset='subtract': Loihi 2's stock CUBA LIF resets to zero only",
]


def test_check_loihi2_lists_every_violation():
    assert check_loihi2(several_violations()) == LOIHI2_VIOLATIONS
    fits = random_fixed_graph([12, 16, 6], seed=1, reset="zero", du=3000, dv=500)
    assert check_loihi2(fits) == []
    assert check_loihi2(with_family(fits, reset="value", v_reset=0)) == []


def test_check_loihi2_structure_and_bounds():
    """Unquantized nodes, a stochastic readout and an int32 overflow are listed too."""
    ann = ir.Graph([ir.Input("in", (4,)), ir.Affine("fc", np.ones((3, 4)), np.zeros(3)),
                    ir.IF("if1", 3), ir.Output("out", (3,))],
                   [("in", "fc"), ("fc", "if1"), ("if1", "out")])
    problems = check_loihi2(ann)
    assert [p.split(":")[0] for p in problems] == ["node 'fc' (Affine)", "node 'if1' (IF)"]
    assert all("quantized graphs only" in p for p in problems)
    graph = with_stochastic(random_fixed_graph([12, 16, 6], seed=1, reset="zero"), ("lif2",))
    problems = check_loihi2(graph)
    assert len(problems) == 2 and problems[0].startswith("node 'lif2' (FixedStochastic)")
    assert "node 'out' (Output): the readout must be a FixedLIF layer" in problems[1]
    nodes = [ir.Input("in", (40_000,)), ir.FixedAffine("fc", np.full((4, 40_000), 127), 7),
             ir.FixedLIF("lif", 4, vth=100, reset="subtract"), ir.Output("out", (4,))]
    graph = ir.Graph(nodes, [("in", "fc"), ("fc", "lif"), ("lif", "out")])
    problems = check_loihi2(graph)
    assert [p.split(" ")[1] for p in problems] == ["'lif'", "'fc'", "'lif'"]
    assert "reset='subtract'" in problems[0] and "int32" in problems[1] and "a << 6" in problems[2]


def test_loihi_compile_refuses_a_graph_that_cannot_fit_before_availability():
    """Fit errors come first, on any machine (here: without lava-loihi or a board), all in
    one line; a graph that fits then gets the availability message."""
    with pytest.raises(UnsupportedError) as info:
        LoihiBackend().compile(several_violations())
    msg = str(info.value)
    assert msg == "graph does not fit Loihi 2 (6 problems): " + "; ".join(LOIHI2_VIOLATIONS)
    assert "lava-loihi" not in msg and "\n" not in msg


def test_check_file_for_the_cli(tmp_path):
    bad, good = tmp_path / "bad.sfg", tmp_path / "good.sfg"
    graphio.save(bad, snn=several_violations())
    graphio.save(good, snn=random_fixed_graph([12, 16, 6], seed=1, reset="zero"))
    code, text = check_file(bad)
    assert code == 1
    assert text.splitlines() == [f"{bad}: does not fit loihi2: 6 violations"] + [
        f"  - {p}" for p in LOIHI2_VIOLATIONS] + [
        "hint: 'spikeforge convert MODEL --calib CALIB.npz --reset zero -o NET.sfg' removes the 1 reset violation (reset to zero "
        "is Loihi 2's native reset; reset by subtraction runs on the lava simulator only)"]
    assert check_file(good) == (0, f"{good}: fits loihi2")
    code, text = check_file(bad, as_json=True)
    assert code == 1 and '"fits": false' in text and "lif3" in text
    with pytest.raises(SpikeforgeError, match="--target: expected one of loihi2, found 'loihi1'"):
        check_file(good, target="loihi1")


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
    assert not status["available"], "this test describes a machine without Loihi 2 hardware"
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
