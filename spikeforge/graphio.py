"""The graph file (``.sfg``): a versioned zip of one JSON document and named numpy arrays.

Layout: ``graph.json`` holds ``{"format": "spikeforge-graph", "version": 1, "graphs": {...}}``,
each graph as nodes (type, name, scalar fields, array references), edges and metadata; every
array is an ``.npy`` member. No pickle anywhere. A file can hold several graphs: ``snn`` (the
quantized network) and ``ann`` (the source ANN, for accuracy and per-layer comparisons).
Writes are atomic: a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from spikeforge import ir
from spikeforge.errors import GraphError, SpikeforgeError
from spikeforge.fileio import atomic_path

FORMAT = "spikeforge-graph"
VERSION = 1

NODE_TYPES: dict[str, type] = {t.__name__: t for t in (
    ir.Input, ir.Output, ir.Flatten, ir.Affine, ir.Conv2d, ir.AvgPool2d, ir.Concat, ir.ReLU, ir.IF,
    ir.FixedAffine, ir.FixedConv2d, ir.FixedLIF, ir.FixedStochastic, ir.Stochastic, ir.LIF)}


class GraphFileError(SpikeforgeError):
    """A graph file that cannot be read."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _encode_graph(key: str, graph: ir.Graph, arrays: dict[str, np.ndarray]) -> dict:
    nodes = []
    for node in graph.nodes:
        fields, refs = {}, {}
        for f in dataclasses.fields(node):
            if f.name == "name":
                continue
            value = getattr(node, f.name)
            if isinstance(value, np.ndarray):
                ref = f"{key}/{node.name}/{f.name}"
                arrays[ref] = value
                refs[f.name] = ref
            else:
                fields[f.name] = _jsonable(value)
        nodes.append({"type": type(node).__name__, "name": node.name, "fields": fields, "arrays": refs})
    return {"nodes": nodes, "edges": [list(e) for e in graph.edges], "metadata": _jsonable(graph.metadata)}


def save(path: str | Path, **graphs: ir.Graph) -> None:
    """Write graphs (e.g. ``snn=..., ann=...``) to ``path`` atomically."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    doc = {"format": FORMAT, "version": VERSION,
           "graphs": {k: _encode_graph(k, g, arrays) for k, g in graphs.items()}}
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("graph.json", json.dumps(doc, indent=1))
        for ref, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(ref + ".npy", buf.getvalue())


def _decode_graph(path: Path, key: str, doc: dict, zf: zipfile.ZipFile) -> ir.Graph:
    nodes = []
    for i, nd in enumerate(doc.get("nodes", [])):
        tname = nd.get("type")
        if tname not in NODE_TYPES:
            raise GraphFileError(
                f"{path}: graph '{key}' node {i} ('{nd.get('name')}'): unknown type {tname!r}; "
                f"expected one of {', '.join(NODE_TYPES)}"
            )
        cls = NODE_TYPES[tname]
        kwargs: dict[str, Any] = dict(nd.get("fields", {}))
        for fname, ref in nd.get("arrays", {}).items():
            try:
                kwargs[fname] = np.load(io.BytesIO(zf.read(ref + ".npy")), allow_pickle=False)
            except KeyError:
                raise GraphFileError(f"{path}: node '{nd.get('name')}': array '{ref}' is missing") from None
            except ValueError as exc:
                raise GraphFileError(f"{path}: node '{nd.get('name')}': array '{ref}' is unreadable ({exc})") from None
        for f in dataclasses.fields(cls):
            if f.name in kwargs and isinstance(kwargs[f.name], list) and "shape" in f.name:
                kwargs[f.name] = tuple(kwargs[f.name])
        try:
            nodes.append(cls(name=nd["name"], **kwargs))
        except TypeError as exc:
            raise GraphFileError(f"{path}: node '{nd.get('name')}' ({tname}): bad fields ({exc})") from None
    try:
        return ir.Graph(tuple(nodes), tuple(tuple(e) for e in doc.get("edges", [])), doc.get("metadata", {}))
    except GraphError as exc:
        raise GraphFileError(f"{path}: graph '{key}': {exc}") from None


def load_all(path: str | Path) -> dict[str, ir.Graph]:
    """Read every graph in a file. Raises GraphFileError with the file name on any problem."""
    path = Path(path)
    if not path.is_file():
        raise GraphFileError(f"{path}: no such file (expected a spikeforge graph file)")
    if not zipfile.is_zipfile(path):
        raise GraphFileError(f"{path}: not a spikeforge graph file (expected a zip archive written by 'spikeforge convert')")
    with zipfile.ZipFile(path) as zf:
        try:
            doc = json.loads(zf.read("graph.json"))
        except KeyError:
            raise GraphFileError(f"{path}: not a spikeforge graph file (no graph.json inside)") from None
        except ValueError as exc:
            raise GraphFileError(f"{path}: graph.json is not valid JSON ({exc})") from None
        if doc.get("format") != FORMAT:
            raise GraphFileError(f"{path}: expected format '{FORMAT}', found {doc.get('format')!r}")
        if doc.get("version") != VERSION:
            raise GraphFileError(f"{path}: expected format version {VERSION}, found {doc.get('version')!r}")
        return {k: _decode_graph(path, k, g, zf) for k, g in doc.get("graphs", {}).items()}


def load(path: str | Path, which: str = "snn") -> ir.Graph:
    graphs = load_all(path)
    if which not in graphs:
        raise GraphFileError(f"{path}: expected a graph named '{which}', found {sorted(graphs) or 'none'}")
    return graphs[which]
