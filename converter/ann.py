"""Float evaluation of ANN graphs (Input, Flatten, Affine, Conv2d, AvgPool2d, Concat, ReLU,
Output), batched; activations are flat per sample (C order for feature maps).

Used for calibration (normalization statistics), for the ANN accuracy printed beside the
SNN's, and for per-layer ANN-vs-SNN comparisons. IF nodes evaluate as their rate model,
clip(x / v_threshold, 0, 1), so a converted float graph can be checked too.
"""

from __future__ import annotations

import math

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


@EVAL.register(ir.Conv2d)
def _conv(node: ir.Conv2d, x: np.ndarray) -> np.ndarray:
    from spikeforge.conv import conv2d

    hw = math.prod(node.out_shape[1:])
    return conv2d(x, node.weight, node.geometry) + np.repeat(node.bias, hw)[None, :]


@EVAL.register(ir.AvgPool2d)
def _avgpool(node: ir.AvgPool2d, x: np.ndarray) -> np.ndarray:
    from spikeforge.conv import conv2d

    c = node.input_shape[0]
    kh, kw = node.kernel_size
    kernel = np.full((c, 1, kh, kw), 1.0 / (kh * kw))
    return conv2d(x, kernel, node.geometry)


@EVAL.register(ir.Concat)
def _concat(node: ir.Concat, x: np.ndarray) -> np.ndarray:
    return x  # forward() concatenates the inputs in edge order (channels are the outer dim)


@EVAL.register(ir.ReLU)
def _relu(node: ir.ReLU, x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, node.upper if node.upper is not None else np.inf)


@EVAL.register(ir.Stochastic)
def _stochastic_rate(node: ir.Stochastic, x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0)


@EVAL.register(ir.IF)
def _if_rate(node: ir.IF, x: np.ndarray) -> np.ndarray:
    return np.clip(x / node.v_threshold, 0.0, 1.0)


def forward(graph: ir.Graph, x: np.ndarray, iterations: int | None = None) -> dict[str, np.ndarray]:
    """Activations of every node for inputs x (batch, features).

    A feedforward graph is evaluated in one pass. A recurrent graph (or any graph when
    ``iterations`` is given) runs the synchronous rate model of :func:`trajectory`, and each
    node's value is its mean over the iterations (for the Output: the mean logits).
    """
    if iterations is None and graph.is_feedforward():
        x = _check_x(graph, x)
        acts: dict[str, np.ndarray] = {}
        for name in graph.topological_order():
            node = graph.node(name)
            preds = graph.predecessors(name)
            if isinstance(node, ir.Input):
                arg = x
            elif isinstance(node, ir.Concat):
                arg = np.concatenate([acts[p] for p in preds], axis=1)
            else:  # residual sums: every input of the node added
                arg = acts[preds[0]]
                for p in preds[1:]:
                    arg = arg + acts[p]
            acts[name] = EVAL.lookup(node)(node, arg)
        return acts
    return {k: v.mean(axis=0) for k, v in trajectory(graph, x, iterations).items()}


def trajectory(graph: ir.Graph, x: np.ndarray, iterations: int | None = None) -> dict[str, np.ndarray]:
    """The rate model of a (possibly recurrent) graph, with the spiking timing: every synapse
    carries one step of delay and all neurons update together. For k = 1..K:

        a_A[k] = W_A z_src(A)[k-1] + b_A                  (every Affine or Conv2d A)
        h_n[k] = relu_n( sum_{A -> n} a_A[k] )            (every neuron n; h_n[0] = 0)
        y[k]   = a_A[k] for the Affine A feeding the Output (or h of the neuron feeding it)

    with z = x for the Input at every k. Returns node -> (K, batch, n): neurons' h, Affines' a,
    the Output's y. K is ``iterations`` or the graph's metadata["iterations"].
    """
    K = iterations if iterations is not None else graph.metadata.get("iterations")
    if not isinstance(K, int) or K < 1:
        raise UnsupportedError(
            "ANN evaluation: a recurrent graph needs a number of iterations >= 1 "
            f"(metadata 'iterations'), found {K!r}"
        )
    x = _check_x(graph, x)
    order = graph.topological_order()
    nodes = graph.by_name
    prev: dict[str, np.ndarray] = {}
    for name in order:
        node = nodes[name]
        prev[name] = x if isinstance(node, ir.Input) else np.zeros((len(x), node.out_size))
    instant = (ir.Flatten, ir.AvgPool2d, ir.Concat)
    for name in order:  # Flatten of the input is the input at every k
        if isinstance(nodes[name], instant):
            if not isinstance(nodes[name], ir.Flatten):
                raise UnsupportedError(f"ANN evaluation: {nodes[name].where()} in a recurrent graph "
                                       f"is not supported")
            prev[name] = prev[graph.predecessors(name)[0]]
    hist: dict[str, list[np.ndarray]] = {n: [] for n in order if not isinstance(nodes[n], (ir.Input, ir.Flatten))}
    for _ in range(K):
        cur = dict(prev)
        for name in order:
            node = nodes[name]
            if isinstance(node, ir.SYNAPSES):
                cur[name] = EVAL.lookup(node)(node, prev[graph.predecessors(name)[0]])
        for name in order:
            node = nodes[name]
            if isinstance(node, ir.NEURONS):
                cur[name] = EVAL.lookup(node)(node, sum(cur[p] for p in graph.predecessors(name)))
            elif isinstance(node, ir.Output):
                cur[name] = cur[graph.predecessors(name)[0]]
            elif isinstance(node, ir.Flatten):
                cur[name] = cur[graph.predecessors(name)[0]]
        for name in hist:
            hist[name].append(cur[name])
        prev = cur
    return {k: np.stack(v) for k, v in hist.items()}


def _check_x(graph: ir.Graph, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    (inp,) = graph.inputs
    if x.shape[1] != inp.out_size:
        raise DataError(f"ANN input: expected {inp.out_size} features, found {x.shape[1]}")
    return x


def predict(graph: ir.Graph, x: np.ndarray) -> np.ndarray:
    return forward(graph, x)[graph.output.name].argmax(axis=1)
