"""Route fusion: retrieve the same items through several routes and fuse the scores.

Each route ``r`` gives a query view ``Q[r]`` (the query translated along the route) and a
gallery view ``G[r]`` (the same gallery items, row for row, in the route's end space). The
per-route cosine scores ``S_r = Q[r] . G[r]`` are fused:

- ``"zscore"`` (default): ``sum_r (S_r - mean_r) / std_r``, mean and std taken per query
  over the *whole* gallery. With candidate search they are still exact: the mean of a query's
  scores is ``q . mean(G)`` and the second moment is ``q^T (G^T G / n) q``.
- ``"weighted"``: ``sum_r w_r (S_r - mean_r) / std_r`` with weights ``w`` (see
  :func:`fit_route_weights`, which fits them on validation pairs).
- ``"rrf"``: reciprocal-rank fusion ``sum_r 1 / (rrf_k + rank_r)``, where rows of equal
  score share the worst of their ranks (ties count against, as everywhere).

Two ways to compute it: dense (every query against every gallery row; exact) and
candidate search (:func:`fused_search`: each route's Faiss index returns its top
``candidates`` rows, the union is re-scored exactly and fused), which scales to large galleries.

The dense path streams: z-score and weighted fusion are ranked by the exact rank engine of
:mod:`bridge.retrieval` (for one query the fused score is, up to a constant, one inner
product of the route views side by side, the query views scaled by ``w_r / std_r``), the
gallery moments are accumulated over row blocks, and reciprocal-rank fusion takes a few
queries at a time. Views may be arrays, memory maps or lazy row views
(:class:`bridge.chunks.RowView`); none is copied whole.

With ``scoring="csls"`` or ``"qbnorm"`` and one query bank per route (``banks``), each
route's ``S_r`` is its hubness-corrected score (:mod:`bridge.hubness`, ranking form: the
inner product of augmented rows), and every fusion method above combines those.
"""

from __future__ import annotations

import itertools

import numpy as np

from .errors import BridgeError, DimensionMismatch, EmptyData, InvalidParameter
from .retrieval import (
    ENGINE_CELLS,
    as_relevance,
    build_index,
    check_index_options,
    check_k,
    check_ks,
    metrics_from_csr,
    metrics_from_ranks,
    normalize,
    rank_engine,
    ranks_from_lists,
    relevance_csr,
    row_source,
)

__all__ = ["FUSION_METHODS", "fuse_scores", "fused_search", "fused_metrics",
           "fit_route_weights", "simplex_grid"]

FUSION_METHODS = ("zscore", "weighted", "rrf")
RRF_K = 60


def _views(Q, G):
    if not isinstance(Q, (list, tuple)) or not isinstance(G, (list, tuple)):
        raise BridgeError("expected lists of per-route query and gallery arrays")
    if len(Q) == 0 or len(Q) != len(G):
        raise DimensionMismatch(f"expected one gallery view per route: {len(Q)} query views, "
                                f"{len(G)} gallery views")
    from .chunks import check_header

    # shapes and dtypes only: rows are read (and checked) block by block where used
    Qn = [check_header(q, f"queries of route {i}") for i, q in enumerate(Q)]
    Gn = [check_header(g, f"gallery of route {i}") for i, g in enumerate(G)]
    nq, ng = Qn[0].shape[0], Gn[0].shape[0]
    for i, (q, g) in enumerate(zip(Qn, Gn)):
        if q.shape[0] != nq or g.shape[0] != ng:
            raise DimensionMismatch(f"route {i} has {q.shape[0]} queries and {g.shape[0]} "
                                    f"gallery rows; route 0 has {nq} and {ng}")
        if q.shape[1] != g.shape[1]:
            raise DimensionMismatch(f"route {i}: queries have dimension {q.shape[1]} but its "
                                    f"gallery has dimension {g.shape[1]}")
    return Qn, Gn


def _normalised(Qs, Gs):
    """Normalised in-memory copies of every view (for the dense matrix and Faiss paths)."""
    return ([normalize(q, f"queries of route {i}") for i, q in enumerate(Qs)],
            [normalize(g, f"gallery of route {i}") for i, g in enumerate(Gs)])


