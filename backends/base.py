"""The backend interface and the registry of backends by name.

A backend compiles a quantized :class:`~spikeforge.ir.Graph` once and runs many samples
through it. Registration is by dotted path, so heavy runtimes (Lava, Brian2) are imported
only when their backend is asked for.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import numpy as np

from spikeforge import ir
from spikeforge.errors import SpikeforgeError, UnsupportedError
from spikeforge.network import Network, lower


class RunResult(NamedTuple):
    """What every backend returns for a batch of samples.

    ``spikes[layer]`` is bool (batch, steps, neurons) for every neuron layer; ``v_final`` is
    the readout layer's membrane potential after the last step (batch, neurons).
    """

    spikes: dict[str, np.ndarray]
    v_final: np.ndarray
    readout: str
    vth_scaled: int

    @property
    def counts(self) -> np.ndarray:
        return self.spikes[self.readout].sum(axis=1).astype(np.int64)

    @property
    def scores(self) -> np.ndarray:
        """count * (vth << 6) + v_final: spike count, ties broken by membrane potential.

        With reset by subtraction this equals the total input the readout integrated.
        """
        return self.counts * self.vth_scaled + self.v_final

    @property
    def predictions(self) -> np.ndarray:
        return self.scores.argmax(axis=1)


class Backend(ABC):
    """compile(graph) -> program; run(program, payloads) -> RunResult."""

    name: str = ""

    def lower(self, graph: ir.Graph) -> Network:
        if not graph.is_fixed():
            bad = next(n for n in graph.nodes if not isinstance(n, ir.FIXED_TYPES))
            raise UnsupportedError(
                f"{bad.where()}: backend '{self.name}' runs quantized graphs only; "
                f"convert the model first (spikeforge convert)"
            )
        return lower(graph)

    @abstractmethod
    def compile(self, graph: ir.Graph, **options: Any) -> Any:
        """Build the backend's program for ``graph`` (done once)."""

    @abstractmethod
    def run(self, program: Any, payloads: np.ndarray, sample_offset: int = 0) -> RunResult:
        """Run samples: payloads int (batch, steps, inputs), see spikeforge.encoding.

        ``sample_offset`` is the index of ``payloads[0]`` among all the samples of the user's
        run; it numbers the samples for the stochastic neurons' random streams, so running a
        data set in chunks gives the same spikes as running it whole."""


_REGISTRY: dict[str, str] = {
    "cpu": "spikeforge.backends.cpu:CpuBackend",
    "brian2": "spikeforge.backends.brian2_backend:Brian2Backend",
    "lava": "spikeforge.backends.lava_backend:LavaBackend",
    "loihi": "spikeforge.backends.loihi:LoihiBackend",
}


def register_backend(name: str, target: str) -> None:
    """Register a backend class by dotted path 'package.module:Class'."""
    _REGISTRY[name] = target


def backend_names() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str, **options: Any) -> Backend:
    if name not in _REGISTRY:
        raise SpikeforgeError(f"backend: expected one of {', '.join(_REGISTRY)}, found '{name}'")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)
