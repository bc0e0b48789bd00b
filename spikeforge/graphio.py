"""The graph file (``.sfg``): a versioned zip of one JSON document and named numpy arrays.

Layout: ``graph.json`` holds ``{"format": "spikeforge-graph", "version": 2, "graphs": {...},
"members": {name: {"sha256", "bytes"}}, "sha256": ...}``, each graph as nodes (type, name,
scalar fields, array references), edges and metadata; every array is an ``.npy`` member. No
pickle anywhere. A file can hold several graphs: ``snn`` (the quantized network) and ``ann``
(the source ANN, for accuracy and per-layer comparisons). Writes are atomic: a temporary file
in the same folder, then a rename.

Reading trusts nothing: every member's sha256 and size are checked against graph.json, and
graph.json's own ``sha256`` (of its canonical JSON without that key) against its content, so
a corrupted or hand-edited file is refused; members are decompressed only up to their declared
size within spikeforge.archive.max_bytes() (1 GiB, or $SPIKEFORGE_MAX_BYTES); every field is type-checked against the node's
declaration before a node is built. Version 1 files (no hashes) are refused with a request to
rewrite them (``spikeforge convert`` writes version 2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, TypeGuard

import numpy as np

from spikeforge import ir
from spikeforge.archive import Archive, parse_npy
from spikeforge.archive import short_message as short
from spikeforge.errors import GraphError, SpikeforgeError
from spikeforge.fileio import atomic_path, not_a_file

FORMAT = "spikeforge-graph"
VERSION = 2
#: Largest graph.json accepted, and the deepest nesting of its JSON.
MAX_JSON_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 64
#: Largest size of any one dimension or node (elements): bounds what a declared shape allocates.
MAX_ELEMENTS = 2**28

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


def _digest(doc: Mapping[str, Any]) -> str:
    """sha256 of the document's canonical JSON (sorted keys, no spaces) without its "sha256"."""
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save(path: str | os.PathLike[str], **graphs: ir.Graph) -> None:
    """Write graphs (e.g. ``snn=..., ann=...``) to ``path`` atomically, with content hashes."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    encoded = {k: _encode_graph(k, g, arrays) for k, g in graphs.items()}
    members: dict[str, bytes] = {}
    for ref, arr in arrays.items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        members[ref + ".npy"] = buf.getvalue()
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "graphs": encoded,
                           "members": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                                       for name, data in members.items()}}
    doc["sha256"] = _digest(doc)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("graph.json", json.dumps(doc, indent=1))
        for name, data in members.items():
            zf.writestr(name, data)


# -- reading: every value checked against what the node type declares --------------------------
def _is_int(v: object) -> TypeGuard[int]:
    return type(v) is int


def _is_float(v: object) -> bool:
    return (type(v) is int or type(v) is float) and not (isinstance(v, float) and math.isnan(v))


def _is_dim(v: object) -> bool:
    return _is_int(v) and 0 < v <= MAX_ELEMENTS


def _is_shape(v: object) -> bool:
    return (isinstance(v, list) and 0 < len(v) <= 8 and all(_is_dim(d) for d in v)
            and math.prod(v) <= MAX_ELEMENTS)


def _int_list(n: int) -> Callable[[object], bool]:
    return lambda v: isinstance(v, list) and len(v) == n and all(_is_int(d) and abs(d) <= MAX_ELEMENTS for d in v)


#: Field annotation (as the IR declares it) -> (check of the JSON value, what is expected).
FIELD_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "int": (_is_int, "an integer"),
    "float": (_is_float, "a number (not NaN)"),
    "float | None": (lambda v: v is None or _is_float(v), "a number or null"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "Reset": (lambda v: isinstance(v, str), "a string"),
    "Shape": (_is_shape, f"a list of 1 to 8 positive integers of at most {MAX_ELEMENTS} elements in all"),
    "tuple[int, int]": (_int_list(2), "a list of 2 integers"),
    "tuple[int, int, int, int]": (_int_list(4), "a list of 4 integers"),
    "tuple[Shape, ...]": (lambda v: isinstance(v, list) and 0 < len(v) <= 4096 and all(_is_shape(d) for d in v),
                          "a list of shapes"),
}
#: Node fields that hold arrays (read from .npy members, never from the JSON).
ARRAY_FIELD = "np.ndarray"
#: Fields whose JSON lists become tuples.
TUPLE_FIELDS = ("Shape", "tuple[int, int]", "tuple[int, int, int, int]", "tuple[Shape, ...]")


def _what(value: object) -> str:
    text = json.dumps(value, allow_nan=True) if not isinstance(value, (dict, list)) else type(value).__name__
    return {"dict": "an object", "list": "a list"}.get(text, text if len(text) <= 40 else text[:37] + "...")


def _tuple(v: object) -> object:
    return tuple(_tuple(x) for x in v) if isinstance(v, list) else v


#: Reads the array a node field refers to: (node name, field name, reference) -> array.
ArrayReader = Callable[[str, str, str], np.ndarray]


def check_array(arr: np.ndarray, where: str) -> np.ndarray:
    """A node's array must hold numbers (ints or floats), not truth values or text."""
    if arr.dtype.kind not in "iuf":
        raise GraphFileError(f"{where}: expected a numeric array (int or float), found dtype {arr.dtype}")
    return arr


