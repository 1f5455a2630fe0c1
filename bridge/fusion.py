"""Route fusion: retrieve the same items through several routes and fuse the scores.

Each route ``r`` gives a query view ``Q[r]`` (the query translated along the route) and a
gallery view ``G[r]`` (the same gallery items, row for row, in the route's end space). The
per-route cosine scores ``S_r = Q[r] . G[r]`` are fused:

- ``"zscore"`` (default): ``sum_r (S_r - mean_r) / std_r``, mean and std taken per query
  over the *whole* gallery. With candidate search they are still exact: the mean of a query's
  scores is ``q . mean(G)`` and the second moment is ``q^T (G^T G / n) q``.
- ``"weighted"``: ``sum_r w_r (S_r - mean_r) / std_r`` with weights ``w`` (see
  :func:`fit_route_weights`, which fits them on validation pairs).
- ``"rrf"``: reciprocal-rank fusion ``sum_r 1 / (rrf_k + rank_r)``.

Two ways to compute it: dense (every query against every gallery row, in blocks; exact) and
candidate search (:func:`fused_search`: each route's Faiss index returns its top
``candidates`` rows, the union is re-scored exactly and fused), which scales to large galleries.
"""

from __future__ import annotations

import itertools

import numpy as np

from .errors import BridgeError, DimensionMismatch, EmptyData
from .retrieval import (
    _ranks_dense,
    _ranks_from_lists,
    as_relevance,
    build_index,
    metrics_from_ranks,
    normalize,
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
    Qn = [normalize(q, f"queries of route {i}") for i, q in enumerate(Q)]
    Gn = [normalize(g, f"gallery of route {i}") for i, g in enumerate(G)]
    nq, ng = Qn[0].shape[0], Gn[0].shape[0]
    for i, (q, g) in enumerate(zip(Qn, Gn)):
        if q.shape[0] != nq or g.shape[0] != ng:
            raise DimensionMismatch(f"route {i} has {q.shape[0]} queries and {g.shape[0]} "
                                    f"gallery rows; route 0 has {nq} and {ng}")
        if q.shape[1] != g.shape[1]:
            raise DimensionMismatch(f"route {i}: queries have dimension {q.shape[1]} but its "
                                    f"gallery has dimension {g.shape[1]}")
    return Qn, Gn


def _weights(method, weights, n):
    if method not in FUSION_METHODS:
        raise BridgeError(f"unknown fusion method {method!r}; expected one of {FUSION_METHODS}")
    if method == "weighted":
        if weights is None:
            raise BridgeError("method='weighted' needs per-route weights "
                              "(fit them with fit_route_weights)")
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,) or not np.all(np.isfinite(w)):
            raise DimensionMismatch(f"expected {n} finite route weights, got {weights!r}")
        return w
    return np.ones(n)


class _Moments:
    """Per-query mean and std of ``q . g`` over all gallery rows, without the score matrix."""

    def __init__(self, g: np.ndarray):
        g64 = g.astype(np.float64)
        self.mu = g64.mean(0)
        self.second = g64.T @ g64 / g64.shape[0]

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
            order = np.argsort(-S, axis=1, kind="stable")
            ranks = np.empty_like(order)
            np.put_along_axis(ranks, order, np.arange(1, S.shape[1] + 1)[None, :], axis=1)
            F += 1.0 / (RRF_K + ranks)
        else:
            mean, sd = moments[r](q)
            F += w[r] * (S - mean[:, None]) / sd[:, None]
    return F


def fuse_scores(Q, G, method: str = "zscore", weights=None) -> np.ndarray:
    """The dense fused score matrix ``(n_queries, n_gallery)`` (see the module doc)."""
    Qn, Gn = _views(Q, G)
    w = _weights(method, weights, len(Qn))
    moments = [_Moments(g) for g in Gn]
    return _dense_block(Qn, Gn, moments, method, w)


