"""Time to build (validate) and query a long chain graph: Input -> (Affine -> ReLU) * k -> Output.

    .venv/bin/python benchmarks/graph_validation.py [nodes]   (default 16,000 nodes)
"""

from __future__ import annotations

import sys
import time

import numpy as np

from spikeforge import ir


def chain(n_nodes: int) -> tuple[tuple[ir.Node, ...], tuple[tuple[str, str], ...]]:
    k = max(1, (n_nodes - 2) // 2)
    w, b = np.ones((2, 2)), np.zeros(2)
    nodes: list[ir.Node] = [ir.Input("in", (2,))]
    edges = []
    prev = "in"
    for i in range(k):
        nodes += [ir.Affine(f"a{i}", w, b), ir.ReLU(f"r{i}", 2)]
        edges += [(prev, f"a{i}"), (f"a{i}", f"r{i}")]
        prev = f"r{i}"
    nodes.append(ir.Output("out", (2,)))
    edges.append((prev, "out"))
    return tuple(nodes), tuple(edges)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 16_000
    nodes, edges = chain(n)
    t0 = time.perf_counter()
    g = ir.Graph(nodes, edges)
    t1 = time.perf_counter()
    for node in g.nodes:
        g.predecessors(node.name), g.successors(node.name), g.node(node.name)
    order = g.topological_order()
    t2 = time.perf_counter()
    print(f"{len(nodes)} nodes: validation {t1 - t0:.3f} s; predecessors/successors/node of every node "
          f"and a topological order {t2 - t1:.3f} s ({len(order)} nodes)")


if __name__ == "__main__":
    main()
