"""Post-hoc alignment of an MLP edge and what it does to the next hop of a route.

On the shipped demo data (no ``../shared`` needed): an MLP edge ``text:en@minilm ->
text:en@e5`` (InfoNCE + MSE, the demo's settings) followed by a ridge edge ``text:en@e5 ->
text:es@e5``. For each post-hoc option of the MLP edge (none, center, procrustes,
center+procrustes) it reports, on the test pairs, the one-hop R@1 and mean cosine at
``text:en@e5``, the centroid gap of the translated rows there, and the R@1 of the composed
two-hop route at ``text:es@e5``; mean and std over seeds.

    .venv/bin/python benchmarks/posthoc_center.py            # 3 seeds, about 2 minutes
    .venv/bin/python benchmarks/posthoc_center.py --seeds 0  # one seed

Writes ``benchmarks/results/posthoc_center.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import aggregate, format_table, results_dir, set_seed, set_threads, write_result  # noqa: E402

from bridge import ModalityGraph  # noqa: E402
from bridge.datasets.demo import load_demo  # noqa: E402
from bridge.evaluate import evaluate_route, held_out  # noqa: E402
from bridge.gap import centroid_distance  # noqa: E402
from bridge.metrics import row_cosine  # noqa: E402

SRC, MID, DST = "text:en@minilm", "text:en@e5", "text:es@e5"
POSTS = ["none", "center", "procrustes", "center+procrustes"]
MLP = {"loss": "infonce+mse", "width": 512, "depth": 2, "epochs": 40, "patience": 6, "batch_size": 256}


def run(caches, post: str, seed: int) -> dict:
    set_seed(seed)
    g = ModalityGraph(seed=seed)
    for n in (SRC, MID, DST):
        g.add_node(n, caches[n])
    g.connect(SRC, MID, translator="mlp", post=None if post == "none" else post, seed=seed,
              directions="forward", **MLP)
    g.connect(MID, DST, translator="linear", alpha="auto", directions="forward")
    one = evaluate_route(g, SRC, MID, route=[SRC, MID])
    two = evaluate_route(g, SRC, DST, route=[SRC, MID, DST])
    h = held_out(g, SRC, MID)
    moved = g.translate(caches[SRC].vectors(h.q_rows), [SRC, MID])
    target = caches[MID].vectors(h.g_rows[[r[0] for r in h.relevant]])
    return {"one_hop_R@1": one["R@1"], "one_hop_cos": float(row_cosine(moved, target).mean()),
            "centroid_gap": centroid_distance(moved, target),
            "two_hop_R@1": two["R@1"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    set_threads(1)
    started = time.perf_counter()
    caches = load_demo()["caches"]
    runs = {p: [run(caches, p, s) for s in args.seeds] for p in POSTS}
    summary = {p: aggregate(r) for p, r in runs.items()}
    keys = ["one_hop_R@1", "one_hop_cos", "centroid_gap", "two_hop_R@1"]
    rows = [[p] + [f"{summary[p][k]['mean']:.3f} ± {summary[p][k]['std']:.3f}" for k in keys] for p in POSTS]
    print(f"MLP edge {SRC} -> {MID}, then ridge {MID} -> {DST}; test pairs; seeds {args.seeds}")
    print(format_table(rows, ["post-hoc"] + keys))
    out = write_result(results_dir() / "posthoc_center.json",
                       {"benchmark": "posthoc_center", "route": [SRC, MID, DST], "mlp": MLP,
                        "seeds": args.seeds, "summary": summary, "runs": runs}, started)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
