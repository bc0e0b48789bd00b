"""A backprop-trained MLP run as stochastic spiking neurons vs. integrate-and-fire, against T.

Trains ``models.train_mlp`` on the digits, converts it twice (``neuron="stochastic"`` and
``neuron="if"``, reset by subtraction, same calibration data) and runs both on the cpu backend
with the Bernoulli rate code for several T. Measured:

* accuracy vs T for stochastic, IF and the ANN (averaged over repetitions with different
  encoder and neuron seeds);
* per hidden layer, the mean |SNN firing rate - dense normalized activation| (the dense
  activations: ``converter.ann.forward`` on ``converter.passes.normalize(ann, calib)``), and
  the Pearson correlation (SNN Toolbox-style scatter at the largest T);
* the stochastic network's *floor*: a memoryless stochastic neuron fires with probability
  clip(W s_t + b) of its instantaneous binary input s_t, and E[clip(.)] != clip(E[.]) where the
  input current crosses 0 or 1. A float Monte Carlo of that expectation (same normalized
  weights, no quantization) gives the rate the stochastic SNN converges to; its distance from
  the ANN activation is the error that does not shrink with T.

The spiking runs use ``runner.payloads_for`` (inputs padded by the network's depth, so every
layer integrates T steps of its input).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def stochastic_expectation(norm_graph, x: np.ndarray, draws: int, seed: int) -> dict[str, np.ndarray]:
    """Monte Carlo of the stochastic network's mean rates (float, normalized weights):
    x_t ~ Bernoulli(x), s_l ~ Bernoulli(clip(W_l s_{l-1} + b_l, 0, 1)); mean over draws."""
    from spikeforge import ir

    rng = np.random.default_rng(seed)
    affines = [norm_graph.node(n) for n in norm_graph.topological_order()
               if isinstance(norm_graph.node(n), ir.Affine)]
    relus = _common.hidden_layers(norm_graph)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    sums = {h: np.zeros((len(x), norm_graph.node(h).size)) for h in relus}
    for _ in range(draws):
        s = (rng.random(x.shape) < x).astype(np.float64)
        for aff, h in zip(affines, relus):
            p = np.clip(s @ aff.weight.T + aff.bias, 0.0, 1.0)
            sums[h] += p  # E[s_l | s_{l-1}] = p: accumulate the conditional mean (less variance)
            s = (rng.random(p.shape) < p).astype(np.float64)
    return {h: v / draws for h, v in sums.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from spikeforge import models, plots
    from spikeforge.converter.ann import forward, predict
    from spikeforge.converter.passes import convert, normalize
    from spikeforge.analysis import window_rates
    from spikeforge.network import lower
    from spikeforge.runner import simulate

    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden layer sizes")
    args = _common.parse(p, argv)
    quick = args.quick
    Ts = (8, 32, 128) if quick else (8, 16, 32, 64, 128, 256)
    reps = 1 if quick else 3
    hidden = tuple(args.hidden or ((64, 32) if quick else (128, 64)))
    t0 = time.perf_counter()

    sp = _common.digits(args.seed)
    model, info = models.train_mlp(sp.train, hidden=hidden, epochs=30 if quick else 60, seed=args.seed)
    ann = _common.mlp_graph(model, sp.train.shape)
    test_x, test_y = sp.test.x, sp.test.y
    ann_acc = _common.accuracy(predict(ann, test_x), test_y)
    norm = normalize(ann, sp.calib.x)
    layers = _common.hidden_layers(ann)
    dense = {h: forward(norm, test_x)[h] for h in layers}
    expect = stochastic_expectation(norm, test_x, 64 if quick else 256, args.seed)
    floor = {h: float(np.abs(expect[h] - dense[h]).mean()) for h in layers}

    acc: dict[str, dict[int, float]] = {"stochastic": {}, "if": {}}
    err: dict[str, dict[int, dict[str, float]]] = {"stochastic": {}, "if": {}}
    err_vs_expect: dict[int, dict[str, float]] = {}
    corr: dict[str, dict[str, float]] = {"stochastic": {}, "if": {}}
    last: dict[str, dict[str, np.ndarray]] = {}
    for T in Ts:
        sums = {k: 0.0 for k in acc}
        e_sum = {k: {h: 0.0 for h in layers} for k in err}
        ee_sum = {h: 0.0 for h in layers}
        for r in range(reps):
            seed = args.seed * 1000 + r
            for kind in ("stochastic", "if"):
                snn = convert(ann, sp.calib.x, reset="subtract", neuron=kind, seed=seed)
                delays = lower(snn).delays
                res = simulate(snn, "cpu", test_x, T, encoding="rate", seed=seed).result
                sums[kind] += _common.accuracy(res.predictions, test_y)
                rates = window_rates(res, {h: delays[h] for h in layers}, T)
                for h in layers:
                    e_sum[kind][h] += float(np.abs(rates[h] - dense[h]).mean())
                    if kind == "stochastic":
                        ee_sum[h] += float(np.abs(rates[h] - expect[h]).mean())
                if T == Ts[-1] and r == 0:
                    last[kind] = rates
        for k in acc:
            acc[k][T] = sums[k] / reps
        for k in err:
            err[k][T] = {h: e_sum[k][h] / reps for h in layers}
        err_vs_expect[T] = {h: ee_sum[h] / reps for h in layers}

    fig, axes = plots.figure(2, 1, size=(10, 4))
    plots.accuracy_vs_T(Ts, {"stochastic (rate code)": [acc["stochastic"][T] for T in Ts],
                             "IF (rate code)": [acc["if"][T] for T in Ts]},
                        axes[0, 0], references={"ANN": ann_acc}, title=f"digits test ({len(test_y)}), {reps} seed(s)")
    ax = axes[0, 1]
    for kind, style in (("stochastic", "o-"), ("if", "s--")):
        for i, h in enumerate(layers, 1):
            ax.plot(Ts, [err[kind][T][h] for T in Ts], style, label=f"{kind} layer {i}")
    for i, h in enumerate(layers, 1):
        ax.axhline(floor[h], color="grey", ls=":", lw=1)
        ax.text(Ts[0], floor[h], f" stochastic floor L{i}", fontsize=7, va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("time steps T")
    ax.set_ylabel("mean |SNN rate - ANN activation|")
    ax.set_title("per-layer rate error")
    ax.legend(fontsize=7)
    acc_png = plots.save(fig, args.out / "stochastic_network_accuracy.png")

    fig, axes = plots.figure(len(layers), 2, size=(4 * len(layers), 7.5))
    for row, kind in enumerate(("stochastic", "if")):
        for i, h in enumerate(layers):
            _, r_ = plots.rate_scatter(dense[h], last[kind][h], axes[row, i],
                                       title=f"{kind}, layer {i + 1}, T={Ts[-1]}")
            corr[kind][h] = r_
    scatter_png = plots.save(fig, args.out / "stochastic_network_rates.png")

    names = {h: f"L{i}" for i, h in enumerate(layers, 1)}
    print(f"MLP {sp.train.features}-{'-'.join(map(str, hidden))}-10, ANN test accuracy {ann_acc:.4f} "
          f"({len(test_y)} samples); rate code; mean over {reps} seed(s)\n")
    head = ["T", "ANN", "stochastic", "IF"]
    print(plots.markdown_table(head, [[T, ann_acc, acc["stochastic"][T], acc["if"][T]] for T in Ts]))
    print()
    head = ["T"] + [f"{k} {names[h]} err" for k in ("stochastic", "if") for h in layers] + \
        [f"stoch {names[h]} vs MC expectation" for h in layers]
    rows = [[T] + [err[k][T][h] for k in ("stochastic", "if") for h in layers] +
            [err_vs_expect[T][h] for h in layers] for T in Ts]
    rows.append(["floor |E_stoch - ANN|"] + [floor[h] for h in layers] + ["-"] * len(layers) + ["0"] * len(layers))
    print(plots.markdown_table(head, rows))
    print("\nPearson r (ANN activation vs SNN rate, T=%d): " % Ts[-1] +
          ", ".join(f"{k} {names[h]} {corr[k][h]:.3f}" for k in corr for h in layers))
    seconds = time.perf_counter() - t0
    print(f"plots: {acc_png}, {scatter_png} ({seconds:.1f} s)")
    return {"timesteps": list(Ts), "ann_accuracy": ann_acc, "accuracy": acc, "rate_error": err,
            "rate_error_vs_expectation": err_vs_expect, "stochastic_floor": floor, "correlation": corr,
            "layers": layers, "hidden": hidden, "reps": reps, "plots": [str(acc_png), str(scatter_png)],
            "seconds": seconds}


if __name__ == "__main__":
    main()
