"""One fixed-point LIF neuron driven by a noisy sine current: membrane trace and rate vs. input.

Graph ``Input(1) -> FixedAffine(w = 1) -> FixedLIF`` run on the cpu backend, with the input as
graded payloads (the current quantized to 0..255) that vary step by step. The neuron (stated
here, spikeforge's fixed-point semantics, docs/semantics.md):

    du = 4095 (no current memory: u = a << 6), dv = 200 (v decays by 200/4096 = 4.9 % per step),
    vth = 1000 (v fires when v > 64000), bias 0, reset to zero (Loihi 2's native reset)

so a constant payload p drives v toward 64 p * 4096 / 200 = 1310.7 p: the rheobase is p > 48.8
(current 0.19). The cpu backend returns spikes and the final v only; the trace comes from stepping
``neuron.lif_step`` with the same parameters on the same synaptic input, and the script asserts
that those spikes equal the backend's spike for spike (every run: the trace and the rate curves),
so the trace shown is the backend's trace.

Panels: the input current; v (in units of the threshold) with spike markers and the threshold;
the firing rate against the input amplitude (a constant current c, plus Gaussian noise of std
0 / 0.1 / 0.2 per step), mean and std over trials.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

VTH, DU, DV, RESET = 1000, 4095, 200, "zero"
WEIGHT, WEIGHT_EXP = 1, 0


def lif_graph():
    from spikeforge import ir

    nodes = (ir.Input("input", (1,)),
             ir.FixedAffine("syn", np.array([[WEIGHT]]), WEIGHT_EXP),
             ir.FixedLIF("lif", 1, vth=VTH, du=DU, dv=DV, reset=RESET),
             ir.Output("output", (1,)))
    return ir.Graph(nodes, (("input", "syn"), ("syn", "lif"), ("lif", "output")))


def quantize_current(i: np.ndarray) -> np.ndarray:
    """Currents (batch, steps) -> payloads (batch, steps, 1) in 0..255."""
    return np.rint(255 * np.clip(i, 0.0, 1.0)).astype(np.int64)[:, :, None]


def backend_run(payloads: np.ndarray):
    from spikeforge.backends import get_backend

    be = get_backend("cpu")
    return be.run(be.compile(lif_graph()), payloads)


def step_lif(payloads: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Our own loop over neuron.lif_step, with the same parameters: the synaptic input on step t
    is floor(w p_{t-1} 2**e) (one step of delay, a = 0 on step 0). Returns v after the step,
    v before the reset (the same step taken with reset by subtraction, plus vth << 6) and
    spikes, each (batch, steps)."""
    from spikeforge.neuron import LIFParams, lif_init, lif_step, shift

    batch, steps, _ = payloads.shape
    params = LIFParams(VTH, DU, DV, np.zeros(1, np.int64), RESET)
    peek = params._replace(reset="subtract")
    state = lif_init(batch, 1)
    v = np.zeros((batch, steps), np.int64)
    pre = np.zeros((batch, steps), np.int64)
    s = np.zeros((batch, steps), bool)
    for t in range(steps):
        a = shift(WEIGHT * payloads[:, t - 1], WEIGHT_EXP) if t else np.zeros((batch, 1), np.int64)
        sub, _ = lif_step(peek, state, a)
        state, spk = lif_step(params, state, a)
        v[:, t], s[:, t] = state.v[:, 0], spk[:, 0]
        pre[:, t] = np.where(spk[:, 0], sub.v[:, 0] + (VTH << 6), state.v[:, 0])
    return v, pre, s


