"""``spikeforge report NET --data D -o DIR``: PNG figures and an index.html that shows what the
converted network does, on the cpu backend (the oracle; spike-identical to lava and brian2):

- raster.png: spikes of every layer for one sample;
- membrane.png: the membrane potential of chosen neurons (the most active hidden neuron, the
  readout neuron of the predicted class) with spike markers and the threshold, replayed
  exactly from the recorded input spikes with spikeforge.neuron.lif_step;
- rates.png: ANN activation against SNN firing rate per layer, readout included (scatter,
  Pearson r), as SNN Toolbox does;
- accuracy.png: accuracy against T (ANN line, cpu curve) and T99, the smallest swept T whose
  accuracy reaches 99 % of the accuracy at the largest T;
- synops.png: synaptic operations per inference against the ANN's multiply-accumulates, and
  an energy estimate from the per-operation figures in docs/loihi2.md.

Synaptic operations of a projection W (out, in) over a sample's steps: sum_t sum_j
[s_j(t) != 0] * nnz(W[:, j]) (a spike or graded payload reaches every non-zero synapse of
its source). The energy is an estimate: E_SNN = synops * E_synop + neuron updates * E_neuron,
E_ANN = MACs * E_MAC. The summary numbers (accuracy, firing rates) are those of ``spikeforge
simulate --backend cpu`` with the same data, T, encoding and seed; index.html carries them
in a JSON block (id="summary") as well.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Sequence, cast

import numpy as np

from spikeforge import ir
from spikeforge.fixedpoint import ACT_SHIFT
from spikeforge.encoding import Encoding
from spikeforge.errors import SpikeforgeError
from spikeforge.network import Network, Projection, lower


class EnergyFigures(NamedTuple):
    """Per-operation energies in pJ (docs/loihi2.md gives the sources)."""

    synop_pj: float = 23.6  # Loihi 1, per synaptic spike operation (Davies et al. 2018)
    neuron_update_pj: float = 52.0  # Loihi 1, per active neuron update (Davies et al. 2018)
    mac_fp32_pj: float = 4.6  # 45 nm FP32 multiply + add (Horowitz, ISSCC 2014)
    mac_int8_pj: float = 0.23  # 45 nm int8 multiply + add (Horowitz, ISSCC 2014)


ENERGY = EnergyFigures()
SWEEP: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)


def layer_labels(net: Network) -> dict[str, str]:
    """Readable layer names: 'hidden 1 (net.2, 64 IF)' ... 'readout (readout, 10 IF)'."""
    labels, hidden = {}, 0
    for l in net.layers:
        kind = "stochastic" if isinstance(l.node, ir.FixedStochastic) else ("IF" if l.node.dv == 0 else "LIF")
        if l.name == net.readout:
            labels[l.name] = f"readout ({l.name}, {l.size} {kind})"
        else:
            hidden += 1
            labels[l.name] = f"hidden {hidden} ({l.name}, {l.size} {kind})"
    return labels


def synaptic_ops(net: Network, spikes: dict[str, np.ndarray], payloads: np.ndarray) -> dict[str, np.ndarray]:
    """Per projection target layer: synaptic operations per sample (samples,)."""
    ops: dict[str, np.ndarray] = {l.name: np.zeros(len(payloads), np.int64) for l in net.layers}
    for proj in net.projections:
        src = payloads if proj.graded else spikes[proj.src]
        events = (src != 0).sum(axis=1)  # (samples, in): events per source neuron
        ops[proj.dst] += events.astype(np.int64) @ fan_out(proj, events.shape[1])
    return ops


def fan_out(proj: Projection, n_src: int) -> np.ndarray:
    """Nonzero synapses leaving each source neuron of a projection (n_src,) int64; a
    convolution counts its unrolled synapses (padding and stride included)."""
    pre, _, _ = proj.coo()
    return np.bincount(pre, minlength=n_src).astype(np.int64)


def ann_macs(ann: ir.Graph) -> dict[str, int]:
    """Multiply-accumulates per inference of every affine map of the ANN: out x in for a
    dense layer, out elements x C_in/groups x kH x kW for a convolution."""
    macs = {n.name: int(n.weight.size) for n in ann.of_type(ir.Affine)}
    for c in ann.of_type(ir.Conv2d):
        macs[c.name] = int(np.prod(c.out_shape)) * int(np.prod(c.weight.shape[1:]))
    return macs


def membrane_replay(net: Network, layer: str, spikes: dict[str, np.ndarray],
                    payloads: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sample's membrane potential of a LIF layer, replayed from its sources' recorded
    spikes: (v after each step, v before reset, spikes), each (steps, n). The replayed spikes
    equal the recorded ones (checked)."""
    from spikeforge.neuron import LIFParams, lif_init, lif_step, reference_synaptic_input

    lay = net.layer(layer)
    if lay.stochastic:
        raise SpikeforgeError(f"layer '{layer}': a stochastic layer has no membrane potential")
    steps = payloads.shape[0]
    a = np.zeros((steps, lay.size), np.int64)
    for proj in net.incoming(layer):
        src = payloads[None] if proj.graded else spikes[proj.src][None].astype(np.int64)
        prev = np.concatenate([np.zeros_like(src[:, :1]), src[:, :-1]], axis=1)  # one-step delay
        a += reference_synaptic_input(net, proj, prev)[0]
    params = lay.params
    assert isinstance(params, LIFParams)  # stochastic layers refused above
    probe = params._replace(reset="subtract")  # same step, reset undone below: v before reset
    state = lif_init(1, lay.size, lay.v_init)
    v = np.zeros((steps, lay.size), np.int64)
    pre = np.zeros((steps, lay.size), np.int64)
    s = np.zeros((steps, lay.size), bool)
    for t in range(steps):
        probe_state, _ = lif_step(probe, state, a[None, t])
        state, spk = lif_step(params, state, a[None, t])
        v[t], s[t] = state.v[0], spk[0]
        pre[t] = np.where(spk[0], probe_state.v[0] + (params.vth << ACT_SHIFT), state.v[0])
    if not np.array_equal(s, spikes[layer]):
        raise SpikeforgeError(f"layer '{layer}': the membrane replay disagrees with the recorded spikes")
    return v, pre, s


