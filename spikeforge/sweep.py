"""Accuracy over a grid of (T, encoding), the data set in shards, evaluated in parallel: in this
process, in local worker processes, or as tasks on a Ray cluster (``pip install spikeforge[ray]``).

Each task is one (grid point, shard) pair and a pure function of it: the shard's rate code and
stochastic streams are numbered from ``start`` (the sample index of the shard's first sample)
with the sweep's one seed, as runner.simulate numbers its chunks, so the table does not depend
on the shard size or on how the tasks are spread, and equals simulate's. The arguments (backend,
Ray address) are checked before any task runs; a task that fails is reported by grid point and
shard; the others still count.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence, cast

import numpy as np

from spikeforge import ir
from spikeforge.encoding import ENCODINGS, Encoding
from spikeforge.errors import SpikeforgeError
from spikeforge.fileio import atomic_path, check_output

if TYPE_CHECKING:
    from spikeforge.backends.base import Backend
    from spikeforge.network import Network

#: Samples per shard unless asked otherwise.
SHARD_SIZE = 256


class Task(NamedTuple):
    timesteps: int
    encoding: Encoding
    shard: int
    start: int  # index of the shard's first sample
    stop: int


class TaskResult(NamedTuple):
    task: Task
    correct: int  # predictions equal to the labels
    samples: int
    seconds: float
    error: str | None = None  # 'Type: message' when the task failed


class Row(NamedTuple):
    """One grid point: accuracy over all shards (None if any shard failed)."""

    timesteps: int
    encoding: str
    samples: int
    correct: int
    accuracy: float | None
    failed_shards: tuple[int, ...]


class Sweep(NamedTuple):
    rows: list[Row]
    ann_accuracy: float | None
    failures: list[dict]  # {"timesteps", "encoding", "shard", "start", "stop", "error"}
    seconds: float
    runner: str  # "serial" | "workers N" | "ray ADDRESS"

    def table(self) -> list[dict]:
        return [r._asdict() | {"failed_shards": list(r.failed_shards)} for r in self.rows]


def plan(timesteps: Sequence[int], encodings: Sequence[str], n_samples: int, shard_size: int = SHARD_SIZE) -> list[Task]:
    """The tasks of a sweep: every (T, encoding) times every shard of ``shard_size`` samples."""
    if shard_size < 1:
        raise SpikeforgeError(f"shard size: expected >= 1, found {shard_size}")
    for e in encodings:
        if e not in ENCODINGS:
            raise SpikeforgeError(f"--encoding: expected values among {','.join(ENCODINGS)}, found '{e}'")
    for t in timesteps:
        if t < 1:
            raise SpikeforgeError(f"--timesteps: expected integers >= 1, found {t}")
    starts = range(0, n_samples, shard_size)
    encs = [cast(Encoding, e) for e in encodings]  # checked above
    return [Task(int(t), e, i, s, min(s + shard_size, n_samples))
            for t in timesteps for e in encs for i, s in enumerate(starts)]


# -- one task (in any process) -------------------------------------------------------------------
_PROGRAMS: dict[tuple[str, str, str], tuple[Backend, Any, Network]] = {}

#: run_task's arguments: graph file bytes, backend, device, task, the shard's x and y, seed.
TaskArgs = tuple[bytes, str, str, Task, np.ndarray, np.ndarray, int]


def _options(backend: str, device: str) -> dict[str, Any]:
    return {"device": device, "threads": 1} if backend == "cpu" else {}


def _program(graph_bytes: bytes, backend: str, device: str) -> tuple[Backend, Any, Network]:
    """The compiled graph for these file bytes, cached per process."""
    from spikeforge import graphio
    from spikeforge.backends import get_backend
    from spikeforge.network import lower

    key = (hashlib.sha256(graph_bytes).hexdigest(), backend, device)
    if key not in _PROGRAMS:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "net.sfg"
            path.write_bytes(graph_bytes)
            snn = graphio.load(path)
        be = get_backend(backend, **_options(backend, device))
        _PROGRAMS[key] = (be, be.compile(snn), lower(snn))
    return _PROGRAMS[key]


def run_task(graph_bytes: bytes, backend: str, device: str, task: Task, x: np.ndarray, y: np.ndarray,
             seed: int) -> TaskResult:
    """Evaluate one (grid point, shard): x, y are the shard's samples. Never raises: a failure
    comes back in ``error``."""
    from spikeforge.runner import _payloads

    t0 = time.perf_counter()
    try:
        be, prog, net = _program(graph_bytes, backend, device)
        payloads = _payloads(net, x, task.timesteps, task.encoding, seed, task.start)  # as runner._chunks
        extra = {"record": [net.readout]} if backend == "cpu" else {}
        result = be.run(prog, payloads, sample_offset=task.start, **extra)
        correct = int((result.predictions == np.asarray(y)).sum())
        return TaskResult(task, correct, len(y), time.perf_counter() - t0)
    except Exception as exc:  # reported by grid point and shard, never lost
        return TaskResult(task, 0, len(y), time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")


# -- runners ------------------------------------------------------------------------------------------
def _serial(args_list: list[TaskArgs]) -> list[TaskResult]:
    return [run_task(*a) for a in args_list]


def _worker_start(backend: str) -> None:
    """A spawned worker fixes the start method to 'spawn'; Lava's import sets 'fork' (and fails
    on a fixed one): unfixed, then Lava imported, before the worker's first task."""
    if backend == "lava":
        import multiprocessing as mp

        from spikeforge.backends.lava_backend import import_lava

        mp.set_start_method(None, force=True)  # type: ignore[arg-type]
        try:
            import_lava()
        except SpikeforgeError:
            pass  # each task reports it


