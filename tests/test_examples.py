"""The example experiments in their --quick setting: they run, write non-empty PNGs, and the
facts they measure hold (convergence of the stochastic neuron's time average, the stochastic
network near the ANN, the robustness table complete, the voltage trace equal to the backend's)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str) -> ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def run(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / name
    res = load(name).main(["--quick", "--out", str(out), *extra])
    pngs = sorted(out.glob("*.png"))
    assert pngs, f"{name}: no PNG written to {out}"
    for png in pngs:
        assert png.stat().st_size > 1000, f"{png} is (nearly) empty"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"
    return res


def test_relu_convergence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = run("relu_convergence", tmp_path)
    Ts = res["timesteps"]
    for T in Ts:
        # the trial mean over N trials is within 4 sigma / sqrt(T N) of x, sigma = 0.5 (worst case),
        # and within 4 sigma(x) / sqrt(T N) at every x; the same for the ReLU variant
        assert res["max_dev"][T] <= res["bound"][T], (T, res["max_dev"][T], res["bound"][T])
        assert res["identity"][T]["pointwise_ok"] and res["relu"][T]["pointwise_ok"], T
        assert res["relu_max_dev"][T] <= res["relu"][T]["bound"], T
        # single trials beyond 4 sigma(x) / sqrt(T) are as rare as the tail allows (~6e-5 each;
        # the max over thousands of trials may cross it, as it does once at T = 1024 in the full run)
        assert res["identity"][T]["frac_single_beyond_4sigma"] < 1e-3, T
        # the measured spread is the binomial one
        assert 0.6 < res["identity"][T]["sd_ratio_min"] and res["identity"][T]["sd_ratio_max"] < 1.4, T
    # the deviation shrinks with T: the trial mean's from first to last T, the single trial's at every step
    assert res["max_dev"][Ts[-1]] < res["max_dev"][Ts[0]]
    rms = [res["identity"][T]["rms_single"] for T in Ts]
    assert all(b < a for a, b in zip(rms, rms[1:])), rms
    assert rms[-1] * np.sqrt(Ts[-1]) == pytest.approx(rms[0] * np.sqrt(Ts[0]), rel=0.2)  # ~ 1 / sqrt(T)
    assert "| T |" in capsys.readouterr().out


def test_stochastic_network(tmp_path: Path) -> None:
    res = run("stochastic_network", tmp_path)
    Ts = res["timesteps"]
    ann = res["ann_accuracy"]
    assert ann > 0.9
    for kind in ("stochastic", "if"):
        assert res["accuracy"][kind][Ts[-1]] >= ann - 0.03, (kind, res["accuracy"][kind], ann)
    for h in res["layers"]:
        # IF rates converge to the ANN's; the stochastic ones to their own expectation
        assert res["rate_error"]["if"][Ts[-1]][h] < res["rate_error"]["if"][Ts[0]][h]
        assert res["rate_error"]["if"][Ts[-1]][h] < 0.03
        assert res["rate_error_vs_expectation"][Ts[-1]][h] < res["rate_error_vs_expectation"][Ts[0]][h]
        assert res["correlation"]["if"][h] > 0.95 and res["correlation"]["stochastic"][h] > 0.9


def test_robustness(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = load("robustness")
    res = run("robustness", tmp_path)
    rows = res["rows"]
    want = {("noise", s) for s in mod.NOISE} | {("occlusion", f) for f in mod.OCCLUSION} | \
        {("block", f) for f in mod.OCCLUSION}
    assert {(r["corruption"], r["level"]) for r in rows} == want
    cols = ("feedforward_dense", "feedforward_spiking", "recurrent_dense", "recurrent_spiking")
    for r in rows:
        for c in cols:
            assert 0.0 <= r[c] <= 1.0, (r, c)
    for c in cols:
        assert res["clean"][c] > 0.9, (c, res["clean"][c])
    # corruption hurts: the strongest level is worse than clean for every model
    for kind in ("noise", "occlusion", "block"):
        worst = [r for r in rows if r["corruption"] == kind][-1]
        assert all(worst[c] < res["clean"][c] for c in cols), kind
    out = capsys.readouterr().out
    assert out.count("\n| ") >= len(want) + 1 and "Rec spiking" in out and "FF spiking" in out


def test_recurrent_dynamics(tmp_path: Path) -> None:
    res = run("recurrent_dynamics", tmp_path)
    clean = res["conditions"]["clean"]
    assert clean["accuracy"] > 0.9
    for cond in res["conditions"].values():
        for layer in ("h1", "h2"):
            # the spiking rates follow the normalized rate model within a few hundredths
            assert abs(cond["rate"][layer] - cond["dense_mean"][layer]) < 0.05
            assert 0 <= cond["settle_step"][layer] < res["timesteps"]


def test_voltage_trace(tmp_path: Path) -> None:
    res = run("voltage_trace", tmp_path)
    assert res["spikes_equal"] and res["spikes_checked"] > 100
    assert res["trace"]["spikes"] > 0
    rates = np.array(res["rates"][0.0])
    assert rates[0] == 0 and rates[-1] > 0.1
    assert np.all(np.diff(rates) >= 0)  # without noise the rate does not fall with the input
    # below the rheobase: silent without noise, firing with noise
    below = np.array(res["levels"]) < res["rheobase_payload"] / 255 - 0.02
    assert np.all(rates[below] == 0) and np.array(res["rates"][0.2])[below].max() > 0


def test_checked_run_catches_a_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The voltage trace's equality check is real: a different threshold in our loop fails it."""
    mod = load("voltage_trace")
    payloads = np.full((1, 200, 1), 200, np.int64)
    mod.checked_run(payloads)
    monkeypatch.setattr(mod, "VTH", mod.VTH + 300)
    graph_vth = 1000

    def graph_with_old_threshold():
        from spikeforge import ir

        nodes = (ir.Input("input", (1,)), ir.FixedAffine("syn", np.array([[1]]), 0),
                 ir.FixedLIF("lif", 1, vth=graph_vth, du=mod.DU, dv=mod.DV, reset=mod.RESET),
                 ir.Output("output", (1,)))
        return ir.Graph(nodes, (("input", "syn"), ("syn", "lif"), ("lif", "output")))

    monkeypatch.setattr(mod, "lif_graph", graph_with_old_threshold)
    with pytest.raises(AssertionError, match="disagree"):
        mod.checked_run(payloads)
