"""Plotting helpers for the examples: rasters, membrane traces, rate curves, ANN-vs-SNN scatter.

matplotlib is imported inside the functions (the Agg backend, no display needed), so importing
this module costs nothing. Every function draws into a given ``ax`` (or a new figure when
``ax`` is None) and returns the ``Axes``; :func:`save` writes a figure atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from spikeforge.fileio import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] | None = None,
           **kwargs: object) -> tuple["Figure", np.ndarray]:
    """A new figure (constrained layout) with a 2-D (nrows, ncols) array of axes."""
    plt = _pyplot()
    size = size or (4.8 * ncols, 3.6 * nrows)
    kwargs.setdefault("layout", "constrained")
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False, **kwargs)
    return fig, axes


def _axes(ax: "Axes | None") -> "Axes":
    if ax is not None:
        return ax
    return figure()[1][0, 0]


def raster(spikes: np.ndarray, ax: "Axes | None" = None, title: str | None = None,
           offset: int = 0, color: str = "k", label: str | None = None, marker_size: float = 2.0) -> "Axes":
    """Spike raster of a bool/0-1 array (steps, n): a dot at (step, neuron) per spike.

    ``offset`` shifts neuron indices (to stack several layers on one axis)."""
    ax = _axes(ax)
    s = np.asarray(spikes)
    if s.ndim != 2:
        raise ValueError(f"raster: expected spikes of shape (steps, n), found {s.shape}")
    t, n = np.nonzero(s)
    ax.scatter(t, n + offset, s=marker_size, c=color, marker="|" if marker_size > 4 else ".",
               linewidths=0.6, label=label)
    ax.set_xlim(-0.5, s.shape[0] - 0.5)
    ax.set_xlabel("time step")
    ax.set_ylabel("neuron")
    if title:
        ax.set_title(title)
    return ax


def voltage_trace(v: np.ndarray, spikes: np.ndarray, vth_line: float, ax: "Axes | None" = None,
                  title: str | None = None, reset_line: float | None = None,
                  ylabel: str = "membrane potential", v_before_reset: np.ndarray | None = None) -> "Axes":
    """Membrane potential ``v`` (steps,) as stored after each step, with the threshold as a
    dashed line and a marker above it at every step where ``spikes`` (steps,) is true.

    With ``v_before_reset`` (steps,), the line rises to that value on a spike step and drops
    to ``v`` (the reset value) at the same step, so threshold crossings are visible."""
    ax = _axes(ax)
    v = np.asarray(v, dtype=float)
    s = np.asarray(spikes, dtype=bool)
    if v.shape != s.shape or v.ndim != 1:
        raise ValueError(f"voltage_trace: expected v and spikes of one shape (steps,), found {v.shape}, {s.shape}")
    t = np.arange(v.size)
    if v_before_reset is not None:
        pre = np.asarray(v_before_reset, dtype=float)
        tt = np.repeat(t, 2).astype(float)
        vv = np.stack([np.where(s, pre, v), v], axis=1).reshape(-1)
        ax.plot(tt, vv, lw=1.0, color="tab:blue", label="v")
    else:
        ax.plot(t, v, lw=1.0, color="tab:blue", label="v")
    ax.axhline(vth_line, ls="--", color="tab:red", lw=1.0, label="threshold")
    if reset_line is not None:
        ax.axhline(reset_line, ls=":", color="grey", lw=0.8)
    peak = v if v_before_reset is None else np.maximum(v, np.asarray(v_before_reset, dtype=float))
    top = max(float(vth_line), float(peak.max(initial=vth_line))) * 1.08
    ax.plot(t[s], np.full(int(s.sum()), top), "v", color="k", ms=3, label=f"spikes ({int(s.sum())})")
    ax.set_xlabel("time step")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper right", fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def rate_vs_input(x: np.ndarray, curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                  ax: "Axes | None" = None, expected: np.ndarray | None = None,
                  expected_label: str = "expected", title: str | None = None,
                  xlabel: str = "input", ylabel: str = "firing rate (spikes / step)") -> "Axes":
    """Rate curves with error bars: ``curves[label] = (mean, err)`` over the inputs ``x``,
    plus the ``expected`` curve (e.g. the clipped ReLU) as a thin black line."""
    ax = _axes(ax)
    x = np.asarray(x, dtype=float)
    if expected is not None:
        ax.plot(x, expected, color="k", lw=1.0, label=expected_label, zorder=5)
    for label, (mean, err) in curves.items():
        ax.errorbar(x, mean, yerr=err, fmt="o-", ms=3, lw=0.9, capsize=2, label=label, alpha=0.85)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def accuracy_vs_T(timesteps: Sequence[int], curves: Mapping[str, Sequence[float]],
                  ax: "Axes | None" = None, references: Mapping[str, float] | None = None,
                  title: str | None = None) -> "Axes":
    """Accuracy against the number of time steps T (log2 axis), one line per ``curves`` entry;
    ``references[label]`` (e.g. the ANN) are horizontal dashed lines."""
    ax = _axes(ax)
    T = np.asarray(timesteps, dtype=float)
    for label, accs in curves.items():
        ax.plot(T, np.asarray(accs, dtype=float), "o-", label=label)
    for label, acc in (references or {}).items():
        ax.axhline(acc, ls="--", lw=1.0, color="k", label=f"{label} ({acc:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(T)
    ax.set_xticklabels([str(int(t)) for t in T])
    ax.set_xlabel("time steps T")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def rate_scatter(ann: np.ndarray, snn: np.ndarray, ax: "Axes | None" = None,
                 title: str | None = None, max_points: int = 4000, seed: int = 0) -> tuple["Axes", float]:
    """SNN Toolbox-style correlation plot: ANN activation (normalized, in [0, 1]) of every
    (sample, neuron) against the SNN's firing rate, with the identity line and Pearson r in
    the title. At most ``max_points`` points are drawn (a seeded subsample); r uses all.
    Returns (ax, r)."""
    ax = _axes(ax)
    a = np.asarray(ann, dtype=float).ravel()
    s = np.asarray(snn, dtype=float).ravel()
    if a.shape != s.shape:
        raise ValueError(f"rate_scatter: expected arrays of one size, found {a.size} and {s.size}")
    r = float(np.corrcoef(a, s)[0, 1]) if a.size > 1 and a.std() > 0 and s.std() > 0 else float("nan")
    idx = np.arange(a.size)
    if a.size > max_points:
        idx = np.random.default_rng(seed).choice(a.size, max_points, replace=False)
    ax.scatter(a[idx], s[idx], s=3, alpha=0.3, lw=0)
    lo, hi = 0.0, max(1.0, float(a.max(initial=1.0)))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlim(-0.02, hi + 0.02)
    ax.set_ylim(-0.02, hi + 0.02)
    ax.set_xlabel("ANN activation (normalized)")
    ax.set_ylabel("SNN firing rate")
    head = f"{title}: " if title else ""
    ax.set_title(f"{head}r = {r:.3f}", fontsize=9)
    return ax, r


def save(fig: "Figure", path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Write ``fig`` as PNG atomically (spikeforge.fileio.atomic_path; the folder is created
    if missing), close it and return the path."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table; floats print with 3 decimals."""
    def fmt(x: object) -> str:
        if isinstance(x, (float, np.floating)):
            return f"{float(x):.3f}" if np.isfinite(x) else "nan"
        return str(x)

    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)
