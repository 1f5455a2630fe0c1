import json

import networkx as nx
import numpy as np
import pytest
import torch

import bridge
from bridge import ModalityGraph, load_graph
from bridge.errors import (
    BridgeError,
    CorruptFile,
    DimensionMismatch,
    DuplicateNode,
    EmptyData,
    InvalidEmbeddings,
    InvalidParameter,
    NoPairs,
    NoRoute,
    UnknownNode,
)
from bridge.store import Cache
from conftest import random_orthogonal, unit


def three_spaces(n=600, d=16, seed=0, noise_direct=1.0):
    """A, B, C: B and C are near-rotations of A; a direct A -> C edge is trained on noise."""
    rng = np.random.default_rng(seed)
    ids = [f"item{i}" for i in range(n)]
    A = unit(rng.standard_normal((n, d)))
    B = unit(A @ random_orthogonal(d, rng) + 0.02 * rng.standard_normal((n, d)))
    C = unit(B @ random_orthogonal(d, rng) + 0.02 * rng.standard_normal((n, d)))
    C_noisy = unit(C + noise_direct * rng.standard_normal((n, d)))
    mk = lambda x, name: Cache(ids=ids, emb=x.astype(np.float32), meta={"name": name})
    return mk(A, "a"), mk(B, "b"), mk(C, "c"), mk(C_noisy, "c_noisy")


@pytest.fixture
def graph():
    a, b, c, c_noisy = three_spaces()
    g = ModalityGraph(seed=0)
    g.add_modality("text:en@a", a)
    g.add_modality("text:de@b", b, link_to="text:en@a", translator="procrustes")
    g.add_modality("image@c", c, link_to="text:de@b", translator="procrustes")
    # a poor direct edge: trained against a heavily corrupted copy of C's rows
    g.add_node("scratch", c_noisy)
    T = bridge.ProcrustesTranslator().fit(a.vectors()[:400], c_noisy.vectors()[:400])
    m = bridge.paired_retrieval(T.transform(a.vectors()[400:500]), c.vectors()[400:500])
    g.add_edge("text:en@a", "image@c", T, {"val_R@1": m["R@1"], "val_cos": m["cos"], "n_val": 100})
    g.remove_node("scratch")
    return g


def test_node_attributes_from_name(graph):
    n = graph.node("text:de@b")
    assert (n["modality"], n["language"], n["encoder"], n["dim"]) == ("text", "de", "b", 16)
    assert graph.node("image@c")["language"] is None


def test_routes_through_two_good_edges(graph):
    r = graph.route("text:en@a", "image@c")
    assert r.nodes == ("text:en@a", "text:de@b", "image@c")
    e1 = graph.edge("text:en@a", "text:de@b")["cost"]
    e2 = graph.edge("text:de@b", "image@c")["cost"]
    assert r.cost == pytest.approx(e1 + e2)
    direct = graph.edge("text:en@a", "image@c")["cost"]
    assert direct > r.cost
    # the composed route beats the direct edge on held-out rows
    a, c = graph.cache("text:en@a"), graph.cache("image@c")
    rows = graph.test_rows("text:en@a")
    two = bridge.paired_retrieval(graph.translate(a.vectors(rows), r), c.vectors(rows))
    one = bridge.paired_retrieval(graph.translate(a.vectors(rows), ["text:en@a", "image@c"]), c.vectors(rows))
    assert two["R@1"] > one["R@1"]


def test_k_best_routes_in_cost_order(graph):
    routes = graph.route("text:en@a", "image@c", k=3)
    assert len(routes) == 2  # only two simple paths exist
    costs = [r.cost for r in routes]
    assert costs == sorted(costs)
    # brute force: all simple paths and their summed costs
    G = graph.G
    brute = sorted(sum(G.edges[u, v]["cost"] for u, v in zip(p[:-1], p[1:]))
                   for p in nx.all_simple_paths(G, "text:en@a", "image@c"))
    assert costs == pytest.approx(brute)


def test_edge_cost_charges_each_hop():
    from bridge.planner import HOP_COST, edge_cost

    assert edge_cost({"val_R@1": 1.0}) == pytest.approx(HOP_COST)
    assert edge_cost({"val_R@1": 0.5}, hop_cost=0.0) == pytest.approx(np.log(2))
    assert edge_cost({"val_cos": 0.9}, hop_cost=0.1) == pytest.approx(0.2)
    with pytest.raises(InvalidParameter, match="hop_cost must be a finite number >= 0, got -1"):
        edge_cost({"val_R@1": 1.0}, hop_cost=-1)
    # equally perfect edges: the one-hop route wins over the two-hop detour
    a, b, c, _ = three_spaces()
    g = ModalityGraph(seed=0)
    for name, cache in (("x@a", a), ("y@b", b), ("z@c", c)):
        g.add_node(name, cache)
    T = bridge.IdentityTranslator().fit(a.vectors(), a.vectors())
    for u, v in (("x@a", "y@b"), ("y@b", "z@c"), ("x@a", "z@c")):
        g.add_edge(u, v, T, {"val_R@1": 1.0})
    r = g.route("x@a", "z@c")
    assert r.nodes == ("x@a", "z@c") and r.cost == pytest.approx(HOP_COST)
    assert g.route("x@a", "z@c", k=2)[1].cost == pytest.approx(2 * HOP_COST)


