import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from bridge.errors import BridgeError, DimensionMismatch, EmptyData
from bridge.fusion import fit_route_weights, fuse_scores, fused_metrics, fused_search, simplex_grid
from bridge.retrieval import (
    bidirectional_metrics,
    build_index,
    normalize,
    recovery_ratio,
    retrieval_metrics,
    search,
)

from conftest import unit


def brute(q, g, rel_lists, ks=(1, 5, 10)):
    """Reference: sort every score row (wrong rows ahead of right ones at equal scores)."""
    S = unit(q) @ unit(g).T
    first, aps = [], []
    for i, r in enumerate(rel_lists):
        y = np.zeros(g.shape[0], bool)
        y[r] = True
        order = np.lexsort((y, -S[i]))  # by score desc, wrong before right on ties
        pos = np.flatnonzero(y[order]) + 1
        first.append(pos[0])
        aps.append(np.mean(np.arange(1, pos.size + 1) / pos))
    first = np.array(first)
    out = {f"R@{k}": np.mean(first <= k) for k in ks}
    out.update(MRR=np.mean(1 / first), median_rank=np.median(first), mAP=np.mean(aps))
    return out


@pytest.fixture
def noisy_pairs(rng):
    g = rng.standard_normal((300, 32))
    q = g + 1.6 * rng.standard_normal(g.shape)
    return q, g


def test_metrics_match_brute_force_one_to_one(noisy_pairs):
    q, g = noisy_pairs
    m = retrieval_metrics(q, g)
    ref = brute(q, g, [[i] for i in range(len(q))])
    for k, v in ref.items():
        assert m[k] == pytest.approx(v), k
    assert m["mAP"] == pytest.approx(m["MRR"])
    assert 0.2 < m["R@1"] < 0.99  # the task is neither trivial nor hopeless


def test_class_level_map_matches_sklearn(rng):
    labels = rng.integers(0, 5, 200)
    centers = rng.standard_normal((5, 16))
    g = centers[labels] + 1.5 * rng.standard_normal((200, 16))
    q = centers + 0.3 * rng.standard_normal((5, 16))
    rel = [np.flatnonzero(labels == c) for c in range(5)]
    m = retrieval_metrics(q, g, rel)
    S = unit(q) @ unit(g).T
    ap = [average_precision_score(labels == c, S[c]) for c in range(5)]
    assert m["mAP"] == pytest.approx(np.mean(ap))
    assert m["mAP"] == pytest.approx(brute(q, g, rel)["mAP"])
    # a boolean matrix gives the same answer
    B = labels[None, :] == np.arange(5)[:, None]
    assert retrieval_metrics(q, g, B)["mAP"] == pytest.approx(m["mAP"])


def test_ties_are_pessimistic(rng):
    g = unit(rng.standard_normal((10, 8)))
    g[3] = g[0]  # a duplicate of the right row
    m = retrieval_metrics(g[:1], g, np.array([0]))
    assert m["R@1"] == 0.0 and m["median_rank"] == 2.0


