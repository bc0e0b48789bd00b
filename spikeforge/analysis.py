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
from spikeforge.network import lower
from spikeforge.runner import simulate


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
    """Normalized ANN activations (rates in [0, 1]) for the SNN layers that have an ANN twin."""
    from spikeforge.converter.ann import forward

    acts = forward(ann, x)
    lam = snn.metadata.get("normalization", {}).get("lambda", {})
    out = {}
    for node in ann.of_type(ir.ReLU):
        feeding = [p for p in ann.predecessors(node.name) if p in lam]
        if node.name in snn.by_name and feeding:
            out[node.name] = np.clip(acts[node.name] / lam[feeding[0]], 0.0, 1.0)
    return out


def compare_layers(snn: ir.Graph, ann: ir.Graph, x: np.ndarray, timesteps: int,
                   encoding: str = "current", seed: int = 0) -> tuple[list[LayerComparison], Any]:
    """Run the SNN on the cpu backend and compare every layer with its ANN twin."""
    sim = simulate(snn, "cpu", x, timesteps, encoding, seed)
    rates = window_rates(sim.result, lower(snn).delays, timesteps)
    rows = []
    for name, a in ann_rates(snn, ann, x).items():
        s = rates[name]
        r = float(np.corrcoef(a.ravel(), s.ravel())[0, 1]) if a.std() > 0 and s.std() > 0 else float("nan")
        rows.append(LayerComparison(name, float(a.mean()), float(s.mean()), float(np.abs(a - s).mean()), r, a, s))
    return rows, sim


def report(snn: ir.Graph, ann: ir.Graph, x: np.ndarray, y: np.ndarray, timesteps: int,
           out: Path, sweep: Sequence[int] = (8, 16, 32, 64, 128), encoding: str = "current",
           seed: int = 0) -> dict[str, Any]:
    """Write analysis.png (per-layer scatter, accuracy vs T, raster) and return the numbers."""
    from spikeforge import plots
    from spikeforge.converter.ann import predict

    rows, sim = compare_layers(snn, ann, x, timesteps, encoding, seed)
    ann_acc = float((predict(ann, x) == y).mean())
    accs = [float((simulate(snn, "cpu", x, T, encoding, seed).predictions == y).mean()) for T in sweep]
    ncols = max(len(rows), 1) + 2
    fig, axes = plots.figure(ncols, 1, size=(4.2 * ncols, 3.8))
    for i, row in enumerate(rows):
        plots.rate_scatter(row.ann, row.snn, axes[0, i], title=f"{row.layer}, T={timesteps}")
    plots.accuracy_vs_T(list(sweep), {f"SNN (cpu, {encoding})": accs}, axes[0, len(rows)],
                        references={"ANN": ann_acc}, title="accuracy against T")
    first = next(iter(sim.result.spikes))
    plots.raster(sim.result.spikes[first][0], axes[0, len(rows) + 1], title=f"raster: {first}, sample 0")
    path = plots.save(fig, Path(out) / "analysis.png")
    return {"plot": str(path), "ann_accuracy": ann_acc, "timesteps": timesteps,
            "accuracy_vs_T": dict(zip(map(int, sweep), accs)),
            "layers": [{"layer": r.layer, "ann_rate": r.ann_rate, "snn_rate": r.snn_rate,
                        "mean_abs_error": r.mean_abs_error, "correlation": r.correlation} for r in rows]}
