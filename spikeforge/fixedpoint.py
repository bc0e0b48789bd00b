"""Loihi 2 fixed point, in one place: bit widths and ranges of every quantized field, the
6-bit MSB alignment of synaptic input and threshold, the 4096 decay scale, the 24-bit state
and the reset codes. The IR validates against :data:`BITS`; the neuron arithmetic, the
passes and every backend take their constants from here (docs/semantics.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from spikeforge.errors import GraphError

#: Synaptic input and threshold are MSB-aligned by 6 bits: u += a << 6; spike if v > vth << 6.
ACT_SHIFT = 6
#: du and dv are 12-bit fractions of 4096: x <- trunc(x (4096 - d) / 4096).
DECAY_UNITY = 4096
DECAY_SHIFT = 12
#: du = 4095: u = a << 6 each step (no current memory), the IF neuron's current.
DU_NONE = DECAY_UNITY - 1
#: u wraps and v saturates at 24 bits signed.
STATE_BITS = 24
STATE_MAX = 2 ** (STATE_BITS - 1)
#: Graded input spikes: payload bits of the Input (8 on Loihi 2), 255 stands for rate 1.
PAYLOAD_BITS = 8
#: Reset names -> the integer codes spikeforge's Lava process model takes.
RESET_CODES: Mapping[str, int] = {"zero": 0, "subtract": 1, "value": 2}
#: The converter's symmetric 8-bit mantissa range: [-127, 127].
W_MAX = 127


@dataclass(frozen=True)
class IntRange:
    """A fixed-point field: ``bits`` wide, values in ``[lo, hi]``."""

    bits: int
    lo: int
    hi: int
    signed: bool

    def check(self, where: str, value: "np.ndarray | int | np.integer") -> None:
        arr = np.asarray(value)
        if arr.size == 0:
            return
        if arr.dtype.kind not in "iu":
            raise GraphError(f"{where}: expected integers, found dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < self.lo or hi > self.hi:
            kind = "signed" if self.signed else "unsigned"
            raise GraphError(
                f"{where}: expected {kind} {self.bits}-bit values in [{self.lo}, {self.hi}], "
                f"found [{lo}, {hi}]"
            )


#: Loihi 2 fixed-point fields as Lava 0.10's bit-accurate models declare them.
BITS: Mapping[str, IntRange] = {
    # Weight mantissa: 8 bits signed. Lava is given 2*w with weight_exp - 1 so that no bit is lost.
    "weight": IntRange(8, -128, 127, True),
    "weight_exp": IntRange(4, -8, 7, True),
    "vth": IntRange(17, 0, 2**17 - 1, False),
    "du": IntRange(12, 0, DECAY_UNITY - 1, False),
    "dv": IntRange(12, 0, DECAY_UNITY - 1, False),
    "bias_mant": IntRange(13, -4096, 4095, True),
    "bias_exp": IntRange(3, 0, 7, False),
    "refractory": IntRange(8, 0, 255, False),
    "leak": IntRange(23, 0, 2**23 - 1, False),
    "v_rest": IntRange(24, -STATE_MAX + 1, STATE_MAX - 1, True),
    "v_reset": IntRange(24, -STATE_MAX + 1, STATE_MAX - 1, True),
    "seed": IntRange(32, 0, 2**32 - 1, False),
    "payload": IntRange(8, 0, 2**PAYLOAD_BITS - 1, False),
    # State: v saturates at 24 bits signed; u wraps once as Lava does (x > 2**23 loses 2**24,
    # then x <= -2**23 gains 2**24), so an input far beyond 24 bits can leave u outside them.
    "state": IntRange(24, -STATE_MAX + 1, STATE_MAX - 1, True),
}


def act_to_state(a: float) -> float:
    """Synaptic input (or threshold) units -> state units: x << 6."""
    return a * (1 << ACT_SHIFT)


def dv_for_tau(tau: float) -> int:
    """The 12-bit voltage decay of a time constant of ``tau`` steps: round(4096 / tau) (0 for inf)."""
    import math

    if not math.isfinite(tau):
        return 0
    return int(min(max(round(DECAY_UNITY / tau), 0), DECAY_UNITY - 1))


def tau_for_decay(d: int) -> float:
    """The time constant (steps) of a 12-bit decay d: 4096 / d (inf for 0)."""
    return DECAY_UNITY / d if d else float("inf")
