"""``bridge demo``: the whole pipeline on the shipped demo data, written as a report.

Builds a graph over the demo nodes (text in four languages through two encoders, spoken
numbers, digit images), calibrates its route model on validation routes
(:meth:`~bridge.graph.ModalityGraph.calibrate`), plans routes, runs the retrieval,
reconstruction and gap benchmarks on held-out pairs, sets every planned route's predicted
R@1 against the R@1 measured on test, and writes ``report.json``, PNG plots and
``index.html``.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import numpy as np

from .errors import UnknownNode

__all__ = ["run_demo", "build_demo_graph", "closed_walks", "quality_graph", "DEMO_EDGES"]

#: (src, dst, translator, options) of the demo graph; every edge is trained both ways.
#: MLP edges carry a post-hoc mean shift: contrastive training leaves their outputs off the
#: target node's centroid, which barely changes retrieval at that node but throws the next
#: hop of a composed route off its training distribution.
DEMO_EDGES = [
    ("text:en@minilm", "text:en@e5", "mlp", {"loss": "infonce+mse", "post": "center"}),
    ("text:de@e5", "text:en@e5", "procrustes", {}),
    ("text:fr@e5", "text:en@e5", "procrustes", {}),
    ("text:es@e5", "text:en@e5", "linear", {"alpha": "auto"}),
    ("text:de@e5", "text:en@minilm", "linear", {"alpha": "auto"}),
    ("audio:en@aisfx", "text:en@e5", "mlp", {"loss": "infonce+mse", "post": "center"}),
    ("audio:de@aisfx", "text:de@e5", "mlp", {"loss": "infonce+mse", "post": "center"}),
    ("image@pixels", "text:en@e5", "mlp", {"loss": "infonce", "post": "center"}),
]

ROUTES = [
    ("audio:de@aisfx", "text:en@minilm"),
    ("image@pixels", "text:fr@e5"),
    ("text:es@e5", "audio:en@aisfx"),
    ("text:fr@e5", "text:en@minilm"),
]


def _log(msg, t0):
    print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)


def build_demo_graph(demo: dict, seed: int = 0, quick: bool = False, log=None):
    """The demo graph: nodes from the shipped caches, edges from :data:`DEMO_EDGES`."""
    from .graph import ModalityGraph

    g = ModalityGraph(seed=seed)
    for name, cache in demo["caches"].items():
        g.add_node(name, cache)
    mlp = {"width": 512, "depth": 2, "epochs": 6 if quick else 40, "patience": 6,
           "batch_size": 256, "seed": seed}
    for a, b, kind, opts in DEMO_EDGES:
        params = {**(mlp if kind == "mlp" else {}), **opts}
        table = _table(demo, a, b)
        g.connect(a, b, translator=kind, pairs=table, **params)
        if log:
            ab, ba = g.edge(a, b)["metrics"], g.edge(b, a)["metrics"]
            log(f"edge {a} <-> {b} [{kind}]: test R@1 {ab.get('test_R@1', np.nan):.3f} / "
                f"{ba.get('test_R@1', np.nan):.3f}")
    return g


def _table(demo, a, b):
    t = demo["pair_tables"]
    if (a, b) in t:
        return t[(a, b)]
    if (b, a) in t:
        return [(y, x) for x, y in t[(b, a)]]
    return None


def closed_walks(g, start: str, max_hops: int = 6, nodes=None, beam: int = 5000) -> list[list[str]]:
    """Closed walks from ``start``, one per length (2 to ``max_hops`` hops).

    For each length the walk through the most distinct nodes is kept, the cheapest among
    those. (A Procrustes edge and its reverse, fitted on the same pairs, are exact
    inverses, so the cheapest walk of a length would often bounce along one such edge and
    show no loss at all.) Walks are grown one hop at a time, keeping the ``beam`` best
    partial walks by the same order, so large graphs stay cheap. ``nodes`` limits the
    walks to those nodes (for instance the nodes with instance-level pairs).
    """
    from .planner import route_cost

    allowed = set(nodes or g.nodes)
    if start not in allowed:
        raise UnknownNode(start, sorted(allowed))
    G = g.G.subgraph(allowed)
    order = lambda w: (-len(set(w)), route_cost(G, w)[0], w)  # noqa: E731
    frontier: list[tuple[str, ...]] = [(start,)]
    walks = {}
    for hops in range(1, max_hops + 1):
        grown = [w + (v,) for w in frontier for v in sorted(G.successors(w[-1]))]
        closed = [w for w in grown if w[-1] == start]
        if closed and hops >= 2:
            walks[hops] = list(min(closed, key=order))
        frontier = sorted(grown, key=order)[:beam]
    return [walks[k] for k in sorted(walks)]


def quality_graph(g):
    """A networkx view of ``g`` for :func:`bridge.plots.plot_graph`: nodes with their
    modality, edges with ``r1``, the test R@1 (the val R@1 where no test rows were scored)."""
    import networkx as nx

    H = nx.DiGraph()
    for n, d in g.G.nodes(data=True):
        H.add_node(n, modality=d.get("modality"))
    for u, v, d in g.G.edges(data=True):
        H.add_edge(u, v, r1=d["metrics"].get("test_R@1", d["metrics"].get("val_R@1")))
    return H


def run_demo(out="bridge-report", seed: int = 0, quick: bool = False, plots: bool = True) -> dict:
    """Run the demo and write the report folder; returns the report dict."""
    from .datasets.demo import load_demo
    from .evaluate import evaluate_route, r1_matrix
    from .gap import gap_report
    from .files import atomic_dir, dumps_json
    from .translators import PostHocTranslator

    t0 = time.perf_counter()
    log = lambda m: _log(m, t0)  # noqa: E731
    demo = load_demo()
    log(f"loaded demo data: {len(demo['caches'])} nodes, "
        f"{sum(len(c) for c in demo['caches'].values())} rows")
    g = build_demo_graph(demo, seed=seed, quick=quick, log=log)
    t_cal = time.perf_counter()
    cal = g.calibrate()
    t_cal = time.perf_counter() - t_cal
    log(f"route model calibrated on {len(cal.routes)} validation routes in {t_cal:.1f}s: "
        + ", ".join(f"{k} {v:.3f}" for k, v in cal.weights.items()))
    report: dict = {"seed": seed, "quick": quick, "graph": g.summary()}
    tables = {(a, b): t for (a, b), t in demo["pair_tables"].items()}

    # planned routes and retrieval through them
    routes = []
    for a, b in ROUTES:
        planned = g.route(a, b, k=3)
        m = evaluate_route(g, a, b, pairs=_table(demo, a, b))
        routes.append({"src": a, "dst": b, "k_best": [r.to_dict() for r in planned],
                       "metrics": {k: v for k, v in m.items() if k != "routes"}})
        log(f"route {planned[0]}: test R@1 {m['R@1']:.3f} (n={m['n_queries']})")
    report["routes"] = routes

    # a composed route against the direct edge between the same nodes
    a, b = "text:de@e5", "text:en@minilm"
    direct = evaluate_route(g, a, b, route=[a, b])
    composed = evaluate_route(g, a, b, route=[a, "text:en@e5", b])
    report["composed_vs_direct"] = {"direct": direct, "composed": composed}
    log(f"{a} -> {b}: direct R@1 {direct['R@1']:.3f}, via text:en@e5 {composed['R@1']:.3f}")

    # R@1 of every node pair through its planned route
    names, M = r1_matrix(g, pair_tables=tables)
    report["r1_matrix"] = {"nodes": names, "R@1": M.tolist()}
    log(f"R@1 grid over {len(names)} nodes: mean {np.nanmean(M):.3f}")
    report["prediction"] = _predictions(g, names, M)
    report["prediction"]["calibrate_seconds"] = t_cal
    ps = report["prediction"]["summary"]
    log(f"predicted vs measured test R@1 of {ps['n_routes']} planned routes: MAE "
        f"{ps['mae']:.3f} (uncalibrated exp(-cost): {ps['uncalibrated_mae']:.3f})")

    # reconstruction loss against the number of hops
    walks = closed_walks(g, "text:de@e5", nodes=[n for n in g.nodes if n.startswith("text")])
    hop_reps = [g.walk(w) for w in walks]
    report["hops"] = [{**{k: v for k, v in r.items() if k != "loss_per_sample"},
                       "hops_count": len(w) - 1} for w, r in zip(walks, hop_reps)]
    for w, r in zip(walks, hop_reps):
        log(f"{len(w) - 1} hops: 1-cos mean {r['loss_mean']:.4f}, cycle R@1 {r['cycle_R@1']:.3f}")

    # gaps, and what post-hoc alignment changes on the audio -> text edge
    report["gap"], report["post_hoc"], views = _gaps_and_post_hoc(g, gap_report, PostHocTranslator)
    log("gap metrics: " + ", ".join(f"{r['pair']}: centroid {r.get('centroid_distance', np.nan):.3f}"
                                     for r in report["gap"]))
    for row in report["post_hoc"]:
        log(f"post-hoc {row['steps']}: R@1 {row['R@1']:.3f}, centroid gap {row['centroid_distance']:.3f}")

    out = Path(out)
    with atomic_dir(out) as tmp:
        figs = _plots(g, report, views, hop_reps, walks, tmp) if plots else []
        report["figures"] = figs
        report["seconds"] = time.perf_counter() - t0
        (tmp / "report.json").write_text(dumps_json(report))
        (tmp / "index.html").write_text(_html(report))
        g.save(tmp / "graph")
    log(f"report written to {out}/ (index.html, report.json, {len(figs)} plots, graph/)")
    return report


def _predictions(g, names, M) -> dict:
    """Every planned route's predicted R@1 (calibrated, at the pair's test gallery, and the
    edge costs' ``exp(-cost)``) beside its R@1 measured on test (the R@1 grid)."""
    from .planner import route_cost

    rows = []
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i == j or not np.isfinite(M[i, j]):
                continue
            r = g.route(a, b)
            rows.append({"src": a, "dst": b, "route": list(r.nodes), "hops": r.hops,
                         "measured": float(M[i, j]), "predicted": r.predicted_r1,
                         "sd": r.predicted_sd, "gallery": r.gallery,
                         "uncalibrated": float(np.exp(-route_cost(g.G, r.nodes)[0]))})
    err = [abs(x["predicted"] - x["measured"]) for x in rows]
    old = [abs(x["uncalibrated"] - x["measured"]) for x in rows]
    inside = [e <= 1.96 * x["sd"] for e, x in zip(err, rows)]
    summary = {"n_routes": len(rows), "mae": float(np.mean(err)) if rows else None,
               "uncalibrated_mae": float(np.mean(old)) if rows else None,
               "coverage95": float(np.mean(inside)) if rows else None,
               "calibration": g.calibration.summary()}
    return {"routes": rows, "summary": summary}


