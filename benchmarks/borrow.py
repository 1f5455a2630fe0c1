"""Weak edges that borrow from the graph: a learning curve on real Czech captions (Multi30K).

Nodes (``splits="prefix"``: Multi30K's own train / val / test captions):

- ``text:en@e5``      English, multilingual-e5-small   29,000 / 1,014 / 1,000 rows
- ``text:en@minilm``  English, all-MiniLM-L6-v2         29,000 / 1,014 / 1,000
- ``text:cs@e5``      Czech, multilingual-e5-small      10,000 / 1,014 / 1,000

The graph the weak edge can borrow from: ``cs@e5 -> en@e5`` by identity (e5 is one
multilingual space) and ``en@e5 -> en@minilm``, a ridge edge trained on the 29,000 English
training captions. So Czech already reaches MiniLM through English without a single Czech
pair: the route ``cs@e5 -> en@e5 -> en@minilm``.

The weak edge is the direct ``cs@e5 -> en@minilm`` edge, trained on ``n`` Czech captions
paired with the MiniLM embedding of their English caption (``n`` = 100, 300, 1,000,
3,000, 10,000, drawn at random from the 10,000 Czech training captions with each seed),
with a validation set a quarter the size of the training set (at least 100 captions,
drawn from Multi30K's val split), through the public API:

- alone: ``graph.connect(cs, minilm, translator=kind, pairs=table)``;
- with the graph's help: the same with ``prior="route"`` (see ``bridge.borrow``):
  ridge and Procrustes are regularised toward the route (pseudo pairs: the 10,000 Czech
  training rows translated along the route, weight picked on val); the MLP starts from
  that regularised ridge (``prior_mode="start"``) or also trains on the pseudo pairs
  (``prior_mode="mix"``).

Every edge is scored on the 1,000 Multi30K test captions (``evaluate_route`` on the edge
``[cs, minilm]``: R@1 among the 1,000 MiniLM test rows, ties against us), 3 seeds. The
route alone (no Czech pairs at all) is the horizontal line to beat at small ``n``; the
lone edge at 10,000 pairs is what the graph should reach with far fewer.

Run ``python benchmarks/borrow.py`` (about 20 minutes on 2 shared cores) or ``--quick``
(1 seed, sizes 100 and 1,000, 3 MLP epochs).
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
from common import (  # noqa: E402
    fmt_stat,
    format_table,
    m30k_cache,
    mean_std,
    results_dir,
    set_seed,
    set_threads,
    write_result,
)

E, M, CS = "text:en@e5", "text:en@minilm", "text:cs@e5"
SIZES = (100, 300, 1000, 3000, 10000)
CZECH_TRAIN = 10000  # Czech e5 training rows in the shared data
N_TEST = 1000
N_VAL = 1014
#: method -> (translator, connect options); "+ graph" rows pass prior="route"
METHODS = {
    "ridge alone": ("linear", {"alpha": "auto"}),
    "ridge + graph": ("linear", {"alpha": "auto", "prior": "route"}),
    "procrustes alone": ("procrustes", {}),
    "procrustes + graph": ("procrustes", {"prior": "route"}),
    "mlp alone": ("mlp", {}),
    "mlp + graph (start)": ("mlp", {"prior": "route", "prior_mode": "start"}),
    "mlp + graph (mix)": ("mlp", {"prior": "route", "prior_mode": "mix"}),
}
SEEDED = ("mlp",)


def base_graph():
    """The graph the weak edge borrows from (see the module doc)."""
    from bridge import ModalityGraph

    g = ModalityGraph(splits="prefix")
    g.add_node(E, m30k_cache("en", "e5"))
    g.add_node(M, m30k_cache("en", "minilm"))
    g.add_node(CS, m30k_cache("cs", "e5"))
    g.connect(CS, E, translator="identity", directions="forward")
    g.connect(E, M, translator="linear", alpha="auto", directions="forward")
    return g


def pair_table(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` training captions, ``max(100, n / 4)`` val captions (seeded draws) and every
    test caption, as ``(cs id, minilm id)`` pairs (line i of both is the same caption)."""
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(CZECH_TRAIN, n, replace=False))
    val = np.sort(rng.choice(N_VAL, min(N_VAL, max(100, n // 4)), replace=False))
    ids = ([f"train:{i}" for i in train] + [f"val:{i}" for i in val]
           + [f"test:{i}" for i in range(N_TEST)])
    return [(i, i) for i in ids]


def run_edge(g, method: str, n: int, seed: int, quick: bool) -> dict:
    from bridge.evaluate import evaluate_route

    kind, opts = METHODS[method]
    opts = dict(opts)
    if kind == "mlp":
        opts.update(seed=seed, **({"epochs": 3} if quick else {}))
    h = g.copy()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h.connect(CS, M, translator=kind, pairs=pair_table(n, seed), directions="forward",
                  **opts)
    fit_s = time.perf_counter() - t0
    res = evaluate_route(h, CS, M, route=[CS, M], split="test")
    rep = h.translator(CS, M).fit_report_
    out = {"R@1": res["R@1"], "R@5": res["R@5"], "MRR": res["MRR"], "n_queries": res["n_queries"],
           "fit_s": fit_s, "val_R@1": rep.get("val_R@1")}
    if "prior" in rep:
        p = rep["prior"]
        out["prior_weight"] = p["weight"]
        out["prior_route"] = p["route"]
    return out


def plot(curves: dict, route_r1: float, sizes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {"alone": "--", "graph": "-"}
    colours = {"ridge": "tab:blue", "procrustes": "tab:green", "mlp": "tab:red"}
    for method, per_n in curves.items():
        kind = method.split()[0]
        means = np.array([per_n[str(n)]["mean"] for n in sizes])
        sds = np.array([per_n[str(n)]["std"] for n in sizes])
        ls = styles["graph" if "graph" in method else "alone"]
        marker = "s" if "mix" in method else "o"
        ax.errorbar(sizes, 100 * means, yerr=100 * sds, ls=ls, marker=marker, ms=4,
                    color=colours[kind], label=method, capsize=2,
                    alpha=0.65 if "mix" in method else 1.0)
    ax.axhline(100 * route_r1, color="k", ls=":", label="route cs→en@e5→en@minilm (0 Czech pairs)")
    ax.set_xscale("log")
    ax.set_xlabel("Czech training pairs of the edge cs@e5 → en@minilm")
    ax.set_ylabel("test R@1 (%), 1,000 captions")
    ax.set_title("A weak edge alone and with the graph's help (Multi30K, 3 seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, sizes 100 and 1000, 3 MLP epochs")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    set_threads(args.threads)
    from bridge.evaluate import evaluate_route

    sizes = (100, 1000) if args.quick else SIZES
    seeds = range(1 if args.quick else args.seeds)
    methods = list(METHODS) if not args.methods else args.methods.split(",")
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; known: {list(METHODS)}")
    g = base_graph()
    route = evaluate_route(g, CS, M, route=[CS, E, M], split="test")
    print(f"route {CS} -> {E} -> {M}: test R@1 {route['R@1']:.3f} "
          f"({route['n_queries']} queries)", flush=True)
    runs = {m: {str(n): [] for n in sizes} for m in methods}
    for n in sizes:
        for seed in seeds:
            set_seed(seed)
            for m in methods:
                r = run_edge(g, m, n, seed, args.quick)
                r["seed"] = seed
                runs[m][str(n)].append(r)
                extra = f" weight {r['prior_weight']:g}" if "prior_weight" in r else ""
                print(f"n={n:>5} seed={seed} {m:<20} R@1 {r['R@1']:.3f} "
                      f"({r['fit_s']:.1f} s){extra}", flush=True)
    curves = {m: {k: mean_std(r["R@1"] for r in v) for k, v in per.items()}
              for m, per in runs.items()}
    rows = [[m] + [fmt_stat(curves[m][str(n)]) for n in sizes] for m in methods]
    print()
    print(format_table(rows, ["test R@1 (%)"] + [f"n={n}" for n in sizes]))
    print(f"route alone (0 Czech pairs): {100 * route['R@1']:.1f}")
    out = results_dir()
    tag = "_quick" if args.quick else ""
    png = out / f"borrow_curve{tag}.png"
    plot(curves, route["R@1"], sizes, png)
    write_result(out / f"borrow{tag}.json", {
        "sizes": list(sizes), "seeds": list(seeds), "route": {
            "nodes": [CS, E, M], "R@1": route["R@1"], "R@5": route["R@5"], "MRR": route["MRR"],
            "n_queries": route["n_queries"]},
        "curves": curves, "runs": runs, "plot": png.name,
        "setup": {"val_pairs": "max(100, n // 4) from Multi30K val", "test_pairs": N_TEST,
                  "route_edges": {"cs@e5 -> en@e5": "identity",
                                  "en@e5 -> en@minilm": "ridge, alpha auto, 29,000 pairs"}},
    }, started)
    print(f"wrote {out / f'borrow{tag}.json'} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
