"""Per-row quality of a translation: cosine, reconstruction loss, quick paired R@1.

These are the metrics every edge reports on its held-out pairs. Full retrieval
evaluation (R@K, MRR, mAP through Faiss indexes) lives in :mod:`bridge.retrieval`.
"""

from __future__ import annotations

import numpy as np

from .errors import DimensionMismatch, InvalidParameter
from .retrieval import l2_normalize, top1_hits
from .store import check_embeddings

__all__ = ["row_cosine", "reconstruction_loss", "paired_retrieval", "rows_by_label"]


def row_cosine(a, b) -> np.ndarray:
    """Cosine similarity of row i of ``a`` with row i of ``b`` (all-zero rows give 0)."""
    a = check_embeddings(a, "a")
    b = check_embeddings(b, "b", dim=a.shape[1])
    if a.shape[0] != b.shape[0]:
        raise DimensionMismatch(f"row counts differ: {a.shape[0]} vs {b.shape[0]}")
    return (l2_normalize(a, check=False) * l2_normalize(b, check=False)).sum(1)


def reconstruction_loss(x, x_rec) -> dict:
    """Per-sample ``1 - cos(x, x_rec)`` with its mean and median.

    Cosines are clipped to [-1, 1] first, so rounding never gives a negative loss.
    Returns ``{"per_sample": array, "mean": float, "median": float}``.
    """
    loss = 1.0 - np.clip(row_cosine(x, x_rec), -1.0, 1.0)
    return {"per_sample": loss, "mean": float(loss.mean()), "median": float(np.median(loss))}


def rows_by_label(labels) -> list[np.ndarray]:
    """For each row i, the (sorted) rows that carry row i's label."""
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise InvalidParameter(f"labels must be one label per row (1-D), got shape {lab.shape}")
    try:
        _, inv = np.unique(lab, return_inverse=True)
    except TypeError as e:
        raise InvalidParameter(f"labels must be mutually comparable (all numbers or all "
                               f"strings), got dtype {lab.dtype}: {e}") from None
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    bounds = np.flatnonzero(np.diff(inv[order])) + 1
    groups = np.split(order, bounds)
    return [groups[k] for k in inv]


def paired_retrieval(pred, target, labels=None, block: int = 1024) -> dict[str, float]:
    """R@1 and mean cosine of translated rows ``pred`` against their true ``target`` rows.

    The gallery is every target row. Without ``labels`` the right gallery row of query i
    is row i; with ``labels`` (rows that share a target, such as the captions of one image
    or the clips of one class, share a label) the right rows of query i are all gallery
    rows carrying its label. R@1 is the share of queries whose first right row has rank 1
    as :func:`bridge.retrieval.ranks_of_relevant` counts ranks (computed by its label
    form, :func:`bridge.retrieval.top1_hits`): ties
    count against the query, so a wrong gallery row scoring exactly as high as the right
    one (a duplicate under another label) makes it a miss. ``block`` queries are
    scored at a time. Returns ``R@1``, ``cos`` (mean
    row cosine of ``pred`` with its own target) and ``n`` (the number of queries).
    """
    pred = check_embeddings(pred, "pred")
    target = check_embeddings(target, "target", dim=pred.shape[1])
    if pred.shape[0] != target.shape[0]:
        raise DimensionMismatch(f"pred has {pred.shape[0]} rows but target has {target.shape[0]}")
    if labels is None:
        lab = np.arange(pred.shape[0])
    else:
        lab = np.asarray(labels)
        if lab.ndim != 1 or lab.shape[0] != pred.shape[0]:
            raise DimensionMismatch(f"labels has shape {lab.shape}; expected one label per row "
                                    f"of pred ({pred.shape[0]},)")
        try:
            lab = np.unique(lab, return_inverse=True)[1].reshape(-1)
        except TypeError as e:
            raise InvalidParameter(f"labels must be mutually comparable (all numbers or all "
                                   f"strings), got dtype {lab.dtype}: {e}") from None
    p = l2_normalize(pred, check=False)
    g = l2_normalize(target, check=False)
    hits = int(top1_hits(p, g, lab, lab, normalized=True).sum())
    cos = (p * g).sum(1)
    return {"R@1": hits / p.shape[0], "cos": float(cos.mean()), "n": int(p.shape[0])}
