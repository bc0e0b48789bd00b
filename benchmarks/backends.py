"""Backend throughput, measured side by side in one run on the demo network.

Samples per second of the cpu, lava and brian2 backends (compile included, as a user runs
them) and of the dense ANN forward pass repeated T times (the ANN doing T steps' worth of
work), and their ratios to the cpu backend. Uses out/net.sfg and out/test.npz from `make demo`
when present, otherwise trains and converts the demo network in a temporary folder.

    python benchmarks/backends.py [--timesteps 32] [--samples 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from spikeforge import data, graphio
from spikeforge.converter.ann import forward
from spikeforge.runner import simulate


def demo_files(folder: Path) -> tuple[Path, Path]:
    net, test = Path("out/net.sfg"), Path("out/test.npz")
    if net.is_file() and test.is_file():
        return net, test
    cli = [sys.executable, "-m", "spikeforge.cli"]
    subprocess.run([*cli, "train", "--arch", "mlp", "-o", str(folder / "model.onnx")], check=True)
    subprocess.run([*cli, "convert", str(folder / "model.onnx"), "--calib", str(folder / "calib.npz"),
                    "-o", str(folder / "net.sfg")], check=True)
    return folder / "net.sfg", folder / "test.npz"


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--timesteps", type=int, default=32)
    p.add_argument("--samples", type=int, default=50, help="samples per backend (the same for all)")
    p.add_argument("--backends", default="cpu,lava,brian2")
    p.add_argument("--repeats", type=int, default=3, help="cpu and ANN: best of this many runs")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        net_path, test_path = demo_files(Path(tmp))
        graphs = graphio.load_all(net_path)
        snn, ann = graphs["snn"], graphs["ann"]
        ds = data.load(str(test_path))
        x = ds.x.reshape(len(ds.x), -1)[: args.samples]
        n = len(x)

        rows: dict[str, dict] = {}
        ann_s = best_of(lambda: forward(ann, x), args.repeats) * args.timesteps
        rows["ann x T"] = {"seconds": ann_s, "samples_per_s": n / ann_s}
        for name in [b for b in args.backends.split(",") if b]:
            repeats = args.repeats if name == "cpu" else 1
            secs = best_of(lambda: simulate(snn, name, x, args.timesteps), repeats)
            rows[name] = {"seconds": secs, "samples_per_s": n / secs}
        ref = rows["cpu"]["samples_per_s"] if "cpu" in rows else None
        for r in rows.values():
            r["ratio_to_cpu"] = r["samples_per_s"] / ref if ref else None

    result = {"network": str(net_path), "samples": n, "timesteps": args.timesteps, "rows": rows}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{net_path}: {n} samples, T={args.timesteps}")
        print(f"{'what':<10} {'seconds':>9} {'samples/s':>11} {'x cpu':>9}")
        for k, r in rows.items():
            ratio = f"{r['ratio_to_cpu']:.3g}" if r["ratio_to_cpu"] else "-"
            print(f"{k:<10} {r['seconds']:>9.3f} {r['samples_per_s']:>11.1f} {ratio:>9}")
    return result


if __name__ == "__main__":
    main()