def _adjustments(Gn, scoring, banks, block: int = 1024):
    """Each route's bank statistics (:func:`bridge.hubness.gallery_adjustment`) from its own
    bank in ``banks``; ``None`` for cosine."""
    from .hubness import Adjustment, gallery_adjustment, parse_scoring

    sc = parse_scoring(scoring)
    if sc.is_cosine:
        return None
    if not isinstance(banks, (list, tuple)) or len(banks) != len(Gn):
        got = "None" if banks is None else (f"{len(banks)} banks"
                                            if isinstance(banks, (list, tuple)) else repr(banks))
        raise InvalidParameter(f"scoring {str(sc)!r} needs banks: a list of one bank per route "
                               f"({len(Gn)} routes), each translated along its route; got {got}")
    return [b if isinstance(b, Adjustment) else gallery_adjustment(g, b, sc, block)
            for g, b in zip(Gn, banks)]


def _scored(Qn, Gn, scoring, banks, block: int = 1024):
    """The views to score: ``(Q, G, normalized, adjustments)``. Cosine: the views as they
    are. Another scoring: each route's augmented views (:func:`bridge.hubness.adjusted`,
    already normalised) from its own bank in ``banks``."""
    from .hubness import adjusted

    adjs = _adjustments(Gn, scoring, banks, block)
    if adjs is None:
        return Qn, Gn, False, None
    out = [adjusted(q, g, a, scoring, block) for q, g, a in zip(Qn, Gn, adjs)]
    return [o[0] for o in out], [o[1] for o in out], True, [o[2] for o in out]


def _scoring_info(scoring, adjs) -> dict:
    from .hubness import parse_scoring

    if adjs is None:
        return {}
    return {"scoring": str(parse_scoring(scoring)), "n_bank": [int(a.n_bank) for a in adjs]}


def _check_method(method) -> str:
    if not isinstance(method, str) or method not in FUSION_METHODS:
        raise InvalidParameter(
            f"unknown fusion method {method!r}; expected one of {FUSION_METHODS}")
    return method


def _weights(method, weights, n):
    _check_method(method)
    if method == "weighted":
        if weights is None:
            raise BridgeError("method='weighted' needs per-route weights "
                              "(fit them with fit_route_weights)")
        try:
            w = np.asarray(weights, dtype=np.float64)
        except (TypeError, ValueError):
            w = None
        if w is None or w.shape != (n,) or not np.all(np.isfinite(w)):
            raise DimensionMismatch(f"expected {n} finite route weights, got {weights!r}")
        return w
    return np.ones(n)


