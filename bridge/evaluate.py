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

from .errors import BridgeError, InvalidParameter, NoPairs, NoRoute

__all__ = ["HeldOut", "held_out", "bank_rows", "evaluate_route", "r1_matrix", "hop_curve",
           "fusion_routes", "fused_evaluation"]


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


#: the splits a query bank may be drawn from (never the test split)
BANK_SPLITS = ("train", "val")


def bank_rows(graph, src: str, dst: str, bank, queries: np.ndarray, pairs=None,
              split: str = "test") -> tuple[np.ndarray, str]:
    """Rows of ``src`` that form the query bank of a hubness-aware scoring.

    ``bank`` is a split name (``"train"`` or ``"val"``: the ``src`` rows of that split of
    the pairs of ``src`` and ``dst``, as :func:`held_out` draws them, less any row among the
    evaluated ``queries``) or an array of ``src`` row indices. The bank must never hold the
    evaluated queries: ``bank == split``, or explicit rows among ``queries``, raise
    :class:`~bridge.errors.InvalidParameter`. Returns ``(rows, name)``; ``name`` is the
    split or ``"rows"``.
    """
    if isinstance(bank, str):
        if bank == split:
            raise InvalidParameter(f"bank {bank!r} is the evaluated split: the bank must not "
                                   f"contain the {split} queries; use another split")
        if bank not in BANK_SPLITS:
            raise InvalidParameter(f"unknown bank {bank!r}; expected one of {BANK_SPLITS} (a "
                                   f"split of the pairs, never test) or an array of rows of "
                                   f"{src!r}")
        rows = held_out(graph, src, dst, pairs, bank).q_rows
        rows = rows[~np.isin(rows, queries)]
        if rows.size == 0:
            raise NoPairs(f"the {bank} pairs of {src!r} and {dst!r} leave no bank rows")
        return rows, bank
    try:
        rows = np.asarray(bank)
    except (TypeError, ValueError):
        rows = None
    if rows is None or rows.ndim != 1 or rows.size == 0 or not (
            np.issubdtype(rows.dtype, np.integer)):
        raise InvalidParameter(f"bank must be 'train', 'val' or a non-empty 1-D array of row "
                               f"indices of {src!r}, got {bank!r}")
    n = graph.cache(src).emb.shape[0]
    if rows.min() < 0 or rows.max() >= n:
        bad = int(rows[(rows < 0) | (rows >= n)][0])
        raise InvalidParameter(f"bank row {bad} is not a row of {src!r} (rows 0..{n - 1})")
    inside = np.isin(rows, queries)
    if inside.any():
        raise InvalidParameter(f"bank row {int(rows[inside][0])} is one of the evaluated "
                               f"{split} queries: the bank must not contain the test queries")
    return rows.astype(np.int64), "rows"


def evaluate_route(graph, src: str, dst: str, route=None, k: int = 1, pairs=None,
                   ks=(1, 5, 10), split: str = "test", *, scoring=None, bank="val") -> dict:
    """Retrieval of ``dst`` rows from translated ``src`` test rows through a route.

    ``route`` defaults to the planned cheapest route; ``k > 1`` averages the outputs of the
    ``k`` cheapest routes. Returns the metrics of :func:`bridge.retrieval.retrieval_metrics`
    plus the route(s), their predicted cost and the counts.

    ``scoring`` (``"cosine"`` by default, ``"csls"``, ``"qbnorm"``, text options as in
    :func:`bridge.hubness.parse_scoring`) corrects hubness with a query bank: the ``src``
    rows of the ``bank`` split (``"val"`` by default, or ``"train"``, or an array of ``src``
    rows; see :func:`bank_rows`) translated along the same route(s) as the queries. The
    bank never holds the evaluated queries. The result then also holds ``scoring``,
    ``bank`` (the split, or ``"rows"``) and ``n_bank``; with cosine ``bank`` is not used.
    """
    from .chunks import RowView, materialize
    from .hubness import parse_scoring
    from .retrieval import retrieval_metrics

    sc = parse_scoring(scoring)
    h = held_out(graph, src, dst, pairs, split)
    if route is None:
        routes = graph.route(src, dst, k=k)
        routes = routes if isinstance(routes, list) else [routes]
        along = ((src, dst), k) if k > 1 else (routes[0], 1)
    else:
        routes = [graph.as_route(route)]
        along = (routes[0], 1)
    y = _translated(graph, src, h.q_rows, along[0], along[1])
    # queries are translated and the gallery read block by block by the rank engine
    gallery = RowView(graph.cache(dst).emb, h.g_rows)
    if sc.is_cosine:
        m = retrieval_metrics(y, gallery, _relevant_arg(h), ks=ks)
    else:
        rows, name = bank_rows(graph, src, dst, bank, h.q_rows, pairs, split)
        b = materialize(_translated(graph, src, rows, along[0], along[1]))
        if sc.method == "qbnorm":  # the queries are read twice (their raw top-1 first)
            y = materialize(y)
        m = retrieval_metrics(y, gallery, _relevant_arg(h), ks=ks, scoring=sc, bank=b)
        m.update({"bank": name})
    m.update({"routes": [r.to_dict() for r in routes], "n_queries": int(h.q_rows.size),
              "n_gallery": int(h.g_rows.size)})
    return m


