"""Bounded reading of zip archives (.sfg, .npz), .npy members and gzip streams.

Nothing is decompressed or allocated beyond what the file declares, and what it declares
must stay within a stated limit (:data:`MAX_BYTES`, 1 GiB per file, or $SPIKEFORGE_MAX_BYTES): a member whose
decompressed bytes exceed its declared size, an .npy header whose shape x dtype disagrees
with the member's size, an unreadable or corrupt member are refused in one line naming the
file and member, as the caller's error type.
"""

from __future__ import annotations

import ast
import gzip
import io
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from spikeforge.errors import SpikeforgeError

#: Largest number of bytes read from one file after decompression (all members together);
#: the environment variable SPIKEFORGE_MAX_BYTES sets another limit.
MAX_BYTES = 2**30
LIMIT_VARIABLE = "SPIKEFORGE_MAX_BYTES"
#: Largest .npy header (numpy itself writes at most a few hundred bytes).
MAX_NPY_HEADER = 2**16
#: Array dtypes a file may hold: booleans, integers and floats (no complex, strings, objects).
NUMERIC_KINDS = "biuf"

#: What a damaged archive or stream raises while it is read.
CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError,
           ValueError, gzip.BadGzipFile)


def max_bytes() -> int:
    """The limit in force: $SPIKEFORGE_MAX_BYTES if set (a positive integer), else MAX_BYTES."""
    text = os.environ.get(LIMIT_VARIABLE)
    if text is None:
        return MAX_BYTES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SpikeforgeError(f"${LIMIT_VARIABLE}: expected a positive number of bytes, found {text!r}")
    return value


def limit_note(limit: int) -> str:
    """How a message states the limit and how to raise it."""
    return f"the limit of {limit} bytes (raise it with ${LIMIT_VARIABLE})"


def short_message(exc: BaseException, limit: int = 160) -> str:
    """An exception as a short one-line note (zipfile puts whole headers in its messages)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Archive:
    """A zip file opened for bounded reads; ``error`` is the SpikeforgeError type to raise."""

    def __init__(self, path: Path, error: type[SpikeforgeError], limit: int | None = None) -> None:
        self.path, self.error, self.used = path, error, 0
        self.limit = max_bytes() if limit is None else limit
        try:
            self.zf = zipfile.ZipFile(path)
            self.infos = {i.filename: i for i in self.zf.infolist()}
        except CORRUPT as exc:
            raise error(f"{path}: expected a readable zip archive, found a damaged one ({short_message(exc)})") from None

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.zf.close()

    def names(self) -> list[str]:
        return list(self.infos)

    def read(self, name: str, max_bytes: int | None = None) -> bytes:
        """The member's bytes: at most its declared size, within the file's limit; refused if
        it decompresses to more or fewer bytes than declared or fails its CRC."""
        info = self.infos.get(name)
        if info is None:
            raise KeyError(name)
        size = info.file_size
        cap = min(self.limit - self.used, max_bytes if max_bytes is not None else self.limit)
        if size > cap:
            also = f" with the {self.used} bytes read before it" if self.used and size <= self.limit else ""
            raise self.error(f"{self.path}: member '{name}' declares {size} bytes{also}, beyond "
                             f"{limit_note(self.limit if max_bytes is None else min(max_bytes, self.limit))}")
        try:
            with self.zf.open(info) as fh:
                data = fh.read(size + 1)
        except CORRUPT as exc:
            raise self.error(f"{self.path}: member '{name}' is corrupt ({short_message(exc)})") from None
        if len(data) != size:
            raise self.error(f"{self.path}: member '{name}' declares {size} bytes, found "
                             f"{'more' if len(data) > size else len(data)}")
        self.used += size
        return data


def parse_npy(data: bytes, where: str, error: type[SpikeforgeError]) -> np.ndarray:
    """An .npy document as a read-only array, checked before anything is allocated: a valid
    header (version 1-3, no pickle, a numeric dtype) whose shape x itemsize equals the bytes
    that follow it."""
    fh = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        hlen_bytes = 2 if version == (1, 0) else 4
        hlen = int.from_bytes(fh.read(hlen_bytes), "little")
        if hlen > MAX_NPY_HEADER or fh.tell() + hlen > len(data):
            raise ValueError(f"header length {hlen} does not fit the member")
        header = fh.read(hlen).decode("latin1" if version < (3, 0) else "utf8")
        d = ast.literal_eval(header)
        if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
            raise ValueError("header is not a dict of descr, fortran_order and shape")
        shape, fortran, descr = d["shape"], d["fortran_order"], d["descr"]
        if not isinstance(shape, tuple) or not all(type(n) is int and 0 <= n < 2**63 for n in shape):
            raise ValueError(f"shape {shape!r} is not a tuple of non-negative integers")
        if not isinstance(fortran, bool) or not isinstance(descr, str):
            raise ValueError("fortran_order must be a bool and descr a dtype string")
        dtype = np.dtype(descr)
    except error:
        raise
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise error(f"{where}: expected an .npy array, found a garbled header ({short_message(exc)})") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise error(f"{where}: expected a numeric array (bool, int or float), found dtype {dtype}")
    need = math.prod(shape) * dtype.itemsize
    have = len(data) - fh.tell()
    if need != have:
        raise error(f"{where}: header declares shape {shape} of {dtype} ({need} bytes), found {have} data bytes")
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=fh.tell())
    arr = arr.reshape(shape, order="F" if fortran else "C")
    return arr


def gunzip(raw: bytes, where: str, error: type[SpikeforgeError], size: int) -> bytes:
    """At most the first ``size`` decompressed bytes of a gzip stream (nothing beyond them is
    decompressed)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
            return fh.read(size)
    except CORRUPT as exc:
        raise error(f"{where}: expected a complete gzip stream, found {short_message(exc)}") from None
