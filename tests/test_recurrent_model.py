"""RecurrentRateNet: shapes, the synchronous one-step-delay timing, training, IR export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikeforge import data, graphio, ir
from spikeforge.converter import ann
from spikeforge.errors import DataError, SpikeforgeError
from spikeforge.models import RecurrentRateNet, evaluate, save_recurrent, to_graph, train_recurrent


@pytest.fixture(scope="module")
def digits() -> data.Split:
    return data.split(data.load("digits"), seed=0)


@pytest.fixture(scope="module")
def trained(digits: data.Split) -> tuple[RecurrentRateNet, dict]:
    return train_recurrent(digits.train, hidden=(64,), iterations=12, epochs=15, seed=0)


def random_net(hidden=(7, 5, 4), feedback=True, iterations=6, seed=0) -> RecurrentRateNet:
    torch.manual_seed(seed)
    net = RecurrentRateNet(12, hidden, 3, iterations=iterations, feedback=feedback, in_shape=(3, 4),
                           rec_scale=2.0)
    return net.eval()


def hand_net(hidden, iterations, **weights) -> RecurrentRateNet:
    """A net with every parameter zero except those given (name -> value)."""
    net = RecurrentRateNet(1, hidden, 1, iterations=iterations, feedback=True)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for name, value in weights.items():
            dict(net.named_parameters())[name].fill_(value)
    return net.eval()


def reference(net: RecurrentRateNet, x: np.ndarray) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """The equations of the module docstring, written out with numpy (float64)."""
    p = {k: v.detach().numpy().astype(np.float64) for k, v in net.state_dict().items()}
    L = len(net.hidden)
    x = x.reshape(len(x), -1).astype(np.float64)
    h = [np.zeros((len(x), n)) for n in net.hidden]
    hist: list[list[np.ndarray]] = [[] for _ in range(L)]
    ys = []
    for _ in range(net.iterations):
        ys.append(h[-1] @ p["readout.weight"].T + p["readout.bias"])
        new = []
        for l in range(L):
            below = x if l == 0 else h[l - 1]
            z = below @ p[f"ff.{l}.weight"].T + p[f"ff.{l}.bias"] + h[l] @ p[f"rec.{l}.weight"].T
            if net.feedback and l < L - 1:
                z = z + h[l + 1] @ p[f"fb.{l}.weight"].T
            new.append(np.clip(z, 0.0, 1.0))
        h = new
        for l in range(L):
            hist[l].append(h[l])
    return np.mean(ys, axis=0), hist


# -- shapes and semantics ---------------------------------------------------------------------
def test_shapes_and_parameters() -> None:
    net = random_net()
    x = torch.rand(5, 3, 4)
    assert net(x).shape == (5, 3)
    assert torch.equal(net(x), net(x.reshape(5, 12)))
    traj = net.trajectory(x)
    assert set(traj) == {"h1", "h2", "h3", "out"}
    assert traj["h1"].shape == (6, 5, 7) and traj["h2"].shape == (6, 5, 5) and traj["h3"].shape == (6, 5, 4)
    assert traj["out"].shape == (6, 5, 3)
    assert torch.allclose(traj["out"].mean(0), net(x), atol=1e-6)
    assert all(float(v.min()) >= 0.0 and float(v.max()) <= 1.0 for k, v in traj.items() if k != "out")
    assert [tuple(m.weight.shape) for m in net.rec] == [(7, 7), (5, 5), (4, 4)]
    assert [tuple(m.weight.shape) for m in net.fb] == [(7, 5), (5, 4)]
    assert all(m.bias is None for m in list(net.rec) + list(net.fb))
    assert len(random_net(feedback=False).fb) == 0
    one = RecurrentRateNet(64, (128,), 10)  # defaults: one hidden layer, K = 12, no feedback possible
    assert one.iterations == 12 and not one.feedback and len(one.fb) == 0
    with pytest.raises(DataError, match="expected 12 input features, found 11"):
        net(torch.rand(2, 11))
    with pytest.raises(ValueError):
        RecurrentRateNet(4, (), 2)
    with pytest.raises(ValueError):
        RecurrentRateNet(4, (3,), 2, iterations=0)


def test_self_recurrence_by_hand() -> None:
    # One unit: h[k] = clip(0.5 x + 0.5 h[k-1], 0, 1), h[0] = 0, x = 1 -> h[k] = 1 - 2^-k.
    # y[k] = h[k-1] (readout weight 1, one step of delay): logits = mean(h[0..K-1]).
    net = hand_net((1,), 4, **{"ff.0.weight": 0.5, "rec.0.weight": 0.5, "readout.weight": 1.0})
    x = torch.ones(1, 1)
    traj = net.trajectory(x)
    assert traj["h1"][:, 0, 0].tolist() == [0.5, 0.75, 0.875, 0.9375]
    assert traj["out"][:, 0, 0].tolist() == [0.0, 0.5, 0.75, 0.875]
    assert float(net(x).detach()) == pytest.approx((0 + 0.5 + 0.75 + 0.875) / 4)
    # Clipping at 1 and at 0; the readout bias is added at every iteration (also the first).
    net = hand_net((1,), 3, **{"ff.0.weight": 0.75, "rec.0.weight": 1.0, "readout.weight": 2.0,
                                "readout.bias": -1.0})
    assert net.trajectory(x)["h1"][:, 0, 0].tolist() == [0.75, 1.0, 1.0]
    assert float(net(x).detach()) == pytest.approx((-1.0 + 0.5 + 1.0) / 3)
    net = hand_net((1,), 3, **{"ff.0.weight": -1.0, "ff.0.bias": 0.5})
    assert net.trajectory(x)["h1"][:, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_feedforward_and_feedback_delays_by_hand() -> None:
    # x = 1; h1[k] = clip(0.25 x + 0.5 h2[k-1]); h2[k] = clip(h1[k-1]); y[k] = h2[k-1].
    # Every connection adds one step: h2 sees h1's previous value, h1 sees h2's previous value.
    net = hand_net((1, 1), 5, **{"ff.0.weight": 0.25, "ff.1.weight": 1.0, "fb.0.weight": 0.5,
                                 "readout.weight": 1.0})
    traj = net.trajectory(torch.ones(1, 1))
    h1 = [0.25, 0.25, 0.375, 0.375, 0.4375]
    h2 = [0.0, 0.25, 0.25, 0.375, 0.375]
    assert traj["h1"][:, 0, 0].tolist() == h1
    assert traj["h2"][:, 0, 0].tolist() == h2
    assert traj["out"][:, 0, 0].tolist() == [0.0] + h2[:4]
    # A constant hidden bias is felt from the first iteration on; the readout only one later.
    net = hand_net((1, 1), 3, **{"ff.1.bias": 0.5, "readout.weight": 1.0})
    traj = net.trajectory(torch.zeros(1, 1))
    assert traj["h2"][:, 0, 0].tolist() == [0.5, 0.5, 0.5]
    assert traj["out"][:, 0, 0].tolist() == [0.0, 0.5, 0.5]


@pytest.mark.parametrize("hidden,feedback", [((7,), True), ((7, 5, 4), True), ((7, 5), False)])
def test_matches_written_equations(hidden, feedback) -> None:
    net = random_net(hidden, feedback)
    x = np.random.default_rng(1).random((9, 12)).astype(np.float32)
    logits, hist = reference(net, x)
    got = net(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(got, logits, atol=1e-5)
    traj = net.trajectory(torch.from_numpy(x))
    for l in range(len(hidden)):
        assert np.allclose(traj[f"h{l + 1}"].numpy(), np.stack(hist[l]), atol=1e-5)
    # The loops matter: some unit is neither always 0 nor constant over iterations.
    assert any(float(traj[f"h{l + 1}"].std(0).max()) > 1e-3 for l in range(len(hidden)))


# -- training ---------------------------------------------------------------------------------
def test_training_accuracy_and_determinism(digits: data.Split, trained) -> None:
    model, info = trained
    acc = evaluate(model, digits.test)
    assert acc >= 0.93, info
    assert info["hidden"] == (64,) and info["iterations"] == 12 and info["epochs"] == 15
    assert info["n_train"] + info["n_val"] == digits.train.n and info["val_accuracy"] > 0.9
    assert not model.training
    # Same seed, same model (bit for bit); L = 2 with feedback and augmentation also trains.
    again, _ = train_recurrent(digits.train, hidden=(64,), iterations=12, epochs=15, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    deep, dinfo = train_recurrent(digits.train, hidden=(48, 32), feedback=True, iterations=8,
                                  epochs=12, seed=1, input_noise=0.05, occlusion=0.1)
    assert deep.feedback and len(deep.fb) == 1
    assert evaluate(deep, digits.test) >= 0.9, dinfo
    with pytest.raises(DataError):
        train_recurrent(digits.train, occlusion=1.0)


# -- export ------------------------------------------------------------------------------------
def test_to_graph_structure() -> None:
    net = random_net()
    g = to_graph(net)
    assert g.metadata == {"arch": "recurrent", "iterations": 6}
    assert g.node("input").shape == (3, 4) and isinstance(g.node("input"), ir.Input)
    assert isinstance(g.output, ir.Output) and g.output.name == "output" and g.output.shape == (3,)
    for l in (1, 2, 3):
        h = g.node(f"h{l}")
        assert isinstance(h, ir.ReLU) and h.upper == 1.0
        assert sorted(g.predecessors(f"h{l}")) == sorted([f"ff{l}", f"rec{l}"] + ([f"fb{l}"] if l < 3 else []))
        assert np.array_equal(g.node(f"rec{l}").weight, net.rec[l - 1].weight.detach().numpy())
        assert not g.node(f"rec{l}").bias.any()
        assert np.array_equal(g.node(f"ff{l}").bias, net.ff[l - 1].bias.detach().numpy())
    assert ("h1", "ff2") in g.edges and ("h3", "fb2") in g.edges and ("fb2", "h2") in g.edges
    assert ("h3", "out") in g.edges and ("out", "output") in g.edges and ("input", "ff1") in g.edges
    assert not g.is_feedforward()
    g1 = to_graph(random_net((7,), feedback=True))
    assert {n.name for n in g1.nodes} == {"input", "ff1", "h1", "rec1", "out", "output"}


def test_save_round_trip(tmp_path) -> None:
    net = random_net()
    path = tmp_path / "model.sfg"
    save_recurrent(net, path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.sfg"]  # no temporary left behind
    back = graphio.load(path, "ann")
    g = to_graph(net)
    assert back.edges == g.edges and dict(back.metadata) == g.metadata
    for a in g.nodes:
        b = back.node(a.name)
        assert type(a) is type(b)
        if isinstance(a, ir.Affine):
            assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    assert back.node("input").shape == (3, 4) and back.node("h2").upper == 1.0
    with pytest.raises(SpikeforgeError, match="expected an existing folder"):
        save_recurrent(net, tmp_path / "missing" / "model.sfg")


@pytest.mark.parametrize("hidden,feedback", [((7,), True), ((7, 5, 4), True), ((7, 5), False)])
def test_ann_forward_equals_torch(hidden, feedback, tmp_path) -> None:
    net = random_net(hidden, feedback)
    x = np.random.default_rng(2).random((11, 12)).astype(np.float32)
    want = net(torch.from_numpy(x)).detach().numpy()
    save_recurrent(net, tmp_path / "m.sfg")
    for g in (to_graph(net), graphio.load(tmp_path / "m.sfg", "ann")):
        got = ann.forward(g, x, iterations=net.iterations)["output"]
        assert np.allclose(got, want, atol=1e-4)
        assert np.allclose(ann.forward(g, x)["output"], want, atol=1e-4)  # K from metadata
    want_traj = net.trajectory(torch.from_numpy(x))
    got_traj = ann.trajectory(to_graph(net), x)
    for l in range(len(hidden)):
        assert np.allclose(got_traj[f"h{l + 1}"], want_traj[f"h{l + 1}"].numpy(), atol=1e-5)
    assert np.allclose(got_traj["output"], want_traj["out"].numpy(), atol=1e-5)


def test_trained_model_ann_forward(digits: data.Split, trained) -> None:
    model, _ = trained
    g = to_graph(model)
    x = digits.test.x
    want = model(torch.from_numpy(x)).detach().numpy()
    got = ann.forward(g, x)["output"]
    assert np.allclose(got, want, atol=1e-4)
    assert np.mean(got.argmax(1) == digits.test.y) == pytest.approx(evaluate(model, digits.test), abs=2 / len(x))
