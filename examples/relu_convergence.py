"""A ReLU is the time average of a stochastic spiking neuron: measured on the cpu backend.

Tiny graph, the real code path (spikeforge's FixedStochastic semantics and counter-based draws):

    Input(1) -> FixedAffine(w) -> FixedStochastic -> FixedAffine -> FixedLIF readout -> Output

(a) **identity** (the brief's setting): a Bernoulli(x) input spike train (``rate`` encoding,
    payload 255 per spike) through a weight equal to the threshold (w = 1 in rate units, bias 0),
    so the neuron fires with probability clip(w s + b, 0, 1) = s on each step: its time average
    over T steps converges to x, with per-trial standard deviation sigma / sqrt(T),
    sigma = sqrt(x (1 - x)).
(b) **relu**: a constant graded input (``current`` encoding, p = round(255 x)) through w = 2 and
    bias -0.5: the neuron fires with probability clip(2 x - 0.5, 0, 1) on each step, drawn by the
    neuron itself; sigma = sqrt(p (1 - p)) of that probability.

Trials are samples of one batch (independent encoder draws and independent neuron draws, which
are a function of (seed, sample, step, neuron)). For every T we report the largest deviation
of the trial-mean rate from its expected value over the x grid, and compare it with the 4-sigma
bound of that mean, 4 sigma / sqrt(T N) (N trials, sigma = 0.5 the worst case), and each single
trial with 4 sigma / sqrt(T).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

VTH = 255  # stochastic threshold: (vth << 6) is the input that fires with certainty


def tiny_graph(weight: int, bias_mant: int, bias_exp: int, seed: int):
    """Input(1) -> FixedAffine(weight) -> FixedStochastic(vth=255) -> FixedAffine -> readout."""
    from spikeforge import ir

    nodes = (
        ir.Input("input", (1,)),
        ir.FixedAffine("syn_in", np.array([[weight]]), 0),
        ir.FixedStochastic("stoch", 1, vth=VTH, bias_mant=np.array([bias_mant]), bias_exp=bias_exp, seed=seed),
        ir.FixedAffine("syn_out", np.array([[64]]), 0),
        ir.FixedLIF("readout", 1, vth=64, reset="subtract"),
        ir.Output("output", (1,)),
    )
    edges = (("input", "syn_in"), ("syn_in", "stoch"), ("stoch", "syn_out"),
             ("syn_out", "readout"), ("readout", "output"))
    return ir.Graph(nodes, edges)


def measure(graph, xs: np.ndarray, trials: int, T: int, encoding: str, seed: int) -> np.ndarray:
    """Firing rate of the stochastic neuron over its T input steps, (len(xs), trials)."""
    from spikeforge.runner import simulate

    batch = np.repeat(xs, trials)[:, None]
    sim = simulate(graph, "cpu", batch, T, encoding=encoding, seed=seed)
    s = sim.result.spikes["stoch"][:, 1:T + 1, 0]  # input steps 0..T-1 arrive on steps 1..T
    return s.mean(axis=1).reshape(len(xs), trials)


def summarize(rates: np.ndarray, expected: np.ndarray, T: int) -> dict[str, float]:
    n = rates.shape[1]
    mean = rates.mean(axis=1)
    sigma = np.sqrt(expected * (1 - expected))
    dev = np.abs(mean - expected)
    single = np.abs(rates - expected[:, None])
    interior = sigma > 0
    sd_ratio = rates.std(axis=1, ddof=1)[interior] / (sigma[interior] / np.sqrt(T))
    return {
        "max_dev": float(dev.max()),
        "bound": 4 * 0.5 / np.sqrt(T * n),
        "pointwise_ok": bool(np.all(dev <= 4 * sigma / np.sqrt(T * n) + 1e-12)),
        "rms_single": float(np.sqrt(np.mean(single ** 2))),
        "max_single": float(single.max()),
        "bound_single": 4 * 0.5 / np.sqrt(T),
        "frac_single_beyond_4sigma": float(np.mean(single > 4 * sigma[:, None] / np.sqrt(T) + 1e-12)),
        "sd_ratio_min": float(sd_ratio.min()),
        "sd_ratio_max": float(sd_ratio.max()),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from spikeforge import plots

    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=None, help="trials (samples) per input value")
    args = _common.parse(p, argv)
    Ts = (16, 64, 256) if args.quick else (16, 64, 256, 1024)
    trials = args.trials or (60 if args.quick else 1000)
    xs = np.linspace(0.0, 1.0, 21)
    t0 = time.perf_counter()

    ident = tiny_graph(1, 0, 0, seed=args.seed + 1)  # a = 255 per input spike = vth: P = s
    relu = tiny_graph(2, -4080, 1, seed=args.seed + 2)  # z = 128 p - 8160: P = clip(2 x - 0.5, 0, 1)
    p_int = np.rint(255 * xs)
    relu_expected = np.clip((128 * p_int - 8160) / (VTH << 6), 0.0, 1.0)  # exact, integer semantics

    res: dict[str, Any] = {"timesteps": list(Ts), "trials": trials, "x": xs.tolist(),
                           "identity": {}, "relu": {}}
    curves_id, curves_relu = {}, {}
    for T in Ts:
        r_id = measure(ident, xs, trials, T, "rate", args.seed)
        r_relu = measure(relu, xs, trials, T, "current", args.seed)
        res["identity"][T] = summarize(r_id, xs, T)
        res["relu"][T] = summarize(r_relu, relu_expected, T)
        curves_id[f"T={T}"] = (r_id.mean(axis=1), r_id.std(axis=1, ddof=1))
        curves_relu[f"T={T}"] = (r_relu.mean(axis=1), r_relu.std(axis=1, ddof=1))
    # the brief's headline numbers: {T: max |mean rate - x|} and the 4-sigma bound
    res["max_dev"] = {T: res["identity"][T]["max_dev"] for T in Ts}
    res["bound"] = {T: res["identity"][T]["bound"] for T in Ts}
    res["relu_max_dev"] = {T: res["relu"][T]["max_dev"] for T in Ts}

    fig, axes = plots.figure(3, 1, size=(15, 4.2))
    plots.rate_vs_input(xs, curves_id, axes[0, 0], expected=xs, expected_label="identity (x)",
                        title="(a) Bernoulli(x) input, w = threshold", xlabel="input rate x")
    plots.rate_vs_input(xs, curves_relu, axes[0, 1], expected=np.clip(2 * xs - 0.5, 0, 1),
                        expected_label="clip(2x - 0.5, 0, 1)",
                        title="(b) constant input, w = 2, b = -0.5", xlabel="input x")
    ax = axes[0, 2]
    Tarr = np.array(Ts, float)
    ax.loglog(Tarr, [res["max_dev"][T] for T in Ts], "o-", label="(a) max |mean - x|")
    ax.loglog(Tarr, [res["relu_max_dev"][T] for T in Ts], "s-", label="(b) max |mean - ReLU|")
    ax.loglog(Tarr, [res["bound"][T] for T in Ts], "k--", label=r"$4\sigma/\sqrt{TN}$, $\sigma$=0.5")
    ax.loglog(Tarr, [res["identity"][T]["rms_single"] for T in Ts], "^-", label="(a) rms single trial")
    ax.loglog(Tarr, 0.5 / np.sqrt(Tarr), "k:", label=r"$\sigma/\sqrt{T}$, $\sigma$=0.5")
    ax.set_xlabel("time steps T")
    ax.set_ylabel("deviation of the rate")
    ax.set_title(f"(c) convergence, N = {trials} trials per x")
    ax.legend(fontsize=7)
    fig.suptitle("spikeforge FixedStochastic neuron on the cpu backend: time average vs. clipped ReLU "
                 "(error bars: single-trial std)", fontsize=10)
    res["plot"] = str(plots.save(fig, args.out / "relu_convergence.png"))
    res["seconds"] = time.perf_counter() - t0

    head = ["T", "(a) max|mean-x|", "4σ/√(TN)", "all x within 4σ(x)/√(TN)", "(a) rms single", "σ/√T (σ=.5)",
            "(a) max single", "4σ/√T (σ=.5)", "single > 4σ(x)/√T", "std/theory", "(b) max|mean-ReLU|"]
    rows = []
    for T in Ts:
        a, b = res["identity"][T], res["relu"][T]
        rows.append([T, f"{a['max_dev']:.5f}", f"{a['bound']:.5f}", a["pointwise_ok"] and b["pointwise_ok"],
                     f"{a['rms_single']:.4f}", f"{0.5 / np.sqrt(T):.4f}", f"{a['max_single']:.4f}",
                     f"{a['bound_single']:.4f}", f"{a['frac_single_beyond_4sigma']:.1e}",
                     f"{a['sd_ratio_min']:.2f}..{a['sd_ratio_max']:.2f}", f"{b['max_dev']:.5f}"])
    print(plots.markdown_table(head, rows))
    print(f"\n{len(xs)} input values x {trials} trials per T; plot {res['plot']} ({res['seconds']:.1f} s)")
    return res


if __name__ == "__main__":
    main()
