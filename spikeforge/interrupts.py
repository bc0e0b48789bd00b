"""SIGINT and SIGTERM as one exception, :class:`Interrupted`, and blocks that hold them.

The command line runs in :func:`installed`: the first SIGINT or SIGTERM raises
``Interrupted`` (exit code 128 + signal: 130, 143); later ones are only counted, so the
cleanup that the first one started (killing a Lava child's process group, releasing its
shared memory) is never cut short and the run ends within a few seconds whatever the user
presses. :func:`held` defers a signal to the end of a block (process start-up, cleanup).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from types import FrameType
from typing import Any, Callable, Iterator

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received; ``exit_code`` = 128 + the signal's number."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: list[int] = []


def _raise_once(signum: int, frame: FrameType | None) -> None:
    """The first signal raises Interrupted; later ones are counted (the run is stopping)."""
    _received.append(signum)
    if len(_received) == 1:
        raise Interrupted(signum)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """During the block SIGINT and SIGTERM raise :class:`Interrupted` once (main thread
    only); the previous handlers come back after it, unless a signal came: then both stay
    ignored (the process is ending; a late Ctrl-C must not print a traceback on exit)."""
    _received.clear()
    if not _main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable(previous_hook)
    for s in SIGNALS:
        signal.signal(s, _raise_once)
    try:
        yield
    finally:
        _restore(dict.fromkeys(SIGNALS, signal.SIG_IGN) if _received else previous)
        sys.unraisablehook = previous_hook


def _unraisable(previous: Callable[[Any], Any]) -> Callable[[Any], None]:
    """A ``sys.unraisablehook`` that keeps quiet about :class:`Interrupted`.

    A signal can arrive while Python runs a destructor or a weakref callback (Brian2's
    object trackers, garbage collection); the exception raised there cannot propagate and
    Python would print "Exception ignored in ..." with a traceback. The signal is already
    recorded in ``_received``: :func:`check` and the command line raise it again at the
    next boundary, so the run still ends without a result, with one line."""

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            return
        previous(unraisable)

    return hook


def received() -> int | None:
    """The first signal :func:`installed`'s handler saw, or None."""
    return _received[0] if _received else None


def check() -> None:
    """Raise :class:`Interrupted` if a signal came (one that library code swallowed): long
    loops call it between pieces of work, so an interrupted run never goes on to a result."""
    if _received:
        raise Interrupted(_received[0])


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM during the block; one that arrived is delivered (to the
    handler that was in place) when the block ends normally, and dropped when it ends by
    an exception (which is already unwinding the run). Outside the main thread: no-op."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    for s in SIGNALS:
        signal.signal(s, hold)
    try:
        yield
    except BaseException:
        _restore(previous)
        raise
    _restore(previous)
    if pending:
        signal.raise_signal(pending[0])


def _restore(previous: dict) -> None:
    for s, h in previous.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)