class _Moments:
    """Per-query mean and std of ``q . g`` over all gallery rows, without the score matrix.

    The gallery's mean row and second-moment matrix are accumulated over normalised row
    blocks (``d x d`` memory, whatever the gallery size).
    """

    def __init__(self, g, name: str = "gallery", normalized: bool = False):
        n, d, block, _ = row_source(g, name, normalized)
        mu, second = np.zeros(d), np.zeros((d, d))
        step = max(1, ENGINE_CELLS // max(d, 1))
        for s in range(0, n, step):
            G = block(s, min(n, s + step)).astype(np.float64)
            mu += G.sum(0)
            second += G.T @ G
        self.mu = mu / n
        self.second = second / n

    def __call__(self, q: np.ndarray):
        q64 = q.astype(np.float64)
        mean = q64 @ self.mu
        var = np.einsum("ij,jk,ik->i", q64, self.second, q64) - mean ** 2
        return mean, np.sqrt(np.maximum(var, 1e-12))


def _dense_block(Qb, Gn, moments, method, w):
    """Fused scores of a block of queries against the whole gallery."""
    F = np.zeros((Qb[0].shape[0], Gn[0].shape[0]))
    for r, (q, g) in enumerate(zip(Qb, Gn)):
        S = (q @ g.T).astype(np.float64)
        if method == "rrf":
            F += 1.0 / (RRF_K + _competition_ranks((q @ g.T).astype(np.float32)))
        else:
            mean, sd = moments[r](q)
            F += w[r] * (S - mean[:, None]) / sd[:, None]
    return F


def _keys(rows: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of (row, float32 value): sorts by row, then value."""
    u = (v + np.float32(0)).view(np.uint32)  # + 0 turns -0.0 into +0.0
    u = np.where(u & np.uint32(0x80000000), ~u, u | np.uint32(0x80000000))
    return (rows.astype(np.uint64) << np.uint64(32)) | u.astype(np.uint64)


def _competition_ranks(S: np.ndarray) -> np.ndarray:
    """Rank of every entry within its row, best first, ties pessimistic: the number of
    entries of the row scoring at least as high (equal scores share the worst rank)."""
    b, n = S.shape
    rows = np.repeat(np.arange(b), n)
    srt = np.sort(S, axis=1).reshape(-1)
    below = np.searchsorted(_keys(rows, srt), _keys(rows, S.reshape(-1)), side="left")
    return (n - (below - rows * n)).reshape(b, n)


def _dense_views(Qv, Gv, scoring, banks):
    """In-memory float32 query and gallery rows per route, ready for inner products: the
    hubness-augmented rows under a scoring other than cosine (``normalized`` True), else
    the L2-normalised rows."""
    Qa, Ga, normalized, _ = _scored(Qv, Gv, scoring, banks)
    if not normalized:
        return (*_normalised(Qv, Gv), False)
    return ([np.ascontiguousarray(q[:], dtype=np.float32) for q in Qa],
            [np.ascontiguousarray(g[:], dtype=np.float32) for g in Ga], True)


def fuse_scores(Q, G, method: str = "zscore", weights=None, *, scoring=None,
                banks=None) -> np.ndarray:
    """The dense fused score matrix ``(n_queries, n_gallery)`` (see the module doc).

    ``scoring`` other than cosine fuses each route's hubness-corrected scores (ranking form,
    :mod:`bridge.hubness`), computed with its own bank in ``banks`` (one per route)."""
    Qv, Gv = _views(Q, G)
    w = _weights(method, weights, len(Qv))
    Qn, Gn, normalized = _dense_views(Qv, Gv, scoring, banks)
    moments = [_Moments(g, normalized=True) if normalized else _Moments(g) for g in Gn]
    return _dense_block(Qn, Gn, moments, method, w)


def fused_search(Q, G, k: int = 10, method: str = "zscore", weights=None,
                 candidates: int = 100, kind: str = "flat", *, scoring=None, banks=None,
                 **index_opts):
    """Top ``k`` gallery rows per query by fused score, through per-route candidate search.

    Each route's Faiss index (``kind``: flat, hnsw or ivf) returns its top ``candidates``
    rows; the union is re-scored exactly in every route and fused. Returns
    ``(scores, rows)``, best first, ``min(k, n_gallery)`` columns (``rows`` is ``-1`` where
    fewer were found).

    ``scoring`` other than cosine (with one bank per route in ``banks``): each route's index
    holds its augmented gallery rows (:func:`bridge.hubness.adjusted`), so candidates are
    chosen, re-scored and fused by the hubness-corrected scores.
    """
    k = check_k(k)
    candidates = check_k(candidates, "candidates")
    _check_method(method)
    check_index_options(kind, index_opts)
    Qv, Gv = _views(Q, G)
    Qn, Gn, normalized = _dense_views(Qv, Gv, scoring, banks)
    w = _weights(method, weights, len(Qn))
    ng = Gn[0].shape[0]
    k = min(k, ng)  # more rows than the gallery holds: all of them (as search() does)
    c = int(min(candidates, ng))
    tops = []
    for q, g in zip(Qn, Gn):
        index = build_index(g, kind, normalized=True, **index_opts)
        tops.append(index.search(q, c)[1])
    moments = [_Moments(g, normalized=normalized) for g in Gn] if method != "rrf" else None
    nq = Qn[0].shape[0]
    out_s = np.full((nq, k), -np.inf)
    out_r = np.full((nq, k), -1, dtype=np.int64)
    for i in range(nq):
        cand = np.unique(np.concatenate([t[i][t[i] >= 0] for t in tops]))
        f = np.zeros(cand.size)
        for r, (q, g) in enumerate(zip(Qn, Gn)):
            if method == "rrf":
                pos = {int(x): j + 1 for j, x in enumerate(tops[r][i]) if x >= 0}
                f += np.array([1.0 / (RRF_K + pos[x]) if x in pos else 0.0 for x in cand.tolist()])
            else:
                # float64 products summed along each row: a row's score depends on the
                # row only, so identical gallery rows tie (a BLAS product may round them
                # apart by where they sit)
                s = (g[cand].astype(np.float64) * q[i]).sum(axis=1)
                mean, sd = moments[r](q[i:i + 1])
                f += w[r] * (s - mean[0]) / sd[0]
        order = np.lexsort((cand, -f))[:k]
        out_s[i, :order.size] = f[order]
        out_r[i, :order.size] = cand[order]
    return out_s, out_r


def fused_metrics(Q, G, relevant=None, method: str = "zscore", weights=None, ks=(1, 5, 10),
                  candidates: int | None = None, block: int = 512, *, scoring=None,
                  banks=None, **index_opts) -> dict:
    """Retrieval metrics of fused scores (see :func:`bridge.retrieval.retrieval_metrics`).

    ``candidates=None`` scores every gallery row (exact ranks). An integer uses
    :func:`fused_search`: a right row outside the fused candidate list counts as not found.

    ``scoring`` other than cosine (``"csls"``, ``"qbnorm"``, see :mod:`bridge.hubness`)
    fuses each route's hubness-corrected scores: ``banks`` holds one bank per route (that
    route's own bank queries translated along it, or an :class:`bridge.hubness.Adjustment`
    of its gallery). z-score and weighted fusion standardise the adjusted scores over the
    whole gallery, RRF ranks by them. The result then also holds ``scoring`` and the bank
    sizes (``n_bank``, one per route).
    """
    ks = check_ks(ks)
    _check_method(method)
    candidates = check_k(candidates, "candidates", allow_none=True)
    block = check_k(block, "block")
    check_index_options(index_opts.get("kind", "flat"),
                        {k: v for k, v in index_opts.items() if k != "kind"})
    Qn, Gn = _views(Q, G)
    nq, ng = Qn[0].shape[0], Gn[0].shape[0]
    if candidates is not None:
        candidates = min(candidates, ng)  # more candidates than rows is every row
    w = _weights(method, weights, len(Qn))
    ks = tuple(int(k) for k in ks)
    if candidates is None:
        Qn, Gn, normalized, adjs = _scored(Qn, Gn, scoring, banks)
    else:  # fused_search builds the augmented views from these statistics
        normalized, adjs = False, _adjustments(Gn, scoring, banks)
    if candidates is None and method != "rrf":
        indptr, rows = relevance_csr(relevant, nq, ng)
        if np.any(np.diff(indptr) == 0):
            as_relevance(relevant, nq, ng)  # raises, naming the query without a right row
        moments = [_Moments(g, normalized=normalized) if normalized else _Moments(g)
                   for g in Gn]
        ranks = _fused_ranks(Qn, Gn, indptr, rows, w, moments, block, normalized)
        m = metrics_from_csr(indptr, ranks, ks)
        m.update({"n_gallery": int(ng), "method": method, "routes": len(Qn),
                  "candidates": candidates, **_scoring_info(scoring, adjs)})
        return m
    rel = as_relevance(relevant, nq, ng)
    if candidates is None:  # rrf: every route's full rank of every gallery row
        ranks = _rrf_ranks(Qn, Gn, rel, block, normalized)
    else:
        scores, rows = fused_search(Qn, Gn, k=int(candidates) * len(Qn), method=method,
                                    weights=w, candidates=candidates, scoring=scoring,
                                    banks=adjs, **index_opts)
        ranks = ranks_from_lists(rows, rel, scores)
    m = metrics_from_ranks(ranks, ks)
    m.update({"n_gallery": int(ng), "method": method, "routes": len(Qn),
              "candidates": candidates, **_scoring_info(scoring, adjs)})
    return m


def _fused_ranks(Qs, Gs, indptr, rows, w, moments, block: int,
                 normalized: bool = False) -> np.ndarray:
    """Exact ranks under (weighted) z-score fusion, counted by the streamed rank engine.

    For one query the fused score ``sum_r w_r (S_r - mean_r) / sd_r`` is, up to a constant,
    the inner product of the route views stacked side by side, each query view scaled by
    ``w_r / sd_r``: the engine ranks that product with the galleries streaming by blocks
    (no score matrix of the whole gallery, no normalised copy of any view).
    """
    qs = [row_source(q, f"queries of route {r}", normalized) for r, q in enumerate(Qs)]
    gs = [row_source(g, f"gallery of route {r}", normalized) for r, g in enumerate(Gs)]
    nq, ng = qs[0][0], gs[0][0]
    dim = sum(g[1] for g in gs)
    plain = len(Qs) == 1 and w[0] > 0  # a positive scale changes no ranking
    top = float(np.max(np.abs(w)))
    if top > 0:  # nor does a common one: keep the float32 products in range
        w = np.asarray(w, dtype=np.float64) / top

    def qblock(s, e):
        parts = []
        for r, src in enumerate(qs):
            q = src[2](s, e)
            if not plain:
                _, sd = moments[r](q)
                q = q * (w[r] / sd).astype(np.float32)[:, None]
            parts.append(q)
        return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)

    def gblock(s, e):
        return np.ascontiguousarray(np.concatenate([g[2](s, e) for g in gs], axis=1))

    def grows(idx):
        return np.ascontiguousarray(np.concatenate([g[3](idx) for g in gs], axis=1))

    return rank_engine(qblock, gblock, grows, nq, ng, dim, indptr, rows, block)


def _ranks_dense(scores: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Ranks of the right rows ``rel`` within one query's full score row (pessimistic ties)."""
    mask = np.zeros(scores.shape[0], dtype=bool)
    mask[rel] = True
    wrong = np.sort(scores[~mask])
    rs = np.sort(scores[rel])[::-1]
    # wrong rows scoring >= each right score, plus the right rows ahead of it
    above = wrong.size - np.searchsorted(wrong, rs, side="left")
    return above + np.arange(1, rs.size + 1)


