"""Numbers a user can trust: splits that follow the graph's rule, one R@1 definition (ties
count against), edge costs that reflect how sure a measurement is, strict JSON."""

import math
import warnings

import numpy as np
import pytest

import bridge
from bridge import ModalityGraph
from bridge.errors import InvalidParameter, NoPairs, SmallSampleWarning
from bridge.metrics import paired_retrieval, row_cosine
from bridge.planner import HOP_COST, R1_FLOOR, Z_LCB, edge_cost, wilson_lower_bound
from bridge.retrieval import l2_normalize, retrieval_metrics
from bridge.store import Cache, concat_caches
from conftest import random_orthogonal, unit


def rotated_pair(n=300, d=16, seed=0, noise=0.05, prefix="item"):
    """Caches A and B = rotated A plus noise, sharing ids ``prefix0..``."""
    rng = np.random.default_rng(seed)
    ids = [f"{prefix}{i}" for i in range(n)]
    A = unit(rng.standard_normal((n, d)))
    B = unit(A @ random_orthogonal(d, rng) + noise * rng.standard_normal((n, d)))
    return (Cache(ids=ids, emb=A.astype(np.float32), meta={"name": "a"}),
            Cache(ids=ids, emb=B.astype(np.float32), meta={"name": "b"}))


def prefixed(c, cuts=(200, 250)):
    """``c`` with ids ``train:``/``val:``/``test:``-prefixed by row ranges."""
    n = len(c)
    parts = [c.subset(np.arange(0, cuts[0])), c.subset(np.arange(*cuts)), c.subset(np.arange(cuts[1], n))]
    return concat_caches(parts, ["train", "val", "test"])


