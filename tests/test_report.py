"""spikeforge report: every image index.html references exists and is a valid PNG, and the summary
numbers are those of `simulate --json` (same data, T, limit)."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from spikeforge import graphio, ir
from spikeforge.network import lower
from spikeforge.report import membrane_replay, synaptic_ops, t99
from spikeforge.runner import payloads_for, simulate
from spikeforge.testing import random_conv_graph, random_fixed_graph, random_inputs, run_cli




def assert_valid_png(path: Path) -> None:
    """PNG signature, an IHDR with a positive size, every chunk's CRC right, IEND last."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, kinds = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in {kind!r}"
        kinds.append(kind)
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    w, h = struct.unpack(">II", data[16:24])
    assert w > 100 and h > 100


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, copy_demo) -> Path:
    d = copy_demo(tmp_path_factory.mktemp("report"))
    r = run_cli("convert", "model.onnx", "--calib", "calib.npz", "-o", "net.sfg", cwd=d)
    assert r.returncode == 0, r.stderr
    return d


def test_report_images_and_summary(workdir):
    r = run_cli("report", "net.sfg", "--data", "test.npz", "--limit", "80", "--timesteps", "24",
                "-o", "rep", cwd=workdir)
    assert r.returncode == 0, r.stderr
    page = (workdir / "rep" / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert set(images) == {"raster.png", "membrane.png", "rates.png", "accuracy.png", "synops.png"}
    for name in images:
        assert_valid_png(workdir / "rep" / name)
    summary = json.loads(re.search(r'<script type="application/json" id="summary">(.*?)</script>',
                                   page, re.S).group(1))
    r = run_cli("simulate", "net.sfg", "--backend", "cpu", "--data", "test.npz", "--limit", "80",
                "--timesteps", "24", "--json", cwd=workdir)
    sim = json.loads(r.stdout)
    for key in ("accuracy", "ann_accuracy", "samples", "timesteps", "encoding"):
        assert summary[key] == sim[key], key
    assert summary["firing_rates"] == pytest.approx(sim["firing_rates"], abs=0, rel=1e-12)
    assert f"{100 * sim['accuracy']:.2f}%" in page and f"{100 * sim['ann_accuracy']:.2f}%" in page
    assert "estimate" in page and "docs/loihi2.md" in page
    sweep = [int(t) for t in summary["accuracy_vs_T"]]
    assert summary["t99"] == t99(sweep, list(summary["accuracy_vs_T"].values()))
    assert len(summary["correlation"]) == 2 and all(r > 0.8 for r in summary["correlation"].values())
    assert any(k.startswith("readout") for k in summary["correlation"])
    assert summary["ann_macs_per_inference"] == 64 * 64 + 64 * 10
    assert not [p for p in (workdir / "rep").iterdir() if p.name.startswith(".")]


def test_report_refuses_a_graph_without_ann(tmp_path):
    graphio.save(tmp_path / "only.sfg", snn=random_fixed_graph([6, 5, 3], reset="zero"))
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 6), np.float32), y=np.array([0, 1]))
    r = run_cli("report", "only.sfg", "--data", "d.npz", "-o", "rep", cwd=tmp_path)
    assert r.returncode == 2 and "no source ANN" in r.stderr and not (tmp_path / "rep").exists()


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_membrane_replay_and_synops(reset):
    g = random_fixed_graph([8, 6, 4], seed=3, reset=reset)
    x = random_inputs(3, 8, seed=1)
    sim = simulate(g, "cpu", x, 16)
    net = lower(g)
    p = payloads_for(g, x, 16)
    for layer in ("lif1", "lif2"):
        v, pre, s = membrane_replay(net, layer, {k: a[1] for k, a in sim.result.spikes.items()}, p[1])
        assert (s == sim.result.spikes[layer][1]).all()
        assert (pre[s] > g.node(layer).vth << 6).all() and (pre[~s] == v[~s]).all()
    assert (v[-1] == sim.result.v_final[1]).all()
    ops = synaptic_ops(net, sim.result.spikes, p)
    w2 = g.node("fc2").weight
    expected = sum(int(sim.result.spikes["lif1"][0, :, j].sum()) * int(np.count_nonzero(w2[:, j]))
                   for j in range(w2.shape[1]))
    assert ops["lif2"][0] == expected


def test_membrane_replay_and_synops_of_a_cnn():
    """Convolutions: the replay convolves (it multiplied by the kernel as if it were a dense
    matrix: report crashed on every CNN) and synaptic ops count the unrolled synapses."""
    g = random_conv_graph((1, 8, 8), channels=(4, 6), strides=(1, 2), n_out=5, seed=2)
    x = random_inputs(3, 64, seed=4)
    sim = simulate(g, "cpu", x, 12)
    net = lower(g)
    p = payloads_for(g, x, 12)
    for layer in [l.name for l in net.layers]:
        _, _, s = membrane_replay(net, layer, {k: a[2] for k, a in sim.result.spikes.items()}, p[2])
        assert (s == sim.result.spikes[layer][2]).all()
    ops = synaptic_ops(net, sim.result.spikes, p)
    for proj in net.projections:
        pre, _, _ = proj.coo()
        src = p if proj.graded else sim.result.spikes[proj.src]
        events = (src != 0).sum(axis=1)  # (samples, src)
        assert ops[proj.dst][1] == int(events[1][pre].sum()), proj.name


def test_report_of_a_cnn(tmp_path):
    for args in (["train", "--arch", "cnn", "--hidden", "4", "6", "--epochs", "3", "-o", "cnn.onnx"],
                 ["convert", "cnn.onnx", "--calib", "calib.npz", "-o", "cnn.sfg", "--check-samples", "0"],
                 ["report", "cnn.sfg", "--data", "test.npz", "--limit", "10", "--timesteps", "8",
                  "-o", "rep", "--json"]):
        r = run_cli(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    # ANN MACs: out elements x C_in x kH x kW per convolution (counted 0 before), out x in per dense
    ann = graphio.load(tmp_path / "cnn.sfg", "ann")
    convs = ann.of_type(ir.Conv2d)
    assert len(convs) == 2
    expected = sum(int(np.prod(c.geometry.output_shape)) * c.weight.shape[1] * c.weight.shape[2]
                   * c.weight.shape[3] for c in convs)
    expected += sum(a.weight.size for a in ann.of_type(ir.Affine))
    assert summary["ann_macs_per_inference"] == expected
    for name in re.findall(r'src="([^"]+)"', (tmp_path / "rep" / "index.html").read_text()):
        assert_valid_png(tmp_path / "rep" / name)
