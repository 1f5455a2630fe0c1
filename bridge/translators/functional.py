"""Closed-form maths behind the translators, as pure numpy functions.

Each function takes paired rows ``X`` (n, dx) and ``Y`` (n, dy) and returns the
parameters of a map; the classes in this package only store and apply them.

Ridge and Procrustes need only the pairs' first and second moments, which
:func:`pair_moments` accumulates in one pass over row blocks (float64, about a shifted
origin so that large means cost no precision). Rows may be in memory, memory-mapped
(float16 included) or lazy views (:class:`bridge.chunks.RowView`): working memory is one
block plus the ``(dx + dy)^2`` moments, whatever the number of pairs.
"""

from __future__ import annotations

import numpy as np

from ..retrieval import l2_normalize

__all__ = [
    "PairMoments",
    "pair_moments",
    "ridge_from_moments",
    "procrustes_from_moments",
    "ridge_fit",
    "procrustes_fit",
    "affine_apply",
    "relative_weights",
]


#: rows per block when :func:`pair_moments` streams the pairs
MOMENT_BLOCK = 16384


class PairMoments:
    """Sums of paired rows about a shift ``(cx, cy)``: ``n``, ``Sx = sum(x - cx)``, ``Sy``,
    ``Pxx = sum (x - cx)^T (x - cx)``, ``Pxy``, ``qx = sum |x - cx|^2``, ``qy``."""

    def __init__(self, cx: np.ndarray, cy: np.ndarray):
        dx, dy = cx.size, cy.size
        self.cx, self.cy, self.n = cx, cy, 0
        self.Sx, self.Sy = np.zeros(dx), np.zeros(dy)
        self.Pxx, self.Pxy = np.zeros((dx, dx)), np.zeros((dx, dy))
        self.qx = self.qy = 0.0

    def add(self, X: np.ndarray, Y: np.ndarray) -> None:
        A = np.asarray(X, dtype=np.float64) - self.cx
        B = np.asarray(Y, dtype=np.float64) - self.cy
        self.n += A.shape[0]
        self.Sx += A.sum(0)
        self.Sy += B.sum(0)
        self.Pxx += A.T @ A
        self.Pxy += A.T @ B
        self.qx += float(np.einsum("ij,ij->", A, A))
        self.qy += float(np.einsum("ij,ij->", B, B))

    def plus(self, other: "PairMoments", weight: float = 1.0) -> "PairMoments":
        """New moments of these rows and ``other``'s, each of ``other``'s rows counting
        ``weight`` times (a weighted least-squares or Procrustes fit: ``n`` becomes the
        total weight). ``other`` must share this shift and dimensions."""
        if not (isinstance(weight, (int, float)) and np.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        if other.cx.shape != self.cx.shape or other.cy.shape != self.cy.shape \
                or not (np.array_equal(other.cx, self.cx) and np.array_equal(other.cy, self.cy)):
            raise ValueError("moments to add must share their shift and dimensions")
        out = PairMoments(self.cx, self.cy)
        w = float(weight)
        out.n = self.n + w * other.n
        out.Sx, out.Sy = self.Sx + w * other.Sx, self.Sy + w * other.Sy
        out.Pxx, out.Pxy = self.Pxx + w * other.Pxx, self.Pxy + w * other.Pxy
        out.qx, out.qy = self.qx + w * other.qx, self.qy + w * other.qy
        return out

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        return self.cx + self.Sx / self.n, self.cy + self.Sy / self.n

    def centred(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """``(Xc^T Xc, Xc^T Yc, |Xc|^2, |Yc|^2)`` of the rows centred on their own means."""
        n, Sx, Sy = self.n, self.Sx, self.Sy
        return (self.Pxx - np.outer(Sx, Sx) / n, self.Pxy - np.outer(Sx, Sy) / n,
                self.qx - float(Sx @ Sx) / n, self.qy - float(Sy @ Sy) / n)

    def about(self, centre: bool):
        """``(Xc^T Xc, Xc^T Yc, |Xc|^2, |Yc|^2, mx, my)``: about the rows' own means
        (``centre``) or about the origin (zero means)."""
        if centre:
            return (*self.centred(), *self.means())
        xx = self.raw()
        return (*xx, np.zeros(xx[0].shape[0]), np.zeros(xx[1].shape[1]))

    def raw(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """The same about the origin: ``(X^T X, X^T Y, |X|^2, |Y|^2)``."""
        n, cx, cy, Sx, Sy = self.n, self.cx, self.cy, self.Sx, self.Sy
        xx = self.Pxx + np.outer(cx, Sx) + np.outer(Sx, cx) + n * np.outer(cx, cx)
        xy = self.Pxy + np.outer(cx, Sy) + np.outer(Sx, cy) + n * np.outer(cx, cy)
        return (xx, xy, self.qx + 2 * float(cx @ Sx) + n * float(cx @ cx),
                self.qy + 2 * float(cy @ Sy) + n * float(cy @ cy))


def pair_moments(X, Y, block: int = MOMENT_BLOCK, names=("X", "Y"),
                 shift=None) -> PairMoments:
    """The moments of paired rows, read ``block`` rows at a time (see the module doc).

    Rows not already validated in memory (a memory map or a lazy view) are checked for
    NaN/inf block by block in the same pass, naming the row in the whole array
    (:class:`~bridge.errors.InvalidEmbeddings`). ``shift`` ``(cx, cy)`` sets the origin the
    sums are taken about (default: the first block's means); moments to be added with
    :meth:`PairMoments.plus` need the same one."""
    from ..chunks import lazy, read_rows
    from ..store import check_finite_rows

    n = int(X.shape[0])
    checked = [lazy(a) or isinstance(a, np.memmap) for a in (X, Y)]

    def rows(lo):
        part = slice(lo, min(n, lo + block))
        out = []
        for a, check, name in zip((X, Y), checked, names):
            r = np.asarray(read_rows(a, part), dtype=np.float64)
            if check:
                check_finite_rows(r, name, lo)
            out.append(r)
        return out

    x0, y0 = rows(0)
    m = PairMoments(x0.mean(0), y0.mean(0)) if shift is None else PairMoments(*shift)
    m.add(x0, y0)
    for lo in range(block, n, block):
        m.add(*rows(lo))
    return m


def _moments(X, Y) -> PairMoments:
    return X if isinstance(X, PairMoments) else pair_moments(X, Y)


def ridge_from_moments(m: PairMoments, alpha: float = 0.0,
                       fit_intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Ridge ``Y ~ X W + b`` from :func:`pair_moments` (see :func:`ridge_fit`)."""
    A, B, _, _, mx, my = m.about(fit_intercept)
    if alpha > 0:
        W = np.linalg.solve(A + alpha * np.eye(A.shape[0]), B)
    else:
        # the minimum-norm solution of the normal equations: lstsq's answer on the rows
        W = np.linalg.lstsq(A, B, rcond=None)[0]
    b = my - mx @ W
    return W.astype(np.float32), b.astype(np.float32)


def ridge_fit(X, Y=None, alpha: float = 0.0,
              fit_intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Least squares ``Y ~ X W + b`` with an L2 penalty ``alpha ||W||^2``.

    Solved in float64 through the normal equations of the pairs' moments (one streamed
    pass, :func:`pair_moments`; ``X`` may also be a :class:`PairMoments`), the
    minimum-norm solution when ``alpha == 0`` and the system is rank-deficient. Returns
    ``(W (dx, dy), b (dy,))``.
    """
    return ridge_from_moments(_moments(X, Y), alpha, fit_intercept)


def procrustes_from_moments(m: PairMoments, center: bool = True, scale: bool = True):
    """Orthogonal Procrustes from :func:`pair_moments` (see :func:`procrustes_fit`)."""
    _, C, tx, ty, mx, my = m.about(center)
    U, S, Vt = np.linalg.svd(C, full_matrices=False)
    R = U @ Vt
    s = float(np.sqrt(max(ty, 0.0) / max(tx, 1e-12))) if scale else 1.0
    return R.astype(np.float32), mx.astype(np.float32), my.astype(np.float32), s


def procrustes_fit(
    X, Y=None, center: bool = True, scale: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Orthogonal Procrustes ``Y ~ s (X - mx) R + my`` with ``R`` semi-orthogonal.

    ``R`` has shape (dx, dy): when ``dx != dy`` it has orthonormal rows (dx <= dy) or
    columns (dx > dy), which is the Procrustes solution for spaces padded with zeros to
    the larger dimension. With ``scale`` the fitted scale ``s`` is the ratio of the RMS
    norms of the centred sides, ``sqrt(sum |Y - my|^2 / sum |X - mx|^2)``, so translated
    rows keep the spread of the target space around its centroid. (The least-squares scale
    ``trace(S) / sum |X - mx|^2`` shrinks them towards the centroid by the fit's
    correlation, which lowers cosine retrieval after the centroid is added back and
    compounds over hops.) One streamed pass over the pairs (:func:`pair_moments`; ``X``
    may also be a :class:`PairMoments`). Returns ``(R, mx, my, s)``.
    """
    return procrustes_from_moments(_moments(X, Y), center, scale)


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
