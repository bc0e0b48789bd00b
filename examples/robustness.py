"""Robustness of a recurrent vs. a feedforward rate network, dense and spiking, to corrupted inputs.

Trains on the digits a feedforward MLP (``models.train_mlp``) and a recurrent network with
lateral recurrence and top-down feedback (``models.train_recurrent``, same hidden sizes), both
with the same augmentation: Gaussian input noise (``--augment-noise``) and random pixel
occlusion (``--augment-occlusion``). Both are converted (``convert(..., reset="subtract")``)
and evaluated on the test split, corrupted by

* additive Gaussian noise of std sigma, clipped to [0, 1];
* occlusion of a fraction of the pixels set to 0: random pixels, and one contiguous block
  (a random rectangle of round(f * 64) pixels, filled row by row);

as dense models (``converter.ann.predict``; the recurrent graph runs its K iterations) and as
spiking networks (cpu backend, T steps, constant-current input). Every level is averaged over
``--repeats`` corruption draws; all four models see the same corrupted inputs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

NOISE = (0.0, 0.1, 0.2, 0.3, 0.5)
OCCLUSION = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def add_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x + sigma * rng.standard_normal(x.shape), 0.0, 1.0) if sigma > 0 else x.copy()


def occlude_random(x: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Set round(frac * features) randomly chosen pixels of every sample to 0."""
    out = x.copy()
    k = int(round(frac * x.shape[1]))
    if k:
        idx = np.argsort(rng.random(x.shape), axis=1)[:, :k]
        np.put_along_axis(out, idx, 0.0, axis=1)
    return out


