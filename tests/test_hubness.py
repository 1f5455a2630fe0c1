"""Hubness-aware scoring (CSLS, QB-Norm): ranks against brute-force float64 references on
tie-heavy data, streamed bank statistics, the approximate and fused paths, evaluation through
a graph with a planted hub, the bank rules and the scoring parser."""

import numpy as np
import pytest

import bridge.hubness as hubness
from bridge import ModalityGraph
from bridge.errors import DimensionMismatch, InvalidParameter
from bridge.evaluate import evaluate_route, fused_evaluation
from bridge.fusion import fuse_scores, fused_metrics, fused_search
from bridge.hubness import (
    Scoring,
    adjusted,
    gallery_adjustment,
    hubness_stats,
    parse_scoring,
)
from bridge.retrieval import (
    metrics_from_ranks,
    ranks_of_relevant,
    retrieval_metrics,
    search,
)
from bridge.store import Cache
from conftest import unit

# -- brute-force float64 references ------------------------------------------------------


def _unique_scores(A, G):
    """``A . G^T`` in float64 with exactly equal columns for identical gallery rows."""
    Gu, inv = np.unique(G, axis=0, return_inverse=True)
    return (A @ Gu.T)[:, inv.reshape(-1)]


def ref_scores(Q, G, B, scoring):
    """The documented scores, from float64-normalised rows (the full CSLS with r_gallery)."""
    sc = parse_scoring(scoring)
    q, g, b = (unit(np.asarray(x, np.float32).astype(np.float64)) for x in (Q, G, B))
    S, SB = _unique_scores(q, g), _unique_scores(b, g)
    if sc.method == "cosine":
        return S
    if sc.method == "csls":
        r_bank = np.sort(SB, axis=0)[-sc.k:].mean(axis=0)
        r_gal = np.sort(S, axis=1)[:, -sc.k:].mean(axis=1)
        return 2 * S - r_bank[None, :] - r_gal[:, None]
    z = sc.beta * SB
    logz = z.max(axis=0) + np.log(np.exp(z - z.max(axis=0)).sum(axis=0))
    kth = np.sort(SB, axis=1)[:, -sc.k][:, None]
    active = (SB >= kth).any(axis=0)
    switch = active[S.argmax(axis=1)]
    return np.where(switch[:, None], sc.beta * S - logz[None, :], S)


def ref_ranks(F, rel):
    """Pessimistic 1-based ranks of the right rows (best first) in score matrix ``F``."""
    out = []
    for i, r in enumerate(rel):
        r = np.atleast_1d(r)
        wrong = np.delete(F[i], r)
        rs = np.sort(F[i, r])[::-1]
        out.append(np.array([np.sum(wrong >= s) + t + 1 for t, s in enumerate(rs)]))
    return out


def tie_heavy(rng, n_unique=25, copies=3, nq=30, nb=40, d=8):
    """A gallery where every row appears ``copies`` times at scattered positions."""
    base = rng.standard_normal((n_unique, d)).astype(np.float32)
    G = np.repeat(base, copies, axis=0)[rng.permutation(n_unique * copies)]
    Q = rng.standard_normal((nq, d)).astype(np.float32)
    B = rng.standard_normal((nb, d)).astype(np.float32)
    return Q, G, B


SCORINGS = ["csls:k=1", "csls:k=3", "qbnorm:beta=5,k=1", "qbnorm:beta=20,k=3", "qbnorm"]


