"""The neuron family and stochastic neurons: the brian2 backend against the cpu oracle.

Every combination of reset {zero, subtract, value < 0, value > 0} x leak {none,
multiplicative (dv > 0), subtractive (leak > 0), both} x v_rest {0, nonzero} x refractory
{0, 2} x current {IF: du = 4095, LIF: du < 4095} x input encoding {current, rate} runs on
both backends and must give identical spikes in every layer at every step.

Brian2's cost is per object (code generation for every group and synapse), not per neuron,
so the combinations share objects: each small random recurrent network (hidden layer with
self-recurrence, then a readout layer) carries two combinations, one per layer, and the 16
networks of one reset kind and encoding run as one graph, disjoint copies fed by one shared
input. Only the first copy feeds the Output; its layers have every leak feature, v_rest and
the refractory period on, and its readout's v_final is compared too.

The parameters are comparable to vth << 6 so that every feature changes the spike trains;
the cpu backend checks that for every combination by switching each feature off (and that
v_rest without any leak changes nothing, as the semantics say). Stochastic layers (hidden
FixedStochastic, feedforward and recurrent, batch and concat mode, batch chunks) are
compared the same way, and a statistical test checks the firing rate of a stochastic neuron
against z / (vth << 6).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spikeforge import ir
from spikeforge.backends.brian2_backend import Brian2Backend
from spikeforge.backends.cpu import CpuBackend
from spikeforge.encoding import encode
from spikeforge.testing import random_fixed_graph, random_inputs, assert_identical

SIZES = [8, 10, 5]
SAMPLES, TIMESTEPS = 3, 30
# The networks: random_fixed_graph's projections 2**-WEAKER weaker, vs // BIAS more bias per
# step (vs = vth << 6), and each layer firing on LIVELY..1-LIVELY of the steps (family_graph).
WEAKER, BIAS, LIVELY = 2, 8, 0.1
# The features: LIF du, dv (both leaks: dv and leak = vs // LEAK), |v_rest| = vs // REST;
# v_reset = -vs // 2 ("value-") or 3 vs // 4 ("value+"); refractory 2 steps.
DU, DV, LEAK, REST = 2500, 400, 12, 2

RESETS = ("zero", "subtract", "value-", "value+")
LEAKS = ("both", "none", "mult", "sub")
V_RESTS = ("rest", "rest0")
REFRACTORY = (2, 0)
CURRENTS = ("LIF", "IF")
ENCODINGS = ("current", "rate")
#: (leak, v_rest, refractory, current); the first two have every feature on
FAMILY = list(itertools.product(LEAKS, V_RESTS, REFRACTORY, CURRENTS))
LAYERS = ("lif1", "lif2")


def pairs(reset: str) -> list[tuple[tuple, tuple]]:
    """The combinations of lif1 and lif2 in each network (16 networks); which of two
    neighbours goes to which layer alternates with the reset kind."""
    flip = RESETS.index(reset) % 2
    return [(FAMILY[j + 1 - flip], FAMILY[j + flip]) for j in range(0, len(FAMILY), 2)]


def run_cpu(graph: ir.Graph, payloads: np.ndarray):
    cpu = CpuBackend()
    return cpu.run(cpu.compile(graph), payloads)


def payloads_for(graph: ir.Graph, encoding: str, seed: int, n: int = SAMPLES,
                 timesteps: int = TIMESTEPS) -> np.ndarray:
    net = CpuBackend().compile(graph).net
    x = random_inputs(n, net.input.size, seed=seed)
    return encode(x, timesteps, net.depth, net.input.payload_max, encoding, seed=seed + 1)


def replaced(graph: ir.Graph, layer: str | None = None, **changes) -> ir.Graph:
    """The graph with ``changes`` applied to FixedLIF ``layer`` (all of them if None)."""
    return graph.with_nodes([n.replace(**changes) if isinstance(n, ir.FixedLIF)
                             and layer in (None, n.name) else n for n in graph.nodes])


def features(node: ir.FixedLIF, reset: str, combo: tuple) -> dict:
    """The node.replace() arguments of a combination, with magnitudes relative to the
    layer's threshold vth << 6; v_rest is negative in lif1 and positive in lif2."""
    leak, rest, refractory, current = combo
    vs = node.vth_scaled
    return dict(
        reset="value" if reset.startswith("value") else reset,
        v_reset={"value-": -vs // 2, "value+": 3 * vs // 4}.get(reset, 0),
        du=4095 if current == "IF" else DU,
        dv=DV if leak in ("mult", "both") else 0,
        leak=vs // LEAK if leak in ("sub", "both") else 0,
        v_rest=(vs // REST if node.name == "lif2" else -vs // REST) if rest == "rest" else 0,
        refractory=refractory,
    )


def family_graph(reset: str, index: int) -> ir.Graph:
    """Network ``index`` (0..15) of a reset kind: random_fixed_graph(SIZES, recurrent) with
    lif1, lif2 given the pair's combinations. Its projections are made 2**-WEAKER weaker and
    its biases vs // BIAS stronger: as drawn, most neurons are driven far above or below
    threshold on every step, where reset, leak and v_rest rarely change a spike. The seed is
    the first of s, s + 1000, ... whose layers, features on, fire on LIVELY to 1 - LIVELY of
    the steps (at most 33 tries are needed)."""
    seed = RESETS.index(reset) * 16 + index
    for _ in range(100):
        graph = random_fixed_graph(SIZES, seed=seed, recurrent=True)
        graph = graph.with_nodes([
            n.replace(weight_exp=max(-8, n.weight_exp - WEAKER)) if isinstance(n, ir.FixedAffine)
            else n.replace(bias_mant=np.minimum(n.bias_mant + ((n.vth_scaled // BIAS) >> n.bias_exp), 4095))
            if isinstance(n, ir.FixedLIF) else n for n in graph.nodes])
        for layer, combo in zip(LAYERS, pairs(reset)[index]):
            graph = replaced(graph, layer, **features(graph.node(layer), reset, combo))
        spikes = run_cpu(graph, payloads_for(graph, "current", seed)).spikes
        if all(LIVELY <= s.mean() <= 1 - LIVELY for s in spikes.values()):
            return graph
        seed += 1000
    raise AssertionError(f"no seed gives a lively network for {reset}, {pairs(reset)[index]}")


def merged(graphs: list[ir.Graph]) -> ir.Graph:
    """Disjoint copies of graphs (nodes renamed g<k>_<name>) sharing the Input 'in'; the
    first graph's readout feeds the single Output."""
    nodes: list[ir.Node] = [graphs[0].node("in")]
    edges: list[tuple[str, str]] = []
    for k, g in enumerate(graphs):
        assert g.node("in").shape == graphs[0].node("in").shape
        rename = {n.name: (n.name if isinstance(n, (ir.Input, ir.Output)) else f"g{k}_{n.name}")
                  for n in g.nodes}
        for n in g.nodes:
            if not isinstance(n, (ir.Input, ir.Output)):
                nodes.append(n.replace(name=rename[n.name]))
            elif isinstance(n, ir.Output) and k == 0:
                nodes.append(n)
        edges += [(rename[a], rename[b]) for a, b in g.edges
                  if k == 0 or not isinstance(g.node(b), ir.Output)]
    return ir.Graph(tuple(nodes), tuple(edges))


def check(graph: ir.Graph, payloads: np.ndarray, **brian2_options):
    expected = run_cpu(graph, payloads)
    b2 = Brian2Backend(**brian2_options)
    assert_identical(expected, b2.run(b2.compile(graph), payloads))
    return expected


# -- the neuron family: brian2 == cpu for every combination --------------------------------
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("reset", RESETS)
def test_family_matches_cpu(reset, encoding):
    """32 combinations in one Brian2 run; batch mode for constant current, concat mode (one
    long run, state zeroed at every sample window: v = 0, not v_rest, and ref = 0) for rate."""
    graph = merged([family_graph(reset, k) for k in range(len(FAMILY) // 2)])
    payloads = payloads_for(graph, encoding, seed=RESETS.index(reset))
    expected = check(graph, payloads, mode="batch" if encoding == "current" else "concat")
    for k, pair in enumerate(pairs(reset)):  # the comparison is not vacuous in any layer
        for layer, combo in zip(LAYERS, pair):
            s = expected.spikes[f"g{k}_{layer}"]
            assert 0 < s.sum() < s.size, (combo, layer)


# -- every feature changes the spike trains (cpu, every combination) ----------------------
def _spikes(graph: ir.Graph, payloads: np.ndarray) -> dict:
    return run_cpu(graph, payloads).spikes


def _differ(a: dict, b: dict) -> bool:
    return any(not np.array_equal(a[k], b[k]) for k in a)


def test_every_feature_changes_spikes():
    """For each combination, in its network, switching any of its features off changes the
    spikes for the input of test_family_matches_cpu in at least one of the two encodings,
    so that the brian2 == cpu comparison exercises it; v_rest without any leak changes
    nothing (the leaks are what pull v toward it)."""
    without_effect = []
    for reset in RESETS:
        for k, pair in enumerate(pairs(reset)):
            graph = family_graph(reset, k)
            runs = []
            for encoding in ENCODINGS:
                payloads = payloads_for(graph, encoding, seed=RESETS.index(reset))
                runs.append((payloads, _spikes(graph, payloads)))

            for layer, (leak, rest, refractory, current) in zip(LAYERS, pair):
                offs = {}
                if reset != "zero":
                    offs["reset"] = dict(reset="zero", v_reset=0)
                if leak in ("mult", "both"):
                    offs["dv"] = dict(dv=0)
                if leak in ("sub", "both"):
                    offs["leak"] = dict(leak=0)
                if refractory:
                    offs["refractory"] = dict(refractory=0)
                if current == "LIF":
                    offs["du"] = dict(du=4095)
                if rest == "rest":
                    offs["v_rest"] = dict(v_rest=0)
                for feature, changes in offs.items():
                    expected = feature != "v_rest" or leak != "none"
                    off = replaced(graph, layer, **changes)
                    changed = any(_differ(base, _spikes(off, payloads)) for payloads, base in runs)
                    if changed != expected:
                        without_effect.append((reset, layer, pair, feature))
    assert not without_effect, \
        f"features without effect on the spikes (v_rest: with effect but no leak): {without_effect}"


# -- stochastic layers ----------------------------------------------------------------------
def stochastic_graph(structure: str, seed: int, n_stochastic: int = 1) -> ir.Graph:
    """in -> lif1 -> lif2 -> lif3 (readout) with the first ``n_stochastic`` hidden layers
    FixedStochastic (different seeds); structure adds self-recurrence and/or feedback."""
    graph = random_fixed_graph([8, 12, 10, 4], seed=seed, du=3000, dv=300,
                               recurrent="recurrent" in structure, feedback="feedback" in structure)
    nodes = []
    for n in graph.nodes:
        if isinstance(n, ir.FixedLIF) and n.name in [f"lif{i + 1}" for i in range(n_stochastic)]:
            n = ir.FixedStochastic(n.name, n.size, vth=n.vth, bias_mant=n.bias_mant,
                                   bias_exp=n.bias_exp, seed=1000 * seed + int(n.name[-1]))
        nodes.append(n)
    return graph.with_nodes(nodes)


def _with_seed(graph: ir.Graph, seed: int) -> ir.Graph:
    return graph.with_nodes([n.replace(seed=seed) if isinstance(n, ir.FixedStochastic) else n
                             for n in graph.nodes])


@pytest.mark.parametrize("mode", ["batch", "concat"])
@pytest.mark.parametrize("structure", ["feedforward", "recurrent", "recurrent+feedback"])
def test_stochastic_matches_cpu(structure, mode):
    seed = ["feedforward", "recurrent", "recurrent+feedback"].index(structure)
    graph = stochastic_graph(structure, seed, n_stochastic=2)
    payloads = payloads_for(graph, "rate", seed, n=4, timesteps=15)
    expected = check(graph, payloads, mode=mode)
    for name in ("lif1", "lif2", "lif3"):
        s = expected.spikes[name]
        assert 0 < s.sum() < s.size, name
    # the draws matter: another seed gives other spikes
    assert _differ(expected.spikes, _spikes(_with_seed(graph, 12345), payloads))


def test_stochastic_sample_index_across_batch_chunks():
    """Draws depend on the sample's index in the whole batch, not in Brian2's chunk of copies."""
    graph = stochastic_graph("recurrent", 7)
    payloads = payloads_for(graph, "current", 7, n=5, timesteps=10)
    payloads[:] = payloads[0]  # identical samples: only the draws tell them apart
    per_copy = sum(int(np.count_nonzero(n.weight)) for n in graph.of_type(ir.FixedAffine))
    expected = check(graph, payloads, max_synapses=2 * per_copy)  # chunks of 2, 2 and 1 samples
    s = expected.spikes["lif1"]
    assert not np.array_equal(s[0], s[2]) and not np.array_equal(s[1], s[4])


# -- the firing probability of a stochastic neuron ------------------------------------------
def _one_neuron(weight: int, weight_exp: int, bias_mant: int, bias_exp: int, vth: int) -> ir.Graph:
    sto = ir.FixedStochastic("sto", 1, vth=vth, bias_mant=np.array([bias_mant]),
                             bias_exp=bias_exp, seed=2024)
    lif = ir.FixedLIF("lif", 1, vth=100)
    return ir.Graph(
        (ir.Input("in", (1,)), ir.FixedAffine("fc1", np.array([[weight]]), weight_exp), sto,
         ir.FixedAffine("fc2", np.array([[1]])), lif, ir.Output("out", (1,))),
        (("in", "fc1"), ("fc1", "sto"), ("sto", "fc2"), ("fc2", "lif"), ("lif", "out")),
    )


@pytest.mark.parametrize("weight, weight_exp, bias_mant, bias_exp", [
    (77, 1, 1000, 3),  # z = (255 * 77 * 2 << 6) + 8000 = 2521280: p = 0.3006
    (0, 0, 4000, 7),  # bias only: z = 512000, p = 0.0610
    (120, 2, -4096, 7),  # z = (255 * 120 * 4 << 6) - 524288 = 7309312: p = 0.8713
])
def test_stochastic_rate(weight, weight_exp, bias_mant, bias_exp):
    """Constant input z: the spike frequency over 4 x 5000 steps is z / (vth << 6) within
    4 sigma; z <= 0 never fires and z >= vth << 6 always does (exactly)."""
    vth = 2**17 - 1
    graph = _one_neuron(weight, weight_exp, bias_mant, bias_exp, vth)
    steps = 5000
    payloads = np.full((4, steps, 1), 255, np.int64)
    s = run_cpu(graph, payloads).spikes["sto"][:, 1:, 0]  # from step 1 on, a is constant
    z = ((255 * weight * 2**weight_exp) << 6) + (bias_mant << bias_exp)
    p = z / (vth << 6)
    assert 0 < p < 1
    sigma = np.sqrt(p * (1 - p) / s.size)
    assert abs(s.mean() - p) < 4 * sigma, (s.mean(), p, sigma)
    # extremes are exact: z <= 0 never exceeds r >= 0; z >= vth << 6 always exceeds r < vth << 6
    for mant, want in ((0, False), (-1, False), (50, True), (51, True)):  # 50 << 7 = 100 << 6
        g = _one_neuron(0, 0, mant, 7, 100)
        assert (run_cpu(g, payloads[:, :200]).spikes["sto"] == want).all()
