"""Bad and hostile input files: one line naming the file and field, exit 2, nothing written;
bounded memory for bombs. Each case here ended in a traceback (exit 1), or was accepted
silently, or took gigabytes, before."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from spikeforge import graphio
from spikeforge.cli import main
from spikeforge.data import Dataset, save_npz
from spikeforge.errors import SpikeforgeError
from spikeforge.testing import random_fixed_graph, rewrite_graph_file


def refused(capsys: pytest.CaptureFixture[str], args: list[str], *names: str) -> str:
    """Run the CLI in-process: exit 2, one line on stderr naming each of ``names``."""
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spikeforge: error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    graphio.save(tmp_path / "good.sfg", snn=random_fixed_graph([6, 5, 3], seed=1))
    rng = np.random.default_rng(0)
    save_npz(tmp_path / "data.npz", Dataset(rng.random((8, 6), dtype=np.float32), rng.integers(0, 3, 8), (6,), "d"))
    return tmp_path


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def simulate(graph: Path, data: Path) -> list[str]:
    return ["simulate", str(graph), "--data", str(data), "--timesteps", "4"]


def _set(path: list, value: object) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        target = doc["graphs"]["snn"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _node(doc: dict, name: str) -> dict:
    return next(n for n in doc["graphs"]["snn"]["nodes"] if n["name"] == name)


# -- graph.json of the wrong form (every edit carries matching hashes, so it reaches the decoder) --
GRAPH_CASES: dict[str, tuple[Callable[[dict], object], str]] = {
    "json-list": (lambda doc: [1, 2], "graph.json: expected an object, found a list"),
    "json-string": (lambda doc: "spikeforge", "graph.json: expected an object"),
    "json-null": (lambda doc: json.loads("null") or 0, "graph.json: expected an object"),
    "graphs-list": (lambda doc: doc.update(graphs=[]), "graph.json graphs: expected an object"),
    "nodes-string": (_set(["nodes"], "x"), "graph 'snn' nodes: expected a list"),
    "edges-wrong": (_set(["edges"], [["in", 3]]), "graph 'snn' edges: expected a list of [source, target]"),
    "metadata-list": (_set(["metadata"], []), "graph 'snn' metadata: expected an object"),
    "node-no-name": (lambda doc: _node(doc, "fc1").pop("name") and None, "graph 'snn' node 1 name: expected a non-empty string"),
    "node-not-object": (lambda doc: doc["graphs"]["snn"]["nodes"].__setitem__(1, 5), "graph 'snn' node 1: expected an object"),
    "fields-list": (lambda doc: _node(doc, "fc1").update(fields=[]), "node 'fc1' (FixedAffine) fields: expected an object"),
    "vth-nan": (lambda doc: _node(doc, "lif1")["fields"].update(vth=float("nan")), "node 'lif1' (FixedLIF) vth: expected an integer, found NaN"),
    "vth-inf": (lambda doc: _node(doc, "lif1")["fields"].update(vth=float("inf")), "vth: expected an integer, found Infinity"),
    "vth-string": (lambda doc: _node(doc, "lif1")["fields"].update(vth="1024"), "vth: expected an integer, found \"1024\""),
    "vth-bool": (lambda doc: _node(doc, "lif1")["fields"].update(vth=True), "vth: expected an integer, found true"),
    "vth-huge": (lambda doc: _node(doc, "lif1")["fields"].update(vth=10**400), "lif1"),
    "payload-fraction": (lambda doc: _node(doc, "in")["fields"].update(payload_bits=2.5), "node 'in' (Input) payload_bits: expected an integer, found 2.5"),
    "weight-exp-fraction": (lambda doc: _node(doc, "fc1")["fields"].update(weight_exp=0.5), "node 'fc1' (FixedAffine) weight_exp: expected an integer, found 0.5"),
    "weight-as-json": (lambda doc: _node(doc, "fc1")["fields"].update(weight=[[1]]), "field 'weight': expected an array reference"),
    "unknown-field": (lambda doc: _node(doc, "fc1")["fields"].update(colour=1), "field 'colour': expected one of"),
    "missing-field": (lambda doc: _node(doc, "lif1")["fields"].pop("vth") and None, "missing field(s) vth"),
    "shape-huge": (lambda doc: _node(doc, "in")["fields"].update(shape=[2**40]), "node 'in' (Input) shape: expected a list of 1 to 8 positive integers"),
    "size-huge": (lambda doc: _node(doc, "lif1")["fields"].update(size=10**12), "node 'lif1'"),
    "unknown-type": (lambda doc: _node(doc, "fc1").update(type="Pickle"), "unknown type \"Pickle\""),
    "array-ref-number": (lambda doc: _node(doc, "fc1")["arrays"].update(weight=7), "node 'fc1' field 'weight': expected an array member name"),
    "array-missing": (lambda doc: _node(doc, "fc1")["arrays"].update(weight="snn/nothing"), "array 'snn/nothing' has no content hash"),
    "iterations-string": (_set(["metadata", "iterations"], "many"), "metadata 'iterations': expected an integer"),
    "quantization-bad": (_set(["metadata", "quantization"], [{"layer": 1}]), "metadata 'quantization'"),
    "version-1": (lambda doc: doc.update(version=1), "format version 1 (written before graph files carried content hashes)"),
}


@pytest.mark.parametrize("case", sorted(GRAPH_CASES))
def test_malformed_graph_json_is_one_line(files, capsys, case):
    edit, message = GRAPH_CASES[case]
    bad = files / f"{case}.sfg"
    rewrite_graph_file(files / "good.sfg", bad, edit=edit)
    refused(capsys, simulate(bad, files / "data.npz"), str(bad), message)


ARRAY_CASES: dict[str, tuple[bytes, str]] = {
    "bool-weights": (_npy(np.ones((5, 6), bool)), "expected a numeric array (int or float), found dtype bool"),
    "complex-weights": (_npy(np.ones((5, 6), complex)), "found dtype complex128"),
    "string-weights": (_npy(np.array([["a"] * 6] * 5)), "found dtype <U1"),
    "garbled-header": (b"\x93NUMPY\x01\x00\x20\x00{'descr': '<i8', 'shape': (5, [}" + b" " * 20, "garbled header"),
    "not-npy": (b"hello world", "garbled header"),
    "huge-declared-shape": (_npy(np.zeros((5, 6), np.int64)).replace(b"(5, 6)", b"(9999999999, 9999)", 1),
                            "header declares shape (9999999999, 9999)"),
    "truncated-data": (_npy(np.zeros((5, 6), np.int64))[:-8], "found 232 data bytes"),
}


@pytest.mark.parametrize("case", sorted(ARRAY_CASES))
def test_bad_arrays_are_one_line(files, capsys, case):
    data, message = ARRAY_CASES[case]
    bad = files / f"{case}.sfg"
    rewrite_graph_file(files / "good.sfg", bad, members={"snn/fc1/weight.npy": data})
    refused(capsys, simulate(bad, files / "data.npz"), str(bad), "fc1", message)


def _flip_member_byte(src: Path, dst: Path, member: str) -> None:
    """Flip a byte inside a member's compressed data (its CRC and deflate stream break)."""
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF
    dst.write_bytes(bytes(raw))


