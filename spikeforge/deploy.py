"""``spikeforge deploy``: put a quantized graph on Loihi 2, or rehearse it in the bit-accurate
simulator with the very process graph the chip would run.

Both targets first check what the chip needs, and refuse with one line naming the layer and
the limit or parameter:

1. the mapping estimate (:func:`spikeforge.mapping.estimate`): per-core fan-in, neuro cores
   and chips (docs/loihi2.md);
2. what Loihi 2 runs natively (:func:`spikeforge.backends.loihi.check_loihi2`): stock CUBA LIF
   neurons only, so stochastic neurons, reset by subtraction or to a value, v_rest, the
   subtractive leak and the refractory period are refused with the nearest supported
   alternative (e.g. ``convert --reset zero``).

``loihi2`` then needs Intel's lava-loihi and a board (:func:`hardware_status`); where either
is missing it stops with :class:`HardwareMissing` (one line: what is missing, and
``--target lava-sim``). ``lava-sim`` runs the same stock-process graph (Lava ``Dense`` +
stock ``LIF``, :class:`~spikeforge.backends.lava_backend.LavaBackend` with neuron='stock')
under ``Loihi2SimCfg(select_tag='fixed_pt')``. Nothing is simulated in place of hardware.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np

from spikeforge import ir
from spikeforge.errors import BackendUnavailable, SpikeforgeError
from spikeforge.mapping import MappingEstimate, estimate

TARGETS: tuple[str, ...] = ("loihi2", "lava-sim")
#: deploy's exit codes besides 0 and 2 (bad input): the graph cannot go on the chip; or
#: the hardware is not here.
EXIT_DOES_NOT_FIT = 1
EXIT_NO_HARDWARE = 3


class DoesNotFit(SpikeforgeError):
    """The graph breaks a Loihi 2 limit or uses what the chip does not run natively."""


class HardwareMissing(BackendUnavailable):
    """lava-loihi or a Loihi system is absent (message: what, and ``--target lava-sim``)."""


class Deployment(NamedTuple):
    target: str
    accuracy: float
    samples: int
    timesteps: int
    steps: int
    seconds: float
    mapping: MappingEstimate
    hardware: dict[str, Any]
    predictions: np.ndarray


def preflight(graph: ir.Graph) -> MappingEstimate:
    """The mapping estimate, or DoesNotFit naming every layer and limit (then every
    parameter the chip does not run natively), in one line."""
    from spikeforge.backends.loihi import check_loihi2

    if not graph.is_fixed():
        bad = next(n for n in graph.nodes if not isinstance(n, ir.FIXED_TYPES))
        raise DoesNotFit(f"{bad.where()}: not a fixed-point node; Loihi 2 runs quantized graphs "
                         f"only (spikeforge convert first)")
    est = estimate(graph)
    if not est.fits:
        raise DoesNotFit("graph does not fit Loihi 2: " + "; ".join(est.problems))
    problems = check_loihi2(graph, advice=True)
    if problems:
        raise DoesNotFit("graph is not native to Loihi 2: " + "; ".join(problems))
    return est


def _hardware_or_stop() -> dict[str, Any]:
    from spikeforge.backends.loihi import hardware_status

    status = hardware_status()
    if not status["available"]:
        missing = [what for what, ok in (("Intel's lava-loihi package", status["lava_loihi"]),
                                         ("a Loihi 2 system (SLURM sinfo or NXSDKHOST)",
                                          status["board"])) if not ok]
        raise HardwareMissing(f"deploy --target loihi2: missing {' and '.join(missing)}; run "
                              f"the same process graph in the bit-accurate simulator with "
                              f"--target lava-sim")
    return status


def deploy(graph: ir.Graph, target: str, x: np.ndarray, y: np.ndarray, timesteps: int,
           timeout: float | None = None) -> Deployment:
    """Preflight, then run ``x`` on ``target`` ('loihi2': Loihi2HwCfg through lava-loihi;
    'lava-sim': the same stock processes under Loihi2SimCfg('fixed_pt'))."""
    from spikeforge.backends.loihi import hardware_status
    from spikeforge.runner import simulate

    if target not in TARGETS:
        raise SpikeforgeError(f"--target: expected one of {', '.join(TARGETS)}, found {target!r}")
    est = preflight(graph)
    if target == "loihi2":
        status = _hardware_or_stop()
        sim = simulate(graph, "loihi", x, timesteps, timeout=timeout)
    else:
        status = hardware_status()
        sim = simulate(graph, "lava", x, timesteps, neuron="stock", timeout=timeout)
    acc = float((sim.predictions == y).mean()) if len(y) else float("nan")
    return Deployment(target, acc, int(len(y)), timesteps, sim.steps, sim.seconds, est, status,
                      sim.predictions)


def run_cli(graph_path: str, target: str, data_spec: str, timesteps: int, limit: int | None,
            as_json: bool) -> tuple[int, str, str]:
    """``spikeforge deploy``: (exit code, stdout, stderr). Bad input raises SpikeforgeError."""
    import json

    from spikeforge.cli import _ann_accuracy, _graphs, _samples

    snn, ann = _graphs(graph_path)
    x, y = _samples(snn, data_spec, limit)
    t0 = time.perf_counter()
    try:
        dep = deploy(snn, target, x, y, timesteps)
    except (DoesNotFit, HardwareMissing) as exc:
        code = EXIT_DOES_NOT_FIT if isinstance(exc, DoesNotFit) else EXIT_NO_HARDWARE
        msg = f"{graph_path}: {exc}"
        out = json.dumps({"target": target, "deployed": False, "error": msg}) if as_json else ""
        return code, out, msg
    ann_acc = _ann_accuracy(ann, x, y)
    m = dep.mapping
    if as_json:
        return 0, json.dumps({
            "target": target, "deployed": True, "accuracy": dep.accuracy, "ann_accuracy": ann_acc,
            "samples": dep.samples, "timesteps": timesteps, "steps": dep.steps,
            "seconds": time.perf_counter() - t0, "cores": m.cores, "chips": m.chips,
            "fits": m.fits, "hardware": dep.hardware["available"]}), ""
    where = ("Loihi 2 hardware" if target == "loihi2"
             else "Lava bit-accurate simulation of the Loihi 2 process graph (Loihi2SimCfg fixed_pt)")
    lines = [f"{target}: accuracy {100 * dep.accuracy:.2f}% on {dep.samples} samples, T={timesteps} "
             f"({dep.steps} steps), {dep.seconds:.2f} s; {where}",
             f"mapping estimate: {m.cores} neuro cores, {m.chips} chip"
             f"{'s' if m.chips > 1 else ''} (spikeforge inspect for the per-layer table)"]
    if ann_acc is not None:
        lines.append(f"ANN accuracy (source model): {100 * ann_acc:.2f}%")
    return 0, "\n".join(lines), ""