def _gaps_and_post_hoc(g, gap_report, PostHocTranslator):
    """Gap rows (language and modality gaps, before and after translation) and the
    post-hoc alignment table for the audio -> text edge."""
    from .metrics import paired_retrieval

    ref = "text:en@e5"
    common = _common_test_ids(g, ["text:en@e5", "text:de@e5", "text:fr@e5", "text:en@minilm"])
    cref = g.cache(ref)
    y = cref.vectors(cref.rows(common))
    views = {"before": {}, "after": {}}
    rows = []
    for n in ("text:de@e5", "text:fr@e5", "text:en@minilm"):
        c = g.cache(n)
        x = c.vectors(c.rows(common))
        views["before"][n] = x
        views["after"][f"{n} -> {ref}"] = g.translate(x, (n, ref))
        rows.append({"pair": f"{n} vs {ref}", **gap_report(x, y, k=10, seed=g.seed)})
        rows.append({"pair": f"{n} -> {ref} vs {ref}",
                     **gap_report(views["after"][f"{n} -> {ref}"], y, k=10, seed=g.seed)})
    views["before"][ref] = y
    views["after"][ref] = y

    # audio -> text: the trained edge, then with post-hoc alignment fitted on its train pairs
    a = "audio:en@aisfx"
    P = g.pairs(a, ref)
    idx = g.split(P)
    T = g.translator(a, ref)
    T = T.base if isinstance(T, PostHocTranslator) else T  # compare against the bare edge
    ca = g.cache(a)
    Xtr, Ytr = ca.vectors(P.a_rows[idx["train"]]), cref.vectors(P.b_rows[idx["train"]])
    Xte, Yte = ca.vectors(P.a_rows[idx["test"]]), cref.vectors(P.b_rows[idx["test"]])
    labels = P.b_rows[idx["test"]]
    post = []
    for steps in ("none", "center", "procrustes", "center+procrustes"):
        U = T if steps == "none" else PostHocTranslator(T, steps).fit(Xtr, Ytr)
        pred = U.transform(Xte)
        m = paired_retrieval(pred, Yte, labels)
        gr = gap_report(pred, Yte, k=10, seed=g.seed)
        post.append({"edge": f"{a} -> {ref}", "steps": steps, "R@1": m["R@1"], "cos": m["cos"],
                     **{k: gr[k] for k in ("centroid_distance", "linear_separability",
                                           "linear_cka", "mutual_knn") if k in gr}})
        if steps == "none":
            rows.append({"pair": f"{a} -> {ref} vs {ref}", **gr})
    return rows, post, views


