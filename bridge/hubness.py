"""Hubness-aware scoring: CSLS and QB-Norm (dynamic inverted softmax) with a query bank.

After a translation a few gallery rows (hubs) tend to be the nearest neighbour of many
queries. Both corrections here re-score a query ``q`` against a gallery row ``g`` with the
help of a **bank**: queries of the same kind (the route's own train or val rows, translated
along the same route), never the queries being evaluated. With ``s(q, g)`` the cosine of the
L2-normalised rows:

- ``"cosine"``: ``s(q, g)`` (the default everywhere);
- ``"csls"`` (``k``, default 10): ``2 s(q, g) - r_bank(g) - r_gallery(q)``, where
  ``r_bank(g)`` is the mean of the ``k`` largest ``s(b, g)`` over bank rows ``b`` and
  ``r_gallery(q)`` the mean of ``q``'s ``k`` largest ``s(q, g)`` over the gallery;
- ``"qbnorm"`` (``beta``, default 20; ``k``, default 1): dynamic inverted softmax (QB-Norm,
  Bogolin et al. 2022). The inverted-softmax score is ``beta s(q, g) - log sum_b
  exp(beta s(b, g))``. A gallery row is *activated* when it is among the ``k`` raw nearest
  rows of at least one bank query; a query whose raw top-1 row is activated is scored
  with the inverted softmax, any other query keeps the raw cosine.

**Ranking form.** Within one query both corrections only add a per-gallery-row bias and,
for QB-Norm, a per-query switch ``w_q`` in ``{0, 1}``: the ranking of every query is that of

    x(q, g) = s(q, g) + w_q * bias(g),     bias = -r_bank / 2 (CSLS), -logZ / beta (QB-Norm)

(CSLS divided by 2 with the per-query constant ``r_gallery(q)`` dropped; the inverted
softmax divided by ``beta``). ``x`` is the inner product of the augmented rows ``[q_hat,
w_q]`` and ``[g_hat, bias(g)]``: :func:`adjusted` returns them as lazy views (float32,
read block by block), so the exact streamed rank engine of :mod:`bridge.retrieval` ranks
the adjusted scores with its ties-against rule and its exact float64 re-scoring unchanged,
and a Faiss inner-product index over the augmented gallery searches them. The scores
returned by searches are this ranking form ``x``, not ``2 s - r_bank - r_gallery``.

Bank statistics stream: the bank goes a block at a time (a translated bank is translated
once), the gallery in blocks under it, the top-``k`` bank similarities of every gallery row
and a running (numerically stable) log-sum-exp are kept, so no bank x gallery matrix is
formed. Exactly identical gallery rows always get the same bias and activation (they are
grouped by their bytes), so duplicates tie exactly and count against the query.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .chunks import RowView, read_rows
from .errors import DimensionMismatch, EmptyData, InvalidParameter
from .retrieval import ENGINE_CELLS, l2_normalize, paired_sources, row_source

__all__ = ["SCORINGS", "Scoring", "parse_scoring", "Adjustment", "gallery_adjustment",
           "query_switch", "AugmentedRows", "adjusted", "hubness_stats"]

SCORINGS = ("cosine", "csls", "qbnorm")
_DEFAULT_K = {"cosine": None, "csls": 10, "qbnorm": 1}
_OPTIONS = {"cosine": (), "csls": ("k",), "qbnorm": ("beta", "k")}


@dataclass(frozen=True)
class Scoring:
    """A scoring rule: ``method`` in :data:`SCORINGS`, neighbourhood size ``k`` (CSLS: the
    k nearest averaged, default 10; QB-Norm: the k raw neighbours of a bank query that are
    activated, default 1; ``None`` picks the method's default) and QB-Norm's inverse
    temperature ``beta`` (default 20). Written as text by ``str()``: ``"cosine"``,
    ``"csls:k=10"``, ``"qbnorm:beta=20,k=1"`` (what :func:`parse_scoring` reads)."""

    method: str = "cosine"
    k: int | None = None
    beta: float = 20.0

    def __post_init__(self):
        from .params import check_int, check_real

        if not isinstance(self.method, str) or self.method not in SCORINGS:
            raise InvalidParameter(f"unknown scoring {self.method!r}; expected one of "
                                   f"{SCORINGS}")
        k = _DEFAULT_K[self.method] if self.k is None else check_int("k", self.k, low=1)
        if self.method == "cosine":
            k = None
        object.__setattr__(self, "k", k)
        beta = check_real("beta", self.beta, 0, None, closed="neither")
        object.__setattr__(self, "beta", beta)

    @property
    def is_cosine(self) -> bool:
        return self.method == "cosine"

    def __str__(self) -> str:
        if self.method == "csls":
            return f"csls:k={self.k}"
        if self.method == "qbnorm":
            return f"qbnorm:beta={self.beta:g},k={self.k}"
        return "cosine"


def parse_scoring(x) -> Scoring:
    """``x`` as a :class:`Scoring`: ``None`` (cosine), a Scoring, or text ``"method"`` or
    ``"method:key=value,..."`` (``"csls:k=5"``, ``"qbnorm:beta=30,k=1"``). Raises
    :class:`~bridge.errors.InvalidParameter` naming the bad text, option or value."""
    if x is None:
        return Scoring()
    if isinstance(x, Scoring):
        return x
    if not isinstance(x, str):
        raise InvalidParameter(f"scoring must be None, a Scoring or text like 'csls:k=10', "
                               f"got {x!r}")
    method, _, rest = x.strip().partition(":")
    method = method.strip().lower()
    if method not in SCORINGS:
        raise InvalidParameter(f"unknown scoring {method!r} in {x!r}; expected one of "
                               f"{SCORINGS}")
    opts = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in _OPTIONS[method]:
            allowed = ", ".join(_OPTIONS[method]) or "none"
            raise InvalidParameter(f"bad option {part!r} in scoring {x!r}; {method} takes "
                                   f"key=value options: {allowed}")
        if key in opts:
            raise InvalidParameter(f"option {key!r} given twice in scoring {x!r}")
        try:
            opts[key] = int(value) if key == "k" else float(value)
        except ValueError:
            raise InvalidParameter(f"option {key!r} of scoring {x!r} must be "
                                   f"{'an integer' if key == 'k' else 'a number'}, got "
                                   f"{value.strip()!r}") from None
    return Scoring(method, **opts)


@dataclass
class Adjustment:
    """Per-gallery-row statistics of a scoring, computed from a bank
    (:func:`gallery_adjustment`): the ``bias`` added to the cosine of a switched-on query
    (float64, one per gallery row), for QB-Norm the ``active`` mask of the gallery rows
    (else ``None``), and the bank size."""

    scoring: Scoring
    bias: np.ndarray
    active: np.ndarray | None
    n_bank: int

    @property
    def n_gallery(self) -> int:
        return int(self.bias.shape[0])


def _blocks(n_rows: int, n_other: int, width: int = 1024) -> tuple[int, int]:
    """Rows of one side and of the other per block pair, about :data:`ENGINE_CELLS` cells."""
    a = max(1, min(n_rows, width))
    return a, max(64, ENGINE_CELLS // a) if n_other else 1


def _duplicate_groups(block, n: int, step: int) -> np.ndarray:
    """For every row, the first row with exactly the same (normalised float32) bytes."""
    first: dict[bytes, int] = {}
    rep = np.empty(n, dtype=np.int64)
    for s in range(0, n, step):
        X = np.ascontiguousarray(block(s, min(n, s + step)))
        for i, row in enumerate(X):
            rep[s + i] = first.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16)
                                          .digest(), s + i)
    return rep


def _merge_topk(vals, idx, S, offset: int, k: int):
    """The ``k`` largest entries per row of ``[vals | S]`` (values and column indices)."""
    cols = np.arange(offset, offset + S.shape[1], dtype=np.int64)
    V = np.concatenate([vals, S], axis=1)
    I = np.concatenate([idx, np.broadcast_to(cols, S.shape)], axis=1)
    if V.shape[1] > k:
        sel = np.argpartition(-V, k - 1, axis=1)[:, :k]
        V, I = np.take_along_axis(V, sel, 1), np.take_along_axis(I, sel, 1)
    return V, I


def gallery_adjustment(gallery, bank, scoring, block: int = 1024) -> Adjustment:
    """The per-gallery-row bias (and QB-Norm's activation mask) of ``scoring`` from ``bank``.

    ``gallery`` and ``bank`` are arrays, memory maps or lazy row views (rows are
    L2-normalised as read). CSLS: ``bias = -r_bank / 2`` with ``r_bank(g)`` the mean of the
    ``k`` largest bank cosines of ``g`` (``k`` at most the bank size). QB-Norm: ``bias =
    -log sum_b exp(beta s(b, g)) / beta`` and ``active[g]`` when ``g`` is among the ``k``
    raw nearest gallery rows of some bank row. Cosine: a zero bias. Products are float32
    blocks (``block`` bank rows at a time), reductions float64.
    """
    sc = parse_scoring(scoring)
    ng, dg, gblock, _ = row_source(gallery, "gallery", False)
    nb, db, bblock, _ = row_source(bank, "bank", False)
    if dg != db:
        raise DimensionMismatch(f"the bank has dimension {db} but the gallery has dimension "
                                f"{dg}; the bank must be translated along the same route as "
                                f"the queries")
    if sc.is_cosine:
        return Adjustment(sc, np.zeros(ng), None, nb)
    if sc.method == "csls" and sc.k > nb:
        raise InvalidParameter(f"scoring {str(sc)!r} averages the k = {sc.k} nearest bank "
                               f"rows, but the bank has {nb} rows; lower k or use a larger bank")
    if sc.method == "qbnorm" and sc.k > ng:
        raise InvalidParameter(f"scoring {str(sc)!r} activates the k = {sc.k} nearest gallery "
                               f"rows of each bank row, but the gallery has {ng} rows")
    bb, gb = _blocks(nb, ng, block)
    k = sc.k
    top = np.full((k, ng), -np.inf) if sc.method == "csls" else None
    mx = np.full(ng, -np.inf)
    acc = np.zeros(ng)
    active = np.zeros(ng, dtype=bool) if sc.method == "qbnorm" else None
    for bs in range(0, nb, bb):
        B = bblock(bs, min(nb, bs + bb))   # a translated bank is translated once
        bv = np.full((B.shape[0], 0), -np.inf)
        bi = np.zeros((B.shape[0], 0), dtype=np.int64)
        for gs in range(0, ng, gb):
            ge = min(ng, gs + gb)
            S = (B @ gblock(gs, ge).T).astype(np.float64)
            if sc.method == "csls":
                T = np.concatenate([top[:, gs:ge], S], axis=0)
                top[:, gs:ge] = np.partition(T, T.shape[0] - k, axis=0)[-k:]
            else:
                m_new = np.maximum(mx[gs:ge], S.max(axis=0))
                acc[gs:ge] = (acc[gs:ge] * np.exp(sc.beta * (mx[gs:ge] - m_new))
                              + np.exp(sc.beta * (S - m_new)).sum(axis=0))
                mx[gs:ge] = m_new
                bv, bi = _merge_topk(bv, bi, S, gs, k)
        if active is not None:
            active[bi.reshape(-1)] = True
    if sc.method == "csls":
        bias = -top.mean(axis=0) / 2.0
    else:
        bias = -(mx + np.log(acc) / sc.beta)
    # exactly identical gallery rows share one bias and one activation
    rep = _duplicate_groups(gblock, ng, gb)
    if np.any(rep != np.arange(ng)):
        bias = bias[rep]
        if active is not None:
            grp = np.zeros(ng, dtype=bool)
            np.logical_or.at(grp, rep, active)
            active = grp[rep]
    return Adjustment(sc, bias, active, nb)


def _top1(queries, gallery, block: int = 1024) -> np.ndarray:
    """Each query's raw (cosine) nearest gallery row, streamed over blocks."""
    (nq, _, qblock, _), (ng, _, gblock, _) = paired_sources(queries, gallery, False)
    qb, gb = _blocks(nq, ng, block)
    out = np.empty(nq, dtype=np.int64)
    for s in range(0, nq, qb):
        Q = qblock(s, min(nq, s + qb))
        best = np.full(Q.shape[0], -np.inf)
        for gs in range(0, ng, gb):
            S = Q @ gblock(gs, min(ng, gs + gb)).T
            j = S.argmax(axis=1)
            v = S[np.arange(S.shape[0]), j]
            better = v > best
            best[better] = v[better]
            out[s:s + Q.shape[0]][better] = gs + j[better]
    return out


def query_switch(queries, gallery, adjustment: Adjustment, block: int = 1024) -> np.ndarray:
    """Per query, whether its score takes the gallery bias (float32 ones and zeros): CSLS
    always; QB-Norm when the query's raw nearest gallery row is activated; cosine never."""
    sc = adjustment.scoring
    n = row_source(queries, "queries", False)[0]
    if sc.is_cosine:
        return np.zeros(n, dtype=np.float32)
    if sc.method == "csls":
        return np.ones(n, dtype=np.float32)
    return adjustment.active[_top1(queries, gallery, block)].astype(np.float32)


class AugmentedRows(RowView):
    """Rows of ``source`` L2-normalised, with one more column ``extra`` (float32), read on
    demand: the augmented queries ``[q_hat, w_q]`` or gallery ``[g_hat, bias]`` of
    :func:`adjusted`. Supports the row-view protocol (shape, slices, index arrays)."""

    def __init__(self, source, extra):
        super().__init__(source)
        self.extra = np.asarray(extra, dtype=np.float32).reshape(-1)
        if self.extra.shape[0] != self.shape[0]:
            raise DimensionMismatch(f"expected one extra value per row ({self.shape[0]}), "
                                    f"got {self.extra.shape[0]}")
        self.shape = (self.shape[0], self.shape[1] + 1)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key):
        raw = np.asarray(read_rows(self.array, key))
        x = l2_normalize(raw.reshape(-1, raw.shape[-1]), check=False)
        idx = np.arange(*key.indices(self.shape[0])) if isinstance(key, slice) else key
        return np.ascontiguousarray(np.concatenate([x, self.extra[idx].reshape(-1, 1)], axis=1))


def _check_adjustment(adj, sc: Scoring, n_gallery: int) -> Adjustment:
    if adj.scoring != sc:
        raise InvalidParameter(f"the bank statistics were computed for scoring "
                               f"{str(adj.scoring)!r}, not {str(sc)!r}")
    if adj.n_gallery != n_gallery:
        raise DimensionMismatch(f"the bank statistics cover {adj.n_gallery} gallery rows; "
                                f"the gallery has {n_gallery}")
    return adj


def adjusted(queries, gallery, bank, scoring, block: int = 1024):
    """The augmented ``(queries, gallery)`` whose inner products are the adjusted scores in
    ranking form (see the module doc), as :class:`AugmentedRows` views: rank them with
    ``normalized=True`` (they are not to be normalised again).

    ``bank`` is the bank rows, or an :class:`Adjustment` already computed for this gallery
    and scoring by :func:`gallery_adjustment` (so several evaluations share one pass over
    the bank). Returns ``(queries, gallery, adjustment)``.
    """
    from .chunks import check_header

    sc = parse_scoring(scoring)
    queries, gallery = check_header(queries, "queries"), check_header(gallery, "gallery")
    ng = row_source(gallery, "gallery", False)[0]
    if isinstance(bank, Adjustment):
        adj = _check_adjustment(bank, sc, ng)
    else:
        if bank is None:
            raise InvalidParameter(f"scoring {str(sc)!r} needs a bank: rows of queries of "
                                   f"the same kind that are not the evaluated queries")
        adj = gallery_adjustment(gallery, bank, sc, block)
    w = query_switch(queries, gallery, adj, block)
    return AugmentedRows(queries, w), AugmentedRows(gallery, adj.bias), adj


def hubness_stats(queries, gallery, k: int = 10, scoring=None, bank=None,
                  block: int = 1024) -> dict:
    """How hub-ridden the ``k``-nearest-neighbour lists of ``queries`` in ``gallery`` are.

    The k-occurrence ``N_k(g)`` of a gallery row is the number of queries having it among
    their ``k`` nearest rows (by cosine, or by the adjusted score of ``scoring`` with
    ``bank``). Returns ``k``, ``skewness`` (the population skewness of ``N_k``; 0 when
    every row occurs equally often; large positive values mean hubs), ``anti_hubs`` (the
    share of gallery rows that are in nobody's top ``k``), ``max_occurrence`` (the largest
    ``N_k``) and the counts. Ties at the k-th place are broken arbitrarily.
    """
    from .params import check_int

    k = check_int("k", k, low=1)
    sc = parse_scoring(scoring)
    if sc.is_cosine:
        nq, dq, qblock, _ = row_source(queries, "queries", False)
        ng, dg, gblock, _ = row_source(gallery, "gallery", False)
    else:
        Qa, Ga, _ = adjusted(queries, gallery, bank, sc, block)
        nq, dq, qblock, _ = row_source(Qa, "queries", True)
        ng, dg, gblock, _ = row_source(Ga, "gallery", True)
    if dq != dg:
        raise DimensionMismatch(f"queries have dimension {dq} but the gallery has "
                                f"dimension {dg}")
    if k > ng:
        raise InvalidParameter(f"parameter 'k' must be at most the gallery size ({ng}), "
                               f"got {k}")
    if nq == 0:
        raise EmptyData("no queries to score")
    counts = np.zeros(ng, dtype=np.int64)
    qb, gb = _blocks(nq, ng, block)
    for s in range(0, nq, qb):
        Q = qblock(s, min(nq, s + qb))
        v = np.full((Q.shape[0], 0), -np.inf)
        i = np.zeros((Q.shape[0], 0), dtype=np.int64)
        for gs in range(0, ng, gb):
            v, i = _merge_topk(v, i, Q @ gblock(gs, min(ng, gs + gb)).T, gs, k)
        counts += np.bincount(i.reshape(-1), minlength=ng)
    c = counts.astype(np.float64)
    sd = c.std()
    skew = float(np.mean((c - c.mean()) ** 3) / sd ** 3) if sd > 0 else 0.0
    return {"k": int(k), "skewness": skew, "anti_hubs": float(np.mean(counts == 0)),
            "max_occurrence": int(counts.max()), "n_queries": int(nq), "n_gallery": int(ng),
            "scoring": str(sc)}