def assert_split_follows(g, a, b, rule):
    """The pair index sets of edge a -> b are disjoint, cover the pairs the rule assigns,
    and every group sits in the split the rule names."""
    P = g.pairs(a, b)
    idx = g.split(P)
    sets = {k: set(v.tolist()) for k, v in idx.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"])
    assert not (sets["val"] & sets["test"])
    for key, rows in idx.items():
        groups = set(P.groups[rows].tolist())
        if rule == "prefix":
            assert all(gr.startswith(f"{key}:") for gr in groups), key
        else:
            assert groups <= set(rule[key]), key
    m = g.edge(a, b)["metrics"]
    assert (m["n_train"], m["n_val"], m["n_test"]) == tuple(len(idx[k]) for k in ("train", "val", "test"))
    return idx


# ---------------------------------------------------------------------------- splits


def test_add_modality_under_prefix_rule_follows_the_prefixes():
    """The graph's ``splits="prefix"`` reaches edges trained by add_modality (a hash split
    put 245/27/28 pairs there, training on test rows)."""
    a, b = rotated_pair()
    A, B = prefixed(a), prefixed(b)
    g = ModalityGraph(splits="prefix")
    g.add_node("x@a", A)
    rep = g.add_modality("y@b", B, link_to="x@a", translator="procrustes")
    for key, m in rep.items():
        assert (m["n_train"], m["n_val"], m["n_test"]) == (200, 50, 50), key
        assert g.edge(*key)["split"]["rule"] == "prefix"
    idx = assert_split_follows(g, "x@a", "y@b", "prefix")
    np.testing.assert_array_equal(idx["train"], np.arange(200))
    # the one edge fitted only on train rows: a Procrustes fit of the train rows alone
    ref = bridge.ProcrustesTranslator().fit(A.vectors(np.arange(200)), B.vectors(np.arange(200)))
    np.testing.assert_allclose(g.translator("x@a", "y@b").R_, ref.R_, atol=1e-5)


def test_add_modality_and_connect_under_a_dict_rule():
    a, b = rotated_pair(n=300, seed=1)
    order = np.random.default_rng(5).permutation(300)
    rule = {"train": [f"item{i}" for i in order[:200]], "val": [f"item{i}" for i in order[200:250]],
            "test": [f"item{i}" for i in order[250:]]}
    g = ModalityGraph(splits=rule)
    g.add_node("x@a", a)
    rep = g.add_modality("y@b", b, link_to="x@a", translator="linear")
    assert {(m["n_train"], m["n_val"], m["n_test"]) for m in rep.values()} == {(200, 50, 50)}
    assert g.edge("x@a", "y@b")["split"]["rule"] == "groups"
    assert_split_follows(g, "x@a", "y@b", rule)
    # connect between existing nodes uses the same rule
    c = Cache(ids=a.ids, emb=(a.vectors() @ random_orthogonal(16, np.random.default_rng(2))).astype(np.float32))
    g.add_node("z@c", c)
    g.connect("z@c", "y@b", translator="procrustes")
    assert_split_follows(g, "z@c", "y@b", rule)
    assert_split_follows(g, "y@b", "z@c", rule)
    # test rows of the graph are exactly the rule's test groups
    assert set(a.ids[g.test_rows("x@a")]) == set(rule["test"])


def test_connect_under_prefix_rule_and_explicit_override():
    a, b = rotated_pair(seed=3)
    A, B = prefixed(a), prefixed(b)
    g = ModalityGraph(splits="prefix")
    g.add_node("x@a", A)
    g.add_node("y@b", B)
    g.connect("x@a", "y@b", translator="procrustes")
    assert_split_follows(g, "x@a", "y@b", "prefix")
    # an explicit per-edge rule wins over the graph's
    h = ModalityGraph(seed=0)
    h.add_node("x@a", A)
    h.add_node("y@b", B)
    m = h.connect("x@a", "y@b", translator="procrustes", splits="prefix")[("x@a", "y@b")]
    assert (m["n_train"], m["n_val"], m["n_test"]) == (200, 50, 50)


def test_dict_rule_with_a_group_in_two_splits_is_refused():
    with pytest.raises(InvalidParameter, match=r"in both 'test' and 'train'.*item1"):
        ModalityGraph(splits={"train": ["item0", "item1"], "val": ["item2"], "test": ["item1"]})
    with pytest.raises(InvalidParameter, match="unknown keys \\['tset'\\]"):
        ModalityGraph(splits={"train": ["a"], "tset": ["b"]})
    with pytest.raises(InvalidParameter, match="splits must be None, 'prefix' or a dict"):
        ModalityGraph(splits="hash")
    a, b = rotated_pair(n=60)
    g = ModalityGraph()
    g.add_node("x@a", a)
    g.add_node("y@b", b)
    with pytest.raises(InvalidParameter, match="in both"):
        g.connect("x@a", "y@b", translator="linear", splits={"train": ["item0"], "val": ["item0"]})
    assert g.edges == []


def test_copy_carries_every_setting_and_owns_its_structure():
    rule = {"train": ["p", "q"], "val": ["r"], "test": ["s"]}
    g = ModalityGraph(fractions=(0.6, 0.2, 0.2), seed=7, splits=rule, min_train=3, min_val=4, warn_val=9)
    a, _ = rotated_pair(n=10)
    g.add_node("x@a", a)
    h = g.copy()
    assert h.settings() == g.settings() == {
        "fractions": [0.6, 0.2, 0.2], "seed": 7, "splits": rule, "min_train": 3, "min_val": 4,
        "warn_val": 9}
    assert ModalityGraph(**g.settings()).settings() == g.settings()
    h.add_node("y@b", a)
    assert g.nodes == ["x@a"] and h.nodes == ["x@a", "y@b"]
    assert h.cache("x@a") is g.cache("x@a")  # shallow: caches are shared
    h.splits["train"].append("t")
    assert g.splits["train"] == ["p", "q"]


def test_graph_settings_are_validated():
    for kw, name in (({"min_val": 0}, "min_val"), ({"min_train": 1.5}, "min_train"),
                     ({"warn_val": -1}, "warn_val"), ({"seed": -3}, "seed"),
                     ({"fractions": (0.5, 0.5, 0.5)}, "fractions"), ({"fractions": "abc"}, "fractions")):
        with pytest.raises(InvalidParameter, match=name):
            ModalityGraph(**kw)


# ---------------------------------------------------------------------------- one R@1


def brute_force_r1(pred, target, labels):
    """Pessimistic R@1 by brute force: query i is a hit only when every gallery row with
    another label scores strictly below its best right row."""
    p, t = l2_normalize(pred), l2_normalize(target)
    S = p @ t.T
    labels = np.asarray(labels)
    hits = 0
    for i in range(S.shape[0]):
        right = labels == labels[i]
        hits += int(S[i, ~right].size == 0 or S[i, right].max() > S[i, ~right].max())
    return hits / S.shape[0]


def test_ties_count_as_misses():
    rng = np.random.default_rng(0)
    T = unit(rng.standard_normal((40, 8))).astype(np.float32)
    T[1] = T[0]  # a duplicate gallery row under another label
    T[5] = T[4]
    labels = np.arange(40)
    m = paired_retrieval(T, T, labels)
    # queries 0, 1, 4, 5 tie with a wrong row: argmax would have counted two of them as hits
    assert m["R@1"] == pytest.approx(36 / 40)
    assert m["R@1"] == pytest.approx(brute_force_r1(T, T, labels))
    assert m["R@1"] == pytest.approx(retrieval_metrics(T, T)["R@1"])
    assert paired_retrieval(T, T)["R@1"] == pytest.approx(36 / 40)  # labels=None: row i
    # the same duplicates under one label are both right: no tie against them
    shared = labels.copy()
    shared[1], shared[5] = 0, 4
    assert paired_retrieval(T, T, shared)["R@1"] == 1.0
    assert brute_force_r1(T, T, shared) == 1.0


def test_paired_retrieval_matches_brute_force_on_noisy_labelled_rows():
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 25, 120)
    centres = rng.standard_normal((25, 6))
    target = centres[lab].astype(np.float32)  # rows of a label are identical
    pred = (target + 0.9 * rng.standard_normal(target.shape)).astype(np.float32)
    m = paired_retrieval(pred, target, lab)
    assert m["R@1"] == pytest.approx(brute_force_r1(pred, target, lab))
    rel = [np.flatnonzero(lab == lab[i]) for i in range(len(lab))]
    assert m["R@1"] == pytest.approx(retrieval_metrics(pred, target, rel)["R@1"])
    assert 0.1 < m["R@1"] < 0.95  # neither trivial
    np.testing.assert_allclose(m["cos"], row_cosine(pred, target).mean(), rtol=1e-6)


