"""Per-row quality of a translation: cosine, reconstruction loss, quick paired R@1.

These are the metrics every edge reports on its held-out pairs. Full retrieval
evaluation (R@K, MRR, mAP through Faiss indexes) lives in :mod:`bridge.retrieval`.
"""

from __future__ import annotations

import numpy as np

from .retrieval import l2_normalize
from .store import check_embeddings

__all__ = ["row_cosine", "reconstruction_loss", "paired_retrieval"]


def row_cosine(a, b) -> np.ndarray:
    """Cosine similarity of row i of ``a`` with row i of ``b``."""
    a = check_embeddings(a, "a").astype(np.float32, copy=False)
    b = check_embeddings(b, "b", dim=a.shape[1]).astype(np.float32, copy=False)
    if a.shape[0] != b.shape[0]:
        from .errors import DimensionMismatch

        raise DimensionMismatch(f"row counts differ: {a.shape[0]} vs {b.shape[0]}")
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def reconstruction_loss(x, x_rec) -> dict:
    """Per-sample ``1 - cos(x, x_rec)`` with its mean and median.

    Cosines are clipped to [-1, 1] first, so rounding never gives a negative loss.
    Returns ``{"per_sample": array, "mean": float, "median": float}``.
    """
    loss = 1.0 - np.clip(row_cosine(x, x_rec), -1.0, 1.0)
    return {"per_sample": loss, "mean": float(loss.mean()), "median": float(np.median(loss))}


def paired_retrieval(pred, target, labels=None, block: int = 2048) -> dict[str, float]:
    """R@1 and mean cosine of translated rows ``pred`` against their true ``target`` rows.

    The gallery is every target row. Without ``labels`` query i is correct when its
    nearest gallery row (cosine) is row i; with ``labels`` (rows that share a target, such
    as the captions of one image or the clips of one class, share a label) it is correct
    when its nearest gallery row carries its label.
    """
    pred = check_embeddings(pred, "pred").astype(np.float32, copy=False)
    target = check_embeddings(target, "target", dim=pred.shape[1]).astype(np.float32, copy=False)
    if pred.shape[0] != target.shape[0]:
        from .errors import DimensionMismatch

        raise DimensionMismatch(f"pred has {pred.shape[0]} rows but target has {target.shape[0]}")
    lab = np.arange(pred.shape[0]) if labels is None else np.asarray(labels)
    g = l2_normalize(target, check=False)
    p = l2_normalize(pred, check=False)
    hits = 0
    for s in range(0, p.shape[0], block):
        top = (p[s : s + block] @ g.T).argmax(1)
        hits += int((lab[top] == lab[s : s + block]).sum())
    cos = row_cosine(pred, target)
    return {"R@1": hits / p.shape[0], "cos": float(cos.mean()), "n": int(p.shape[0])}