@pytest.mark.parametrize("member", ["graph.json", "snn/fc1/weight.npy"])
def test_corrupt_sfg_member(files, capsys, member):
    bad = files / "corrupt.sfg"
    _flip_member_byte(files / "good.sfg", bad, member)
    line = refused(capsys, simulate(bad, files / "data.npz"), str(bad))
    assert member in line or "sha256" in line


def test_hand_edited_graph_json_is_refused_by_its_hash(files, capsys):
    bad = files / "edited.sfg"
    rewrite_graph_file(files / "good.sfg", bad, edit=lambda doc: _node(doc, "lif1")["fields"].update(vth=7), sign=False)
    refused(capsys, simulate(bad, files / "data.npz"), str(bad), "graph.json does not match its sha256")


def test_swapped_members_are_refused_by_their_hashes(files, capsys):
    with zipfile.ZipFile(files / "good.sfg") as zf:
        a, b = zf.read("snn/lif1/bias_mant.npy"), zf.read("snn/lif2/bias_mant.npy")
    bad = files / "swapped.sfg"
    rewrite_graph_file(files / "good.sfg", bad, members={"snn/lif1/bias_mant.npy": b, "snn/lif2/bias_mant.npy": a},
                       sign=False)
    refused(capsys, simulate(bad, files / "data.npz"), str(bad), "does not match its sha256")


