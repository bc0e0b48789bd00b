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


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.BatchNorm1d(48), torch.nn.ReLU(),
                               torch.nn.Linear(48, 10))


def test_training_flags_are_restored_on_success_and_error():
    m = _mlp()
    m.train()
    m[1].eval()  # mixed flags come back as they were
    flags = [mod.training for mod in m.modules()]
    assert flags == [True, True, False, True, True]
    from_torch(m, (64,))
    assert [mod.training for mod in m.modules()] == flags
    with pytest.raises(SpikeforgeError):
        from_torch(m, (63,))
    assert [mod.training for mod in m.modules()] == flags
    bad = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Sigmoid()).train()
    with pytest.raises(SpikeforgeError, match="Sigmoid"):
        from_torch(bad, (4,))
    assert all(mod.training for mod in bad.modules())


def test_wrong_input_shape_is_one_clean_line(capfd):
    with pytest.raises(SpikeforgeError) as info:
        from_torch(_mlp(), (63,))
    assert str(info.value) == ("Sequential: input shape (63,) (per sample, without the batch dimension) does "
                               "not fit the module: mat1 and mat2 shapes cannot be multiplied (1x63 and 64x48)")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


class _Branchy(torch.nn.Module):
    """Runs in torch; torch.export cannot trace its data-dependent branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y if y.sum() > 0 else -y


def test_export_failure_is_one_clean_line(capfd):
    """torch.onnx wraps the real error in coloured step-by-step advice and prints the traced
    graphs and fake-tensor log lines on stderr: the error keeps torch's own reason only."""
    with pytest.raises(SpikeforgeError) as info:
        from_torch(_Branchy(), (4,))
    msg = str(info.value)
    assert msg.startswith("_Branchy: torch could not export it to ONNX (dynamo: Could not guard on "
                          "data-dependent expression"), msg
    assert "\x1b" not in msg and "\n" not in msg and "step 1/3" not in msg
    out, err = capfd.readouterr()
    assert out == "" and err == ""