def _rrf_ranks(Qs, Gs, rel, block: int, normalized: bool = False) -> list[np.ndarray]:
    """Ranks under reciprocal-rank fusion: a few queries at a time get every route's full
    score rows (the galleries stream by blocks into them), so memory stays bounded."""
    qs = [row_source(q, f"queries of route {r}", normalized) for r, q in enumerate(Qs)]
    gs = [row_source(g, f"gallery of route {r}", normalized) for r, g in enumerate(Gs)]
    nq, ng = qs[0][0], gs[0][0]
    b = max(1, min(block, ENGINE_CELLS // max(ng, 1)))
    step = max(1, ENGINE_CELLS // max(b, 1))
    out = []
    for s in range(0, nq, b):
        e = min(nq, s + b)
        F = np.zeros((e - s, ng))
        for qsrc, gsrc in zip(qs, gs):
            q = qsrc[2](s, e)
            S = np.empty((e - s, ng), dtype=np.float32)
            for g0 in range(0, ng, step):
                g1 = min(ng, g0 + step)
                S[:, g0:g1] = q @ gsrc[2](g0, g1).T
            F += 1.0 / (RRF_K + _competition_ranks(S))
            del S
        out.extend(_ranks_dense(F[i], rel[s + i]) for i in range(F.shape[0]))
    return out


def simplex_grid(n: int, step: float = 0.1) -> np.ndarray:
    """All weight vectors of ``n`` non-negative entries, multiples of ``step``, summing to 1."""
    if n < 1:
        raise EmptyData("expected at least one route")
    _check_step(step)
    m = int(round(1.0 / step))
    pts = [c for c in itertools.product(range(m + 1), repeat=n - 1) if sum(c) <= m]
    return np.array([[*c, m - sum(c)] for c in pts], dtype=np.float64) / m


def _check_step(step) -> float:
    from .params import check_real

    step = check_real("step", step, 0, 1, closed="right")
    if abs(1.0 / step - round(1.0 / step)) > 1e-6:
        raise InvalidParameter(f"parameter 'step' must divide 1 evenly (0.1, 0.25, 0.5...), "
                               f"got {step!r}")
    return step


def fit_route_weights(Q, G, relevant=None, step: float = 0.1, metric: str = "R@1", *,
                      scoring=None, banks=None) -> np.ndarray:
    """Per-route weights for ``method="weighted"`` chosen on validation pairs.

    Searches the weight simplex on a grid of ``step`` and keeps the weights with the best
    ``metric`` (ties: higher MRR, then the weights closest to uniform). Pass validation
    queries and gallery here and apply the weights to test. ``scoring`` and ``banks`` (one
    per route, none holding these validation queries) fit the weights of fused
    hubness-corrected scores (see :func:`fused_metrics`).
    """
    _check_step(step)
    if metric not in ("R@1", "R@5", "R@10", "MRR", "mAP"):
        raise InvalidParameter(f"unknown metric {metric!r}; expected one of "
                               "['R@1', 'R@5', 'R@10', 'MRR', 'mAP']")
    Qn, Gn = _views(Q, G)
    n = len(Qn)
    nq, ng = Qn[0].shape[0], Gn[0].shape[0]
    indptr, rows = relevance_csr(relevant, nq, ng)
    if np.any(np.diff(indptr) == 0):
        as_relevance(relevant, nq, ng)  # raises, naming the query without a right row
    Qn, Gn, normalized, _ = _scored(Qn, Gn, scoring, banks)
    moments = [_Moments(g, normalized=normalized) if normalized else _Moments(g) for g in Gn]
    best, best_key = None, None
    for wv in simplex_grid(n, step):
        # each candidate weighting is ranked exactly by the streamed engine
        ranks = _fused_ranks(Qn, Gn, indptr, rows, wv, moments, 1024, normalized)
        m = metrics_from_csr(indptr, ranks, (1, 5, 10))
        key = (round(m[metric], 9), round(m["MRR"], 9), -float(np.abs(wv - 1.0 / n).sum()))
        if best_key is None or key > best_key:
            best, best_key = wv, key
    return best
