#!/usr/bin/env python
"""Calibrated route prediction: predicted against measured test R@1 for every node pair.

Two graphs:

- the demo graph (``bridge.demo.build_demo_graph`` on the shipped demo data, what
  ``bridge demo`` builds; 8 nodes, 16 edges: MLP, Procrustes and ridge);
- the Multi30K multi-hop graph of ``benchmarks/multihop.py`` (5 nodes: en@minilm, en@e5,
  de@e5, fr@e5, cs@e5; 12 edges; ``splits="prefix"``, so edges never see a val or test
  caption), once with ridge edges (``alpha="auto"``), once with centred Procrustes edges,
  and with the residual MLP when ``--kinds`` names it.

For each graph, ``graph.calibrate()`` measures validation routes (every ordered node pair
with val pairs: the edge-cost planner's 3 cheapest routes up to 4 hops, and every edge on
its own) and fits the route model on them (:mod:`bridge.calibration`). Then
``bridge.calibration.prediction_check`` runs, on the **test** pairs, every candidate route
of every ordered pair (the calibrated planner's 3 best, the edge-cost planner's 3
cheapest and its pick) and compares each route's measured test R@1 with its prediction,
calibrated and uncalibrated (``exp(-cost)``, the product of the edges' val R@1 lower bounds
less 0.05 per hop). Reported: mean absolute error over the planner's picks and over all
candidates, the share of pairs whose pick is within 0.02 R@1 of the best candidate measured
on test, and the coverage of the calibrated 95% intervals. Which features matter: the same
model refitted without each feature (``bridge.calibration.refit``, on the same val routes),
scored on the same test routes.

Command (about 10 minutes on 2 shared cores)::

    .venv/bin/python benchmarks/route_prediction.py

``--quick``: the demo graph with quick MLPs and Multi30K with 2,000 training rows per node.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

from bridge.calibration import FEATURES, prediction_check, refit  # noqa: E402
from bridge.errors import SmallSampleWarning  # noqa: E402

K, MAX_HOPS, TOL = 3, 4, 0.02


def demo_graph(quick: bool):
    from bridge.datasets.demo import load_demo
    from bridge.demo import build_demo_graph

    return build_demo_graph(load_demo(), seed=0, quick=quick)


def m30k_graph(kind: str, limit_train, seed: int = 0):
    import multihop

    args = argparse.Namespace(mlp_width=512, mlp_epochs=15, mlp_patience=3, mlp_lr=3e-4,
                              mlp_alpha=0.1)
    caches, _ = multihop.load_caches(limit_train)
    g, _ = multihop.build_graph(caches, kind, seed, args)
    return g


def ablations(g, cal, check) -> dict:
    """Test MAE over every candidate route of the model refitted without each feature
    (and with none: edge R@1 alone, the weakest edge counted in full, no fit)."""
    rows = [x for p in check["pairs"] for x in p["routes"]]
    measured = np.array([x["measured"] for x in rows])
    multi = np.array([x["hops"] > 1 for x in rows])
    out = {}
    sets = {"all": FEATURES, **{f"without {f}": tuple(x for x in FEATURES if x != f)
                                for f in FEATURES}, "none": ()}
    for name, feats in sets.items():
        c = refit(g, cal, features=feats) if feats else refit(g, cal, features=(),
                                                                 lambdas=(1.0,))
        pred = np.array([c.predict(g, x["nodes"], x["gallery"])["r1"] for x in rows])
        out[name] = {"features": list(feats), "weights": c.weights,
                     "cv_mae": c.cv.get("cv_mae"),
                     "test_mae_all": float(np.mean(np.abs(pred - measured))),
                     "test_mae_multi_hop": float(np.mean(np.abs(pred - measured)[multi]))
                     if multi.any() else None}
    return out


def run_graph(name: str, g) -> dict:
    t0 = time.perf_counter()
    cal = g.calibrate(k=K, max_hops=MAX_HOPS)
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    check = prediction_check(g, split="test", k=K, max_hops=MAX_HOPS, tolerance=TOL)
    t_check = time.perf_counter() - t0
    abl = ablations(g, cal, check)
    s = check["summary"]
    print(f"\n{name}: {len(g.nodes)} nodes, {len(g.edges)} edges; calibrated on "
          f"{len(cal.routes)} val routes ({cal.cv.get('n_multi_hop')} multi-hop) in "
          f"{t_cal:.1f}s; weights "
          + ", ".join(f"{k} {v:.3f}" for k, v in cal.weights.items())
          + f", gamma {cal.gamma:.3f}, sd_model {cal.sd_model}", flush=True)
    return {"graph": name, "nodes": list(g.nodes), "edges": [list(e) for e in g.edges],
            "calibration": cal.summary(), "cv": cal.cv, "summary": s, "pairs": check["pairs"],
            "ablations": abl, "seconds": {"calibrate": t_cal, "check": t_check}}


def fmt(x, d=3):
    return "-" if x is None else f"{x:.{d}f}"


def tables(results) -> str:
    rows = []
    for r in results:
        s = r["summary"]
        rows.append([r["graph"], s["n_pairs"], s["n_routes"],
                     fmt(s["mae_pick"]), fmt(s["uncalibrated_mae_pick"]),
                     fmt(s["mae_all"]), fmt(s["uncalibrated_mae_all"]),
                     fmt(s["mae_multi_hop"]), fmt(s["uncalibrated_mae_multi_hop"]),
                     f"{100 * s['within_tolerance']:.0f}%",
                     f"{100 * s['uncalibrated_within_tolerance']:.0f}%",
                     f"{100 * s['coverage95']:.0f}%"])
    head = ["graph", "pairs", "routes", "MAE pick", "(uncal.)", "MAE all", "(uncal.)",
            "MAE multi-hop", "(uncal.)", "pick within 0.02", "(uncal.)", "95% coverage"]
    text = ("test R@1: calibrated prediction vs the uncalibrated exp(-cost); pick = the "
            "planner's route\n" + C.format_table(rows, head))
    rows = []
    for r in results:
        for name, a in r["ablations"].items():
            rows.append([r["graph"] if name == "all" else "", name,
                         " ".join(f"{a['weights'][f]:.3f}" for f in FEATURES),
                         fmt(a["cv_mae"]), fmt(a["test_mae_all"]), fmt(a["test_mae_multi_hop"])])
    text += ("\n\nwhich features matter: the model refitted on the same val routes without "
             "each feature (weights: " + ", ".join(FEATURES) + ")\n"
             + C.format_table(rows, ["graph", "features", "weights", "val CV MAE",
                                     "test MAE all", "test MAE multi-hop"]))
    return text


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bridge.plots import plot_prediction_scatter, save_figure

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(5.3 * n, 5.4), squeeze=False)
    for ax, r in zip(axes[0], results):
        rows = [x for p in r["pairs"] for x in p["routes"]]
        plot_prediction_scatter([x["predicted"] for x in rows], [x["measured"] for x in rows],
                                sd=[x["sd"] for x in rows], hops=[x["hops"] for x in rows],
                                baseline=[x["uncalibrated"] for x in rows], ax=ax,
                                title=f"{r['graph']}: {len(rows)} test routes")
    fig.suptitle("route R@1 predicted from validation routes vs measured on test "
                 "(every candidate route of every ordered node pair)", fontsize=10)
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="demo graph with quick MLPs, Multi30K with 2,000 training rows")
    ap.add_argument("--kinds", default="linear,procrustes",
                    help="translator kinds of the Multi30K graph (linear, procrustes, mlp)")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo graph")
    ap.add_argument("--name", default=None, help="file prefix (default route_prediction[_quick])")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", SmallSampleWarning)
    started = time.perf_counter()
    C.set_threads(1)
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in ("linear", "procrustes", "mlp")]
    if bad:
        ap.error(f"unknown kind(s) {bad}; expected linear, procrustes or mlp")
    results = []
    if not args.no_demo:
        t0 = time.perf_counter()
        g = demo_graph(args.quick)
        print(f"demo graph built in {time.perf_counter() - t0:.0f}s", flush=True)
        results.append(run_graph("demo" + (" (quick)" if args.quick else ""), g))
    for kind in kinds:
        t0 = time.perf_counter()
        g = m30k_graph(kind, 2000 if args.quick else None)
        print(f"Multi30K {kind} graph built in {time.perf_counter() - t0:.0f}s", flush=True)
        results.append(run_graph(f"Multi30K {'ridge' if kind == 'linear' else kind}", g))
    text = tables(results)
    print("\n" + text)
    prefix = args.name or ("route_prediction_quick" if args.quick else "route_prediction")
    out = C.results_dir()
    plot(results, out / f"{prefix}.png")
    payload = {"benchmark": "route_prediction",
               "config": {"k": K, "max_hops": MAX_HOPS, "tolerance": TOL, "quick": args.quick,
                          "kinds": kinds, "demo": not args.no_demo,
                          "targets": {"mae": 0.05, "within_tolerance": 0.9}},
               "results": results, "table": text, "plot": f"{prefix}.png"}
    path = C.write_result(out / f"{prefix}.json", payload, started=started)
    print(f"\nwrote {path} and {out / (prefix + '.png')}")
    return payload


if __name__ == "__main__":
    main()
