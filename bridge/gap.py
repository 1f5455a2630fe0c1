"""Modality and language gap metrics between two embedding spaces.

Pure numpy / scikit-learn functions that return plain floats (or a ``dict[str, float]``):

- :func:`centroid_distance` -- distance between the centroids of L2-normalised rows, the
  "modality gap" of Liang et al. 2022 ("Mind the Gap");
- :func:`linear_separability` -- held-out accuracy of a logistic regression that tells rows
  of ``a`` from rows of ``b`` (0.5: indistinguishable, 1.0: fully separated);
- :func:`alignment` and :func:`uniformity` -- Wang & Isola 2020 (paired rows / one space);
- :func:`linear_cka` -- linear centred kernel alignment of paired rows (Kornblith et al.
  2019); the two spaces may have different dimensions;
- :func:`mutual_knn` -- mutual nearest-neighbour alignment of paired rows (Huh et al. 2024,
  "The Platonic Representation Hypothesis");
- :func:`gap_report` and :func:`gap_table` -- all of them for one pair / many pairs of nodes.

``centroid_distance``, ``linear_separability`` and ``alignment`` compare coordinates, so
they need both arrays in one space (same dimension); translate one node into the other's
space first. ``linear_cka`` and ``mutual_knn`` compare the geometry of paired rows and work
across spaces of any dimensions.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np

from .errors import DimensionMismatch, EmptyData, InvalidEmbeddings, InvalidParameter, UnknownNode
from .retrieval import l2_normalize
from .store import check_embeddings

__all__ = [
    "centroid_distance",
    "linear_separability",
    "alignment",
    "uniformity",
    "linear_cka",
    "mutual_knn",
    "gap_report",
    "gap_table",
]

_EPS = 1e-12


# ---------------------------------------------------------------------------
# helpers


def _f64(x, name: str, dim: int | None = None) -> np.ndarray:
    return np.asarray(check_embeddings(x, name, dim=dim), dtype=np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    return l2_normalize(x, check=False)


def _same_dim(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise DimensionMismatch(
            f"{what} compares coordinates, so a and b must live in one space: a has "
            f"dimension {a.shape[1]}, b has dimension {b.shape[1]}; translate one into the "
            "other's space first"
        )


def _same_rows(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise DimensionMismatch(
            f"{what} needs paired rows (row i of a pairs with row i of b): a has "
            f"{a.shape[0]} rows, b has {b.shape[0]}"
        )


def _min_rows(x: np.ndarray, n: int, name: str, what: str) -> None:
    if x.shape[0] < n:
        raise EmptyData(f"{what}: {name} has {x.shape[0]} row(s); expected at least {n}")


def _subsample(n: int, max_rows: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_rows, replace=False))


# ---------------------------------------------------------------------------
# metrics


def centroid_distance(a, b, normalize: bool = True) -> float:
    """Euclidean distance between the centroid of ``a`` and the centroid of ``b``.

    With ``normalize=True`` (default) every row is first scaled to unit length, as in
    Liang et al. 2022; the result then lies in ``[0, 2]``. With ``normalize=False`` the raw
    rows are averaged (a pure shift of a cloud by ``v`` gives ``|v|``).
    """
    a = _f64(a, "a")
    b = _f64(b, "b")
    _same_dim(a, b, "centroid_distance")
    if normalize:
        a, b = _unit(a), _unit(b)
    return float(np.linalg.norm(a.mean(0) - b.mean(0)))


def linear_separability(
    a,
    b,
    seed: int = 0,
    test_size: float = 0.3,
    normalize: bool = True,
    max_rows: int | None = 5000,
    C: float = 1.0,
) -> float:
    """Held-out accuracy of a logistic regression telling rows of ``a`` from rows of ``b``.

    Classes are balanced by subsampling the larger one (at most ``max_rows`` per class),
    split into train/test with ``test_size`` (stratified), features standardised on the
    training rows. About 0.5 means the two clouds are indistinguishable, 1.0 that a
    hyperplane separates them. Deterministic for a given ``seed``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a = _f64(a, "a")
    b = _f64(b, "b")
    _same_dim(a, b, "linear_separability")
    if not 0.0 < test_size < 1.0:
        raise InvalidParameter(f"test_size must lie strictly between 0 and 1, got {test_size}")
    _min_rows(a, 4, "a", "linear_separability")
    _min_rows(b, 4, "b", "linear_separability")
    rng = np.random.default_rng(seed)
    m = min(a.shape[0], b.shape[0])
    if max_rows is not None:
        m = min(m, int(max_rows))
    a = a[np.sort(rng.choice(a.shape[0], size=m, replace=False))]
    b = b[np.sort(rng.choice(b.shape[0], size=m, replace=False))]
    if normalize:
        a, b = _unit(a), _unit(b)
    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(m, dtype=np.int64), np.ones(m, dtype=np.int64)])
    n_test = max(2, int(round(test_size * 2 * m)))
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=n_test, stratify=y, random_state=seed
    )
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on separable data
        clf.fit(x_tr, y_tr)
    return float((clf.predict(x_te) == y_te).mean())


