"""Recurrent LIF layer for sequences: digits read row by row, trained through its rate model.

The task: an 8x8 digit is a sequence of 8 items, its rows (8 pixels each, rates in [0, 1]).
On the chip each item is presented for ``S`` steps (``steps_per_item``) as graded payloads
``p = round(255 x)`` (:func:`sequence_payloads`), so a sample runs ``P = 8 S + DEPTH`` steps
with ``DEPTH = 2`` (input -> hidden -> readout). The spiking network (:func:`to_graph`)::

    input(8) -> ff -> hidden LIF(H, tau, threshold 1, reset by subtraction) -> out -> readout IF(10)
                      hidden -> rec -> hidden            (recurrent weights on spikes)

Timing is spikeforge's (docs/semantics.md): every projection delays by one step and every
layer updates on every step ``t = 0 .. P-1`` from the previous step's outputs.
With ``x_t`` the row presented on step t (``x_t = row[t // S]`` for t < 8 S, 0 after;
``x_{-1} = s_{-1} = 0``, ``v_{-1} = 0``), the hidden layer computes

    I_t = tau (W x_{t-1} + R s_{t-1} + b)                    the LIF's input current
    v_t = (1 - 1/tau) v_{t-1} + I_t / tau                    = (1 - 1/tau) v_{t-1} + W x_{t-1} + R s_{t-1} + b
    s_t = f(v_t);   v_t <- v_t - theta s_t                   (reset by subtraction of the (expected) spike)

This is the IR's LIF (``v_leak = 0``, ``r = 1``): the issue's ``V_t = (1 - g_l/tau) V_{t-1} +
(g_l/tau) V_l + I_t/tau`` with ``g_l = 1`` and ``V_l = 0`` (a resting level ``V_l`` is the
same as a bias). The trainable maps ``W, R, b`` are stored per step (``I_t / tau``): the IR's
Affine maps are ``tau`` times them, which keeps the optimizer's scale independent of tau.

The readout is a non-leaky IF layer (reset by subtraction; its threshold, :func:`readout_threshold`,
only scales the integer score so that it cannot saturate). Its score on the chip
(spike count times threshold plus final potential) is exactly the input it integrated, so the
dense models use the matching readout, the mean over the run of its per-step input::

    logits = (1/P) sum_{t=0}^{P-1} (W_out s_{t-1} + b_out)

``f`` is what distinguishes the models (same architecture, same parameters):

* :class:`RecurrentLIFRate`, the rate (expectation) model: ``s_t = clip((v_t - c theta) / theta, 0, 1)``
  with ``c = residual`` (default 1/2). With ``c = 0`` this is "emit the whole charge as a
  fraction of a spike"; a spiking neuron with reset by subtraction keeps a residual charge in
  ``[0, theta)`` instead, whose mean is about ``theta / 2`` if its phase is uniform: its spike
  count after integrating V is ``floor(V / theta)``, with expectation ``V / theta - 1/2``, and
  that residual leaks ``theta / (2 tau)`` per step. ``c = 1/2`` keeps exactly that expected
  residual in the membrane (where it leaks as in the spiking neuron) and emits the rest, and a
  neuron whose membrane stays below ``theta / 2`` emits nothing (the leak wins), so it is the
  closer expectation of the spiking LIF; both are measured in examples/sequence_lif.py.
* :class:`RecurrentLIFSurrogate`: the spiking network itself (float), ``s_t = H(v_t - theta)``
  (strict, as on the chip), trained with a fast-sigmoid surrogate derivative
  ``1 / (1 + k |v - theta|)^2`` and the reset detached from the graph.

:class:`VanillaRNN` (``torch.nn.RNN``, tanh or relu, same hidden size) reads the 8 rows as
8 steps and classifies from the last hidden state: the usual sequence baseline.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from spikeforge import ir
from spikeforge.data import Dataset
from spikeforge.errors import DataError
from spikeforge.models.train import fit_classifier

ROWS = 8  #: sequence items per digit (its rows)
ROW_LEN = 8  #: features per item (pixels per row)
DEPTH = 2  #: projections from the input to the readout (input -> hidden -> readout)
PAYLOAD_MAX = 255  #: 8-bit graded payloads

Kind = Literal["rate", "surrogate", "rnn"]
KINDS = ("rate", "surrogate", "rnn")


# -- inputs -------------------------------------------------------------------------------------
def _rows(x: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = arr.astype(np.float64).reshape(len(arr), -1)
    if arr.shape[1] != ROWS * ROW_LEN:
        raise DataError(f"sequence input: expected {ROWS}x{ROW_LEN} = {ROWS * ROW_LEN} values per sample, "
                        f"found {arr.shape[1]}")
    if arr.size and (arr.min() < 0 or arr.max() > 1 or not np.isfinite(arr).all()):
        raise DataError(f"sequence input: expected rates in [0, 1], found [{arr.min():.4g}, {arr.max():.4g}]")
    return arr.reshape(len(arr), ROWS, ROW_LEN)


def sequence_payloads(x_rows: np.ndarray, steps_per_item: int, depth: int = DEPTH) -> np.ndarray:
    """x_rows (n, 8, 8) (or (n, 64)) rates in [0, 1] -> int32 payloads (n, 8 S + depth, 8).

    Row k is sent as ``round(255 x)`` on steps ``k S .. k S + S - 1``; the last ``depth`` steps
    carry zeros so that the readout integrates exactly 8 S steps of its input."""
    S = int(steps_per_item)
    if S < 1 or depth < 0:
        raise DataError(f"sequence payloads: expected steps_per_item >= 1 and depth >= 0, found {S}, {depth}")
    rows = np.rint(_rows(x_rows) * PAYLOAD_MAX).astype(np.int32)
    out = np.zeros((len(rows), ROWS * S + depth, ROW_LEN), np.int32)
    out[:, :ROWS * S] = np.repeat(rows, S, axis=1)
    return out


def _step_inputs(x: torch.Tensor, steps_per_item: int) -> torch.Tensor:
    """Rows (batch, 8, 8) or (batch, 64) -> per-step inputs (8 S, batch, 8) as the chip sees
    them: round(255 x) / 255 (the graded payload), row k on steps k S .. k S + S - 1."""
    x = x.reshape(x.shape[0], ROWS, ROW_LEN).to(torch.float32)
    x = torch.round(x * PAYLOAD_MAX) / PAYLOAD_MAX
    return x.repeat_interleave(int(steps_per_item), dim=1).transpose(0, 1)


# -- models ---------------------------------------------------------------------------------------
class RecurrentLIFRate(nn.Module):
    """The recurrent LIF network's rate (expectation) model with the chip's timing (module doc).

    ``ff`` = W (8 -> H, bias b), ``rec`` = R (H -> H, no bias; absent if ``recurrent=False``,
    the non-recurrent baseline), ``readout`` = W_out (H -> classes, bias b_out): all per step
    (the LIF's current is tau times ``ff + rec``). ``residual`` is c of
    ``s = clip((v - c theta) / theta, 0, 1)``.
    """

    kind = "rate"

    def __init__(self, hidden: int = 64, tau: float = 16.0, steps_per_item: int = 4, classes: int = 10,
                 threshold: float = 1.0, recurrent: bool = True, residual: float = 0.5,
                 rec_scale: float = 0.5) -> None:
        super().__init__()
        if int(hidden) < 1 or int(classes) < 1 or int(steps_per_item) < 1:
            raise ValueError(f"{type(self).__name__}: expected hidden, classes, steps_per_item >= 1, found "
                             f"{hidden}, {classes}, {steps_per_item}")
        if not float(tau) >= 1 or not float(threshold) > 0 or not 0 <= float(residual) < 1:
            raise ValueError(f"{type(self).__name__}: expected tau >= 1, threshold > 0, residual in [0, 1), "
                             f"found {tau}, {threshold}, {residual}")
        self.hidden = int(hidden)
        self.tau = float(tau)
        self.steps_per_item = int(steps_per_item)
        self.classes = int(classes)
        self.threshold = float(threshold)
        self.recurrent = bool(recurrent)
        self.residual = float(residual)
        self.ff = nn.Linear(ROW_LEN, self.hidden)
        self.rec = nn.Linear(self.hidden, self.hidden, bias=False) if self.recurrent else None
        self.readout = nn.Linear(self.hidden, self.classes)
        if self.rec is not None:
            with torch.no_grad():
                self.rec.weight.mul_(float(rec_scale))

    @property
    def steps(self) -> int:
        """P = 8 S + DEPTH, the steps of one sample on the chip."""
        return ROWS * self.steps_per_item + DEPTH

    def activation(self, v: torch.Tensor) -> torch.Tensor:
        """Expected spikes of this step: clip((v - c theta) / theta, 0, 1)."""
        return torch.clamp((v - self.residual * self.threshold) / self.threshold, 0.0, 1.0)

    def reset_term(self, s: torch.Tensor) -> torch.Tensor:
        return s

    def _run(self, x: torch.Tensor, keep: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        xs = _step_inputs(x, self.steps_per_item)  # (8 S, batch, 8)
        batch, P = xs.shape[1], self.steps
        decay = 1.0 - 1.0 / self.tau
        v = xs.new_zeros(batch, self.hidden)
        s = xs.new_zeros(batch, self.hidden)  # s_{t-1}
        x_prev = xs.new_zeros(batch, ROW_LEN)  # x_{t-1}
        total = xs.new_zeros(batch, self.hidden)  # sum_t s_{t-1} for the readout
        vs, ss = [], []
        for t in range(P - 1):  # the readout sees hidden steps 0 .. P-2
            drive = self.ff(x_prev)
            if self.rec is not None:
                drive = drive + self.rec(s)
            v = decay * v + drive
            s = self.activation(v)
            v = v - self.threshold * self.reset_term(s)
            total = total + s
            x_prev = xs[t] if t < xs.shape[0] else torch.zeros_like(x_prev)
            if keep:
                vs.append(v)
                ss.append(s)
        # sum_{t=0}^{P-1} (W_out s_{t-1} + b_out) / P, with s_{-1} = 0
        logits = (total @ self.readout.weight.T) / P + self.readout.bias
        hist = {"v": torch.stack(vs), "s": torch.stack(ss)} if keep else {}
        return logits, hist

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, 8, 8) or (batch, 64), rates in [0, 1] -> logits (batch, classes)."""
        return self._run(x)[0]

    @torch.no_grad()
    def trajectory(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hidden ``v`` (after reset) and ``s`` on steps 0 .. P-2, each (P-1, batch, H)."""
        return self._run(torch.as_tensor(x, dtype=torch.float32), keep=True)[1]

    def config(self) -> dict[str, Any]:
        return dict(hidden=self.hidden, tau=self.tau, steps_per_item=self.steps_per_item, classes=self.classes,
                    threshold=self.threshold, recurrent=self.recurrent, residual=self.residual)


class _SpikeFn(torch.autograd.Function):
    """Heaviside H(z) forward (z > 0, strict), fast-sigmoid derivative 1 / (1 + k |z|)^2 backward."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, slope: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.slope = slope
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return grad / (1.0 + ctx.slope * z.abs()) ** 2, None


class RecurrentLIFSurrogate(RecurrentLIFRate):
    """The same architecture run as a spiking network (float): ``s = H(v - theta)``, reset by
    subtraction of the spike; trained with the fast-sigmoid surrogate of slope ``slope`` (per
    threshold) and the reset detached. Its forward is the float version of the chip's network."""

    kind = "surrogate"

    def __init__(self, *args: Any, slope: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slope = float(slope)

    def activation(self, v: torch.Tensor) -> torch.Tensor:
        return _SpikeFn.apply((v - self.threshold) / self.threshold, self.slope)

    def reset_term(self, s: torch.Tensor) -> torch.Tensor:
        return s.detach()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "slope": self.slope}


def spiking_copy(model: RecurrentLIFRate) -> RecurrentLIFSurrogate:
    """A float spiking network (Heaviside, reset by subtraction) with ``model``'s parameters:
    what the chip runs before quantization."""
    cfg = {k: v for k, v in model.config().items() if k != "slope"}
    net = RecurrentLIFSurrogate(**cfg)
    net.load_state_dict(copy.deepcopy(model.state_dict()))
    return net.eval()


class VanillaRNN(nn.Module):
    """torch.nn.RNN over the 8 rows (one row per step), tanh or relu, then a linear map of the
    last hidden state, logits = W_out h_8 + b_out (``readout="last"``, the usual choice), or of
    the mean hidden state over the 8 steps (``readout="mean"``, the LIF network's readout)."""

    kind = "rnn"

    def __init__(self, hidden: int = 64, classes: int = 10, nonlinearity: str = "tanh",
                 readout: str = "last") -> None:
        super().__init__()
        if readout not in ("last", "mean"):
            raise ValueError(f"VanillaRNN: readout expected 'last' or 'mean', found {readout!r}")
        self.hidden = int(hidden)
        self.classes = int(classes)
        self.mode = readout
        self.rnn = nn.RNN(ROW_LEN, self.hidden, nonlinearity=nonlinearity, batch_first=True)
        self.readout = nn.Linear(self.hidden, self.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], ROWS, ROW_LEN).to(torch.float32)
        out, _ = self.rnn(x)
        return self.readout(out[:, -1] if self.mode == "last" else out.mean(dim=1))

    def config(self) -> dict[str, Any]:
        return dict(hidden=self.hidden, classes=self.classes, nonlinearity=self.rnn.nonlinearity,
                    readout=self.mode)


# -- training --------------------------------------------------------------------------------------
def build(kind: Kind, **options: Any) -> nn.Module:
    """A fresh model: ``"rate"`` (RecurrentLIFRate), ``"surrogate"`` (RecurrentLIFSurrogate) or
    ``"rnn"`` (VanillaRNN; options hidden, classes, nonlinearity)."""
    if kind == "rate":
        return RecurrentLIFRate(**options)
    if kind == "surrogate":
        return RecurrentLIFSurrogate(**options)
    if kind == "rnn":
        return VanillaRNN(**options)
    raise DataError(f"sequence model: expected one of {KINDS}, found {kind!r}")


def train_sequence(kind: Kind, train: Dataset, epochs: int = 40, lr: float = 3e-3, seed: int = 0,
                   weight_decay: float = 1e-4, batch_size: int = 64, val: Dataset | None = None,
                   val_fraction: float = 0.1, threads: int | None = 1,
                   **options: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Train a sequence model on ``train`` (8x8 digits; rows are the items) by backpropagation
    through time (plain autograd): Adam on cross-entropy, minibatch, cosine learning-rate decay,
    CPU only, deterministic for a given seed (the conventions of ``models.train.train_mlp``;
    ``threads`` as there). ``options`` go to the model (see :func:`build`). Returns the model
    (eval mode) and info: kind, train_accuracy, val_accuracy, seconds, epochs, final_loss,
    n_train, n_val, seed, config."""
    if train.features != ROWS * ROW_LEN:
        raise DataError(f"train_sequence: expected {ROWS}x{ROW_LEN} images, found {train.features} features")
    classes = options.pop("classes", None)
    model, info = fit_classifier(lambda fit, n_classes: build(kind, classes=n_classes, **options), train,
                                 who="train_sequence", epochs=epochs, lr=lr, seed=seed,
                                 weight_decay=weight_decay, batch_size=batch_size, val=val,
                                 val_fraction=val_fraction, classes=classes, threads=threads)
    info.update(kind=kind, config=model.config())
    return model, info


# -- export and conversion ----------------------------------------------------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


#: The readout's integral, in thresholds, stays below this (with the quantizer's vth < 2048,
#: 48 thresholds are 48 * 2047 * 64 < 2**23 state units, with room for rounding).
READOUT_RANGE = 48


def readout_threshold(model: RecurrentLIFRate) -> float:
    """The readout IF's threshold: ``max(1, P max_i (sum_j |W_out_ij| + |b_out_i|) / 48)``.

    The readout's score is the total input it integrated, at most P (sum_j |W_out_ij| +
    |b_out_i|) in magnitude (spikes are 0/1). The quantizer puts vth (in [1024, 2048)) at this
    threshold, so the score stays below 48 thresholds, inside the 24-bit membrane: it can
    neither saturate nor wrap, for any input. Its value does not change the weights' 8-bit
    precision (the quantizer uses the full range whatever the threshold), only the exponent."""
    w = model.readout.weight.detach().abs().sum(dim=1) + model.readout.bias.detach().abs()
    return max(1.0, float(model.steps * w.max()) / READOUT_RANGE)


def to_graph(model: RecurrentLIFRate) -> ir.Graph:
    """The spiking network as a float IR graph (the same for the rate and surrogate models)::

        input(8) -> ff -> hidden -> out -> readout -> output
        hidden -> rec -> hidden                      (if the model is recurrent)

    ``ff``/``rec`` are Affine with ``tau`` times the model's per-step maps (the LIF's current
    I_t), ``hidden`` is LIF(tau, v_threshold=theta, reset='subtract', v_leak=0, r=1),
    ``out`` is Affine(W_out, b_out) and ``readout`` IF(:func:`readout_threshold`, reset
    'subtract'). :func:`spikeforge.converter.passes.quantize` maps it to fixed point with
    ``dv = round(4096 / tau)`` (exact when tau divides 4096: 4, 8, 16, 32, ...).
    Metadata: ``{"arch": "sequence", "steps_per_item": S, "depth": 2, "tau": tau}``."""
    H, tau = model.hidden, model.tau
    theta_out = readout_threshold(model)
    nodes: list[ir.Node] = [
        ir.Input("input", (ROW_LEN,)),
        ir.Affine("ff", tau * _np(model.ff.weight), tau * _np(model.ff.bias)),
        ir.LIF("hidden", H, tau=tau, v_threshold=model.threshold, reset="subtract"),
        ir.Affine("out", _np(model.readout.weight), _np(model.readout.bias)),
        ir.IF("readout", model.classes, v_threshold=theta_out, reset="subtract"),
        ir.Output("output", (model.classes,)),
    ]
    edges = [("input", "ff"), ("ff", "hidden"), ("hidden", "out"), ("out", "readout"), ("readout", "output")]
    if model.rec is not None:
        nodes.insert(3, ir.Affine("rec", tau * _np(model.rec.weight), np.zeros(H)))
        edges += [("hidden", "rec"), ("rec", "hidden")]
    meta = {"arch": "sequence", "steps_per_item": model.steps_per_item, "depth": DEPTH, "tau": tau}
    return ir.Graph(tuple(nodes), tuple(edges), meta)


def to_fixed_graph(model: RecurrentLIFRate) -> ir.Graph:
    """:func:`to_graph` quantized by ``spikeforge.converter.passes.quantize`` (Loihi 2 fixed point)."""
    from spikeforge.converter.passes import quantize

    return quantize(to_graph(model))


def run_spiking(graph: ir.Graph, x_rows: np.ndarray, steps_per_item: int, backend: str = "cpu",
                **options: Any):
    """Run the quantized ``graph`` on ``backend`` for the sequence payloads of ``x_rows``;
    returns the backend's RunResult (predictions = argmax of the readout scores)."""
    from spikeforge.backends import get_backend

    be = get_backend(backend, **options)
    return be.run(be.compile(graph), sequence_payloads(x_rows, steps_per_item))