def test_faiss_flat_search_equals_numpy(noisy_pairs):
    q, g = noisy_pairs
    s, r = search(q, g, k=5)
    S = unit(q) @ unit(g).T
    assert np.array_equal(r[:, 0], S.argmax(1))
    assert np.allclose(s, -np.sort(-S, axis=1)[:, :5], atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_agree_with_exact(kind, rng):
    g = rng.standard_normal((4000, 24))
    q = g[:200] + 0.3 * rng.standard_normal((200, 24))
    exact = retrieval_metrics(q, g, np.arange(200))
    approx = retrieval_metrics(q, g, np.arange(200), kind=kind, nprobe=32, nlist=64)
    assert approx["index"] == kind
    assert approx["R@10"] == pytest.approx(exact["R@10"], abs=0.03)
    idx = build_index(g, kind)
    assert idx.ntotal == 4000


def test_bidirectional_and_recovery(noisy_pairs):
    q, g = noisy_pairs
    both = bidirectional_metrics(q, g)
    assert both["a->b"]["R@1"] == pytest.approx(retrieval_metrics(q, g)["R@1"])
    assert both["b->a"]["R@1"] == pytest.approx(retrieval_metrics(g, q)["R@1"])
    rec = recovery_ratio({"R@1": 0.45, "MRR": 0.5}, {"R@1": 0.9, "MRR": 0.5})
    assert rec == {"R@1": 0.5, "MRR": 1.0}


def test_bad_relevance_and_dimensions(noisy_pairs):
    q, g = noisy_pairs
    with pytest.raises(DimensionMismatch, match="dimension 32"):
        retrieval_metrics(q[:, :10], g)
    with pytest.raises(DimensionMismatch, match="row 999"):
        retrieval_metrics(q[:2], g, [[1], [999]])
    with pytest.raises(EmptyData, match="query 1"):
        retrieval_metrics(q[:2], g, [[1], []])
    with pytest.raises(DimensionMismatch, match="5 queries and 300"):
        retrieval_metrics(q[:5], g)
    with pytest.raises(BridgeError, match="unknown index kind 'lsh'"):
        retrieval_metrics(q, g, kind="lsh")


# --------------------------------------------------------------------------- fusion


@pytest.fixture
def two_routes(rng):
    """Two views of one gallery; each query view carries independent noise."""
    n = 400
    g1, g2 = rng.standard_normal((n, 16)), rng.standard_normal((n, 24))
    q1 = g1 + 1.1 * rng.standard_normal(g1.shape)
    q2 = g2 + 1.1 * rng.standard_normal(g2.shape)
    return [q1, q2], [g1, g2]


def test_zscore_fusion_equals_reference_and_beats_each_route(two_routes):
    Q, G = two_routes
    F = fuse_scores(Q, G)
    ref = 0
    for q, g in zip(Q, G):
        S = unit(q) @ unit(g).T
        ref = ref + (S - S.mean(1, keepdims=True)) / S.std(1, keepdims=True)
    assert np.allclose(F, ref, atol=1e-6)
    fused = fused_metrics(Q, G)
    singles = [retrieval_metrics(q, g)["R@1"] for q, g in zip(Q, G)]
    assert fused["R@1"] > max(singles) + 0.05


def test_rrf_matches_reference(two_routes):
    Q, G = two_routes
    F = fuse_scores(Q, G, method="rrf")
    ref = 0
    for q, g in zip(Q, G):
        S = normalize(q) @ normalize(g).T  # float32, as Faiss scores
        # pessimistic ranks: a tied row counts as ranked above
        ranks = (S[:, None, :] >= S[:, :, None]).sum(2)
        ref = ref + 1 / (60 + ranks)
    assert np.allclose(F, ref)


@pytest.mark.parametrize("method", ["zscore", "rrf"])
def test_candidate_search_matches_dense(two_routes, method):
    Q, G = two_routes
    dense = fused_metrics(Q, G, method=method)
    cand = fused_metrics(Q, G, method=method, candidates=150)
    for k in ("R@1", "R@5", "R@10"):
        assert cand[k] == pytest.approx(dense[k], abs=0.01 if method == "rrf" else 1e-9)
    s, r = fused_search(Q, G, k=3, candidates=150)
    F = fuse_scores(Q, G)
    assert np.mean(r[:, 0] == F.argmax(1)) == 1.0
    assert np.allclose(s[:, 0], F.max(1), atol=1e-6)


def test_route_weights_fitted_on_validation(rng):
    n = 300
    g1, g2 = rng.standard_normal((n, 16)), rng.standard_normal((n, 16))
    good = [g1 + 0.7 * rng.standard_normal(g1.shape), g2 + 5.0 * rng.standard_normal(g2.shape)]
    w = fit_route_weights(good, [g1, g2])
    assert w.sum() == pytest.approx(1.0) and w[0] > w[1]
    weighted = fused_metrics(good, [g1, g2], method="weighted", weights=w)
    assert weighted["R@1"] >= retrieval_metrics(good[0], g1)["R@1"] - 1e-9
    with pytest.raises(BridgeError, match="weights"):
        fused_metrics(good, [g1, g2], method="weighted")
    with pytest.raises(DimensionMismatch, match="2 finite route weights"):
        fused_metrics(good, [g1, g2], method="weighted", weights=[1.0])


def test_simplex_grid():
    W = simplex_grid(3, 0.5)
    assert W.shape == (6, 3) and np.allclose(W.sum(1), 1)


def test_fusion_rejects_mismatched_views(two_routes):
    Q, G = two_routes
    with pytest.raises(DimensionMismatch, match="route 1"):
        fused_metrics([Q[0], Q[1][:10]], G)
    with pytest.raises(DimensionMismatch, match="one gallery view per route"):
        fused_metrics(Q, G[:1])
    with pytest.raises(BridgeError, match="unknown fusion method 'max'"):
        fused_metrics(Q, G, method="max")



def test_hnsw_build_breadth_is_set_and_raises_recall_or_keeps_it():
    from bridge.retrieval import build_index, search

    r = np.random.default_rng(3)
    G = r.standard_normal((3000, 16)).astype(np.float32)
    Q = G[:200] + 0.05 * r.standard_normal((200, 16)).astype(np.float32)
    recall = {}
    for efc in (8, 200):
        index = build_index(G, "hnsw", hnsw_m=4, ef_search=16, ef_construction=efc)
        assert index.hnsw.efConstruction == efc
        _, rows = search(Q, index, k=1)
        recall[efc] = float(np.mean(rows[:, 0] == np.arange(200)))
    assert recall[200] >= recall[8]