def _array(path: Path, zf: Archive, node: str, fname: str, ref: str, hashes: Mapping[str, Any]) -> np.ndarray:
    where = f"{path}: node '{node}' field '{fname}'"
    member = ref + ".npy"
    entry = hashes.get(member)
    if not isinstance(entry, dict):
        raise GraphFileError(f"{where}: array '{ref}' has no content hash in graph.json")
    try:
        data = zf.read(member)
    except KeyError:
        raise GraphFileError(f"{where}: array '{ref}' is missing") from None
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise GraphFileError(f"{where}: array '{ref}' does not match its sha256 in graph.json "
                             f"(the file is corrupted or was edited)")
    return check_array(parse_npy(data, f"{where}: array '{ref}'", GraphFileError), f"{where}: array '{ref}'")


def _decode_node(path: Path | str, key: str, i: int, nd: object, read: ArrayReader) -> ir.Node:
    where = f"{path}: graph '{key}' node {i}"
    if not isinstance(nd, dict):
        raise GraphFileError(f"{where}: expected an object, found {_what(nd)}")
    name = nd.get("name")
    if not isinstance(name, str) or not name:
        raise GraphFileError(f"{where} name: expected a non-empty string, found {_what(name)}")
    where = f"{path}: graph '{key}' node '{name}'"
    tname = nd.get("type")
    if not isinstance(tname, str) or tname not in NODE_TYPES:
        raise GraphFileError(f"{where}: unknown type {_what(tname)}; expected one of {', '.join(NODE_TYPES)}")
    cls = NODE_TYPES[tname]
    where = f"{where} ({tname})"
    fields, arrays = nd.get("fields", {}), nd.get("arrays", {})
    for part, value in (("fields", fields), ("arrays", arrays)):
        if not isinstance(value, dict):
            raise GraphFileError(f"{where} {part}: expected an object, found {_what(value)}")
    declared = {f.name: f for f in dataclasses.fields(cls) if f.name != "name"}
    kwargs: dict[str, Any] = {}
    for fname, value in fields.items():
        f = declared.get(fname)
        if f is None or f.type == ARRAY_FIELD:
            expected = "an array reference" if f is not None else f"one of {', '.join(declared)}"
            raise GraphFileError(f"{where}: field '{fname}': expected {expected}, found a JSON value")
        check, expected = FIELD_CHECKS.get(str(f.type), (lambda v: True, "a value"))
        if not check(value):
            raise GraphFileError(f"{where} {fname}: expected {expected}, found {_what(value)}")
        kwargs[fname] = _tuple(value) if f.type in TUPLE_FIELDS else value
    for fname, ref in arrays.items():
        f = declared.get(fname)
        if f is None or f.type != ARRAY_FIELD:
            raise GraphFileError(f"{where}: array '{fname}': not an array field of {tname}")
        if not isinstance(ref, str):
            raise GraphFileError(f"{path}: node '{name}' field '{fname}': expected an array member name, "
                                 f"found {_what(ref)}")
        kwargs[fname] = read(name, fname, ref)
    missing = [n for n, f in declared.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise GraphFileError(f"{where}: missing field(s) {', '.join(missing)}")
    try:
        return cls(name=name, **kwargs)
    except GraphError as exc:
        raise GraphFileError(f"{path}: graph '{key}': {exc}") from None
    except (TypeError, ValueError, OverflowError, ArithmeticError, MemoryError) as exc:
        raise GraphFileError(f"{where}: bad fields ({short(exc)})") from None


def decode_graph(path: Path | str, key: str, doc: object, read: ArrayReader) -> ir.Graph:
    """One graph of a graph document (as graph.json holds it), every value checked against the
    node declarations; ``read`` supplies the arrays. Raises GraphFileError naming ``path``."""
    if not isinstance(doc, dict):
        raise GraphFileError(f"{path}: graph '{key}': expected an object, found {_what(doc)}")
    nodes_doc, edges_doc, meta = doc.get("nodes"), doc.get("edges", []), doc.get("metadata", {})
    if not isinstance(nodes_doc, list):
        raise GraphFileError(f"{path}: graph '{key}' nodes: expected a list, found {_what(nodes_doc)}")
    if not isinstance(edges_doc, list) or not all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e) for e in edges_doc):
        raise GraphFileError(f"{path}: graph '{key}' edges: expected a list of [source, target] name pairs")
    if not isinstance(meta, dict):
        raise GraphFileError(f"{path}: graph '{key}' metadata: expected an object, found {_what(meta)}")
    _check_metadata(path, key, meta)  # type: ignore[arg-type]
    nodes = [_decode_node(path, key, i, nd, read) for i, nd in enumerate(nodes_doc)]
    try:
        return ir.Graph(tuple(nodes), tuple((a, b) for a, b in edges_doc), meta)
    except GraphError as exc:
        raise GraphFileError(f"{path}: graph '{key}': {exc}") from None
    except (TypeError, ValueError, OverflowError, ArithmeticError, MemoryError, RecursionError) as exc:
        raise GraphFileError(f"{path}: graph '{key}': malformed ({short(exc)})") from None


