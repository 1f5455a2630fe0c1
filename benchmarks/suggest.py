"""Where to add data: ``graph.suggest`` on a sparse Multi30K graph, checked by training.

Nodes (``splits="prefix"``; Multi30K's own train / val / test captions; line i of every
language is the same caption): ``M`` = en@minilm, ``E`` = en@e5 (29,000 training rows
each), ``D`` = de@e5, ``F`` = fr@e5, ``C`` = cs@e5 (10,000). The graph starts as a chain
``M - E - D - F - C`` of ridge edges (``alpha="auto"``, both directions), and is calibrated
on its validation routes (``graph.calibrate()``).

``graph.suggest()`` ranks the six missing node pairs (a new direct edge; a ridge probe
fitted on the pairs there are) and the four existing edges (twice the pairs,
extrapolated) by the mean gain in predicted R@1 over every ordered node pair (20 targets).

The check: each of the six new edges is then **trained for real** (ridge, alpha auto, all
pairs, both directions) in a copy of the graph, and the gain is **measured on test**: for
every target, ``evaluate_route(graph, src, dst, split="test")`` through the route the
calibrated planner picks, after less before (1,000 test captions, ties against us). The
report puts the top two and the bottom two suggestions side by side, with predicted and
measured gain for all six, and their Spearman rank correlation.

"More pairs" is checked the same way on a second chain whose edges are trained on pair
tables of the first 5,000 training captions: ``suggest`` extrapolates each edge to twice
the pairs, and each edge is then retrained on the first 10,000 and the test gain measured.

Run ``python benchmarks/suggest.py`` (about 2 minutes on 2 shared cores) or ``--quick``
(2,000 training rows per node).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, m30k_cache, results_dir, set_threads, write_result  # noqa: E402

M, E, D, F, CS = "text:en@minilm", "text:en@e5", "text:de@e5", "text:fr@e5", "text:cs@e5"
SHORT = {M: "M", E: "E", D: "D", F: "F", CS: "C"}
NODES = {M: ("en", "minilm"), E: ("en", "e5"), D: ("de", "e5"), F: ("fr", "e5"),
         CS: ("cs", "e5")}
CHAIN = ((M, E), (E, D), (D, F), (F, CS))


def chain_graph(limit):
    from bridge import ModalityGraph

    g = ModalityGraph(splits="prefix")
    for name, (lang, enc) in NODES.items():
        g.add_node(name, m30k_cache(lang, enc, limit))
    for a, b in CHAIN:
        g.connect(a, b, translator="linear", alpha="auto")
    return g


def table(n_train: int) -> list[tuple[str, str]]:
    """Shared-id pairs of the first ``n_train`` training captions and every val and test
    caption (``"<split>:<line>"`` ids, as :func:`m30k_cache` gives them)."""
    ids = ([f"train:{i}" for i in range(n_train)] + [f"val:{i}" for i in range(1014)]
           + [f"test:{i}" for i in range(1000)])
    return [(i, i) for i in ids]


def more_check(limit_pairs: int) -> list[dict]:
    """The ``"more"`` candidates checked: the chain's edges trained on pair tables of the
    first ``limit_pairs`` training captions; ``suggest`` extrapolates twice the pairs;
    each edge is then retrained on twice as many captions and the test gain measured."""
    from bridge import ModalityGraph

    g = ModalityGraph(splits="prefix")
    for name, (lang, enc) in NODES.items():
        g.add_node(name, m30k_cache(lang, enc))
    for a, b in CHAIN:
        g.connect(a, b, translator="linear", alpha="auto", pairs=table(limit_pairs))
    g.calibrate()
    sugg = g.suggest(candidates=list(CHAIN), more=2.0)
    before = measured(g)
    rows = []
    for s in sugg:
        h = g.copy()
        h.connect(*s.pair, translator="linear", alpha="auto", pairs=table(2 * limit_pairs))
        after = measured(h)
        gain = float(np.mean([after[k] - before[k] for k in before]))
        rows.append({"pair": list(s.pair), "label": f"{SHORT[s.pair[0]]}-{SHORT[s.pair[1]]}",
                     "rank": sugg.index(s) + 1, "predicted_gain": s.gain, "measured_gain": gain,
                     "extrapolated_val_R@1": s.edge_r1,
                     "measured_val_R@1": {f"{u} -> {v}": h.edge(u, v)["metrics"]["val_R@1"]
                                          for u, v in (s.pair, s.pair[::-1])}})
        print(f"more pairs on {rows[-1]['label']} ({limit_pairs} -> {2 * limit_pairs}): "
              f"predicted {100 * s.gain:+.2f}, measured {100 * gain:+.2f}", flush=True)
    return rows


def measured(g) -> dict:
    from bridge.evaluate import evaluate_route

    out = {}
    for s in g.nodes:
        for d in g.nodes:
            if s != d:
                out[f"{s} -> {d}"] = float(evaluate_route(g, s, d, split="test")["R@1"])
    return out


def spearman(x, y) -> float:
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    return float(np.corrcoef(rx, ry)[0, 1])


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    p = np.array([r["predicted_gain"] for r in rows])
    m = np.array([r["measured_gain"] for r in rows])
    ax.scatter(100 * p, 100 * m, color="tab:blue")
    for r in rows:
        ax.annotate(f"{r['label']} (#{r['rank']})", (100 * r["predicted_gain"],
                                                     100 * r["measured_gain"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    hi = 100 * max(p.max(), m.max()) * 1.15 + 0.5
    lo = min(0.0, 100 * min(p.min(), m.min())) - 0.5
    ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="predicted = measured")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted gain, mean R@1 of 20 routes (points, val)")
    ax.set_ylabel("measured gain on test (points)")
    ax.set_title("graph.suggest: new edges on the Multi30K chain")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 training rows per node")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    set_threads(args.threads)
    warnings.simplefilter("ignore")
    limit = 2000 if args.quick else None
    g = chain_graph(limit)
    t0 = time.perf_counter()
    g.calibrate()
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    sugg = g.suggest()
    t_sug = time.perf_counter() - t0
    print(f"calibrate {t_cal:.1f} s, suggest {t_sug:.1f} s ({len(sugg)} candidates)", flush=True)
    for i, s in enumerate(sugg, 1):
        print(f"#{i} {SHORT[s.pair[0]]}-{SHORT[s.pair[1]]} {s.kind:<4} predicted gain "
              f"{100 * s.gain:+.2f}", flush=True)
    before = measured(g)
    new = [s for s in sugg if s.kind == "edge"]
    rows = []
    for s in new:
        h = g.copy()
        h.connect(*s.pair, translator="linear", alpha="auto")
        after = measured(h)
        gains = {k: after[k] - before[k] for k in before}
        rank = sugg.index(s) + 1
        edge_rank = new.index(s) + 1
        rows.append({"pair": list(s.pair), "label": f"{SHORT[s.pair[0]]}-{SHORT[s.pair[1]]}",
                     "rank": rank, "edge_rank": edge_rank,
                     "group": ("top" if edge_rank <= 2 else "bottom" if edge_rank > len(new) - 2
                               else "middle"),
                     "predicted_gain": s.gain, "measured_gain": float(np.mean(list(gains.values()))),
                     "predicted": s.gains, "measured": gains, "edge_val_R@1": s.edge_r1})
        print(f"trained {rows[-1]['label']}: predicted {100 * s.gain:+.2f}, measured "
              f"{100 * rows[-1]['measured_gain']:+.2f}", flush=True)
    rho = spearman([r["predicted_gain"] for r in rows], [r["measured_gain"] for r in rows])
    table = [[r["label"], r["rank"], r["group"], f"{100 * r['predicted_gain']:+.2f}",
              f"{100 * r['measured_gain']:+.2f}"] for r in rows]
    print()
    print(format_table(table, ["new edge", "rank", "group", "predicted gain", "measured gain"]))
    mae = float(np.mean([abs(r["predicted_gain"] - r["measured_gain"]) for r in rows]))
    print(f"Spearman rank correlation {rho:.2f}; mean |predicted - measured| {100 * mae:.2f} points")
    more_rows = more_check(1000 if args.quick else 5000)
    more_rho = spearman([r["predicted_gain"] for r in more_rows],
                        [r["measured_gain"] for r in more_rows])
    print(f"more pairs: Spearman {more_rho:.2f}")
    out = results_dir()
    tag = "_quick" if args.quick else ""
    png = out / f"suggest{tag}.png"
    plot(rows, png)
    write_result(out / f"suggest{tag}.json", {
        "graph": {"nodes": list(NODES), "chain": [list(e) for e in CHAIN],
                  "edges": "ridge, alpha auto, both directions"},
        "calibrate_s": t_cal, "suggest_s": t_sug,
        "suggestions": [s.to_dict() for s in sugg], "before_test_R@1": before,
        "trained": rows, "spearman": rho, "mae_gain": mae, "plot": png.name,
        "more_pairs": {"pairs": 1000 if args.quick else 5000, "factor": 2.0,
                       "checked": more_rows, "spearman": more_rho}}, started)
    print(f"wrote {out / f'suggest{tag}.json'} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