def _workers(args_list: list[TaskArgs], workers: int) -> list[TaskResult]:
    import multiprocessing as mp

    out = []
    backend = args_list[0][1] if args_list else "cpu"
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_worker_start, initargs=(backend,)) as pool:
        futures = {pool.submit(run_task, *a): a[3] for a in args_list}
        for f in as_completed(futures):
            try:
                out.append(f.result())
            except Exception as exc:  # the worker itself died
                t = futures[f]
                out.append(TaskResult(t, 0, t.stop - t.start, 0.0, f"{type(exc).__name__}: {exc}"))
    return out


#: Seconds that connect_ray waits for the cluster's address to answer.
RAY_CONNECT_TIMEOUT = 10.0


def _ray_endpoint(address: str) -> tuple[str, int]:
    """(host, port) that ray.init(address) connects to: HOST:PORT (localhost as this node's IP,
    as Ray resolves it), ray://HOST[:PORT] (Ray Client, port 10001) or 'auto' (RAY_ADDRESS, else
    the cluster that ``ray start`` recorded on this machine)."""
    expected = f"--ray {address}: expected HOST:PORT, ray://HOST:PORT or auto, found '{address}'"
    if address.startswith("ray://"):
        host, sep, port = address.removeprefix("ray://").partition("/")[0].rpartition(":")
        host, port = (host, port) if sep else (port, "10001")
        if not host or not port.isdigit():
            raise SpikeforgeError(expected)
        return host.strip("[]"), int(port)
    from ray._private.services import canonicalize_bootstrap_address

    try:
        target = canonicalize_bootstrap_address(address) or ""
    except ConnectionError:
        raise SpikeforgeError(f"--ray {address}: expected a running Ray cluster on this machine (ray start --head), "
                              "found none") from None
    except ValueError:
        raise SpikeforgeError(expected) from None
    host, sep, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SpikeforgeError(expected)
    return host.strip("[]"), int(port)