#: Metadata keys the tools read, and what each must be.
METADATA_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "iterations": (lambda v: _is_int(v) and 1 <= v <= 10**6, "an integer in [1, 1000000]"),
    "payload_bits": (lambda v: _is_int(v) and 1 <= v <= 8, "an integer in [1, 8]"),
    "normalization": (lambda v: isinstance(v, dict) and isinstance(v.get("lambda", {}), dict)
                      and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
                              for x in v.get("lambda", {}).values()),
                      "an object whose 'lambda' maps layers to positive numbers"),
    "quantization": (lambda v: isinstance(v, list) and all(_is_layer_report(r) for r in v),
                     "a list of per-layer reports"),
}


def _is_layer_report(r: object) -> bool:
    from spikeforge.converter.passes import LayerReport

    if not isinstance(r, dict) or set(r) != set(LayerReport._fields):
        return False
    return (isinstance(r["layer"], str) and isinstance(r["weight_exp"], list)
            and all(_is_int(e) for e in r["weight_exp"])
            and all(_is_int(r[k]) for k in LayerReport._fields if k not in ("layer", "weight_exp")))


def _check_metadata(path: Path, key: str, meta: Mapping[str, object]) -> None:
    for name, (check, expected) in METADATA_CHECKS.items():
        if name in meta and not check(meta[name]):
            raise GraphFileError(f"{path}: graph '{key}' metadata '{name}': expected {expected}, "
                                 f"found {_what(meta[name])}")


def _depth(value: object, limit: int) -> int:
    """Nesting depth of a JSON value, stopping at ``limit`` (iterative: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_document(raw: bytes | str, where: str) -> dict:
    """A JSON object of at most MAX_JSON_BYTES, nested at most MAX_JSON_DEPTH deep."""
    if len(raw) > MAX_JSON_BYTES:
        raise GraphFileError(f"{where}: expected at most {MAX_JSON_BYTES} bytes of JSON, found {len(raw)}")
    try:
        doc = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except RecursionError:
        raise GraphFileError(f"{where} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise GraphFileError(f"{where} is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(doc, dict):
        raise GraphFileError(f"{where}: expected an object, found {_what(doc)}")
    if _depth(doc, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise GraphFileError(f"{where} nests deeper than {MAX_JSON_DEPTH} levels")
    return doc


def _read_doc(path: Path, zf: Archive) -> dict:
    try:
        raw = zf.read("graph.json", MAX_JSON_BYTES)
    except KeyError:
        raise GraphFileError(f"{path}: not a spikeforge graph file (no graph.json inside)") from None
    doc = parse_document(raw, f"{path}: graph.json")
    if doc.get("format") != FORMAT:
        raise GraphFileError(f"{path}: expected format '{FORMAT}', found {_what(doc.get('format'))}")
    version = doc.get("version")
    if version == 1:
        raise GraphFileError(f"{path}: format version 1 (written before graph files carried content hashes); "
                             f"expected version {VERSION}: convert the model again to rewrite it")
    if version != VERSION:
        raise GraphFileError(f"{path}: expected format version {VERSION}, found {_what(version)}")
    if doc.get("sha256") != _digest(doc):
        raise GraphFileError(f"{path}: graph.json does not match its sha256 (the file is corrupted or was edited)")
    for part in ("graphs", "members"):
        if not isinstance(doc.get(part), dict):
            raise GraphFileError(f"{path}: graph.json {part}: expected an object, found {_what(doc.get(part))}")
    return doc


def load_all(path: str | Path) -> dict[str, ir.Graph]:
    """Read every graph in a file. Raises GraphFileError with the file name on any problem."""
    path = Path(path)
    if not path.is_file():
        raise GraphFileError(f"{path}: {not_a_file(path)} (expected a spikeforge graph file)")
    if not zipfile.is_zipfile(path):
        raise GraphFileError(f"{path}: not a spikeforge graph file (expected a zip archive written by 'spikeforge convert')")
    with Archive(path, GraphFileError) as zf:
        doc = _read_doc(path, zf)
        def read(node: str, fname: str, ref: str) -> np.ndarray:
            return _array(path, zf, node, fname, ref, doc["members"])

        return {str(k): decode_graph(path, str(k), g, read) for k, g in doc["graphs"].items()}


def load(path: str | Path, which: str = "snn") -> ir.Graph:
    graphs = load_all(path)
    if which not in graphs:
        raise GraphFileError(f"{path}: expected a graph named '{which}', found {sorted(graphs) or 'none'}")
    return graphs[which]