def test_weight_function_and_attribute(graph):
    hops = graph.route("text:en@a", "image@c", weight=lambda u, v, d: 1.0)
    assert hops.nodes == ("text:en@a", "image@c") and hops.cost == 1.0
    with pytest.raises(InvalidParameter, match="no attribute 'speed'"):
        graph.route("text:en@a", "image@c", weight="speed")


def test_translate_k_routes_average(graph):
    x = graph.cache("text:en@a").vectors()[:5]
    y = graph.translate(x, ("text:en@a", "image@c"), k=2)
    r = graph.route("text:en@a", "image@c", k=2)
    outs = [graph.translate(x, ri) for ri in r]
    ref = sum(o / np.linalg.norm(o, axis=1, keepdims=True) for o in outs) / 2
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_reconstruction_and_walk(graph):
    walk = ["text:en@a", "text:de@b", "image@c", "text:de@b", "text:en@a"]
    rec = graph.reconstruction(walk)
    assert rec["per_sample"].shape == (graph.test_rows("text:en@a").size,)
    assert 0 <= rec["mean"] < 0.05 and rec["median"] <= rec["mean"] + 0.05
    rep = graph.walk(walk)
    assert rep["loss_mean"] == pytest.approx(rec["mean"])
    assert rep["cycle_R@1"] > 0.9
    assert [h["dst"] for h in rep["hops"]] == walk[1:]
    assert all(h["R@1"] > 0.9 for h in rep["hops"])
    with pytest.raises(ValueError, match="start and end"):
        graph.reconstruction(["text:en@a", "text:de@b"])


def test_edge_metrics_and_split_disjoint(graph):
    m = graph.edge("text:en@a", "text:de@b")["metrics"]
    assert m["n_train"] + m["n_val"] + m["n_test"] == 600
    assert m["test_R@1"] > 0.9 and m["val_cos"] > 0.9
    groups = {}
    for a, b in (("text:en@a", "text:de@b"), ("text:de@b", "image@c")):
        P = graph.pairs(a, b)
        idx = graph.split(P)
        sizes = tuple(idx[k].size for k in ("train", "val", "test"))
        assert sizes == tuple(graph.edge(a, b)["metrics"][f"n_{k}"] for k in ("train", "val", "test"))
        # the three index sets are disjoint and cover every pair
        allrows = np.concatenate([idx["train"], idx["val"], idx["test"]])
        assert np.array_equal(np.sort(allrows), np.arange(len(P)))
        for k, rows in idx.items():
            groups.setdefault(k, set()).update(P.groups[rows].tolist())
    # no group is in two splits, even across edges: one edge's test rows are never the
    # training rows of another
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["val"])
    assert not (groups["val"] & groups["test"])
    assert len(groups["test"]) == m["n_test"]
    assert set(graph.cache("text:en@a").ids[graph.test_rows("text:en@a")]) == groups["test"]


def test_mlp_edges_with_cycle_term():
    """The cycle term makes the pair reconstruct better around x -> y -> x and y -> x -> y
    than the same joint training without it (same seed, batches and initial weights).

    InfoNCE alone ignores the scale and offset of the outputs, so two directions trained
    for it alone need not invert each other; the cycle term asks them to.
    """
    rng = np.random.default_rng(0)
    n, d = 400, 8
    ids = [f"i{k}" for k in range(n)]
    A = unit(rng.standard_normal((n, d)))
    B = unit(np.tanh(2 * A @ random_orthogonal(d, rng)) + 0.3 * rng.standard_normal((n, d)))

    def trained(cycle_weight):
        g = ModalityGraph(seed=0)
        g.add_node("x@a", Cache(ids=ids, emb=A.astype(np.float32)))
        rep = g.add_modality("y@b", Cache(ids=ids, emb=B.astype(np.float32)), link_to="x@a",
                             translator="mlp", loss="infonce", init=None, cycle_weight=cycle_weight,
                             width=32, epochs=10, patience=100, batch_size=64, seed=0)
        assert set(rep) == {("y@b", "x@a"), ("x@a", "y@b")}
        return g

    off, on = trained(1e-6), trained(5.0)  # 1e-6: the joint training, cycle term negligible
    assert on.edge("x@a", "y@b")["translator"].fit_report_["cycle_weight"] == 5.0
    w_off = off.translator("x@a", "y@b").net_.state_dict()
    w_on = on.translator("x@a", "y@b").net_.state_dict()
    assert any(not torch.allclose(w_off[k], w_on[k]) for k in w_off)
    for walk in (["x@a", "y@b", "x@a"], ["y@b", "x@a", "y@b"]):
        loss_off, loss_on = off.reconstruction(walk)["mean"], on.reconstruction(walk)["mean"]
        assert loss_on < 0.85 * loss_off, (walk, loss_on, loss_off)


