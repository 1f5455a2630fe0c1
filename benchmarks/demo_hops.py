#!/usr/bin/env python
"""Node centring and hubness-aware scoring along 2-, 3- and 4-hop routes of the demo graph.

The demo data that ships with the package (``bridge.datasets.demo``: number words and
phrases in English, German, French and Spanish by e5, English by MiniLM). Graph
(hash split by group, seed 0): identity edges ``text:X@e5 -> text:en@e5`` for X in de, fr,
es, and a closed-form edge both ways between ``text:en@e5`` and ``text:en@minilm``
(ridge with ``alpha="auto"``, or centred Procrustes), every edge with or without
``node_center``. Routes from each of de/fr/es (test pairs; mean R@1 over the three):

- 2 hops: ``X@e5 -> en@e5 -> en@minilm``
- 3 hops: ``X@e5 -> en@e5 -> en@minilm -> en@e5``
- 4 hops: ``X@e5 -> en@e5 -> en@minilm -> en@e5 -> en@minilm``

scored by ``evaluate_route`` with cosine, CSLS (k=10) and QB-Norm (beta=20), banks from the
route's own val rows. Shows whether centring and hubness correction compound or cancel
along a route.

Command (about a minute)::

    .venv/bin/python benchmarks/demo_hops.py
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

from bridge import ModalityGraph  # noqa: E402
from bridge.datasets.demo import load_demo  # noqa: E402
from bridge.evaluate import evaluate_route  # noqa: E402

E, M = "text:en@e5", "text:en@minilm"
FOREIGN = ("text:de@e5", "text:fr@e5", "text:es@e5")
SCORINGS = {"cosine": None, "csls": "csls:k=10", "qbnorm": "qbnorm:beta=20,k=1"}
KINDS = {"ridge": {"translator": "linear", "alpha": "auto"},
         "procrustes": {"translator": "procrustes", "center": True, "scale": True}}
ROUTES = {2: lambda x: [x, E, M], 3: lambda x: [x, E, M, E], 4: lambda x: [x, E, M, E, M]}


def graph(caches, spec: dict, node_center: bool) -> ModalityGraph:
    g = ModalityGraph(seed=0)
    for n in (E, M, *FOREIGN):
        g.add_node(n, caches[n])
    for x in FOREIGN:
        g.connect(x, E, translator="identity", directions="forward", node_center=node_center)
    g.connect(E, M, directions="both", node_center=node_center, **spec)
    return g


def main() -> dict:
    started = time.perf_counter()
    caches = load_demo()["caches"]
    rows, out = [], {}
    for kind, spec in KINDS.items():
        for centring in (False, True):
            g = graph(caches, spec, centring)
            for name, sc in SCORINGS.items():
                key = f"{kind}/{'centred' if centring else 'plain'}/{name}"
                out[key] = {str(n): float(np.mean([
                    evaluate_route(g, x, make(x)[-1], route=make(x), ks=(1,), scoring=sc,
                                   bank="val")["R@1"] for x in FOREIGN]))
                    for n, make in ROUTES.items()}
                rows.append([key] + [f"{out[key][str(n)]:.3f}" for n in ROUTES])
    print("Demo graph, test R@1 (mean over de/fr/es) by route length")
    print(C.format_table(rows, ["kind/centring/scoring", "2 hops", "3 hops", "4 hops"]))
    result = {"benchmark": "demo_hops", "routes": {n: " -> ".join(ROUTES[n]("X@e5")) for n in ROUTES},
              "R@1": out, "n_test_queries": {x: evaluate_route(graph(caches, KINDS["ridge"], False),
                                                               x, M, ks=(1,))["n_queries"]
                                             for x in FOREIGN}}
    path = C.write_result(C.results_dir() / "demo_hops.json", result, started=started)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
