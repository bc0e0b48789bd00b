"""spikeforge's cpu backend against the float peers, side by side in one run.

Per network, batch and T: samples/s and peak RSS of
  cpu      spikeforge's exact cpu backend (encode + run, readout recorded; T + depth steps),
  if-loop  a float32 torch IF simulation of the same network: constant current, reset by
           subtraction, T steps, one batch, the multi-step loop Sinabs/SpikingJelly run (each
           layer one product over all B*T inputs, then its T-step scan),
  ann x T  the float32 torch ANN forward, times T,
  lava / brian2 (small nets only) through runner.simulate, compile included,
with every column's ratio to cpu. Networks are float ANNs with random weights converted by
spikeforge (conversion timed too): the demo MLP 64-96-48-10, 784-1024-1024-10,
784-4096-4096-10 and the 28x28 CNN (3x3 convs 32-64-64, strides 1-2-2, Linear to 10).
Best of --repeats runs (one when a run takes over 5 s), one torch thread unless --threads.
Peak RSS: the process's resident set sampled during the run (MB, interpreter and libraries
included). The default rows are a quick subset (a few minutes on 2 cores); --full runs the grid.

    python benchmarks/bench.py [--full] [--nets mlp,cnn] [--batches 1,64] [--timesteps 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from spikeforge import ir
from spikeforge.backends import get_backend
from spikeforge.converter.passes import convert
from spikeforge.encoding import encode
from spikeforge.network import lower
from spikeforge.runner import simulate
from spikeforge.testing import random_inputs

NETS = ("mlp", "784-1024-1024-10", "784-4096-4096-10", "cnn")
# (net, batch, T) rows of the default run (a few minutes on 2 cores); --full: every net x (1, 64, 256, 1024) x (32, 128)
QUICK = [("mlp", b, t) for b in (1, 64, 256, 1024) for t in (32, 128)] + \
        [("784-1024-1024-10", b, 32) for b in (1, 64, 256)] + [("784-1024-1024-10", 64, 128)] + \
        [("784-4096-4096-10", b, 32) for b in (1, 64)] + [("cnn", b, 32) for b in (1, 64, 256)]
SMALL = {"mlp"}  # nets lava and brian2 run on


# -- networks -------------------------------------------------------------------------------------
def ann_graph(name: str, seed: int = 0) -> ir.Graph:
    """A float ANN with random (He-scaled) weights: Affine/Conv2d -> ReLU layers."""
    rng = np.random.default_rng(seed)
    nodes: list[ir.Node] = []
    edges: list[tuple[str, str]] = []

    def chain(node: ir.Node) -> None:
        if nodes:
            edges.append((nodes[-1].name, node.name))
        nodes.append(node)

    if name == "cnn":
        shape = (1, 28, 28)
        chain(ir.Input("in", shape))
        for i, (c, s) in enumerate(zip((32, 64, 64), (1, 2, 2)), start=1):
            w = rng.normal(0, np.sqrt(2 / (shape[0] * 9)), (c, shape[0], 3, 3))
            conv = ir.Conv2d(f"conv{i}", shape, (s, s), (1, 1), weight=w, bias=rng.normal(0, 0.05, c))
            shape = conv.geometry.output_shape
            chain(conv)
            chain(ir.ReLU(f"relu{i}", int(np.prod(shape)), shape=shape))
        chain(ir.Flatten("flat", shape))
        sizes = [int(np.prod(shape)), 10]
    else:
        sizes = [64, 96, 48, 10] if name == "mlp" else [int(s) for s in name.split("-")]
        chain(ir.Input("in", (sizes[0],)))
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        chain(ir.Affine(f"fc{i}", rng.normal(0, np.sqrt(2 / a), (b, a)), rng.normal(0, 0.05, b)))
        chain(ir.ReLU(f"act{i}", b))
    chain(ir.Output("out", (sizes[-1],)))
    return ir.Graph(tuple(nodes), tuple(edges))


def torch_layers(ann: ir.Graph) -> list[tuple[str, Callable]]:
    """The ANN as float32 torch callables on (N, features) tensors: ('syn', f) and ('relu', None)."""
    out: list[tuple[str, Callable]] = []
    for name in ann.topological_order():
        n = ann.node(name)
        if isinstance(n, ir.Affine):
            w, b = torch.tensor(n.weight, dtype=torch.float32), torch.tensor(n.bias, dtype=torch.float32)
            out.append(("syn", lambda x, w=w, b=b: torch.addmm(b, x, w.T)))
        elif isinstance(n, ir.Conv2d):
            g = n.geometry
            w, b = torch.tensor(n.weight, dtype=torch.float32), torch.tensor(n.bias, dtype=torch.float32)
            pad = (g.padding[0], g.padding[1])
            out.append(("syn", lambda x, w=w, b=b, g=g, pad=pad: F.conv2d(
                x.reshape(len(x), *g.input_shape), w, b, g.stride, pad).reshape(len(x), -1)))
        elif isinstance(n, ir.ReLU):
            out.append(("relu", None))
    return out


def ann_forward(layers, x: torch.Tensor) -> torch.Tensor:
    for kind, f in layers:
        x = f(x) if kind == "syn" else torch.relu(x)
    return x


def if_loop(layers, x: torch.Tensor, timesteps: int, vth: float = 1.0) -> torch.Tensor:
    """Float32 IF (reset by subtraction), multi-step: per layer one product over (B*T, n) inputs
    (the constant current repeated over T), then T steps of v += I; s = v >= vth; v -= s*vth."""
    b = len(x)
    s = x[:, None, :].expand(b, timesteps, x.shape[1]).reshape(b * timesteps, -1)
    for kind, f in layers:
        if kind == "syn":
            cur = f(s).reshape(b, timesteps, -1)
            continue
        v = torch.zeros_like(cur[:, 0])
        out = torch.empty_like(cur)
        for t in range(timesteps):
            v += cur[:, t]
            spk = (v >= vth).to(v.dtype)
            v -= spk * vth
            out[:, t] = spk
        s = out.reshape(b * timesteps, -1)
    return cur.sum(1)


# -- measurement ----------------------------------------------------------------------------------
class PeakRSS:
    """Peak resident set size (MB) of this process while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        self.peak, self._stop = self._rss(), threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def measure(fn: Callable[[], object], n: int, repeats: int) -> dict:
    best, peak = float("inf"), 0.0
    for i in range(repeats):
        with PeakRSS() as m:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        best, peak = min(best, dt), max(peak, m.peak)
        if dt > 5:
            break
    return {"seconds": best, "samples_per_s": n / best, "peak_rss_mb": round(peak, 1)}