def fused_search(Q, G, k: int = 10, method: str = "zscore", weights=None,
                 candidates: int = 100, kind: str = "flat", **index_opts):
    """Top ``k`` gallery rows per query by fused score, through per-route candidate search.

    Each route's Faiss index (``kind``: flat, hnsw or ivf) returns its top ``candidates``
    rows; the union is re-scored exactly in every route and fused. Returns
    ``(scores, rows)``, best first (``rows`` is ``-1`` where fewer than ``k`` were found).
    """
    Qn, Gn = _views(Q, G)
    w = _weights(method, weights, len(Qn))
    ng = Gn[0].shape[0]
    c = int(min(candidates, ng))
    tops = []
    for q, g in zip(Qn, Gn):
        index = build_index(g, kind, normalized=True, **index_opts)
        tops.append(index.search(q, c)[1])
    moments = [_Moments(g) for g in Gn] if method != "rrf" else None
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
                s = (g[cand] @ q[i]).astype(np.float64)
                mean, sd = moments[r](q[i:i + 1])
                f += w[r] * (s - mean[0]) / sd[0]
        order = np.lexsort((cand, -f))[:k]
        out_s[i, :order.size] = f[order]
        out_r[i, :order.size] = cand[order]
    return out_s, out_r


def fused_metrics(Q, G, relevant=None, method: str = "zscore", weights=None, ks=(1, 5, 10),
                  candidates: int | None = None, block: int = 512, **index_opts) -> dict:
    """Retrieval metrics of fused scores (see :func:`bridge.retrieval.retrieval_metrics`).

    ``candidates=None`` scores every gallery row (exact ranks). An integer uses
    :func:`fused_search`: a right row outside the fused candidate list counts as not found.
    """
    Qn, Gn = _views(Q, G)
    nq, ng = Qn[0].shape[0], Gn[0].shape[0]
    rel = as_relevance(relevant, nq, ng)
    w = _weights(method, weights, len(Qn))
    if candidates is None:
        moments = [_Moments(g) for g in Gn]
        ranks = []
        for s in range(0, nq, block):
            F = _dense_block([q[s:s + block] for q in Qn], Gn, moments, method, w)
            ranks.extend(_ranks_dense(F[i], rel[s + i]) for i in range(F.shape[0]))
    else:
        _, rows = fused_search(Qn, Gn, k=int(candidates) * len(Qn), method=method, weights=w,
                               candidates=candidates, **index_opts)
        ranks = _ranks_from_lists(rows, rel)
    m = metrics_from_ranks(ranks, tuple(int(k) for k in ks))
    m.update({"n_gallery": int(ng), "method": method, "routes": len(Qn),
              "candidates": candidates})
    return m


def simplex_grid(n: int, step: float = 0.1) -> np.ndarray:
    """All weight vectors of ``n`` non-negative entries, multiples of ``step``, summing to 1."""
    if n < 1:
        raise EmptyData("expected at least one route")
    m = int(round(1.0 / step))
    pts = [c for c in itertools.product(range(m + 1), repeat=n - 1) if sum(c) <= m]
    return np.array([[*c, m - sum(c)] for c in pts], dtype=np.float64) / m


def fit_route_weights(Q, G, relevant=None, step: float = 0.1, metric: str = "R@1") -> np.ndarray:
    """Per-route weights for ``method="weighted"`` chosen on validation pairs.

    Searches the weight simplex on a grid of ``step`` and keeps the weights with the best
    ``metric`` (ties: higher MRR, then the weights closest to uniform). Pass validation
    queries and gallery here and apply the weights to test.
    """
    Qn, Gn = _views(Q, G)
    n = len(Qn)
    rel = as_relevance(relevant, Qn[0].shape[0], Gn[0].shape[0])
    moments = [_Moments(g) for g in Gn]
    Z = []  # per-route z-scored matrices, computed once
    for r in range(n):
        S = (Qn[r] @ Gn[r].T).astype(np.float64)
        mean, sd = moments[r](Qn[r])
        Z.append((S - mean[:, None]) / sd[:, None])
    best, best_key = None, None
    for wv in simplex_grid(n, step):
        F = sum(wv[r] * Z[r] for r in range(n))
        m = metrics_from_ranks([_ranks_dense(F[i], rel[i]) for i in range(F.shape[0])], ks=(1, 5, 10))
        key = (round(m[metric], 9), round(m["MRR"], 9), -float(np.abs(wv - 1.0 / n).sum()))
        if best_key is None or key > best_key:
            best, best_key = wv, key
    return best
