"""lava-dl netx: `convert --target netx`, `export --to netx`, and the file run by lava-dl's own
netx.hdf5.Network under Loihi2SimCfg('fixed_pt'), spike for spike against spikeforge."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from spikeforge import data, graphio, ir
from spikeforge.converter.netx_io import export_netx, run_netx
from spikeforge.errors import UnsupportedError
from spikeforge.runner import payloads_for, simulate
from spikeforge.testing import random_fixed_graph, run_cli

T = 32
SAMPLES = 24



@pytest.fixture(scope="module")
def workdir(tmp_path_factory, copy_demo) -> Path:
    d = copy_demo(tmp_path_factory.mktemp("netx"))
    r = run_cli("convert", "model.onnx", "--calib", "calib.npz", "--target", "netx", "--json",
                "-o", "net-netx.sfg", cwd=d)
    assert r.returncode == 0, r.stderr
    (d / "convert.json").write_text(r.stdout)
    return d


def test_convert_target_netx_follows_netx_rules(workdir):
    rep = json.loads((workdir / "convert.json").read_text())
    assert rep["target"] == "netx" and rep["reset"] == "zero"
    changes = rep["netx_changes"]
    assert [c["layer"] for c in changes] == [l["layer"] for l in rep["layers"]]
    assert any(e != 0 for c in changes for e in c["weight_exp"])  # the default uses exponents
    g = graphio.load(workdir / "net-netx.sfg")
    for n in g.of_type(ir.FixedAffine):
        assert n.weight_exp == 0 and np.abs(n.weight).max() <= 127
    for n in g.of_type(ir.FixedLIF):
        assert n.reset == "zero" and n.bias_exp == 6 and (n.bias_mant != 0).any()
    assert all(l["saturated_biases"] == 0 and l["clipped_weights"] == 0 for l in rep["layers"])


def test_netx_file_runs_in_lava_dl_spike_identical(workdir):
    r = run_cli("export", "net-netx.sfg", "--to", "netx", "-o", "net.net", cwd=workdir)
    assert r.returncode == 0, r.stderr
    with h5py.File(workdir / "net.net") as f:
        types = [f[f"layer/{i}/type"][()].decode() for i in range(len(f["layer"]))]
        assert types == ["input", "flatten", "dense", "dense"]
        assert int(f["layer/2/neuron/iDecay"][()]) == 4096 and int(f["layer/2/neuron/vDecay"][()]) == 0
    g = graphio.load(workdir / "net-netx.sfg")
    test = data.load(str(workdir / "test.npz"))
    x = test.x.reshape(len(test.x), -1)[:SAMPLES]
    names = [l.name for l in g.of_type(ir.FixedLIF)]
    netx = run_netx(workdir / "net.net", names, payloads_for(g, x, T))
    for backend in ("cpu", "lava"):
        sim = simulate(g, backend, x, T)
        for name in names:
            ours, theirs = sim.result.spikes[name], netx[name]
            assert ours.shape == theirs.shape == (SAMPLES, T + 2, g.node(name).size)
            assert ours.sum() > 0, name
            mismatched = int((ours != theirs).sum())
            assert mismatched == 0, f"{backend} vs netx, layer {name}: {mismatched} spikes differ"


def test_export_refuses_default_quantization(workdir):
    r = run_cli("convert", "model.onnx", "--calib", "calib.npz", "--reset", "zero", "-o", "net-zero.sfg",
                cwd=workdir)
    assert r.returncode == 0, r.stderr
    r = run_cli("export", "net-zero.sfg", "--to", "netx", "-o", "bad.net", cwd=workdir)
    assert r.returncode == 2 and not (workdir / "bad.net").exists()
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "weight_exp" in err and "convert --target netx" in err
    r = run_cli("convert", "model.onnx", "--calib", "calib.npz", "--target", "netx", "--reset", "subtract",
                "-o", "x.sfg", cwd=workdir)
    assert r.returncode == 2 and "--reset subtract" in r.stderr and not (workdir / "x.sfg").exists()


def _netx_ready(graph: ir.Graph) -> ir.Graph:
    """A random graph re-written to netx's rules (exponent 0, bias multiple of 64)."""
    nodes = []
    for n in graph.nodes:
        if isinstance(n, ir.FixedAffine):
            n = n.replace(weight_exp=0)
        elif isinstance(n, ir.FixedLIF):
            n = n.replace(bias_exp=6)
        nodes.append(n)
    return graph.with_nodes(nodes)