def test_deeply_nested_json(files, capsys):
    bad = files / "deep.sfg"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("graph.json", "[" * 200_000 + "]" * 200_000)
    refused(capsys, simulate(bad, files / "data.npz"), str(bad), "nests deeper than")
    with zipfile.ZipFile(bad, "w") as zf:  # deep but within what json parses: refused by depth
        zf.writestr("graph.json", '{"format": "spikeforge-graph", "x": ' + "[" * 500 + "]" * 500 + "}")
    refused(capsys, simulate(bad, files / "data.npz"), str(bad), "nests deeper than 64 levels")


def _patch_declared_size(path: Path, member: str, size: int) -> None:
    """Set a member's uncompressed size in the zip's central directory (what readers trust)."""
    raw = bytearray(path.read_bytes())
    name = member.encode()
    at = raw.find(b"PK\x01\x02" + b"\x00" * 0)  # first central directory entry
    while at >= 0:
        n = struct.unpack("<H", raw[at + 28:at + 30])[0]
        if raw[at + 46:at + 46 + n] == name:
            raw[at + 24:at + 28] = struct.pack("<I", size)
            break
        at = raw.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(raw))


#: The read limit the bomb tests run under (bombs of 100 MB, written in a fraction of a second).
LIMIT = 64 * 2**20
BOMB = 100 * 2**20


def cli_peak(args: list[str]) -> tuple[int, str, float]:
    """Run the CLI in a fresh process under $SPIKEFORGE_MAX_BYTES = LIMIT: (exit code, stderr,
    peak resident memory in MB)."""
    # VmHWM is this process's own peak (ru_maxrss carries the forking parent's across exec)
    code = ("import re, sys; from spikeforge.cli import main; rc = main(sys.argv[1:]); "
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024); "
            "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONWARNINGS": "ignore", "SPIKEFORGE_MAX_BYTES": str(LIMIT)})
    return r.returncode, r.stderr.strip(), float(r.stdout.strip().splitlines()[-1])


