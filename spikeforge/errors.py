"""Error types. Every user-facing error is one line naming the file, node or parameter,
what was expected and what was found; the CLI prints it and exits non-zero."""

from __future__ import annotations


class SpikeforgeError(Exception):
    """Base class for errors that the CLI reports as one line (exit code 2)."""


class GraphError(SpikeforgeError):
    """A graph that breaks an IR rule (shape, range, type, connectivity)."""


class UnsupportedError(SpikeforgeError):
    """An op, node type or parameter that a converter or backend cannot express."""


class DataError(SpikeforgeError):
    """A data file or array of the wrong form."""


class BackendUnavailable(SpikeforgeError):
    """A backend whose runtime is missing on this machine (e.g. Loihi hardware)."""