@pytest.mark.parametrize("change, needle", [
    (lambda g: g, "reset='subtract'"),
    (lambda g: g.with_nodes([n.replace(reset="zero", bias_exp=5) if isinstance(n, ir.FixedLIF) else n
                             for n in g.nodes]), "multiple of 64"),
    (lambda g: g.with_nodes([n.replace(reset="zero", refractory=2) if isinstance(n, ir.FixedLIF) else n
                             for n in g.nodes]), "refractory=2"),
    (lambda g: g.with_nodes([n.replace(reset="zero", v_init=np.full(n.size, -64)) if isinstance(n, ir.FixedLIF)
                             else n for n in g.nodes]), r"v_init: netx starts every neuron at v = 0"),
])
def test_export_refuses_by_name(tmp_path, change, needle):
    g = change(_netx_ready(random_fixed_graph([6, 5, 3], seed=1, reset="subtract")))
    with pytest.raises(UnsupportedError, match=needle) as info:
        export_netx(g, tmp_path / "x.net")
    assert "node 'lif1'" in str(info.value) and not (tmp_path / "x.net").exists()


def test_export_refuses_recurrence_and_stochastic(tmp_path):
    g = _netx_ready(random_fixed_graph([6, 5, 3], seed=1, reset="zero", recurrent=True))
    with pytest.raises(UnsupportedError, match="feedforward chains"):
        export_netx(g, tmp_path / "x.net")
    g = _netx_ready(random_fixed_graph([6, 5, 3], seed=1, reset="zero"))
    nodes = [ir.FixedStochastic(n.name, n.size, vth=n.vth, bias_mant=n.bias_mant, bias_exp=6)
             if n.name == "lif1" else n for n in g.nodes]
    with pytest.raises(UnsupportedError, match="node 'lif1' .*stochastic"):
        export_netx(g.with_nodes(nodes), tmp_path / "x.net")


def test_netx_conv_export_spike_identical_to_cpu(tmp_path):
    """Conv layers (padding, stride 2) and flatten through netx's Conv blocks: the (C, H, W)
    layout against netx's (x, y, z), kernel orientation and per-neuron biases."""
    from spikeforge.converter.netx_io import convert_netx

    rng = np.random.default_rng(0)
    nodes = [ir.Input("in", (2, 8, 8)),
             ir.Conv2d("conv1", (2, 8, 8), (1, 1), (1, 1), weight=rng.normal(0, 0.3, (4, 2, 3, 3)),
                       bias=rng.normal(0, 0.05, 4)),
             ir.ReLU("relu1", 256, shape=(4, 8, 8)),
             ir.Conv2d("conv2", (4, 8, 8), (2, 2), (0, 0), weight=rng.normal(0, 0.3, (3, 4, 3, 3)),
                       bias=rng.normal(0, 0.05, 3)),
             ir.ReLU("relu2", 27, shape=(3, 3, 3)),
             ir.Flatten("flat", (3, 3, 3)),
             ir.Affine("fc", rng.normal(0, 0.3, (5, 27)), rng.normal(0, 0.05, 5)),
             ir.Output("out", (5,))]
    edges = [("in", "conv1"), ("conv1", "relu1"), ("relu1", "conv2"), ("conv2", "relu2"),
             ("relu2", "flat"), ("flat", "fc"), ("fc", "out")]
    x = rng.random((30, 128))
    g, _ = convert_netx(ir.Graph(tuple(nodes), tuple(edges)), x)
    names = export_netx(g, tmp_path / "conv.net")
    assert names == ["relu1", "relu2", "readout"]
    assert_netx_runs_as_cpu(g, tmp_path / "conv.net", names, x[:4])