def duplicated_target_graph(translator="procrustes", **fit):
    """Nodes whose target side repeats the same row under pairs of different ids: every
    second val query ties with a wrong row."""
    rng = np.random.default_rng(4)
    n, d = 400, 8
    ids = [f"i{k}" for k in range(n)]
    A = unit(rng.standard_normal((n, d))).astype(np.float32)
    B = A.copy()
    B[1::2] = B[0::2]  # id 2k+1 has the target row of id 2k
    g = ModalityGraph(seed=0)
    g.add_node("x@a", Cache(ids=ids, emb=A))
    g.add_node("y@b", Cache(ids=ids, emb=B))
    g.connect("x@a", "y@b", translator=translator, directions="forward", **fit)
    return g


def test_edge_metrics_fit_report_and_retrieval_metrics_agree_under_ties():
    g = duplicated_target_graph("linear", alpha=0.0)
    P = g.pairs("x@a", "y@b")
    idx = g.split(P)
    T = g.translator("x@a", "y@b")
    ca, cb = g.cache("x@a"), g.cache("y@b")
    for key in ("val", "test"):
        rows = idx[key]
        q = T.transform(ca.vectors(P.a_rows[rows]))
        gal = cb.vectors(P.b_rows[rows])
        ref = retrieval_metrics(q, gal)["R@1"]
        assert g.edge("x@a", "y@b")["metrics"][f"{key}_R@1"] == pytest.approx(ref)
        assert ref == pytest.approx(brute_force_r1(q, gal, np.arange(rows.size)))
    va = idx["val"]
    m_fit = T.fit_report_["val_R@1"]
    q = T.transform(ca.vectors(P.a_rows[va]))
    assert m_fit == pytest.approx(retrieval_metrics(q, cb.vectors(P.b_rows[va]))["R@1"])
    # a query whose twin (same target row, another id) is also in val ties: a certain miss
    pair_of = P.b_rows[va] // 2
    u, cnt = np.unique(pair_of, return_counts=True)
    both = np.isin(pair_of, u[cnt > 1])
    assert both.sum() >= 2
    assert g.edge("x@a", "y@b")["metrics"]["val_R@1"] <= 1 - both.sum() / va.size + 1e-9


def test_training_early_stopping_scores_ties_as_misses():
    """The R@1 the MLP's early stopping records is the pessimistic one (epoch 0 of an
    identity-initialised network on duplicated targets)."""
    from bridge.training import train

    import torch

    rng = np.random.default_rng(0)
    X = unit(rng.standard_normal((64, 8))).astype(np.float32)
    Y = X.copy()
    Y[1::2] = Y[0::2]
    net = torch.nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(8))
    rep, _ = train(net, X, Y, X, Y, loss="mse", epochs=0)
    assert rep.val_r1[0] == pytest.approx(brute_force_r1(X, Y, np.arange(64)))
    assert rep.val_r1[0] == 0.0  # every query ties with its twin's row


# ---------------------------------------------------------------------------- costs


