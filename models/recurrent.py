"""Recurrent rate network with the chip's timing: every connection carries one step of delay.

spikeforge reads a clipped ReLU unit as the time average of a spiking neuron. On the chip all
layers update synchronously and every synapse delays by exactly one step, so the dense model
that is trained here uses the same timing. With ``x`` presented at every iteration, hidden
states ``h_l[0] = 0`` and iterations ``k = 1..K``::

    h_0[k] = x                                                     (every k, including k = 0)
    h_l[k] = clip(W_l h_{l-1}[k-1] + R_l h_l[k-1] + F_l h_{l+1}[k-1] + b_l, 0, 1)
    y[k]   = O h_L[k-1] + b_O
    logits = mean_{k=1..K} y[k]

``R_l`` is a full square matrix (self plus lateral recurrence, no bias); ``F_l`` (l < L, only
with ``feedback=True``) is top-down feedback from layer l+1 (no bias). :func:`to_graph` writes
the network as a spikeforge IR ANN graph with recurrent edges, which
``spikeforge.converter.ann.forward(graph, x, iterations=K)`` evaluates with the same semantics.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence, cast

import numpy as np
import torch
from torch import nn

from spikeforge import graphio, ir
from spikeforge.data import Dataset
from spikeforge.errors import DataError
from spikeforge.models.train import fit_classifier


class RecurrentRateNet(nn.Module):
    """Hidden layers with self/lateral recurrence and optional top-down feedback, unrolled for
    ``iterations`` synchronous steps (one step of delay on every connection); see the module doc.

    Parameters: ``ff[l]`` = W_{l+1} (Linear with bias), ``rec[l]`` = R_{l+1} (square, no bias),
    ``fb[l]`` = F_{l+1} from layer l+2 (no bias; only if ``feedback`` and L >= 2), ``readout`` = O.
    ``in_shape`` is the per-sample input shape (for the IR's Input node); inputs of shape
    (batch, *in_shape) or (batch, features) are accepted.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (128,), classes: int = 10,
                 iterations: int = 12, feedback: bool = True,
                 in_shape: Sequence[int] | None = None, rec_scale: float = 0.5) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if int(in_features) <= 0 or int(classes) <= 0 or not hidden or any(h <= 0 for h in hidden):
            raise ValueError(f"RecurrentRateNet: expected positive sizes and at least one hidden layer, "
                             f"found in_features={in_features}, hidden={hidden}, classes={classes}")
        if int(iterations) < 1:
            raise ValueError(f"RecurrentRateNet: expected iterations >= 1, found {iterations}")
        self.in_features = int(in_features)
        self.in_shape = tuple(int(d) for d in in_shape) if in_shape is not None else (self.in_features,)
        if math.prod(self.in_shape) != self.in_features:
            raise ValueError(f"RecurrentRateNet: in_shape {self.in_shape} does not have "
                             f"{self.in_features} features")
        self.hidden = hidden
        self.classes = int(classes)
        self.iterations = int(iterations)
        self.feedback = bool(feedback) and len(hidden) >= 2
        sizes = (self.in_features,) + hidden
        self.ff = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(hidden)))
        self.rec = nn.ModuleList(nn.Linear(h, h, bias=False) for h in hidden)
        self.fb = nn.ModuleList(nn.Linear(hidden[i + 1], hidden[i], bias=False)
                                for i in range(len(hidden) - 1)) if self.feedback else nn.ModuleList()
        self.readout = nn.Linear(hidden[-1], self.classes)
        self.act = nn.Hardtanh(0.0, 1.0)
        # Start the loops weaker than the feedforward path (default Linear init times rec_scale):
        # the network begins close to a delayed MLP and learns how much recurrence to use.
        with torch.no_grad():
            for m in list(self.rec) + list(self.fb):
                cast(nn.Linear, m).weight.mul_(float(rec_scale))

    @property
    def layers(self) -> int:
        return len(self.hidden)

    def _run(self, x: torch.Tensor, keep: bool) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.in_features:
            raise DataError(f"RecurrentRateNet: expected {self.in_features} input features, "
                            f"found {x.shape[1]}")
        L = self.layers
        h = [x.new_zeros(x.shape[0], n) for n in self.hidden]  # h_l[0] = 0
        drive = [ff(x) for ff in self.ff[:1]]  # W_1 x + b_1 is the same at every iteration
        total = x.new_zeros(x.shape[0], self.classes)
        hist: dict[str, list[torch.Tensor]] = {f"h{l + 1}": [] for l in range(L)}
        hist["out"] = []
        for _ in range(self.iterations):
            y = self.readout(h[-1])  # y[k] = O h_L[k-1] + b_O
            total = total + y
            new = []
            for l in range(L):
                z = drive[0] if l == 0 else self.ff[l](h[l - 1])
                z = z + self.rec[l](h[l])
                if self.feedback and l < L - 1:
                    z = z + self.fb[l](h[l + 1])
                new.append(self.act(z))
            h = new
            if keep:
                for l in range(L):
                    hist[f"h{l + 1}"].append(h[l])
                hist["out"].append(y)
        return total / self.iterations, hist

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, features) or (batch, *in_shape), rates in [0, 1] -> logits (batch, classes):
        the mean of y[k] over k = 1..K."""
        return self._run(x, keep=False)[0]

    @torch.no_grad()
    def trajectory(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-iteration activations for plots: ``"h{l}"`` -> h_l[k] for k = 1..K, shape
        (K, batch, n_l); ``"out"`` -> y[k] for k = 1..K, (K, batch, classes) (its mean is
        the logits). Keys match the node names of :func:`to_graph`."""
        x = torch.as_tensor(x, dtype=torch.float32)
        _, hist = self._run(x, keep=True)
        return {k: torch.stack(v) for k, v in hist.items()}