def _unanswered(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connect to host:port fails within ``timeout`` s (name look-up included), or None."""
    why: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            why.append(None)
        except socket.gaierror:
            why.append(f"host '{host}' not found")
        except OSError as exc:
            why.append(f"{host}:{port}: {exc.strerror or exc}")

    probe = threading.Thread(target=attempt, daemon=True)  # a look-up that hangs is left behind
    probe.start()
    probe.join(timeout)
    return why[0] if why else f"could not connect to {host}:{port} within {timeout:g} s"


def connect_ray(address: str, timeout: float = RAY_CONNECT_TIMEOUT) -> None:
    """ray.init on the cluster at ``address`` (unless Ray is already initialised), after a TCP
    connect to it within ``timeout`` s: an address where nothing answers is one error, not
    Ray's endless reconnect."""
    try:
        import ray
    except ImportError:
        raise SpikeforgeError("--ray: Ray is not installed (pip install 'spikeforge[ray]')") from None
    if ray.is_initialized():
        return
    host, port = _ray_endpoint(address)
    why = _unanswered(host, port, timeout)
    if why is not None:
        raise SpikeforgeError(f"--ray {address}: no Ray cluster answers there ({why})")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except Exception as exc:
        raise SpikeforgeError(f"--ray {address}: cannot connect to a Ray cluster ({exc})".splitlines()[0]) from None


def _ray(args_list: list[TaskArgs], address: str) -> list[TaskResult]:
    import ray

    connect_ray(address)
    if not args_list:
        return []
    remote = ray.remote(num_cpus=1, max_retries=1)(run_task)
    graph_ref = ray.put(args_list[0][0])  # the graph once in the object store, not per task
    refs = {remote.remote(graph_ref, *a[1:]): a[3] for a in args_list}
    out = []
    for ref, t in refs.items():
        try:
            out.append(ray.get(ref))
        except Exception as exc:  # the task's worker died (out of memory, node lost, ...)
            out.append(TaskResult(t, 0, t.stop - t.start, 0.0, f"{type(exc).__name__}: {exc}".splitlines()[0]))
    return out


def check(backend: str, device: str = "cpu", ray_address: str | None = None) -> None:
    """The arguments that every task would fail on, checked before any runs: the backend's
    name and options, and (``ray_address``) that a Ray cluster answers there (connect_ray)."""
    from spikeforge.backends import backend_names, get_backend

    if backend not in backend_names():
        raise SpikeforgeError(f"--backend: expected one of {', '.join(backend_names())}, found '{backend}'")
    get_backend(backend, **_options(backend, device))
    if ray_address:
        connect_ray(ray_address)


def sweep(graph_path: str | os.PathLike[str], x: np.ndarray, y: np.ndarray, timesteps: Sequence[int],
          encodings: Sequence[str] = ("current",), backend: str = "cpu", device: str = "cpu",
          workers: int = 1, ray_address: str | None = None, shard_size: int = SHARD_SIZE,
          seed: int = 0, ann: ir.Graph | None = None) -> Sweep:
    """Accuracy of the graph file's 'snn' for every (T, encoding) on (x, y), evaluated as
    (grid point, shard) tasks: serially (workers 1), in ``workers`` local processes, or on the
    Ray cluster at ``ray_address`` ('auto': the running one). ``ann``: its accuracy is reported."""
    graph_bytes = Path(graph_path).read_bytes()
    from spikeforge.runner import _as_samples

    x, y = _as_samples(x), np.asarray(y)  # rates (samples, features) or spike trains (samples, T, inputs)
    tasks = plan(timesteps, encodings, len(x), shard_size)
    check(backend, device, ray_address)
    args_list: list[TaskArgs] = [(graph_bytes, backend, device, t, x[t.start:t.stop], y[t.start:t.stop], seed) for t in tasks]
    t0 = time.perf_counter()
    if ray_address:
        results, runner = _ray(args_list, ray_address), f"ray {ray_address}"
    elif workers > 1:
        results, runner = _workers(args_list, workers), f"workers {workers}"
    else:
        results, runner = _serial(args_list), "serial"
    seconds = time.perf_counter() - t0
    ann_acc = None
    if ann is not None:
        from spikeforge.converter.ann import predict

        ann_acc = float((predict(ann, x if x.ndim == 2 else x.mean(axis=1)) == y).mean())
    return _gather(results, timesteps, encodings, ann_acc, seconds, runner)


def _gather(results: list[TaskResult], timesteps: Sequence[int], encodings: Sequence[str],
            ann_acc: float | None, seconds: float, runner: str) -> Sweep:
    by_point: dict[tuple[int, str], list[TaskResult]] = {}
    for r in results:
        by_point.setdefault((r.task.timesteps, r.task.encoding), []).append(r)
    rows, failures = [], []
    for t in timesteps:
        for e in encodings:
            rs = sorted(by_point.get((int(t), e), []), key=lambda r: r.task.shard)
            failed = tuple(r.task.shard for r in rs if r.error)
            failures += [{"timesteps": r.task.timesteps, "encoding": e, "shard": r.task.shard,
                          "start": r.task.start, "stop": r.task.stop, "error": r.error} for r in rs if r.error]
            n = sum(r.samples for r in rs)
            correct = sum(r.correct for r in rs if not r.error)
            rows.append(Row(int(t), e, n, correct, None if failed or not n else correct / n, failed))
    return Sweep(rows, ann_acc, failures, seconds, runner)


# -- outputs ------------------------------------------------------------------------------------------
def outputs(json_path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """sweep.json -> (sweep.json, sweep.csv, sweep.png), each checked writable."""
    p = check_output(json_path, ".json")
    return p, check_output(p.with_suffix(".csv")), check_output(p.with_suffix(".png"))


def write(result: Sweep, json_path: str | os.PathLike[str], meta: dict | None = None) -> tuple[Path, Path, Path]:
    """The table as JSON and CSV, and accuracy against T (one line per encoding, the ANN as a
    dashed line) as PNG."""
    from spikeforge import plots

    jp, cp, pp = outputs(json_path)
    doc = {**(meta or {}), "runner": result.runner, "seconds": result.seconds,
           "ann_accuracy": result.ann_accuracy, "table": result.table(), "failures": result.failures}
    with atomic_path(jp) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    with atomic_path(cp) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["timesteps", "encoding", "samples", "correct", "accuracy", "failed_shards"])
            for r in result.rows:
                w.writerow([r.timesteps, r.encoding, r.samples, r.correct,
                            "" if r.accuracy is None else f"{r.accuracy:.6f}", " ".join(map(str, r.failed_shards))])
    fig, axes = plots.figure()
    encs = list(dict.fromkeys(r.encoding for r in result.rows))
    ts = sorted({r.timesteps for r in result.rows})
    acc = {(r.timesteps, r.encoding): r.accuracy for r in result.rows if r.accuracy is not None}
    curves = {f"SNN, {e} input": [acc.get((t, e), np.nan) for t in ts] for e in encs}
    curves = {k: v for k, v in curves.items() if not np.isnan(v).all()}  # a grid line with every task failed
    refs = {"ANN": result.ann_accuracy} if result.ann_accuracy is not None else None
    ax = axes[0, 0]
    if not curves:
        ax.plot(ts, [np.nan] * len(ts))
        ax.set_xlim(min(ts) / 1.5, max(ts) * 1.5)
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "every grid point has a failed shard", ha="center", transform=ax.transAxes)
    plots.accuracy_vs_T(ts, curves, ax=ax, references=refs, title="accuracy against T")
    plots.save(fig, pp)
    return jp, cp, pp
