"""Graph synchronisation on the Multi30K multi-hop graph: do cycles close, and do routes gain?

The graph is the one ``benchmarks/multihop.py`` builds (same nodes, edges, caches and
``splits="prefix"``: edges fit on train rows, val rows pick penalties and stop training,
every figure here is on the 1,000 test_2016_flickr captions). For each edge kind it
compares three ways of running the graph:

- **before**: the graph as trained, one planned route per pair;
- **k-best**: the averaging that exists today, ``graph.translate(x, (src, dst), k=K)``
  (the K cheapest routes run and their L2-normalised outputs averaged), applied to every
  hop of a cycle and to every ordered pair;
- **after**: :func:`bridge.sync.synchronize` -- ``method="universe"`` for the closed-form
  kinds (ridge, Procrustes): one generalised-Procrustes universe, every edge the
  composition through it; ``method="cycle"`` for the MLP kind: the MLP edges fine-tuned
  together with cycle-consistency terms over the simple cycles up to ``--max-length``
  edges.

Measured with the definitions of ``benchmarks/multihop.py`` (its ``run_cycles`` and
``run_grid`` for the graphs; the same :func:`bridge.metrics.reconstruction_loss` and
:func:`bridge.metrics.paired_retrieval` for k-best, checked to agree with ``run_cycles`` at
K=1): reconstruction loss ``1 - cos(x, x_back)`` and cycle R@1 of the closed cycles, and
test R@1 (gallery 1,000) of every ordered node pair, its mean, and the pairs that got worse.

Run ``python benchmarks/sync.py`` (closed-form kinds on all rows, MLP on
``--mlp-limit-train`` training rows per node); ``--quick`` is a smoke run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads BLAS: the box has 2 shared cores

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import multihop  # noqa: E402
from common import format_table, results_dir, set_threads, write_result  # noqa: E402

KINDS = ("linear", "procrustes", "mlp")
LABEL = multihop.LABEL
METHOD = {"linear": "universe", "procrustes": "universe", "mlp": "cycle"}
SHOWN_CYCLES = ("E→D→E", "M→E→M", "D→F→D", "triangle E→D→F→E", "triangle E→F→C→E",
                "4-cycle E→D→F→C→E", "grand tour M→E→D→F→C→E→M", "(E→D→F→E)×2")


def kbest_cycles(graph, caches, k: int) -> dict:
    """Every closed cycle of ``multihop.CYCLES`` with each hop run as the average of the
    ``k`` cheapest routes between its ends (``graph.translate(..., k=k)``)."""
    from bridge.metrics import paired_retrieval, reconstruction_loss

    out = {}
    for name, nodes in multihop.CYCLES.items():
        c0 = caches[nodes[0]]
        rows = multihop.test_rows(c0)
        x0 = c0.vectors(rows)
        z = x0
        for u, v in zip(nodes[:-1], nodes[1:]):
            z = graph.translate(z, (u, v), k=k)
        rec = reconstruction_loss(x0, z)
        out[name] = {"hops": len(nodes) - 1, "loss_mean": rec["mean"],
                     "loss_median": rec["median"],
                     "cycle_R@1": paired_retrieval(z, x0, c0.ids[rows])["R@1"]}
    return out


def kbest_grid(graph, caches, k: int) -> dict:
    """Every ordered pair: the ``k`` cheapest routes averaged (``multihop.route_scores``'s
    retrieval of the same captions among the 1,000 test rows of the target)."""
    from bridge.metrics import row_cosine
    from bridge.retrieval import retrieval_metrics

    out = {}
    for s in multihop.NODES:
        for d in multihop.NODES:
            if s == d:
                continue
            x = caches[s].vectors(multihop.test_rows(caches[s]))
            y = caches[d].vectors(multihop.test_rows(caches[d]))
            pred = graph.translate(x, (s, d), k=k)
            m = retrieval_metrics(pred, y, ks=(1, 5, 10))
            routes = graph.route(s, d, k=k)
            routes = routes if isinstance(routes, list) else [routes]
            out[f"{multihop.SHORT[s]}→{multihop.SHORT[d]}"] = {
                "routes": [multihop.walk_str(r.nodes) for r in routes],
                **{key: m[key] for key in ("R@1", "R@5", "R@10", "MRR")},
                "cos": float(row_cosine(pred, y).mean())}
    return out


def strip_cycles(cycles: dict) -> dict:
    return {n: {k: c[k] for k in ("hops", "loss_mean", "loss_median", "cycle_R@1")}
            for n, c in cycles.items()}


def strip_grid(grid: dict) -> dict:
    keep = ("route", "routes", "R@1", "R@5", "MRR", "cos", "predicted_R@1")
    return {p: {k: v for k, v in g.items() if k in keep} for p, g in grid.items()}


def compare_grids(before: dict, other: dict) -> dict:
    """Mean R@1 of both, and the pairs whose R@1 fell (with the change)."""
    delta = {p: other[p]["R@1"] - before[p]["R@1"] for p in before}
    worse = {p: round(d, 4) for p, d in sorted(delta.items(), key=lambda kv: kv[1]) if d < 0}
    return {"mean_R@1_before": float(np.mean([g["R@1"] for g in before.values()])),
            "mean_R@1": float(np.mean([g["R@1"] for g in other.values()])),
            "mean_change": float(np.mean(list(delta.values()))),
            "n_better": int(sum(d > 0 for d in delta.values())),
            "n_worse": len(worse), "worse": worse}


def sync_graph(graph, kind: str, args):
    """The synchronised graph and what the synchronisation chose."""
    from bridge.sync import fit_universe, synchronize

    if METHOD[kind] == "universe":
        uni = fit_universe(graph)  # what synchronize(graph, "universe") runs, kept for its report
        after = uni.apply(graph)
        rep = {k: uni.report[k] for k in ("variant", "iterations", "converged", "residual",
                                          "universe_dim", "n_points", "val_R@1", "val_cos",
                                          "variants", "node_maps")}
        rep["variant"] = uni.variant
        return after, rep
    after = synchronize(graph, "cycle", max_length=args.max_length, weights=args.cycle_weights,
                        epochs=args.cycle_epochs, batch_size=args.cycle_batch,
                        lr=args.cycle_lr, patience=args.cycle_patience,
                        steps_per_epoch=args.steps_per_epoch,
                        cycles_per_step=args.cycles_per_step, seed=0)
    rep = dict(after.translator(*after.edges[0]).fit_report_["sync"])
    return after, rep


def run_kind(kind: str, caches, args) -> dict:
    t0 = time.perf_counter()
    g, _ = multihop.build_graph(caches, kind, 0, args)
    t_build = time.perf_counter() - t0
    before = {"cycles": strip_cycles(multihop.run_cycles(g, caches, {})),
              "grid": strip_grid(multihop.run_grid(g, caches)),
              "edges": {f"{multihop.SHORT[s]}→{multihop.SHORT[d]}": g.edge(s, d)["metrics"]
                        for s, d in g.edges}}
    # the k-best measurement reproduces run_cycles at k=1 (one definition of the figures)
    k1 = kbest_cycles(g, caches, 1)
    for name, c in k1.items():
        for key in ("loss_mean", "cycle_R@1"):
            if abs(c[key] - before["cycles"][name][key]) > 1e-4:
                raise AssertionError(f"k-best at k=1 disagrees with run_cycles on {name} {key}: "
                                     f"{c[key]} vs {before['cycles'][name][key]}")
    kbest = {"cycles": kbest_cycles(g, caches, args.k), "grid": kbest_grid(g, caches, args.k)}
    t1 = time.perf_counter()
    after_g, sync_report = sync_graph(g, kind, args)
    t_sync = time.perf_counter() - t1
    after = {"cycles": strip_cycles(multihop.run_cycles(after_g, caches, {})),
             "grid": strip_grid(multihop.run_grid(after_g, caches)),
             "edges": {f"{multihop.SHORT[s]}→{multihop.SHORT[d]}": after_g.edge(s, d)["metrics"]
                       for s, d in after_g.edges}}
    return {"kind": kind, "method": METHOD[kind], "before": before, "kbest": kbest,
            "after": after, "sync": sync_report,
            "grid_vs_before": {"kbest": compare_grids(before["grid"], kbest["grid"]),
                               "after": compare_grids(before["grid"], after["grid"])},
            "seconds": {"build": t_build, "sync": t_sync,
                        "total": time.perf_counter() - t0}}


def tables(results: dict, k: int) -> dict:
    out = {}
    rows = []
    for kind, r in results.items():
        for i, name in enumerate(SHOWN_CYCLES):
            b, kb, a = (r[x]["cycles"][name] for x in ("before", "kbest", "after"))
            rows.append([f"{LABEL[kind]} ({r['method']})" if i == 0 else "", name, b["hops"],
                         f"{b['loss_mean']:.4f}", f"{kb['loss_mean']:.4f}", f"{a['loss_mean']:.4f}",
                         f"{b['cycle_R@1']:.3f}", f"{kb['cycle_R@1']:.3f}", f"{a['cycle_R@1']:.3f}"])
    out["cycles"] = (f"closed cycles over the 1,000 test captions: 1-cos(x, x_back) mean and "
                     f"cycle R@1 (start among 1,000); k-best = each hop the mean of the {k} "
                     "cheapest routes; after = synchronised graph; " + multihop.LEGEND,
                     format_table(rows, ["kind", "cycle", "hops", "1-cos before", f"k={k}",
                                         "after", "cR@1 before", f"k={k}", "after"]))
    rows = []
    for kind, r in results.items():
        pairs = list(r["before"]["grid"])
        for i, p in enumerate(pairs):
            b, kb, a = (r[x]["grid"][p] for x in ("before", "kbest", "after"))
            rows.append([f"{LABEL[kind]}" if i == 0 else "", p, b["route"], f"{b['R@1']:.3f}",
                         f"{kb['R@1']:.3f}", f"{a['R@1']:.3f}", a["route"],
                         f"{a['R@1'] - b['R@1']:+.3f}"])
        gv = r["grid_vs_before"]
        rows.append(["", "mean", "", f"{gv['after']['mean_R@1_before']:.3f}",
                     f"{gv['kbest']['mean_R@1']:.3f}", f"{gv['after']['mean_R@1']:.3f}", "",
                     f"{gv['after']['mean_change']:+.3f}"])
    out["grid"] = (f"node x node test R@1 (gallery 1,000): before (planned route), k={k} "
                   "cheapest routes averaged, after synchronisation (planned route on the new "
                   "graph); " + multihop.LEGEND,
                   format_table(rows, ["kind", "pair", "route before", "R@1 before", f"k={k}",
                                       "after", "route after", "after - before"]))
    rows = []
    for kind, r in results.items():
        for which in ("kbest", "after"):
            gv = r["grid_vs_before"][which]
            rows.append([LABEL[kind], which if which == "after" else f"k={k}",
                         f"{gv['mean_R@1_before']:.3f}", f"{gv['mean_R@1']:.3f}",
                         f"{gv['mean_change']:+.4f}", gv["n_better"], gv["n_worse"],
                         ", ".join(f"{p} {d:+.3f}" for p, d in gv["worse"].items()) or "-"])
    out["summary"] = ("every ordered pair (20): mean test R@1 against before, pairs better and "
                      "worse, and the pairs that got worse",
                      format_table(rows, ["kind", "vs before", "mean before", "mean", "change",
                                          "better", "worse", "worse pairs"]))
    return out


def plot(results: dict, k: int, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bridge.plots import save_figure

    kinds = list(results)
    fig, axes = plt.subplots(2, len(kinds), figsize=(6.5 * len(kinds), 9), squeeze=False)
    colours = {"before": "tab:grey", "kbest": "tab:blue", "after": "tab:orange"}
    names = {"before": "before", "kbest": f"k={k} routes averaged", "after": "synchronised"}
    for col, kind in enumerate(kinds):
        r = results[kind]
        cyc = list(multihop.CYCLES)
        x = np.arange(len(cyc))
        ax = axes[0, col]
        for j, which in enumerate(("before", "kbest", "after")):
            vals = [max(r[which]["cycles"][c]["loss_mean"], 1e-9) for c in cyc]
            ax.bar(x + (j - 1) * 0.27, vals, 0.27, color=colours[which], label=names[which])
        ax.set_yscale("log")
        ax.set_xticks(x, [multihop.walk_str(multihop.CYCLES[c]) for c in cyc], rotation=75,
                      fontsize=7)
        ax.set_ylabel("1 − cos(x, x_back), test mean (log)")
        ax.set_title(f"{LABEL[kind]} → {r['method']}: cycle reconstruction loss")
        ax.legend(fontsize=8)
        ax = axes[1, col]
        pairs = list(r["before"]["grid"])
        x = np.arange(len(pairs))
        for j, which in enumerate(("before", "kbest", "after")):
            ax.bar(x + (j - 1) * 0.27, [r[which]["grid"][p]["R@1"] for p in pairs], 0.27,
                   color=colours[which], label=names[which])
        ax.set_xticks(x, pairs, rotation=75, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("test R@1 (gallery 1,000)")
        ax.set_title(f"{LABEL[kind]}: every ordered pair")
    fig.suptitle("Multi30K test_2016_flickr; " + multihop.LEGEND, fontsize=10)
    save_figure(fig, path)
    plt.close(fig)
    return str(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2,000 training rows per node, 1 MLP epoch, 1 cycle epoch")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--k", type=int, default=3, help="routes averaged by the k-best baseline")
    ap.add_argument("--limit-train", type=int, default=None,
                    help="training rows per node for the closed-form kinds (default all)")
    ap.add_argument("--mlp-limit-train", type=int, default=5000,
                    help="training rows per node for the MLP graph")
    ap.add_argument("--mlp-epochs", type=int, default=5)
    ap.add_argument("--mlp-patience", type=int, default=3)
    ap.add_argument("--mlp-width", type=int, default=512)
    ap.add_argument("--mlp-lr", type=float, default=3e-4)
    ap.add_argument("--mlp-alpha", type=float, default=0.1)
    ap.add_argument("--max-length", type=int, default=4, help="longest cycle (edges) to close")
    ap.add_argument("--cycle-weights", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    ap.add_argument("--cycle-epochs", type=int, default=3)
    ap.add_argument("--cycle-batch", type=int, default=256)
    ap.add_argument("--cycle-lr", type=float, default=1e-5)
    ap.add_argument("--cycle-patience", type=int, default=2)
    ap.add_argument("--steps-per-epoch", type=int, default=20)
    ap.add_argument("--cycles-per-step", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results")
    ap.add_argument("--name", default=None, help="file prefix (default sync[_quick])")
    args = ap.parse_args(argv)
    if args.quick:
        args.limit_train = args.limit_train or 2000
        args.mlp_limit_train = min(args.mlp_limit_train, 2000)
        args.mlp_epochs, args.cycle_epochs, args.steps_per_epoch = 1, 1, 5
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        ap.error(f"unknown kind(s) {bad}; expected some of {KINDS}")
    started = time.perf_counter()
    set_threads(args.threads)
    out = args.out or results_dir()
    out.mkdir(parents=True, exist_ok=True)
    prefix = args.name or ("sync_quick" if args.quick else "sync")
    results, sizes = {}, {}
    for kind in kinds:
        limit = args.mlp_limit_train if kind == "mlp" else args.limit_train
        caches, sizes[kind] = multihop.load_caches(limit)
        r = run_kind(kind, caches, args)
        results[kind] = r
        gv = r["grid_vs_before"]
        print(f"{LABEL[kind]:10s} {r['method']}: {r['seconds']['total']:6.1f}s (sync "
              f"{r['seconds']['sync']:.1f}s); mean pair R@1 {gv['after']['mean_R@1_before']:.3f} "
              f"-> k={args.k} {gv['kbest']['mean_R@1']:.3f}, after {gv['after']['mean_R@1']:.3f}",
              flush=True)
    tabs = tables(results, args.k)
    for title, text in tabs.values():
        print(f"\n{title}\n{text}")
    png = plot(results, args.k, out / f"{prefix}.png")
    payload = {
        "benchmark": "sync",
        "data": {"dataset": "Multi30K task 1 (train / val / test_2016_flickr)",
                 "rows": sizes, "graph": "benchmarks/multihop.py build_graph (seed 0)",
                 "splits": "edges trained with splits='prefix'; synchronisation fits on train "
                           "rows, chooses on val rows; every figure on the 1,000 test captions"},
        "config": {"kinds": kinds, "methods": {k: METHOD[k] for k in kinds}, "k": args.k,
                   "limit_train": args.limit_train, "mlp_limit_train": args.mlp_limit_train,
                   "translator_options": {k: multihop.translator_options(k, 0, args)
                                          for k in kinds},
                   "cycle": {"max_length": args.max_length, "weights": args.cycle_weights,
                             "epochs": args.cycle_epochs, "batch_size": args.cycle_batch,
                             "lr": args.cycle_lr, "patience": args.cycle_patience,
                             "steps_per_epoch": args.steps_per_epoch,
                             "cycles_per_step": args.cycles_per_step},
                   "quick": args.quick, "seeds": "one run per kind (closed forms are "
                                                 "deterministic; the MLP is seed 0 only)"},
        "results": results,
        "tables": {k: {"title": t, "text": x} for k, (t, x) in tabs.items()},
        "plots": [Path(png).name],
    }
    path = write_result(out / f"{prefix}.json", payload, started=started)
    print(f"\nwrote {path}, {png} in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
