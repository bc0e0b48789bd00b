"""Hunt for NIR (HDF5) files that make the reader hang or crash: bit flips and truncation of
a NIR file spikeforge wrote, each case read in a child process with a time limit.

    .venv/bin/python scripts/fuzz_nir.py [cases] [seed]      (default 200 cases, seed 1)

Prints the outcome counts and keeps every hanging or crashing case as hang-N.nir / crash-N.nir
in the current folder. Found so far: flipped bits in the vlen-string dataset 'node/edges' make
h5py/HDF5 loop forever inside Dataset.__getitem__ (seed 1, case 82), which no Python-level
timeout can interrupt: load_nir therefore reads files in a child process with a time limit
(converter.nir_io.READ_TIMEOUT) and refuses such a file in one line.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

READ = ("import sys, warnings; warnings.simplefilter('ignore')\n"
        "from spikeforge.converter.nir_io import load_nir\n"
        "from spikeforge.errors import SpikeforgeError\n"
        "try:\n    load_nir(sys.argv[1]); print('loaded')\n"
        "except SpikeforgeError:\n    print('refused')\n")


def main() -> None:
    from spikeforge.converter.nir_io import save_nir
    from spikeforge.testing import random_fixed_graph

    cases = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rng = np.random.default_rng(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    tally: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "seed.nir"
        save_nir(random_fixed_graph([6, 5, 3], seed=1, reset="zero", recurrent=True), seed)
        raw = seed.read_bytes()
        for i in range(cases):
            b = bytearray(raw)
            if rng.random() < 0.8:
                for _ in range(rng.integers(1, 8)):
                    b[rng.integers(0, len(b))] ^= 1 << int(rng.integers(0, 8))
            else:
                b = b[:rng.integers(0, len(b))]
            case = Path(tmp) / "case.nir"
            case.write_bytes(bytes(b))
            try:
                r = subprocess.run([sys.executable, "-c", READ, str(case)], capture_output=True, text=True, timeout=20)
                outcome = r.stdout.strip() or "crash"
            except subprocess.TimeoutExpired:
                outcome = "hang"
            if outcome in ("hang", "crash"):
                Path(f"{outcome}-{i}.nir").write_bytes(bytes(b))
            tally[outcome] += 1
    print(dict(tally))


if __name__ == "__main__":
    main()
