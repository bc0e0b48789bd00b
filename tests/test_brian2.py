"""The brian2 backend against the cpu oracle: identical spikes (every layer, every step) and
identical readout v_final, with real Brian2 (numpy target; one test of the cython target)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from spikeforge import ir
from spikeforge.backends import get_backend
from spikeforge.backends.brian2_backend import Brian2Backend, _Model
from spikeforge.backends.cpu import CpuBackend
from spikeforge.encoding import encode
from spikeforge.errors import DataError, SpikeforgeError, UnsupportedError
from spikeforge.testing import random_fixed_graph, random_inputs, assert_identical, with_initial_state

STATE_MAX = 2**23 - 1


def payloads_for(graph: ir.Graph, n: int, timesteps: int, encoding: str, seed: int) -> np.ndarray:
    net = CpuBackend().compile(graph).net
    x = random_inputs(n, net.input.size, seed=seed)
    return encode(x, timesteps, net.depth, net.input.payload_max, encoding, seed=seed + 1)


def run_both(graph: ir.Graph, payloads: np.ndarray, **brian2_options):
    cpu = CpuBackend()
    expected = cpu.run(cpu.compile(graph), payloads)
    b2 = Brian2Backend(**brian2_options)
    got = b2.run(b2.compile(graph), payloads)
    return expected, got


def check(graph: ir.Graph, payloads: np.ndarray, **brian2_options):
    expected, got = run_both(graph, payloads, **brian2_options)
    assert_identical(expected, got)
    return expected


def fixed_graph(layers, payload_bits: int = 8) -> ir.Graph:
    """layers: list of (FixedLIF, [(FixedAffine, source name), ...]); the first source is 'in'."""
    n_in = next(a.weight.shape[1] for _, projs in layers for a, src in projs if src == "in")
    nodes: list[ir.Node] = [ir.Input("in", (n_in,), payload_bits)]
    edges = []
    for lif, projs in layers:
        nodes.append(lif)
        for aff, src in projs:
            nodes.append(aff)
            edges += [(src, aff.name), (aff.name, lif.name)]
    last = layers[-1][0]
    nodes.append(ir.Output("out", (last.size,)))
    edges.append((last.name, "out"))
    return ir.Graph(tuple(nodes), tuple(edges))


# -- random graphs: every structure x reset x neuron x encoding --------------------------
STRUCTURES = {
    "feedforward": {},
    "recurrent": {"recurrent": True},
    "feedback": {"feedback": True},
    "recurrent+feedback": {"recurrent": True, "feedback": True},
}
NEURONS = {"IF": {"du": 4095, "dv": 0}, "leaky": {"du": 3000, "dv": 500}}


@pytest.mark.parametrize("encoding", ["current", "rate"])
@pytest.mark.parametrize("neuron", list(NEURONS))
@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_random_graphs_match_cpu(structure, reset, neuron, encoding):
    seed = sorted(STRUCTURES).index(structure) * 8 + ["zero", "subtract"].index(reset) * 4 \
        + list(NEURONS).index(neuron) * 2 + ["current", "rate"].index(encoding)
    graph = random_fixed_graph([12, 16, 6], seed=seed, reset=reset,
                               **STRUCTURES[structure], **NEURONS[neuron])
    payloads = payloads_for(graph, 4, 15, encoding, seed)
    expected = check(graph, payloads)
    hidden = expected.spikes["lif1"]
    assert 0 < hidden.sum() < hidden.size  # the comparison is not vacuous


@pytest.mark.parametrize("structure", ["feedforward", "recurrent+feedback"])
def test_three_layers_leaky_rate(structure):
    graph = random_fixed_graph([10, 14, 12, 5], seed=7, reset="subtract", du=3500, dv=200,
                               **STRUCTURES[structure])
    check(graph, payloads_for(graph, 5, 20, "rate", 11))


# -- many samples: concat mode, batch chunks, repeated runs ------------------------------
@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_concat_mode_matches_cpu(reset):
    """One long run with a reset at every sample window equals fresh runs per sample."""
    graph = random_fixed_graph([12, 16, 6], seed=21, reset=reset, du=3000, dv=500,
                               recurrent=True, feedback=True)
    check(graph, payloads_for(graph, 5, 12, "rate", 3), mode="concat")


@pytest.mark.parametrize("mode", ["copies", "concat"])
def test_initial_state_matches_cpu(mode):
    """Per-neuron v_init (some above threshold): the stored initial state, and in concat mode
    v = v_init again at every sample window."""
    graph = with_initial_state(random_fixed_graph([12, 16, 6], seed=23, reset="zero", du=3000, dv=500,
                                                  recurrent=True), seed=5)
    expected = check(graph, payloads_for(graph, 4, 12, "rate", 4), **({"mode": mode} if mode == "concat" else {}))
    assert expected.spikes["lif1"][:, 0].any()  # v_init above threshold: a spike on step 0


def test_batch_chunks_with_padding():
    graph = random_fixed_graph([12, 16, 6], seed=5, recurrent=True)
    payloads = payloads_for(graph, 5, 10, "current", 8)
    per_copy = sum(int(np.count_nonzero(n.weight)) for n in graph.of_type(ir.FixedAffine))
    # two copies per chunk: chunks of 2, 2 and 1 (the last one padded with a silent copy)
    check(graph, payloads, max_synapses=2 * per_copy)


def test_program_reused_and_interleaved():
    g1 = random_fixed_graph([12, 16, 6], seed=1, recurrent=True)
    g2 = random_fixed_graph([8, 5, 3], seed=2, feedback=True, reset="zero", du=2000, dv=100)
    p1, p2 = payloads_for(g1, 3, 10, "rate", 1), payloads_for(g2, 4, 12, "current", 2)
    cpu, b2 = CpuBackend(), Brian2Backend()
    c1, c2 = b2.compile(g1), b2.compile(g2)
    first = b2.run(c1, p1)
    assert_identical(cpu.run(cpu.compile(g2), p2), b2.run(c2, p2))
    assert_identical(cpu.run(cpu.compile(g1), p1), b2.run(c1, p1))
    assert_identical(first, b2.run(c1, p1))


# -- arithmetic edge cases ----------------------------------------------------------------
@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("dv", [0, 100])
def test_v_saturates(reset, dv):
    """bias_mant 4095 << 7 per step drives v into +2**23-1; -4096 << 7 into -(2**23-1)."""
    lif = ir.FixedLIF("lif", 3, vth=2**17 - 1, du=4095, dv=dv,
                      bias_mant=np.array([4095, -4096, 4095]), bias_exp=7, reset=reset)
    fc = ir.FixedAffine("fc", np.array([[0, 0], [0, 0], [127, 127]]), 7)
    graph = fixed_graph([(lif, [(fc, "in")])])
    payloads = np.full((2, 60, 2), 255, np.int32)
    payloads[1, ::3] = 0
    expected = check(graph, payloads)
    if dv == 0:
        # 16 steps of +524160 reach 8386560; step 16 would give 8910720, clipped to 8388607,
        # which exceeds vth << 6 = 8388544 (without the clip, 'subtract' would keep 522176)
        first = np.argmax(expected.spikes["lif"][0, :, 0])
        assert first == 16
        short = check(graph, payloads[:, :17])
        assert short.v_final[0, 0] == (0 if reset == "zero" else STATE_MAX - lif.vth_scaled)
        assert (expected.v_final[:, 1] == -STATE_MAX).all()


@pytest.mark.parametrize("du", [4095, 3000, 0])
def test_u_wraps(du):
    """Input sums with a << 6 beyond +-2**23 wrap u to the other sign (Lava's wrap24)."""
    w = np.array([[127] * 4, [-128] * 4, [127, 127, 0, 0], [-128, -128, 0, 0]])
    a = 255 * w.sum(axis=1) * 2  # all payloads 255, weight_exp 1
    assert a[0] * 64 > 2**23 and a[1] * 64 <= -(2**23)  # rows 0, 1 wrap
    assert abs(a[2] * 64) < 2**23 and abs(a[3] * 64) < 2**23  # rows 2, 3 do not
    lif = ir.FixedLIF("lif", 4, vth=1000, du=du, dv=0, reset="subtract")
    graph = fixed_graph([(lif, [(ir.FixedAffine("fc", w, 1), "in")])])
    payloads = np.full((2, 25, 4), 255, np.int32)
    payloads[1, 5:9] = 0
    expected = check(graph, payloads)
    if du == 4095:
        s = expected.spikes["lif"][0, 1:]  # from step 1 on, u = wrap24(a << 6) every step
        assert not s[:, 0].any() and s[:, 1].all()  # wrapped: the positive sum is inhibitory
        assert s[:, 2].all() and not s[:, 3].any()


def test_negative_sums_floor_with_negative_exponent():
    """floor(acc * 2**exp) of negative, non-divisible sums (floor, not truncation)."""
    rng = np.random.default_rng(3)
    w1 = -rng.integers(1, 60, size=(8, 6)) | 1  # negative odd weights
    w1[:, 0] = 37  # one positive column so that some sums cross zero
    lif1 = ir.FixedLIF("lif1", 8, vth=60, du=3000, dv=300,
                       bias_mant=rng.integers(200, 600, size=8), bias_exp=2, reset="subtract")
    rec = ir.FixedAffine("rec1", -rng.integers(1, 40, size=(8, 8)) | 1, -2)
    w2 = rng.integers(-128, 60, size=(4, 8)) | 1
    lif2 = ir.FixedLIF("lif2", 4, vth=20, du=4095, dv=0,
                       bias_mant=rng.integers(0, 300, size=4), bias_exp=1, reset="zero")
    graph = fixed_graph([(lif1, [(ir.FixedAffine("fc1", w1, -5), "in"), (rec, "lif1")]),
                         (lif2, [(ir.FixedAffine("fc2", w2, -3), "lif1")])])
    payloads = payloads_for(graph, 4, 16, "rate", 4) // 3 + payloads_for(graph, 4, 16, "current", 5) // 2
    acc = payloads @ w1.T
    assert ((acc < 0) & (acc % 32 != 0)).any()  # floor and truncation differ on this input
    expected = check(graph, payloads)
    assert expected.spikes["lif1"].any() and expected.spikes["lif2"].any()


def test_each_projection_shifted_on_its_own():
    """Two projections with exp -1 and sums of 1: floor(1/2) + floor(1/2) = 0, not 1."""
    lif = ir.FixedLIF("lif", 1, vth=1, du=4095, dv=0, bias_mant=np.array([100]), reset="subtract")
    graph = fixed_graph([(lif, [(ir.FixedAffine("fc", np.array([[1]]), -1), "in"),
                                (ir.FixedAffine("rec", np.array([[1]]), -1), "lif")])],
                        payload_bits=1)
    payloads = np.ones((1, 6, 1), np.int32)
    expected = check(graph, payloads)
    # a = 0 on every step: bias 100 alone, a spike every step, v gains 100 - 64 per step
    # (one shift of the summed accumulators would give a = 1 from step 1 on, u = 64)
    assert expected.spikes["lif"].all() and expected.v_final[0, 0] == 6 * 36


@pytest.mark.parametrize("mode", ["batch", "concat"])
def test_all_zero_projection(mode):
    """A projection without a nonzero weight (Brian2's connect() refuses empty lists)."""
    lif1 = ir.FixedLIF("lif1", 3, vth=10, bias_mant=np.array([700, 0, -5]), reset="zero")
    lif2 = ir.FixedLIF("lif2", 2, vth=5, bias_mant=np.array([100, 400]))
    graph = fixed_graph([(lif1, [(ir.FixedAffine("fc1", np.zeros((3, 2), np.int64)), "in")]),
                         (lif2, [(ir.FixedAffine("fc2", np.array([[50, 0, 0], [-90, 0, 0]]), -1), "lif1"),
                                 (ir.FixedAffine("fb", np.zeros((2, 2), np.int64)), "lif2")])])
    expected = check(graph, np.ones((3, 8, 2), np.int32), mode=mode)
    assert expected.spikes["lif1"][:, :, 0].all() and expected.spikes["lif2"].any()


# -- interface -----------------------------------------------------------------------------
def test_empty_batch_and_zero_steps():
    graph = random_fixed_graph([12, 16, 6], seed=0)
    b2 = Brian2Backend()
    prog = b2.compile(graph)
    r = b2.run(prog, np.zeros((0, 5, 12), np.int32))
    assert r.spikes["lif2"].shape == (0, 5, 6) and r.v_final.shape == (0, 6)
    r = b2.run(prog, np.zeros((2, 0, 12), np.int32))
    assert r.spikes["lif1"].shape == (2, 0, 16) and (r.v_final == 0).all()


def test_errors():
    with pytest.raises(SpikeforgeError, match="target"):
        Brian2Backend(target="cpp_standalone")
    with pytest.raises(SpikeforgeError, match="mode"):
        Brian2Backend(mode="fast")
    float_graph = ir.Graph(
        (ir.Input("x", (3,)), ir.Affine("dense", np.ones((2, 3)), np.zeros(2)),
         ir.IF("spiking", 2), ir.Output("y", (2,))),
        (("x", "dense"), ("dense", "spiking"), ("spiking", "y")),
    )
    with pytest.raises(UnsupportedError, match="node 'dense'"):
        Brian2Backend().compile(float_graph)
    b2 = Brian2Backend()
    prog = b2.compile(random_fixed_graph([12, 16, 6], seed=0))
    with pytest.raises(DataError, match="shape"):
        b2.run(prog, np.zeros((2, 5, 11), np.int32))
    with pytest.raises(DataError, match="255"):
        b2.run(prog, np.full((2, 5, 12), 256, np.int32))


def test_registry_and_lazy_import():
    assert isinstance(get_backend("brian2", mode="concat"), Brian2Backend)
    code = ("import sys, spikeforge.backends.brian2_backend as m; "
            "m.Brian2Backend(); print('brian2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_isolated_from_brian2_globals():
    """Global prefs, defaultclock and the magic network are neither used nor changed."""
    import brian2
    from brian2.codegen.runtime.numpy_rt import NumpyCodeObject

    graph = random_fixed_graph([12, 16, 6], seed=9, recurrent=True)
    payloads = payloads_for(graph, 3, 10, "current", 9)
    old_target, old_dt = brian2.prefs.codegen.target, brian2.defaultclock.dt
    try:
        brian2.prefs.codegen.target = "cython"  # would compile (slowly) if it leaked in
        brian2.defaultclock.dt = 0.3 * brian2.ms
        check(graph, payloads)
        model = _Model(Brian2Backend().compile(graph), 2, None)
        model.run(np.zeros((4, 24), np.int64))
        codeobjs = [o.codeobj for obj in model.network.sorted_objects
                    for o in (obj, *obj.contained_objects) if getattr(o, "codeobj", None) is not None]
        assert codeobjs and all(isinstance(c, NumpyCodeObject) for c in codeobjs)
        assert brian2.prefs.codegen.target == "cython"
        assert brian2.defaultclock.dt == 0.3 * brian2.ms
    finally:
        brian2.prefs.codegen.target = old_target
        brian2.defaultclock.dt = old_dt
    assert not brian2.magic_network.objects


@pytest.mark.slow  # a cold cython compile takes about a minute
def test_cython_target():
    """The cython target compiles the neuron update and matches the cpu spikes exactly.

    One neuron, one synapse (the smallest graph: each Brian2 object is its own extension
    module, about 33 s of compiling from a cold cache here, 0.3 s once cached), with every
    FixedLIF feature that changes the update code on: reset to a value, v_rest, both leaks,
    a refractory period. Concat mode and stochastic layers are compiled by the same
    generator; the numpy-target tests cover their semantics.
    """
    lif = ir.FixedLIF("lif", 1, vth=4, du=3000, dv=500, bias_mant=np.array([40]), reset="value",
                      v_reset=-100, v_rest=-60, leak=20, refractory=1)
    graph = fixed_graph([(lif, [(ir.FixedAffine("fc", np.array([[1]])), "in")])], payload_bits=2)
    payloads = np.random.default_rng(0).integers(0, 4, size=(2, 40, 1))
    expected = check(graph, payloads, target="cython")
    spikes = expected.spikes["lif"]
    assert 0 < spikes.sum() < spikes.size
    cpu = CpuBackend()
    for off in (dict(reset="zero", v_reset=0), dict(v_rest=0), dict(leak=0), dict(refractory=0), dict(dv=0)):
        g = fixed_graph([(lif.replace(**off), [(ir.FixedAffine("fc", np.array([[1]])), "in")])], payload_bits=2)
        assert not np.array_equal(cpu.run(cpu.compile(g), payloads).spikes["lif"], spikes), off
    from brian2.codegen.runtime.cython_rt import CythonCodeObject  # brian2 is imported (quietly) by now

    model = _Model(Brian2Backend(target="cython").compile(graph), 2, None)
    model.run(np.ones((5, 2), np.int64))
    codeobjs = [o.codeobj for obj in model.network.sorted_objects
                for o in (obj, *obj.contained_objects) if getattr(o, "codeobj", None) is not None]
    assert codeobjs and all(isinstance(c, CythonCodeObject) for c in codeobjs)
