"""Time from the first signal to the CLI's exit, and to the last process and /dev/shm segment
of the run gone, for a Lava run interrupted by 2x SIGINT (Ctrl-C twice) and by SIGTERM.

    .venv/bin/python benchmarks/interrupts.py --repeats 3 [--workdir DIR]

DIR needs net.sfg and test.npz (made with train + convert when missing).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_interrupts import CLI, ENV, gone_within, start, wait_for_lava  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    d = args.workdir or Path(tempfile.mkdtemp(prefix="sf-interrupts-"))
    if not (d / "net.sfg").exists():
        for a in (["train", "--hidden", "64", "--epochs", "10", "--force", "-o", "model.onnx"],
                  ["convert", "model.onnx", "--calib", "calib.npz", "--force", "-o", "net.sfg"]):
            subprocess.run([*CLI, *a], cwd=d, env=ENV, check=True, capture_output=True)
    for name, signals, code in (("2x SIGINT", [signal.SIGINT, signal.SIGINT], 130),
                                ("SIGTERM", [signal.SIGTERM], 143)):
        exits, ends = [], []
        for _ in range(args.repeats):
            proc = start(["simulate", "net.sfg", "--backend", "lava", "--data", "test.npz"], d)
            procs, segments = wait_for_lava(proc)
            t0 = time.monotonic()
            for i, s in enumerate(signals):
                if i:
                    time.sleep(0.2)
                proc.send_signal(s)
            proc.communicate(timeout=30)
            exits.append(time.monotonic() - t0)
            assert proc.returncode == code, proc.returncode
            gone_within(procs | {proc.pid}, segments, 30)
            ends.append(time.monotonic() - t0)
        print(f"{name}: exit after {min(exits):.2f}-{max(exits):.2f} s, all processes and shared memory "
              f"gone after {min(ends):.2f}-{max(ends):.2f} s ({args.repeats} runs)")


if __name__ == "__main__":
    main()
