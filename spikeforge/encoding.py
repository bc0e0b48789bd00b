"""Input encoding: rates x in [0, 1] -> integer payloads per step, identical for every backend.

Two codes, both sent as graded spikes into the first synapses (Lava's Dense with
``num_message_bits = payload_bits``):

* ``current`` (constant current): payload = round(x * (2**b - 1)) on every input step;
* ``rate`` (Bernoulli/Poisson rate code): payload = (2**b - 1) * Bernoulli(x), seeded;
* recorded spike trains (:func:`encode_spikes`): payload = (2**b - 1) * spike, as given.

The input runs for T steps and is zero for the ``depth`` steps after, so that every layer,
the readout included, integrates exactly T steps of its input (docs/semantics.md).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from spikeforge.errors import DataError
from spikeforge.neuron import uniform_ints

Encoding = Literal["current", "rate"]
ENCODINGS = ("current", "rate")


def encode_spikes(spikes: np.ndarray, timesteps: int, depth: int, payload_max: int) -> np.ndarray:
    """Recorded binary spikes (batch, T, n) -> payloads (batch, timesteps + depth, n), int32: a spike
    is the payload of rate 1 (as the rate code's), its first ``timesteps`` <= T steps."""
    s = np.asarray(spikes)
    if s.ndim != 3:
        raise DataError(f"input spikes: expected a (samples, T, inputs) array, found shape {s.shape}")
    if not 1 <= timesteps <= s.shape[1]:
        raise DataError(f"timesteps: expected 1..{s.shape[1]} (the recorded steps), found {timesteps}")
    if s.size and not np.isin(s, (0, 1)).all():
        raise DataError("input spikes: expected binary values (0 or 1), found others")
    out = np.zeros((s.shape[0], timesteps + depth, s.shape[2]), np.int32)
    out[:, :timesteps] = s[:, :timesteps].astype(np.int32) * payload_max
    return out


#: Mixed into the rate code's seed, so its stream differs from a stochastic layer's of the same seed.
RATE_STREAM = 0x52415445


def encode(x: np.ndarray, timesteps: int, depth: int, payload_max: int,
           encoding: Encoding = "current", seed: int = 0, first_sample: int = 0) -> np.ndarray:
    """x (batch, n) in [0, 1] -> payloads (batch, timesteps + depth, n), int32.

    The rate code fires input i of sample s at step t where
    ``uniform_ints(seed ^ RATE_STREAM, s, t, i, 2**24) < x * 2**24`` (spikeforge.neuron's
    counter-based stream), s = ``first_sample`` + row: encoding a data set in chunks gives
    the same payloads as encoding it whole."""
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
        samples = np.arange(first_sample, first_sample + x.shape[0])
        level = x * float(2**24)
        for t in range(timesteps):
            fire = uniform_ints((int(seed) ^ RATE_STREAM) & (2**64 - 1), samples, t, x.shape[1], 2**24) < level
            out[:, t] = fire * payload_max
    return out
