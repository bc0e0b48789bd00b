"""Atomic output files: written to a temporary file beside the target, renamed on success,
removed on failure, so no command leaves a half-written output."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from spikeforge.errors import SpikeforgeError


def not_a_file(path: Path) -> str:
    """What an input path that is not a file is: 'a folder' or 'no such file' (for messages)."""
    return "a folder" if path.is_dir() else "no such file"


def check_output(path: str | os.PathLike[str], suffix: str | None = None) -> Path:
    """Refuse, in one line, an output path that cannot be written: missing folder, an existing
    folder as file name, or (with ``suffix``) the wrong file type."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise SpikeforgeError(f"{path}: expected a file name{f' ending in {suffix}' if suffix else ''}, found a folder")
    if suffix is not None and path.suffix.lower() != suffix:
        raise SpikeforgeError(f"{path}: expected an output file name ending in {suffix}, found '{path.suffix or 'none'}'")
    if not folder.is_dir():
        raise SpikeforgeError(f"{path}: expected an existing folder {folder}, found nothing")
    if not os.access(folder, os.W_OK):
        raise SpikeforgeError(f"{path}: folder {folder} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; when the block succeeds it becomes
    ``path`` (mode 0666 & ~umask, as a plain open() would give), otherwise it is removed."""
    path = check_output(path, suffix)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    except OSError as exc:
        raise SpikeforgeError(f"{path}: cannot write there ({exc.strerror})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:  # e.g. a full disk: name the output, not the temporary file
        raise SpikeforgeError(f"{path}: cannot write it ({exc.strerror or exc}); nothing was written") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
