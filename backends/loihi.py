"""The loihi backend: the same Lava process graph as ``--backend lava`` run on a Loihi 2
system with ``Loihi2HwCfg``, where Intel's lava-loihi package and a board are present.

Where they are absent (any public machine), ``compile`` and ``run`` raise
:class:`BackendUnavailable` with one line saying what was found; nothing is simulated in
their place. Where present, the graph is Lava's stock processes only (``Dense`` with
weights 2w / weight_exp - 1 / sign mode MIXED, stock ``LIF``), because a Python
ProcessModel such as spikeforge's own LIF would run on the host CPU, not on the chip:
so reset='subtract' is refused (it needs Loihi 2 microcode neurons), and samples run one
``run(steps)`` each with u, v and the Dense buffers set to 0 between them. The payload
source and the spike recorders stay on the host and connect through lava-loihi's
``lava.proc.embedded_io.spike`` adapters (``PyToNxAdapter`` 8-bit graded payloads,
``NxToPyAdapter`` binary spikes).

This path has not been run on hardware by spikeforge's authors: compare its first results
with ``--backend lava`` (bit-accurate simulation) before trusting them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Any

import numpy as np

from spikeforge import ir
from spikeforge.backends.base import Backend, RunResult
from spikeforge.errors import BackendUnavailable

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


class LoihiBackend(Backend):
    """Loihi 2 hardware through lava-loihi (``Loihi2HwCfg``); reset='zero' layers only.

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
        """Check for lava-loihi and a board, lower, and check every layer (stock LIF:
        reset='zero'; int32 bounds as for the lava backend)."""
        require_hardware()
        from spikeforge.backends.lava_backend import build_program, import_lava

        import_lava()
        return build_program(self.lower(graph), graph, "stock", hardware=True)

    def run(self, program: Any, payloads: np.ndarray) -> RunResult:
        """payloads int (batch, steps, inputs), 8-bit -> RunResult, one chip run per sample."""
        require_hardware()
        from spikeforge.backends.lava_backend import LavaBackend

        runner = LavaBackend(neuron="stock", isolate=self.isolate, timeout=self.timeout,
                             chunk_steps=self.chunk_steps)
        return runner.run(program, payloads)