def r1_matrix(graph, nodes=None, pair_tables: dict | None = None, split: str = "test", *,
              scoring=None, bank="val"):
    """R@1 of every ordered node pair through its planned route (NaN: no pairs or route).

    Edges trained from a pair table score with the table they keep; ``pair_tables`` maps
    ``(a, b)`` to a pair table (a :class:`~bridge.store.PairTable`, a list of ``(id_a,
    id_b)`` or a CSV/TSV path) to use instead. ``scoring`` and ``bank`` are passed to
    :func:`evaluate_route`. Returns ``(names, matrix)``.
    """
    names = list(nodes or graph.nodes)
    M = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i == j:
                continue
            try:
                table = _table_for(pair_tables, a, b)
                M[i, j] = evaluate_route(graph, a, b, pairs=table, ks=(1,), split=split,
                                         scoring=scoring, bank=bank)["R@1"]
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
                     candidates: int | None = None, val_weights: bool = False, *,
                     scoring=None, bank="val") -> dict:
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

    ``scoring`` other than cosine (see :func:`evaluate_route`) corrects every route with its
    own bank: the ``src`` rows of the ``bank`` split (or the ``src`` rows given) translated
    along that route; single routes are scored the same way and fusion combines the
    adjusted scores. Weights fitted with ``val_weights=True`` are fitted on the val
    queries with the **train** bank (the val queries may never be their own bank). The
    result then also holds ``scoring``, ``bank``, ``n_bank`` and, for fitted weights,
    ``weights_bank``.
    """
    from .chunks import RowView, materialize
    from .fusion import fit_route_weights, fused_metrics
    from .hubness import gallery_adjustment, parse_scoring
    from .retrieval import retrieval_metrics

    sc = parse_scoring(scoring)
    rts = fusion_routes(graph, src, galleries, routes, k)
    end0 = rts[0].nodes[-1]

    def views(which: str, bank_of=None):
        # lazy views: translated and read block by block (small query sets are translated
        # once, as every view is scored more than once)
        h = held_out(graph, src, end0, split=which)
        gids = graph.cache(end0).ids[h.g_rows]
        Q, G = [], []
        for r in rts:
            end = graph.cache(r.nodes[-1])
            rows = end.rows(gids)  # raises NoPairs naming the ids this gallery node lacks
            Q.append(materialize(_translated(graph, src, h.q_rows, r)))
            G.append(RowView(end.emb, rows))
        if sc.is_cosine:
            return Q, G, _relevant_arg(h), None, None
        brows, name = bank_rows(graph, src, end0, bank_of, h.q_rows, split=which)
        # each route's bank statistics, computed once and shared by single and fused scores
        adjs = [gallery_adjustment(g, materialize(_translated(graph, src, brows, r)), sc)
                for r, g in zip(rts, G)]
        return Q, G, _relevant_arg(h), adjs, name

    Q, G, rel, adjs, bank_name = views(split, bank)
    fit_bank = None
    if method == "weighted" and weights is None:
        if not val_weights:
            raise BridgeError("method='weighted' needs weights, or val_weights=True to fit them on val")
        fit_bank = None if sc.is_cosine else "train"
        Qv, Gv, relv, adjv, _ = views("val", fit_bank)
        weights = fit_route_weights(Qv, Gv, relv, scoring=sc, banks=adjv)
    fused = fused_metrics(Q, G, rel, method=method, weights=weights, ks=ks, candidates=candidates,
                          scoring=sc, banks=adjs)
    single = {" -> ".join(r.nodes): retrieval_metrics(q, g, rel, ks=ks, scoring=sc,
                                                      bank=None if adjs is None else adjs[i])
              for i, (r, q, g) in enumerate(zip(rts, Q, G))}
    out = {"fused": fused, "single": single, "routes": [r.to_dict() for r in rts],
           "method": method, "weights": None if weights is None else list(map(float, weights))}
    if not sc.is_cosine:
        out.update({"scoring": str(sc), "bank": bank_name,
                    "n_bank": [int(a.n_bank) for a in adjs]})
        if fit_bank is not None:
            out["weights_bank"] = fit_bank
    return out
