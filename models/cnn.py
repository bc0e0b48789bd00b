"""Rate-coded convolutional network: the CNN that spikeforge converts to spiking conv layers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class RateCNN(nn.Module):
    """[Conv3x3 -> BatchNorm -> clip(., 0, 1) -> AvgPool2] for all but the last of ``channels``,
    then Conv3x3 -> clip(., 0, 1), Flatten, Linear (logits).

    Every activation is a firing rate r = clip(BN(W * r_prev + b), 0, 1) that an IF neuron with
    threshold 1 reproduces; BatchNorm folds into its convolution and average pooling into the
    next convolution at conversion, so the spiking network has one layer per convolution.
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int] = (16, 32),
                 classes: int = 10) -> None:
        super().__init__()
        shape = tuple(int(d) for d in input_shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3 or min(shape) < 1 or not channels or min(channels) < 1 or classes < 1:
            raise ValueError(f"RateCNN: expected a (C, H, W) input shape and positive channels, found "
                             f"input_shape={tuple(input_shape)}, channels={tuple(channels)}")
        self.input_shape = shape
        c, h, w = shape
        layers: list[nn.Module] = []
        for k, width in enumerate(channels):
            layers += [nn.Conv2d(c, int(width), 3, padding=1)]
            last = k == len(channels) - 1
            if not last:
                layers += [nn.BatchNorm2d(int(width)), nn.Hardtanh(0.0, 1.0)]
                if min(h, w) >= 2:
                    layers.append(nn.AvgPool2d(2))
                    h, w = h // 2, w // 2
            else:
                layers.append(nn.Hardtanh(0.0, 1.0))
            c = int(width)
        layers += [nn.Flatten(), nn.Linear(c * h * w, int(classes))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, *input_shape) -> logits (batch, classes)."""
        if x.dim() == len(self.input_shape):  # (batch, H, W) for single-channel data
            x = x.unsqueeze(1)
        return self.net(x)