def test_wilson_lower_bound_closed_form():
    z = Z_LCB
    assert wilson_lower_bound(1.0, 1) == pytest.approx(1 / (1 + z * z))  # n / (n + z^2) at p = 1
    assert wilson_lower_bound(1.0, 30) == pytest.approx(30 / (30 + z * z))
    assert wilson_lower_bound(0.0, 50) == 0.0
    for p, n in ((0.5, 10), (0.9, 200), (0.843, 500), (0.02, 1000)):
        L = wilson_lower_bound(p, n)
        # the Wilson bound is the root below p of (p - L)^2 = z^2 L (1 - L) / n
        assert (p - L) ** 2 == pytest.approx(z * z * L * (1 - L) / n, rel=1e-9)
        assert 0 < L < p
    assert wilson_lower_bound(0.9, 100) < wilson_lower_bound(0.9, 1000) < 0.9
    for bad in ((1.5, 10), (0.5, 0), (float("nan"), 5)):
        with pytest.raises(InvalidParameter):
            wilson_lower_bound(*bad)


def test_edge_cost_uses_the_lower_bound_at_the_val_size():
    few = {"val_R@1": 1.0, "n_val": 10}
    many = {"val_R@1": 1.0, "n_val": 1000}
    good = {"val_R@1": 0.9, "n_val": 1000}
    for m in (few, many, good):
        lcb = wilson_lower_bound(m["val_R@1"], m["n_val"])
        assert edge_cost(m) == pytest.approx(-math.log(lcb) + HOP_COST)
    # same R@1: the edge measured on more rows is cheaper; 0.9 on 1000 beats 1.0 on 10
    assert edge_cost(many) < edge_cost(good) < edge_cost(few)
    assert edge_cost({"val_R@1": 1.0, "n_val": 1}) == pytest.approx(-math.log(1 / (1 + Z_LCB ** 2)) + HOP_COST)
    assert edge_cost({"val_R@1": 0.0, "n_val": 100}) == pytest.approx(-math.log(R1_FLOOR) + HOP_COST)
    assert edge_cost({"test_R@1": 1.0, "n_test": 10}, key="test_R@1") == pytest.approx(edge_cost(few))
    # a hand-given R@1 without a sample size is taken at its word
    assert edge_cost({"val_R@1": 0.9}) == pytest.approx(-math.log(0.9) + HOP_COST)


def test_planner_prefers_the_edge_measured_on_more_rows():
    a, b = rotated_pair(n=50)
    g = ModalityGraph()
    for name in ("x@a", "m@b", "y@b"):
        g.add_node(name, b if name != "x@a" else a)
    T = bridge.IdentityTranslator().fit(a.vectors(), a.vectors())
    g.add_edge("x@a", "y@b", T, {"val_R@1": 1.0, "n_val": 8})  # perfect on 8 rows
    g.add_edge("x@a", "m@b", T, {"val_R@1": 0.99, "n_val": 2000})
    g.add_edge("m@b", "y@b", T, {"val_R@1": 0.99, "n_val": 2000})
    r = g.route("x@a", "y@b")
    assert r.nodes == ("x@a", "m@b", "y@b")
    costs = {e: g.edge(*e)["cost"] for e in g.edges}
    assert sorted(costs, key=costs.get) == sorted(
        costs, key=lambda e: -wilson_lower_bound(g.edge(*e)["metrics"]["val_R@1"], g.edge(*e)["metrics"]["n_val"]))


def test_edge_metrics_hold_raw_r1_its_bound_and_n_val():
    a, b = rotated_pair(n=600)
    g = ModalityGraph()
    g.add_node("x@a", a)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallSampleWarning)  # 60 val pairs: no warning
        g.add_modality("y@b", b, link_to="x@a", translator="procrustes")
    m = g.edge("x@a", "y@b")["metrics"]
    assert m["n_val"] >= 30
    assert m["val_R@1_lcb"] == pytest.approx(wilson_lower_bound(m["val_R@1"], m["n_val"]))
    assert m["val_R@1_lcb"] < m["val_R@1"]
    assert g.edge("x@a", "y@b")["cost"] == pytest.approx(-math.log(m["val_R@1_lcb"]) + HOP_COST)


