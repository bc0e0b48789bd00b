"""ONNX import and the conversion passes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from spikeforge import ir
from spikeforge.converter.ann import forward, predict
from spikeforge.converter.onnx_import import load_onnx
from spikeforge.converter.passes import convert, layer_reports, normalize, quantize, relu_to_if
from spikeforge.errors import SpikeforgeError, UnsupportedError
from spikeforge.runner import simulate


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    return x[idx[:1000]], d.target[idx[:1000]], x[idx[1000:1300]], d.target[idx[1000:1300]]


def _export(model: torch.nn.Module, path, n_in: int, shape=None) -> None:
    torch.onnx.export(model, torch.zeros((1, *(shape or (n_in,)))), str(path), dynamo=False,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})


@pytest.fixture(scope="module")
def user_relu_model(digits, tmp_path_factory):
    """A user's own model: Flatten, Linear, plain ReLU, Linear, trained briefly on 8x8 digits."""
    xtr, ytr, _, _ = digits
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    X, Y = torch.tensor(xtr).reshape(-1, 8, 8), torch.tensor(ytr)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(X), Y).backward()
        opt.step()
    path = tmp_path_factory.mktemp("user") / "user.onnx"
    _export(m.eval(), path, 64, shape=(8, 8))
    return path, m


def test_import_matches_torch(user_relu_model, digits):
    path, m = user_relu_model
    g = load_onnx(path)
    assert [type(n).__name__ for n in g.nodes] == ["Input", "Flatten", "Affine", "ReLU", "Affine", "Output"]
    assert g.inputs[0].shape == (8, 8)
    _, _, xte, _ = digits
    ours = forward(g, xte)[g.output.name]
    with torch.no_grad():
        theirs = m(torch.tensor(xte).reshape(-1, 8, 8)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_user_relu_model_converts_and_runs(user_relu_model, digits):
    path, _ = user_relu_model
    xtr, _, xte, yte = digits
    ann = load_onnx(path)
    ann_acc = (predict(ann, xte) == yte).mean()
    snn = convert(ann, xtr[:300])
    sim = simulate(snn, "cpu", xte, 32)
    acc = (sim.predictions == yte).mean()
    assert ann_acc > 0.9
    assert acc >= ann_acc - 0.02, (acc, ann_acc)


def _onnx_model(nodes, inits, n_in=4, n_out=3, path=None):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_matmul_add_batchnorm_softmax(tmp_path):
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(4, 3)), rng.normal(size=3)
    gamma, beta, mean, var = rng.random(3) + 0.5, rng.normal(size=3), rng.normal(size=3), rng.random(3) + 0.1
    path = _onnx_model([
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["h2"], name="add"),
        helper.make_node("BatchNormalization", ["h2", "g", "be", "m", "v"], ["h3"], name="bn", epsilon=1e-5),
        helper.make_node("Softmax", ["h3"], ["y"], name="sm"),
    ], {"W": W, "b": b, "g": gamma, "be": beta, "m": mean, "v": var}, path=tmp_path / "m.onnx")
    g = load_onnx(path)
    x = rng.random((5, 4))
    expect = ((x @ W + b) - mean) / np.sqrt(var + 1e-5) * gamma + beta
    np.testing.assert_allclose(forward(g, x)[g.output.name], expect, rtol=1e-5, atol=1e-5)


def test_unsupported_ops_are_all_named(tmp_path):
    path = _onnx_model([
        helper.make_node("Gemm", ["x", "W"], ["h"], name="fc", transB=1),
        helper.make_node("Sigmoid", ["h"], ["h2"], name="act"),
        helper.make_node("Tanh", ["h2"], ["y"], name="act2"),
    ], {"W": np.ones((3, 4))}, path=tmp_path / "bad.onnx")
    with pytest.raises(UnsupportedError, match=r"bad.onnx: unsupported ops: node 'act' \(Sigmoid\), node 'act2' \(Tanh\); supported: .*Conv.*Gemm"):
        load_onnx(path)


def test_clip_with_negative_min_is_refused(tmp_path):
    path = _onnx_model([
        helper.make_node("Gemm", ["x", "W"], ["h"], name="fc", transB=1),
        helper.make_node("Clip", ["h", "lo", "hi"], ["y"], name="clip"),
    ], {"W": np.ones((3, 4)), "lo": np.array(-1.0), "hi": np.array(1.0)}, path=tmp_path / "c.onnx")
    with pytest.raises(UnsupportedError, match=r"c.onnx: node 'clip' \(Clip\): min must be 0"):
        load_onnx(path)


