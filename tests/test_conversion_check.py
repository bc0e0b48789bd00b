"""convert checks what it made: the SNN beside the ANN on the calibration data (top-1
agreement, per-layer rate correlation with the readout, warnings naming damaged layers)."""

from __future__ import annotations

import json

import numpy as np

from spikeforge import graphio, ir
from spikeforge.analysis import check_conversion
from spikeforge.cli import main
from spikeforge.converter.passes import convert
from spikeforge.data import Dataset, save_npz


def _ann(rng: np.random.Generator, readout_weight: np.ndarray | None = None) -> ir.Graph:
    n_in, n_h, n_out = 16, 40, 16
    w2 = rng.normal(size=(n_out, n_h)) * 0.3 if readout_weight is None else readout_weight
    return ir.Graph(
        (ir.Input("x", (n_in,)), ir.Affine("fc1", rng.normal(size=(n_h, n_in)) * 0.5, rng.normal(size=n_h) * 0.05),
         ir.ReLU("h", n_h), ir.Affine("fc2", w2, np.zeros(n_out)), ir.Output("y", (n_out,))),
        (("x", "fc1"), ("fc1", "h"), ("h", "fc2"), ("fc2", "y")))


def test_check_reports_agreement_and_every_layer_with_the_readout():
    rng = np.random.default_rng(0)
    ann, x = _ann(rng), rng.random((300, 16))
    snn = convert(ann, x)
    check = check_conversion(snn, ann, x, timesteps=64, samples=200)
    assert check.samples == 200 and check.timesteps == 64
    assert [r.layer for r in check.layers] == ["h", "readout"]
    assert check.agreement >= 0.9 and not check.warnings, check
    for r in check.layers:
        assert r.correlation > 0.9 and 0 < r.snn_rate < 1 and 0 <= r.zeroed_fraction < 0.5


def test_convert_warns_naming_a_layer_whose_weights_were_zeroed(tmp_path, capsys):
    """One large readout weight sets the shared exponent; the other 639 round to 0 (the case of
    562 of 640 zeroed readout weights that went unremarked)."""
    rng = np.random.default_rng(1)
    w2 = rng.normal(size=(16, 40)) * 1e-3
    w2[0, 0] = 40.0
    ann = _ann(rng, w2)
    graphio.save(tmp_path / "ann.sfg", ann=ann)
    x = rng.random((200, 16)).astype(np.float32)
    save_npz(tmp_path / "calib.npz", Dataset(x, rng.integers(0, 16, 200), (16,), "calib"))
    args = ["convert", str(tmp_path / "ann.sfg"), "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "net.sfg")]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "top-1 agreement with the ANN" in text
    assert "warning: layer 'readout':" in text and "non-zero weights quantized to 0" in text, text
    assert main([*args, "--json", "--force"]) == 0  # the same output again: asked for
    doc = json.loads(capsys.readouterr().out)
    check = doc["check"]
    assert check["samples"] == 200 and check["timesteps"] == 32
    readout = next(r for r in check["layers"] if r["layer"] == "readout")
    assert readout["zeroed_fraction"] > 0.9
    assert any("layer 'readout'" in w and "quantized to 0" in w for w in check["warnings"])
    # agreement is measured, and the damaged readout no longer agrees with the ANN
    assert check["agreement"] < 0.9 and any("top-1 agreement" in w for w in check["warnings"])
