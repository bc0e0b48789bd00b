"""Datasets: rates x in [0, 1] and integer labels, from scikit-learn's digits, .npz or MNIST idx.

Every loader returns a :class:`Dataset` whose ``x`` is float32 (n, features) in [0, 1]
(flattened; ``shape`` keeps the per-sample shape) and ``y`` is int64 (n,). Any malformed
input raises :class:`~spikeforge.errors.DataError` with one line naming the file, what was
expected and what was found. This module does not import torch.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from pathlib import Path
from typing import NamedTuple, Sequence, Union

import numpy as np

from spikeforge.archive import Archive, gunzip, limit_note, max_bytes, parse_npy
from spikeforge.errors import DataError
from spikeforge.fileio import atomic_path

PathLike = Union[str, "os.PathLike[str]"]


class Dataset(NamedTuple):
    """Samples ``x`` float32 (n, features) in [0, 1], labels ``y`` int64 (n,), per-sample ``shape``.

    A recorded spike-train set also has ``spikes``, bool (n, T, features); ``x`` is then each
    input's firing rate over the T steps."""

    x: np.ndarray
    y: np.ndarray
    shape: tuple[int, ...]
    name: str
    spikes: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.y.shape[0])

    @property
    def features(self) -> int:
        """Flat features per sample: prod(shape)."""
        return int(self.x.shape[1])

    @property
    def classes(self) -> int:
        """Number of classes: max(y) + 1."""
        return int(self.y.max()) + 1 if self.y.size else 0

    def subset(self, index: np.ndarray, name: str | None = None) -> "Dataset":
        """The samples at ``index`` (copied), same shape."""
        index = np.asarray(index, dtype=np.int64)
        spikes = None if self.spikes is None else self.spikes[index].copy()
        return Dataset(self.x[index].copy(), self.y[index].copy(), self.shape, name or self.name, spikes)

    def head(self, n: int) -> "Dataset":
        """The first ``n`` samples."""
        return self.subset(np.arange(min(n, self.n)))

    @property
    def inputs(self) -> np.ndarray:
        """What a network runs: the spike trains (n, T, features) when recorded, else the rates x."""
        return self.x if self.spikes is None else self.spikes

    def images(self) -> np.ndarray:
        """x reshaped to (n, *shape)."""
        return self.x.reshape((self.n,) + tuple(self.shape))


class Split(NamedTuple):
    """Disjoint train / calibration / test parts of one dataset."""

    train: Dataset
    calib: Dataset
    test: Dataset


# -- validation -----------------------------------------------------------------------------
def make_dataset(x: np.ndarray, y: np.ndarray, name: str, where: str | None = None) -> Dataset:
    """Check arrays and build a Dataset. ``x``: (n, ...) floats in [0, 1] or uint8 (x / 255);
    ``y``: (n,) non-negative integer labels. ``where`` names the source in error messages."""
    where = where or name
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2:
        raise DataError(f"{where}: expected x of shape (samples, ...), found shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{where}: expected at least one sample, found 0")
    if x.dtype == np.uint8:
        xf = x.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            bad = "NaN" if np.isnan(x).any() else "inf"
            raise DataError(f"{where}: expected finite x values in [0, 1], found {bad}")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{where}: expected x values in [0, 1], found [{lo:.6g}, {hi:.6g}]")
        xf = x.astype(np.float32)
    else:
        raise DataError(f"{where}: expected x as floats in [0, 1] or uint8 0..255, found dtype {x.dtype}")
    if y.ndim != 1:
        raise DataError(f"{where}: expected y of shape (samples,), found shape {y.shape}")
    if y.shape[0] != x.shape[0]:
        raise DataError(f"{where}: expected as many labels as samples, found x {x.shape[0]} and y {y.shape[0]}")
    if np.issubdtype(y.dtype, np.integer):
        yi = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
        yi = y.astype(np.int64)  # integral floats are accepted as labels
    else:
        found = f"dtype {y.dtype}" if not np.issubdtype(y.dtype, np.floating) else "non-integer values"
        raise DataError(f"{where}: expected integer labels y, found {found}")
    if yi.min() < 0:
        raise DataError(f"{where}: expected labels >= 0, found {int(yi.min())}")
    shape = tuple(int(d) for d in x.shape[1:])
    flat = np.ascontiguousarray(xf.reshape(x.shape[0], math.prod(shape)))
    return Dataset(flat, np.ascontiguousarray(yi), shape, name)


