"""Per-layer comparison of a converted network with its source ANN (SNN Toolbox style).

For every spiking layer that stands for an ANN layer: the ANN activation in rate units
(activation / lambda_l, clipped to [0, 1]; lambda_l from the normalization stored in the
graph file) against the SNN firing rate over the T steps the layer integrates, per sample and
neuron: Pearson r, mean absolute error, mean rates. Plus accuracy against T, and a raster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from spikeforge import ir
from spikeforge.encoding import Encoding
from spikeforge.network import lower
from spikeforge.runner import MEMORY_MB, Record, simulate


class LayerComparison(NamedTuple):
    layer: str
    ann_rate: float  # mean normalized ANN activation
    snn_rate: float  # mean firing rate over the layer's T input steps
    mean_abs_error: float
    correlation: float
    ann: np.ndarray  # (samples, neurons)
    snn: np.ndarray


def window_rates(result: Any, delays: dict[str, int], timesteps: int) -> dict[str, np.ndarray]:
    """Per layer, the firing rate (samples, neurons) over the T steps it integrates its input:
    steps delay .. delay + T - 1 (every projection on the way is one step of delay)."""
    return {name: result.spikes[name][:, d:d + timesteps].mean(axis=1) for name, d in delays.items()}


def ann_rates(snn: ir.Graph, ann: ir.Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Normalized ANN activations (rates in [0, 1]) for the SNN layers that have an ANN twin:
    each ReLU, and the readout, whose twin is the final affine map (its output / lambda)."""
    from spikeforge.converter.ann import forward

    acts = forward(ann, x)
    norm: dict[str, Any] = dict(snn.metadata.get("normalization", {}))  # type: ignore[call-overload]
    lam = norm.get("lambda", {})
    out = {}
    for node in ann.of_type(ir.ReLU):
        feeding = [p for p in ann.predecessors(node.name) if p in lam]
        if node.name in snn.by_name and feeding:
            out[node.name] = np.clip(acts[node.name] / lam[feeding[0]], 0.0, 1.0)
    for cat in ann.of_type(ir.Concat):  # activations joined into one layer by fold_linear
        feeding = [p for r in ann.predecessors(cat.name) for p in ann.predecessors(r) if p in lam]
        if cat.name in snn.by_name and feeding:
            out[cat.name] = np.clip(acts[cat.name] / lam[feeding[0]], 0.0, 1.0)
    readout = lower(snn).readout
    if readout not in out:
        feeding = [p for p in snn.predecessors(readout) if p in lam and p in acts]
        if feeding and not isinstance(ann.node(feeding[0]), ir.ReLU):
            out[readout] = np.clip(acts[feeding[0]] / lam[feeding[0]], 0.0, 1.0)
    return out


def compare_layers(snn: ir.Graph, ann: ir.Graph, x: np.ndarray, timesteps: int,
                   encoding: Encoding = "current", seed: int = 0,
                   memory_mb: float = MEMORY_MB, record: Record = "readout") -> tuple[list[LayerComparison], Any]:
    """Run the SNN on the cpu backend and compare every layer with its ANN twin (the readout
    included); the rates are taken chunk by chunk, the spikes of ``record`` are kept."""
    net = lower(snn)
    parts: dict[str, list[np.ndarray]] = {}

    def rates_of(start: int, result: Any) -> None:
        for name, r in window_rates(result, net.delays, timesteps).items():
            parts.setdefault(name, []).append(r)

    sim = simulate(snn, "cpu", x, timesteps, encoding, seed, record=record, memory_mb=memory_mb,
                   on_chunk=rates_of)
    rates = {k: np.concatenate(v) for k, v in parts.items()}
    rows = []
    for name, a in ann_rates(snn, ann, x).items():
        s = rates[name]
        r = float(np.corrcoef(a.ravel(), s.ravel())[0, 1]) if a.std() > 0 and s.std() > 0 else float("nan")
        rows.append(LayerComparison(name, float(a.mean()), float(s.mean()), float(np.abs(a - s).mean()), r, a, s))
    order = {l.name: i for i, l in enumerate(net.layers)}
    rows.sort(key=lambda row: order[row.layer])
    return rows, sim


