import numpy as np
import pytest

from bridge import gap
from bridge.errors import DimensionMismatch, EmptyData, InvalidEmbeddings, UnknownNode

from conftest import random_orthogonal, unit


# ---------------------------------------------------------------------------
# centroid distance


def test_centroid_distance_pure_shift_is_norm_of_shift(rng):
    x = rng.standard_normal((500, 16))
    x -= x.mean(0)  # exact centroid at 0
    v = rng.standard_normal(16)
    assert gap.centroid_distance(x, x + v, normalize=False) == pytest.approx(np.linalg.norm(v))


def test_centroid_distance_normalised_closed_form(rng):
    # all rows of a on e1, all rows of b on e2: unit centroids e1, e2 -> distance sqrt(2)
    a = np.zeros((5, 3)); a[:, 0] = rng.uniform(0.5, 3, 5)
    b = np.zeros((7, 3)); b[:, 1] = rng.uniform(0.5, 3, 7)
    assert gap.centroid_distance(a, b) == pytest.approx(np.sqrt(2))
    assert gap.centroid_distance(a, a * 3) == pytest.approx(0.0, abs=1e-12)


def test_centroid_distance_needs_one_space(rng):
    with pytest.raises(DimensionMismatch, match="dimension 4.*dimension 5"):
        gap.centroid_distance(rng.standard_normal((3, 4)), rng.standard_normal((3, 5)))


# ---------------------------------------------------------------------------
# linear separability


def test_separability_of_separated_clouds_is_one(rng):
    a = rng.standard_normal((300, 8))
    b = rng.standard_normal((200, 8)) + 6.0  # different sizes: balanced by subsampling
    assert gap.linear_separability(a, b) > 0.98


def test_separability_of_one_distribution_is_chance(rng):
    a = rng.standard_normal((400, 8))
    b = rng.standard_normal((400, 8))
    acc = gap.linear_separability(a, b, seed=1)
    assert 0.38 < acc < 0.62


def test_separability_is_seeded(rng):
    a = rng.standard_normal((100, 4))
    b = rng.standard_normal((100, 4)) + 0.3
    assert gap.linear_separability(a, b, seed=3) == gap.linear_separability(a, b, seed=3)


def test_separability_errors(rng):
    with pytest.raises(EmptyData, match="at least 4"):
        gap.linear_separability(rng.standard_normal((2, 3)), rng.standard_normal((10, 3)))
    with pytest.raises(ValueError, match="test_size"):
        gap.linear_separability(rng.standard_normal((10, 3)), rng.standard_normal((10, 3)),
                                test_size=1.5)


# ---------------------------------------------------------------------------
# alignment / uniformity


def test_alignment_closed_forms(rng):
    x = rng.standard_normal((50, 6))
    assert gap.alignment(x, x) == pytest.approx(0.0, abs=1e-12)
    assert gap.alignment(x, 2 * x) == pytest.approx(0.0, abs=1e-12)  # scale-free
    assert gap.alignment(x, -x) == pytest.approx(4.0)  # antipodal: ||u - (-u)||^2 = 4
    assert gap.alignment(x, -x, alpha=1) == pytest.approx(2.0)


def test_uniformity_cluster_above_spread(rng):
    spread = unit(rng.standard_normal((400, 8)))
    center = unit(rng.standard_normal((1, 8)))
    cluster = center + 0.01 * rng.standard_normal((400, 8))
    u_spread, u_cluster = gap.uniformity(spread), gap.uniformity(cluster)
    assert u_cluster > u_spread
    assert u_cluster > -0.01  # almost all mass at distance 0 -> log 1
    assert u_spread < -1.0


def test_uniformity_brute_force_and_subsample(rng):
    x = unit(rng.standard_normal((30, 5)))
    vals = [np.exp(-2 * np.sum((x[i] - x[j]) ** 2)) for i in range(30) for j in range(i + 1, 30)]
    assert gap.uniformity(x) == pytest.approx(np.log(np.mean(vals)))
    big = rng.standard_normal((3000, 5))
    assert gap.uniformity(big, max_rows=500, seed=1) == gap.uniformity(big, max_rows=500, seed=1)


# ---------------------------------------------------------------------------
# CKA


def test_cka_identical_and_invariances(rng):
    x = rng.standard_normal((200, 12))
    q = random_orthogonal(12, rng)
    assert gap.linear_cka(x, x) == pytest.approx(1.0)
    assert gap.linear_cka(x, x @ q) == pytest.approx(1.0)
    assert gap.linear_cka(x, 7.5 * x @ q + 3.0) == pytest.approx(1.0)  # scale + offset


def test_cka_different_dims_and_gram_path(rng):
    x = rng.standard_normal((40, 10))
    # embed into a larger space by an isometry: CKA 1 although dims differ (40 rows < 64 dims)
    q = random_orthogonal(64, rng)[:10]
    assert gap.linear_cka(x, x @ q) == pytest.approx(1.0)
    # gram and feature forms agree
    y = rng.standard_normal((40, 5))
    a, b = x - x.mean(0), y - y.mean(0)
    ka, kb = a @ a.T, b @ b.T
    want = (ka * kb).sum() / (np.linalg.norm(ka) * np.linalg.norm(kb))
    assert gap.linear_cka(x, y) == pytest.approx(want)


