"""NIR (neuromorphs/NIR) import and export.

Import: Input, Output, Affine, Linear, Flatten, IF, LIF -> spikeforge's float IR, with one
time step = ``dt`` seconds (NIR's time is continuous; tau_steps = tau / dt). NIR keeps
per-neuron parameters; Loihi 2 takes one threshold and one decay per layer, so per-neuron
thresholds and gains r are folded into the incoming weights (exact for IF and LIF), while
per-neuron time constants or resting potentials that differ are refused by name.

Export: a float IF/LIF graph or a quantized graph (dequantized to threshold units, inputs in
[0, 1]) -> NIR. NIR has no reset by subtraction: such layers are refused by name rather than
silently exported with another semantics (the drift NIR users complain about).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spikeforge import ir
from spikeforge.errors import SpikeforgeError, UnsupportedError
from spikeforge.fileio import atomic_path

IMPORTED = ("Input", "Output", "Affine", "Linear", "Flatten", "IF", "LIF")


def _uniform(path: Path, name: str, what: str, values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size and not np.allclose(v, v[0], rtol=1e-6, atol=0):
        raise UnsupportedError(
            f"{path}: node '{name}' {what}: expected one value for the layer (Loihi 2 has one per "
            f"layer), found {v.size} values in [{v.min():.4g}, {v.max():.4g}]"
        )
    return float(v[0]) if v.size else 0.0


def load_nir(path: str | Path, dt: float = 1e-3) -> ir.Graph:
    """Read a NIR file into a float IR graph; one simulation step is ``dt`` seconds."""
    import nir

    path = Path(path)
    if not path.is_file():
        raise SpikeforgeError(f"{path}: no such file (expected a NIR graph)")
    if not dt > 0:
        raise SpikeforgeError(f"dt: expected a step length > 0 seconds, found {dt}")
    try:
        g = nir.read(str(path))
    except Exception as exc:
        raise SpikeforgeError(f"{path}: not a readable NIR file ({type(exc).__name__}: {str(exc)[:160]})") from None
    bad = [f"node '{k}' ({type(v).__name__})" for k, v in g.nodes.items() if type(v).__name__ not in IMPORTED]
    if bad:
        raise UnsupportedError(f"{path}: unsupported NIR nodes: {', '.join(bad)}; supported: {', '.join(IMPORTED)}")

    # per-neuron gain folded into incoming weights: weight_scale[neuron node] (n,)
    fold: dict[str, np.ndarray] = {}
    nodes: dict[str, ir.Node] = {}
    for name, n in g.nodes.items():
        kind = type(n).__name__
        if kind == "Input":
            shape = tuple(int(d) for d in np.asarray(next(iter(n.input_type.values()))).reshape(-1))
            nodes[name] = ir.Input(name, shape)
        elif kind == "Output":
            shape = tuple(int(d) for d in np.asarray(next(iter(n.output_type.values()))).reshape(-1))
            nodes[name] = ir.Output(name, shape)
        elif kind in ("Affine", "Linear"):
            w = np.asarray(n.weight, dtype=np.float64)
            if w.ndim != 2:
                raise UnsupportedError(f"{path}: node '{name}' ({kind}): expected a 2-D weight, found {w.shape}")
            b = np.asarray(n.bias, dtype=np.float64) if kind == "Affine" else np.zeros(w.shape[0])
            nodes[name] = ir.Affine(name, w, np.broadcast_to(b, (w.shape[0],)))
        elif kind == "Flatten":
            shape = tuple(int(d) for d in np.asarray(next(iter(n.input_type.values()))).reshape(-1))
            nodes[name] = ir.Flatten(name, shape)
        else:  # IF, LIF: v_threshold and r per neuron -> folded; threshold 1 after folding
            theta = np.asarray(n.v_threshold, dtype=np.float64).reshape(-1)
            r = np.asarray(n.r, dtype=np.float64).reshape(-1) * np.ones_like(theta)
            if (theta <= 0).any():
                raise UnsupportedError(f"{path}: node '{name}' v_threshold: expected > 0, found {theta.min():.4g}")
            v_reset = np.zeros_like(theta) if n.v_reset is None else np.asarray(n.v_reset, np.float64).reshape(-1) * np.ones_like(theta)
            size = theta.size
            reset_value = _uniform(path, name, "v_reset / v_threshold", v_reset / theta)
            reset = "zero" if reset_value == 0 else "value"
            if kind == "IF":  # dv/dt = r I: v gains r dt I per step
                fold[name] = r * dt / theta
                nodes[name] = ir.LIF(name, size, tau=np.inf, v_reset=reset_value, reset=reset) if reset == "value" \
                    else ir.IF(name, size, 1.0, "zero")
            else:
                tau = _uniform(path, name, "tau", np.asarray(n.tau, np.float64)) / dt
                if tau < 1:
                    raise UnsupportedError(
                        f"{path}: node '{name}' tau: {tau * dt:.4g} s is shorter than one step dt = {dt:.4g} s"
                    )
                v_leak = _uniform(path, name, "v_leak / v_threshold", np.asarray(n.v_leak, np.float64).reshape(-1) / theta)
                fold[name] = r / theta
                nodes[name] = ir.LIF(name, size, tau=tau, v_leak=v_leak, v_reset=reset_value, reset=reset)
    edges = [(a, b) for a, b in g.edges]
    for a, b in edges:
        if b in fold and isinstance(nodes[a], ir.Affine):
            aff = nodes[a]
            nodes[a] = aff.replace(weight=aff.weight * fold[b][:, None], bias=aff.bias * fold[b])
    try:
        return ir.Graph(tuple(nodes.values()), tuple(edges), {"source": str(path), "dt": dt})
    except SpikeforgeError as exc:
        raise SpikeforgeError(f"{path}: {exc}") from None


def save_nir(graph: ir.Graph, path: str | Path, dt: float = 1e-3) -> None:
    """Write a float IF/LIF graph or a quantized graph to NIR (one step = ``dt`` seconds)."""
    import nir

    path = Path(path)
    out: dict[str, object] = {}
    problems = []
    lif_scale: dict[str, float] = {}  # FixedLIF: state units per threshold = vth << 6
    for node in graph.nodes:
        if isinstance(node, ir.FixedLIF):
            lif_scale[node.name] = float(node.vth_scaled)
            if node.reset == "subtract":
                problems.append(f"{node.where()}: reset by subtraction has no NIR equivalent")
            if node.du != 4095 or node.leak or node.refractory:
                problems.append(f"{node.where()}: du={node.du}, leak={node.leak}, refractory={node.refractory}: "
                                f"only du=4095, leak=0, refractory=0 map to NIR's IF/LIF")
        elif isinstance(node, ir.IF) and node.reset == "subtract":
            problems.append(f"{node.where()}: reset by subtraction has no NIR equivalent")
        elif isinstance(node, (ir.ReLU, ir.Stochastic, ir.FixedStochastic)):
            problems.append(f"{node.where()}: no NIR equivalent")
        elif isinstance(node, ir.LIF) and (node.reset == "subtract" or node.refractory):
            problems.append(f"{node.where()}: reset='{node.reset}', refractory={node.refractory} have no NIR equivalent")
    if problems:
        raise UnsupportedError(f"{path}: cannot export to NIR: " + "; ".join(problems))
    payload = {n.name: n.payload_max for n in graph.inputs}
    for node in graph.nodes:
        name = node.name
        if isinstance(node, ir.Input):
            out[name] = nir.Input(input_type={"input": np.array(node.shape)})
        elif isinstance(node, ir.Output):
            out[name] = nir.Output(output_type={"output": np.array(node.shape)})
        elif isinstance(node, ir.Flatten):
            out[name] = nir.Flatten(input_type={"input": np.array(node.input_shape)}, start_dim=0)
        elif isinstance(node, ir.Affine):
            out[name] = nir.Affine(node.weight, node.bias)
        elif isinstance(node, ir.FixedAffine):
            (dst,) = graph.successors(name)
            src = graph.source_through_flatten(graph.predecessors(name)[0])
            in_scale = payload.get(src, 1)
            # per step, the target's v gains (w 2**e << 6) / (vth << 6) thresholds per unit of input
            w = node.weight * 2.0**node.weight_exp * 64.0 * in_scale / lif_scale[dst]
            out[name] = nir.Affine(w, np.zeros(w.shape[0]))
        elif isinstance(node, ir.FixedLIF):
            n, scale = node.size, lif_scale[name]
            ones = np.ones(n)
            # the bias becomes a constant current: add it to the first incoming affine map
            first = graph.predecessors(name)[0]
            out[first] = nir.Affine(out[first].weight, out[first].bias + node.bias / scale)
            v_reset = ones * (node.v_reset / scale if node.reset == "value" else 0.0)
            if node.dv == 0:
                out[name] = nir.IF(r=ones / dt, v_threshold=ones, v_reset=v_reset)
            else:
                tau = 4096.0 / node.dv  # steps; NIR: tau dv/dt = (v_leak - v) + r I, so r = tau
                out[name] = nir.LIF(tau=ones * tau * dt, r=ones * tau, v_leak=ones * node.v_rest / scale,
                                    v_threshold=ones, v_reset=v_reset)
        elif isinstance(node, ir.IF):
            ones = np.ones(node.size)
            out[name] = nir.IF(r=ones / dt, v_threshold=ones * node.v_threshold, v_reset=0 * ones)
        elif isinstance(node, ir.LIF):
            ones = np.ones(node.size)
            out[name] = nir.LIF(tau=ones * node.tau * dt, r=ones * node.r, v_leak=ones * node.v_leak,
                                v_threshold=ones * node.v_threshold,
                                v_reset=ones * (node.v_reset if node.reset == "value" else 0.0))
    nir_graph = nir.NIRGraph(nodes=out, edges=[list(e) for e in graph.edges], metadata={"dt": dt, "producer": "spikeforge"})
    with atomic_path(path) as tmp:
        nir.write(str(tmp), nir_graph)