@pytest.mark.parametrize("scoring", SCORINGS)
def test_ranks_equal_brute_force_on_duplicated_gallery(rng, scoring):
    Q, G, B = tie_heavy(rng)
    rel = [np.array([i % G.shape[0]]) for i in range(Q.shape[0])]
    Qa, Ga, adj = adjusted(Q, G, B, scoring)
    got = ranks_of_relevant(Qa, Ga, [r for r in rel], normalized=True)
    want = ref_ranks(ref_scores(Q, G, B, scoring), rel)
    assert [list(a) for a in got] == [list(b) for b in want]
    # every duplicate of a right row ties with it and counts against the query
    assert all(int(r[0]) >= 3 for r in got)
    # many right rows per query: the engine's sorted-row path, same answer
    many = [np.flatnonzero(np.arange(G.shape[0]) % 3 == i % 3) for i in range(Q.shape[0])]
    got = ranks_of_relevant(Qa, Ga, many, normalized=True)
    want = ref_ranks(ref_scores(Q, G, B, scoring), many)
    assert [list(a) for a in got] == [list(b) for b in want]
    m = retrieval_metrics(Q, G, np.array([r[0] for r in rel]), scoring=scoring, bank=B)
    one = metrics_from_ranks(ref_ranks(ref_scores(Q, G, B, scoring), rel))
    assert m == {**one, "n_gallery": G.shape[0], "index": "flat",
                 "scoring": str(parse_scoring(scoring)), "n_bank": B.shape[0]}


def test_bank_statistics_stream_and_duplicates_share_them(rng, monkeypatch):
    Q, G, B = tie_heavy(rng, n_unique=60, copies=3, nb=50)
    for scoring in ("csls:k=4", "qbnorm:beta=10,k=2"):
        whole = gallery_adjustment(G, B, scoring)
        monkeypatch.setattr(hubness, "ENGINE_CELLS", 64)   # gallery blocks of 64 rows
        blocked = gallery_adjustment(G, B, scoring, block=7)
        monkeypatch.undo()
        assert np.allclose(whole.bias, blocked.bias, rtol=0, atol=1e-6)
        sc = parse_scoring(scoring)
        g, b = unit(G.astype(np.float64)), unit(B.astype(np.float64))
        SB = _unique_scores(b, g)
        if sc.method == "csls":
            want = -np.sort(SB, axis=0)[-sc.k:].mean(axis=0) / 2
            assert whole.active is None
        else:
            z = sc.beta * SB
            want = -(z.max(0) + np.log(np.exp(z - z.max(0)).sum(0))) / sc.beta
            active = (SB >= np.sort(SB, axis=1)[:, -sc.k][:, None]).any(axis=0)
            assert np.array_equal(whole.active, active)
            assert np.array_equal(blocked.active, active)
        assert np.allclose(whole.bias, want, rtol=0, atol=1e-6)
        # identical gallery rows share exactly the same statistics
        _, inv = np.unique(G, axis=0, return_inverse=True)
        for grp in range(60):
            assert np.unique(whole.bias[inv.reshape(-1) == grp]).size == 1


def test_qbnorm_logsumexp_is_stable_for_large_beta(rng):
    Q, G, B = tie_heavy(rng, copies=1)
    adj = gallery_adjustment(G, B, Scoring("qbnorm", beta=2000.0))
    assert np.all(np.isfinite(adj.bias))
    g, b = unit(G.astype(np.float64)), unit(B.astype(np.float64))
    # with a huge beta the log-sum-exp is the largest bank cosine
    assert np.allclose(adj.bias, -(b @ g.T).max(axis=0), atol=5e-3)


def test_search_returns_the_adjusted_top_rows(rng):
    Q, G, B = tie_heavy(rng, copies=1)
    for scoring in ("csls:k=3", "qbnorm:beta=10,k=2"):
        F = ref_scores(Q, G, B, scoring)
        scores, rows = search(Q, G, k=5, scoring=scoring, bank=B)
        assert np.array_equal(rows, np.argsort(-F, axis=1, kind="stable")[:, :5])
        assert np.all(np.diff(scores, axis=1) <= 0)
    # the returned scores are the ranking form s - r_bank / 2 of CSLS
    sc = parse_scoring("csls:k=3")
    scores, rows = search(Q, G, k=5, scoring=sc, bank=B)
    s = unit(Q.astype(np.float64)) @ unit(G.astype(np.float64)).T
    r_bank = np.sort(unit(B.astype(np.float64)) @ unit(G.astype(np.float64)).T, axis=0)[-3:].mean(0)
    want = np.take_along_axis(s - r_bank / 2, rows, 1)
    assert np.allclose(scores, want, atol=1e-5)
    with pytest.raises(InvalidParameter, match="needs the gallery rows"):
        from bridge.retrieval import build_index

        search(Q, build_index(G), scoring="csls", bank=B)