def report(snn: ir.Graph, ann: ir.Graph, x: np.ndarray, y: np.ndarray, timesteps: int,
           out: Path, sweep: Sequence[int] = (8, 16, 32, 64, 128), encoding: Encoding = "current",
           seed: int = 0, memory_mb: float = MEMORY_MB) -> dict[str, Any]:
    """Write the figure (per-layer scatter, accuracy vs T, raster) to ``out``, a .png file
    or a folder (then out/analysis.png), and return the numbers."""
    from spikeforge import plots, progress
    from spikeforge.converter.ann import predict

    rows, _ = compare_layers(snn, ann, x, timesteps, encoding, seed, memory_mb)
    ann_acc = float((predict(ann, x) == y).mean())
    accs = []
    with progress.bar(len(sweep), "analyze: accuracy against T", unit="T") as bar:
        for T in sweep:
            accs.append(float((simulate(snn, "cpu", x, T, encoding, seed, record="readout",
                                        memory_mb=memory_mb).predictions == y).mean()))
            bar.update(1)
    ncols = max(len(rows), 1) + 2
    fig, axes = plots.figure(ncols, 1, size=(4.2 * ncols, 3.8))
    for i, row in enumerate(rows):
        plots.rate_scatter(row.ann, row.snn, axes[0, i], title=f"{row.layer}, T={timesteps}")
    plots.accuracy_vs_T(list(sweep), {f"SNN (cpu, {encoding})": accs}, axes[0, len(rows)],
                        references={"ANN": ann_acc}, title="accuracy against T")
    first = lower(snn).layers[0].name
    if len(x):
        raster = simulate(snn, "cpu", x[:1], timesteps, encoding, seed, record=[first]).result
        plots.raster(raster.spikes[first][0], axes[0, len(rows) + 1], title=f"raster: {first}, sample 0")
    out = Path(out)
    path = plots.save(fig, out if out.suffix.lower() == ".png" else out / "analysis.png")
    return {"plot": str(path), "ann_accuracy": ann_acc, "timesteps": timesteps,
            "accuracy_vs_T": dict(zip(map(int, sweep), accs)),
            "layers": [{"layer": r.layer, "ann_rate": r.ann_rate, "snn_rate": r.snn_rate,
                        "mean_abs_error": r.mean_abs_error, "correlation": r.correlation} for r in rows]}


# -- the check `convert` runs on what it made ------------------------------------------------
class LayerCheck(NamedTuple):
    """One spiking layer beside its ANN twin on the calibration data."""

    layer: str
    correlation: float  # Pearson r of ANN rate and SNN rate over samples x neurons (NaN if constant)
    ann_rate: float
    snn_rate: float
    zeroed_fraction: float  # share of the layer's non-zero float weights that quantized to 0


class ConversionCheck(NamedTuple):
    """Top-1 agreement of SNN and ANN, per-layer rate correlation, and warnings naming layers."""

    samples: int
    timesteps: int
    agreement: float  # fraction of samples where the SNN's top-1 class equals the ANN's
    layers: tuple[LayerCheck, ...]
    warnings: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None)."""
        def num(v: float) -> float | None:
            return v if np.isfinite(v) else None
        return {"samples": self.samples, "timesteps": self.timesteps, "agreement": num(self.agreement),
                "layers": [{**r._asdict(), "correlation": num(r.correlation), "ann_rate": num(r.ann_rate)}
                           for r in self.layers],
                "warnings": list(self.warnings)}


#: Defaults of the conversion check: T, samples, and the limits below which it warns.
CHECK_TIMESTEPS = 32
CHECK_SAMPLES = 256
MIN_AGREEMENT = 0.9
MIN_CORRELATION = 0.8
MAX_ZEROED = 0.5


def twin_rates(snn: ir.Graph, ann: ir.Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`ann_rates` plus the readout: a spiking layer with no ANN twin fed by the ANN's
    affine map A stands for clip(A(x) / lambda_A, 0, 1)."""
    from spikeforge.converter.ann import forward

    out = ann_rates(snn, ann, x)
    lam = dict(snn.metadata.get("normalization", {})).get("lambda", {})  # type: ignore[call-overload]
    acts = None
    for node in snn.of_type(*ir.FIXED_NEURONS):
        preds = [p for p in snn.predecessors(node.name) if p in lam and p in ann.by_name]
        if node.name not in out and node.name not in ann.by_name and len(preds) == 1:
            acts = forward(ann, x) if acts is None else acts
            out[node.name] = np.clip(acts[preds[0]] / lam[preds[0]], 0.0, 1.0)
    return out


