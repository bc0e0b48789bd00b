"""deploy --target loihi2|lava-sim and inspect: hardware detection both ways (absent here; present
through a test double of the import check and board discovery only, the run itself is real
and fails honestly), the preflight refusals, and the Loihi 2 mapping estimate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spikeforge import graphio, ir
from spikeforge.backends import loihi
from spikeforge.cli import main
from spikeforge.mapping import LIMITS, SYNAPSE_COST, estimate
from spikeforge.testing import random_fixed_graph, run_cli




@pytest.fixture(scope="module")
def workdir(tmp_path_factory, copy_demo) -> Path:
    d = copy_demo(tmp_path_factory.mktemp("deploy"))
    for reset in ("zero", "subtract"):
        r = run_cli("convert", "model.onnx", "--calib", "calib.npz", "--reset", reset, "-o", f"net-{reset}.sfg",
                    cwd=d)
        assert r.returncode == 0, r.stderr
    return d


def test_loihi2_absent_here_one_line(workdir):
    assert not loihi.hardware_status()["available"]
    r = run_cli("deploy", "net-zero.sfg", "--target", "loihi2", "--data", "test.npz", cwd=workdir)
    assert r.returncode == 3 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "lava-loihi" in lines[0] and "--target lava-sim" in lines[0]
    r = run_cli("deploy", "net-zero.sfg", "--target", "loihi2", "--data", "test.npz", "--json", cwd=workdir)
    assert r.returncode == 3
    out = json.loads(r.stdout)
    assert out["deployed"] is False and "--target lava-sim" in out["error"]


def test_lava_sim_runs_and_matches_simulate(workdir):
    r = run_cli("deploy", "net-zero.sfg", "--target", "lava-sim", "--data", "test.npz", "--limit", "20",
                "--json", cwd=workdir)
    assert r.returncode == 0, r.stderr
    dep = json.loads(r.stdout)
    assert dep["deployed"] and dep["samples"] == 20 and dep["fits"] and dep["cores"] == 2
    r = run_cli("simulate", "net-zero.sfg", "--backend", "cpu", "--data", "test.npz", "--limit", "20",
                "--json", cwd=workdir)
    sim = json.loads(r.stdout)
    assert dep["accuracy"] == sim["accuracy"] and dep["accuracy"] > 0.8
    r = run_cli("deploy", "net-zero.sfg", "--target", "lava-sim", "--data", "test.npz", "--limit", "5",
                cwd=workdir)
    assert r.returncode == 0 and r.stdout.startswith("lava-sim: accuracy"), r.stderr


def test_detection_double_runs_for_real_and_fails_honestly(workdir, monkeypatch, capsys):
    """Only the import check and the board discovery are replaced: the hardware run itself is
    attempted with Loihi2HwCfg and, without lava-loihi's chip models, must fail with no result."""
    monkeypatch.setattr(loihi, "_lava_loihi_installed", lambda: (True, "test double"))
    monkeypatch.setattr(loihi, "_board", lambda: (True, "test double"))
    assert loihi.hardware_status()["available"]
    code = main(["deploy", str(workdir / "net-zero.sfg"), "--target", "loihi2",
                 "--data", str(workdir / "test.npz"), "--limit", "2"])
    out, err = capsys.readouterr()
    assert code != 0 and "accuracy" not in out
    assert err.startswith("spikeforge: error:") and len(err.strip().splitlines()) == 1


def test_deploy_refuses_what_loihi2_does_not_run_natively(workdir):
    r = run_cli("deploy", "net-subtract.sfg", "--target", "lava-sim", "--data", "test.npz", cwd=workdir)
    assert r.returncode == 1 and r.stdout == ""
    assert "reset='subtract'" in r.stderr and "convert --reset zero" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _save(graph: ir.Graph, path: Path) -> None:
    graphio.save(path, snn=graph)