@pytest.mark.parametrize("kind,opts", [("hnsw", {}), ("ivf", {"nlist": 4, "nprobe": 4})])
def test_approximate_index_at_full_depth_equals_exact(rng, kind, opts):
    Q, G, B = tie_heavy(rng, copies=2)
    for scoring in ("csls:k=3", "qbnorm:beta=10,k=1"):
        exact = retrieval_metrics(Q, G, np.arange(Q.shape[0]), scoring=scoring, bank=B)
        approx = retrieval_metrics(Q, G, np.arange(Q.shape[0]), kind=kind, depth=G.shape[0],
                                   scoring=scoring, bank=B, **opts)
        assert approx.pop("index") == kind and exact.pop("index") == "flat"
        assert approx == exact


def test_hubness_stats_by_hand():
    G = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    Q = np.array([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [0.9, 0.5]])
    st = hubness_stats(Q, G, k=1)
    # k-occurrences N_1 = [3, 1, 0]: mean 4/3, second central moment 14/9, third 20/27
    assert st["skewness"] == pytest.approx((20 / 27) / (14 / 9) ** 1.5)
    assert st["anti_hubs"] == pytest.approx(1 / 3)
    assert st["max_occurrence"] == 3
    assert (st["n_queries"], st["n_gallery"], st["k"]) == (4, 3, 1)
    # k = 2: q0, q1 -> {g0, g1}... every query's two nearest exclude g2
    st2 = hubness_stats(Q, G, k=2)
    assert st2["anti_hubs"] == pytest.approx(1 / 3) and st2["max_occurrence"] == 4
    even = hubness_stats(np.eye(3), np.eye(3), k=1)
    assert even["skewness"] == 0.0 and even["anti_hubs"] == 0.0
    with pytest.raises(InvalidParameter, match="'k'"):
        hubness_stats(Q, G, k=4)


def test_parse_scoring_forms_and_errors():
    assert parse_scoring(None) == Scoring() and parse_scoring(None).is_cosine
    assert parse_scoring("csls") == Scoring("csls", k=10)
    assert parse_scoring("qbnorm") == Scoring("qbnorm", k=1, beta=20.0)
    s = parse_scoring("qbnorm:beta=30,k=1")
    assert (s.method, s.beta, s.k) == ("qbnorm", 30.0, 1)
    assert parse_scoring(s) is s
    for text in ("cosine", "csls:k=5", "qbnorm:beta=30,k=2", "qbnorm:beta=2.5,k=1"):
        sc = parse_scoring(text)
        assert str(sc) == text and parse_scoring(str(sc)) == sc
    for bad, match in [("cosin", "'cosin'"), ("csls:k=0", "'k'"), ("csls:beta=3", "'beta=3'"),
                       ("qbnorm:beta=-1", "'beta'"), ("csls:k=abc", "'abc'"),
                       ("csls:k", "'k'"), ("csls:k=2,k=3", "twice"), (3, "3"),
                       ("cosine:k=3", "none")]:
        with pytest.raises(InvalidParameter, match=match):
            parse_scoring(bad)
    with pytest.raises(InvalidParameter, match="'lsh'"):
        Scoring("lsh")


def test_scoring_needs_a_bank_of_the_right_size(rng):
    Q, G, B = tie_heavy(rng, copies=1)
    with pytest.raises(InvalidParameter, match="needs a bank"):
        retrieval_metrics(Q, G, np.arange(Q.shape[0]), scoring="csls")
    with pytest.raises(InvalidParameter, match="k = 10 nearest bank rows, but the bank has 4"):
        retrieval_metrics(Q, G, np.arange(Q.shape[0]), scoring="csls", bank=B[:4])
    with pytest.raises(DimensionMismatch, match="bank has dimension 3"):
        retrieval_metrics(Q, G, np.arange(Q.shape[0]), scoring="csls", bank=B[:, :3])
    other = gallery_adjustment(G, B, "csls:k=3")
    with pytest.raises(InvalidParameter, match="computed for scoring 'csls:k=3'"):
        retrieval_metrics(Q, G, np.arange(Q.shape[0]), scoring="csls:k=4", bank=other)


