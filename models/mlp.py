"""Rate-coded multilayer perceptron: the ANN that spikeforge converts to IF/LIF layers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class RateMLP(nn.Module):
    """Flatten -> [Linear -> clip(., 0, 1)] * len(hidden) -> Linear (logits).

    Hidden layer l computes r_l = clip(W_l r_{l-1} + b_l, 0, 1): a firing rate in [0, 1] that an
    IF neuron with threshold 1 reproduces. The clipped ReLU is ``nn.Hardtanh(0, 1)`` so that
    ONNX export gives ``Clip(0, 1)``. Optional dropout after each hidden activation (training only).
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (128,), classes: int = 10,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if int(in_features) <= 0 or int(classes) <= 0 or any(int(h) <= 0 for h in hidden):
            raise ValueError(f"RateMLP: expected positive sizes, found in_features={in_features}, "
                             f"hidden={tuple(hidden)}, classes={classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"RateMLP: dropout expected in [0, 1), found {dropout}")
        self.in_features = int(in_features)
        self.hidden = tuple(int(h) for h in hidden)
        self.classes = int(classes)
        layers: list[nn.Module] = [nn.Flatten()]
        prev = self.in_features
        for width in self.hidden:
            layers += [nn.Linear(prev, width), nn.Hardtanh(0.0, 1.0)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        layers.append(nn.Linear(prev, self.classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, *shape) with prod(shape) = in_features -> logits (batch, classes)."""
        return self.net(x)

    def linears(self) -> list[nn.Linear]:
        """The Linear layers in order (the last one is the readout)."""
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def rates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Hidden firing rates r_l in [0, 1] per hidden layer (for calibration/inspection)."""
        out = []
        for m in self.net:
            x = m(x)
            if isinstance(m, nn.Hardtanh):
                out.append(x)
        return out
