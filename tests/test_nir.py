"""NIR import and export."""

from __future__ import annotations

import warnings

import nir
import numpy as np
import pytest

from spikeforge import ir
from spikeforge.converter.nir_io import NIRImportWarning, load_nir, save_nir
from spikeforge.converter.passes import convert
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


def _conv_graph(groups: int = 1, padding: object = (1, 1), pool: str = "SumPool2d") -> nir.NIRGraph:
    rng = np.random.default_rng(0)
    pool_node = getattr(nir, pool)(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))
    return nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([2, 6, 6])}),
        "conv": nir.Conv2d(input_shape=(6, 6), weight=rng.integers(-20, 40, (4, 2 // groups, 3, 3)).astype(float),
                           stride=1, padding=padding, dilation=1, groups=groups, bias=np.zeros(4)),
        "if1": nir.IF(r=np.ones((4, 6, 6)), v_threshold=np.full((4, 6, 6), 50.0), v_reset=np.zeros((4, 6, 6))),
        "pool": pool_node,
        "flat": nir.Flatten(input_type={"input": np.array([4, 3, 3])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(rng.integers(-20, 40, (3, 36)).astype(float), np.zeros(3)),
        "if2": nir.IF(r=np.ones(3), v_threshold=np.full(3, 60.0), v_reset=np.zeros(3)),
        "output": nir.Output(output_type={"output": np.array([3])})},
        edges=[("input", "conv"), ("conv", "if1"), ("if1", "pool"), ("pool", "flat"), ("flat", "fc"),
               ("fc", "if2"), ("if2", "output")], type_check=groups == 1)


def test_conv_and_pool_import(tmp_path):
    """Conv2d ('same' padding, groups) and SumPool2d / AvgPool2d: the pool folds into the next
    synapse (SumPool2d = 4 AvgPool2d here), the neurons keep their (C, H, W) shape."""
    x = random_inputs(4, 72, seed=3)
    sums = load_nir(_conv_graph(), 1.0)
    avgs = load_nir(_conv_graph(pool="AvgPool2d"), 1.0)
    assert not sums.of_type(ir.AvgPool2d) and sums.node("if1").shape == (4, 6, 6)
    assert sums.node("conv").padding == (1, 1, 1, 1)
    w_sum, w_avg = sums.node("fc").weight, avgs.node("fc").weight
    assert w_sum.shape == (3, 144) and np.allclose(w_sum, 4 * w_avg)
    same = load_nir(_conv_graph(groups=2, padding="same"), 1.0)  # in memory: nir cannot type-check groups
    assert same.node("conv").groups == 2 and same.node("conv").padding == (1, 1, 1, 1)
    q = convert(sums, np.zeros((0, 72)), payload_bits=1)
    assert q.is_fixed() and q.of_type(ir.FixedConv2d)
    assert simulate(q, "cpu", x, 16).result.spikes["if1"].shape == (4, 18, 144)  # T + 2 layers


def test_conv1d_refused_by_name(tmp_path):
    g = _conv_graph()
    nodes = dict(g.nodes)
    nodes["conv"] = nir.Conv1d(input_shape=6, weight=np.ones((4, 2, 3)), stride=1, padding=1, dilation=1,
                               groups=1, bias=np.zeros(4))
    with pytest.raises(UnsupportedError, match=r"NIR graph: node 'conv' \(Conv1d\): 1-D convolution is not supported"):
        load_nir(nir.NIRGraph(nodes=nodes, edges=g.edges, type_check=False), 1.0)


def test_conv_graph_round_trip_and_export_refusals(tmp_path):
    """spikeforge -> NIR -> spikeforge of a quantized conv graph: identical; a float Conv2d
    graph reads back the same weights; grouped and asymmetric convs are refused by name."""
    q = convert(load_nir(_conv_graph(), 1.0), np.zeros((0, 72)), payload_bits=1).with_metadata(source="x")
    save_nir(q, tmp_path / "q.nir")
    h = load_nir(tmp_path / "q.nir")
    assert [type(n) for n in h.nodes] == [type(n) for n in q.nodes]
    x = random_inputs(6, 72, seed=4)
    assert_identical(simulate(q, "cpu", x, 24).result, simulate(h, "cpu", x, 24).result)
    kinds = {type(n).__name__ for n in nir.read(str(tmp_path / "q.nir")).nodes.values()}
    assert {"Conv2d", "Flatten", "Affine", "IF"} <= kinds
    f = load_nir(_conv_graph(), 1.0)
    save_nir(f, tmp_path / "f.nir", dt=1.0)
    back = load_nir(tmp_path / "f.nir")
    assert np.allclose(back.node("conv").weight, f.node("conv").weight)
    grouped = load_nir(_conv_graph(groups=2), 1.0)
    with pytest.raises(UnsupportedError, match=r"g.nir: cannot export to NIR: node 'conv' \(Conv2d\): groups = 2"):
        save_nir(grouped, tmp_path / "g.nir")
    asym = ir.Graph((ir.Input("in", (1, 5, 5)), ir.Conv2d("c", (1, 5, 5), padding=(0, 0, 1, 1), weight=np.ones((2, 1, 2, 2))),
                     ir.IF("n", 50, shape=(2, 5, 5), reset="zero"), ir.Output("out", (2, 5, 5))),
                    (("in", "c"), ("c", "n"), ("n", "out")))
    with pytest.raises(UnsupportedError, match=r"node 'c' \(Conv2d\): padding \(top, left, bottom, right\) = \(0, 0, 1, 1\)"):
        save_nir(asym, tmp_path / "a.nir")
    assert not (tmp_path / "a.nir").exists() and not (tmp_path / "g.nir").exists()


def test_a_reader_that_hangs_is_killed_and_refused(tmp_path, monkeypatch):
    """Corrupted HDF5 can make h5py loop forever inside C (scripts/fuzz_nir.py found one): the
    file is read in a child process with a time limit, so the caller gets one line instead."""
    import time

    import nir

    from spikeforge.converter import nir_io
    from spikeforge.errors import SpikeforgeError

    path = tmp_path / "hang.nir"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    monkeypatch.setattr(nir, "read", lambda p: time.sleep(60))  # stands in for the C-level loop
    t0 = time.monotonic()
    with pytest.raises(SpikeforgeError, match=r"hang.nir: not a readable NIR file \(reading took over 1 s\)"):
        nir_io._read_isolated(path, timeout=1.0)
    assert time.monotonic() - t0 < 10


def test_cli_export_target_sinabs(tmp_path, capsys):
    """``export --target sinabs``: a graph resetting by subtraction is written (IF without
    v_reset, thresholds just above vth << 6) and reads back identical; reset to zero is refused
    by node with exit code 2, nothing written."""
    import h5py

    from spikeforge import graphio
    from spikeforge.cli import main

    g = random_fixed_graph([6, 5, 3], seed=2, reset="subtract")
    graphio.save(tmp_path / "net.sfg", snn=g)
    assert main(["export", str(tmp_path / "net.sfg"), "--target", "sinabs", "-o", str(tmp_path / "s.nir")]) == 0
    with h5py.File(tmp_path / "s.nir") as f:
        assert "v_reset" not in f["node/nodes/lif1"]
        theta = f["node/nodes/lif1/v_threshold"][()]
    vth = g.node("lif1", ir.FixedLIF).vth_scaled
    assert (theta > vth).all() and (theta - vth < 2.0**-4).all()
    back = load_nir(tmp_path / "s.nir")
    assert [type(n).__name__ for n in back.nodes] == [type(n).__name__ for n in g.nodes]
    zero = g.with_nodes([n.replace(reset="zero") if isinstance(n, ir.FixedLIF) else n for n in g.nodes])
    graphio.save(tmp_path / "zero.sfg", snn=zero)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "zero.sfg"), "--target", "sinabs", "-o", str(tmp_path / "z.nir")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "node 'lif1' (FixedLIF): reset='zero': Sinabs' from_nir" in err
    assert not (tmp_path / "z.nir").exists()


def test_cli_round_trip_of_a_quantized_file_simulates(tmp_path, capsys):
    """``export`` then ``convert`` of the .nir: the .sfg holds the same quantized graph and no
    ANN (there is none to keep), so ``simulate`` runs it rather than failing on an ANN pass."""
    from spikeforge import graphio
    from spikeforge.cli import main

    g = random_fixed_graph([6, 5, 3], seed=4, reset="zero")
    graphio.save(tmp_path / "net.sfg", snn=g)
    x = random_inputs(12, 6, seed=2)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(len(x), np.int64))
    assert main(["export", str(tmp_path / "net.sfg"), "-o", str(tmp_path / "n.nir")]) == 0
    assert main(["convert", str(tmp_path / "n.nir"), "-o", str(tmp_path / "back.sfg")]) == 0
    assert set(graphio.load_all(tmp_path / "back.sfg")) == {"snn"}
    capsys.readouterr()
    assert main(["simulate", str(tmp_path / "back.sfg"), "--data", str(tmp_path / "d.npz")]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert_identical(simulate(g, "cpu", x, 32).result,
                     simulate(graphio.load(tmp_path / "back.sfg"), "cpu", x, 32).result)


@pytest.mark.parametrize("target, reset, conv", [("nir", "zero", False), ("snntorch", "zero", True),
                                                 ("sinabs", "subtract", False), ("nir", "zero", True)])
def test_an_unedited_export_reads_back_its_recorded_graph(tmp_path, target, reset, conv):
    """No false alarm: every target's file, as written, matches the record it carries."""
    from spikeforge.testing import random_conv_graph

    g = (random_conv_graph((1, 6, 6), channels=(3,), strides=(2,), n_out=4, seed=1, reset=reset) if conv
         else random_fixed_graph([6, 5, 3], seed=4, reset=reset))
    if conv:  # NIR's Conv2d has one bias per channel
        lif1 = g.node("lif1", ir.FixedLIF)
        g = g.with_nodes([lif1.replace(bias_mant=np.repeat(np.arange(3) * 40, lif1.size // 3)) if n is lif1 else n
                          for n in g.nodes])
    save_nir(g, tmp_path / "n.nir", target=target)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NIRImportWarning)
        back = load_nir(tmp_path / "n.nir")
    x = random_inputs(8, g.inputs[0].out_size, seed=3)
    assert_identical(simulate(g, "cpu", x, 16).result, simulate(back, "cpu", x, 16).result)


def test_an_edited_export_runs_as_its_nodes_say(tmp_path, capsys):
    """A file changed after export was converted from its stale record, the edit silently
    ignored: now the record is set aside with a warning naming the node, and the nodes import."""
    from spikeforge import graphio
    from spikeforge.cli import main

    g = random_fixed_graph([6, 5, 3], seed=4, reset="zero")
    save_nir(g, tmp_path / "n.nir")
    f = nir.read(str(tmp_path / "n.nir"))
    f.nodes["fc1"].weight[...] = -f.nodes["fc1"].weight
    nir.write(str(tmp_path / "e.nir"), f)
    with pytest.warns(NIRImportWarning, match=r"edited after spikeforge exported it \(node 'fc1' \(Affine\) weight"):
        edited = load_nir(tmp_path / "e.nir")
    assert not edited.is_fixed()  # the float nodes, to be quantized
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "e.nir"), "-o", str(tmp_path / "e.sfg")]) == 0
    assert "edited after spikeforge exported it" in capsys.readouterr().err
    w = graphio.load(tmp_path / "e.sfg").node("fc1", ir.FixedAffine).weight
    assert np.array_equal(np.sign(w), -np.sign(g.node("fc1", ir.FixedAffine).weight))


@pytest.mark.parametrize("option", [["--reset", "subtract"], ["--target", "netx"], ["--neuron", "stochastic"],
                                    ["--normalize", "max"], ["--dt", "foo"]])
def test_options_that_cannot_apply_to_a_quantized_nir_file_are_refused(tmp_path, capsys, option):
    """--reset subtract on an exported reset-to-zero file gave a reset-to-zero graph, exit 0."""
    from spikeforge.cli import main

    save_nir(random_fixed_graph([6, 5, 3], seed=4, reset="zero"), tmp_path / "n.nir")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "n.nir"), *option, "-o", str(tmp_path / "c.sfg")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option[0].lstrip("-") in err and option[1] in err, err
    assert not (tmp_path / "c.sfg").exists()
