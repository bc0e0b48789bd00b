"""Recurrent LIF layer on a sequence task: digits read row by row, trained through its rate model.

Each 8x8 digit is a sequence of 8 items (its rows of 8 pixels), each presented for S steps as
graded payloads; a sample runs P = 8 S + 2 steps. Trains, on the same split (hidden size H for
all):

* the recurrent LIF network's rate (expectation) model, ``models.sequence.RecurrentLIFRate``
  (expected residual c = 1/2, see its module doc), and the same with c = 0 (full mode);
* the same architecture without recurrent weights (what the leak alone remembers);
* the same architecture as a spiking network trained with surrogate gradients;
* torch.nn.RNN (tanh) reading its last hidden state, and one reading the mean hidden state over
  the 8 steps (the readout the integrating IF layer of the LIF network implies).

Every LIF model is converted (``to_graph`` -> ``quantize``) and run on the cpu backend over the
test split; the float spiking network (Heaviside, before quantization) is evaluated too, to
separate the rate -> spike gap from the quantization gap. The converted recurrent nets are
checked spike for spike on a few samples: cpu vs lava vs brian2. Writes a PNG: accuracy bars,
the digit and the spike raster of one sequence.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def verify_backends(graph, x_rows: np.ndarray, steps_per_item: int,
                    backends: Sequence[str] = ("lava", "brian2")) -> dict[str, dict[str, Any]]:
    """Run the same sequence payloads on cpu and each of ``backends``; compare spike for spike
    (spikeforge.runner.compare, cpu as reference)."""
    from spikeforge.backends import get_backend
    from spikeforge.models.sequence import sequence_payloads
    from spikeforge.network import lower
    from spikeforge.runner import compare

    payloads = sequence_payloads(x_rows, steps_per_item)
    order = [layer.name for layer in lower(graph).layers]
    cpu = get_backend("cpu")
    ref = cpu.run(cpu.compile(graph), payloads)
    out: dict[str, dict[str, Any]] = {}
    for name in backends:
        t0 = time.perf_counter()
        try:
            be = get_backend(name)
            res = be.run(be.compile(graph), payloads)
        except Exception as exc:  # a backend that cannot run here is reported, not fatal
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        c = compare(ref, res, order)
        out[name] = {"samples": len(payloads), "spikes": c.spikes, "reference_spikes": c.reference_spikes,
                     "mismatched_spikes": c.mismatched_spikes, "mismatched_v_final": c.mismatched_v_final,
                     "same_predictions": bool(np.array_equal(ref.predictions, res.predictions)),
                     "seconds": time.perf_counter() - t0}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    from spikeforge import plots
    from spikeforge.models import evaluate
    from spikeforge.models import sequence as sq

    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps-per-item", type=int, default=4, help="steps S per row (default 4)")
    p.add_argument("--tau", type=float, default=16.0, help="hidden LIF time constant in steps (default 16; "
                   "a divisor of 4096 quantizes exactly)")
    p.add_argument("--hidden", type=int, default=64, help="hidden neurons of every model (default 64)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 80, quick 8)")
    p.add_argument("--verify", type=int, default=5, help="samples for the cpu/lava/brian2 check (0: skip)")
    args = _common.parse(p, argv)
    S, tau, H = args.steps_per_item, float(args.tau), args.hidden
    epochs = args.epochs or (8 if args.quick else 80)
    t_start = time.perf_counter()
    sp = _common.digits(args.seed)
    test_x, test_y = sp.test.x, sp.test.y
    P = 8 * S + sq.DEPTH
    lif = dict(hidden=H, tau=tau, steps_per_item=S)

    specs: list[tuple[str, str, dict[str, Any]]] = [
        ("rate", "rate", {**lif, "residual": 0.5}),
        ("rate_c0", "rate", {**lif, "residual": 0.0}),
        ("rate_ff", "rate", {**lif, "residual": 0.5, "recurrent": False}),
        ("surrogate", "surrogate", lif),
        ("rnn", "rnn", {"hidden": H, "nonlinearity": "tanh", "readout": "last"}),
        ("rnn_mean", "rnn", {"hidden": H, "nonlinearity": "tanh", "readout": "mean"}),
    ]
    if args.quick:
        specs = [s for s in specs if s[0] != "rate_c0"]
    labels = {"rate": "LIF rate model (c=1/2)", "rate_c0": "LIF rate model (c=0)",
              "rate_ff": "LIF rate model, no recurrence", "surrogate": "LIF surrogate gradient",
              "rnn": "nn.RNN tanh, last state", "rnn_mean": "nn.RNN tanh, mean state"}

    rows: dict[str, dict[str, Any]] = {}
    graphs, runs = {}, {}
    for key, kind, opts in specs:
        model, info = sq.train_sequence(kind, sp.train, epochs=epochs, seed=args.seed, **opts)
        row: dict[str, Any] = {"label": labels[key], "train_seconds": info["seconds"],
                               "dense": evaluate(model, sp.test), "val": info["val_accuracy"],
                               "train": info["train_accuracy"],
                               "parameters": int(sum(q.numel() for q in model.parameters()))}
        if kind != "rnn":
            row["float_spiking"] = evaluate(sq.spiking_copy(model), sp.test)
            graph = sq.to_fixed_graph(model)
            t0 = time.perf_counter()
            res = sq.run_spiking(graph, test_x, S, "cpu")
            row["cpu_seconds"] = time.perf_counter() - t0
            row["spiking"] = _common.accuracy(res.predictions, test_y)
            with torch.no_grad():
                dense_pred = model(torch.from_numpy(test_x)).argmax(1).numpy()
            row["agreement"] = _common.accuracy(res.predictions, dense_pred)
            row["saturated_readouts"] = int((np.abs(res.v_final) >= 2**23 - 1).sum())
            row["hidden_rate"] = float(res.spikes["hidden"].mean())
            row["quantization"] = graph.metadata["quantization"]
            row["readout_threshold"] = sq.readout_threshold(model)
            # the hidden membrane of the float spiking net, in thresholds, against the 24-bit limit
            v = sq.spiking_copy(model).trajectory(torch.from_numpy(test_x))["v"]
            row["hidden_v_range"] = (float(v.min()), float(v.max()))
            row["hidden_v_limit"] = (2**23 - 1) / graph.node("hidden").vth_scaled
            graphs[key], runs[key] = graph, res
        rows[key] = row

    verification: dict[str, Any] = {}
    if args.verify > 0:
        for key in ("rate", "surrogate"):
            verification[key] = verify_backends(graphs[key], test_x[:args.verify], S)

    # -- plot: accuracy bars | the digit | raster of its sequence (rate model, cpu) -------------
    fig, axes = plots.figure(3, 1, size=(16, 4.2), gridspec_kw={"width_ratios": [1.3, 0.45, 1.6]})
    ax = axes[0, 0]
    keys = list(rows)
    xs = np.arange(len(keys))
    ax.bar(xs - 0.2, [rows[k]["dense"] for k in keys], 0.4, label="dense model")
    ax.bar(xs + 0.2, [rows[k].get("spiking", np.nan) for k in keys], 0.4, label=f"spiking, cpu (T={8 * S})")
    ax.set_xticks(xs)
    ax.set_xticklabels([rows[k]["label"].replace(", ", ",\n").replace(" (", "\n(") for k in keys],
                       fontsize=6.5, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"digits row by row, H={H}, tau={tau:g}, S={S}")
    ax.legend(fontsize=7, loc="lower left")
    i = 0
    axes[0, 1].imshow(test_x[i].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
    axes[0, 1].set_title(f"test sample {i}, label {test_y[i]}")
    axes[0, 1].set_ylabel("row (sequence item)")
    ax = axes[0, 2]
    res = runs["rate"]
    plots.raster(res.spikes["hidden"][i], ax, color="k", marker_size=6)
    plots.raster(res.spikes["readout"][i], ax, offset=H + 2, color="tab:red", marker_size=6)
    for k in range(9):
        ax.axvline(k * S + 0.5, color="tab:blue", lw=0.5, alpha=0.5)  # row k reaches the hidden layer at k S + 1
    ax.axhline(H + 0.5, color="grey", lw=0.5)
    pred = int(res.predictions[i])
    ax.set_title(f"rate-trained LIF on cpu, one sequence: hidden (black), readout (red, above the line); "
                 f"rows enter at the blue lines; predicted {pred}", fontsize=9)
    png = plots.save(fig, args.out / "sequence_lif.png")

    # -- report --------------------------------------------------------------------------------
    def fmt(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.4f}" if isinstance(v, float) else str(v))

    print(f"digits read row by row: 8 items x 8 pixels, S={S} steps per item, T={8 * S} input steps, "
          f"P={P} steps per sample; hidden H={H}, tau={tau:g} (dv={round(4096 / tau)}); {epochs} epochs; "
          f"test {len(test_y)} samples\n")
    head = ["model", "train s", "dense acc", "float spiking acc", f"cpu spiking acc (T={8 * S})",
            "cpu = dense pred.", "hidden spikes/step"]
    print(plots.markdown_table(head, [[r["label"], f"{r['train_seconds']:.1f}", fmt(r["dense"]),
                                       fmt(r.get("float_spiking")), fmt(r.get("spiking")),
                                       fmt(r.get("agreement")), fmt(r.get("hidden_rate"))]
                                      for r in rows.values()]))
    for key, r in rows.items():
        if "quantization" in r:
            lo, hi = r["hidden_v_range"]
            print(f"{r['label']}: vth hidden/readout {r['quantization'][0]['vth']}/{r['quantization'][1]['vth']}, "
                  f"readout threshold {r['readout_threshold']:.3g}, saturated readout potentials "
                  f"{r['saturated_readouts']}; hidden v in [{lo:.1f}, {hi:.1f}] thresholds (24-bit limit "
                  f"+-{r['hidden_v_limit']:.0f}); zeroed weights "
                  f"{sum(q['zeroed_weights'] for q in r['quantization'])}")
    for key, per in verification.items():
        for be, v in per.items():
            if "error" in v:
                print(f"verify {labels[key]}: cpu vs {be}: {v['error']}")
            else:
                print(f"verify {labels[key]}: cpu vs {be} on {v['samples']} samples: "
                      f"{v['mismatched_spikes']} mismatched spikes of {v['reference_spikes']}, "
                      f"{v['mismatched_v_final']} readout potentials differ ({v['seconds']:.1f} s)")
    seconds = time.perf_counter() - t_start
    print(f"plot: {png} ({seconds:.1f} s)")
    return {"steps_per_item": S, "tau": tau, "hidden": H, "epochs": epochs, "timesteps": 8 * S, "steps": P,
            "models": rows, "verification": verification, "plot": str(png), "seconds": seconds}


if __name__ == "__main__":
    main()