def checked_run(payloads: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run on the cpu backend and with our lif_step loop; assert equal spikes and final v.
    Returns v, v before reset, and the backend's spikes (batch, steps)."""
    result = backend_run(payloads)
    v, pre, s = step_lif(payloads)
    backend_spikes = result.spikes["lif"][:, :, 0]
    if not np.array_equal(s, backend_spikes):
        bad = np.argwhere(s != backend_spikes)[0]
        raise AssertionError(f"lif_step and the cpu backend disagree first at sample {bad[0]}, step {bad[1]}")
    assert np.array_equal(v[:, -1], result.v_final[:, 0]), "final v differs from the backend's"
    return v, pre, backend_spikes


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from spikeforge import plots

    p = _common.parser(__doc__.splitlines()[0])
    args = _common.parse(p, argv)
    quick = args.quick
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"params": {"vth": VTH, "du": DU, "dv": DV, "reset": RESET, "weight": WEIGHT},
                           "rheobase_payload": VTH * 64 * DV / 4096 / 64 / WEIGHT}

    # (1) the trace: offset sine + noise
    steps, period, noise = 400, 100, 0.1
    t = np.arange(steps)
    current = 0.5 + 0.35 * np.sin(2 * np.pi * t / period) + noise * rng.standard_normal(steps)
    payload = quantize_current(current[None, :])
    v, v_pre, s = checked_run(payload)
    checked = int(s.sum())
    res["trace"] = {"steps": steps, "spikes": int(s.sum()), "rate": float(s.mean())}

    # (2) rate vs amplitude, with and without noise; all runs checked against lif_step as well
    levels = np.linspace(0.0, 1.0, 11 if quick else 21)
    noises = (0.0, 0.1, 0.2)
    trials, T = (10, 200) if quick else (40, 500)
    curves, rates_out = {}, {}
    for sd in noises:
        cur = np.repeat(levels, trials)[:, None] + sd * rng.standard_normal((len(levels) * trials, T))
        _, _, sp = checked_run(quantize_current(np.clip(cur, 0.0, 1.0)))
        checked += int(sp.sum())
        rate = sp[:, 1:].mean(axis=1).reshape(len(levels), trials)  # step 0 has no input yet
        curves[f"noise std {sd}"] = (rate.mean(axis=1), rate.std(axis=1, ddof=1))
        rates_out[sd] = rate.mean(axis=1).tolist()
    res["spikes_equal"] = True  # checked_run raised otherwise
    res["spikes_checked"] = checked
    res["levels"] = levels.tolist()
    res["rates"] = rates_out

    fig, axes = plots.figure(1, 3, size=(11, 9), gridspec_kw={"height_ratios": [1, 2, 2.2]})
    ax = axes[0, 0]
    ax.plot(t, payload[0, :, 0] / 255, lw=0.8, color="tab:gray")
    ax.axhline(res["rheobase_payload"] / 255, ls=":", color="tab:red", lw=0.8, label="rheobase")
    ax.set_ylabel("input current")
    ax.set_title(f"(a) input: 0.5 + 0.35 sin(2πt/{period}) + N(0, {noise}²), quantized to 0..255 payloads",
                 fontsize=10)
    ax.legend(fontsize=7)
    plots.voltage_trace(v[0] / (VTH << 6), s[0], 1.0, axes[1, 0], ylabel="v / (vth << 6)",
                        v_before_reset=v_pre[0] / (VTH << 6),
                        title=f"(b) v by neuron.lif_step (spikes identical to the cpu backend's): "
                              f"du={DU}, dv={DV}, vth={VTH}, reset {RESET}")
    plots.rate_vs_input(levels, curves, axes[2, 0], title=f"(c) firing rate vs. input amplitude "
                        f"({trials} trials x {T} steps)", xlabel="constant input current c (payload / 255)")
    axes[2, 0].axvline(res["rheobase_payload"] / 255, ls=":", color="tab:red", lw=0.8)
    res["plot"] = str(plots.save(fig, args.out / "voltage_trace.png"))
    res["seconds"] = time.perf_counter() - t0

    print(f"LIF du={DU} dv={DV} vth={VTH} reset={RESET}, w={WEIGHT}: rheobase payload "
          f"{res['rheobase_payload']:.1f} (current {res['rheobase_payload'] / 255:.3f}); "
          f"trace: {res['trace']['spikes']} spikes in {steps} steps; lif_step spikes == cpu backend spikes: "
          f"{res['spikes_equal']} ({checked} spikes compared)\n")
    head = ["input c"] + [f"rate, noise {sd}" for sd in noises]
    print(plots.markdown_table(head, [[f"{c:.2f}"] + [rates_out[sd][i] for sd in noises]
                                      for i, c in enumerate(levels)]))
    print(f"\nplot {res['plot']} ({res['seconds']:.1f} s)")
    return res


if __name__ == "__main__":
    main()