# -- training ---------------------------------------------------------------------------------
def train_recurrent(train: Dataset, hidden: Sequence[int] = (128,), iterations: int = 12,
                    feedback: bool = True, epochs: int = 40, lr: float = 3e-3, seed: int = 0,
                    input_noise: float = 0.0, occlusion: float = 0.0, weight_decay: float = 1e-4,
                    batch_size: int = 64, val: Dataset | None = None, val_fraction: float = 0.1,
                    classes: int | None = None, rec_scale: float = 0.5,
                    threads: int | None = 1) -> tuple[RecurrentRateNet, dict[str, Any]]:
    """Train a :class:`RecurrentRateNet` by backpropagation through the K iterations (plain
    autograd), Adam on cross-entropy, minibatch, cosine learning-rate decay, CPU only,
    deterministic for a given seed (the conventions of ``train_mlp``; ``threads`` as there).

    Training-time augmentation (both off by default): ``input_noise`` is the std of Gaussian
    noise added to the inputs (then clipped to [0, 1]); ``occlusion`` is the fraction of
    input features set to 0, chosen at random per sample and minibatch.
    ``val``: held-out set for ``val_accuracy``; if None, a stratified ``val_fraction`` of
    ``train`` is held out (0 disables).
    Returns the model (eval mode) and info: train_accuracy, val_accuracy, seconds, epochs,
    final_loss, n_train, n_val, hidden, iterations, feedback, seed.
    """
    model, info = fit_classifier(
        lambda fit, n_classes: RecurrentRateNet(fit.features, hidden, n_classes, iterations, feedback,
                                                in_shape=fit.shape, rec_scale=rec_scale),
        train, who="train_recurrent", epochs=epochs, lr=lr, seed=seed, weight_decay=weight_decay,
        batch_size=batch_size, val=val, val_fraction=val_fraction, input_noise=input_noise,
        occlusion=occlusion, classes=classes, threads=threads)
    info.update(hidden=model.hidden, iterations=model.iterations, feedback=model.feedback)
    return model, info


# -- export -----------------------------------------------------------------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def to_graph(model: RecurrentRateNet) -> ir.Graph:
    """The network as a spikeforge IR ANN graph with recurrent edges::

        input -> ff1 -> h1 -> ff2 -> h2 ... -> hL -> out -> output
        h{l} -> rec{l} -> h{l}              (R_l, zero bias)
        h{l+1} -> fb{l} -> h{l}             (F_l, zero bias; with feedback)

    ``ff{l}``/``rec{l}``/``fb{l}``/``out`` are Affine, ``h{l}`` is ReLU(upper=1.0) (its
    incoming Affine maps are summed), ``output`` an Output of (classes,). Metadata:
    ``{"arch": "recurrent", "iterations": K}``.
    """
    L = model.layers
    nodes: list[ir.Node] = [ir.Input("input", model.in_shape)]
    edges: list[tuple[str, str]] = []
    prev = "input"
    for l in range(1, L + 1):
        ff, rec = cast(nn.Linear, model.ff[l - 1]), cast(nn.Linear, model.rec[l - 1])
        n = model.hidden[l - 1]
        nodes += [ir.Affine(f"ff{l}", _np(ff.weight), _np(ff.bias)),
                  ir.ReLU(f"h{l}", n, upper=1.0),
                  ir.Affine(f"rec{l}", _np(rec.weight), np.zeros(n))]
        edges += [(prev, f"ff{l}"), (f"ff{l}", f"h{l}"), (f"h{l}", f"rec{l}"), (f"rec{l}", f"h{l}")]
        prev = f"h{l}"
    if model.feedback:
        for l in range(1, L):
            fb = cast(nn.Linear, model.fb[l - 1])
            nodes.append(ir.Affine(f"fb{l}", _np(fb.weight), np.zeros(model.hidden[l - 1])))
            edges += [(f"h{l + 1}", f"fb{l}"), (f"fb{l}", f"h{l}")]
    nodes += [ir.Affine("out", _np(model.readout.weight), _np(model.readout.bias)),
              ir.Output("output", (model.classes,))]
    edges += [(prev, "out"), ("out", "output")]
    return ir.Graph(tuple(nodes), tuple(edges), {"arch": "recurrent", "iterations": model.iterations})


def save_recurrent(model: RecurrentRateNet, path: str | os.PathLike[str]) -> None:
    """Write the model's IR graph (:func:`to_graph`) as a spikeforge graph file, key ``ann``,
    atomically (``spikeforge convert`` accepts such files)."""
    graphio.save(path, ann=to_graph(model))