def _zeros_member(zf: zipfile.ZipFile, name: str, nbytes: int) -> None:
    """A .npy member of ``nbytes`` zero bytes of int64, streamed (little memory to write)."""
    header = _npy(np.zeros(0, np.int64)).replace(b"(0,)", f"({nbytes // 8},)".encode(), 1)
    pad = (64 - len(header) % 64) % 64  # keep the header 64-byte aligned as numpy does
    header = header[:-1] + b" " * pad + b"\n"
    header = header[:8] + struct.pack("<H", len(header) - 10) + header[10:]
    chunk = bytes(2**22)
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w", force_zip64=True) as fh:
        fh.write(header)
        for _ in range(nbytes // len(chunk)):
            fh.write(chunk)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A .sfg of about 100 kB whose fc1 weight member holds 100 MB of zeros (honestly declared)."""
    d = tmp_path_factory.mktemp("bomb")
    good = d / "good.sfg"
    graphio.save(good, snn=random_fixed_graph([6, 5, 3], seed=1))
    path = d / "bomb.sfg"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename == "snn/fc1/weight.npy":
                _zeros_member(zout, info.filename, BOMB)
            else:
                zout.writestr(info.filename, zin.read(info.filename))
    return path


def test_zip_bombs_are_refused_without_decompressing(bomb, files):
    """100 MB declared (beyond a 64 MB limit): refused from the declaration; the same member
    declaring 1,000 bytes: refused after reading 1,001 (its CRC fails). Peak memory stays low."""
    assert bomb.stat().st_size < 2**20
    rc, err, peak = cli_peak(simulate(bomb, files / "data.npz"))
    assert rc == 2 and f"{bomb}: member 'snn/fc1/weight.npy' declares 104857792 bytes, beyond the limit of 67108864 bytes" in err, err
    assert "(raise it with $SPIKEFORGE_MAX_BYTES)" in err
    assert peak < 250, peak
    lying = files / "lying.sfg"
    lying.write_bytes(bomb.read_bytes())
    _patch_declared_size(lying, "snn/fc1/weight.npy", 1000)
    rc, err, peak = cli_peak(simulate(lying, files / "data.npz"))
    assert rc == 2 and f"{lying}: member 'snn/fc1/weight.npy' is corrupt" in err, err
    assert peak < 250, peak


def test_npz_bomb_is_refused_without_decompressing(files):
    npz = files / "bomb.npz"
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as zf:
        _zeros_member(zf, "x.npy", BOMB)
        zf.writestr("y.npy", _npy(np.zeros(8, np.int64)))
    rc, err, peak = cli_peak(simulate(files / "good.sfg", npz))
    assert rc == 2 and f"{npz}: member 'x.npy' declares" in err and "beyond the limit" in err, err
    assert peak < 250, peak


NPZ_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "huge-declared-shape": (lambda p: _write_npz(p, x=_npy(np.zeros((8, 6), np.float32)).replace(b"(8, 6)", b"(99999999999, 6)", 1)),
                            "array 'x': header declares shape (99999999999, 6)"),
    "garbled-header": (lambda p: _write_npz(p, x=b"\x93NUMPY\x01\x00\x10\x00{'descr'::::" + b"\x00" * 40), "array 'x': expected an .npy array, found a garbled header"),
    "complex-x": (lambda p: _write_npz(p, x=_npy(np.zeros((8, 6), complex))), "found dtype complex128"),
    "missing-y": (lambda p: _write_npz(p, y=None), "missing 'y'"),
}


def _write_npz(path: Path, **members: bytes | None) -> None:
    rng = np.random.default_rng(0)
    arrays = {"x": _npy(rng.random((8, 6)).astype(np.float32)), "y": _npy(rng.integers(0, 3, 8))}
    arrays.update(members)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in arrays.items():
            if v is not None:
                zf.writestr(k + ".npy", v)


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_bad_npz_is_one_line(files, capsys, case):
    make, message = NPZ_CASES[case]
    bad = files / f"{case}.npz"
    make(bad)
    refused(capsys, simulate(files / "good.sfg", bad), str(bad), message)


def test_corrupt_npz_member(files, capsys):
    bad = files / "corrupt.npz"
    _flip_member_byte(files / "data.npz", bad, "x.npy")
    refused(capsys, simulate(files / "good.sfg", bad), str(bad), "member 'x.npy' is corrupt")


def test_gzip_idx_bomb_and_huge_dims(tmp_path, capsys):
    """An idx.gz whose header declares 2**31 x 2**31 images: refused from the header alone; one
    that decompresses to 100 MB for dims of 8 bytes: refused after reading 9."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    huge = struct.pack(">HBB3I", 0, 8, 3, 2**31, 2**31, 1)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(huge + b"\x00" * 1000))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">HBBI", 0, 8, 1, 2) + b"\x01\x02"))
    graph = tmp_path / "g.sfg"
    graphio.save(graph, snn=random_fixed_graph([4, 3], seed=2))
    refused(capsys, simulate(graph, folder), "train-images-idx3-ubyte.gz", "header declares dims (2147483648, 2147483648, 1)")
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as fh:
        fh.write(struct.pack(">HBB3I", 0, 8, 3, 2, 2, 2))
        chunk = bytes(2**22)
        for _ in range(BOMB // len(chunk)):
            fh.write(chunk)
    assert (folder / "train-images-idx3-ubyte.gz").stat().st_size < 2**20
    rc, err, peak = cli_peak(simulate(graph, folder))
    assert rc == 2 and "train-images-idx3-ubyte.gz" in err and "found more (trailing bytes)" in err, err
    assert peak < 250, peak


def test_huge_timesteps_is_one_line(files, capsys):
    """T = 10**10 ended in numpy's MemoryError traceback."""
    with pytest.raises(SystemExit) as exc:
        main(["simulate", str(files / "good.sfg"), "--data", str(files / "data.npz"), "--timesteps", "10000000000"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--timesteps" in err[0] and "expected at most 100000 steps" in err[0], err


def test_full_disk_names_the_output_and_writes_nothing(files):
    """A file-size limit (EFBIG, as a full disk gives ENOSPC) while convert writes its output."""
    graphio.save(files / "ann.sfg", ann=_ann_graph())
    out = files / "net.sfg"
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
            "from spikeforge.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "convert", str(files / "ann.sfg"), "--calib", str(files / "data.npz"),
                        "-o", str(out)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{out}: cannot write it (File too large); nothing was written" in lines[0], r.stderr
    assert not out.exists() and not list(files.glob(".net.sfg.*"))


def _ann_graph():
    from spikeforge import ir

    rng = np.random.default_rng(3)
    return ir.Graph(
        (ir.Input("x", (6,)), ir.Affine("fc1", rng.normal(size=(3000, 6)), np.zeros(3000)), ir.ReLU("h", 3000),
         ir.Affine("fc2", rng.normal(size=(3, 3000)), np.zeros(3)), ir.Output("y", (3,))),
        (("x", "fc1"), ("fc1", "h"), ("h", "fc2"), ("fc2", "y")))


def test_loaders_raise_only_spikeforge_errors(files):
    """The library API (not only the CLI) raises SpikeforgeError for a damaged file."""
    bad = files / "bad.sfg"
    rewrite_graph_file(files / "good.sfg", bad, edit=lambda doc: [])
    with pytest.raises(SpikeforgeError):
        graphio.load(bad)


# -- ONNX and NIR ---------------------------------------------------------------------------------
def _onnx_model():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("W1", (5, 6)), ("b1", (5,)), ("W2", (3, 5)), ("b2", (3,)))]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _opset(version: int) -> Callable:
    def edit(m) -> None:
        m.opset_import[0].version = version
    return edit


def _init(name: str, arr: np.ndarray) -> Callable:
    def edit(m) -> None:
        from onnx import numpy_helper

        t = next(t for t in m.graph.initializer if t.name == name)
        t.CopyFrom(numpy_helper.from_array(arr, name))
    return edit


def _strings(m) -> None:
    from onnx import TensorProto

    t = m.graph.initializer[1]
    t.data_type = TensorProto.STRING
    t.ClearField("raw_data")
    t.string_data.extend([b"a"] * 5)


def _vector_clip(m) -> None:
    n = m.graph.node[1]
    n.op_type = "Clip"
    n.input.extend(["b1", "b1"])


def _dtype(m) -> None:
    m.graph.initializer[0].data_type = 999


def _dims(m) -> None:
    del m.graph.initializer[0].dims[:]
    m.graph.initializer[0].dims.extend([3, 5])


def _foreign(m) -> None:
    m.graph.node[1].domain = "com.example"
    m.opset_import.add(domain="com.example", version=1)


ONNX_CASES: dict[str, tuple[Callable, str]] = {
    "opset-999": (_opset(999), "opset_import: expected the default ONNX domain at opset 7.."),
    "opset-1": (_opset(1), "found 1"),
    "unknown-data-type": (_dtype, "initializer 'W1' data_type: expected an ONNX tensor type, found 999"),
    "string-initializer": (_strings, "tensor 'b1': expected numbers, found dtype object"),
    "gemm-bias-length": (_init("b1", np.zeros(4, np.float32)), "node 'fc1' (Gemm): bias C expected 5 values, found 4"),
    "vector-clip": (_vector_clip, "(Clip): min must be a scalar, found shape (5,)"),
    "wrong-dims": (_dims, "initializer 'W1' is unreadable"),
    "bool-weights": (_init("W1", np.ones((5, 6), bool)), "tensor 'W1': expected numbers, found dtype bool"),
    "foreign-domain": (_foreign, "ops outside the default ONNX domain: node 'relu' (com.example.Relu)"),
}


@pytest.mark.parametrize("case", sorted(ONNX_CASES))
def test_bad_onnx_is_one_line(files, capsys, case):
    import onnx

    edit, message = ONNX_CASES[case]
    model = _onnx_model()
    edit(model)
    path = files / f"{case}.onnx"
    onnx.save(model, str(path))
    out = files / "net.sfg"
    refused(capsys, ["convert", str(path), "--calib", str(files / "data.npz"), "-o", str(out)], str(path), message)
    assert not out.exists()


def test_onnx_external_data_outside_the_folder_is_refused(files, capsys):
    """onnx >= 1.21 (pinned): a tensor whose external data is a symlink to a file elsewhere, or
    a path outside the model's folder, is refused; its bytes never reach the graph file."""
    import onnx
    from onnx import TensorProto

    secret = files / "elsewhere" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(np.arange(30, dtype=np.float32).tobytes())
    folder = files / "model"
    folder.mkdir()
    (folder / "w.bin").symlink_to(secret)
    for location in ("w.bin", "../elsewhere/secret.bin", str(secret)):
        model = _onnx_model()
        t = model.graph.initializer[0]
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=location)
        path = folder / "m.onnx"
        onnx.save(model, str(path))
        out = files / "net.sfg"
        refused(capsys, ["convert", str(path), "--calib", str(files / "data.npz"), "-o", str(out)],
                str(path), "not a valid ONNX model")
        assert not out.exists()


@pytest.mark.parametrize("r", [-1.0, 0.0, float("nan")])
def test_nir_non_positive_r_is_refused(files, capsys, r):
    import nir

    rng = np.random.default_rng(0)
    ones = np.ones(5)
    g = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([6])}),
        "fc": nir.Affine(rng.normal(size=(5, 6)), rng.normal(size=5) * 0.1),
        "n": nir.IF(r=ones * r, v_threshold=ones, v_reset=0 * ones),
        "output": nir.Output(output_type={"output": np.array([5])})},
        edges=[("input", "fc"), ("fc", "n"), ("n", "output")])
    path = files / "neg.nir"
    nir.write(str(path), g)
    refused(capsys, ["convert", str(path), "--dt", "1", "-o", str(files / "net.sfg")], str(path),
            "node 'n' r: expected values > 0")


def test_nir_export_of_a_recurrent_graph_with_an_image_input(files, capsys):
    """An (8, 8) input straight into a 64-input synapse, self-recurrent layers (as `train --arch
    recurrent` writes it): export ended in NIR's 'Type inference error' traceback. Now the input
    is written flat, and the file reads back to the same spikes."""
    from spikeforge import ir
    from spikeforge.converter.nir_io import load_nir
    from spikeforge.runner import simulate
    from spikeforge.testing import random_inputs

    g = random_fixed_graph([64, 5, 3], seed=3, reset="zero", recurrent=True)
    g = g.with_nodes([ir.Input("in", (8, 8)) if isinstance(n, ir.Input) else n for n in g.nodes])
    graphio.save(files / "rec.sfg", snn=g)
    out = files / "rec.nir"
    assert main(["export", str(files / "rec.sfg"), "-o", str(out)]) == 0, capsys.readouterr().err
    x = random_inputs(4, 64)
    a, b = simulate(g, "cpu", x, 12).result.spikes, simulate(load_nir(out), "cpu", x, 12).result.spikes
    assert all(np.array_equal(a[k], b[k]) for k in a)