def test_cosine_ignores_the_bank_and_stays_unchanged(rng):
    Q, G, B = tie_heavy(rng)
    rel = np.arange(Q.shape[0])
    plain = retrieval_metrics(Q, G, rel)
    assert retrieval_metrics(Q, G, rel, scoring="cosine", bank=B) == plain
    assert retrieval_metrics(Q, G, rel, scoring=None) == plain
    assert "scoring" not in plain
    assert plain == {**metrics_from_ranks(ref_ranks(ref_scores(Q, G, B, None), list(rel))),
                     "n_gallery": G.shape[0], "index": "flat"}


# -- fusion ---------------------------------------------------------------------------------


def _zscore(F):
    return (F - F.mean(axis=1, keepdims=True)) / F.std(axis=1, keepdims=True)


def _rrf(F):
    # competition ranks, ties share the worst
    return 1.0 / (60 + (F[:, None, :] >= F[:, :, None]).sum(axis=2))


def test_fused_adjusted_scores_equal_brute_force(rng):
    Q1, G1, B1 = tie_heavy(rng, copies=1, nq=25)
    Q2, G2, B2 = (x + 0.5 * rng.standard_normal(x.shape).astype(np.float32) for x in (Q1, G1, B1))
    rel = np.arange(Q1.shape[0])
    for scoring in ("csls:k=3", "qbnorm:beta=10,k=1"):
        F = [ref_scores(q, g, b, scoring) for q, g, b in ((Q1, G1, B1), (Q2, G2, B2))]
        for method, weights, fuse in [("zscore", None, lambda: _zscore(F[0]) + _zscore(F[1])),
                                      ("weighted", [0.3, 0.7],
                                       lambda: 0.3 * _zscore(F[0]) + 0.7 * _zscore(F[1])),
                                      ("rrf", None, lambda: _rrf(F[0]) + _rrf(F[1]))]:
            want = metrics_from_ranks(ref_ranks(fuse(), list(rel)))
            m = fused_metrics([Q1, Q2], [G1, G2], rel, method=method, weights=weights,
                              scoring=scoring, banks=[B1, B2])
            assert {k: m[k] for k in want} == pytest.approx(want)
            assert m["scoring"] == str(parse_scoring(scoring)) and m["n_bank"] == [40, 40]
            if method != "rrf":
                # candidate search over every row re-scores the same adjusted scores
                c = fused_metrics([Q1, Q2], [G1, G2], rel, method=method, weights=weights,
                                  candidates=G1.shape[0], scoring=scoring, banks=[B1, B2])
                assert {k: c[k] for k in want} == pytest.approx(want)
                dense = fuse_scores([Q1, Q2], [G1, G2], method=method, weights=weights,
                                    scoring=scoring, banks=[B1, B2])
                assert np.array_equal(np.argsort(-dense, axis=1, kind="stable")[:, :3],
                                      fused_search([Q1, Q2], [G1, G2], k=3, method=method,
                                                   weights=weights, candidates=G1.shape[0],
                                                   scoring=scoring, banks=[B1, B2])[1])
    with pytest.raises(InvalidParameter, match="one bank per route \\(2 routes\\).*got 1 banks"):
        fused_metrics([Q1, Q2], [G1, G2], rel, scoring="csls", banks=[B1])


# -- through a graph ------------------------------------------------------------------------


def hub_graph(n=300, d=16, seed=0, a=1.0, noise=0.1):
    """Two nodes of one space joined by an identity edge. Translated queries share an offset
    ``a * u``; the gallery holds one planted hub, the test item whose row is ``u`` itself,
    near every query, so it steals the top-1 of most queries under cosine."""
    rng = np.random.default_rng(seed)
    ids = [f"{'train' if i < n // 3 else ('val' if i < 2 * n // 3 else 'test')}:{i}"
           for i in range(n)]
    items = unit(rng.standard_normal((n, d)))
    u = unit(rng.standard_normal((1, d)))[0]
    src = unit(items + a * u + noise * rng.standard_normal((n, d)))
    dst = unit(items + noise * rng.standard_normal((n, d)))
    dst[n - 1] = u
    dst2 = unit(items + 2 * noise * rng.standard_normal((n, d)))
    dst2[n - 1] = u
    g = ModalityGraph(seed=seed, splits="prefix")
    g.add_node("text:de@e", Cache(ids=ids, emb=src.astype(np.float32)))
    g.add_node("text:en@e", Cache(ids=ids, emb=dst.astype(np.float32)))
    g.add_node("text:en@f", Cache(ids=ids, emb=dst2.astype(np.float32)))
    g.connect("text:de@e", "text:en@e", translator="identity")
    g.connect("text:de@e", "text:en@f", translator="identity")
    return g