def check_conversion(snn: ir.Graph, ann: ir.Graph, x: np.ndarray, timesteps: int = CHECK_TIMESTEPS,
                     samples: int = CHECK_SAMPLES, min_agreement: float = MIN_AGREEMENT,
                     min_correlation: float = MIN_CORRELATION, max_zeroed: float = MAX_ZEROED) -> ConversionCheck:
    """Run the SNN (cpu backend, ``timesteps`` T) beside the ANN on the first ``samples`` of x:

        agreement = mean(argmax SNN readout == argmax ANN output)
        r_l = corr(clip(a_l / lambda_l, 0, 1), spikes_l over its T input steps)   per layer l

    and warn, naming the layer, when agreement < min_agreement, r_l < min_correlation (or the
    SNN layer is constant where the ANN's is not), or more than ``max_zeroed`` of a layer's
    non-zero weights quantized to 0 (see passes.LayerReport)."""
    from spikeforge.converter.ann import predict
    from spikeforge.converter.passes import layer_reports

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)[:samples]
    sim = simulate(snn, "cpu", x, timesteps)
    rates = window_rates(sim.result, lower(snn).delays, timesteps)
    agreement = float((sim.predictions == predict(ann, x)).mean()) if len(x) else float("nan")
    zeroed = {r.layer: r.zeroed_weights / max(r.zeroed_weights + r.synapses, 1) for r in layer_reports(snn)}
    twins = twin_rates(snn, ann, x)
    layers, warnings = [], []
    if agreement < min_agreement:
        warnings.append(f"top-1 agreement of SNN and ANN is {100 * agreement:.1f}% on {len(x)} calibration "
                        f"samples at T={timesteps} (expected >= {100 * min_agreement:.0f}%)")
    for node in snn.of_type(*ir.FIXED_NEURONS):
        name = node.name
        z = float(zeroed.get(name, 0.0))
        a, s = twins.get(name), rates[name]
        if a is None:
            r, a_mean = float("nan"), float("nan")
        else:
            r = float(np.corrcoef(a.ravel(), s.ravel())[0, 1]) if a.std() > 0 and s.std() > 0 else float("nan")
            a_mean = float(a.mean())
            if a.std() > 0 and not r >= min_correlation:
                found = f"r = {r:.3f}" if np.isfinite(r) else f"a constant SNN rate {float(s.mean()):.3f}"
                warnings.append(f"layer '{name}': ANN and SNN rates disagree: expected correlation >= "
                                f"{min_correlation}, found {found}")
        if z > max_zeroed:
            rep = next(rep for rep in layer_reports(snn) if rep.layer == name)
            warnings.append(f"layer '{name}': {rep.zeroed_weights} of {rep.zeroed_weights + rep.synapses} "
                            f"non-zero weights quantized to 0 (a shared exponent too coarse for most of them)")
        layers.append(LayerCheck(name, r, a_mean, float(s.mean()), z))
    return ConversionCheck(len(x), timesteps, agreement, tuple(layers), tuple(warnings))