def _common_test_ids(g, nodes, limit=400):
    common = None
    for n in nodes:
        ids = set(g.cache(n).ids[g.test_rows(n)])
        common = ids if common is None else common & ids
    return sorted(common)[:limit]


def _plots(g, report, views, hop_reps, walks, folder: Path) -> list[str]:
    import matplotlib.pyplot as plt  # the user's backend; without a display matplotlib uses Agg

    from . import plots

    files = []

    def save(obj, name):
        plots.save_figure(obj, folder / name)
        plt.close("all")
        files.append(name)

    save(plots.plot_graph(quality_graph(g), weight="r1",
                          title="demo graph: edges coloured by held-out R@1"), "graph.png")
    rm = report["r1_matrix"]
    save(plots.plot_r1_heatmap(rm["nodes"], np.array(rm["R@1"]),
                               title="R@1 through planned routes (test pairs; rows: query node)"),
         "r1_heatmap.png")
    save(plots.plot_hops([len(w) - 1 for w in walks], [r["loss_per_sample"] for r in hop_reps],
                         title="reconstruction loss around closed walks from text:de@e5"),
         "hops.png")
    pred = report["prediction"]["routes"]
    if pred:
        save(plots.plot_prediction_scatter(
            [x["predicted"] for x in pred], [x["measured"] for x in pred],
            sd=[x["sd"] for x in pred], hops=[x["hops"] for x in pred],
            baseline=[x["uncalibrated"] for x in pred],
            title="planned routes: predicted (from val routes) vs measured test R@1"),
            "prediction.png")
    save(plots.plot_gap_bars([r for r in report["gap"] if "centroid_distance" in r]), "gap_bars.png")
    first = list(views["before"])[0]
    before_pairs = [(first, n) for n in list(views["before"])[1:]]
    after_names = list(views["after"])
    after_pairs = [(after_names[-1], n) for n in after_names[:-1]]
    fig = plots.plot_projection_before_after(views["before"], views["after"],
                                             pairs_before=before_pairs, pairs_after=after_pairs,
                                             titles=("before: each node in its own space",
                                                     "after: translated into text:en@e5"))
    save(fig, "projection.png")
    return files