# -- loaders --------------------------------------------------------------------------------
def load_digits() -> Dataset:
    """scikit-learn's embedded 8x8 handwritten digits (1,797 samples, 10 classes); x = pixel / 16."""
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    x = (np.asarray(bunch.images, dtype=np.float64) / 16.0).astype(np.float32)
    return make_dataset(x, np.asarray(bunch.target, dtype=np.int64), "digits", "digits (scikit-learn)")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: expected an existing file, found nothing")
    if not path.is_file():
        raise DataError(f"{path}: expected a file, found a directory or special file")


def make_spike_dataset(spikes: np.ndarray, y: np.ndarray, name: str, where: str | None = None) -> Dataset:
    """Recorded binary input spikes (samples, T, inputs) and labels (samples,)."""
    where = where or name
    s = np.asarray(spikes)
    if s.ndim != 3 or 0 in s.shape:
        raise DataError(f"{where}: expected spikes of shape (samples, T, inputs), found shape {s.shape}")
    if s.dtype.kind not in "biuf" or not np.isin(s, (0, 1)).all():
        raise DataError(f"{where}: expected binary spikes (0 or 1), found "
                        f"{'dtype ' + str(s.dtype) if s.dtype.kind not in 'biuf' else 'other values'}")
    spikes_b = np.ascontiguousarray(s.astype(bool))
    ds = make_dataset(spikes_b.mean(axis=1).astype(np.float32), y, name, where)
    return ds._replace(spikes=spikes_b)


def load_npz(path: PathLike, labels: bool = True) -> Dataset:
    """An .npz with arrays ``x`` (n, ...) floats in [0, 1] or uint8 0..255 and ``y`` (n,) int labels,
    or with recorded binary input ``spikes`` (n, T, inputs) and ``y`` (``labels=False``: ``y``
    may be absent from an ``x`` file, e.g. calibration data; it is then all zeros).

    Read through spikeforge.archive: only the arrays used are decompressed, each no further
    than its declared size, their .npy headers checked against it before anything is
    allocated, all within archive.max_bytes()."""
    path = Path(path)
    _check_file(path)
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: expected an .npz (zip) archive, found another file type")
    with Archive(path, DataError) as archive:
        keys = [n[:-4] for n in archive.names() if n.endswith(".npy")]

        def array(key: str) -> np.ndarray:
            return parse_npy(archive.read(key + ".npy"), f"{path}: array '{key}'", DataError)

        if "spikes" in keys and "y" in keys:
            return make_spike_dataset(array("spikes"), array("y"), path.stem, str(path))
        for key in ("x", "y") if labels else ("x",):
            if key not in keys:
                raise DataError(f"{path}: expected arrays 'x' and 'y', missing '{key}' (found {keys})")
        x = array("x")
        y = array("y") if "y" in keys else np.zeros(len(x) if x.ndim else 0, np.int64)
    return make_dataset(x, y, path.stem, str(path))


def save_npz(path: PathLike, ds: Dataset) -> Path:
    """Write ``ds`` as .npz (x in its per-sample shape, y) atomically: temp file + os.replace."""
    path = Path(path)
    x = np.asarray(ds.x, dtype=np.float32).reshape((len(ds.y),) + tuple(ds.shape))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, x=x, y=np.asarray(ds.y, dtype=np.int64))
    return path


