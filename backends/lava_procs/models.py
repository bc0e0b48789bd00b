"""fixed_pt ProcessModel of :class:`SpikeforgeLIF`: Lava's own LIF arithmetic
(``AbstractPyLifModelFixed.subthr_dynamics`` and ``scale_bias``) with spikeforge's reset
modes and per-window state reset (only ProcessModel code here)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import AbstractPyLifModelFixed

from spikeforge.backends.lava_procs.process import (RESET_SUBTRACT, SPIKES_PER_WORD,
                                                    SpikeforgeLIF, SpikeRecorder,
                                                    WindowRecorder)


@implements(proc=SpikeforgeLIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PySpikeforgeLIFModelFixed(AbstractPyLifModelFixed):
    """Per step: a = a_in (0 at a window's first step, where u = v = 0 first);
    ``subthr_dynamics(a)`` (Lava's u/v update, 24-bit); s = v > vth << 6; reset; send s
    (and v after reset on ``v_out`` for the readout layer)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int16, precision=16)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    v_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    vth: int = LavaPyType(int, np.int32, precision=17)

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        self.window: int = int(proc_params["window"])
        self.subtract: bool = int(proc_params["reset"]) == RESET_SUBTRACT
        self.readout: bool = bool(proc_params["readout"])
        self.effective_vth = 0

    def scale_threshold(self) -> None:
        """vth (17-bit) << 6, MSB-aligned with the 24-bit state as Loihi does."""
        self.effective_vth = np.left_shift(self.vth, self.vth_shift)
        self.isthrscaled = True

    def spiking_activation(self) -> np.ndarray:
        return self.v > self.effective_vth

    def reset_voltage(self, spike_vector: np.ndarray) -> None:
        if self.subtract:
            self.v[spike_vector] -= self.effective_vth
        else:
            self.v[spike_vector] = 0

    def run_spk(self) -> None:
        a_in = self.a_in.recv()
        if (self.time_step - 1) % self.window == 0:
            # new sample: fresh state, and drop the Dense buffers left by the previous one
            self.u[:] = 0
            self.v[:] = 0
            a_in = np.zeros_like(a_in)
        self.scale_bias()
        if not self.isthrscaled:
            self.scale_threshold()
        self.subthr_dynamics(activation_in=a_in)
        spikes = self.spiking_activation()
        self.reset_voltage(spikes)
        self.s_out.send(spikes)
        if self.readout:
            self.v_out.send(self.v)


@implements(proc=SpikeRecorder, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeRecorderModel(PyLoihiProcessModel):
    """data[:, t // 52] |= (s(t) != 0) << (t % 52), int64 words."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)
    data: np.ndarray = LavaPyType(np.ndarray, np.int64)

    def run_spk(self) -> None:
        s = self.a_in.recv()
        word, bit = divmod(self.time_step - 1, SPIKES_PER_WORD)
        self.data[:, word] |= (s.reshape(-1) != 0).astype(np.int64) << bit


@implements(proc=WindowRecorder, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyWindowRecorderModel(PyLoihiProcessModel):
    """data[:, k] = x at the last step of window k (int32, e.g. 24-bit v)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)
    data: np.ndarray = LavaPyType(np.ndarray, np.int32)

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        self.window: int = int(proc_params["window"])

    def run_spk(self) -> None:
        x = self.a_in.recv()
        if self.time_step % self.window == 0:
            self.data[:, self.time_step // self.window - 1] = x.reshape(-1)