def alignment(a, b, alpha: float = 2) -> float:
    """Alignment of paired rows, ``E ||f(x) - f(y)||^alpha`` on unit-normalised rows.

    Wang & Isola 2020. 0 for identical rows, 4 (``alpha=2``) for antipodal ones; lower is
    better aligned.
    """
    a = _f64(a, "a")
    b = _f64(b, "b")
    _same_dim(a, b, "alignment")
    _same_rows(a, b, "alignment")
    if alpha <= 0:
        raise InvalidParameter(f"alpha must be positive, got {alpha}")
    d = np.linalg.norm(_unit(a) - _unit(b), axis=1)
    return float(np.mean(d**alpha))


def uniformity(x, t: float = 2, max_rows: int | None = 2000, seed: int = 0) -> float:
    """Uniformity of unit-normalised rows, ``log E exp(-t ||x - y||^2)`` over distinct pairs.

    Wang & Isola 2020. More negative means more uniformly spread on the sphere; 0 means all
    rows coincide. Above ``max_rows`` rows a seeded random subset of that size is used.
    """
    x = _f64(x, "x")
    _min_rows(x, 2, "x", "uniformity")
    if t <= 0:
        raise InvalidParameter(f"t must be positive, got {t}")
    rng = np.random.default_rng(seed)
    x = _unit(x[_subsample(x.shape[0], max_rows, rng)])
    n = x.shape[0]
    sq = np.maximum(2.0 - 2.0 * (x @ x.T), 0.0)  # unit rows: ||x-y||^2 = 2 - 2 cos
    iu = np.triu_indices(n, k=1)
    z = -t * sq[iu]
    zmax = z.max()
    return float(zmax + np.log(np.mean(np.exp(z - zmax))))


