"""Evaluation of a graph on its held-out pairs: routes, fused routes, R@1 grids, hops.

Held-out pairs between two nodes are the test split of their pairs (shared ids or a pair
table, the one an edge between them was trained on and keeps when saved), split by group
exactly as the edges' training pairs were, so no test pair was seen
by an edge trained between the same nodes; with shared group names (ids) the split of a
group is the same on every edge (see :func:`bridge.store.split_groups`).

Queries are translated and galleries read block by block (lazy views over the caches,
:class:`bridge.chunks.RowView`), so evaluation on memory-mapped caches keeps its working
memory bounded; small query sets that are scored more than once are translated once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import BridgeError, NoPairs, NoRoute

__all__ = ["HeldOut", "held_out", "evaluate_route", "r1_matrix", "hop_curve", "fusion_routes",
           "fused_evaluation"]


@dataclass
class HeldOut:
    """Test queries of ``src``, their gallery in ``dst`` and which gallery rows are right."""

    q_rows: np.ndarray          # rows of src
    g_rows: np.ndarray          # rows of dst
    relevant: list[np.ndarray]  # per query: positions in g_rows

    @property
    def one_to_one(self) -> bool:
        return all(r.size == 1 for r in self.relevant)


def held_out(graph, src: str, dst: str, pairs=None, split: str = "test") -> HeldOut:
    """Queries, gallery and relevance from the ``split`` pairs of ``src`` and ``dst``.

    Without ``pairs`` the pairs are those an edge between the two nodes was trained on
    (:meth:`~bridge.graph.ModalityGraph.edge_pairs`): the pair table stored on edge
    ``src -> dst`` (or on ``dst -> src``, reversed), split by that edge's rule, so a graph
    read by :func:`~bridge.graph.load_graph` scores its pair-table edges with no extra
    argument; nodes with no edge between them pair by shared ids. ``pairs`` (a pair table,
    a list of ``(id_src, id_dst)`` or :class:`~bridge.store.Pairs`) replaces those pairs;
    they are split by the rule of an edge between the nodes, else the graph's rule.
    """
    if pairs is None:
        P, rule = graph.edge_pairs(src, dst)
    else:
        P, rule = graph.pairs(src, dst, pairs), graph.split_rule(src, dst)
    idx = graph.split(P, rule)[split]
    if idx.size == 0:
        raise NoPairs(f"{src!r} and {dst!r} have no {split} pairs")
    a, b = P.a_rows[idx], P.b_rows[idx]
    q_rows, qi = np.unique(a, return_inverse=True)
    g_rows, gi = np.unique(b, return_inverse=True)
    relevant = [[] for _ in range(q_rows.size)]
    for i, j in zip(qi, gi):
        relevant[i].append(j)
    return HeldOut(q_rows, g_rows, [np.unique(np.asarray(r)) for r in relevant])


def _translated(graph, src: str, rows, route, k: int = 1):
    """Rows ``rows`` of ``src``'s cache translated along ``route`` lazily, block by block."""
    from .chunks import MappedRows

    r = route if k > 1 else graph.as_route(route)
    dst = r[-1] if k > 1 else r.nodes[-1]
    return MappedRows(graph.cache(src).emb, rows,
                      lambda x: graph.translate(x, r, k=k), graph.node(dst)["dim"])


def _relevant_arg(h: HeldOut):
    if h.one_to_one:
        return np.array([r[0] for r in h.relevant])
    return h.relevant


def evaluate_route(graph, src: str, dst: str, route=None, k: int = 1, pairs=None,
                   ks=(1, 5, 10), split: str = "test") -> dict:
    """Retrieval of ``dst`` rows from translated ``src`` test rows through a route.

    ``route`` defaults to the planned cheapest route; ``k > 1`` averages the outputs of the
    ``k`` cheapest routes. Returns the metrics of :func:`bridge.retrieval.retrieval_metrics`
    plus the route(s), their predicted cost and the counts.
    """
    from .chunks import RowView
    from .retrieval import retrieval_metrics

    h = held_out(graph, src, dst, pairs, split)
    if route is None:
        routes = graph.route(src, dst, k=k)
        routes = routes if isinstance(routes, list) else [routes]
        y = _translated(graph, src, h.q_rows, (src, dst) if k > 1 else routes[0], k)
    else:
        routes = [graph.as_route(route)]
        y = _translated(graph, src, h.q_rows, routes[0])
    # queries are translated and the gallery read block by block by the rank engine
    gallery = RowView(graph.cache(dst).emb, h.g_rows)
    m = retrieval_metrics(y, gallery, _relevant_arg(h), ks=ks)
    m.update({"routes": [r.to_dict() for r in routes], "n_queries": int(h.q_rows.size),
              "n_gallery": int(h.g_rows.size)})
    return m


