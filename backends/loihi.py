"""The loihi backend: the same Lava process graph as ``--backend lava`` run on a Loihi 2
system with ``Loihi2HwCfg``, where Intel's lava-loihi package and a board are present.

``compile`` checks first whether the graph fits the chip at all (:func:`check_loihi2`,
every violation named by node, parameter and rule, in one UnsupportedError line), and
only then whether hardware is here: a graph that cannot fit must be changed whatever
machine it is taken to, so that is said first. Where lava-loihi or a board is absent (any
public machine), ``compile`` (of a fitting graph) and ``run`` then raise
:class:`BackendUnavailable` with one line saying what was found; nothing is simulated in
their place. Where present, the graph is Lava's stock processes only (``Dense`` with
weights 2w / weight_exp - 1 / sign mode MIXED, convolutions as ``Sparse`` over their
unrolled connections with the same encoding, stock ``LIF``), because a Python
ProcessModel such as spikeforge's own LIF would run on the host CPU, not on the chip:
so reset='subtract' or to a nonzero value, v_rest, the subtractive leak and the
refractory period are refused (they need Loihi 2 microcode neurons), as are stochastic
neurons (spikeforge simulates them only), and samples run one
``run(steps)`` each with u, v and the Dense buffers set to 0 between them. The payload
source and the spike recorders stay on the host and connect through lava-loihi's
``lava.proc.embedded_io.spike`` adapters (``PyToNxAdapter`` 8-bit graded payloads,
``NxToPyAdapter`` binary spikes).

This path has not been run on hardware by spikeforge's authors: compare its first results
with ``--backend lava`` (bit-accurate simulation) before trusting them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from spikeforge import ir
from spikeforge.backends.base import Backend, RunResult
from spikeforge.errors import BackendUnavailable, SpikeforgeError, UnsupportedError

NEEDS = ("Loihi 2 hardware backend needs Intel's lava-loihi package (not public) "
         "and a Loihi system")
ADVICE = "use --backend lava for the bit-accurate simulator"


def _lava_loihi_installed() -> tuple[bool, str]:
    """lava-loihi is installed if lava.utils.loihi.is_installed() says so or Lava's
    NeuroCore model package (lava.magma.core.model.nc) exists."""
    try:
        from lava.utils import loihi as lava_loihi_utils
        if hasattr(lava_loihi_utils, "is_installed") and lava_loihi_utils.is_installed():
            return True, "lava.utils.loihi.is_installed()"
    except Exception:  # lava-nc missing or broken: lava-loihi cannot work either
        pass
    try:
        if importlib.util.find_spec("lava.magma.core.model.nc") is not None:
            return True, "lava.magma.core.model.nc"
    except (ImportError, ValueError):
        pass
    return False, ""


def _board() -> tuple[bool, str]:
    """A Loihi system is reachable through SLURM (``sinfo`` on PATH) or an Oheo Gulch host
    named in ``NXSDKHOST``."""
    if shutil.which("sinfo"):
        return True, "SLURM (sinfo on PATH)"
    host = os.environ.get("NXSDKHOST")
    if host:
        return True, f"NXSDKHOST={host}"
    return False, ""


def hardware_status() -> dict[str, Any]:
    """What this machine offers for Loihi 2 hardware runs.

    Keys: ``available`` (bool), ``lava_loihi`` (bool), ``lava_loihi_via`` (str),
    ``board`` (bool), ``board_via`` (str), ``message`` (one line).
    """
    loihi, loihi_via = _lava_loihi_installed()
    board, board_via = _board()
    found = [f"lava-loihi installed ({loihi_via})" if loihi else "lava-loihi not installed",
             f"Loihi system via {board_via}" if board
             else "no Loihi system (no sinfo on PATH, NXSDKHOST unset)"]
    available = loihi and board
    message = (f"Loihi 2 hardware available: {', '.join(found)}" if available
               else f"{NEEDS}; found: {', '.join(found)}; {ADVICE}")
    return {"available": available, "lava_loihi": loihi, "lava_loihi_via": loihi_via,
            "board": board, "board_via": board_via, "message": message}


def require_hardware() -> dict[str, Any]:
    """hardware_status(), or BackendUnavailable (its one-line message) if unavailable."""
    status = hardware_status()
    if not status["available"]:
        raise BackendUnavailable(status["message"])
    return status


# -- chip fit ----------------------------------------------------------------------------
STOCK_LIF = "Loihi 2's stock CUBA LIF"
SIMULATION_ONLY = "simulation only: use --backend cpu|brian2|lava"


#: What Loihi 2 runs natively that comes nearest to each feature it lacks (by parameter).
NEAREST: dict[str, str] = {
    "stochastic": "IF neurons, convert --neuron if",
    "reset": "reset to zero, convert --reset zero",
    "v_rest": "a LIF decaying toward 0 (v_rest = 0; NIR v_leak = 0)",
    "leak": "the multiplicative decay dv instead of a subtractive leak",
    "refractory": "no refractory period (refractory = 0)",
}


def check_loihi2(graph: ir.Graph, advice: bool = False) -> list[str]:
    """Every reason ``graph`` cannot run on Loihi 2 through this backend, one line each
    naming the node, the parameter and the rule ([] if it fits); with ``advice``, each neuron
    problem also names the nearest supported alternative (:data:`NEAREST`). Needs neither
    Lava nor hardware. Rules:

    * every node is fixed-point (a quantized graph: ``spikeforge convert`` first);
    * every neuron is Loihi 2's stock CUBA LIF: reset to zero (or reset='value' with
      v_reset = 0), v_rest = 0, leak = 0, refractory = 0; no FixedStochastic layer;
    * spikeforge's lowering accepts the graph (one Input, a FixedLIF readout);
    * no Dense or Sparse accumulator (int32) or LIF input a << 6 (int32) can overflow, as
      for the lava backend (a convolution's worst case: its heaviest kernel, every input at
      its maximum).

    What it does not check (:func:`loihi2_notes`): how layers map onto cores (neurons,
    synapse memory and fan-in per core), which for convolutions depends on how the chip
    shares their weights.
    """
    from spikeforge.backends.lava_backend import int32_violations, stock_lif_gaps
    from spikeforge.network import lower

    problems = []
    for node in graph.nodes:
        if not isinstance(node, ir.FIXED_TYPES):
            problems.append(f"{node.where()}: not a fixed-point node; Loihi 2 runs quantized "
                            f"graphs only (spikeforge convert first)")
        elif isinstance(node, ir.FixedStochastic):
            hint = f"; nearest supported: {NEAREST['stochastic']}" if advice else ""
            problems.append(f"{node.where()}: stochastic neurons have no Loihi 2 process "
                            f"model here ({SIMULATION_ONLY}{hint})")
        elif isinstance(node, ir.FixedLIF):
            problems += [f"{node.where()} {param}: {STOCK_LIF} {rule}" +
                         (f" (nearest supported: {NEAREST[param.split('=')[0]]})" if advice else "")
                         for param, rule in stock_lif_gaps(node)]
    if graph.is_fixed():
        try:
            net = lower(graph)
        except SpikeforgeError as exc:
            problems.append(str(exc))
        else:
            problems += int32_violations(net, graph, stock=True)
    return problems


def loihi2_notes(graph: ir.Graph) -> list[str]:
    """What :func:`check_loihi2` does not check about this graph, one line each ([] for a
    graph without convolutions): per conv layer how it is run, and the per-core mapping."""
    from spikeforge.conv import synapse_count

    convs = graph.of_type(ir.FixedConv2d)
    notes = []
    for c in convs:
        g = c.geometry
        notes.append(f"{c.where()}: {g.input_shape} -> {g.output_shape}, kernel {g.kernel}, "
                     f"stride {g.stride}, groups {g.groups}: runs as Lava's Sparse over its "
                     f"{synapse_count(c.weight, g):,} unrolled synapses (Lava 0.10's Conv "
                     f"ignores weight_exp and wraps at 24 bits)")
    if convs:
        notes.append("not checked: neurons, synapse memory and fan-in per neuro core (the "
                     "mapping of conv layers onto cores and their weight sharing)")
    return notes


def fit_error(problems: list[str]) -> str:
    """The one-line message of a graph that does not fit Loihi 2."""
    return (f"graph does not fit Loihi 2 ({len(problems)} problem"
            f"{'' if len(problems) == 1 else 's'}): " + "; ".join(problems))


#: Targets of ``spikeforge check --target``: name -> check(graph) -> violations.
TARGETS: dict[str, Callable[[ir.Graph], list[str]]] = {"loihi2": check_loihi2}
#: What each target's check leaves unchecked: name -> notes(graph) -> lines (printed as notes).
NOTES: dict[str, Callable[[ir.Graph], list[str]]] = {"loihi2": loihi2_notes}


def check_file(path: str | Path, target: str = "loihi2", as_json: bool = False,
               which: str = "snn") -> tuple[int, str]:
    """CLI helper for ``spikeforge check GRAPH --target loihi2 [--json]``: load the graph
    ``which`` from a spikeforge graph file, check it, and return (exit code, text to print):
    0 if it fits, 1 with one violation per line (or a JSON object) if not. A file or
    target that cannot be read raises SpikeforgeError (the CLI's exit code 2)."""
    from spikeforge import graphio

    if target not in TARGETS:
        raise SpikeforgeError(f"--target: expected one of {', '.join(TARGETS)}, found {target!r}")
    graph = graphio.load(path, which)
    problems = TARGETS[target](graph)
    notes = NOTES[target](graph)
    hint = reset_hint(graph, problems)
    if as_json:
        return (1 if problems else 0), json.dumps(
            {"graph": str(path), "target": target, "fits": not problems, "violations": problems,
             "notes": notes, "hint": hint})
    tail = [f"  note: {n}" for n in notes]
    if not problems:
        return 0, "\n".join([f"{path}: fits {target}"] + tail)
    lines = [f"{path}: does not fit {target}: {len(problems)} violation"
             f"{'' if len(problems) == 1 else 's'}"]
    return 1, "\n".join(lines + [f"  - {p}" for p in problems] + tail + ([f"hint: {hint}"] if hint else []))


def reset_hint(graph: ir.Graph, problems: list[str]) -> str | None:
    """What to do about reset-by-subtraction violations: convert again with --reset zero
    (Loihi 2's own reset; the converter's default, subtract, is more accurate at small T)."""
    resets = [p for p in problems if "reset='subtract'" in p]
    if not resets:
        return None
    source = graph.metadata.get("source", "MODEL")
    what = ("makes it fit" if len(resets) == len(problems)
            else f"removes the {len(resets)} reset violation{'s' if len(resets) > 1 else ''}")
    return (f"'spikeforge convert {source} --calib CALIB.npz --reset zero -o NET.sfg' {what} (reset to zero is Loihi 2's "
            f"native reset; reset by subtraction runs on the lava simulator only)")


class LoihiBackend(Backend):
    """Loihi 2 hardware through lava-loihi (``Loihi2HwCfg``); graphs that pass
    :func:`check_loihi2` only (stock CUBA LIF layers).

    Options as for :class:`~spikeforge.backends.lava_backend.LavaBackend`: ``isolate``,
    ``timeout`` (seconds), ``chunk_steps``.
    """

    name = "loihi"

    def __init__(self, isolate: bool = True, timeout: float | None = None,
                 chunk_steps: int = 20_000) -> None:
        self.isolate = isolate
        self.timeout = timeout
        self.chunk_steps = chunk_steps

    def compile(self, graph: ir.Graph, **options: Any) -> Any:
        """First the chip fit (:func:`check_loihi2`: UnsupportedError listing every
        violation, on any machine), then lava-loihi and a board (BackendUnavailable),
        then lower and build the stock-process program."""
        problems = check_loihi2(graph)
        if problems:
            raise UnsupportedError(fit_error(problems))
        require_hardware()
        from spikeforge.backends.lava_backend import build_program, import_lava

        import_lava()
        return build_program(self.lower(graph), graph, "stock", hardware=True)

    def run(self, program: Any, payloads: np.ndarray, sample_offset: int = 0) -> RunResult:
        """payloads int (batch, steps, inputs), 8-bit -> RunResult, one chip run per sample."""
        require_hardware()
        from spikeforge.backends.lava_backend import LavaBackend

        runner = LavaBackend(neuron="stock", isolate=self.isolate, timeout=self.timeout,
                             chunk_steps=self.chunk_steps)
        return runner.run(program, payloads, sample_offset)
