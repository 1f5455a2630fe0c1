"""Retrieval evaluation through Faiss: indexes, search, R@K, MRR, median rank, mAP.

Similarity is cosine: queries and gallery rows are L2-normalised and compared by inner
product. ``kind="flat"`` (the default) is exact; ``"hnsw"`` and ``"ivf"`` are approximate
indexes for large galleries.

Relevance (which gallery rows are right for a query) is given as one of

- ``None``: query i matches gallery row i (paired rows, same count);
- an int array of length ``n_queries``: the one right gallery row of each query;
- a list of int arrays: the right gallery rows of each query (class-level or one image with
  five captions);
- a boolean matrix ``(n_queries, n_gallery)``.

Ranks are 1-based and pessimistic under ties: a wrong gallery row that scores *the same* as a
right one counts as ranked above it, so duplicate gallery rows never inflate a score.

With ``kind="flat"`` every rank is exact (blocked inner products, the computation of
``faiss.IndexFlatIP``). With an approximate index the metrics come from the top ``depth``
rows the index returns: a right row beyond ``depth`` counts as not found (reciprocal rank 0,
rank ``inf``), so MRR and mAP are then "at depth".
"""

from __future__ import annotations

import math

import numpy as np

from .errors import BridgeError, DimensionMismatch, EmptyData
from .store import check_embeddings

__all__ = [
    "l2_normalize",
    "normalize",
    "build_index",
    "search",
    "as_relevance",
    "ranks_of_relevant",
    "metrics_from_ranks",
    "retrieval_metrics",
    "bidirectional_metrics",
    "recovery_ratio",
]

INDEX_KINDS = ("flat", "hnsw", "ivf")


def l2_normalize(x, name: str = "embeddings", check: bool = True) -> np.ndarray:
    """Rows of ``x`` scaled to unit length, float32, C-contiguous (what Faiss wants).

    The package's one normaliser. All-zero rows stay zero. ``check=False`` skips the
    validation of :func:`~bridge.store.check_embeddings` for arrays already checked.
    """
    if check:
        x = check_embeddings(x, name)
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


normalize = l2_normalize  # the name the retrieval functions below use


