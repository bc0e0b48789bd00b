"""Data loaders (digits, npz, MNIST idx), splits, DataError messages; RateMLP training and ONNX export."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spikeforge import data
from spikeforge.data import Dataset, DataError


# -- helpers ---------------------------------------------------------------------------------
def write_idx(path: Path, arr: np.ndarray, gz: bool = False, magic: bytes | None = None) -> Path:
    """Write ``arr`` (uint8) as an IDX file: 0x00 0x00 0x08 ndim, big-endian dims, data."""
    arr = np.asarray(arr, dtype=np.uint8)
    head = magic if magic is not None else bytes([0, 0, 0x08, arr.ndim])
    raw = head + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def small_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg, msg


# -- digits, split ---------------------------------------------------------------------------
def test_load_digits() -> None:
    ds = data.load("digits")
    assert isinstance(ds, Dataset) and ds.name == "digits"
    assert ds.x.shape == (1797, 64) and ds.x.dtype == np.float32
    assert ds.y.shape == (1797,) and ds.y.dtype == np.int64
    assert ds.shape == (8, 8) and ds.classes == 10
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert np.allclose(ds.x * 16, np.round(ds.x * 16))  # pixel / 16
    assert np.array_equal(data.load().x, ds.x)


def test_split_deterministic_stratified_disjoint() -> None:
    ds = data.load_digits()
    a = data.split(ds, (0.7, 0.1, 0.2), seed=3)
    b = data.split(ds, (0.7, 0.1, 0.2), seed=3)
    assert all(np.array_equal(p.x, q.x) and np.array_equal(p.y, q.y) for p, q in zip(a, b))
    assert a.train.n + a.calib.n + a.test.n == ds.n
    assert abs(a.test.n - 0.2 * ds.n) <= 10 and abs(a.calib.n - 0.1 * ds.n) <= 10
    # Disjoint and complete: tag every sample by its index in a copy of the dataset.
    tagged = Dataset(np.arange(ds.n, dtype=np.float32)[:, None] / ds.n, ds.y, (1,), "tagged")
    t = data.split(tagged, (0.7, 0.1, 0.2), seed=3)
    ids = [set(np.rint(p.x[:, 0] * ds.n).astype(int)) for p in t]
    assert sum(map(len, ids)) == ds.n and set().union(*ids) == set(range(ds.n))
    for c in range(10):  # stratified: per-class test share close to 20 %
        share = (a.test.y == c).sum() / (ds.y == c).sum()
        assert abs(share - 0.2) < 0.02
    c = data.split(ds, (0.7, 0.1, 0.2), seed=4)
    assert not np.array_equal(a.test.y, c.test.y)
    with pytest.raises(DataError):
        data.split(ds, (0.5, 0.1, 0.1))


# -- npz ---------------------------------------------------------------------------------------
def test_npz_round_trip_atomic(tmp_path: Path) -> None:
    ds = data.load_digits().subset(np.arange(50))
    out = data.save_npz(tmp_path / "d.npz", ds)
    back = data.load(str(out))
    assert np.array_equal(back.x, ds.x) and np.array_equal(back.y, ds.y)
    assert back.shape == (8, 8) and back.name == "d"
    assert sorted(os.listdir(tmp_path)) == ["d.npz"]  # no temp files left

    # A failing write leaves the previous file intact and no temp file behind.
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    mp = pytest.MonkeyPatch()
    mp.setattr(np, "savez_compressed", boom)
    with pytest.raises(RuntimeError):
        data.save_npz(tmp_path / "d.npz", ds.subset(np.arange(3)))
    mp.undo()
    assert data.load_npz(tmp_path / "d.npz").n == 50
    assert sorted(os.listdir(tmp_path)) == ["d.npz"]


def test_npz_uint8_and_shape(tmp_path: Path) -> None:
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 1, 3, 4) * 10
    np.savez(tmp_path / "u.npz", x=x, y=np.array([1, 0]))
    ds = data.load_npz(tmp_path / "u.npz")
    assert ds.shape == (1, 3, 4) and ds.x.shape == (2, 12) and ds.x.dtype == np.float32
    assert np.allclose(ds.x, x.reshape(2, -1) / 255.0)


# -- MNIST idx ---------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_directory(tmp_path: Path, gz: bool) -> None:
    ext = ".gz" if gz else ""
    xtr, ytr = small_mnist(7, 0)
    xte, yte = small_mnist(3, 1)
    write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", xtr, gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", ytr, gz)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", xte, gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", yte, gz)
    ds = data.load(tmp_path)
    assert ds.shape == (1, 28, 28) and ds.x.shape == (10, 784) and ds.x.dtype == np.float32
    assert np.allclose(ds.x, np.concatenate([xtr, xte]).reshape(10, -1) / 255.0)
    assert np.array_equal(ds.y, np.concatenate([ytr, yte]).astype(np.int64))
    test = data.load_mnist_idx(tmp_path, part="test")
    assert test.n == 3 and np.array_equal(test.y, yte)
    pair = data.load_mnist_idx([tmp_path / f"train-images-idx3-ubyte{ext}",
                                tmp_path / f"train-labels-idx1-ubyte{ext}"])
    assert pair.n == 7 and np.array_equal(pair.x, ds.x[:7])


def test_read_idx_big_endian(tmp_path: Path) -> None:
    arr = np.array([[1, -2], [300, 4]], dtype=">i4")
    raw = bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 2) + arr.tobytes()
    (tmp_path / "a.idx").write_bytes(raw)
    assert np.array_equal(data.read_idx(tmp_path / "a.idx"), [[1, -2], [300, 4]])


# -- DataError cases ---------------------------------------------------------------------------
def _npz(path: Path, **arrays: np.ndarray) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


X_OK = np.full((4, 3), 0.5, np.float32)
Y_OK = np.array([0, 1, 2, 1])


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing", "nothing"),
        ("not_zip", "npz"),
        ("no_x", "'x'"),
        ("no_y", "'y'"),
        ("length", "labels"),
        ("nan", "NaN"),
        ("range", "[0, 1]"),
        ("float_labels", "integer"),
        ("negative", ">= 0"),
        ("int_x", "dtype"),
    ],
)
def test_npz_errors(tmp_path: Path, case: str, expect: str) -> None:
    path = tmp_path / f"{case}.npz"
    if case == "not_zip":
        path.write_text("hello")
    elif case == "no_x":
        _npz(path, y=Y_OK)
    elif case == "no_y":
        _npz(path, x=X_OK)
    elif case == "length":
        _npz(path, x=X_OK, y=Y_OK[:3])
    elif case == "nan":
        bad = X_OK.copy()
        bad[1, 2] = np.nan
        _npz(path, x=bad, y=Y_OK)
    elif case == "range":
        _npz(path, x=X_OK * 3, y=Y_OK)
    elif case == "float_labels":
        _npz(path, x=X_OK, y=np.array([0.0, 1.5, 2.0, 1.0]))
    elif case == "negative":
        _npz(path, x=X_OK, y=np.array([0, -1, 2, 1]))
    elif case == "int_x":
        _npz(path, x=np.ones((4, 3), np.int64), y=Y_OK)
    with pytest.raises(DataError) as exc:
        data.load(str(path))
    assert_one_line_naming(exc, path)
    assert expect in str(exc.value)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_errors(tmp_path: Path, gz: bool) -> None:
    x, y = small_mnist(4, 0)
    bad_magic = write_idx(tmp_path / "bad", x, gz, magic=b"\x12\x34\x08\x03")
    with pytest.raises(DataError) as exc:
        data.read_idx(bad_magic)
    assert_one_line_naming(exc, bad_magic)
    assert "magic" in str(exc.value) and "12340803" in str(exc.value)

    full = write_idx(tmp_path / "full", x, False).read_bytes()
    short = tmp_path / "short"
    short.write_bytes(gzip.compress(full[:-100]) if gz else full[:-100])
    with pytest.raises(DataError) as exc:
        data.read_idx(short)
    assert_one_line_naming(exc, short)
    assert "truncated" in str(exc.value)

    if gz:  # a cut gzip stream
        cut = tmp_path / "cut.gz"
        cut.write_bytes(gzip.compress(full)[:200])
        with pytest.raises(DataError) as exc:
            data.read_idx(cut)
        assert_one_line_naming(exc, cut)

    # Directory with images but missing labels; labels count mismatch.
    d = tmp_path / "mn"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte", x, gz)
    with pytest.raises(DataError) as exc:
        data.load(d)
    assert_one_line_naming(exc, d)
    lbl = write_idx(d / "train-labels-idx1-ubyte", y[:3], gz)
    with pytest.raises(DataError) as exc:
        data.load(d)
    assert_one_line_naming(exc, lbl)


def test_bad_spec_and_missing_idx(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        data.load(str(tmp_path / "nope.txt"))
    assert str(tmp_path / "nope.txt") in str(exc.value)
    with pytest.raises(DataError) as exc:
        data.load(tmp_path)  # empty directory
    assert_one_line_naming(exc, tmp_path)
    with pytest.raises(DataError) as exc:
        data.read_idx(tmp_path / "missing-idx")
    assert_one_line_naming(exc, tmp_path / "missing-idx")


def test_data_does_not_import_torch() -> None:
    code = "import sys, spikeforge.data as d; d.load_digits(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- models ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    from spikeforge.models import train_mlp

    parts = data.split(data.load_digits(), (0.7, 0.1, 0.2), seed=0)
    model, info = train_mlp(parts.train, hidden=(64,), epochs=30, seed=0)
    return parts, model, info


def test_rate_mlp_structure() -> None:
    import torch
    from spikeforge.models import RateMLP

    m = RateMLP(64, (32, 16), 10)
    kinds = [type(k).__name__ for k in m.net]
    assert kinds == ["Flatten", "Linear", "Hardtanh", "Linear", "Hardtanh", "Linear"]
    with torch.no_grad():
        rates = m.rates(torch.randn(5, 8, 8) * 10)
    assert all(float(r.min()) >= 0 and float(r.max()) <= 1 for r in rates)
    assert m(torch.zeros(3, 8, 8)).shape == (3, 10)


def test_training_accuracy_and_determinism(trained) -> None:
    from spikeforge.models import evaluate, train_mlp

    parts, model, info = trained
    acc = evaluate(model, parts.test)
    assert acc >= 0.93, (acc, info)
    assert info["train_accuracy"] >= 0.95 and info["val_accuracy"] >= 0.85
    assert info["seconds"] < 60  # ~0.5 s on an idle machine; generous for shared CI
    again, _ = train_mlp(parts.train, hidden=(64,), epochs=2, seed=0)
    twice, _ = train_mlp(parts.train, hidden=(64,), epochs=2, seed=0)
    for p, q in zip(again.parameters(), twice.parameters()):
        assert np.array_equal(p.detach().numpy(), q.detach().numpy())


def test_onnx_export_round_trip(tmp_path: Path, trained) -> None:
    import onnx
    import onnxruntime as ort
    import torch
    from spikeforge.models import evaluate, evaluate_onnx, export_onnx

    parts, model, _ = trained
    path = export_onnx(model, tmp_path / "mlp.onnx", parts.test.shape)
    assert sorted(os.listdir(tmp_path)) == ["mlp.onnx"]
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"Gemm", "Clip"} <= ops, ops
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = parts.test.images()[:37]  # a batch size other than the traced one
    got = sess.run(["logits"], {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(got - want)) < 1e-4
    assert evaluate_onnx(path, parts.test) == pytest.approx(evaluate(model, parts.test))
    with pytest.raises(DataError):
        evaluate_onnx(tmp_path / "absent.onnx", parts.test)


def test_mnist_folder_keeps_its_official_split(tmp_path: Path) -> None:
    """t10k is the test set (train's 70/10/20% split mixed it into training before)."""
    xtr, ytr = small_mnist(40, 0)
    xte, yte = small_mnist(12, 1)
    write_idx(tmp_path / "train-images-idx3-ubyte", xtr)
    write_idx(tmp_path / "train-labels-idx1-ubyte", ytr)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", xte)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", yte)
    assert data.has_official_split(tmp_path) and not data.has_official_split(tmp_path / "train-images-idx3-ubyte")
    parts = data.official_split(tmp_path)
    assert parts.test.n == 12 and np.allclose(parts.test.x, xte.reshape(12, -1) / 255.0)
    assert parts.train.n + parts.calib.n == 40 and 0 < parts.calib.n < 10
    from spikeforge.cli import main

    out = tmp_path / "out"
    out.mkdir()
    assert main(["train", "--data", str(tmp_path), "--epochs", "1", "--hidden", "8", "-o", str(out / "m.onnx")]) == 0
    assert np.array_equal(data.load(out / "test.npz").y, yte.astype(np.int64))
    assert main(["train", "--data", str(tmp_path), "--split", "random", "--epochs", "1", "--hidden", "8",
                 "-o", str(out / "m.onnx"), "--force"]) == 0
    mixed = data.load(out / "test.npz")
    assert not (mixed.n == 12 and np.allclose(mixed.x, xte.reshape(12, -1) / 255.0))
