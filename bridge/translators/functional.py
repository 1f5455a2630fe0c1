"""Closed-form maths behind the translators, as pure numpy functions.

Each function takes paired rows ``X`` (n, dx) and ``Y`` (n, dy) and returns the
parameters of a map; the classes in this package only store and apply them.
"""

from __future__ import annotations

import numpy as np

from ..retrieval import l2_normalize

__all__ = [
    "ridge_fit",
    "procrustes_fit",
    "affine_apply",
    "relative_weights",
]


def ridge_fit(
    X: np.ndarray, Y: np.ndarray, alpha: float = 0.0, fit_intercept: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Least squares ``Y ~ X W + b`` with an L2 penalty ``alpha ||W||^2``.

    Solved in float64 through the normal equations (or ``lstsq`` when ``alpha == 0``
    and the system is rank-deficient). Returns ``(W (dx, dy), b (dy,))``.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if fit_intercept:
        mx, my = X.mean(0), Y.mean(0)
        Xc, Yc = X - mx, Y - my
    else:
        mx, my = np.zeros(X.shape[1]), np.zeros(Y.shape[1])
        Xc, Yc = X, Y
    if alpha > 0:
        A = Xc.T @ Xc + alpha * np.eye(X.shape[1])
        W = np.linalg.solve(A, Xc.T @ Yc)
    else:
        W = np.linalg.lstsq(Xc, Yc, rcond=None)[0]
    b = my - mx @ W
    return W.astype(np.float32), b.astype(np.float32)


def procrustes_fit(
    X: np.ndarray, Y: np.ndarray, center: bool = True, scale: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Orthogonal Procrustes ``Y ~ s (X - mx) R + my`` with ``R`` semi-orthogonal.

    ``R`` has shape (dx, dy): when ``dx != dy`` it has orthonormal rows (dx <= dy) or
    columns (dx > dy), which is the Procrustes solution for spaces padded with zeros to
    the larger dimension. With ``scale`` the fitted scale ``s`` is the ratio of the RMS
    norms of the centred sides, ``sqrt(sum |Y - my|^2 / sum |X - mx|^2)``, so translated
    rows keep the spread of the target space around its centroid. (The least-squares scale
    ``trace(S) / sum |X - mx|^2`` shrinks them towards the centroid by the fit's
    correlation, which lowers cosine retrieval after the centroid is added back and
    compounds over hops.) Returns ``(R, mx, my, s)``.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    mx = X.mean(0) if center else np.zeros(X.shape[1])
    my = Y.mean(0) if center else np.zeros(Y.shape[1])
    Xc, Yc = X - mx, Y - my
    U, S, Vt = np.linalg.svd(Xc.T @ Yc, full_matrices=False)
    R = U @ Vt
    s = 1.0
    if scale:
        s = float(np.sqrt((Yc**2).sum() / max((Xc**2).sum(), 1e-12)))
    return R.astype(np.float32), mx.astype(np.float32), my.astype(np.float32), s


def affine_apply(
    X: np.ndarray, W: np.ndarray, b: np.ndarray | None = None, mx: np.ndarray | None = None,
    s: float = 1.0,
) -> np.ndarray:
    """``s (X - mx) W + b`` in float32."""
    X = np.asarray(X, dtype=np.float32)
    if mx is not None:
        X = X - mx
    out = X @ W
    if s != 1.0:
        out = out * np.float32(s)
    if b is not None:
        out = out + b
    return out


def relative_weights(
    X: np.ndarray, anchors: np.ndarray, k: int = 64, power: float = 8.0, batch: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Relative representation of ``X`` against anchor rows (ASIF style).

    Cosine similarities to every anchor are kept for the ``k`` nearest anchors only,
    clipped at zero and raised to ``power`` (the sharpening ASIF uses), then normalised to
    sum to one. Returns ``(idx (n, k), w (n, k))``.
    """
    Xn = l2_normalize(X, check=False)
    An = l2_normalize(anchors, check=False)
    k = min(k, An.shape[0])
    idx_out = np.empty((Xn.shape[0], k), dtype=np.int64)
    w_out = np.empty((Xn.shape[0], k), dtype=np.float32)
    for s in range(0, Xn.shape[0], batch):
        sims = Xn[s : s + batch] @ An.T
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sims, idx, axis=1)
        w = np.clip(top, 0.0, None) ** power
        tot = w.sum(1, keepdims=True)
        # a row with no positive similarity falls back to uniform weights
        w = np.where(tot > 0, w / np.where(tot > 0, tot, 1.0), 1.0 / k)
        idx_out[s : s + batch] = idx
        w_out[s : s + batch] = w
    return idx_out, w_out