def r1_matrix(graph, nodes=None, pair_tables: dict | None = None, split: str = "test"):
    """R@1 of every ordered node pair through its planned route (NaN: no pairs or route).

    Edges trained from a pair table score with the table they keep; ``pair_tables`` maps
    ``(a, b)`` to a pair table (a :class:`~bridge.store.PairTable`, a list of ``(id_a,
    id_b)`` or a CSV/TSV path) to use instead. Returns ``(names, matrix)``.
    """
    names = list(nodes or graph.nodes)
    M = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i == j:
                continue
            try:
                table = _table_for(pair_tables, a, b)
                M[i, j] = evaluate_route(graph, a, b, pairs=table, ks=(1,), split=split)["R@1"]
            except (NoPairs, NoRoute):
                continue
    return names, M


def _table_for(pair_tables, a, b):
    if not pair_tables:
        return None
    if (a, b) in pair_tables:
        return pair_tables[(a, b)]
    if (b, a) in pair_tables:
        from .store import as_pair_table

        return as_pair_table(pair_tables[(b, a)]).reversed()
    return None


def hop_curve(graph, walks: list[list[str]]) -> list[dict]:
    """Score closed walks of increasing length (see :meth:`ModalityGraph.walk`).

    Returns one dict per walk: ``hops``, ``nodes``, loss mean/median, per-sample losses,
    cycle R@1 and the per-hop figures.
    """
    out = []
    for w in walks:
        rep = graph.walk(w)
        rep["hops_count"] = len(w) - 1
        out.append(rep)
    return out


def fusion_routes(graph, src: str, galleries=None, routes=None, k: int = 1) -> list:
    """The routes a fused retrieval runs: explicit ``routes`` (node lists or
    :class:`~bridge.planner.Route`), else the ``k`` cheapest routes from ``src`` to each
    gallery node."""
    if routes:
        out = [graph.as_route(r) for r in routes]
        bad = [r for r in out if r.nodes[0] != src]
        if bad:
            raise BridgeError(f"route {list(bad[0].nodes)} does not start at {src!r}")
        return out
    if not galleries:
        raise BridgeError("expected gallery nodes or explicit routes to fuse")
    out = []
    for g in galleries:
        rs = graph.route(src, g, k=k)
        out.extend(rs if isinstance(rs, list) else [rs])
    return out


def fused_evaluation(graph, src: str, galleries=None, routes=None, k: int = 1,
                     method: str = "zscore", weights=None, ks=(1, 5, 10), split: str = "test",
                     candidates: int | None = None, val_weights: bool = False) -> dict:
    """Retrieve the same items through several routes and fuse the per-route similarities
    (:func:`bridge.fusion.fused_metrics`).

    The routes are ``routes`` or the ``k`` cheapest from ``src`` to each node in
    ``galleries`` (see :func:`fusion_routes`). Their end nodes must hold the gallery items
    under the same ids (the same items embedded by several encoders). Queries and gallery
    are the ``split`` pairs of ``src`` with the first route's end node. With
    ``method="weighted"`` and ``val_weights=True`` the per-route weights are fitted on the
    validation pairs (:func:`bridge.fusion.fit_route_weights`) and then applied to ``split``.
    ``candidates`` switches from exact dense scoring to per-route Faiss candidate search.
    Returns the fused metrics, each single route's metrics and the routes.
    """
    from .chunks import RowView, materialize
    from .fusion import fit_route_weights, fused_metrics
    from .retrieval import retrieval_metrics

    rts = fusion_routes(graph, src, galleries, routes, k)

    def views(which: str):
        # lazy views: translated and read block by block (small query sets are translated
        # once, as every view is scored more than once)
        h = held_out(graph, src, rts[0].nodes[-1], split=which)
        gids = graph.cache(rts[0].nodes[-1]).ids[h.g_rows]
        Q, G = [], []
        for r in rts:
            end = graph.cache(r.nodes[-1])
            rows = end.rows(gids)  # raises NoPairs naming the ids this gallery node lacks
            Q.append(materialize(_translated(graph, src, h.q_rows, r)))
            G.append(RowView(end.emb, rows))
        return Q, G, _relevant_arg(h)

    Q, G, rel = views(split)
    if method == "weighted" and weights is None:
        if not val_weights:
            raise BridgeError("method='weighted' needs weights, or val_weights=True to fit them on val")
        Qv, Gv, relv = views("val")
        weights = fit_route_weights(Qv, Gv, relv)
    fused = fused_metrics(Q, G, rel, method=method, weights=weights, ks=ks, candidates=candidates)
    single = {" -> ".join(r.nodes): retrieval_metrics(q, g, rel, ks=ks)
              for r, q, g in zip(rts, Q, G)}
    return {"fused": fused, "single": single, "routes": [r.to_dict() for r in rts],
            "method": method, "weights": None if weights is None else list(map(float, weights))}
