"""NIR import and export."""

from __future__ import annotations

import nir
import numpy as np
import pytest

from spikeforge import ir
from spikeforge.converter.nir_io import NIRImportWarning, load_nir, save_nir
from spikeforge.converter.passes import convert, quantize
from spikeforge.errors import SpikeforgeError, UnsupportedError
from spikeforge.runner import simulate
from spikeforge.testing import assert_identical, random_fixed_graph, random_inputs


@pytest.mark.parametrize("reset, dv, du", [("zero", 0, 4095), ("zero", 300, 4095), ("value", 0, 4095), ("zero", 0, 400)])
def test_quantized_graph_round_trip_is_identical(tmp_path, reset, dv, du):
    g = random_fixed_graph([10, 12, 4], seed=2, reset="zero", dv=dv, du=du)
    if reset == "value":
        g = g.with_nodes([n.replace(reset="value", v_reset=-3000) if isinstance(n, ir.FixedLIF) else n for n in g.nodes])
    save_nir(g, tmp_path / "g.nir")
    h = load_nir(tmp_path / "g.nir")  # no dt needed: recorded, and the quantization travels in the metadata
    assert [type(n) for n in h.nodes] == [type(n) for n in g.nodes] and h.edges == g.edges
    x = random_inputs(20, 10, seed=1)
    assert_identical(simulate(g, "cpu", x, 32).result, simulate(h, "cpu", x, 32).result)
    kinds = {type(n).__name__ for n in nir.read(str(tmp_path / "g.nir")).nodes.values()}
    assert ("CubaLIF" if du < 4095 else "LIF" if dv else "IF") in kinds


def test_float_graph_export_records_dt(tmp_path):
    """A float graph has no quantization to carry; its dt is read back from the file."""
    g = _read_back(tmp_path, nir.LIF(tau=np.ones(5) * 8e-3, r=np.ones(5), v_leak=np.zeros(5), v_threshold=np.ones(5)))
    save_nir(g, tmp_path / "f.nir", dt=1e-3)
    h = load_nir(tmp_path / "f.nir")
    assert h.node("n").tau == pytest.approx(8.0) and h.metadata["dt"] == 1e-3


def _read_back(tmp_path, neuron, dt=1e-3):
    nir.write(str(tmp_path / "a.nir"), _nir_graph(neuron))
    return load_nir(tmp_path / "a.nir", dt)


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
        load_nir(tmp_path / "t.nir", 1e-3)
    with pytest.raises(SpikeforgeError, match=r"t.nir: the file records no time step: give one with --dt\. snnTorch "
                                              r"files need --dt 1e-4 .*Norse.*1e-6.*IAFCell 1"):
        load_nir(tmp_path / "t.nir")
    nir.write(str(tmp_path / "th.nir"), _nir_graph(nir.Threshold(threshold=ones)))
    with pytest.raises(UnsupportedError, match=r"th.nir: unsupported NIR nodes: node 'n' \(Threshold\)"):
        load_nir(tmp_path / "th.nir", 1.0)
    (tmp_path / "junk.nir").write_bytes(b"junk")
    with pytest.raises(SpikeforgeError, match="junk.nir: not a readable NIR file"):
        load_nir(tmp_path / "junk.nir")


def test_cuba_lif_li_and_if_with_infinite_r(tmp_path):
    ones = np.ones(5)
    g = _read_back(tmp_path, nir.CubaLIF(tau_syn=ones * 4e-3, tau_mem=ones * 8e-3, r=ones * 8, v_leak=0 * ones,
                                         v_threshold=ones, w_in=ones * 4))
    assert g.node("n").tau_syn == pytest.approx(4.0)
    assert convert(g, np.zeros((0, 6))).node("n").du == 1023
    with pytest.warns(NIRImportWarning, match=r"node 'n' \(LIF\) tau = r = inf \(snnTorch beta = 1\)"):
        g = _read_back(tmp_path, nir.LIF(tau=ones * np.inf, r=ones * np.inf, v_leak=0 * ones, v_threshold=ones))
    assert isinstance(g.node("n"), ir.IF)
    g = _read_back(tmp_path, nir.LI(tau=ones * 5e-3, r=ones, v_leak=0 * ones))
    q = convert(g, np.zeros((0, 6)))
    sim = simulate(q, "cpu", random_inputs(4, 6), 16)
    assert sim.result.spikes["n"].sum() == 0  # a readout by potential


def test_wrong_dt_warns_naming_the_node(tmp_path):
    ones = np.ones(5)
    nir.write(str(tmp_path / "s.nir"), _nir_graph(nir.LIF(tau=ones * 1e-4 / 0.1, r=ones * 10, v_leak=0 * ones,
                                                             v_threshold=ones * 1e4)))
    with pytest.warns(NIRImportWarning, match=r"s.nir: node 'n'.*(cannot fire|clipped)"):
        load_nir(tmp_path / "s.nir", 1e-6)


def test_nested_graph_and_scale(tmp_path):
    rng = np.random.default_rng(0)
    ones = np.ones(5)
    inner = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([5])}),
                                "lif": nir.LIF(tau=ones * 1e-3, r=ones * 10, v_leak=0 * ones, v_threshold=ones),
                                "w_rec": nir.Linear(rng.normal(size=(5, 5))),
                                "output": nir.Output(output_type={"output": np.array([5])})},
                         edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")])
    outer = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([6])}),
                                "fc": nir.Affine(rng.normal(size=(5, 6)), np.zeros(5)),
                                "scale": nir.Scale(np.full(5, 2.0)), "rleaky": inner,
                                "output": nir.Output(output_type={"output": np.array([5])})},
                         edges=[("input", "fc"), ("fc", "scale"), ("scale", "rleaky"), ("rleaky", "output")])
    g = load_nir(outer, 1e-4)  # an in-memory graph
    assert ("rleaky.w_rec", "rleaky.lif") in g.edges and not g.is_feedforward()
    q = convert(g, np.zeros((0, 6)))
    assert simulate(q, "cpu", random_inputs(3, 6), 8).result.spikes["rleaky.lif"].shape == (3, 9, 5)