def bench_net(name: str, rows: list[tuple[int, int]], repeats: int, peers_n: int, with_peers: bool) -> dict:
    ann = ann_graph(name)
    n_in = ann.inputs[0].out_size
    calib = random_inputs(256, n_in, seed=1)
    t0 = time.perf_counter()
    snn = convert(ann, calib)
    conversion_s = time.perf_counter() - t0
    net = lower(snn)
    be = get_backend("cpu")
    prog = be.compile(snn)
    layers = torch_layers(ann)
    synapses = sum(int(np.count_nonzero(p.weight)) if p.conv is None else
                   __import__("spikeforge.conv", fromlist=["synapse_count"]).synapse_count(p.weight, p.conv)
                   for p in net.projections)
    res = {"network": name, "neurons": sum(l.size for l in net.layers), "synapses": synapses,
           "conversion_s": round(conversion_s, 3), "rows": []}
    cpu_best: dict[int, float] = {}
    for batch, T in rows:
        x = random_inputs(batch, n_in, seed=2)
        xt = torch.tensor(x, dtype=torch.float32)

        def run_cpu():
            p = encode(x, T, net.depth, net.input.payload_max)
            return be.run(prog, p, record=[net.readout])

        with torch.no_grad():
            row = {"batch": batch, "T": T,
                   "cpu": measure(run_cpu, batch, repeats),
                   "if-loop": measure(lambda: if_loop(layers, xt, T), batch, repeats)}
            ann_once = measure(lambda: ann_forward(layers, xt), batch, repeats)
        row["ann x T"] = {"seconds": ann_once["seconds"] * T, "samples_per_s": ann_once["samples_per_s"] / T,
                          "peak_rss_mb": ann_once["peak_rss_mb"]}
        cpu_best[T] = max(cpu_best.get(T, 0.0), row["cpu"]["samples_per_s"])
        res["rows"].append(row)
    if with_peers and name in SMALL:
        x = random_inputs(peers_n, n_in, seed=2)
        for T in sorted({T for _, T in rows}):
            for peer in ("lava", "brian2"):
                try:
                    m = measure(lambda: simulate(snn, peer, x, T), peers_n, 1)
                    m["ratio_cpu_to_peer"] = cpu_best[T] / m["samples_per_s"]
                except Exception as exc:  # a peer's failure is reported, the table still printed
                    m = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
                res.setdefault("peers", []).append({"backend": peer, "T": T, "samples": peers_n, **m})
    for row in res["rows"]:
        c = row["cpu"]["samples_per_s"]
        for k in ("if-loop", "ann x T"):
            row[k]["cpu_ratio"] = c / row[k]["samples_per_s"]
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="every net x batch (1, 64, 256, 1024) x T (32, 128)")
    ap.add_argument("--nets", help=f"comma-separated subset of {','.join(NETS)}")
    ap.add_argument("--batches", help="comma-separated batch sizes (replaces the default rows' batches)")
    ap.add_argument("--timesteps", help="comma-separated T values (with --batches)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer-samples", type=int, default=8, help="samples lava and brian2 run")
    ap.add_argument("--no-peers", action="store_true", help="skip lava and brian2")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every column (default 1, "
                    "as the peers were measured; 0: torch's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    nets = args.nets.split(",") if args.nets else list(NETS)
    if args.batches or args.full:
        bs = [int(b) for b in args.batches.split(",")] if args.batches else [1, 64, 256, 1024]
        ts = [int(t) for t in args.timesteps.split(",")] if args.timesteps else [32, 128]
        grid = [(n, b, t) for n in nets for b in bs for t in ts]
    else:
        grid = [r for r in QUICK if r[0] in nets]
    mode = "full" if args.full else ("custom" if args.batches else "quick")
    out = {"mode": mode, "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "nets": []}
    for name in nets:
        rows = [(b, t) for n, b, t in grid if n == name]
        if rows:
            r = bench_net(name, rows, args.repeats, args.peer_samples, not args.no_peers)
            out["nets"].append(r)
            if not args.json:
                print_net(r)
    if args.json:
        print(json.dumps(out))
    return out


def print_net(r: dict) -> None:
    print(f"\n{r['network']}: {r['neurons']} neurons, {r['synapses']} synapses, conversion {r['conversion_s']:.2f} s")
    print(f"{'batch':>5} {'T':>4} | {'cpu/s':>9} {'MB':>6} | {'if-loop/s':>9} {'MB':>6} {'cpu/if':>6} | "
          f"{'ann*T/s':>9} {'MB':>6} {'cpu/ann':>7}")
    for row in r["rows"]:
        c, i, a = row["cpu"], row["if-loop"], row["ann x T"]
        print(f"{row['batch']:>5} {row['T']:>4} | {c['samples_per_s']:>9.0f} {c['peak_rss_mb']:>6.0f} | "
              f"{i['samples_per_s']:>9.0f} {i['peak_rss_mb']:>6.0f} {i['cpu_ratio']:>6.2f} | "
              f"{a['samples_per_s']:>9.0f} {a['peak_rss_mb']:>6.0f} {a['cpu_ratio']:>7.2f}")
    for p in r.get("peers", []):
        if "error" in p:
            print(f"  {p['backend']:<6} T={p['T']:<4} failed: {p['error']}")
            continue
        print(f"  {p['backend']:<6} T={p['T']:<4} {p['samples']} samples: {p['samples_per_s']:.2f} samples/s, "
              f"{p['peak_rss_mb']:.0f} MB; cpu (best batch) is {p['ratio_cpu_to_peer']:.0f}x faster")


if __name__ == "__main__":
    main()