def linear_cka(a, b) -> float:
    """Linear CKA of paired rows (Kornblith et al. 2019); ``a`` and ``b`` may differ in dim.

    ``||B^T A||_F^2 / (||A^T A||_F ||B^T B||_F)`` on column-centred ``A``, ``B``. 1 for spaces
    that differ by an orthogonal transform and an isotropic scaling; near 0 for independent
    spaces (with a small positive bias of order ``dim / rows``).
    """
    a = _f64(a, "a")
    b = _f64(b, "b")
    _same_rows(a, b, "linear_cka")
    _min_rows(a, 2, "a", "linear_cka")
    a = a - a.mean(0)
    b = b - b.mean(0)
    n = a.shape[0]
    if n < max(a.shape[1], b.shape[1]):  # Gram form is cheaper when rows < dims
        ka, kb = a @ a.T, b @ b.T
        num = float((ka * kb).sum())
        den = float(np.linalg.norm(ka) * np.linalg.norm(kb))
    else:
        num = float(np.linalg.norm(b.T @ a) ** 2)
        den = float(np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
    if den <= 0:
        which = "a" if not np.any(a) else "b"
        raise InvalidEmbeddings(
            f"linear_cka: every row of {which} is the same vector (zero variance); "
            "expected rows that vary"
        )
    return float(num / den)


def _knn(x: np.ndarray, k: int, block: int | None = None) -> np.ndarray:
    """Indices of the k nearest rows (inner product) of every row, self excluded."""
    n = x.shape[0]
    if block is None:  # about 128 MB of similarities at a time
        block = max(1, min(n, (1 << 24) // max(n, 1)))
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, block):
        sim = x[s : s + block] @ x.T
        r = np.arange(sim.shape[0])
        sim[r, s + r] = -np.inf
        out[s : s + block] = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    return out


def mutual_knn(a, b, k: int = 10, normalize: bool = True) -> float:
    """Mutual k-nearest-neighbour alignment of paired rows (Huh et al. 2024).

    For each row i, the k nearest other rows in ``a`` and in ``b`` (cosine similarity on
    unit rows when ``normalize``, else inner product) are found; the score is the mean over
    rows of ``|kNN_a(i) & kNN_b(i)| / k``. 1 when both spaces rank neighbours alike;
    about ``k / (rows - 1)`` for independent spaces. ``a`` and ``b`` may differ in dim.
    """
    a = _f64(a, "a")
    b = _f64(b, "b")
    _same_rows(a, b, "mutual_knn")
    n = a.shape[0]
    k = int(k)
    if not 1 <= k <= n - 2:
        raise InvalidParameter(
            f"mutual_knn: k must lie in [1, rows - 2] = [1, {n - 2}] for {n} rows, got {k}"
        )
    if normalize:
        a, b = _unit(a), _unit(b)
    na, nb = _knn(a, k), _knn(b, k)
    # overlap per row: sort both neighbour lists and count common entries
    both = np.concatenate([np.sort(na, 1), np.sort(nb, 1)], axis=1)
    both.sort(axis=1)
    common = (both[:, 1:] == both[:, :-1]).sum(1)
    return float(common.mean() / k)


# ---------------------------------------------------------------------------
# reports


def gap_report(a, b, paired: bool = True, k: int = 10, seed: int = 0) -> dict[str, float]:
    """Every gap metric between two nodes, as ``dict[str, float]``.

    Always: ``n_a``, ``n_b``, ``uniformity_a``, ``uniformity_b``. When ``a`` and ``b`` share
    a dimension: ``centroid_distance`` (normalised rows), ``centroid_distance_raw`` and
    ``linear_separability``. When ``paired`` and the row counts match: ``linear_cka``,
    ``mutual_knn`` (``k`` clipped to ``rows - 2``) and, with a shared dimension,
    ``alignment``. Paired metrics are skipped with a warning when ``paired`` is true but
    the row counts differ.
    """
    a = _f64(a, "a")
    b = _f64(b, "b")
    out: dict[str, float] = {"n_a": float(a.shape[0]), "n_b": float(b.shape[0])}
    same_dim = a.shape[1] == b.shape[1]
    if same_dim:
        out["centroid_distance"] = centroid_distance(a, b)
        out["centroid_distance_raw"] = centroid_distance(a, b, normalize=False)
        if min(a.shape[0], b.shape[0]) >= 4:
            out["linear_separability"] = linear_separability(a, b, seed=seed)
    if paired and a.shape[0] != b.shape[0]:
        warnings.warn(
            f"gap_report: paired=True but a has {a.shape[0]} rows and b has {b.shape[0]}; "
            "skipping the paired metrics (alignment, linear_cka, mutual_knn)",
            stacklevel=2,
        )
    elif paired:
        if same_dim:
            out["alignment"] = alignment(a, b)
        if a.shape[0] >= 2:
            out["linear_cka"] = linear_cka(a, b)
        if a.shape[0] >= 3:
            out["mutual_knn"] = mutual_knn(a, b, k=min(k, a.shape[0] - 2))
    if a.shape[0] >= 2:
        out["uniformity_a"] = uniformity(a, seed=seed)
    if b.shape[0] >= 2:
        out["uniformity_b"] = uniformity(b, seed=seed)
    return out


def gap_table(
    named: Mapping[str, np.ndarray],
    pairs: Iterable[tuple[str, str]] | None = None,
    paired: bool = True,
    k: int = 10,
    seed: int = 0,
) -> list[dict]:
    """:func:`gap_report` for several pairs of nodes; one row (a dict) per pair.

    ``named`` maps node names to arrays; ``pairs`` lists ``(name_a, name_b)`` (default:
    every unordered pair, in the order of ``named``). Each row holds ``pair``
    (``"a vs b"``), ``a``, ``b`` and the metrics of :func:`gap_report`, ready for
    :func:`bridge.plots.plot_gap_bars`.
    """
    names = list(named)
    if pairs is None:
        pairs = [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    rows = []
    for pair in pairs:
        if len(pair) != 2:
            raise InvalidParameter(f"gap_table: expected (name_a, name_b) pairs, got {pair!r}")
        na, nb = pair
        for nm in (na, nb):
            if nm not in named:
                raise UnknownNode(nm, names)
        rep = gap_report(
            check_embeddings(named[na], na), check_embeddings(named[nb], nb),
            paired=paired, k=k, seed=seed,
        )
        rows.append({"pair": f"{na} vs {nb}", "a": na, "b": nb, **rep})
    return rows
