"""The cpu backend against hand-computed spike trains and its own two execution paths."""

from __future__ import annotations

import numpy as np
import pytest

from spikeforge import ir
from spikeforge.backends import get_backend
from spikeforge.encoding import encode
from spikeforge.network import lower
from spikeforge.neuron import LIFParams, LIFState, decay, lif_step, wrap24
from spikeforge.runner import payloads_for
from spikeforge.testing import random_fixed_graph, random_inputs


def one_neuron(weight: int, exp: int, vth: int, reset: str, bias: int = 0, du: int = 4095, dv: int = 0):
    return ir.Graph(
        (ir.Input("x", (1,)), ir.FixedAffine("w", np.array([[weight]]), exp),
         ir.FixedLIF("n", 1, vth=vth, du=du, dv=dv, bias_mant=np.array([bias]), bias_exp=0, reset=reset),
         ir.Output("y", (1,))),
        (("x", "w"), ("w", "n"), ("n", "y")),
    )


def run(g, payload_seq):
    cpu = get_backend("cpu")
    p = cpu.compile(g)
    return cpu.run(p, np.array(payload_seq, np.int64)[None, :, None])


def test_hand_computed_if_reset_subtract():
    # a = 100 * 255 * 2**-8 = 99 (floor) per step from step 1 on; v += 99 << 6 = 6336;
    # threshold 150 << 6 = 9600: v = 6336, 12672 -> spike, 3072, 9408, 15744 -> spike, ...
    r = run(one_neuron(100, -8, 150, "subtract"), [255] * 6 + [0])
    spikes = r.spikes["n"][0, :, 0].astype(int).tolist()
    assert spikes == [0, 0, 1, 0, 1, 1, 0]
    v = 0
    expect = []
    for t in range(7):
        v += (99 << 6) if 1 <= t <= 6 else 0
        s = v > 9600
        v -= 9600 * s
        expect.append(int(s))
    assert spikes == expect
    assert r.v_final[0, 0] == v


def test_hand_computed_reset_zero_and_bias():
    r = run(one_neuron(100, -8, 150, "zero", bias=1000), [255] * 5)
    v, expect = 0, []
    for t in range(5):
        v += ((99 << 6) if t >= 1 else 0) + 1000
        s = v > 9600
        v = 0 if s else v
        expect.append(int(s))
    assert r.spikes["n"][0, :, 0].astype(int).tolist() == expect


def test_floor_shift_of_negative_sums():
    # a = floor(-3 * 255 / 2**8) = floor(-2.988) = -3 ; v = -3 << 6 per step
    r = run(one_neuron(-3, -8, 10, "zero"), [255, 255, 255, 0])
    assert r.v_final[0, 0] == -3 * 64 * 3


def test_decay_rounds_toward_zero_and_wrap24():
    assert decay(np.array([-4097]), 1).tolist() == [-4095]  # -4097 * 4095 / 4096 = -4095.9998 -> -4095
    assert decay(np.array([4097]), 1).tolist() == [4095]
    assert wrap24(np.array([2**23 + 5, 2**23, -(2**23), -(2**23) - 3])).tolist() == [
        -(2**23) + 5, 2**23, 2**23, 2**23 - 3]


def test_lif_step_leaky_current():
    p = LIFParams(vth=1000, du=2047, dv=1024, bias=np.zeros(1, np.int64), reset="zero")
    s = LIFState(np.array([[10000]]), np.array([[20000]]), np.zeros((1, 1), np.int64))
    s2, spk = lif_step(p, s, np.array([[5]]))
    u = int(10000 * (4096 - 2048) / 4096) + (5 << 6)
    v = int(20000 * (4096 - 1024) / 4096) + u
    assert (s2.u[0, 0], s2.v[0, 0], bool(spk[0, 0])) == (u, v, False)


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("leaky", [False, True])
def test_time_batched_equals_stepwise(reset, leaky):
    g = random_fixed_graph([12, 16, 6], seed=3, reset=reset, du=3000 if leaky else 4095, dv=500 if leaky else 0)
    x = random_inputs(7, 12, seed=1)
    for encoding in ("current", "rate"):
        pay = payloads_for(g, x, 20, encoding, seed=2)
        a = get_backend("cpu", time_batched=True)
        b = get_backend("cpu", time_batched=False)
        ra, rb = a.run(a.compile(g), pay), b.run(b.compile(g), pay)
        assert a.compile(g).time_batched and not b.compile(g).time_batched
        for k in ra.spikes:
            assert np.array_equal(ra.spikes[k], rb.spikes[k])
        assert np.array_equal(ra.v_final, rb.v_final)
        assert sum(s.sum() for s in ra.spikes.values()) > 0


def test_batch_equals_single_samples():
    g = random_fixed_graph([10, 8, 4], seed=5, recurrent=True, feedback=True)
    x = random_inputs(4, 10, seed=3)
    pay = payloads_for(g, x, 15)
    cpu = get_backend("cpu")
    prog = cpu.compile(g)
    assert not prog.time_batched
    whole = cpu.run(prog, pay)
    for i in range(4):
        one = cpu.run(prog, pay[i:i + 1])
        for k in whole.spikes:
            assert np.array_equal(whole.spikes[k][i], one.spikes[k][0])