def _html(report: dict) -> str:
    esc = html.escape

    def table(rows, cols):
        head = "".join(f"<th>{esc(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    edges = [{"edge": f"{e['src']} → {e['dst']}", "kind": e["kind"], "cost": e["cost"],
              **{k: e["metrics"].get(k) for k in ("val_R@1", "val_R@1_lcb", "n_val", "test_R@1", "test_cos", "n_train",
                                               "n_test")}}
             for e in report["graph"]["edges"]]
    routes = [{"route": " → ".join(r["k_best"][0]["nodes"]), "predicted cost": r["k_best"][0]["cost"],
               "predicted R@1": r["k_best"][0].get("predicted_R@1"),
               "± sd": r["k_best"][0].get("predicted_sd"),
               **{k: r["metrics"].get(k) for k in ("R@1", "R@5", "R@10", "MRR", "mAP", "n_queries")}}
              for r in report["routes"]]
    pred = report["prediction"]
    ps, cal = pred["summary"], pred["summary"]["calibration"]
    pred_rows = [{"src": x["src"], "dst": x["dst"], "route": " → ".join(x["route"]),
                  "predicted R@1": x["predicted"], "± sd": x["sd"], "gallery": x["gallery"],
                  "measured R@1": x["measured"], "exp(-cost)": x["uncalibrated"]}
                 for x in pred["routes"]]
    weights = ", ".join(f"{k} {v:.3f}" for k, v in cal["weights"].items())
    hops = [{"hops": h["hops_count"], "walk": " → ".join(h["nodes"]), "1-cos mean": h["loss_mean"],
             "1-cos median": h["loss_median"], "cycle R@1": h["cycle_R@1"]} for h in report["hops"]]
    cvd = report["composed_vs_direct"]
    comp = [{"route": " → ".join(cvd[k]["routes"][0]["nodes"]), "R@1": cvd[k]["R@1"],
             "R@5": cvd[k].get("R@5"), "MRR": cvd[k].get("MRR")} for k in ("direct", "composed")]
    gap_cols = ["pair", "centroid_distance", "linear_separability", "linear_cka", "mutual_knn", "alignment"]
    post_cols = ["edge", "steps", "R@1", "cos", "centroid_distance", "linear_separability", "linear_cka"]
    imgs = "".join(f'<figure><img src="{f}" alt="{f}"><figcaption>{f}</figcaption></figure>'
                   for f in report.get("figures", []))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>modality-bridge demo report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
