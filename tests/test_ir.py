"""IR validation and graph files."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from spikeforge import graphio, ir
from spikeforge.errors import GraphError, SpikeforgeError
from spikeforge.testing import random_fixed_graph, rewrite_graph_file


def mlp(n_in=4, n_hidden=3, n_out=2) -> ir.Graph:
    return ir.Graph(
        (ir.Input("x", (n_in,)), ir.Affine("fc1", np.ones((n_hidden, n_in)), np.zeros(n_hidden)),
         ir.ReLU("r1", n_hidden), ir.Affine("fc2", np.ones((n_out, n_hidden)), np.zeros(n_out)),
         ir.Output("y", (n_out,))),
        (("x", "fc1"), ("fc1", "r1"), ("r1", "fc2"), ("fc2", "y")),
    )


def test_valid_graph_and_order():
    g = mlp()
    assert g.topological_order() == ["x", "fc1", "r1", "fc2", "y"]
    assert g.is_feedforward()


def test_typed_node_access():
    g = mlp()
    assert g.node("fc1", ir.Affine).weight.shape == (3, 4)
    with pytest.raises(GraphError, match=r"node 'r1' \(ReLU\): expected a node of type Affine here"):
        g.node("r1", ir.Affine)
    with pytest.raises(GraphError, match="no node named 'zz'"):
        g.node("zz", ir.Affine)


@pytest.mark.parametrize("mutate, message", [
    (lambda n, e: (n, e + [("y", "fc1")]), "an Output has no outgoing edge"),
    (lambda n, e: (n, e + [("fc1", "fc2")]), "node 'fc2' (Affine): expected exactly one input edge, found 2"),
    (lambda n, e: (n + [ir.Input("x", (4,))], e), "duplicates ['x']"),
    (lambda n, e: (n, e + [("x", "nope")]), "no node named 'nope'"),
    (lambda n, e: ([m for m in n if not isinstance(m, ir.Output)], e[:-1]), "exactly one Output node, found 0"),
])
def test_invalid_graphs_name_the_problem(mutate, message):
    g = mlp()
    nodes, edges = mutate(list(g.nodes), list(g.edges))
    with pytest.raises(GraphError, match=re.escape(message)):
        ir.Graph(tuple(nodes), tuple(edges))


def test_size_mismatch_names_edge():
    g = mlp()
    nodes = [ir.Affine("fc2", np.ones((2, 5)), np.zeros(2)) if n.name == "fc2" else n for n in g.nodes]
    with pytest.raises(GraphError, match=r"edge r1 -> fc2: 'r1' gives shape \(3,\), 'fc2' expects \(5,\)"):
        ir.Graph(tuple(nodes), g.edges)


def test_cycle_without_delay_is_refused():
    nodes = (ir.Input("x", (2,)), ir.Flatten("f1", (2,)), ir.Flatten("f2", (2,)),
             ir.Affine("a", np.eye(2), np.zeros(2)), ir.IF("n", 2), ir.Output("y", (2,)))
    # a Flatten with two inputs is refused first; build the instantaneous cycle through ReLU+Affine
    with pytest.raises(GraphError):
        ir.Graph(nodes, (("x", "f1"), ("f1", "f2"), ("f2", "f1"), ("f2", "a"), ("a", "n"), ("n", "y")))


def test_recurrent_graph_is_valid_and_edges_classified():
    g = random_fixed_graph([5, 6, 3], recurrent=True, feedback=True)
    assert not g.is_feedforward()
    assert g.is_recurrent_edge("rec1", "lif1")
    assert g.is_recurrent_edge("fb2", "lif1")
    assert not g.is_recurrent_edge("fc2", "lif2")


@pytest.mark.parametrize("field, value, message", [
    ("vth", 2**17, r"vth: expected unsigned 17-bit values in \[0, 131071\], found \[131072, 131072\]"),
    ("du", -1, r"du: expected unsigned 12-bit"),
    ("dv", 4096, r"dv: expected unsigned 12-bit"),
    ("bias_exp", 8, r"bias_exp: expected unsigned 3-bit"),
    ("bias_mant", np.array([5000, 0]), r"bias_mant: expected signed 13-bit values in \[-4096, 4095\], found \[0, 5000\]"),
    ("reset", "half", r"reset must be one of"),
])
def test_fixed_lif_ranges(field, value, message):
    kwargs = dict(vth=100, du=4095, dv=0, bias_mant=np.zeros(2, np.int64), bias_exp=0, reset="zero")
    kwargs[field] = value
    with pytest.raises(GraphError, match=message):
        ir.FixedLIF("n", 2, **kwargs).validate()


def test_fixed_affine_ranges():
    with pytest.raises(GraphError, match=r"node 'w' \(FixedAffine\) weight: expected signed 8-bit values in \[-128, 127\], found \[0, 200\]"):
        ir.FixedAffine("w", np.array([[0, 200]]), 0).validate()
    with pytest.raises(GraphError, match=r"weight_exp: expected signed 4-bit values in \[-8, 7\], found \[9, 9\]"):
        ir.FixedAffine("w", np.array([[0, 1]]), 9).validate()
    with pytest.raises(GraphError, match="expected integers"):
        ir.BITS["weight"].check("w", np.array([0.5]))


def test_graph_file_round_trip(tmp_path):
    g = random_fixed_graph([5, 6, 3], recurrent=True, feedback=True, reset="zero").with_metadata(note="x")
    path = tmp_path / "net.sfg"
    graphio.save(path, snn=g, ann=mlp())
    graphs = graphio.load_all(path)
    h = graphs["snn"]
    assert [type(n) for n in h.nodes] == [type(n) for n in g.nodes]
    assert h.edges == g.edges and h.metadata["note"] == "x"
    for a, b in zip(g.nodes, h.nodes):
        if isinstance(a, ir.FixedAffine):
            assert np.array_equal(a.weight, b.weight) and a.weight_exp == b.weight_exp
        if isinstance(a, ir.FixedLIF):
            assert (a.vth, a.du, a.dv, a.bias_exp, a.reset) == (b.vth, b.du, b.dv, b.bias_exp, b.reset)
            assert np.array_equal(a.bias_mant, b.bias_mant)
    assert isinstance(graphs["ann"].node("fc1"), ir.Affine)
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_graph_files(tmp_path):
    missing = tmp_path / "none.sfg"
    with pytest.raises(SpikeforgeError, match=f"{missing}: no such file"):
        graphio.load(missing)
    junk = tmp_path / "junk.sfg"
    junk.write_bytes(b"not a zip")
    with pytest.raises(SpikeforgeError, match="junk.sfg: not a spikeforge graph file"):
        graphio.load(junk)
    # a file whose weights break the 8-bit range is refused on load, naming file and node
    g = random_fixed_graph([3, 2])
    good = tmp_path / "good.sfg"
    graphio.save(good, snn=g)
    buf = io.BytesIO()
    np.save(buf, np.full((2, 3), 300, np.int64))
    # edited by hand: refused by its content hash
    edited = tmp_path / "edited.sfg"
    rewrite_graph_file(good, edited, members={"snn/fc1/weight.npy": buf.getvalue()}, sign=False)
    with pytest.raises(SpikeforgeError, match=r"edited.sfg: node 'fc1' field 'weight': array 'snn/fc1/weight' "
                                              r"does not match its sha256"):
        graphio.load(edited)
    # the same edit with matching hashes: refused by the range check
    bad = tmp_path / "bad.sfg"
    rewrite_graph_file(good, bad, members={"snn/fc1/weight.npy": buf.getvalue()})
    with pytest.raises(SpikeforgeError, match=r"bad.sfg: graph 'snn': node 'fc1' \(FixedAffine\) weight: expected signed 8-bit"):
        graphio.load(bad)


def test_save_into_missing_folder_writes_nothing(tmp_path):
    with pytest.raises(SpikeforgeError, match="expected an existing folder"):
        graphio.save(tmp_path / "no" / "net.sfg", snn=mlp())


class _CountingName(str):
    """A node name that counts how often it is compared: name lookups are what a quadratic
    validation does O(nodes x edges) times."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        _CountingName.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_graph_validation_and_accessors_are_linear():
    """A chain of 3,999 nodes: validating it and asking every node's neighbours costs O(nodes)
    name comparisons (the quadratic version made ~30 million; benchmarks/graph_validation.py
    times a 16,000-node chain)."""
    n = 2000
    w, b = np.ones((2, 2)), np.zeros(2)
    nodes = [ir.Input(_CountingName("in"), (2,))]
    edges, prev = [], "in"
    for i in range(n - 1):
        nodes += [ir.Affine(_CountingName(f"a{i}"), w, b), ir.ReLU(_CountingName(f"r{i}"), 2)]
        edges += [(prev, f"a{i}"), (f"a{i}", f"r{i}")]
        prev = f"r{i}"
    nodes.append(ir.Output(_CountingName("out"), (2,)))
    edges.append((prev, "out"))
    _CountingName.comparisons = 0
    g = ir.Graph(tuple(nodes), tuple(edges))
    for node in g.nodes:
        g.predecessors(node.name), g.successors(node.name), g.node(node.name)
    g.topological_order()
    assert _CountingName.comparisons < 50 * len(nodes), _CountingName.comparisons