def occlude_block(x: np.ndarray, shape: tuple[int, int], frac: float, rng: np.random.Generator) -> np.ndarray:
    """Zero one contiguous block of k = round(frac * pixels) pixels per sample: a rectangle
    ceil(sqrt(k)) wide at a random position, filled row by row (the last row partly)."""
    h, w = shape
    k = int(round(frac * h * w))
    out = x.copy().reshape(len(x), h, w)
    if k:
        bw = int(np.ceil(np.sqrt(k)))
        bh = int(np.ceil(k / bw))
        mask = np.zeros((bh, bw), bool)
        mask.reshape(-1)[:k] = True
        for i in range(len(x)):
            r, c = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
            out[i, r:r + bh, c:c + bw][mask] = 0.0
    return out.reshape(len(x), -1)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from spikeforge import models, plots
    from spikeforge.converter.ann import predict
    from spikeforge.converter.passes import convert
    from spikeforge.runner import simulate

    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--timesteps", type=int, default=32, help="spiking time steps T")
    p.add_argument("--augment-noise", type=float, default=0.1, help="training input noise std (both models)")
    p.add_argument("--augment-occlusion", type=float, default=0.2,
                   help="training: fraction of pixels zeroed at random (both models)")
    p.add_argument("--repeats", type=int, default=None, help="corruption draws per level")
    args = _common.parse(p, argv)
    quick, T = args.quick, args.timesteps
    repeats = args.repeats or (1 if quick else 3)
    hidden = (96, 64)
    t0 = time.perf_counter()

    sp = _common.digits(args.seed)
    mlp, mlp_info = models.train_mlp(sp.train, hidden=hidden, epochs=30 if quick else 60,
                                     input_noise=args.augment_noise, occlusion=args.augment_occlusion,
                                     seed=args.seed)
    rec, rec_info = models.train_recurrent(sp.train, hidden=hidden, iterations=12, feedback=True,
                                           epochs=10 if quick else 40, input_noise=args.augment_noise,
                                           occlusion=args.augment_occlusion,
                                           seed=args.seed)
    graphs = {"feedforward": _common.mlp_graph(mlp, sp.train.shape), "recurrent": models.to_graph(rec)}
    snns = {k: convert(g, sp.calib.x, reset="subtract") for k, g in graphs.items()}
    x, y = sp.test.x.astype(np.float64), sp.test.y
    img_shape = tuple(sp.test.shape)

    conditions = [("noise", s) for s in NOISE] + [("occlusion", f) for f in OCCLUSION] + \
                 [("block", f) for f in OCCLUSION]
    rows: list[dict[str, Any]] = []
    for kind, level in conditions:
        accs = {f"{m}_{mode}": 0.0 for m in graphs for mode in ("dense", "spiking")}
        fracs = []
        for r in range(repeats):
            rng = np.random.default_rng([args.seed, r, len(rows)])
            if kind == "noise":
                xc = add_noise(x, level, rng)
            elif kind == "occlusion":
                xc = occlude_random(x, level, rng)
            else:
                xc = occlude_block(x, img_shape, level, rng)
            fracs.append(int(round(level * x.shape[1])) / x.shape[1] if kind != "noise" else level)
            for m in graphs:
                accs[f"{m}_dense"] += _common.accuracy(predict(graphs[m], xc), y) / repeats
                sim = simulate(snns[m], "cpu", xc, T)
                accs[f"{m}_spiking"] += _common.accuracy(sim.predictions, y) / repeats
        rows.append({"corruption": kind, "level": level, "fraction": fracs[0], **accs})

    res: dict[str, Any] = {"rows": rows, "timesteps": T, "repeats": repeats, "hidden": hidden,
                           "augment_noise": args.augment_noise, "augment_occlusion": args.augment_occlusion,
                           "clean": {k: v for k, v in rows[0].items() if k.endswith(("dense", "spiking"))},
                           "train": {"feedforward": mlp_info["val_accuracy"], "recurrent": rec_info["val_accuracy"]}}

    fig, axes = plots.figure(2, 1, size=(11, 4.2))
    colors = {"recurrent": "tab:blue", "feedforward": "tab:orange"}
    for ax, kinds, xlabel in ((axes[0, 0], ("noise",), "noise std sigma"),
                              (axes[0, 1], ("occlusion", "block"), "occluded fraction of pixels")):
        for kind in kinds:
            sel = [r for r in rows if r["corruption"] == kind]
            lv = [r["fraction"] for r in sel]
            marker = "s" if kind == "block" else "o"
            tag = {"noise": "", "occlusion": " random", "block": " block"}[kind]
            for m in ("recurrent", "feedforward"):
                ax.plot(lv, [r[f"{m}_spiking"] for r in sel], marker + "-", color=colors[m],
                        alpha=1.0 if kind != "block" else 0.6, label=f"{m} spiking{tag}")
                ax.plot(lv, [r[f"{m}_dense"] for r in sel], marker + "--", color=colors[m], mfc="none",
                        alpha=1.0 if kind != "block" else 0.6, label=f"{m} dense{tag}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    axes[0, 0].set_title("(a) Gaussian noise, clipped to [0, 1]")
    axes[0, 1].set_title("(b) occlusion (set to 0): random pixels (o), block (s)")
    fig.suptitle(f"digits, hidden {hidden}; spiking: cpu backend, T = {T}, reset by subtraction; "
                 f"{repeats} draw(s) per level", fontsize=10)
    res["plot"] = str(plots.save(fig, args.out / "robustness.png"))

    head = ["corruption", "level", "pixels hit", "FF dense", "FF spiking", "Rec dense", "Rec spiking"]
    table = [[r["corruption"], r["level"], "-" if r["corruption"] == "noise" else f"{r['fraction']:.3f}",
              r["feedforward_dense"], r["feedforward_spiking"], r["recurrent_dense"], r["recurrent_spiking"]]
             for r in rows]
    res["seconds"] = time.perf_counter() - t0
    print(f"MLP and recurrent net {hidden} (feedback, 12 iterations), both trained with input noise "
          f"{args.augment_noise} and occlusion {args.augment_occlusion}; test {len(y)} samples; spiking T={T}\n")
    print(plots.markdown_table(head, table))
    print(f"\nplot {res['plot']} ({res['seconds']:.1f} s)")
    return res


if __name__ == "__main__":
    main()
