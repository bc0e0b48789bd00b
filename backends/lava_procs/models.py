"""fixed_pt ProcessModels of spikeforge's Lava Processes (only ProcessModel code here).

:class:`PySpikeforgeLIFModelFixed` reuses Lava's own LIF arithmetic
(``AbstractPyLifModelFixed.subthr_dynamics`` and ``scale_bias``) and adds spikeforge's
reset modes, resting potential, subtractive leak, refractory period and per-window state
reset; :class:`PySpikeforgeStochasticModel` is spikeforge's own simulation model of a
memoryless stochastic neuron (no Loihi 2 counterpart); :class:`PySpikeforgeConvModel`
computes spikeforge's exact fixed-point convolution with ``spikeforge.conv``."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import AbstractPyLifModelFixed

from spikeforge.backends.lava_procs.process import (RESET_SUBTRACT, RESET_VALUE,
                                                    SPIKES_PER_WORD, SpikeforgeConv,
                                                    SpikeforgeLIF, SpikeforgeStochastic,
                                                    SpikeRecorder, WindowRecorder)
from spikeforge import progress
from spikeforge.fixedpoint import ACT_SHIFT
from spikeforge.neuron import shift, uniform_ints


@implements(proc=SpikeforgeLIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PySpikeforgeLIFModelFixed(AbstractPyLifModelFixed):
    """Per step: a = a_in (0 at a window's first step, where u = ref = 0 and v = v_init first);
    ``subthr_dynamics(a)`` (Lava's u/v update, 24-bit), v recomputed toward v_rest with
    the subtractive leak when either is set; v held and ref counted down where ref > 0;
    s = v > vth << 6 (not while held); ref = refractory and reset where s; send s (and v
    after reset on ``v_out`` for the readout layer)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int16, precision=16)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    v_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    vth: int = LavaPyType(int, np.int32, precision=17)
    v_rest: int = LavaPyType(int, np.int32, precision=24)
    v_reset: int = LavaPyType(int, np.int32, precision=24)
    leak: int = LavaPyType(int, np.int32, precision=23)
    refractory: int = LavaPyType(int, np.int32, precision=8)
    ref: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    v_init: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        self.window: int = int(proc_params["window"])
        self.reset: int = int(proc_params["reset"])
        self.readout: bool = bool(proc_params["readout"])
        self.effective_vth = 0

    def scale_threshold(self) -> None:
        """vth (17-bit) << 6, MSB-aligned with the 24-bit state as Loihi does."""
        self.effective_vth = np.left_shift(self.vth, self.vth_shift)
        self.isthrscaled = True

    def spiking_activation(self) -> np.ndarray:
        return self.v > self.effective_vth

    def voltage_toward_rest(self, v_old: np.ndarray) -> np.ndarray:
        """v = sat24(v_rest + leak(trunc((v_old - v_rest) (4096 - dv) / 4096)) + u + bias),
        in int64 (v_old - v_rest spans 25 bits, its product with the decay 37), with Lava's
        rounding toward zero (sign * (|x| >> 12)) and u as Lava's current update left it."""
        decay_const_v = self.dv + self.dm_offset
        x = v_old.astype(np.int64) - np.int64(self.v_rest)
        decayed = x * (self.decay_unity - decay_const_v)
        decayed = np.sign(decayed) * np.right_shift(np.abs(decayed), self.decay_shift)
        if self.leak:
            decayed = np.sign(decayed) * np.maximum(np.abs(decayed) - np.int64(self.leak), 0)
        updated = (np.int64(self.v_rest) + decayed + self.u.astype(np.int64)
                   + np.asarray(self.effective_bias, np.int64))
        return np.clip(updated, -self.max_uv_val + 1, self.max_uv_val - 1)

    def reset_voltage(self, spike_vector: np.ndarray) -> None:
        if self.reset == RESET_SUBTRACT:
            self.v[spike_vector] -= self.effective_vth
        elif self.reset == RESET_VALUE:
            self.v[spike_vector] = self.v_reset
        else:
            self.v[spike_vector] = 0

    def run_spk(self) -> None:
        a_in = self.a_in.recv()
        if (self.time_step - 1) % self.window == 0:
            # new sample: fresh state, and drop the Dense buffers left by the previous one
            self.u[:] = 0
            self.v[:] = self.v_init
            self.ref[:] = 0
            a_in = np.zeros_like(a_in)
        self.scale_bias()
        if not self.isthrscaled:
            self.scale_threshold()
        v_old = self.v.copy()
        # Lava's u update (and, with v_rest = leak = 0, its v update as well)
        self.subthr_dynamics(activation_in=a_in)
        if self.v_rest or self.leak:
            self.v[:] = self.voltage_toward_rest(v_old)
        held = None
        if self.refractory:
            held = self.ref > 0
            self.v[held] = v_old[held]
            self.ref[held] -= 1
        spikes = self.spiking_activation()
        if held is not None:
            spikes &= ~held
            self.ref[spikes] = self.refractory
        self.reset_voltage(spikes)
        self.s_out.send(spikes)
        if self.readout:
            self.v_out.send(self.v)


@implements(proc=SpikeforgeStochastic, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeforgeStochasticModel(PyLoihiProcessModel):
    """Per step t (1-based): sample = sample_offset + (t - 1) // window, step = (t - 1) %
    window; a = a_in (0 at step 0); z = (a << 6) + (bias_mant << bias_exp) in int64;
    s = z > uniform_ints(seed, [sample], step, n, vth << 6)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    vth: int = LavaPyType(int, np.int32, precision=17)
    bias_mant: np.ndarray = LavaPyType(np.ndarray, np.int16, precision=13)
    bias_exp: int = LavaPyType(int, np.int16, precision=3)
    seed: int = LavaPyType(int, np.int64, precision=32)

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        self.window: int = int(proc_params["window"])
        self.sample_offset: int = int(proc_params["sample_offset"])

    def run_spk(self) -> None:
        a_in = self.a_in.recv()
        sample, step = divmod(self.time_step - 1, self.window)
        if step == 0:
            a_in = np.zeros_like(a_in)  # new sample: drop the previous one's Dense buffers
        z = (np.left_shift(a_in.astype(np.int64), 6)
             + np.left_shift(self.bias_mant.astype(np.int64), int(self.bias_exp)))
        n = z.shape[0]
        r = uniform_ints(int(self.seed), np.array([self.sample_offset + sample]), step, n,
                         int(self.vth) << ACT_SHIFT)[0]
        self.s_out.send(z > r)


@implements(proc=SpikeforgeConv, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "bit_accurate_loihi")
class PySpikeforgeConvModel(PyLoihiProcessModel):
    """Per step: send a_buff (the previous step's sum); s = s_in; a_buff = floor(conv2d(s, w)
    * 2**weight_exp), the integer sum exact in int64 (spikeforge.conv.conv2d_int, as the
    cpu backend computes it). The lava backend checks before building that |a| fits int32
    and the LIF's a << 6 (lava_backend.int32_violations)."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    a_buff: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    weight: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        self.geometry = proc_params["geometry"]
        self.weight_exp: int = int(proc_params["weight_exp"])
        bits = int(proc_params["num_message_bits"])
        self.max_input: int = 2**bits - 1 if bits else 1
        import torch

        # a forked process model: one thread (no oversubscription, no forked OpenMP pool)
        torch.set_num_threads(1)

    def run_spk(self) -> None:
        from spikeforge.conv import conv2d_int

        self.a_out.send(self.a_buff)
        s = self.s_in.recv().astype(np.int64).reshape(1, -1)
        acc = conv2d_int(s, self.weight.astype(np.int64), self.geometry, self.max_input)[0]
        self.a_buff = shift(acc, self.weight_exp).astype(np.int32)


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
            if progress.counter is not None:  # samples done, for the parent's progress bar
                progress.counter[0] = self.time_step // self.window
