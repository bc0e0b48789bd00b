"""spikeforge's Lava Processes: Lava's fixed-point CUBA LIF extended with spikeforge's
neuron family (reset to zero, by subtraction or to a value, resting potential, subtractive
leak, refractory period) and a per-sample state reset; a memoryless stochastic neuron with
counter-based draws; an exact fixed-point 2-D convolution; packed spike and window
recorders. (Only Process code here: the Lava
compiler executes every .py file in this folder when it looks for ProcessModels.)"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.proc.lif.process import AbstractLIF

from spikeforge.fixedpoint import DU_NONE
from spikeforge.fixedpoint import RESET_CODES as FP_RESET_CODES

RESET_ZERO = FP_RESET_CODES["zero"]
RESET_SUBTRACT = FP_RESET_CODES["subtract"]
RESET_VALUE = FP_RESET_CODES["value"]
#: spikeforge's reset names -> SpikeforgeLIF's ``reset`` codes.
RESET_CODES = {"zero": RESET_ZERO, "subtract": RESET_SUBTRACT, "value": RESET_VALUE}
#: Spikes packed per recorder word. Var.get sends every element as a float64, exact for
#: integers below 2**53, so a word holds 52 one-bit spikes (stored as int64).
SPIKES_PER_WORD = 52


class SpikeforgeLIF(AbstractLIF):
    """Loihi 2 CUBA LIF in fixed point with spikeforge's neuron family, one step:

        u = wrap24(trunc(u (4096 - du - 1) / 4096) + (a << 6))
        d = leak(trunc((v - v_rest) (4096 - dv) / 4096)),  leak(d) = sign(d) max(|d| - leak, 0)
        v = sat24(v_rest + d + u + (bias_mant << bias_exp))
        while ref > 0: v keeps its old value, ref -= 1, no spike
        s = v > vth << 6 ;  where s: ref = refractory and
            v = 0 (reset 0) | v - (vth << 6) (reset 1) | v_reset (reset 2)

    With v_rest = leak = 0 the u/v update is Lava 0.10's own (``PyLifModelBitAcc``
    arithmetic, ``AbstractPyLifModelFixed.subthr_dynamics``).

    At the first step of every window of ``window`` steps, u and ref are zeroed, v is set to
    ``v_init`` (per neuron, default 0) and the synaptic input is taken as 0, so one long run
    equals fresh-state runs per sample.
    ``v_out`` sends v after reset every step, for the ``readout`` layer only.

    Fields: vth 17-bit unsigned; du, dv 12-bit unsigned; bias_mant 13-bit signed per
    neuron; bias_exp 3-bit unsigned; v_rest, v_reset 24-bit signed; leak 23-bit unsigned;
    refractory 8-bit unsigned; v_init 24-bit signed per neuron; u, v 24-bit signed and ref
    8-bit unsigned state.
    """

    def __init__(self, *, shape: tuple[int, ...], vth: int, du: int = DU_NONE, dv: int = 0,
                 bias_mant: ty.Union[int, np.ndarray] = 0, bias_exp: int = 0,
                 reset: int = RESET_SUBTRACT, v_rest: int = 0, v_reset: int = 0,
                 leak: int = 0, refractory: int = 0, window: int = 1,
                 readout: bool = False, v_init: ty.Union[int, np.ndarray] = 0,
                 name: ty.Optional[str] = None) -> None:
        if int(reset) not in RESET_CODES.values():
            raise ValueError(f"SpikeforgeLIF reset: expected one of "
                             f"{sorted(RESET_CODES.values())}, found {reset!r}")
        super().__init__(shape=shape, u=0, v=v_init, du=int(du), dv=int(dv), bias_mant=bias_mant,
                         bias_exp=int(bias_exp), name=name, log_config=None,
                         vth=int(vth), reset=int(reset), window=int(window),
                         readout=bool(readout))
        self.vth = Var(shape=(1,), init=int(vth))
        self.v_rest = Var(shape=(1,), init=int(v_rest))
        self.v_reset = Var(shape=(1,), init=int(v_reset))
        self.leak = Var(shape=(1,), init=int(leak))
        self.refractory = Var(shape=(1,), init=int(refractory))
        self.ref = Var(shape=shape, init=0)  # refractory steps left
        self.v_init = Var(shape=shape, init=v_init)  # v at the start of every window
        # Always declared (a ProcessModel must match its Process's ports); the model sends
        # on it only when ``readout`` is set, and an unconnected OutPort is allowed.
        self.v_out = OutPort(shape=shape)


class SpikeforgeStochastic(AbstractProcess):
    """Memoryless stochastic neuron (simulation only: no Loihi 2 neuron implements it):

        z = (a << 6) + (bias_mant << bias_exp) ;  s = z > r,  r uniform in [0, vth << 6)

    r = spikeforge.neuron.uniform_ints(seed, sample, step, n, vth << 6), the counter-based
    stream every spikeforge backend draws from: at Lava time step t (1-based) the sample is
    ``sample_offset + (t - 1) // window`` (its index in the batch given to the backend's
    run, whatever the chunking) and the step ``(t - 1) % window``. The synaptic input is
    taken as 0 at each window's first step, as for :class:`SpikeforgeLIF`.

    Fields: vth 17-bit unsigned (>= 1); bias_mant 13-bit signed per neuron; bias_exp 3-bit
    unsigned; seed 32-bit unsigned.
    """

    def __init__(self, *, shape: tuple[int, ...], vth: int,
                 bias_mant: ty.Union[int, np.ndarray] = 0, bias_exp: int = 0, seed: int = 0,
                 window: int = 1, sample_offset: int = 0,
                 name: ty.Optional[str] = None) -> None:
        super().__init__(shape=shape, vth=int(vth), seed=int(seed), window=int(window),
                         sample_offset=int(sample_offset), name=name, log_config=None)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.vth = Var(shape=(1,), init=int(vth))
        self.bias_mant = Var(shape=shape, init=bias_mant)
        self.bias_exp = Var(shape=(1,), init=int(bias_exp))
        self.seed = Var(shape=(1,), init=int(seed))


class SpikeforgeConv(AbstractProcess):
    """Loihi 2 convolutional synapses in fixed point, exact (spikeforge's FixedConv2d):

        acc(t) = conv2d(s(t), w)                          (exact, int64)
        a(t)   = floor(acc(t) * 2**weight_exp)            (an arithmetic shift)
        a_out(t) = a(t - 1)                               (one step of latency, like Dense)

    Lava 0.10's own fixed_pt Conv ignores weight_exp and num_weight_bits, does not clip the
    weights and wraps its output to 24 bits; this process applies the 8-bit mantissas and
    the exponent as spikeforge's cpu backend does. Ports are flat C-order vectors: ``s_in``
    (C_in * H * W,) binary spikes or graded payloads (``num_message_bits`` > 0, values up to
    2**num_message_bits - 1), ``a_out`` (C_out * H_out * W_out,). Geometry as
    :class:`spikeforge.ir.ConvGeometry` (padding top, left, bottom, right); ``weight``
    (C_out, C_in / groups, kH, kW) 8-bit signed mantissas; ``weight_exp`` 4-bit signed.
    ``a_buff`` holds the sum to send on the next step (Var.set to 0 between samples).
    """

    def __init__(self, *, weight: np.ndarray, weight_exp: int, input_shape: tuple[int, int, int],
                 stride: tuple[int, int] = (1, 1), padding: tuple[int, int, int, int] = (0, 0, 0, 0),
                 dilation: tuple[int, int] = (1, 1), groups: int = 1, num_message_bits: int = 0,
                 name: ty.Optional[str] = None) -> None:
        from spikeforge.ir import ConvGeometry

        weight = np.asarray(weight)
        geometry = ConvGeometry(tuple(int(d) for d in input_shape),
                                (int(weight.shape[2]), int(weight.shape[3])),
                                tuple(int(d) for d in stride), tuple(int(d) for d in padding),  # type: ignore[arg-type]
                                tuple(int(d) for d in dilation), int(groups), int(weight.shape[0]))  # type: ignore[arg-type]
        n_in = int(np.prod(geometry.input_shape))
        n_out = int(np.prod(geometry.output_shape))
        super().__init__(geometry=geometry, weight_exp=int(weight_exp),
                         num_message_bits=int(num_message_bits), name=name, log_config=None)
        self.s_in = InPort(shape=(n_in,))
        self.a_out = OutPort(shape=(n_out,))
        self.weight = Var(shape=weight.shape, init=weight.astype(np.int32))
        self.a_buff = Var(shape=(n_out,), init=0)


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
