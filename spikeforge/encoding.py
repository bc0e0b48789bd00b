"""Input encoding: rates x in [0, 1] -> integer payloads per step, identical for every backend.

Two codes, both sent as graded spikes into the first synapses (Lava's Dense with
``num_message_bits = payload_bits``):

* ``current`` (constant current): payload = round(x * (2**b - 1)) on every input step;
* ``rate`` (Bernoulli/Poisson rate code): payload = (2**b - 1) * Bernoulli(x), seeded.

The input runs for T steps and is zero for the ``depth`` steps after, so that every layer,
the readout included, integrates exactly T steps of its input (docs/semantics.md).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from spikeforge.errors import DataError

Encoding = Literal["current", "rate"]
ENCODINGS = ("current", "rate")


def encode(x: np.ndarray, timesteps: int, depth: int, payload_max: int,
           encoding: Encoding = "current", seed: int = 0) -> np.ndarray:
    """x (batch, n) in [0, 1] -> payloads (batch, timesteps + depth, n), int32."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"input: expected a (samples, features) array, found shape {x.shape}")
    if x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1 or np.isnan(x).any()):
        raise DataError(f"input: expected values in [0, 1], found [{np.nanmin(x):.4g}, {np.nanmax(x):.4g}]")
    if timesteps < 1:
        raise DataError(f"timesteps: expected >= 1, found {timesteps}")
    if encoding not in ENCODINGS:
        raise DataError(f"encoding: expected one of {ENCODINGS}, found {encoding!r}")
    out = np.zeros((x.shape[0], timesteps + depth, x.shape[1]), np.int32)
    if encoding == "current":
        out[:, :timesteps] = np.rint(x * payload_max).astype(np.int32)[:, None, :]
    else:
        rng = np.random.default_rng(seed)
        fire = rng.random((x.shape[0], timesteps, x.shape[1])) < x[:, None, :]
        out[:, :timesteps] = fire * payload_max
    return out
