"""NIR import and export."""

from __future__ import annotations

import nir
import numpy as np
import pytest

from spikeforge import ir
from spikeforge.converter.nir_io import load_nir, save_nir
from spikeforge.converter.passes import convert, quantize
from spikeforge.errors import SpikeforgeError, UnsupportedError
from spikeforge.runner import simulate
from spikeforge.testing import random_fixed_graph, random_inputs


@pytest.mark.parametrize("reset, dv", [("zero", 0), ("zero", 300), ("value", 0)])
def test_quantized_graph_round_trip(tmp_path, reset, dv):
    g = random_fixed_graph([10, 12, 4], seed=2, reset="zero", dv=dv)
    if reset == "value":
        g = g.with_nodes([n.replace(reset="value", v_reset=-3000) if isinstance(n, ir.FixedLIF) else n for n in g.nodes])
    save_nir(g, tmp_path / "g.nir")
    h = load_nir(tmp_path / "g.nir")
    kinds = {type(n) for n in h.nodes}
    assert (ir.LIF in kinds) == (dv > 0 or reset == "value")
    q = quantize(h)
    x = random_inputs(20, 10, seed=1)
    a, b = simulate(g, "cpu", x, 32), simulate(q, "cpu", x, 32)
    # re-quantization picks its own vth and exponents: nearly, not bit, identical
    for k in a.result.spikes:
        assert (a.result.spikes[k] == b.result.spikes[k]).mean() > 0.95
    assert (a.predictions == b.predictions).mean() >= 0.9


def test_reset_by_subtraction_is_refused_by_name(tmp_path):
    g = random_fixed_graph([4, 3], reset="subtract")
    with pytest.raises(UnsupportedError, match=r"g.nir: cannot export to NIR: node 'lif1' \(FixedLIF\): reset by subtraction has no NIR equivalent"):
        save_nir(g, tmp_path / "g.nir")
    assert not (tmp_path / "g.nir").exists()


def _nir_graph(neuron) -> nir.NIRGraph:
    rng = np.random.default_rng(0)
    return nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([6])}),
        "fc": nir.Affine(rng.normal(size=(5, 6)), rng.normal(size=5) * 0.1),
        "n": neuron,
        "output": nir.Output(output_type={"output": np.array([5])})},
        edges=[("input", "fc"), ("fc", "n"), ("n", "output")])


def test_import_lif_parameters(tmp_path):
    ones = np.ones(5)
    nir.write(str(tmp_path / "a.nir"), _nir_graph(nir.LIF(tau=ones * 8e-3, r=ones * 2, v_leak=ones * 0.1,
                                                             v_threshold=ones * 2.0, v_reset=ones * 0)))
    g = load_nir(tmp_path / "a.nir", dt=1e-3)
    lif = g.node("n")
    assert isinstance(lif, ir.LIF) and lif.tau == pytest.approx(8.0) and lif.v_leak == pytest.approx(0.05)
    q = convert(g, np.zeros((1, 6)))
    assert q.node("n").dv == 512 and q.is_fixed()
    sim = simulate(q, "cpu", random_inputs(3, 6), 16)
    assert sim.result.spikes["n"].shape == (3, 17, 5)


def test_import_errors(tmp_path):
    ones = np.ones(5)
    nir.write(str(tmp_path / "t.nir"), _nir_graph(nir.LIF(tau=np.linspace(1e-3, 5e-3, 5), r=ones, v_leak=0 * ones,
                                                             v_threshold=ones)))
    with pytest.raises(UnsupportedError, match=r"t.nir: node 'n' tau: expected one value for the layer"):
        load_nir(tmp_path / "t.nir")
    nir.write(str(tmp_path / "c.nir"), _nir_graph(nir.CubaLIF(tau_syn=ones, tau_mem=ones, r=ones, v_leak=0 * ones,
                                                              v_threshold=ones)))
    with pytest.raises(UnsupportedError, match=r"c.nir: unsupported NIR nodes: node 'n' \(CubaLIF\)"):
        load_nir(tmp_path / "c.nir")
    (tmp_path / "junk.nir").write_bytes(b"junk")
    with pytest.raises(SpikeforgeError, match="junk.nir: not a readable NIR file"):
        load_nir(tmp_path / "junk.nir")