def test_broken_onnx_file(tmp_path):
    p = tmp_path / "broken.onnx"
    p.write_bytes(b"\x00garbage")
    with pytest.raises(SpikeforgeError, match="broken.onnx: not a valid ONNX model"):
        load_onnx(p)
    with pytest.raises(SpikeforgeError, match="missing.onnx: no such file"):
        load_onnx(tmp_path / "missing.onnx")


def _small_ann(rng, n_in=6, n_h=5, n_out=3, upper=None):
    return ir.Graph(
        (ir.Input("x", (n_in,)), ir.Affine("fc1", rng.normal(size=(n_h, n_in)), rng.normal(size=n_h) * 0.1),
         ir.ReLU("h", n_h, upper), ir.Affine("fc2", rng.normal(size=(n_out, n_h)), rng.normal(size=n_out) * 0.1),
         ir.Output("y", (n_out,))),
        (("x", "fc1"), ("fc1", "h"), ("h", "fc2"), ("fc2", "y")))


def test_normalize_percentile_maps_activations_to_unit_rate():
    rng = np.random.default_rng(1)
    ann = _small_ann(rng)
    x = rng.random((400, 6))
    norm = normalize(ann, x, "percentile", 99.0)
    before, after = forward(ann, x), forward(norm, x)
    pos = before["h"][before["h"] > 0]
    lam = np.percentile(pos, 99.0)
    np.testing.assert_allclose(after["h"], np.clip(before["h"] / lam, 0, 1), atol=1e-9)
    assert norm.node("h").upper == 1.0
    # max normalization clips nothing on the calibration data: predictions unchanged
    norm_max = normalize(ann, x, "max")
    assert np.array_equal(predict(norm_max, x), predict(ann, x))


def test_clipped_relu_upper_bounds_lambda():
    rng = np.random.default_rng(2)
    ann = _small_ann(rng, upper=0.05)  # most activations clip at 0.05: lambda must not exceed it
    norm = normalize(ann, rng.random((200, 6)))
    lam = norm.metadata["normalization"]["lambda"]["fc1"]
    assert lam <= 0.05


def test_relu_to_if_adds_readout():
    rng = np.random.default_rng(3)
    g = relu_to_if(normalize(_small_ann(rng), rng.random((50, 6))), "zero")
    assert isinstance(g.node("h"), ir.IF) and g.node("h").reset == "zero"
    assert isinstance(g.node("readout"), ir.IF)
    assert g.predecessors("y") == ["readout"]


def test_quantize_ranges_and_precision():
    rng = np.random.default_rng(4)
    g = quantize(relu_to_if(normalize(_small_ann(rng), rng.random((50, 6)))))
    assert g.is_fixed()
    reports = {r.layer: r for r in layer_reports(g)}
    for name in ("fc1", "fc2"):
        fa = g.node(name)
        assert np.abs(fa.weight).max() == 127  # the full 8-bit range is used
    # dequantized weights equal the float ones within half an LSB
    norm = relu_to_if(normalize(_small_ann(rng := np.random.default_rng(4)), rng.random((50, 6))))
    fa, lif = g.node("fc2"), g.node("readout")
    deq = fa.weight * 2.0**fa.weight_exp / lif.vth
    lsb = 2.0**fa.weight_exp / lif.vth
    assert np.abs(deq - norm.node("fc2").weight).max() <= lsb / 2 + 1e-12
    assert reports["h"].clipped_weights == 0 and reports["h"].saturated_biases == 0
    assert g.inputs[0].payload_bits == 8


def test_quantize_counts_saturation():
    # weights far beyond what exponent 7 can express, and a bias far beyond 13 bits << 7
    g = ir.Graph(
        (ir.Input("x", (2,)), ir.Affine("fc", np.array([[1e7, 1.0], [0.01, 0.02]]), np.array([0.0, 1e6])),
         ir.IF("n", 2), ir.Output("y", (2,))),
        (("x", "fc"), ("fc", "n"), ("n", "y")))
    q = quantize(g)
    (r,) = layer_reports(q)
    assert r.saturated_biases == 1 and r.clipped_weights >= 1
    assert q.node("n").bias_exp == 7
    assert int(np.abs(q.node("fc").weight).max()) <= 127


def test_from_torch_matches_module(user_relu_model, digits):
    from spikeforge.converter.torch_import import from_torch

    _, m = user_relu_model
    g = from_torch(m, (8, 8))
    _, _, xte, _ = digits
    with torch.no_grad():
        expect = m(torch.tensor(xte).reshape(-1, 8, 8)).numpy()
    np.testing.assert_allclose(forward(g, xte)[g.output.name], expect, atol=1e-4)
    bad = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Sigmoid())
    with pytest.raises(UnsupportedError, match=r"^torch module Sequential: unsupported ops: node .*\(Sigmoid\)"):
        from_torch(bad, (4,))