def test_cka_random_spaces_near_zero(rng):
    a = rng.standard_normal((2000, 16))
    b = rng.standard_normal((2000, 24))
    assert gap.linear_cka(a, b) < 0.05


def test_cka_constant_rows_raise(rng):
    with pytest.raises(InvalidEmbeddings, match="zero variance"):
        gap.linear_cka(np.ones((5, 3)), rng.standard_normal((5, 3)))


# ---------------------------------------------------------------------------
# mutual kNN


def test_mutual_knn_identical_and_rotated(rng):
    x = rng.standard_normal((150, 8))
    assert gap.mutual_knn(x, x, k=10) == 1.0
    assert gap.mutual_knn(x, x @ random_orthogonal(8, rng), k=5) == pytest.approx(1.0)


def test_mutual_knn_random_is_k_over_n(rng):
    n, k = 400, 10
    a = rng.standard_normal((n, 16))
    b = rng.standard_normal((n, 32))
    assert gap.mutual_knn(a, b, k=k) == pytest.approx(k / (n - 1), abs=0.015)


def test_mutual_knn_brute_force(rng):
    a = rng.standard_normal((25, 4))
    b = a + 0.8 * rng.standard_normal((25, 4))
    k = 3
    ua, ub = unit(a), unit(b)
    tot = 0.0
    for i in range(25):
        sa = ua @ ua[i]; sa[i] = -np.inf
        sb = ub @ ub[i]; sb[i] = -np.inf
        tot += len(set(np.argsort(-sa)[:k]) & set(np.argsort(-sb)[:k])) / k
    assert gap.mutual_knn(a, b, k=k) == pytest.approx(tot / 25)


def test_mutual_knn_bad_k(rng):
    with pytest.raises(ValueError, match="k must lie"):
        gap.mutual_knn(rng.standard_normal((5, 2)), rng.standard_normal((5, 2)), k=5)


# ---------------------------------------------------------------------------
# input validation common to every metric


PAIRED = [gap.alignment, gap.linear_cka, gap.mutual_knn]


@pytest.mark.parametrize("fn", PAIRED)
def test_paired_metrics_need_equal_rows(fn, rng):
    with pytest.raises(DimensionMismatch, match="30 rows.*31"):
        fn(rng.standard_normal((30, 4)), rng.standard_normal((31, 4)))


@pytest.mark.parametrize(
    "fn", PAIRED + [gap.centroid_distance, gap.linear_separability]
)
def test_nan_rows_and_empty_arrays_raise(fn, rng):
    a = rng.standard_normal((30, 4))
    bad = a.copy()
    bad[7, 2] = np.nan
    with pytest.raises(InvalidEmbeddings, match="rows 7"):
        fn(a, bad)
    with pytest.raises(EmptyData):
        fn(np.zeros((0, 4)), a)


def test_uniformity_validation(rng):
    with pytest.raises(EmptyData):
        gap.uniformity(np.zeros((0, 3)))
    with pytest.raises(EmptyData, match="at least 2"):
        gap.uniformity(rng.standard_normal((1, 3)))
    with pytest.raises(InvalidEmbeddings):
        gap.uniformity(np.array([[1.0, np.inf]]))


# ---------------------------------------------------------------------------
# report / table


def test_gap_report_keys_and_values(rng):
    x = rng.standard_normal((120, 8))
    rep = gap.gap_report(x, x @ random_orthogonal(8, rng), k=5)
    assert {"centroid_distance", "linear_separability", "alignment", "linear_cka",
            "mutual_knn", "uniformity_a", "uniformity_b"} <= set(rep)
    assert all(isinstance(v, float) for v in rep.values())
    assert rep["linear_cka"] == pytest.approx(1.0)
    assert rep["mutual_knn"] == pytest.approx(1.0)


def test_gap_report_different_dims_and_unpaired(rng):
    a, b = rng.standard_normal((60, 8)), rng.standard_normal((60, 5))
    rep = gap.gap_report(a, b)
    assert "linear_cka" in rep and "mutual_knn" in rep
    assert "centroid_distance" not in rep and "alignment" not in rep
    rep = gap.gap_report(a, rng.standard_normal((50, 8)), paired=False)
    assert "linear_cka" not in rep and "centroid_distance" in rep
    with pytest.warns(UserWarning, match="skipping the paired metrics"):
        rep = gap.gap_report(a, rng.standard_normal((50, 8)), paired=True)
    assert "linear_cka" not in rep


def test_gap_table(rng):
    x = rng.standard_normal((80, 6))
    named = {"a": x, "b": x + 5.0, "c": rng.standard_normal((80, 6))}
    rows = gap.gap_table(named, k=5)
    assert [r["pair"] for r in rows] == ["a vs b", "a vs c", "b vs c"]
    assert rows[0]["linear_cka"] == pytest.approx(1.0)
    assert rows[0]["linear_separability"] > 0.95
    rows = gap.gap_table(named, pairs=[("c", "a")], k=5)
    assert len(rows) == 1 and rows[0]["a"] == "c"
    with pytest.raises(UnknownNode, match="'zz'.*'a', 'b', 'c'"):
        gap.gap_table(named, pairs=[("a", "zz")])
