"""from_torch through torch.export (dynamo, the default) and the legacy TorchScript exporter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikeforge.converter.ann import forward
from spikeforge.converter.torch_import import from_torch
from spikeforge.errors import SpikeforgeError


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_supported_layers_through_each_exporter(exporter):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                            torch.nn.Dropout(0.1), torch.nn.Linear(32, 16), torch.nn.Hardtanh(0, 1),
                            torch.nn.Linear(16, 10), torch.nn.LogSoftmax(1))
    with torch.no_grad():
        m[2].running_mean.uniform_(-0.2, 0.2)
        m[2].running_var.uniform_(0.5, 2.0)
    m.eval()
    g = from_torch(m, (8, 8), exporter=exporter)
    assert [type(n).__name__ for n in g.nodes] == ["Input", "Flatten", "Affine", "ReLU", "Affine", "ReLU", "Affine", "Output"]
    assert g.metadata["exporter"] == exporter
    x = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)
    with torch.no_grad():
        logits = torch.nn.Sequential(*list(m)[:-1])(torch.tensor(x)).numpy()
    np.testing.assert_allclose(forward(g, x.reshape(5, -1))[g.output.name], logits, rtol=1e-4, atol=1e-5)


def test_unknown_exporter_is_refused():
    with pytest.raises(SpikeforgeError, match="exporter: expected one of dynamo, torchscript, found 'x'"):
        from_torch(torch.nn.Linear(2, 2), (2,), exporter="x")