# -- IDX (MNIST) ----------------------------------------------------------------------------
#: IDX type codes (third magic byte) -> big-endian numpy dtype.
IDX_DTYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: PathLike) -> np.ndarray:
    """Parse one IDX file (raw or gzip): magic = 0x00 0x00 type ndim; ndim big-endian uint32
    dims; then prod(dims) big-endian items. A gzip stream is decompressed no further than the
    header declares (and at most archive.max_bytes())."""
    path = Path(path)
    _check_file(path)
    limit = max_bytes()
    if path.stat().st_size > limit:
        raise DataError(f"{path}: {path.stat().st_size} bytes, beyond {limit_note(limit)}")
    raw = path.read_bytes()
    zipped = raw[:2] == b"\x1f\x8b"

    def head(n: int) -> bytes:
        return gunzip(raw, str(path), DataError, n) if zipped else raw[:n]

    magic = head(4)
    if len(magic) < 4:
        raise DataError(f"{path}: truncated IDX file: expected a 4-byte magic number, found {len(magic)} bytes")
    zero, code, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path}: expected an IDX magic number 0x0000TTNN (e.g. 0x00000803 images, "
            f"0x00000801 labels), found 0x{magic.hex()}"
        )
    header = 4 + 4 * ndim
    hdr = head(header)
    if len(hdr) < header:
        raise DataError(f"{path}: truncated IDX file: expected a {header}-byte header, found {len(hdr)} bytes")
    dims = struct.unpack(f">{ndim}I", hdr[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    need = math.prod(dims) * dtype.itemsize
    if header + need > limit:
        raise DataError(f"{path}: header declares dims {dims} ({need} data bytes), beyond {limit_note(limit)}")
    data = head(header + need + 1)
    have = len(data) - header
    if have < need:
        raise DataError(f"{path}: truncated IDX file: expected {need} data bytes for dims {dims}, found {have}")
    if have > need:
        raise DataError(f"{path}: expected {need} data bytes for dims {dims}, found more (trailing bytes)")
    return np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header).reshape(dims).astype(dtype.newbyteorder("="))


#: File name stems of the MNIST parts (with '-' or '.' before 'idx', optional '.gz').
MNIST_PARTS: dict[str, tuple[str, str]] = {
    "train": ("train-images", "train-labels"),
    "test": ("t10k-images", "t10k-labels"),
}


def _find_idx(directory: Path, stem: str, kind: str) -> Path | None:
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            candidate = directory / f"{stem}{sep}{kind}-ubyte{ext}"
            if candidate.is_file():
                return candidate
    return None


def _idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images of shape (n, rows, cols), found {images.dtype} {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{labels_path}: expected integer labels of shape (n,), found {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_path}: expected {images.shape[0]} labels (as many as images in {images_path.name}), "
            f"found {labels.shape[0]}"
        )
    return images, labels


def load_mnist_idx(dir_or_files: PathLike | Sequence[PathLike], part: str = "all") -> Dataset:
    """MNIST-format idx files: a directory holding ``train-images-idx3-ubyte[.gz]``,
    ``train-labels-idx1-ubyte[.gz]`` and/or ``t10k-...``, or an (images, labels) pair of paths.

    ``part`` selects "train", "test" or "all" (train then test, concatenated) in a directory.
    x = pixel / 255, shape (1, rows, cols).
    """
    if isinstance(dir_or_files, (str, os.PathLike)):
        directory = Path(dir_or_files)
        if not directory.is_dir():
            raise DataError(f"{directory}: expected a directory of MNIST idx files, found "
                            f"{'a file' if directory.exists() else 'nothing'}")
        if part not in ("train", "test", "all"):
            raise DataError(f"{directory}: part expected 'train', 'test' or 'all', found {part!r}")
        wanted = ("train", "test") if part == "all" else (part,)
        pairs: list[tuple[Path, Path]] = []
        for key in wanted:
            img_stem, lbl_stem = MNIST_PARTS[key]
            img, lbl = _find_idx(directory, img_stem, "idx3"), _find_idx(directory, lbl_stem, "idx1")
            if img is None and lbl is None and part == "all":
                continue
            if img is None or lbl is None:
                missing = f"{img_stem}-idx3-ubyte[.gz]" if img is None else f"{lbl_stem}-idx1-ubyte[.gz]"
                raise DataError(f"{directory}: expected MNIST file {missing}, found nothing")
            pairs.append((img, lbl))
        if not pairs:
            raise DataError(f"{directory}: expected train-images-idx3-ubyte[.gz] / t10k-images-idx3-ubyte[.gz] "
                            f"with their labels, found none")
        name = "mnist" if part == "all" else f"mnist-{part}"
        where = str(directory)
    else:
        files = [Path(p) for p in dir_or_files]
        if len(files) != 2:
            raise DataError(f"MNIST files: expected an (images, labels) pair of paths, found {len(files)} paths")
        pairs = [(files[0], files[1])]
        name, where = "mnist", str(files[0])
    xs, ys = [], []
    for img, lbl in pairs:
        images, labels = _idx_pair(img, lbl)
        xs.append(images)
        ys.append(labels)
    shapes = {a.shape[1:] for a in xs}
    if len(shapes) != 1:
        raise DataError(f"{where}: expected train and test images of one size, found {sorted(shapes)}")
    x = np.concatenate(xs)[:, None, :, :]
    return make_dataset(x, np.concatenate(ys).astype(np.int64), name, where)


def load(spec: str | os.PathLike[str] = "digits", labels: bool = True) -> Dataset:
    """Load by spec: ``"digits"``, a path ending ``.npz``, or a directory of MNIST idx files.
    ``labels=False`` accepts an .npz without ``y`` (calibration needs only ``x``)."""
    text = os.fspath(spec)
    if text == "digits":
        return load_digits()
    path = Path(text)
    if text.lower().endswith(".npz"):
        return load_npz(path, labels)
    if path.is_dir():
        return load_mnist_idx(path)
    found = "a file of another type" if path.exists() else "nothing at that path"
    raise DataError(f"{text}: expected 'digits', a .npz file or a directory of MNIST idx files, found {found}")


# -- splitting ------------------------------------------------------------------------------
def split(ds: Dataset, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0) -> Split:
    """Deterministic stratified split into train / calib / test by ``fractions`` (sum 1).

    Per class c with n_c samples: n_test = round(f_test n_c), n_calib = round(f_calib n_c),
    the rest go to train; each part is then shuffled with the same seeded generator.
    """
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(not f >= 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(f"split fractions: expected three non-negative numbers summing to 1, found {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(ds.y):
        idx = np.flatnonzero(ds.y == c)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(fr[2] * idx.size))
        n_calib = min(int(round(fr[1] * idx.size)), idx.size - n_test)
        n_train = idx.size - n_test - n_calib
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train:n_train + n_calib])
        parts[2].append(idx[n_train + n_calib:])
    out = []
    for label, chunks in zip(("train", "calib", "test"), parts):
        index = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        index = index[rng.permutation(index.size)]
        out.append(ds.subset(index, f"{ds.name}:{label}"))
    return Split(*out)


def has_official_split(spec: str | os.PathLike[str]) -> bool:
    """A folder of MNIST idx files with both the train and the t10k (test) parts."""
    path = Path(os.fspath(spec))
    return path.is_dir() and all(_find_idx(path, MNIST_PARTS[k][0], "idx3") is not None
                                 for k in ("train", "test"))


def official_split(directory: PathLike, calib_fraction: float = 0.125, seed: int = 0) -> Split:
    """MNIST's own split: t10k is the test set; calibration is a stratified
    ``calib_fraction`` of the train part, the rest trains."""
    train = load_mnist_idx(directory, "train")
    parts = split(train, (1.0 - calib_fraction, calib_fraction, 0.0), seed=seed)
    test = load_mnist_idx(directory, "test")
    return Split(parts.train, parts.calib, test._replace(name=f"{train.name}:test"))

