"""Fuzzing the readers (hypothesis): valid .sfg, .npz and ONNX files, mutated by bit flips,
truncation, swapped and renamed members, edited JSON and .npy headers, edited ONNX protos.
Every outcome must be a valid load or one SpikeforgeError (one line) -- never another
exception, never a hang. The outcome counts are printed (pytest -s) and checked."""

from __future__ import annotations

import collections
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from spikeforge import graphio, ir
from spikeforge.data import Dataset, load_npz, save_npz
from spikeforge.errors import SpikeforgeError
from spikeforge.testing import random_fixed_graph

#: Examples per file kind: 3 x 110 = 330 cases in all, deterministic (derandomized) in CI;
#: SPIKEFORGE_FUZZ_EXAMPLES=N runs N per kind from a random seed (a longer local hunt).
EXAMPLES = int(os.environ.get("SPIKEFORGE_FUZZ_EXAMPLES", "110"))
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, derandomize="SPIKEFORGE_FUZZ_EXAMPLES" not in os.environ,
                database=None,
                phases=(Phase.explicit, Phase.generate, Phase.shrink),
                suppress_health_check=list(HealthCheck))

#: JSON values an edit puts somewhere in graph.json.
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, 1, -1, 8, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.lists(st.integers(-3, 10), max_size=4), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _outcome(load: Callable[[Path], Any], path: Path) -> str:
    try:
        load(path)
    except SpikeforgeError as exc:
        text = str(exc)
        assert text and "\n" not in text and len(text) < 1000, repr(text)
        return "refused"
    return "loaded"


