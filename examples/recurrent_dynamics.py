"""How activity settles in the recurrent spiking network (clean vs. occluded input), beside its rate model.

Trains ``models.train_recurrent`` (hidden (96, 64), lateral recurrence and top-down feedback,
12 iterations, input noise 0.1), converts it (reset by subtraction) and runs the test split on the
cpu backend for T steps (constant current). Measured, for clean inputs, 30 % random-pixel
occlusion and a 20 % contiguous block:

* per layer, the firing rate over time (mean over test samples and neurons, in windows of
  ``--window`` steps), and the step from which every window stays within 10 % of the late rate
  (the mean over the last quarter of the input period): the settling time;
* the rate model's per-layer activity over iterations (``converter.ann.trajectory`` of the
  *normalized* graph, so that both are in spikes per step), run for T iterations (trained for 12);
* accuracy against readout time: the spiking readout's cumulative spike counts up to step t vs.
  the rate model's mean output over iterations 1..k;
* a raster of one sample (all layers).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from robustness import occlude_block, occlude_random  # noqa: E402


def windowed(spikes: np.ndarray, window: int) -> np.ndarray:
    """Mean rate (over samples, neurons and the steps of each window) of (batch, steps, n)."""
    nwin = spikes.shape[1] // window
    s = spikes[:, :nwin * window].reshape(spikes.shape[0], nwin, window, spikes.shape[2])
    return s.mean(axis=(0, 2, 3))


def settling_step(rate: np.ndarray, window: int, end: int, tol: float = 0.1) -> int:
    """First step from which every window (up to the end of the input, ``end``) stays within
    ``tol`` (relative) of the late rate, the mean over the last quarter of [0, end)."""
    last = max(1, end // window)
    late = rate[max(0, (3 * last) // 4):last].mean()
    ok = np.abs(rate[:last] - late) <= tol * max(late, 1e-9)
    bad = np.flatnonzero(~ok)
    return int((bad[-1] + 1) * window) if bad.size else 0


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from spikeforge import models, plots
    from spikeforge.converter.ann import trajectory
    from spikeforge.converter.passes import convert, normalize
    from spikeforge.backends import get_backend
    from spikeforge.runner import payloads_for

    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--timesteps", type=int, default=None, help="spiking time steps T (default 64, quick 32)")
    p.add_argument("--window", type=int, default=4, help="steps per rate window")
    p.add_argument("--tail", type=int, default=None,
                   help="extra steps with the input off, to watch activity decay (default 16, quick 8)")
    args = _common.parse(p, argv)
    quick, W = args.quick, args.window
    T = args.timesteps or (32 if quick else 64)
    tail = args.tail if args.tail is not None else (8 if quick else 16)
    t0 = time.perf_counter()

    sp = _common.digits(args.seed)
    rec, info = models.train_recurrent(sp.train, hidden=(96, 64), iterations=12, feedback=True,
                                       epochs=10 if quick else 40, input_noise=0.1, seed=args.seed)
    graph = models.to_graph(rec)
    snn = convert(graph, sp.calib.x, reset="subtract")
    norm = normalize(graph, sp.calib.x)
    x, y = sp.test.x.astype(np.float64), sp.test.y
    rng = np.random.default_rng(args.seed)
    inputs = {"clean": x, "occluded 30% random": occlude_random(x, 0.3, rng),
              "occluded 20% block": occlude_block(x, tuple(sp.test.shape), 0.2, rng)}
    layers = ["h1", "h2", "readout"]
    model_layers = {"h1": "h1", "h2": "h2", "readout": "out"}

    res: dict[str, Any] = {"timesteps": T, "window": W, "tail": tail, "conditions": {}}
    snn_rates, ann_acts, raster = {}, {}, None
    backend = get_backend("cpu")
    program = backend.compile(snn)
    for cond, xc in inputs.items():
        # the runner's payloads (T input steps + depth) for the accuracy, as `simulate` scores it;
        # the same plus `tail` steps of zero input for the dynamics (causal: same spikes before)
        payloads = payloads_for(snn, xc, T)
        scored = backend.run(program, payloads)
        padded = np.concatenate([payloads, np.zeros((len(xc), tail, payloads.shape[2]), payloads.dtype)], 1)
        result = backend.run(program, padded)
        spikes = result.spikes
        steps = payloads.shape[1]
        for l in layers:
            assert np.array_equal(spikes[l][:, :steps], scored.spikes[l]), l
        snn_rates[cond] = {l: windowed(spikes[l], W) for l in layers}
        traj = trajectory(norm, xc, iterations=T)  # (T, batch, n): h_l[k] for k = 1..T
        ann_acts[cond] = {l: traj[model_layers[l]].mean(axis=(1, 2)) for l in ("h1", "h2")}
        counts = np.cumsum(scored.spikes["readout"], axis=1)  # (batch, steps, classes)
        snn_acc_t = [(counts[:, t].argmax(1) == y).mean() for t in range(steps)]
        ann_acc_k = [(traj["out"][:k].mean(0).argmax(1) == y).mean() for k in range(1, T + 1)]
        c = {"accuracy": _common.accuracy(scored.predictions, y),
             "dense_accuracy": float(ann_acc_k[11]) if T >= 12 else float("nan"),
             "dense_accuracy_T": float(ann_acc_k[-1]),
             "snn_accuracy_t": [float(a) for a in snn_acc_t], "dense_accuracy_k": [float(a) for a in ann_acc_k],
             "rate": {}, "settle_step": {}, "dense_mean": {}, "dense_settle_iter": {}, "tail_rate": {}}
        for i, l in enumerate(layers, 1):
            end = T + i  # layer i hears the input on steps i .. T+i-1
            r = spikes[l][:, i:end].mean()
            c["rate"][l] = float(r)
            c["settle_step"][l] = settling_step(snn_rates[cond][l], W, end)
            if tail >= W:  # the last window, `tail` steps after the input went off
                c["tail_rate"][l] = float(spikes[l][:, -W:].mean())
        if tail:  # does self-sustained activity still name the class? readout counts in the tail
            c["tail_accuracy"] = _common.accuracy(spikes["readout"][:, steps:].sum(1).argmax(1), y)
        for l in ("h1", "h2"):
            a = ann_acts[cond][l]
            c["dense_mean"][l] = float(a.mean())
            c["dense_settle_iter"][l] = settling_step(a, 1, len(a))
        res["conditions"][cond] = c
        if cond == "clean":
            raster = {l: spikes[l][0] for l in layers}
            res["raster_label"] = int(y[0])

    colors = {"h1": "tab:blue", "h2": "tab:green", "readout": "tab:red"}
    styles = {"clean": "-", "occluded 30% random": "--", "occluded 20% block": ":"}
    fig, axes = plots.figure(2, 2, size=(12, 8))
    ax = axes[0, 0]
    for cond in inputs:
        for l in layers:
            r = snn_rates[cond][l]
            ax.plot(np.arange(len(r)) * W + W / 2, r, styles[cond], color=colors[l], label=f"{l}, {cond}")
    ax.axvline(T, color="grey", lw=0.8)
    ax.set_xlabel("time step (window centres)")
    ax.set_ylabel("firing rate (spikes / step / neuron)")
    ax.text(T, ax.get_ylim()[1], " input off", fontsize=7, va="top")
    ax.set_title(f"(a) spiking network, windows of {W} steps", fontsize=10)
    ax.legend(fontsize=6, loc="center right")
    ax = axes[0, 1]
    for cond in inputs:
        for l in ("h1", "h2"):
            a = ann_acts[cond][l]
            ax.plot(np.arange(1, len(a) + 1), a, styles[cond], color=colors[l], label=f"{l}, {cond}")
    ax.axvline(12, color="grey", lw=0.8)
    ax.text(12, ax.get_ylim()[1], " trained K=12", fontsize=7, va="top")
    ax.set_xlabel("iteration k")
    ax.set_ylabel("mean activity (normalized, = rate)")
    ax.set_title("(b) rate model: ann.trajectory of the normalized graph", fontsize=10)
    ax.legend(fontsize=6, loc="center right")
    ax = axes[1, 0]
    off = 0
    for l in layers:
        plots.raster(raster[l], ax, offset=off, color=colors[l], label=l, marker_size=6)
        off += raster[l].shape[1]
    ax.axvline(T, color="grey", lw=0.8)
    ax.set_title(f"(c) raster, test sample 0 (label {res['raster_label']}), clean", fontsize=10)
    ax.legend(fontsize=7, loc="upper right", markerscale=2)
    ax = axes[1, 1]
    for cond in inputs:
        c = res["conditions"][cond]
        ax.plot(np.arange(len(c["snn_accuracy_t"])), c["snn_accuracy_t"], styles[cond], color="tab:purple",
                label=f"spiking, {cond}")
        ax.plot(np.arange(1, T + 1) + 2, c["dense_accuracy_k"], styles[cond], color="k", alpha=0.6,
                label=f"rate model, {cond}")
    ax.set_xlabel("readout time: step t (spiking) / iteration k + 2 (rate model)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title("(d) accuracy vs. readout time", fontsize=10)
    ax.legend(fontsize=6)
    fig.suptitle("recurrent (lateral + feedback) spiking network, digits, cpu backend", fontsize=10)
    res["plot"] = str(plots.save(fig, args.out / "recurrent_dynamics.png"))
    res["seconds"] = time.perf_counter() - t0

    head = ["input", "SNN acc", "dense acc (K=12)", f"dense acc (K={T})"] + \
        [f"{l} rate" for l in layers] + [f"{l} settle step" for l in layers] + \
        ["dense h1", "dense h2", "dense h1 settle k", "dense h2 settle k"] + \
        ([f"{l} rate {tail} steps after input off" for l in layers] if tail >= W else []) + \
        (["readout acc in the tail"] if tail else [])
    rows = []
    for cond, c in res["conditions"].items():
        rows.append([cond, c["accuracy"], c["dense_accuracy"], c["dense_accuracy_T"]] +
                    [c["rate"][l] for l in layers] + [c["settle_step"][l] for l in layers] +
                    [c["dense_mean"]["h1"], c["dense_mean"]["h2"],
                     c["dense_settle_iter"]["h1"], c["dense_settle_iter"]["h2"]] +
                    [c["tail_rate"][l] for l in layers if l in c["tail_rate"]] +
                    ([c["tail_accuracy"]] if tail else []))
    print(f"recurrent net (96, 64), test {len(y)} samples, T={T}; rates over each layer's T input steps; "
          f"settle = windows stay within 10% of the late rate\n")
    print(plots.markdown_table(head, rows))
    print(f"\nplot {res['plot']} ({res['seconds']:.1f} s)")
    return res


if __name__ == "__main__":
    main()