def build_index(gallery, kind: str = "flat", *, hnsw_m: int = 32, ef_search: int = 128,
                nlist: int | None = None, nprobe: int = 16, seed: int = 0,
                normalized: bool = False):
    """A Faiss inner-product index over the (normalised) gallery rows.

    ``flat``: exact. ``hnsw``: graph index (``hnsw_m`` links a node, ``ef_search`` search
    breadth). ``ivf``: inverted lists over ``nlist`` k-means cells (default ``4 * sqrt(n)``),
    searching ``nprobe`` of them.
    """
    import faiss

    if kind not in INDEX_KINDS:
        raise BridgeError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
    g = gallery if normalized else normalize(gallery, "gallery")
    n, d = g.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = int(ef_search)
    else:
        cells = int(nlist or max(1, min(n // 39, int(4 * math.sqrt(n)))))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        index.train(g)
        index.nprobe = int(min(nprobe, cells))
    index.add(g)
    return index


def search(queries, gallery_or_index, k: int = 10, kind: str = "flat", **index_opts):
    """Top ``k`` gallery rows of each query by cosine: ``(scores, rows)``, best first.

    ``gallery_or_index`` is an array (an index of ``kind`` is built over it) or an index
    from :func:`build_index`. Missing results (fewer than ``k`` found) have row ``-1``.
    """
    q = normalize(queries, "queries")
    if isinstance(gallery_or_index, np.ndarray) or hasattr(gallery_or_index, "detach"):
        index = build_index(gallery_or_index, kind, **index_opts)
    else:
        index = gallery_or_index
    if q.shape[1] != index.d:
        raise DimensionMismatch(f"queries have dimension {q.shape[1]} but the index holds "
                                f"dimension {index.d}")
    k = int(min(k, index.ntotal))
    scores, rows = index.search(q, k)
    return scores, rows


def as_relevance(relevant, n_queries: int, n_gallery: int) -> list[np.ndarray]:
    """Normalise any accepted form of ``relevant`` into a list of sorted row arrays."""
    if relevant is None:
        if n_queries != n_gallery:
            raise DimensionMismatch(
                f"relevant=None pairs query i with gallery row i, but there are {n_queries} "
                f"queries and {n_gallery} gallery rows; pass the right rows per query")
        return [np.array([i]) for i in range(n_queries)]
    if isinstance(relevant, np.ndarray) and relevant.ndim == 2:
        if relevant.shape != (n_queries, n_gallery):
            raise DimensionMismatch(f"relevance matrix has shape {relevant.shape}; expected "
                                    f"({n_queries}, {n_gallery})")
        out = [np.flatnonzero(r) for r in relevant.astype(bool)]
    elif isinstance(relevant, np.ndarray) and relevant.ndim == 1 and relevant.dtype != object:
        if relevant.shape[0] != n_queries:
            raise DimensionMismatch(f"relevant has {relevant.shape[0]} entries; expected one "
                                    f"per query ({n_queries})")
        out = [np.array([int(r)]) for r in relevant]
    else:
        relevant = list(relevant)
        if len(relevant) != n_queries:
            raise DimensionMismatch(f"relevant has {len(relevant)} entries; expected one per "
                                    f"query ({n_queries})")
        out = [np.unique(np.atleast_1d(np.asarray(r, dtype=np.int64))) for r in relevant]
    for i, r in enumerate(out):
        if r.size == 0:
            raise EmptyData(f"query {i} has no relevant gallery row")
        if r.min() < 0 or r.max() >= n_gallery:
            bad = int(r[(r < 0) | (r >= n_gallery)][0])
            raise DimensionMismatch(f"query {i} names gallery row {bad}; the gallery has rows "
                                    f"0..{n_gallery - 1}")
    return out


def _ranks_dense(scores: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Ranks of the right rows ``rel`` within one query's full score row (pessimistic ties)."""
    mask = np.zeros(scores.shape[0], dtype=bool)
    mask[rel] = True
    wrong = np.sort(scores[~mask])
    rs = np.sort(scores[rel])[::-1]
    # wrong rows scoring >= each right score, plus the right rows ahead of it
    above = wrong.size - np.searchsorted(wrong, rs, side="left")
    return above + np.arange(1, rs.size + 1)


def ranks_of_relevant(queries, gallery, relevant=None, block: int = 1024,
                      normalized: bool = False) -> list[np.ndarray]:
    """Exact 1-based ranks of every right gallery row, per query, best first."""
    q = queries if normalized else normalize(queries, "queries")
    g = gallery if normalized else normalize(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise DimensionMismatch(f"queries have dimension {q.shape[1]} but the gallery has "
                                f"dimension {g.shape[1]}")
    rel = as_relevance(relevant, q.shape[0], g.shape[0])
    out = []
    for s in range(0, q.shape[0], block):
        S = q[s:s + block] @ g.T
        out.extend(_ranks_dense(S[i], rel[s + i]) for i in range(S.shape[0]))
    return out


def _ranks_from_lists(rows: np.ndarray, rel: list[np.ndarray]) -> list[np.ndarray]:
    """Ranks of the right rows within returned top lists; rows not returned rank ``inf``."""
    out = []
    for top, r in zip(rows, rel):
        pos = {int(x): i + 1 for i, x in enumerate(top) if x >= 0}
        found = sorted(pos[int(x)] for x in r if int(x) in pos)
        ranks = np.full(r.size, np.inf)
        ranks[:len(found)] = found
        out.append(ranks)
    return out


def metrics_from_ranks(ranks: list[np.ndarray], ks=(1, 5, 10)) -> dict:
    """R@K, MRR, median rank and mAP from per-query ranks of the right rows (best first).

    R@K: share of queries with a right row in the top K. MRR: mean of 1 / first right rank.
    Median rank: median first right rank. mAP: mean over queries of average precision over
    all right rows (equal to MRR when each query has one right row).
    """
    if not ranks:
        raise EmptyData("no queries to score")
    first = np.array([r[0] for r in ranks], dtype=np.float64)
    ap = []
    for r in ranks:
        hits = np.arange(1, r.size + 1)
        ap.append(float(np.sum(np.where(np.isfinite(r), hits / r, 0.0)) / r.size))
    med = float(np.median(first))
    out = {f"R@{k}": float(np.mean(first <= k)) for k in ks}
    out.update({
        "MRR": float(np.mean(1.0 / first)),
        "median_rank": med if math.isfinite(med) else None,
        "mAP": float(np.mean(ap)),
        "n_queries": int(first.size),
    })
    return out


def retrieval_metrics(queries, gallery, relevant=None, ks=(1, 5, 10), kind: str = "flat",
                      depth: int | None = None, block: int = 1024, **index_opts) -> dict:
    """Retrieve gallery rows for each query and score the ranking (see the module doc).

    ``kind="flat"`` ranks exactly; ``"hnsw"``/``"ivf"`` search the top ``depth`` rows
    (default ``max(100, max(ks))``) in a Faiss index. Returns R@K for each K in ``ks``,
    MRR, median rank, mAP, the query and gallery counts and the index kind.
    """
    q = normalize(queries, "queries")
    g = normalize(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise DimensionMismatch(f"queries have dimension {q.shape[1]} but the gallery has "
                                f"dimension {g.shape[1]}")
    ks = tuple(int(k) for k in ks)
    if kind == "flat":
        ranks = ranks_of_relevant(q, g, relevant, block=block, normalized=True)
    else:
        rel = as_relevance(relevant, q.shape[0], g.shape[0])
        index = build_index(g, kind, normalized=True, **index_opts)
        _, rows = search(q, index, k=depth or max(100, max(ks)))
        ranks = _ranks_from_lists(rows, rel)
    m = metrics_from_ranks(ranks, ks)
    m.update({"n_gallery": int(g.shape[0]), "index": kind})
    return m


def bidirectional_metrics(a, b, relevant=None, ks=(1, 5, 10), **kw) -> dict:
    """Retrieval both ways between paired sets ``a`` and ``b``: ``{"a->b": .., "b->a": ..}``.

    ``relevant`` is given for ``a`` as queries; the reverse relevance is derived from it.
    """
    fwd = retrieval_metrics(a, b, relevant, ks=ks, **kw)
    na, nb = np.asarray(a).shape[0], np.asarray(b).shape[0]
    rel = as_relevance(relevant, na, nb)
    back = [[] for _ in range(nb)]
    for i, r in enumerate(rel):
        for j in r:
            back[int(j)].append(i)
    keep = np.array([len(x) > 0 for x in back])
    b_rows = np.flatnonzero(keep)
    rev = retrieval_metrics(np.asarray(b)[b_rows], a, [back[j] for j in b_rows], ks=ks, **kw)
    return {"a->b": fwd, "b->a": rev}


def recovery_ratio(bridged: dict, native: dict, keys=None) -> dict:
    """``bridged[key] / native[key]`` for the ranking metrics both hold (higher is better)."""
    keys = keys or [k for k in bridged if (k.startswith("R@") or k in ("MRR", "mAP"))
                    and k in native]
    return {k: (float(bridged[k]) / float(native[k]) if native[k] else float("nan"))
            for k in keys}
