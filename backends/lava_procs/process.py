"""spikeforge's Lava Process: Lava's fixed-point CUBA LIF with reset by subtraction and a
per-sample state reset (only Process code here: the Lava compiler executes every .py file
in this folder when it looks for ProcessModels)."""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.proc.lif.process import AbstractLIF

RESET_ZERO = 0
RESET_SUBTRACT = 1
#: Spikes packed per recorder word. Var.get sends every element as a float64, exact for
#: integers below 2**53, so a word holds 52 one-bit spikes (stored as int64).
SPIKES_PER_WORD = 52


class SpikeforgeLIF(AbstractLIF):
    """Loihi 2 CUBA LIF in fixed point, one step (Lava 0.10 ``PyLifModelBitAcc`` arithmetic):

        u = wrap24(trunc(u (4096 - du - 1) / 4096) + (a << 6))
        v = sat24(trunc(v (4096 - dv) / 4096) + u + (bias_mant << bias_exp))
        s = v > vth << 6 ;  v = 0 (reset 0, 'zero') | v - (vth << 6) (reset 1, 'subtract')

    At the first step of every window of ``window`` steps, u and v are zeroed and the
    synaptic input is taken as 0, so one long run equals fresh-state runs per sample.
    ``v_out`` sends v after reset every step, for the ``readout`` layer only.

    Fields: vth 17-bit unsigned; du, dv 12-bit unsigned; bias_mant 13-bit signed per
    neuron; bias_exp 3-bit unsigned; u, v 24-bit signed state.
    """

    def __init__(self, *, shape: tuple[int, ...], vth: int, du: int = 4095, dv: int = 0,
                 bias_mant: ty.Union[int, np.ndarray] = 0, bias_exp: int = 0,
                 reset: int = RESET_SUBTRACT, window: int = 1, readout: bool = False,
                 name: ty.Optional[str] = None) -> None:
        super().__init__(shape=shape, u=0, v=0, du=int(du), dv=int(dv), bias_mant=bias_mant,
                         bias_exp=int(bias_exp), name=name, log_config=None,
                         vth=int(vth), reset=int(reset), window=int(window),
                         readout=bool(readout))
        self.vth = Var(shape=(1,), init=int(vth))
        # Always declared (a ProcessModel must match its Process's ports); the model sends
        # on it only when ``readout`` is set, and an unconnected OutPort is allowed.
        self.v_out = OutPort(shape=shape)


class SpikeRecorder(AbstractProcess):
    """Sink for binary spikes, 52 steps packed per int64 word (LSB = earliest step):

        data[i, t // 52] |= (s_i(t) != 0) << (t % 52),   t = time_step - 1

    Reading ``data`` costs one Var.get message per word instead of one per step (about
    30 us each), the bottleneck of a plain ``lava.proc.io.sink.RingBuffer``.
    """

    def __init__(self, *, shape: tuple[int, ...], steps: int) -> None:
        super().__init__(shape=shape, steps=int(steps))
        words = -(-int(steps) // SPIKES_PER_WORD)
        self.a_in = InPort(shape=shape)
        self.data = Var(shape=(int(np.prod(shape)), words), init=0)


class WindowRecorder(AbstractProcess):
    """Sink that keeps its input (e.g. a 24-bit membrane potential) at the last step of
    each window of ``window`` steps: data[i, k] = x_i(k * window + window - 1)."""

    def __init__(self, *, shape: tuple[int, ...], window: int, windows: int) -> None:
        super().__init__(shape=shape, window=int(window), windows=int(windows))
        self.a_in = InPort(shape=shape)
        self.data = Var(shape=(int(np.prod(shape)), int(windows)), init=0)
