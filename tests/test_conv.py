"""Convolutional networks, converted and run spike for spike on cpu, Lava (real runtime)
and Brian2 (real simulator): residual block, depthwise, strided, asymmetric padding,
dilation, global average pooling and channel concat; each also against its float ANN.
Refusals: a pool that cannot fold exactly, a residual from the raw Input."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import lava as _lava_runtime  # noqa: F401  (the real runtime; CI installs it)

from spikeforge import ir
from spikeforge.analysis import compare_layers
from spikeforge.backends.cpu import CpuBackend
from spikeforge.backends.lava_backend import LavaBackend, int32_violations
from spikeforge import graphio
from spikeforge.backends.loihi import check_file, check_loihi2, loihi2_notes
from spikeforge.converter import ann
from spikeforge.converter.fold import identity_synapse
from spikeforge.converter.passes import convert
from spikeforge.errors import UnsupportedError
from spikeforge.network import lower
from spikeforge.runner import payloads_for, verify
from spikeforge.testing import assert_identical

warnings.filterwarnings("ignore", message=".*pyparsing.*")


class Builder:
    """A float ANN in IR, built layer by layer (random weights, seeded)."""

    def __init__(self, shape: tuple[int, int, int], seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[ir.Node] = [ir.Input("x", shape)]
        self.edges: list[tuple[str, str]] = []
        self.shapes: dict[str, tuple[int, ...]] = {"x": shape}

    def _add(self, node: ir.Node, *srcs: str) -> str:
        self.nodes.append(node)
        self.edges += [(s, node.name) for s in srcs]
        self.shapes[node.name] = node.out_shape
        return node.name

    def conv(self, src: str, name: str, channels: int, k: int | tuple[int, int], **geometry) -> str:
        """A Conv2d synapse (no activation), He-scaled weights, small positive bias."""
        shape = self.shapes[src]
        kh, kw = (k, k) if isinstance(k, int) else k
        ci = shape[0] // geometry.get("groups", 1)
        w = self.rng.normal(0, math.sqrt(2 / (ci * kh * kw)), (channels, ci, kh, kw))
        return self._add(ir.Conv2d(name, shape, weight=w, bias=self.rng.normal(0.05, 0.05, channels),
                                   **geometry), src)

    def identity(self, src: str, name: str) -> str:
        return self._add(identity_synapse(name, self.shapes[src]), src)

    def relu(self, name: str, *synapses: str) -> str:
        shape = self.shapes[synapses[0]]
        return self._add(ir.ReLU(name, math.prod(shape), shape=shape), *synapses)

    def layer(self, src: str, name: str, channels: int, k: int | tuple[int, int], **geometry) -> str:
        return self.relu(name, self.conv(src, f"{name}.w", channels, k, **geometry))

    def pool(self, src: str, name: str, k: int | tuple[int, int], stride: int | tuple[int, int],
             padding: int = 0) -> str:
        k2 = (k, k) if isinstance(k, int) else k
        s2 = (stride, stride) if isinstance(stride, int) else stride
        return self._add(ir.AvgPool2d(name, self.shapes[src], k2, s2, padding), src)

    def concat(self, name: str, *srcs: str) -> str:
        return self._add(ir.Concat(name, tuple(self.shapes[s] for s in srcs)), *srcs)

    def head(self, src: str, classes: int = 6) -> ir.Graph:
        """Flatten -> Affine(classes) -> Output."""
        flat = self._add(ir.Flatten("flat", self.shapes[src]), src)
        n = math.prod(self.shapes[flat])
        fc = self._add(ir.Affine("fc", self.rng.normal(0, 1 / math.sqrt(n), (classes, n)),
                                 np.zeros(classes)), flat)
        self._add(ir.Output("y", (classes,)), fc)
        return ir.Graph(tuple(self.nodes), tuple(self.edges))


SHAPE = (2, 8, 8)


def residual() -> ir.Graph:
    """c1 -> c2 -> (c3 + identity shortcut from c1) -> r3: Add as two synapses into one layer."""
    b = Builder(SHAPE, seed=1)
    r1 = b.layer("x", "c1", 4, 3, padding=1)
    r2 = b.layer(r1, "c2", 4, 3, padding=1)
    r3 = b.relu("r3", b.conv(r2, "c3", 4, 3, padding=1), b.identity(r1, "skip"))
    return b.head(r3)


def depthwise() -> ir.Graph:
    b = Builder(SHAPE, seed=2)
    r1 = b.layer("x", "c1", 4, 3, padding=1)
    return b.head(b.layer(r1, "dw", 4, 3, padding=1, groups=4))


def strided() -> ir.Graph:
    b = Builder(SHAPE, seed=3)
    r1 = b.layer("x", "c1", 4, 3, stride=2, padding=1)
    return b.head(b.layer(r1, "c2", 6, 3, stride=(2, 1)))


def asymmetric_padding() -> ir.Graph:
    b = Builder(SHAPE, seed=4)
    r1 = b.layer("x", "c1", 4, 3, padding=(1, 0, 0, 1))
    return b.head(b.layer(r1, "c2", 4, (2, 3), padding=(0, 2, 1, 0)))


def dilation() -> ir.Graph:
    b = Builder(SHAPE, seed=5)
    r1 = b.layer("x", "c1", 4, 3, dilation=2, padding=2)
    return b.head(b.layer(r1, "c2", 4, 3, dilation=(1, 2)))


def global_pool() -> ir.Graph:
    """c1 -> c2 -> AvgPool2d over the whole map -> Flatten -> Affine: folded into the Affine."""
    b = Builder(SHAPE, seed=6)
    r2 = b.layer(b.layer("x", "c1", 4, 3, padding=1), "c2", 8, 3)
    _, h, w = b.shapes[r2]
    return b.head(b.pool(r2, "gap", (h, w), (h, w)))


def concat() -> ir.Graph:
    """c1 -> {a (1x1), b1 -> b2 (3x3)} -> Concat along channels -> c3: c3 split by input,
    the shallower branch delayed by a relay."""
    b = Builder(SHAPE, seed=7)
    r1 = b.layer("x", "c1", 4, 3, padding=1)
    a = b.layer(r1, "a", 3, 1)
    b2 = b.layer(b.layer(r1, "b1", 3, 3, padding=1), "b2", 3, 3, padding=1)
    return b.head(b.layer(b.concat("cat", a, b2), "c3", 6, 3))


def concat_readout() -> ir.Graph:
    """c1 -> {a (1x1), b1 -> b2 (3x3)} -> Concat -> Flatten -> readout Gemm: the readout cannot
    be split (one map), so the Concat's activations become one layer written by both branches'
    convolutions (an internal error before)."""
    b = Builder(SHAPE, seed=8)
    r1 = b.layer("x", "c1", 4, 3, padding=1)
    a = b.layer(r1, "a", 3, 1)
    b2 = b.layer(b.layer(r1, "b1", 3, 3, padding=1), "b2", 3, 3, padding=1)
    return b.head(b.concat("cat", a, b2))


CASES = {"residual": residual, "depthwise": depthwise, "strided": strided,
         "asymmetric_padding": asymmetric_padding, "dilation": dilation,
         "global_pool": global_pool, "concat": concat, "concat_readout": concat_readout}


def inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, math.prod(SHAPE)))


_converted: dict[str, ir.Graph] = {}


def converted(case: str) -> ir.Graph:
    if case not in _converted:
        _converted[case] = convert(CASES[case](), inputs(64, seed=100))
    return _converted[case]


def check_structure(case: str, snn: ir.Graph) -> None:
    """What conversion must have made of each block."""
    convs = {n.name: n for n in snn.of_type(ir.FixedConv2d)}
    relays = snn.metadata.get("relay_layers", 0)
    if case == "residual":
        assert relays == 1 and len(snn.predecessors("r3")) == 2
        assert any(isinstance(snn.node(p), ir.FixedConv2d) and snn.node(p).groups == 4
                   for p in snn.predecessors("r3"))
    elif case == "depthwise":
        assert convs["dw.w"].groups == 4 and convs["dw.w"].weight.shape == (4, 1, 3, 3)
    elif case == "strided":
        assert convs["c1.w"].stride == (2, 2) and convs["c2.w"].stride == (2, 1)
    elif case == "asymmetric_padding":
        assert convs["c1.w"].padding == (1, 0, 0, 1) and convs["c2.w"].padding == (0, 2, 1, 0)
    elif case == "dilation":
        assert convs["c1.w"].dilation == (2, 2) and convs["c2.w"].dilation == (1, 2)
    elif case == "global_pool":
        assert not snn.of_type(ir.AvgPool2d)
        assert snn.node("fc").weight.shape[1] == math.prod(snn.node("c2").shape)
    elif case == "concat":
        assert not snn.of_type(ir.Concat) and relays == 1
        assert len(snn.predecessors("c3")) == 2  # c3's synapse split by input
    elif case == "concat_readout":
        assert not snn.of_type(ir.Concat) and relays == 1
        assert sorted(snn.predecessors("cat")) == ["a.w", "b2.w"] and snn.node("cat").size == 6 * 64
        assert snn.node("a.w").weight.shape[0] == 6 and not snn.node("a.w").weight[3:].any()


@pytest.mark.parametrize("case", list(CASES))
def test_spike_exact_cpu_lava_brian2(case):
    snn = converted(case)
    assert not relays_missing(snn)
    check_structure(case, snn)
    sims, comparisons = verify(snn, ["cpu", "lava", "brian2"], inputs(3, seed=1), 16)
    for name, c in comparisons.items():
        assert c.mismatched_spikes == 0 and c.mismatched_v_final == 0, (name, c.first_divergence)
        assert c.spikes == c.reference_spikes > 0
    for layer, s in sims["cpu"].result.spikes.items():
        assert s.any(), f"layer {layer} is silent"


def relays_missing(snn: ir.Graph) -> list[str]:
    """Neuron layers whose feedforward inputs arrive with different latencies."""
    delays = lower(snn).delays
    bad = []
    for layer in snn.of_type(ir.FixedLIF):
        srcs = {snn.source_through_flatten(snn.predecessors(p)[0]) for p in snn.predecessors(layer.name)}
        if len({delays.get(s, 0) for s in srcs}) > 1:
            bad.append(layer.name)
    return bad


#: The float ANN against the converted network at T = 64 (cpu): top-1 agreement on random
#: inputs and the worst per-layer correlation of ANN activation (normalized) and SNN rate.
AGREEMENT, CORRELATION = 0.9, 0.98


@pytest.mark.parametrize("case", list(CASES))
def test_agrees_with_float_ann(case):
    graph, snn = CASES[case](), converted(case)
    x = inputs(200, seed=2)
    rows, sim = compare_layers(snn, graph, x, 64)  # the cpu backend, T = 64
    agreement = float((sim.predictions == ann.predict(graph, x)).mean())
    worst = min(r.correlation for r in rows)
    print(f"{case}: top-1 agreement {agreement:.3f}, worst layer correlation {worst:.3f} "
          f"({', '.join(f'{r.layer} {r.correlation:.3f}' for r in rows)})")
    # every layer with an ANN twin is compared, the readout too (a merged Concat layer as one)
    assert len(rows) == len(graph.of_type(ir.ReLU)) + 1 - (case == "concat_readout")
    assert agreement >= AGREEMENT and worst >= CORRELATION


def test_stock_lava_runs_conv_as_sparse():
    """neuron='stock' (Lava's own LIF, Dense and Sparse; what the chip would run): the
    residual block with reset to zero, spike for spike with the cpu backend."""
    snn = convert(residual(), inputs(64, seed=100), reset="zero")
    p = payloads_for(snn, inputs(2, seed=3), 16)
    cpu = CpuBackend()
    ref = cpu.run(cpu.compile(snn), p)
    lava = LavaBackend(neuron="stock")
    assert_identical(ref, lava.run(lava.compile(snn), p))
    assert sum(int(s.sum()) for s in ref.spikes.values()) > 0


def test_loihi2_check_knows_conv_layers(tmp_path):
    snn = convert(residual(), inputs(64, seed=100), reset="zero")
    assert check_loihi2(snn) == []
    notes = loihi2_notes(snn)
    assert len(notes) == len(snn.of_type(ir.FixedConv2d)) + 1
    assert any("'c1.w' (FixedConv2d)" in n and "Sparse" in n for n in notes)
    assert notes[-1].startswith("not checked: neurons, synapse memory and fan-in per neuro core")
    graphio.save(tmp_path / "res.sfg", snn=snn)
    code, text = check_file(tmp_path / "res.sfg")
    assert code == 0 and text.splitlines() == [f"{tmp_path / 'res.sfg'}: fits loihi2"] + [
        f"  note: {n}" for n in notes]
    code, text = check_file(tmp_path / "res.sfg", as_json=True)
    assert code == 0 and json.loads(text)["notes"] == notes
    # the int32 bounds see conv kernels: a heavy kernel into the LIF's a << 6 is named
    # (18 inputs x 127 x payload 255 x 2**7 > 2**25)
    c = snn.node("c1.w")
    heavy = snn.with_nodes([c.replace(weight=np.full_like(c.weight, 127), weight_exp=7)
                            if n.name == "c1.w" else n for n in snn.nodes])
    (problem,) = int32_violations(lower(heavy), heavy)
    assert "node 'c1' (FixedLIF) synaptic input" in problem
    assert any("node 'c1' (FixedLIF) synaptic input" in p for p in check_loihi2(heavy))
    with pytest.raises(UnsupportedError, match="node 'c1' \\(FixedLIF\\) synaptic input"):
        LavaBackend().compile(heavy)


def test_pool_that_does_not_fold_exactly_is_refused():
    """Overlapping 3x3 windows with stride 2 followed by a padded conv: the pooled map's zero
    padding is not a pool of the input's, so no single conv equals the chain."""
    b = Builder((2, 9, 9), seed=8)
    p = b.pool(b.layer("x", "c1", 3, 3, padding=1), "p", 3, 2)
    graph = b.head(b.layer(p, "c2", 4, 3, padding=1))
    with pytest.raises(UnsupportedError) as err:
        convert(graph, np.random.default_rng(0).random((8, 2 * 81)))
    msg = str(err.value)
    assert "\n" not in msg and "pass 'fold_linear'" in msg and "node 'p' (AvgPool2d)" in msg
    assert "cannot be folded exactly" in msg
    # the same overlapping pool before an unpadded conv is one conv (kernel 2 (3 - 1) + 3,
    # stride 2) and folds
    b = Builder((2, 9, 9), seed=8)
    p = b.pool(b.layer("x", "c1", 3, 3, padding=1), "p", 3, 2)
    snn = convert(b.head(b.layer(p, "c2", 4, 3)), np.random.default_rng(0).random((8, 2 * 81)))
    folded = snn.node("c2.w")
    assert not snn.of_type(ir.AvgPool2d) and folded.weight.shape[2:] == (7, 7) and folded.stride == (2, 2)


def test_residual_from_the_raw_input_is_refused():
    b = Builder(SHAPE, seed=9)
    r1 = b.layer("x", "c1", 2, 3, padding=1)
    r2 = b.relu("r2", b.conv(r1, "c2", 2, 3, padding=1), b.identity("x", "skip"))
    graph = b.head(r2)
    with pytest.raises(UnsupportedError) as err:
        convert(graph, inputs(8))
    msg = str(err.value)
    assert "\n" not in msg and "pass 'balance_latency'" in msg
    assert "node 'skip' (FixedConv2d): reads the Input directly" in msg and "'r2'" in msg


def test_torch_cnn_through_from_torch():
    """A torch module with a residual Add, a depthwise conv, a channel concat, a strided conv
    and global average pooling, through from_torch (ONNX): the imported ANN equals torch, the
    converted network agrees with torch's top-1 and is spike-exact on cpu, lava and brian2."""
    import torch
    from torch import nn

    from spikeforge.converter.torch_import import from_torch

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(2, 4, 3, padding=1)
            self.c2 = nn.Conv2d(4, 4, 3, padding=1)
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.c3 = nn.Conv2d(8, 6, 3, stride=2, padding=1)
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            h = torch.relu(self.c1(x))
            r = torch.relu(self.c2(h) + h)
            d = torch.relu(self.dw(r))
            c = torch.relu(self.c3(torch.cat([r, d], 1)))
            return self.fc(nn.functional.adaptive_avg_pool2d(c, 1).flatten(1))

    torch.manual_seed(0)
    model = Net().eval()
    graph = from_torch(model, SHAPE)
    x = inputs(100, seed=4)
    with torch.no_grad():
        logits = model(torch.tensor(x, dtype=torch.float32).reshape(-1, *SHAPE)).numpy()
    np.testing.assert_allclose(ann.forward(graph, x)[graph.output.name], logits, atol=1e-5)
    snn = convert(graph, inputs(64, seed=100))
    assert snn.metadata["relay_layers"] == 1 and not snn.of_type(ir.AvgPool2d, ir.Concat)
    rows, sim = compare_layers(snn, graph, x, 64)
    agreement = float((sim.predictions == logits.argmax(axis=1)).mean())
    print(f"torch CNN: top-1 agreement with torch {agreement:.3f}, layer correlations "
          f"{', '.join(f'{r.layer} {r.correlation:.3f}' for r in rows)}")
    assert agreement >= AGREEMENT and min(r.correlation for r in rows) >= CORRELATION
    _, comparisons = verify(snn, ["cpu", "lava", "brian2"], inputs(3, seed=1), 16)
    for name, c in comparisons.items():
        assert c.mismatched_spikes == 0 and c.mismatched_v_final == 0, (name, c.first_divergence)
        assert c.spikes == c.reference_spikes > 0