@pytest.fixture(scope="module")
def hub():
    return hub_graph()


def test_csls_and_qbnorm_undo_a_planted_hub(hub):
    src, dst = "text:de@e", "text:en@e"
    cos = evaluate_route(hub, src, dst, ks=(1, 5))
    csls = evaluate_route(hub, src, dst, ks=(1, 5), scoring="csls")
    qb = evaluate_route(hub, src, dst, ks=(1, 5), scoring="qbnorm", bank="train")
    assert cos["R@1"] < 0.5
    assert csls["R@1"] > cos["R@1"] + 0.3 and qb["R@1"] > cos["R@1"] + 0.3
    assert (csls["scoring"], csls["bank"], csls["n_bank"]) == ("csls:k=10", "val", 100)
    assert (qb["scoring"], qb["bank"], qb["n_bank"]) == ("qbnorm:beta=20,k=1", "train", 100)
    assert "scoring" not in cos and "bank" not in cos


def test_evaluate_route_equals_retrieval_on_translated_rows(hub):
    from bridge.evaluate import bank_rows, held_out

    src, dst = "text:de@e", "text:en@e"
    h = held_out(hub, src, dst)
    rows, name = bank_rows(hub, src, dst, "val", h.q_rows)
    assert name == "val" and not np.isin(rows, h.q_rows).any()
    c_src, c_dst = hub.cache(src), hub.cache(dst)
    q = hub.translate(c_src.emb[h.q_rows], [src, dst])
    b = hub.translate(c_src.emb[rows], [src, dst])
    gal = c_dst.emb[h.g_rows]
    rel = np.array([r[0] for r in h.relevant])
    # the hub is the k-occurrence outlier under cosine, much less so under CSLS
    st_cos = hubness_stats(q, gal, k=1)
    st_csls = hubness_stats(q, gal, k=1, scoring="csls", bank=b)
    assert st_cos["max_occurrence"] > 20 and st_csls["max_occurrence"] < 10
    assert st_csls["skewness"] < st_cos["skewness"] / 2
    for scoring in ("csls", "qbnorm"):
        m = evaluate_route(hub, src, dst, scoring=scoring)
        want = retrieval_metrics(q, gal, rel, scoring=scoring, bank=b)
        assert {k: m[k] for k in want if k != "index"} == {k: want[k] for k in want if k != "index"}


def test_bank_never_holds_the_evaluated_queries(hub):
    from bridge.evaluate import held_out

    src, dst = "text:de@e", "text:en@e"
    with pytest.raises(InvalidParameter, match="must not contain the test queries"):
        evaluate_route(hub, src, dst, scoring="csls", bank="test")
    with pytest.raises(InvalidParameter, match="must not contain the val queries"):
        evaluate_route(hub, src, dst, scoring="csls", bank="val", split="val")
    test_rows = held_out(hub, src, dst).q_rows
    with pytest.raises(InvalidParameter, match=f"bank row {test_rows[0]} is one of the evaluated"):
        evaluate_route(hub, src, dst, scoring="csls", bank=test_rows[:20])
    with pytest.raises(InvalidParameter, match="'nope'"):
        evaluate_route(hub, src, dst, scoring="qbnorm", bank="nope")
    with pytest.raises(InvalidParameter, match="bank row 5000"):
        evaluate_route(hub, src, dst, scoring="qbnorm", bank=np.array([1, 5000]))
    with pytest.raises(InvalidParameter, match="must not contain"):
        fused_evaluation(hub, src, ["text:en@e", "text:en@f"], scoring="csls", bank="test")
    # explicit rows of another split are a valid bank; a split bank == split is fine for cosine
    m = evaluate_route(hub, src, dst, scoring="csls", bank=np.arange(30))
    assert (m["bank"], m["n_bank"]) == ("rows", 30)
    assert evaluate_route(hub, src, dst, bank="test")["R@1"] == evaluate_route(hub, src, dst)["R@1"]


