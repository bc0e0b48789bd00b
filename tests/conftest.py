"""Shared fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from spikeforge.testing import run_cli


@pytest.fixture(scope="session")
def demo_mlp(tmp_path_factory) -> Path:
    """The demo network's source, trained once per session: a folder with model.onnx (digits,
    64 hidden units), calib.npz and test.npz. Copy it (fixture copy_demo) before writing."""
    d = tmp_path_factory.mktemp("demo-mlp")
    r = run_cli("train", "--arch", "mlp", "--hidden", "64", "--epochs", "40", "-o", "model.onnx", cwd=d)
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture(scope="session")
def copy_demo(demo_mlp):
    """copy_demo(folder) -> folder, with the demo network's model and splits copied in."""
    def copy(dst: Path) -> Path:
        for name in ("model.onnx", "calib.npz", "test.npz"):
            shutil.copy(demo_mlp / name, dst / name)
        return dst
    return copy