def test_save_load_round_trip(graph, tmp_path):
    graph.save(tmp_path / "g")
    m = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert m["bridge_version"] == bridge.__version__ and len(m["edges"]) == 5
    g2 = load_graph(tmp_path / "g")
    assert sorted(g2.edges) == sorted(graph.edges)
    x = graph.cache("text:en@a").vectors()[:20]
    r = graph.route("text:en@a", "image@c")
    np.testing.assert_array_equal(g2.translate(x, r.nodes), graph.translate(x, r.nodes))
    assert g2.route("text:en@a", "image@c").cost == pytest.approx(r.cost)
    for u, v in graph.edges:
        assert g2.edge(u, v)["metrics"] == graph.edge(u, v)["metrics"]


def test_interrupted_save_keeps_previous_graph(graph, tmp_path, monkeypatch):
    graph.save(tmp_path / "g")
    before = (tmp_path / "g" / "manifest.json").read_text()
    T = graph.translator("text:de@b", "image@c")

    def boom(path):
        raise OSError("disk full")

    monkeypatch.setattr(type(T), "save", lambda self, path: boom(path))
    with pytest.raises(OSError, match="disk full"):
        graph.save(tmp_path / "g")
    assert (tmp_path / "g" / "manifest.json").read_text() == before
    assert load_graph(tmp_path / "g").edges
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]


def test_corrupt_saved_graph(graph, tmp_path):
    graph.save(tmp_path / "g")
    w = next((tmp_path / "g" / "edges").iterdir()) / "model.safetensors"
    w.write_bytes(w.read_bytes()[:40])
    with pytest.raises(CorruptFile, match="model.safetensors"):
        load_graph(tmp_path / "g")
    w.unlink()
    with pytest.raises(CorruptFile, match="missing"):
        load_graph(tmp_path / "g")
    (tmp_path / "g" / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptFile, match="not valid JSON"):
        load_graph(tmp_path / "g")
    with pytest.raises(CorruptFile, match="missing"):
        load_graph(tmp_path / "elsewhere")


def test_errors_name_the_bad_value_and_change_nothing(graph):
    before = (sorted(graph.nodes), sorted(graph.edges))
    a = graph.cache("text:en@a")
    with pytest.raises(UnknownNode, match="'text:xx@a'.*known nodes"):
        graph.route("text:xx@a", "image@c")
    with pytest.raises(UnknownNode, match="'nowhere'"):
        graph.add_modality("new@x", a, link_to="nowhere")
    with pytest.raises(DuplicateNode, match="'image@c'"):
        graph.add_modality("image@c", a)
    bad = a.vectors().copy()
    bad[3, 0] = np.nan
    with pytest.raises(InvalidEmbeddings, match="rows 3"):
        graph.add_modality("new@x", Cache(ids=a.ids, emb=bad), link_to="text:en@a")
    with pytest.raises(EmptyData):
        graph.add_modality("new@x", np.zeros((0, 16), np.float32))
    other = Cache(ids=[f"other{i}" for i in range(50)], emb=np.ones((50, 16), np.float32))
    with pytest.raises(NoPairs, match="share no ids"):
        graph.add_modality("new@x", other, link_to="text:en@a")
    x = a.vectors()[:3]
    with pytest.raises(DimensionMismatch, match="expected dimension 16, got 8"):
        graph.translate(x[:, :8], ("text:en@a", "image@c"))
    T = bridge.LinearTranslator().fit(np.ones((10, 8)) + np.eye(10, 8), np.ones((10, 16)))
    with pytest.raises(DimensionMismatch, match="input dimension 8"):
        graph.add_edge("text:en@a", "image@c", T)
    graph.add_node("island@z", a)
    with pytest.raises(NoRoute, match="no route from 'text:en@a' to 'island@z'"):
        graph.route("text:en@a", "island@z")
    graph.remove_node("island@z")
    with pytest.raises(NoPairs, match="split holds no pairs"):
        two = Cache(ids=a.ids[:2], emb=a.vectors()[:2])
        graph.add_modality("tiny@t", two, link_to="text:en@a")
    assert (sorted(graph.nodes), sorted(graph.edges)) == before
    assert issubclass(UnknownNode, BridgeError) and issubclass(NoRoute, BridgeError)


