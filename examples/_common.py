"""Shared plumbing for the example scripts (argument parsing, data, MLP -> IR graph)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "out"  # ignored by .gitignore ("out/")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"folder for the PNG plots (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="a fast, smaller setting (for tests)")
    p.add_argument("--seed", type=int, default=0, help="seed of training, data split and random draws")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = p.parse_args(None if argv is None else list(argv))
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def digits(seed: int = 0):
    """The embedded scikit-learn digits, split 70/10/20 into train / calib / test (stratified)."""
    from spikeforge import data

    return data.split(data.load("digits"), seed=seed)


def mlp_graph(model, input_shape: Sequence[int]):
    """A trained RateMLP as a spikeforge IR ANN graph, through the real path: ONNX export
    (checked against onnxruntime) and spikeforge's ONNX import."""
    from spikeforge.converter.onnx_import import load_onnx
    from spikeforge.models import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "mlp.onnx", input_shape)
        return load_onnx(path)


def hidden_layers(graph) -> list[str]:
    """Names of the hidden neuron layers (ReLU / IF / Stochastic / FixedLIF / FixedStochastic
    nodes that do not feed the Output), in topological order."""
    from spikeforge import ir

    kinds = (ir.ReLU, ir.IF, ir.Stochastic, ir.FixedLIF, ir.FixedStochastic)
    out = graph.output.name
    readout = graph.predecessors(out)[0]
    return [n for n in graph.topological_order()
            if isinstance(graph.node(n), kinds) and n != readout]


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(y)))
