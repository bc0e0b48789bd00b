"""Issue 6 acceptance: CNNs and BatchNorm MLPs trained in plain torch, exported with torch's
default (dynamo) ONNX exporter, converted by the CLI with calibration data that holds only x."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spikeforge import data
from spikeforge.converter.onnx_import import load_onnx
from spikeforge.errors import UnsupportedError
from spikeforge.testing import run_cli



def _digits(shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    ds = data.load_digits()
    split = data.split(ds, seed=0)
    def x(part):
        return part.x.reshape((part.n, *shape)).astype(np.float32)
    return x(split.train), split.train.y, x(split.calib), x(split.test), split.test.y


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    X, Y = torch.tensor(x), torch.tensor(y)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[b]), Y[b]).backward()
            opt.step()
    return model.eval()


def _export_default(model: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    """A user's first export: torch.onnx.export with torch's defaults (the dynamo exporter)."""
    torch.onnx.export(model, torch.zeros((1, *shape)), str(path))


def _accuracies(d: Path, net: str, timesteps: int = 32) -> tuple[float, float]:
    r = run_cli("simulate", net, "--backend", "cpu", "--data", "test.npz", "--timesteps", str(timesteps),
                "--json", cwd=d)
    assert r.returncode == 0, r.stderr
    sim = json.loads(r.stdout)
    return sim["accuracy"], sim["ann_accuracy"]


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cnn")
    xtr, ytr, xca, xte, yte = _digits((1, 8, 8))
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 10))
    _train(model, xtr, ytr, epochs=15)
    _export_default(model, (1, 8, 8), d / "cnn.onnx")
    np.savez(d / "calib.npz", x=xca)  # calibration needs only x
    np.savez(d / "test.npz", x=xte, y=yte)
    return d


def test_default_exporter_writes_external_data_that_loads(cnn_dir):
    assert (cnn_dir / "cnn.onnx.data").is_file()  # the dynamo exporter keeps weights beside the model
    g = load_onnx(cnn_dir / "cnn.onnx")
    assert [type(n).__name__ for n in g.nodes].count("Conv2d") == 2
    assert g.inputs[0].shape == (1, 8, 8)


def test_cnn_converts_within_one_point_and_verifies(cnn_dir):
    r = run_cli("convert", "cnn.onnx", "--calib", "calib.npz", "-o", "cnn.sfg", cwd=cnn_dir)
    assert r.returncode == 0, r.stderr
    acc, ann = _accuracies(cnn_dir, "cnn.sfg")
    print(f"digits CNN: ANN {100 * ann:.2f}%, cpu T=32 {100 * acc:.2f}%")
    assert ann > 0.9 and abs(acc - ann) <= 0.01
    r = run_cli("verify", "cnn.sfg", "--backends", "cpu,lava,brian2", "--data", "test.npz", "--timesteps", "32",
                "--limit", "10", "--json", cwd=cnn_dir)
    assert r.returncode == 0, r.stderr
    ver = json.loads(r.stdout)
    assert ver["samples"] == 10 and ver["reference_spikes"] > 0
    for name in ("lava", "brian2"):
        assert ver["backends"][name]["mismatched_spikes"] == 0
        assert ver["backends"][name]["spikes"] == ver["reference_spikes"]


def test_mlp_with_batchnorm_after_relu_converts_within_one_point(tmp_path):
    """BatchNorm1d after ReLU folds into the next Linear; a dead unit's near-zero running
    variance (scale ~ 1/sqrt(eps)) no longer sets the layer's exponent (its weights are zeroed)."""
    xtr, ytr, xca, xte, yte = _digits((64,))
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.BatchNorm1d(128), nn.Linear(128, 64), nn.ReLU(),
                          nn.BatchNorm1d(64), nn.Linear(64, 10))
    _train(model, xtr, ytr, epochs=30)
    _export_default(model, (64,), tmp_path / "bn.onnx")
    np.savez(tmp_path / "calib.npz", x=xca)
    np.savez(tmp_path / "test.npz", x=xte, y=yte)
    r = run_cli("convert", "bn.onnx", "--calib", "calib.npz", "-o", "bn.sfg", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    acc, ann = _accuracies(tmp_path, "bn.sfg")
    print(f"BatchNorm-after-ReLU MLP: ANN {100 * ann:.2f}%, cpu T=32 {100 * acc:.2f}%")
    assert ann > 0.9 and abs(acc - ann) <= 0.01


def test_maxpool_is_refused_with_what_to_do(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 16, 10)).eval()
    torch.onnx.export(model, torch.zeros((1, 1, 8, 8)), str(tmp_path / "mp.onnx"), dynamo=False)
    with pytest.raises(UnsupportedError, match=r"\(MaxPool: .*use AveragePool .*retrain\)"):
        load_onnx(tmp_path / "mp.onnx")
    r = run_cli("convert", "mp.onnx", "--calib", "digits", "-o", "mp.sfg", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mp.sfg").exists()


def test_train_arch_cnn_through_the_cli(tmp_path):
    r = run_cli("train", "--arch", "cnn", "--hidden", "8", "16", "--epochs", "8", "-o", "cnn.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("convert", "cnn.onnx", "--calib", "calib.npz", "-o", "cnn.sfg", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    acc, ann = _accuracies(tmp_path, "cnn.sfg")
    assert ann > 0.85 and abs(acc - ann) <= 0.02