def test_fused_evaluation_with_scoring(hub):
    src, gal = "text:de@e", ["text:en@e", "text:en@f"]
    cos = fused_evaluation(hub, src, gal)
    csls = fused_evaluation(hub, src, gal, scoring="csls")
    assert csls["fused"]["R@1"] > cos["fused"]["R@1"] + 0.3
    for name, m in csls["single"].items():
        assert m["scoring"] == "csls:k=10" and m["R@1"] > cos["single"][name]["R@1"]
    assert (csls["scoring"], csls["bank"], csls["n_bank"]) == ("csls:k=10", "val", [100, 100])
    assert csls["fused"]["n_bank"] == [100, 100]
    assert "scoring" not in cos and "scoring" not in cos["fused"]
    # fitted weights: fitted on val queries with the train bank
    w = fused_evaluation(hub, src, gal, method="weighted", val_weights=True, scoring="qbnorm")
    assert w["weights_bank"] == "train" and w["bank"] == "val"
    assert len(w["weights"]) == 2 and w["fused"]["R@1"] > cos["fused"]["R@1"]
    # candidate search over the whole gallery gives the exact figures
    c = fused_evaluation(hub, src, gal, scoring="csls", candidates=100)
    assert c["fused"]["R@1"] == pytest.approx(csls["fused"]["R@1"])


def test_memory_mapped_float16_gallery_and_lazy_bank(rng, tmp_path):
    from bridge.chunks import MappedRows, RowView

    Q, G, B = tie_heavy(rng, copies=2)
    np.save(tmp_path / "g.npy", G.astype(np.float16))
    mm = np.load(tmp_path / "g.npy", mmap_mode="r")
    rows = np.arange(0, G.shape[0], 2)
    gal = RowView(mm, rows)
    bank = MappedRows(B, None, lambda x: 2.0 * x, B.shape[1])   # a lazily "translated" bank
    rel = np.arange(Q.shape[0]) % rows.size
    for scoring in ("csls:k=3", "qbnorm:beta=10,k=1"):
        lazy = retrieval_metrics(Q, gal, rel, scoring=scoring, bank=bank)
        dense = retrieval_metrics(Q, mm[rows].astype(np.float32), rel, scoring=scoring,
                                  bank=2.0 * B)
        assert lazy == dense


def test_r1_matrix_with_scoring(hub):
    from bridge.evaluate import r1_matrix

    names, cos = r1_matrix(hub, ["text:de@e", "text:en@e"])
    _, csls = r1_matrix(hub, ["text:de@e", "text:en@e"], scoring="csls")
    assert cos[0, 1] == evaluate_route(hub, "text:de@e", "text:en@e", ks=(1,))["R@1"]
    assert csls[0, 1] == evaluate_route(hub, "text:de@e", "text:en@e", ks=(1,),
                                        scoring="csls")["R@1"] > cos[0, 1]


def test_bidirectional_metrics_take_one_bank_per_direction(rng):
    from bridge.retrieval import bidirectional_metrics

    Q, G, B = tie_heavy(rng, copies=1, nq=25)
    BG = rng.standard_normal((30, Q.shape[1])).astype(np.float32)
    r = bidirectional_metrics(Q, G, scoring="csls:k=3", bank=B, reverse_bank=BG)
    assert r["a->b"] == retrieval_metrics(Q, G, scoring="csls:k=3", bank=B)
    assert r["b->a"] == retrieval_metrics(G, Q, scoring="csls:k=3", bank=BG)
    assert (r["a->b"]["n_bank"], r["b->a"]["n_bank"]) == (40, 30)
    with pytest.raises(InvalidParameter, match="needs a bank"):
        bidirectional_metrics(Q, G, scoring="csls:k=3", bank=B)
    assert bidirectional_metrics(Q, G) == bidirectional_metrics(Q, G, bank=B)