def test_latency_one_step_per_projection():
    g = random_fixed_graph([4, 5, 3], seed=0)
    cpu = get_backend("cpu")
    prog = cpu.compile(g)
    assert prog.net.depth == 2
    pay = encode(np.ones((1, 4)), 5, prog.net.depth, 255)
    assert pay.shape == (1, 7, 4) and pay[0, 5:].sum() == 0


def test_payload_errors():
    g = random_fixed_graph([4, 3])
    cpu = get_backend("cpu")
    prog = cpu.compile(g)
    from spikeforge.errors import DataError
    with pytest.raises(DataError, match=r"expected shape \(batch, steps, 4\), found \(1, 3, 5\)"):
        cpu.run(prog, np.zeros((1, 3, 5), np.int64))
    with pytest.raises(DataError, match=r"expected integers in \[0, 255\], found \[300, 300\]"):
        cpu.run(prog, np.full((1, 3, 4), 300))
    with pytest.raises(DataError, match=r"expected values in \[0, 1\]"):
        encode(np.full((1, 4), 2.0), 5, 1, 255)


def _trace(p: LIFParams, inputs):
    s, vs, spikes = LIFState(*(np.zeros((1, 1), np.int64) for _ in range(3))), [], []
    for a in inputs:
        s, spk = lif_step(p, s, np.array([[a]]))
        vs.append(int(s.v[0, 0]))
        spikes.append(int(spk[0, 0]))
    return vs, spikes


def test_refractory_holds_v_and_blocks_spikes():
    p = LIFParams(vth=100, du=4095, dv=0, bias=np.zeros(1, np.int64), reset="zero", refractory=2)
    vs, spikes = _trace(p, [120] * 8)  # 120 << 6 = 7680 > 6400: a spike every step without refractoriness
    assert spikes == [1, 0, 0, 1, 0, 0, 1, 0]
    assert vs[:3] == [0, 0, 0] and vs[4] == 0


def test_reset_to_value_and_resting_potential():
    p = LIFParams(vth=100, du=4095, dv=0, bias=np.zeros(1, np.int64), reset="value", v_reset=-1000)
    vs, spikes = _trace(p, [60, 60, 60])  # 3840 per step
    assert spikes == [0, 1, 0] and vs == [3840, -1000, 2840]
    # multiplicative leak toward v_rest = 2000 with dv = 2048 (beta = 1/2)
    p = LIFParams(vth=1000, du=4095, dv=2048, bias=np.zeros(1, np.int64), reset="zero", v_rest=2000)
    vs, _ = _trace(p, [0, 0, 0])
    assert vs == [1000, 1500, 1750]


def test_subtractive_leak_stops_at_rest():
    p = LIFParams(vth=1000, du=4095, dv=0, bias=np.zeros(1, np.int64), reset="zero", leak=1000)
    vs, _ = _trace(p, [50, 0, 0, 0, 0])  # 3200, then -1000 per step, stopping at 0
    assert vs == [3200, 2200, 1200, 200, 0]
    p = LIFParams(vth=1000, du=4095, dv=0, bias=np.zeros(1, np.int64), reset="zero", leak=1000)
    vs, _ = _trace(p, [-50, 0, 0, 0])
    assert vs == [-3200, -2200, -1200, -200]


def test_chunked_simulation_equals_whole():
    from spikeforge import runner

    g = random_fixed_graph([10, 8, 4], seed=5, recurrent=True)
    stoch = g.with_nodes([ir.FixedStochastic(n.name, n.size, vth=n.vth, bias_mant=n.bias_mant,
                                             bias_exp=n.bias_exp, seed=7) if n.name == "lif1" else n
                          for n in g.nodes])
    x = random_inputs(9, 10, seed=3)
    net = lower(stoch)
    two = 2 * runner.bytes_per_sample(net, net.steps(12)) / 2**20  # two samples per chunk
    assert runner.chunk_samples(net, net.steps(12), two) == 2
    for encoding in ("current", "rate"):
        whole = runner.simulate(stoch, "cpu", x, 12, encoding)
        chunked = runner.simulate(stoch, "cpu", x, 12, encoding, memory_mb=two)
        for k in whole.result.spikes:
            assert np.array_equal(whole.result.spikes[k], chunked.result.spikes[k])
        assert np.array_equal(whole.result.v_final, chunked.result.v_final)
        assert whole.firing_rates == chunked.firing_rates
        # only the readout recorded: the same predictions and rates, no other layer kept
        ro = runner.simulate(stoch, "cpu", x, 12, encoding, record="readout", memory_mb=two)
        assert list(ro.result.spikes) == [net.readout]
        assert np.array_equal(ro.predictions, whole.predictions)
        assert ro.firing_rates == whole.firing_rates
        assert whole.firing_rates["lif1"] == whole.result.spikes["lif1"].mean()
