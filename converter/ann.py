"""Float evaluation of ANN graphs (Input, Flatten, Affine, ReLU, Output), batched.

Used for calibration (normalization statistics), for the ANN accuracy printed beside the
SNN's, and for per-layer ANN-vs-SNN comparisons. IF nodes evaluate as their rate model,
clip(x / v_threshold, 0, 1), so a converted float graph can be checked too.
"""

from __future__ import annotations

import numpy as np

from spikeforge import ir
from spikeforge.errors import DataError, UnsupportedError

EVAL = ir.Registry("ANN evaluation")


@EVAL.register(ir.Input, ir.Flatten, ir.Output)
def _identity(node: ir.Node, x: np.ndarray) -> np.ndarray:
    return x


@EVAL.register(ir.Affine)
def _affine(node: ir.Affine, x: np.ndarray) -> np.ndarray:
    return x @ node.weight.T + node.bias


@EVAL.register(ir.ReLU)
def _relu(node: ir.ReLU, x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, node.upper if node.upper is not None else np.inf)


@EVAL.register(ir.IF)
def _if_rate(node: ir.IF, x: np.ndarray) -> np.ndarray:
    return np.clip(x / node.v_threshold, 0.0, 1.0)


def forward(graph: ir.Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Activations of every node for inputs x (batch, features). Feedforward graphs only."""
    if not graph.is_feedforward():
        raise UnsupportedError("ANN evaluation: graph has recurrent edges; use the recurrent evaluator")
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    (inp,) = graph.inputs
    if x.shape[1] != inp.out_size:
        raise DataError(f"ANN input: expected {inp.out_size} features, found {x.shape[1]}")
    acts: dict[str, np.ndarray] = {}
    for name in graph.topological_order():
        node = graph.node(name)
        preds = graph.predecessors(name)
        arg = x if isinstance(node, ir.Input) else sum(acts[p] for p in preds)
        acts[name] = EVAL.lookup(node)(node, arg)
    return acts


def predict(graph: ir.Graph, x: np.ndarray) -> np.ndarray:
    return forward(graph, x)[graph.output.name].argmax(axis=1)