def test_deploy_refuses_a_layer_beyond_the_fan_in_limit(tmp_path):
    n_in = LIMITS.fan_in_per_core + 10
    g = random_fixed_graph([n_in, 4, 2], seed=0, reset="zero")
    _save(g, tmp_path / "wide.sfg")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wide.npz", x=rng.random((2, n_in)).astype(np.float32), y=np.array([0, 1]))
    r = run_cli("inspect", "wide.sfg", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    est = json.loads(r.stdout)
    assert est["fits"] is False and est["layers"][0]["fan_in"] == n_in
    r = run_cli("deploy", "wide.sfg", "--target", "lava-sim", "--data", "wide.npz", cwd=tmp_path)
    assert r.returncode == 1
    assert "node 'lif1'" in r.stderr and f"fan-in {n_in}" in r.stderr and "fan_in_per_core" in r.stderr
    r = run_cli("deploy", "wide.sfg", "--target", "loihi2", "--data", "wide.npz", cwd=tmp_path)
    assert r.returncode == 1 and "fan_in_per_core" in r.stderr  # the fit is said before the hardware


def test_deploy_refuses_stochastic_by_name(tmp_path):
    g = random_fixed_graph([6, 5, 3], seed=1, reset="zero")
    nodes = [ir.FixedStochastic(n.name, n.size, vth=n.vth, bias_mant=n.bias_mant, bias_exp=n.bias_exp)
             if n.name == "lif1" else n for n in g.nodes]
    _save(g.with_nodes(nodes), tmp_path / "st.sfg")
    np.savez(tmp_path / "d.npz", x=np.zeros((1, 6), np.float32), y=np.array([0]))
    r = run_cli("deploy", "st.sfg", "--target", "lava-sim", "--data", "d.npz", cwd=tmp_path)
    assert r.returncode == 1 and "node 'lif1'" in r.stderr and "convert --neuron if" in r.stderr


def test_inspect_demo_net(workdir):
    r = run_cli("inspect", "net-zero.sfg", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "fan_in" in r.stdout and "fits one Loihi 2 chip" in r.stdout
    est = json.loads(run_cli("inspect", "net-zero.sfg", "--json", cwd=workdir).stdout)
    g = graphio.load(workdir / "net-zero.sfg")
    lifs = g.of_type(ir.FixedLIF)
    assert [l["layer"] for l in est["layers"]] == [n.name for n in lifs]
    assert [l["neurons"] for l in est["layers"]] == [n.size for n in lifs]
    affs = g.of_type(ir.FixedAffine)
    assert [l["synapses"] for l in est["layers"]] == [int(np.count_nonzero(a.weight)) for a in affs]
    assert [l["fan_in"] for l in est["layers"]] == [a.in_size for a in affs]
    assert est["layers"][0]["fan_out"] == affs[1].out_size and est["layers"][-1]["fan_out"] == 0
    assert est["cores"] == 2 and est["chips"] == 1 and est["fits"] is True


def test_estimate_conv_layer_and_core_count():
    """A conv layer through the same table: fan-in = C_in kH kW, the shared kernel stored per core;
    a dense layer past neurons_per_core needs more cores."""
    conv = ir.FixedConv2d("conv", (2, 6, 6), (1, 1), (1, 1), weight=np.ones((4, 2, 3, 3), np.int64))
    n = 4 * 6 * 6
    nodes = [ir.Input("in", (2, 6, 6)), conv,
             ir.FixedLIF("lif1", n, shape=(4, 6, 6), vth=10, reset="zero"),
             ir.Flatten("flat", (4, 6, 6)),
             ir.FixedAffine("fc", np.ones((3, n), np.int64)),
             ir.FixedLIF("lif2", 3, vth=10, reset="zero"), ir.Output("out", (3,))]
    edges = [("in", "conv"), ("conv", "lif1"), ("lif1", "flat"), ("flat", "fc"), ("fc", "lif2"),
             ("lif2", "out")]
    est = estimate(ir.Graph(tuple(nodes), tuple(edges)))
    c, d = est.layers
    assert c.synapse_types == ("FixedConv2d",) and c.fan_in == 18 and c.fan_out == 3
    assert SYNAPSE_COST.lookup(conv)(conv).fan_out == 4 * 3 * 3  # an input reaches 4 channels x 3 x 3
    assert c.synapses == 4 * 2 * (5 + 6 + 5) ** 2 and c.neurons == n and d.fan_in == n and est.fits  # padding: fewer at the border
    big = random_fixed_graph([8, LIMITS.neurons_per_core * 2 + 1, 2], seed=0, reset="zero")
    layer = estimate(big).layers[0]
    assert layer.cores == 3 and layer.limited_by == "neurons_per_core"