def assert_netx_runs_as_cpu(g: ir.Graph, path: Path, names: list[str], x: np.ndarray, steps: int = 16) -> None:
    """The exported file in lava-dl netx: every layer fires, spike for spike as the cpu backend."""
    sim = simulate(g, "cpu", x, steps)
    netx = run_netx(path, names, payloads_for(g, x, steps))
    for name in names:
        assert sim.result.spikes[name].sum() > 0, name
        assert (sim.result.spikes[name] == netx[name]).all(), name


def test_netx_export_of_avgpool_folded_into_strided_conv(tmp_path):
    """Conv - ReLU - AvgPool2d(2) - Conv(stride 2, padding 1) on 8x8 digits: the fold gives
    the second conv (top, left)-only padding (2, 2, 0, 0) whose bottom/right part no window
    reaches; netx's symmetric (2, 2) computes the same windows, so the file runs spike for
    spike as the cpu backend does."""
    from spikeforge.converter.netx_io import convert_netx

    rng = np.random.default_rng(1)
    nodes = [ir.Input("in", (1, 8, 8)),
             ir.Conv2d("conv1", (1, 8, 8), (1, 1), (1, 1), weight=rng.normal(0, 0.5, (8, 1, 3, 3)),
                       bias=rng.normal(0, 0.05, 8)),
             ir.ReLU("relu1", 512, shape=(8, 8, 8)),
             ir.AvgPool2d("pool", (8, 8, 8), (2, 2), (2, 2)),
             ir.Conv2d("conv2", (8, 4, 4), (2, 2), (1, 1), weight=rng.normal(0, 0.3, (12, 8, 3, 3))),
             ir.ReLU("relu2", 48, shape=(12, 2, 2)),
             ir.Flatten("flat", (12, 2, 2)),
             ir.Affine("fc", rng.normal(0, 0.3, (10, 48)), rng.normal(0, 0.05, 10)),
             ir.Output("out", (10,))]
    names_ = [n.name for n in nodes]
    x = data.load_digits().x[:40]
    g, _ = convert_netx(ir.Graph(tuple(nodes), tuple(zip(names_, names_[1:]))), x)
    assert g.node("conv2", ir.FixedConv2d).padding == (2, 2, 0, 0)
    names = export_netx(g, tmp_path / "cnn.net")
    with h5py.File(tmp_path / "cnn.net") as f:
        assert list(f["layer/2/padding"][()]) == [2, 2]
    assert_netx_runs_as_cpu(g, tmp_path / "cnn.net", names, x[:4])


def test_netx_export_refuses_padding_no_symmetric_one_matches(tmp_path):
    """(0, 0, 1, 1) on 4x4, kernel 2: symmetric (0, 0) loses the last row and column of
    windows, (1, 1) shifts every window: refused by node, nothing written."""
    conv = ir.FixedConv2d("conv", (1, 4, 4), (1, 1), (0, 0, 1, 1), weight=np.ones((2, 1, 2, 2), np.int64),
                          weight_exp=0)
    nodes = [ir.Input("in", (1, 4, 4)), conv,
             ir.FixedLIF("lif", 32, shape=(2, 4, 4), vth=3, bias_mant=np.zeros(32, np.int64), bias_exp=6,
                         reset="zero"),
             ir.Output("out", (2, 4, 4))]
    names = [n.name for n in nodes]
    g = ir.Graph(tuple(nodes), tuple(zip(names, names[1:])))
    with pytest.raises(UnsupportedError, match=r"node 'conv' \(FixedConv2d\) padding .* = \(0, 0, 1, 1\): "
                                               r"netx pads symmetrically"):
        export_netx(g, tmp_path / "x.net")
    assert not (tmp_path / "x.net").exists()
