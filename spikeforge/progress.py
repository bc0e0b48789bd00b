"""Progress bars (tqdm, on stderr) for long runs; off unless the command line turns them on
(on a terminal, without ``--json``).

Code that runs long opens ``with progress.bar(total, "lava") as bar:`` and calls
``bar.update(n)``; code deeper down (a backend's run) reports how far it got within the
current piece with :func:`within` (``done`` units past the bar's last position), so the bar
moves while one long backend call runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

_state = {"enabled": False}
#: Set by the lava backend before it forks its child: an int64 array of one element in
#: memory shared with that child's Lava processes, where the readout's recorder writes the
#: samples it has finished (this module, not lava_procs, holds it: the Lava compiler loads
#: process model files anew).
counter: Any = None
_bars: list[Any] = []


def enable(on: bool) -> None:
    """Show bars from now on (the CLI: ``on`` = stderr is a terminal and no --json)."""
    _state["enabled"] = bool(on)


def enabled() -> bool:
    return _state["enabled"]


def wanted(json_output: bool) -> bool:
    """A bar is for a person: stderr is a terminal and the output is not JSON."""
    return not json_output and sys.stderr.isatty()


@contextlib.contextmanager
def bar(total: int, desc: str, unit: str = "sample") -> Iterator[Any]:
    """A tqdm bar (a null one when bars are off); closed (and erased) at the end."""
    if not enabled():
        yield _Null()
        return
    import threading

    from tqdm import tqdm

    if not hasattr(tqdm, "_lock"):
        # a thread lock: tqdm's default lock creates a multiprocessing lock, which fixes the
        # start method and makes Lava's import (set_start_method('fork')) fail
        tqdm.set_lock(threading.RLock())
    width = _columns()
    b = tqdm(total=total, desc=desc, unit=unit, disable=not enabled(), leave=False,
             file=sys.stderr, dynamic_ncols=width > 0, ncols=None if width > 0 else 80, mininterval=0.2)
    _bars.append(b)
    try:
        yield b
    finally:
        _bars.remove(b)
        b.close()


class _Null:
    """The bar when bars are off."""

    n = 0
    total = 0

    def update(self, n: int = 1) -> None:
        pass


def _columns() -> int:
    """The terminal's width (0 when it does not say, as a bare pseudo-terminal)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


def within(done: int) -> None:
    """Show ``done`` more units past the innermost bar's position (not added to it)."""
    if not _bars or not enabled():
        return
    b = _bars[-1]
    base = getattr(b, "_sf_base", b.n)
    b._sf_base = base
    if base + done != b.n:
        b.n = min(base + done, b.total or base + done)
        b.refresh()


def settle() -> None:
    """The piece that :func:`within` reported on is over: the caller's update() follows."""
    if _bars and enabled():
        b = _bars[-1]
        if hasattr(b, "_sf_base"):
            b.n = b._sf_base
            del b._sf_base
