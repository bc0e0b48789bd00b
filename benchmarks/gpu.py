"""The cpu backend on a CUDA device: spike identity against the CPU device on the benchmark
networks, and samples/s of both side by side. Without CUDA it says so in one line, exit 0.

    python benchmarks/gpu.py [--nets mlp,cnn] [--batch 256] [--timesteps 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import NETS, ann_graph  # noqa: E402

from spikeforge.backends import get_backend  # noqa: E402
from spikeforge.converter.passes import convert  # noqa: E402
from spikeforge.encoding import encode  # noqa: E402
from spikeforge.network import lower  # noqa: E402
from spikeforge.testing import assert_identical, random_inputs  # noqa: E402


def best(fn, repeats: int) -> float:
    out = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--timesteps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False); nothing to measure")
        return 0
    rows = []
    for name in args.nets.split(","):
        ann = ann_graph(name)
        snn = convert(ann, random_inputs(256, ann.inputs[0].out_size, seed=1))
        net = lower(snn)
        x = random_inputs(args.batch, net.input.size, seed=2)
        p = encode(x, args.timesteps, net.depth, net.input.payload_max)
        row = {"network": name, "batch": args.batch, "T": args.timesteps}
        results = {}
        for dev in ("cpu", "cuda"):
            be = get_backend("cpu", device=dev)
            prog = be.compile(snn)
            results[dev] = be.run(prog, p)

            def run():
                be.run(prog, p, record=[net.readout])
                if dev == "cuda":
                    torch.cuda.synchronize()

            run()
            row[f"{dev}_samples_per_s"] = args.batch / best(run, args.repeats)
        assert_identical(results["cpu"], results["cuda"])
        row["identical"] = True
        row["speedup"] = row["cuda_samples_per_s"] / row["cpu_samples_per_s"]
        rows.append(row)
        if not args.json:
            print(f"{name:<18} batch {args.batch} T={args.timesteps}: spikes identical; cpu "
                  f"{row['cpu_samples_per_s']:.0f}/s, cuda {row['cuda_samples_per_s']:.0f}/s ({row['speedup']:.1f}x) "
                  f"[{torch.cuda.get_device_name()}]")
    if args.json:
        print(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
