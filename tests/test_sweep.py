"""spikeforge sweep: the (T, encoding) x shard grid serially, in local worker processes and on a
real local Ray cluster gives one table; failed tasks are reported by grid point and shard."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from spikeforge import data, graphio, ir, sweep
from spikeforge.converter.passes import convert
from spikeforge.runner import simulate
from spikeforge.testing import run_cli



def ann_graph(seed: int = 0) -> ir.Graph:
    rng = np.random.default_rng(seed)
    return ir.Graph((ir.Input("in", (64,)), ir.Affine("fc1", rng.normal(0, 0.25, (24, 64)), rng.normal(0, 0.1, 24)),
                     ir.ReLU("r1", 24), ir.Affine("fc2", rng.normal(0, 0.3, (10, 24)), np.zeros(10)),
                     ir.ReLU("r2", 10), ir.Output("out", (10,))),
                    (("in", "fc1"), ("fc1", "r1"), ("r1", "fc2"), ("fc2", "r2"), ("r2", "out")))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sweep")
    ds = data.load("digits")
    ds = ds._replace(x=ds.x[:150], y=ds.y[:150])
    data.save_npz(d / "test.npz", ds)
    ann = ann_graph()
    graphio.save(d / "net.sfg", snn=convert(ann, ds.x.reshape(len(ds.x), -1)), ann=ann)
    return d


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, timeout=600)


def _load(d: Path, name: str) -> dict:
    return json.loads((d / name).read_text())


def test_workers_equal_serial_and_outputs(files):
    base = ["sweep", "net.sfg", "--data", "test.npz", "--timesteps", "4,8,16", "--encoding", "current,rate",
            "--shard-size", "40"]
    r1 = cli(*base, "--workers", "1", "-o", "serial.json", cwd=files)
    assert r1.returncode == 0, r1.stderr
    r2 = cli(*base, "--workers", "2", "-o", "two.json", cwd=files)
    assert r2.returncode == 0, r2.stderr
    serial, two = _load(files, "serial.json"), _load(files, "two.json")
    assert serial["runner"] == "serial" and two["runner"] == "workers 2"
    assert serial["table"] == two["table"] and not two["failures"]
    assert [(r["timesteps"], r["encoding"]) for r in serial["table"]] == [
        (t, e) for t in (4, 8, 16) for e in ("current", "rate")]
    assert all(r["samples"] == 150 for r in serial["table"])
    # the table's current-input accuracy is what simulate gives on the whole data set
    snn = graphio.load(files / "net.sfg")
    ds = data.load(str(files / "test.npz"))
    sim = simulate(snn, "cpu", ds.x.reshape(len(ds.x), -1), 8)
    row = next(r for r in serial["table"] if r["timesteps"] == 8 and r["encoding"] == "current")
    assert row["correct"] == int((sim.predictions == ds.y).sum())
    rate = simulate(snn, "cpu", ds.x.reshape(len(ds.x), -1), 8, "rate")  # the default seed, as the sweep's
    row = next(r for r in two["table"] if r["timesteps"] == 8 and r["encoding"] == "rate")
    assert row["correct"] == int((rate.predictions == ds.y).sum())
    assert serial["ann_accuracy"] is not None
    csv_lines = (files / "serial.csv").read_text().strip().splitlines()
    assert csv_lines[0].startswith("timesteps,encoding,samples,correct,accuracy") and len(csv_lines) == 7
    png = (files / "serial.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(files / "serial.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def serial_table(d: Path, timesteps: list[int], encodings: list[str]) -> list[dict]:
    ds = data.load(str(d / "test.npz"))
    return sweep.sweep(d / "net.sfg", ds.x, ds.y, timesteps, encodings, shard_size=40).table()


def test_ray_equals_serial_and_failures_reported(files):
    import ray

    ds = data.load(str(files / "test.npz"))
    x, y = ds.x.reshape(len(ds.x), -1).copy(), ds.y
    x[45] = 2.0  # shard 1 (samples 40..79) cannot be encoded: its tasks fail, the others count
    ann = graphio.load(files / "net.sfg", "ann")
    kw = dict(timesteps=[4, 16], encodings=["current", "rate"], shard_size=40, ann=ann)
    serial = sweep.sweep(files / "net.sfg", x, y, **kw)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    try:
        remote = sweep.sweep(files / "net.sfg", x, y, ray_address="auto", **kw)
        # another process joins the cluster at its address: the address check lets a real one through
        address = ray.get_runtime_context().gcs_address
        r = cli("sweep", "net.sfg", "--data", "test.npz", "--timesteps", "4", "--encoding", "rate",
                "--shard-size", "40", "--ray", address, "-o", "joined.json", cwd=files)
    finally:
        ray.shutdown()
    assert r.returncode == 0, r.stderr
    joined = _load(files, "joined.json")
    assert joined["runner"] == f"ray {address}" and not joined["failures"]
    assert joined["table"] == serial_table(files, [4], ["rate"])
    assert remote.runner == "ray auto"
    assert remote.table() == serial.table()
    assert remote.failures == serial.failures
    assert sorted((f["timesteps"], f["encoding"], f["shard"]) for f in remote.failures) == [
        (t, e, 1) for t in (4, 16) for e in ("current", "rate")]
    assert all("expected values in [0, 1]" in f["error"] for f in remote.failures)
    assert all(r.accuracy is None and r.failed_shards == (1,) and r.samples == 150 for r in remote.rows)
    assert all(r.correct > 0 for r in remote.rows)  # the other shards still counted
    jp, cp, pp = sweep.write(remote, files / "ray.json")
    assert _load(files, "ray.json")["failures"] == remote.failures and pp.stat().st_size > 1000


def test_bad_arguments(files):
    r = cli("sweep", "net.sfg", "--data", "test.npz", "--encoding", "current,poisson", "-o", "x.json", cwd=files)
    assert r.returncode == 2 and "--encoding: expected values among current,rate, found 'poisson'" in r.stderr
    r = cli("sweep", "net.sfg", "--data", "test.npz", "-o", "x.csv", cwd=files)
    assert r.returncode == 2 and "x.csv: expected an output file name ending in .json" in r.stderr
    assert not (files / "x.json").exists()
    r = cli("simulate", "net.sfg", "--data", "test.npz", "--backend", "lava", "--device", "cuda", cwd=files)
    assert r.returncode == 2 and "--device cuda: only the cpu backend runs on a torch device" in r.stderr


def test_rate_accuracy_is_simulate_s_for_any_shard_size(files):
    """The rate code's stream is numbered by sample index with the one seed, as simulate's chunks."""
    snn = graphio.load(files / "net.sfg")
    ds = data.load(str(files / "test.npz"))
    x = ds.x.reshape(len(ds.x), -1)
    expected = {t: int((simulate(snn, "cpu", x, t, "rate", seed=5, memory_mb=0.05).predictions == ds.y).sum())
                for t in (2, 4)}
    for shard_size in (7, 64, 150):
        res = sweep.sweep(files / "net.sfg", x, ds.y, [2, 4], ["rate"], shard_size=shard_size, seed=5)
        assert {r.timesteps: r.correct for r in res.rows} == expected, shard_size


def node_ip() -> str:
    from ray._private.services import resolve_ip_for_localhost

    return resolve_ip_for_localhost("127.0.0.1")


def _written(d: Path, stem: str) -> list[str]:
    return [p.name for p in d.glob(stem + ".*")]


@pytest.mark.parametrize("address, found", [
    ("nohost.invalid:1", "no Ray cluster answers there (host 'nohost.invalid' not found)"),
    ("127.0.0.1:1", "no Ray cluster answers there ({host}:1: Connection refused)"),
    ("nohost", "expected HOST:PORT, ray://HOST:PORT or auto, found 'nohost'"),
])
def test_ray_address_nobody_answers(files, address, found):
    """One line and exit 2 within seconds (Ray itself retries such an address for ever)."""
    r = run_cli("sweep", "net.sfg", "--data", "test.npz", "--timesteps", "4", "--ray", address, "-o", "r.json",
                cwd=files, timeout=60)
    host = node_ip()  # Ray connects to localhost through this node's IP
    assert r.returncode == 2 and r.stderr.strip() == f"spikeforge: error: --ray {address}: {found.format(host=host)}"
    assert not _written(files, "r")


def test_ray_auto_resolves_ray_address(files, monkeypatch):
    """'auto' is RAY_ADDRESS where set (Ray's rule), checked like an address given."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(sweep.SpikeforgeError, match=rf"^--ray auto: no Ray cluster answers there \({re.escape(node_ip())}:1: "):
        sweep.connect_ray("auto")


def test_unknown_backend_before_any_task(files):
    r = cli("sweep", "net.sfg", "--data", "test.npz", "--timesteps", "4", "--backend", "foo", "-o", "s.json",
            cwd=files)
    assert r.returncode == 2
    assert r.stderr.strip() == "spikeforge: error: --backend: expected one of cpu, brian2, lava, loihi, found 'foo'"
    assert not _written(files, "s")
    r = cli("sweep", "net.sfg", "--data", "test.npz", "--timesteps", "4,0", "-o", "s.json", cwd=files)
    assert r.returncode == 2 and "--timesteps: expected integers >= 1, found 0" in r.stderr
    assert not _written(files, "s")


def test_ray_address_that_never_accepts():
    """A listener whose accept queue is full drops connects (Linux): the check gives up after its timeout."""
    import socket
    import time

    with socket.socket() as srv:
        srv.bind(("", 0))
        srv.listen(0)
        port = srv.getsockname()[1]
        held = [socket.socket() for _ in range(3)]
        for c in held:
            c.setblocking(False)
            c.connect_ex((node_ip(), port))
        time.sleep(0.2)
        t0 = time.perf_counter()
        with pytest.raises(sweep.SpikeforgeError) as err:
            sweep.connect_ray(f"127.0.0.1:{port}", timeout=0.5)
        seconds = time.perf_counter() - t0
        for c in held:
            c.close()
    assert str(err.value) == (f"--ray 127.0.0.1:{port}: no Ray cluster answers there "
                              f"(could not connect to {node_ip()}:{port} within 0.5 s)")
    assert seconds < 5


def test_lava_in_worker_processes(files):
    """Spawned workers import Lava (which sets the 'fork' start method); lava is cpu's spikes."""
    ds = data.load(str(files / "test.npz"))
    x, y = ds.x[:12], ds.y[:12]
    kw = dict(timesteps=[4], encodings=["rate"], shard_size=6, seed=2)
    lava = sweep.sweep(files / "net.sfg", x, y, backend="lava", workers=2, **kw)
    assert not lava.failures, lava.failures
    assert lava.table() == sweep.sweep(files / "net.sfg", x, y, **kw).table()