def t99(sweep: Sequence[int], accs: Sequence[float]) -> int:
    """The smallest T whose accuracy reaches 99 % of the accuracy at the largest T."""
    final = accs[-1]
    return next(int(t) for t, a in zip(sweep, accs) if a >= 0.99 * final)


def build(snn: ir.Graph, ann: ir.Graph, x: np.ndarray, y: np.ndarray, timesteps: int,
          out: Path, encoding: Encoding = "current", seed: int = 0, sample: int = 0,
          graph_name: str = "", sweep: Sequence[int] = SWEEP) -> dict[str, Any]:
    """Write the figures and index.html into ``out`` (created; files replaced at the end,
    never half-written) and return the summary."""
    from spikeforge import plots
    from spikeforge.analysis import compare_layers, window_rates
    from spikeforge.converter.ann import forward, predict
    from spikeforge.runner import payloads_for, simulate

    if not 0 <= sample < len(x):
        raise SpikeforgeError(f"--sample: expected an index in [0, {len(x) - 1}], found {sample}")
    net = lower(snn)
    labels = layer_labels(net)
    rows, sim = compare_layers(snn, ann, x, timesteps, encoding, seed, record="all")
    res = sim.result
    acc = float((sim.predictions == y).mean())
    ann_acc = float((predict(ann, x) == y).mean())
    firing = {k: float(v.mean()) for k, v in res.spikes.items()}
    payloads = payloads_for(snn, x, timesteps, encoding, seed)

    # ANN vs SNN rates, readout included: the ANN's last affine map over its lambda
    pairs = [(labels[r.layer], r.ann, r.snn) for r in rows]
    lam = cast(dict[str, Any], snn.metadata.get("normalization", {})).get("lambda", {})
    ro_syn = next((p.name for p in net.incoming(net.readout) if not p.recurrent), None)
    if ro_syn in lam and ro_syn in ann.by_name and net.readout not in {r.layer for r in rows}:
        ro_ann = np.clip(forward(ann, x)[ro_syn] / lam[ro_syn], 0.0, 1.0)
        ro_snn = window_rates(res, {net.readout: net.delays[net.readout]}, timesteps)[net.readout]
        pairs.append((labels[net.readout], ro_ann, ro_snn))

    accs = [float((simulate(snn, "cpu", x, T, encoding, seed).predictions == y).mean()) for T in sweep]
    T99 = t99(sweep, accs)
    ops = synaptic_ops(net, res.spikes, payloads)
    synops = {labels[k]: float(v.mean()) for k, v in ops.items()}
    total_synops = float(sum(v.mean() for v in ops.values()))
    macs = ann_macs(ann)
    total_macs = int(sum(macs.values()))
    layer_macs = {labels[l.name]: sum(macs.get(p.name, 0) for p in net.incoming(l.name)) for l in net.layers}
    neuron_updates = int(sum(l.size for l in net.layers) * sim.steps)
    e_snn = (total_synops * ENERGY.synop_pj + neuron_updates * ENERGY.neuron_update_pj) * 1e-3
    e_ann = total_macs * ENERGY.mac_fp32_pj * 1e-3
    e_ann8 = total_macs * ENERGY.mac_int8_pj * 1e-3

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        figs = {}
        # raster
        n_layers = len(net.layers)
        fig, axes = plots.figure(1, n_layers, size=(7.5, 2.4 * n_layers))
        for ax, l in zip(axes[:, 0], net.layers):
            plots.raster(res.spikes[l.name][sample], ax, title=labels[l.name], marker_size=6, label="spike")
            ax.set_ylim(-0.5, l.size - 0.5)
            ax.legend(loc="upper right", fontsize=7)
            ax.set_xlabel("time step (1 step = one Loihi 2 time step)")
            ax.set_ylabel("neuron index")
        fig.suptitle(f"Spike raster, sample {sample} (label {int(y[sample])}, predicted "
                     f"{int(sim.predictions[sample])}), T={timesteps}")
        figs["raster.png"] = plots.save(fig, tmp / "raster.png")
        # membrane traces
        hidden = [l for l in net.layers if l.name != net.readout and not l.stochastic]
        chosen = []
        if hidden:
            h = hidden[0]
            chosen.append((h.name, int(res.spikes[h.name][sample].sum(axis=0).argmax()), "most active"))
        chosen.append((net.readout, int(sim.predictions[sample]), "predicted class"))
        fig, axes = plots.figure(len(chosen), 1, size=(6.0 * len(chosen), 3.6))
        for ax, (name, idx, why) in zip(axes[0], chosen):
            v, pre, s = membrane_replay(net, name, {k: res.spikes[k][sample] for k in res.spikes},
                                        payloads[sample])
            vth = net.layer(name).node.vth_scaled
            plots.voltage_trace(v[:, idx], s[:, idx], vth, ax, v_before_reset=pre[:, idx],
                                title=f"{labels[name]}: neuron {idx} ({why})",
                                ylabel="membrane potential v (state units)")
            ax.set_xlabel("time step")
        fig.suptitle(f"Membrane potential, sample {sample}; threshold = vth << 6 state units")
        figs["membrane.png"] = plots.save(fig, tmp / "membrane.png")
        # ANN vs SNN
        fig, axes = plots.figure(len(pairs), 1, size=(4.2 * len(pairs), 4.0))
        corr = {}
        for ax, (label, a, s) in zip(axes[0], pairs):
            _, r = plots.rate_scatter(a, s, ax, title=label)
            ax.set_xlabel("ANN activation (normalized to rate, 1/step)")
            ax.set_ylabel("SNN firing rate (spikes/step)")
            ax.legend(["(sample, neuron)", "identity"], fontsize=7, loc="upper left")
            corr[label] = r
        fig.suptitle(f"ANN activation vs SNN firing rate, {len(x)} samples, T={timesteps}")
        figs["rates.png"] = plots.save(fig, tmp / "rates.png")
        # accuracy vs T
        fig, axes = plots.figure(1, 1, size=(6.0, 4.0))
        ax = plots.accuracy_vs_T(list(sweep), {f"SNN, cpu backend ({encoding} input)": accs}, axes[0, 0],
                                 references={"ANN": ann_acc}, title="Accuracy against time steps T")
        ax.axvline(T99, color="tab:green", ls=":", label=f"T99 = {T99} (99 % of final)")
        ax.set_ylabel("test accuracy (fraction)")
        ax.set_xlabel("time steps T (input steps per sample)")
        ax.legend(fontsize=7)
        figs["accuracy.png"] = plots.save(fig, tmp / "accuracy.png")
        # synaptic operations and energy
        fig, axes = plots.figure(2, 1, size=(11.0, 4.0))
        names = list(synops)
        ax = axes[0, 0]
        pos = np.arange(len(names))
        ax.bar(pos - 0.2, [synops[n] for n in names], 0.4, label="SNN synaptic ops / inference")
        ax.bar(pos + 0.2, [layer_macs[n] for n in names], 0.4, label="ANN MACs / inference")
        ax.set_xticks(pos)
        ax.set_xticklabels([n.split(" (")[0] for n in names])
        ax.set_yscale("log")
        ax.set_ylabel("operations per inference (count)")
        ax.set_title(f"Synaptic operations (T={timesteps}) vs ANN multiply-accumulates")
        ax.legend(fontsize=7)
        ax = axes[0, 1]
        bars = {"SNN on Loihi\n(estimate)": e_snn, "ANN FP32\n(45 nm MACs)": e_ann,
                "ANN int8\n(45 nm MACs)": e_ann8}
        ax.bar(list(bars), list(bars.values()), color=["tab:blue", "tab:orange", "tab:red"])
        ax.set_yscale("log")
        ax.set_ylabel("energy per inference (nJ)")
        ax.set_title("Energy estimate per inference (figures: docs/loihi2.md)")
        figs["synops.png"] = plots.save(fig, tmp / "synops.png")

        summary = {
            "graph": graph_name, "backend": "cpu", "samples": int(len(y)), "timesteps": timesteps,
            "encoding": encoding, "seed": seed, "accuracy": acc, "ann_accuracy": ann_acc,
            "firing_rates": firing, "accuracy_vs_T": dict(zip(map(int, sweep), accs)), "t99": T99,
            "correlation": corr, "synops_per_inference": total_synops,
            "synops_per_layer": synops, "ann_macs_per_inference": total_macs,
            "neuron_updates_per_inference": neuron_updates,
            "energy_nj": {"snn_estimate": e_snn, "ann_fp32": e_ann, "ann_int8": e_ann8},
            "energy_figures_pj": ENERGY._asdict(), "images": list(figs),
        }
        (tmp / "index.html").write_text(_html(summary, labels, figs))
        out.mkdir(exist_ok=True)
        for f in [*figs, "index.html"]:
            os.replace(tmp / f, out / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _html(s: dict[str, Any], labels: dict[str, str], figs: dict[str, Path]) -> str:
    e = html.escape
    rates = "".join(f"<li>{e(labels.get(k, k))}: {v:.3f} spikes/step</li>" for k, v in s["firing_rates"].items())
    corr = "".join(f"<li>{e(k)}: r = {v:.3f}</li>" for k, v in s["correlation"].items())
    captions = {
        "raster.png": "Spike raster per layer for one sample.",
        "membrane.png": "Membrane potential of chosen neurons with spike markers and the threshold.",
        "rates.png": "ANN activation against SNN firing rate per layer, readout included.",
        "accuracy.png": "Accuracy against time steps T: ANN line, cpu curve, T99.",
        "synops.png": "Synaptic operations per inference against the ANN's MACs; energy estimate.",
    }
    imgs = "".join(f'<figure><img src="{e(f)}" alt="{e(captions[f])}"><figcaption>{e(captions[f])}'
                   f"</figcaption></figure>" for f in figs)
    en = s["energy_nj"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>spikeforge report: {e(s["graph"])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%}}
figure{{margin:1.5em 0}}</style></head><body>
<h1>spikeforge report: {e(s["graph"])}</h1>
<h2>Summary</h2>
<p>On {s["samples"]} samples with T = {s["timesteps"]} ({e(s["encoding"])} input, seed {s["seed"]}), the
spiking network reaches <b>{100 * s["accuracy"]:.2f}%</b> accuracy on the cpu backend (the source ANN:
{100 * s["ann_accuracy"]:.2f}%). 99 % of the accuracy at T = {max(map(int, s["accuracy_vs_T"]))} is reached at
<b>T = {s["t99"]}</b>.</p>
<p>Per inference the SNN performs {s["synops_per_inference"]:.0f} synaptic operations and
{s["neuron_updates_per_inference"]} neuron updates; the ANN performs {s["ann_macs_per_inference"]}
multiply-accumulates. <b>Energy estimate</b> (not a measurement; per-operation figures and sources in
docs/loihi2.md): SNN on Loihi about {en["snn_estimate"]:.1f} nJ, ANN {en["ann_fp32"]:.1f} nJ in FP32 and
{en["ann_int8"]:.2f} nJ in int8 arithmetic (45 nm, memory access excluded).</p>
<p>Firing rates per layer:</p><ul>{rates}</ul>
<p>ANN activation against SNN rate (Pearson r):</p><ul>{corr}</ul>
{imgs}
<script type="application/json" id="summary">{json.dumps(s)}</script>
</body></html>
"""