def _zip_members(raw: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _zip(members: dict[str, bytes] | list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (members.items() if isinstance(members, dict) else members):
            zf.writestr(name, data)
    return buf.getvalue()


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys/indices) into a JSON document."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _set_path(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


# -- mutations ---------------------------------------------------------------------------------
def flips(data: st.DataObject, raw: bytes) -> bytes:
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        out[data.draw(st.integers(0, len(out) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    return bytes(out)


def truncate(data: st.DataObject, raw: bytes) -> bytes:
    return raw[:data.draw(st.integers(0, len(raw) - 1))]


def zip_member_edit(data: st.DataObject, raw: bytes) -> bytes:
    """Swap two members' contents, rename one, drop one, duplicate one, or flip bytes inside one
    (stored again, so the zip's own CRC passes and the reader's checks must catch it)."""
    members = _zip_members(raw)
    names = sorted(members)
    kind = data.draw(st.sampled_from(["swap", "rename", "drop", "duplicate", "inner-flip", "inner-truncate"]))
    a, b = data.draw(st.sampled_from(names)), data.draw(st.sampled_from(names))
    if kind == "swap":
        members[a], members[b] = members[b], members[a]
    elif kind == "rename":
        members[data.draw(st.sampled_from(["x.npy", "graph.json", a + "x", "dir/", "../" + a]))] = members.pop(a)
    elif kind == "drop":
        members.pop(a)
    elif kind == "duplicate":
        return _zip([*members.items(), (a, members[b])])
    elif kind == "inner-flip":
        members[a] = flips(data, members[a]) if members[a] else b"\x00"
    else:
        members[a] = members[a][:data.draw(st.integers(0, max(len(members[a]) - 1, 0)))]
    return _zip(members)


def npy_header_edit(data: st.DataObject, raw: bytes) -> bytes:
    """Rewrite an .npy header: its shape, dtype or the header text itself."""
    members = _zip_members(raw)
    name = data.draw(st.sampled_from(sorted(n for n in members if n.endswith(".npy"))))
    arr_bytes = members[name]
    end = arr_bytes.index(b"\n") + 1
    header = arr_bytes[10:end].decode("latin1")
    kind = data.draw(st.sampled_from(["shape", "descr", "text", "fortran"]))
    if kind == "shape":
        dims = data.draw(st.lists(st.integers(0, 2**40), min_size=0, max_size=3))
        new = header.split("'shape':")[0] + f"'shape': ({', '.join(map(str, dims))}{',' if len(dims) == 1 else ''}), }}"
    elif kind == "descr":
        descr = data.draw(st.sampled_from(["<f8", "|b1", "<c16", "|O", "<U3", "|V8", "<i2", ">i8", "<m8", "[('a','<i4')]"]))
        new = header.replace(header.split("'descr': ")[1].split(",")[0], repr(descr) if "[" not in descr else descr, 1)
    elif kind == "fortran":
        new = header.replace("False", data.draw(st.sampled_from(["True", "1", "None"])), 1)
    else:
        new = data.draw(st.text(max_size=60))
    body = new.encode("latin1", "replace")
    members[name] = arr_bytes[:8] + len(body).to_bytes(2, "little") + body + arr_bytes[end:]
    return _zip(members)


def json_edit(data: st.DataObject, raw: bytes) -> bytes:
    """Put a value anywhere in graph.json (or delete a key), with hashes recomputed or not."""
    members = _zip_members(raw)
    doc = json.loads(members.pop("graph.json"))
    path = data.draw(st.sampled_from(_paths(doc)))
    if path and isinstance(path[-1], str) and data.draw(st.booleans()):
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    else:
        doc = _set_path(doc, path, data.draw(JSON_VALUES))
    sign = data.draw(st.booleans())
    if sign and isinstance(doc, dict):
        import hashlib

        doc["members"] = {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in members.items()}
        doc["sha256"] = graphio._digest(doc)
    return _zip({"graph.json": json.dumps(doc).encode(), **members})


def fuzz_zip(seed: bytes, load: Callable[[Path], Any], tmp: Path, tally: collections.Counter,
             json_member: bool) -> None:
    mutations = [flips, truncate, zip_member_edit, npy_header_edit] + ([json_edit] * 3 if json_member else [])

    @FUZZ
    @given(st.data())
    def case(data: st.DataObject) -> None:
        mutate = data.draw(st.sampled_from(mutations))
        raw = mutate(data, seed)
        path = tmp / "case"
        path.write_bytes(raw)
        tally[f"{mutate.__name__}: {_outcome(load, path)}"] += 1

    case()


def load_and_run(path: Path) -> None:
    """Load every graph and use it as the commands do: the SNN runs on cpu (2 samples, T = 2)
    with its per-layer reports, the ANN is evaluated."""
    from spikeforge.converter.ann import forward
    from spikeforge.converter.passes import layer_reports
    from spikeforge.runner import simulate

    graphs = graphio.load_all(path)
    for key, g in graphs.items():
        x = np.full((2, g.inputs[0].out_size), 0.5)
        if g.is_fixed():
            simulate(g, "cpu", x, 2)
            layer_reports(g)
        else:
            forward(g, x)


def onnx_load_and_convert(path: Path) -> None:
    from spikeforge.converter.onnx_import import load_onnx
    from spikeforge.converter.passes import convert

    g = load_onnx(path)
    convert(g, np.full((4, g.inputs[0].out_size), 0.5))


@pytest.fixture()
def sfg_seed(tmp_path: Path) -> bytes:
    rng = np.random.default_rng(0)
    ann = ir.Graph((ir.Input("x", (6,)), ir.Affine("fc1", rng.normal(size=(5, 6)), np.zeros(5)), ir.ReLU("h", 5),
                    ir.Affine("fc2", rng.normal(size=(3, 5)), np.zeros(3)), ir.Output("y", (3,))),
                   (("x", "fc1"), ("fc1", "h"), ("h", "fc2"), ("fc2", "y")), {"iterations": 3})
    graphio.save(tmp_path / "seed.sfg", snn=random_fixed_graph([6, 5, 3], seed=1, recurrent=True), ann=ann)
    return (tmp_path / "seed.sfg").read_bytes()


def _report(kind: str, tally: collections.Counter) -> None:
    total = sum(tally.values())
    print(f"\nfuzz {kind}: {total} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
    assert total >= EXAMPLES * 0.9, tally
    assert any(k.endswith("refused") for k in tally)


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_fuzz_graph_files(sfg_seed, tmp_path):
    tally: collections.Counter = collections.Counter()
    fuzz_zip(sfg_seed, load_and_run, tmp_path, tally, json_member=True)
    _report("sfg", tally)


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_fuzz_npz(tmp_path):
    rng = np.random.default_rng(0)
    save_npz(tmp_path / "seed.npz", Dataset(rng.random((10, 6), dtype=np.float32), rng.integers(0, 3, 10), (6,), "d"))
    tally: collections.Counter = collections.Counter()
    fuzz_zip((tmp_path / "seed.npz").read_bytes(), load_npz, tmp_path, tally, json_member=False)
    _report("npz", tally)


# -- ONNX ----------------------------------------------------------------------------------------
def onnx_seed() -> Any:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("W1", (5, 6)), ("b1", (5,)), ("W2", (3, 5)), ("b2", (3,)))]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Clip", ["r"], ["c"], name="clip", min=0.0, max=1.0) if False else
             helper.make_node("Identity", ["r"], ["c"], name="id"),
             helper.make_node("Gemm", ["c", "W2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def proto_edit(data: st.DataObject, model: Any) -> None:
    """Change one thing in the parsed model: a tensor's type, dims or bytes, an attribute, the
    opset, an input's dims, an op type, a node's input name, external data locations."""
    import onnx

    g = model.graph
    kind = data.draw(st.sampled_from(["data_type", "dims", "raw_data", "string", "opset", "attribute",
                                      "input_dims", "op_type", "input_name", "external", "clip_bounds"]))
    t = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
    node = g.node[data.draw(st.integers(0, len(g.node) - 1))]
    if kind == "data_type":
        t.data_type = data.draw(st.sampled_from([0, 2, 3, 6, 7, 8, 9, 10, 11, 14, 16, 17, 30, 999]))
    elif kind == "dims":
        del t.dims[:]
        t.dims.extend(data.draw(st.lists(st.integers(-2, 2**33), max_size=4)))
    elif kind == "raw_data":
        t.raw_data = t.raw_data[:data.draw(st.integers(0, max(len(t.raw_data) - 1, 0)))]
    elif kind == "string":
        t.data_type = onnx.TensorProto.STRING
        t.ClearField("raw_data")
        t.string_data.extend([b"a"] * int(np.prod(t.dims)))
    elif kind == "opset":
        model.opset_import[0].version = data.draw(st.sampled_from([0, 1, 6, 7, 11, 999, -1, 2**40]))
    elif kind == "attribute":
        node.attribute.append(onnx.helper.make_attribute(
            data.draw(st.sampled_from(["transA", "transB", "alpha", "beta", "axis", "min", "max"])),
            data.draw(st.one_of(st.integers(-3, 3), st.floats(allow_nan=True), st.lists(st.integers(0, 3), min_size=1, max_size=3)))))
    elif kind == "input_dims":
        dims = g.input[0].type.tensor_type.shape.dim
        dims[data.draw(st.integers(0, len(dims) - 1))].dim_value = data.draw(st.sampled_from([0, 2, 7, 2**40]))
    elif kind == "op_type":
        node.op_type = data.draw(st.sampled_from(["MatMul", "Add", "Relu", "Clip", "Conv", "Flatten", "Reshape",
                                                  "BatchNormalization", "Softmax", "AveragePool", "Concat", "Foo"]))
    elif kind == "input_name":
        node.input[data.draw(st.integers(0, len(node.input) - 1))] = data.draw(st.sampled_from(["x", "W1", "b2", "zz", ""]))
    elif kind == "external":
        t.data_location = onnx.TensorProto.EXTERNAL
        t.ClearField("raw_data")
        loc = data.draw(st.sampled_from(["../../etc/passwd", "/etc/passwd", "missing.bin", "link.bin", "w.bin"]))
        t.external_data.add(key="location", value=loc)
        t.external_data.add(key="length", value=str(data.draw(st.sampled_from([4, 20, 2**40]))))
    else:  # vector Clip bounds
        node.op_type = "Clip"
        del node.input[1:]
        node.input.extend(["W1", "b1"][:data.draw(st.integers(1, 2))])
        del node.attribute[:]


def _onnx_outcome(path: Path) -> str:
    return _outcome(onnx_load_and_convert, path)


@pytest.mark.filterwarnings("ignore")
def test_fuzz_onnx(tmp_path):
    """Flips, truncation and proto edits of a small Gemm-Relu-Gemm model; external data that
    points outside the model's folder (a symlink to /etc/passwd, '..', an absolute path)."""
    model = onnx_seed()
    raw = model.SerializeToString()
    (tmp_path / "w.bin").write_bytes(b"\x00" * 64)
    (tmp_path / "link.bin").symlink_to("/etc/passwd")
    tally: collections.Counter = collections.Counter()

    @FUZZ
    @given(st.data())
    def case(data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(["proto", "proto", "proto", "flips", "truncate"]))
        if kind == "proto":
            m = type(model)()
            m.CopyFrom(model)
            proto_edit(data, m)
            blob = m.SerializeToString()
        else:
            blob = flips(data, raw) if kind == "flips" else truncate(data, raw)
        path = tmp_path / "case.onnx"
        path.write_bytes(blob)
        tally[f"{kind}: {_onnx_outcome(path)}"] += 1

    case()
    _report("onnx", tally)