def test_three_shared_ids_are_refused_and_warned_about():
    a, b = rotated_pair(n=3)
    g = ModalityGraph()
    g.add_node("x@a", a)
    g.add_node("y@b", b)
    with pytest.raises(NoPairs, match=r"3 pairs in 3 groups split by hash.*train 1, val 1, test 1"
                                      r".*train split holds 1 pairs, fewer than the graph's min_train=2"):
        g.connect("x@a", "y@b", translator="procrustes")
    with pytest.raises(NoPairs, match="3 pairs"):
        g.add_modality("z@b", b, link_to="x@a", translator="procrustes")
    assert g.edges == [] and g.nodes == ["x@a", "y@b"]
    # allowed by the graph's settings, the edge warns and costs what one pair supports
    loose = ModalityGraph(min_train=1, min_val=1)
    loose.add_node("x@a", a)
    loose.add_node("y@b", b)
    with pytest.warns(SmallSampleWarning, match=r"only 1 pairs \(fewer than warn_val=30\)"):
        m = loose.connect("x@a", "y@b", translator="procrustes", directions="forward")[("x@a", "y@b")]
    assert (m["n_train"], m["n_val"], m["val_R@1"]) == (1, 1, 1.0)
    assert m["val_R@1_lcb"] == pytest.approx(1 / (1 + Z_LCB ** 2))
    assert loose.edge("x@a", "y@b")["cost"] > 1.3  # far from the cheapest possible 0.05


def test_small_val_split_below_min_val_is_refused_naming_the_rule():
    a, b = rotated_pair(n=300)
    A, B = prefixed(a, cuts=(296, 299)), prefixed(b, cuts=(296, 299))  # 296 train, 3 val, 1 test
    g = ModalityGraph(splits="prefix")
    g.add_node("x@a", A)
    with pytest.raises(NoPairs, match=r"split by 'prefix' into train 296, val 3, test 1; "
                                      r"the val split holds 3 pairs, fewer than the graph's min_val=5"):
        g.add_modality("y@b", B, link_to="x@a", translator="linear")
    assert g.nodes == ["x@a"]
    with pytest.warns(SmallSampleWarning, match="val R@1 is measured on only 3 pairs"):
        h = ModalityGraph(splits="prefix", min_val=3)
        h.add_node("x@a", A)
        h.add_modality("y@b", B, link_to="x@a", translator="linear")


def test_save_and_load_keep_every_setting(tmp_path):
    rule = {"train": [f"item{i}" for i in range(40)], "val": [f"item{i}" for i in range(40, 50)],
            "test": [f"item{i}" for i in range(50, 60)]}
    a, b = rotated_pair(n=60)
    g = ModalityGraph(fractions=(0.7, 0.2, 0.1), seed=3, splits=rule, min_train=4, min_val=6, warn_val=8)
    g.add_node("x@a", a)
    g.add_modality("y@b", b, link_to="x@a", translator="procrustes")
    g.save(tmp_path / "g")
    h = bridge.load_graph(tmp_path / "g")
    assert h.settings() == g.settings()
    assert h.copy().settings() == g.settings()
    assert h.edge("x@a", "y@b")["cost"] == pytest.approx(g.edge("x@a", "y@b")["cost"])


def test_row_cosine_through_the_one_normaliser():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((30, 5)), rng.standard_normal((30, 5))
    a[3] = 0.0  # an all-zero row has cosine 0, not NaN
    ref = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    np.testing.assert_allclose(row_cosine(a, b), ref, atol=1e-6)
    assert row_cosine(a, b)[3] == 0.0
    with pytest.raises(bridge.errors.DimensionMismatch, match="row counts differ: 30 vs 29"):
        row_cosine(a, b[:29])
    with pytest.raises(bridge.errors.DimensionMismatch, match=r"labels has shape \(2,\)"):
        paired_retrieval(a, b, [0, 1])


def test_top1_hits_equal_first_ranks_of_the_rank_engine():
    """The label form of R@1 (used by edge metrics and early stopping) agrees with
    ranks_of_relevant on data full of exact ties: duplicated gallery rows, rounded queries."""
    from bridge.metrics import paired_retrieval, rows_by_label
    from bridge.retrieval import ranks_of_relevant

    rng = np.random.default_rng(0)
    n_ties = 0
    for trial in range(150):
        n, d = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        T = rng.standard_normal((n, d)).astype(np.float32)
        if n > 2:
            T[1] = T[0]
        P = (T + rng.standard_normal((n, d)) * rng.choice([0.0, 0.1, 1.0])).astype(np.float32)
        if rng.random() < 0.3:
            P = np.round(P, 1)
        lab = rng.integers(0, max(1, n // 2), n) if rng.random() < 0.5 else None
        got = paired_retrieval(P, T, lab)["R@1"]
        ranks = ranks_of_relevant(P, T, rows_by_label(np.arange(n) if lab is None else lab))
        assert got == pytest.approx(np.mean([r[0] <= 1 for r in ranks]), abs=1e-12), trial
        n_ties += int(n > 2 and (lab is None or lab[0] != lab[1]))
    assert n_ties > 20  # the duplicated rows under two labels were exercised
