"""Random quantized networks for tests and benchmarks (seeded, in range by construction)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from spikeforge import ir


def run_cli(*args: str, cwd: str | os.PathLike[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``spikeforge ARGS`` in a fresh interpreter in ``cwd`` (captured text output, Python's
    warnings off), as a user's shell runs it."""
    return subprocess.run([sys.executable, "-m", "spikeforge.cli", *args], cwd=Path(cwd), capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def random_fixed_graph(sizes: Sequence[int], seed: int = 0, reset: str = "subtract",
                       du: int = 4095, dv: int = 0, recurrent: bool = False,
                       feedback: bool = False, payload_bits: int = 8) -> ir.Graph:
    """Input(sizes[0]) -> [FixedAffine -> FixedLIF] * (len(sizes) - 1) -> Output.

    Weights, exponents, thresholds and biases are drawn so that layers spike at moderate
    rates. ``recurrent`` adds self-recurrent synapses on hidden layers; ``feedback`` adds
    synapses from each layer back to the one before it.
    """
    rng = np.random.default_rng(seed)
    nodes: list[ir.Node] = [ir.Input("in", (sizes[0],), payload_bits)]
    edges: list[tuple[str, str]] = []
    prev = "in"
    n_layers = len(sizes) - 1

    def affine(name: str, n_out: int, n_in: int, exp: int) -> ir.FixedAffine:
        w = rng.integers(-128, 128, size=(n_out, n_in))
        w[rng.random(w.shape) < 0.3] = 0
        return ir.FixedAffine(name, w, exp)

    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        exp = int(rng.integers(-6, -3)) if i == 1 else int(rng.integers(-1, 3))
        nodes.append(affine(f"fc{i}", n_out, n_in, exp))
        vth = int(rng.integers(50, 400))
        bias = rng.integers(-300, 600, size=n_out)
        nodes.append(ir.FixedLIF(f"lif{i}", n_out, vth=vth, du=du, dv=dv,
                                 bias_mant=bias, bias_exp=int(rng.integers(0, 3)), reset=reset))
        edges += [(prev, f"fc{i}"), (f"fc{i}", f"lif{i}")]
        if recurrent and i < n_layers:
            nodes.append(affine(f"rec{i}", n_out, n_out, int(rng.integers(0, 2))))
            edges += [(f"lif{i}", f"rec{i}"), (f"rec{i}", f"lif{i}")]
        if feedback and i > 1:
            nodes.append(affine(f"fb{i}", sizes[i - 1], n_out, 0))
            edges += [(f"lif{i}", f"fb{i}"), (f"fb{i}", f"lif{i - 1}")]
        prev = f"lif{i}"
    nodes.append(ir.Output("out", (sizes[-1],)))
    edges.append((prev, "out"))
    return ir.Graph(tuple(nodes), tuple(edges))


def random_inputs(n_samples: int, n_inputs: int, seed: int = 0) -> np.ndarray:
    """Rates in [0, 1] with some exact zeros and ones."""
    rng = np.random.default_rng(seed)
    x = rng.random((n_samples, n_inputs))
    x[x < 0.2] = 0.0
    x[x > 0.9] = 1.0
    return x


def assert_identical(expected, got, check_v_final: bool = True) -> None:
    """Assert two RunResults are spike-identical (every layer, step and neuron) and, unless
    ``check_v_final`` is False, have equal readout potentials; the failure names the first
    divergence (spikeforge.runner.compare)."""
    from spikeforge.runner import compare

    assert got.readout == expected.readout and got.vth_scaled == expected.vth_scaled
    assert set(got.spikes) == set(expected.spikes)
    for name, want in expected.spikes.items():
        have = got.spikes[name]
        assert have.shape == want.shape and have.dtype == bool, (name, have.shape, have.dtype)
    c = compare(expected, got, list(expected.spikes))
    if c.mismatched_spikes:
        d = c.first_divergence
        assert d is not None
        raise AssertionError(f"layer {d.layer}: spikes differ first at sample {d.sample}, step {d.step}, "
                             f"neuron {d.neuron} (expected {d.reference}, got {d.other}); "
                             f"{c.mismatched_spikes} differences")
    if check_v_final:
        np.testing.assert_array_equal(got.v_final, expected.v_final)


def rewrite_graph_file(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                       edit: Callable[[dict], object] | None = None,
                       members: Mapping[str, bytes | None] | None = None, sign: bool = True) -> None:
    """Copy the graph file ``src`` to ``dst`` with graph.json edited by ``edit(doc)``
    and members replaced (name -> bytes; None drops it); with ``sign`` the content hashes are
    recomputed, so that the edit reaches the decoder's checks instead of the hash check."""
    import hashlib
    import json
    import zipfile

    from spikeforge import graphio

    with zipfile.ZipFile(src) as zin:
        contents = {name: zin.read(name) for name in zin.namelist()}
    doc = json.loads(contents.pop("graph.json"))
    for name, data in (members or {}).items():
        if data is None:
            contents.pop(name, None)
        else:
            contents[name] = data
    if edit is not None:  # edits doc in place, or returns a whole new document
        new = edit(doc)
        doc = doc if new is None else new
    if sign and isinstance(doc, dict):
        doc["members"] = {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in contents.items()}
        doc["sha256"] = graphio._digest(doc)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        zout.writestr("graph.json", json.dumps(doc))
        for name, data in contents.items():
            zout.writestr(name, data)


def random_conv_graph(input_shape: Sequence[int] = (1, 28, 28), channels: Sequence[int] = (32, 64, 64),
                      strides: Sequence[int] = (1, 2, 2), n_out: int = 10, seed: int = 0,
                      reset: str = "subtract", du: int = 4095, dv: int = 0, kernel: int = 3,
                      padding: int = 1) -> ir.Graph:
    """Input(C, H, W) -> [FixedConv2d (kernel x kernel, padding) -> FixedLIF] per channel count
    and stride -> Flatten -> FixedAffine -> FixedLIF(n_out) -> Output, random weights (seeded)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in input_shape)
    nodes: list[ir.Node] = [ir.Input("in", shape)]
    edges: list[tuple[str, str]] = []
    prev = "in"
    for i, (c, st) in enumerate(zip(channels, strides), start=1):
        w = rng.integers(-128, 128, size=(c, shape[0], kernel, kernel))
        w[rng.random(w.shape) < 0.3] = 0
        conv = ir.FixedConv2d(f"conv{i}", shape, (st, st), (padding,) * 4, weight=w,
                              weight_exp=int(rng.integers(-6, -3)) if i == 1 else int(rng.integers(-3, 0)))
        out = conv.geometry.output_shape
        n = int(np.prod(out))
        nodes += [conv, ir.FixedLIF(f"lif{i}", n, shape=out, vth=int(rng.integers(50, 400)), du=du, dv=dv,
                                    bias_mant=rng.integers(-300, 600, size=n), bias_exp=int(rng.integers(0, 3)),
                                    reset=reset)]
        edges += [(prev, f"conv{i}"), (f"conv{i}", f"lif{i}")]
        prev, shape = f"lif{i}", out
    flat = int(np.prod(shape))
    w = rng.integers(-128, 128, size=(n_out, flat))
    w[rng.random(w.shape) < 0.3] = 0
    nodes += [ir.Flatten("flat", shape), ir.FixedAffine("fc", w, int(rng.integers(-3, 0))),
              ir.FixedLIF("out_lif", n_out, vth=int(rng.integers(50, 400)), du=du, dv=dv,
                          bias_mant=rng.integers(-300, 600, size=n_out), bias_exp=0, reset=reset),
              ir.Output("out", (n_out,))]
    edges += [(prev, "flat"), ("flat", "fc"), ("fc", "out_lif"), ("out_lif", "out")]
    return ir.Graph(tuple(nodes), tuple(edges))


def with_initial_state(graph: ir.Graph, seed: int = 0, spread: int = 2) -> ir.Graph:
    """Every FixedLIF layer with a random per-neuron ``v_init`` in about [-spread, spread] x its
    threshold (vth << 6): some neurons start above threshold, some far below it."""
    rng = np.random.default_rng(seed ^ 0x5649)
    nodes = []
    for node in graph.nodes:
        if isinstance(node, ir.FixedLIF):
            v0 = rng.integers(-spread * max(node.vth_scaled, 64), spread * max(node.vth_scaled, 64) + 1, node.size)
            node = node.replace(v_init=np.clip(v0, ir.BITS["state"].lo, ir.BITS["state"].hi))
        nodes.append(node)
    return graph.with_nodes(nodes)