def test_post_hoc_alignment_closes_a_shift(tmp_path):
    """A translator that misses a constant offset: the centre shift removes it exactly."""
    rng = np.random.default_rng(0)
    n, d = 500, 8
    ids = [f"i{k}" for k in range(n)]
    A = rng.standard_normal((n, d)).astype(np.float32)
    B = (A + 3.0).astype(np.float32)  # B is A shifted
    g = ModalityGraph()
    g.add_node("x@a", Cache(ids=ids, emb=A))
    g.add_node("y@b", Cache(ids=ids, emb=B))
    # an uncentred, unscaled Procrustes cannot model the shift; "center" fixes it
    plain = g.connect("x@a", "y@b", translator=bridge.ProcrustesTranslator(center=False, scale=False),
                      directions="forward")[("x@a", "y@b")]
    shifted = g.connect("x@a", "y@b", translator=bridge.ProcrustesTranslator(center=False, scale=False),
                        directions="forward", post="center")[("x@a", "y@b")]
    assert shifted["test_cos"] > plain["test_cos"] + 0.05
    # with a base map that is right up to the offset, the shift recovers it exactly
    base = bridge.ProcrustesTranslator(center=False, scale=False).fit(A, A)
    W = bridge.PostHocTranslator(base, "center").fit(A, B)
    np.testing.assert_allclose(W.shift_, np.full(d, 3.0), atol=1e-4)
    np.testing.assert_allclose(W.transform(A), B, atol=1e-4)
    assert g.edge("x@a", "y@b")["kind"] == "procrustes+center"
    g.save(tmp_path / "g")
    g2 = load_graph(tmp_path / "g")
    np.testing.assert_array_equal(g2.translate(A[:5], ["x@a", "y@b"]), g.translate(A[:5], ["x@a", "y@b"]))
    with pytest.raises(ValueError, match="unknown post-hoc step 'rotate'"):
        g.connect("x@a", "y@b", translator="linear", post="rotate")


def test_predefined_splits_by_prefix():
    from bridge.store import concat_caches

    a, b, _, _ = three_spaces(n=300)
    parts = lambda c: [c.subset(np.arange(0, 200)), c.subset(np.arange(200, 250)), c.subset(np.arange(250, 300))]
    A = concat_caches(parts(a), ["train", "val", "test"])
    B = concat_caches(parts(b), ["train", "val", "test"])
    assert A.ids[0] == "train:item0" and A.ids[-1] == "test:item299"
    g = ModalityGraph()
    g.add_node("x@a", A)
    rep = g.add_modality("y@b", B, link_to="x@a", translator="procrustes", splits="prefix")
    m = rep[("y@b", "x@a")]
    assert (m["n_train"], m["n_val"], m["n_test"]) == (200, 50, 50)
    with pytest.raises(DimensionMismatch, match="different dimensions"):
        concat_caches([A, Cache(ids=["q"], emb=np.ones((1, 3)))], ["p", "q"])


def test_walk_rows_are_checked(graph):
    walk = ["text:en@a", "text:de@b", "text:en@a"]
    with pytest.raises(EmptyData, match="no row numbers"):
        graph.walk(walk, rows=[])
    with pytest.raises(InvalidParameter, match="row 600 is outside 0..599"):
        graph.walk(walk, rows=[3, 600])
    with pytest.raises(InvalidParameter, match="row -1 is outside"):
        graph.walk(walk, rows=[-1])
    with pytest.raises(InvalidParameter, match="integer row numbers, got dtype float64"):
        graph.walk(walk, rows=[1.5])
    rep = graph.walk(walk, rows=[0, 5, 7])
    assert rep["n"] == 3 and rep["loss_per_sample"].shape == (3,)


def test_all_routes_equal_one_route_per_pair_and_yens_first_path():
    import networkx as nx

    from bridge.planner import all_best_routes, k_best_routes

    rng = np.random.default_rng(7)
    G = nx.DiGraph()
    names = [f"n{i}" for i in range(25)]
    for i in range(25):
        for j in rng.choice(25, 4, replace=False):
            if j != i:
                G.add_edge(names[i], names[int(j)], cost=float(rng.uniform(0.05, 2.0)))
    every = all_best_routes(G)
    for a in names:
        for b in names:
            if a == b:
                continue
            if (a, b) not in every:
                assert not nx.has_path(G, a, b)
                continue
            r = every[(a, b)]
            assert r.nodes[0] == a and r.nodes[-1] == b
            assert r.cost == pytest.approx(nx.dijkstra_path_length(G, a, b, weight="cost"))
            assert r.cost == pytest.approx(k_best_routes(G, a, b, k=1)[0].cost)
            assert r.cost == pytest.approx(k_best_routes(G, a, b, k=2)[0].cost)
            assert r.cost == pytest.approx(sum(r.edge_costs))
