"""Backends: cpu (vectorized integer oracle), brian2 (independent reference), lava (Loihi 2
bit-accurate simulation) and loihi (hardware, where lava-loihi is installed)."""

from spikeforge.backends.base import Backend, RunResult, backend_names, get_backend, register_backend

__all__ = ["Backend", "RunResult", "backend_names", "get_backend", "register_backend"]