def test_batchnorm_after_activation_folds_into_next_layer():
    from spikeforge.converter.torch_import import from_torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Hardtanh(0, 1), torch.nn.BatchNorm1d(5),
                            torch.nn.Linear(5, 3))
    with torch.no_grad():  # non-trivial running statistics
        m[2].running_mean.uniform_(0, 0.5)
        m[2].running_var.uniform_(0.5, 2)
        m[2].weight.uniform_(0.5, 1.5)
        m[2].bias.uniform_(-0.3, 0.3)
    g = from_torch(m.eval(), (6,))
    assert [type(n).__name__ for n in g.nodes] == ["Input", "Affine", "ReLU", "Affine", "Output"]
    x = np.random.default_rng(0).random((20, 6))
    with torch.no_grad():
        expect = m(torch.tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(forward(g, x)[g.output.name], expect, atol=1e-5)


def test_quantize_uses_the_full_8bit_mantissa_range_on_random_layers():
    """Every projection gets the smallest exponent its largest weight fits (so its largest
    |mantissa| is in 64..127, all 8 bits used) unless the exponent sits at a bound, and each
    layer's largest weight maps to 127. Before, the rounded threshold pushed the largest weight
    just past 127 in about 40 % of layers and the bumped exponent halved the mantissas (max 64)."""
    rng = np.random.default_rng(7)
    lo, hi = ir.BITS["weight_exp"].lo, ir.BITS["weight_exp"].hi
    checked = full = 0
    for trial in range(300):
        n_in, n_h, n_out = (int(v) for v in rng.integers(1, 40, size=3))
        scale = 10.0 ** rng.uniform(-3, 2)
        bits = int(rng.integers(1, 9))
        g = ir.Graph(
            (ir.Input("x", (n_in,)),
             ir.Affine("fc1", rng.normal(size=(n_h, n_in)) * scale, np.zeros(n_h)), ir.IF("h", n_h),
             ir.Affine("rec", rng.normal(size=(n_h, n_h)) * scale * rng.uniform(0.001, 0.3), np.zeros(n_h)),
             ir.Affine("fc2", rng.normal(size=(n_out, n_h)) * rng.uniform(0.01, 10), np.zeros(n_out)),
             ir.IF("out", n_out), ir.Output("y", (n_out,))),
            (("x", "fc1"), ("fc1", "h"), ("h", "rec"), ("rec", "h"), ("h", "fc2"), ("fc2", "out"), ("out", "y")))
        q = quantize(g, payload_bits=bits)
        projections = (("fc1", "h", 1 / (2**bits - 1)), ("rec", "h", 1.0), ("fc2", "out", 1.0))
        m_of = {name: float(np.abs(g.node(name).weight).max()) * gain for name, _, gain in projections}
        primary = {"fc1" if m_of["fc1"] >= m_of["rec"] else "rec", "fc2"}
        for name, layer, _ in projections:
            fa, vth, m = q.node(name), q.node(layer).vth, m_of[name]
            biggest = int(np.abs(fa.weight).max())
            assert biggest <= 127
            if lo < fa.weight_exp < hi and 1 < vth < ir.BITS["vth"].hi:
                # one exponent less would not fit: the largest mantissa is as large as it can be
                assert np.rint(m * vth / 2.0 ** (fa.weight_exp - 1)) > 127, (trial, name, biggest)
                assert biggest >= 64
                checked += 1
                if name in primary:  # the layer's largest weight maps to 127
                    assert biggest == 127, (trial, name, biggest, fa.weight_exp)
                    full += 1
    assert checked > 500 and full > 250


@pytest.mark.parametrize("family", [dict(), dict(du=3000, dv=300), dict(dv=200, leak=40, v_rest=-500)])
def test_align_initial_state_gives_v_zero_when_the_input_arrives(family):
    """With no synaptic input before a layer's first input step d (its depth), v_init makes
    v = 0 exactly after step d - 1 and no spike before it; where a negative bias would cross
    the threshold on the way, fewer steps are undone (still no spike)."""
    from spikeforge.converter.latency import align_initial_state, hops
    from spikeforge.neuron import lif_init, lif_step
    from spikeforge.network import Layer
    from spikeforge.testing import random_fixed_graph

    g = random_fixed_graph([6, 20, 20, 20, 8], seed=4, reset="zero")
    rng = np.random.default_rng(1)
    nodes = []
    for n in g.nodes:
        if isinstance(n, ir.FixedLIF):
            n = n.replace(bias_mant=rng.integers(-4096, 4096, n.size), bias_exp=2, vth=300, **family)
        nodes.append(n)
    g = align_initial_state(g.with_nodes(nodes))
    depth = hops(g)
    exact = partial = 0
    for node in g.of_type(ir.FixedLIF):
        d, p = depth[node.name], Layer(node.name, node).params
        state, fired = lif_init(1, node.size, node.v_init), np.zeros(node.size, bool)
        for _ in range(d):
            state, s = lif_step(p, state, np.zeros((1, node.size), np.int64))
            fired |= s[0]
        assert not fired.any()
        zero = state.v[0] == 0
        assert (node.v_init[zero & (node.bias != 0)] != 0).all()
        exact += int(zero.sum())
        partial += int((~zero & (node.v_init != 0)).sum())
        assert (zero | (node.bias < 0)).all()  # only a negative bias can be left partly undone
    assert exact > 0 and partial > 0  # both cases occur (deep layers, biases above threshold)


def test_a_single_linear_layer_converts_and_an_empty_model_is_refused(tmp_path, digits, capsys):
    """A logistic regression (one Linear, no ReLU) was taken for a spiking source and crashed
    in the check; a model without any layer was 'converted' into an empty graph, exit 0."""
    from spikeforge.cli import main

    xtr, ytr, xte, yte = digits
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 10)
    opt = torch.optim.Adam(lin.parameters(), 0.05)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(torch.as_tensor(xtr)), torch.as_tensor(ytr)).backward()
        opt.step()
    _export(lin, tmp_path / "lin.onnx", 64)
    _export(torch.nn.Sequential(torch.nn.Identity()), tmp_path / "none.onnx", 64)
    np.savez(tmp_path / "calib.npz", x=xtr[:200])
    np.savez(tmp_path / "test.npz", x=xte, y=yte)
    assert main(["convert", str(tmp_path / "lin.onnx"), "--calib", str(tmp_path / "calib.npz"),
                 "-o", str(tmp_path / "lin.sfg")]) == 0
    capsys.readouterr()
    assert main(["simulate", str(tmp_path / "lin.sfg"), "--data", str(tmp_path / "test.npz"), "--json"]) == 0
    import json

    res = json.loads(capsys.readouterr().out)
    assert res["accuracy"] > 0.85 and abs(res["accuracy"] - res["ann_accuracy"]) <= 0.02, res
    assert main(["convert", str(tmp_path / "none.onnx"), "--calib", str(tmp_path / "calib.npz"),
                 "-o", str(tmp_path / "none.sfg")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none.onnx: nothing to convert" in err
    assert not (tmp_path / "none.sfg").exists()


class _ViewNet(torch.nn.Module):
    """The usual x.view(x.size(0), -1): with a dynamic batch the legacy exporter writes
    Shape -> Gather -> Unsqueeze -> Concat -> Reshape (refused before as unsupported ops)."""

    def __init__(self, target: tuple[str, ...] = ("batch", "-1")) -> None:
        super().__init__()
        self.c, self.p, self.f = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.AvgPool2d(2), torch.nn.Linear(64, 10)
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.p(torch.relu(self.c(x)))
        if self.target == ("batch", "-1"):
            return self.f(h.view(h.size(0), -1))
        return self.f(h.view(h.size(0), 4, -1).flatten(1))  # a reshape to 3-D first


def test_view_by_batch_size_with_a_dynamic_batch(tmp_path, digits):
    _, _, xte, _ = digits
    torch.manual_seed(0)
    m = _ViewNet().eval()
    _export(m, tmp_path / "v.onnx", 0, shape=(1, 8, 8))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "v.onnx")).graph.node]
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape"} <= set(ops)
    g = load_onnx(tmp_path / "v.onnx")
    with torch.no_grad():
        theirs = m(torch.tensor(xte).reshape(-1, 1, 8, 8)).numpy()
    np.testing.assert_allclose(forward(g, xte)[g.output.name], theirs, atol=1e-4)
    _export(_ViewNet(("batch", "4", "-1")).eval(), tmp_path / "w.onnx", 0, shape=(1, 8, 8))
    with pytest.raises(UnsupportedError, match=r"w.onnx: node .*\(Reshape\): reshape to \['batch', 4, -1\]"):
        load_onnx(tmp_path / "w.onnx")