img{{max-width:100%}}figure{{margin:1em 0}}</style></head><body>
<h1>modality-bridge demo report</h1>
<p>Seed {report['seed']}{' (quick run)' if report['quick'] else ''}; {len(report['graph']['nodes'])} nodes,
{len(report['graph']['edges'])} edges; ran in {report.get('seconds', 0):.1f} s. All figures are on held-out
(test) pairs; edge costs come from validation R@1, through its 95% lower confidence bound at the number
of validation pairs (<code>val_R@1_lcb</code>), so an edge scored on few pairs costs more.</p>
<h2>Edges</h2>{table(edges, list(edges[0]))}
<h2>Planned routes and retrieval</h2>{table(routes, list(routes[0]))}
<h2>Route prediction</h2>
<p>The graph's route model was fitted on {cal['n_routes']} validation routes
({cal['n_multi_hop']} with more than one hop; weights {esc(weights)}, gallery exponent
{cal['gamma']:.3f}) in {pred.get('calibrate_seconds', 0):.1f} s. On the test pairs, the
planned routes' predicted R@1 is off the measured R@1 by {_fmt(ps['mae'])} on average
(mean absolute error over {ps['n_routes']} routes), against {_fmt(ps['uncalibrated_mae'])}
for the edge costs' <code>exp(-cost)</code>; {_fmt(ps['coverage95'])} of the measurements
fall inside the 95% interval. The smallest test gallery holds {min((x['gallery'] for x in pred['routes']), default=0)}
items: on so few, one measurement of R@1 is a noisy figure. See <code>prediction.png</code>.</p>
{table(pred_rows, list(pred_rows[0])) if pred_rows else ''}
<h2>Composed route against the direct edge</h2>{table(comp, list(comp[0]))}
<h2>Reconstruction around closed walks</h2>
<p>Per length, the walk through the most distinct nodes. A Procrustes edge and its reverse,
fitted on the same pairs, are exact inverses (orthogonal map, reciprocal scale), so legs
that go out and back along Procrustes edges add no loss; the loss comes from the linear
and MLP edges a walk crosses.</p>{table(hops, list(hops[0]))}
<h2>Gaps</h2>{table(report['gap'], gap_cols)}
<h2>Post-hoc alignment</h2>{table(report['post_hoc'], post_cols)}
<h2>Plots</h2>{imgs}
</body></html>
"""


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))
