"""Graph synchronisation (bridge.sync): a universe by generalised Procrustes, cycle
fine-tuning of MLP edges, and the new graph they return."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import bridge
from bridge.errors import BridgeError, InvalidParameter, NoPairs, UnknownNode
from bridge.sync import fit_universe, graph_cycles, polar, synchronize

N, K = 400, 8


def _orth(rng, d_in, d_out):
    """A (d_in, d_out) matrix with orthonormal rows (d_in <= d_out)."""
    q, _ = np.linalg.qr(rng.standard_normal((d_out, d_out)))
    return q[:d_in]


def _latent(seed=0):
    rng = np.random.default_rng(seed)
    return rng, rng.standard_normal((N, K))


def _graph(noise=0.05, translator="linear", extra=(), seed=0, **fit):
    """Nodes a, b, c (dim 8) and d (dim 12): random orthogonal views of one latent plus
    noise and an offset; edges a-b, b-c, c-a (a triangle) and c-d."""
    rng, L = _latent(seed)
    ids = [f"s{i}" for i in range(N)]
    g = bridge.ModalityGraph(seed=0)
    views = {}
    for name, dim in (("a", K), ("b", K), ("c", K), ("d", 12)) + tuple(extra):
        R = _orth(rng, K, dim)
        X = L @ R + noise * rng.standard_normal((N, dim)) + rng.standard_normal(dim)
        views[name] = R
        g.add_node(name, bridge.Cache.from_arrays(X.astype(np.float32), ids=ids))
    for a, b in (("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")):
        g.connect(a, b, translator=translator, **fit)
    return g, L, views


@pytest.fixture(scope="module")
def ridge_graph():
    return _graph(noise=0.3)


def _digest(g) -> str:
    """Everything an edge is: its translator's output on a fixed probe, metrics, cost."""
    h = hashlib.sha256()
    rng = np.random.default_rng(123)
    for a, b in sorted(g.edges):
        d = g.edge(a, b)
        probe = rng.standard_normal((5, g.node(a)["dim"])).astype(np.float32)
        h.update(np.ascontiguousarray(d["translator"].transform(probe)).tobytes())
        h.update(repr(sorted(d["metrics"].items())).encode())
        h.update(repr((d["cost"], d["kind"], d["split"])).encode())
    return h.hexdigest()


def _residual(Z, L):
    """Relative error of the best rotation-and-scale fit of ``Z`` onto centred ``L``."""
    Zc, Lc = Z - Z.mean(0), L - L.mean(0)
    Q = polar(Zc.T @ Lc)
    fit = Zc @ Q
    s = np.sum(fit * Lc) / np.sum(fit * fit)
    return float(np.linalg.norm(s * fit - Lc) / np.linalg.norm(Lc))


def test_polar_is_the_procrustes_rotation():
    rng = np.random.default_rng(1)
    R = _orth(rng, 6, 6)
    X = rng.standard_normal((50, 6))
    Q = polar(X.T @ (X @ R))
    np.testing.assert_allclose(Q, R, atol=1e-8)
    Q = polar(rng.standard_normal((4, 9)))  # a wide matrix: orthonormal rows
    np.testing.assert_allclose(Q @ Q.T, np.eye(4), atol=1e-10)


def test_universe_recovers_the_latent_up_to_rotation():
    g, L, _ = _graph(noise=0.05)
    U = fit_universe(g)
    test = g.test_rows("a")
    zs = {}
    for n in g.nodes:
        Z = U.embed(n, g.cache(n).vectors(test)).astype(np.float64)
        zs[n] = Z
        # a node's rows carry its own noise (5% of the latent's norm) and no more
        assert _residual(Z, L[test]) < 0.07, n
    # their mean averages the noise of four views
    assert _residual(np.mean(list(zs.values()), 0), L[test]) < 0.04
    # a random view of the latent does not fit: the bounds above say something
    rng = np.random.default_rng(5)
    assert _residual(rng.standard_normal((test.size, 12)), L[test]) > 0.5
    # every node lands on the same universe points (two noises apart)
    for n in "bcd":
        err = np.linalg.norm(zs[n] - zs["a"]) / np.linalg.norm(zs["a"] - zs["a"].mean(0))
        assert err < 0.1, n
    assert U.dim == 12 and U.report["converged"]
    # each orthogonal node's way out is its way in reversed: decode(embed(x)) == x
    x = g.cache("b").vectors(test)
    np.testing.assert_allclose(U.decode("b", U.embed("b", x)), x, atol=1e-4)


def test_cycles_close_after_synchronising(ridge_graph):
    g, _, _ = ridge_graph
    h = synchronize(g, "universe", variant="scaled")  # orthogonal maps: exact closure
    auto = synchronize(g, "universe")  # may pick ridge maps for noisy nodes on val
    for walk in (["a", "b", "a"], ["a", "b", "c", "a"], ["a", "c", "b", "a"], ["c", "d", "c"],
                 ["b", "c", "d", "c", "a", "b"]):
        before, after = g.walk(walk)["loss_mean"], h.walk(walk)["loss_mean"]
        assert before > 1e-3, walk
        assert after < 1e-6, walk
        assert h.walk(walk)["cycle_R@1"] == 1.0
        assert auto.walk(walk)["loss_mean"] < before, walk
    # through the larger node d the way back projects onto the 8 shared dimensions: not
    # the identity, but closer than before
    walk = ["d", "c", "d"]
    assert h.walk(walk)["loss_mean"] < g.walk(walk)["loss_mean"]
    # a two-hop route now agrees with the composition through the universe
    x = g.cache("a").vectors(g.test_rows("a"))
    np.testing.assert_allclose(h.translate(x, ["a", "b", "c"]), h.translate(x, ["a", "c"]),
                               atol=1e-4)


def test_synchronised_edges_carry_metrics_splits_and_costs(ridge_graph):
    g, _, _ = ridge_graph
    h = synchronize(g, "universe")
    assert sorted(h.nodes) == sorted(g.nodes) and sorted(h.edges) == sorted(g.edges)
    assert h.settings() == g.settings()
    for a, b in h.edges:
        d, old = h.edge(a, b), g.edge(a, b)
        assert d["kind"] == "linear"
        m = d["metrics"]
        for key in ("val_R@1", "val_R@1_lcb", "val_cos", "test_R@1", "test_R@1_lcb",
                    "test_cos", "n_train", "n_val", "n_test"):
            assert key in m, (a, b, key)
        for key in ("n_train", "n_val", "n_test"):
            assert m[key] == old["metrics"][key]
        assert d["split"] == old["split"]
        assert np.isfinite(d["cost"]) and d["cost"] == bridge.planner.edge_cost(m)
        # the metric is the edge's own: val cos recomputed on its val pairs
        T = d["translator"]
        assert T.fit_report_["sync"] == "universe"
        P, rule = g.edge_pairs(a, b)
        va = g.split(P, rule)["val"]
        m_val = bridge.paired_retrieval(T.transform(g.cache(a).vectors(P.a_rows[va])),
                                        g.cache(b).vectors(P.b_rows[va]))
        assert m["val_cos"] == pytest.approx(m_val["cos"], abs=1e-6)
    route = h.route("a", "d")
    assert route.nodes[0] == "a" and route.nodes[-1] == "d"
    assert h.edge("a", "b")["metrics"]["val_R@1"] >= g.edge("a", "b")["metrics"]["val_R@1"]


def test_synchronised_graph_saves_and_loads(ridge_graph, tmp_path):
    g, _, _ = ridge_graph
    h = synchronize(g, "universe", variant="scaled")
    h.save(tmp_path / "synced")
    h2 = bridge.load_graph(tmp_path / "synced")
    for a, b in h.edges:
        xa = g.cache(a).vectors(np.arange(20))
        np.testing.assert_array_equal(h2.translate(xa, [a, b]), h.translate(xa, [a, b]))
        assert h2.edge(a, b)["metrics"] == pytest.approx(h.edge(a, b)["metrics"])
        assert h2.edge(a, b)["split"] == h.edge(a, b)["split"]
    assert h2.walk(["a", "b", "c", "a"])["loss_mean"] < 1e-6


def test_the_input_graph_is_unchanged(ridge_graph):
    g, _, _ = ridge_graph
    before = _digest(g)
    ids = {k: id(v) for k, v in ((e, g.translator(*e)) for e in g.edges)}
    synchronize(g, "universe", variant="ridge")
    assert _digest(g) == before
    assert {e: id(g.translator(*e)) for e in g.edges} == ids


def test_scaled_variant_keeps_each_node_spread():
    rng, L = _latent(3)
    ids = [f"s{i}" for i in range(N)]
    g = bridge.ModalityGraph(seed=0)
    for name, scale in (("a", 1.0), ("b", 10.0), ("c", 0.1)):
        X = scale * (L @ _orth(rng, K, K)) + 0.01 * rng.standard_normal((N, K))
        g.add_node(name, bridge.Cache.from_arrays(X.astype(np.float32), ids=ids))
    for a, b in (("a", "b"), ("b", "c"), ("c", "a")):
        g.connect(a, b, translator="procrustes")
    U = fit_universe(g, variant="scaled")
    assert U.scales["b"] == pytest.approx(U.scales["a"] / 10, rel=0.05)
    h = U.apply(g)
    x = g.cache("a").vectors(g.test_rows("a"))
    y = h.translate(x, ["a", "b"])
    rms = lambda v: float(np.sqrt(((v - v.mean(0)) ** 2).sum(1).mean()))  # noqa: E731
    truth = g.cache("b").vectors(g.test_rows("b"))
    assert rms(y) == pytest.approx(rms(truth), rel=0.05)
    # orthogonal maps without a scale: each map in has orthonormal rows
    Uo = fit_universe(g, variant="orthogonal")
    for n in "abc":
        Q = Uo.maps_in[n]
        np.testing.assert_allclose(Q @ Q.T, np.eye(K), atol=1e-8)
        assert Uo.scales[n] == 1.0


def test_auto_gives_a_ridge_map_to_a_node_no_rotation_fits():
    rng, L = _latent(4)
    g, _, _ = _graph(noise=0.05, seed=4)
    # node m sees the latent through a skewed (non-orthogonal) linear map
    A = np.diag(np.linspace(0.2, 3.0, K)) @ _orth(rng, K, K)
    X = L @ A + 0.05 * rng.standard_normal((N, K))
    g.add_node("m", bridge.Cache.from_arrays(X.astype(np.float32), ids=list(g.cache("a").ids)))
    g.connect("m", "a", translator="linear")
    auto = fit_universe(g, variant="auto")
    ortho = fit_universe(g, variant="scaled")
    assert auto.node_maps["m"].startswith("ridge")
    assert auto.report["val_R@1"] > ortho.report["val_R@1"]
    assert set(auto.report["variants"]) == {"orthogonal", "scaled"}
    assert fit_universe(g, variant="ridge").node_maps["a"].startswith("ridge")


def test_a_pair_table_edge_joins_rows_of_different_ids():
    """Rows paired by an edge's pair table (not by shared ids) are one universe point."""
    rng, L = _latent(6)
    g = bridge.ModalityGraph(seed=0)
    ids = [f"s{i}" for i in range(N)]
    g.add_node("a", bridge.Cache.from_arrays((L @ _orth(rng, K, K)).astype(np.float32), ids=ids))
    g.add_node("b", bridge.Cache.from_arrays((L @ _orth(rng, K, K)).astype(np.float32), ids=ids))
    other = [f"t{i}" for i in range(N)]
    g.add_node("c", bridge.Cache.from_arrays((L @ _orth(rng, K, K)).astype(np.float32),
                                             ids=other))
    g.connect("a", "b", translator="procrustes")
    g.connect("b", "c", translator="procrustes", pairs=list(zip(ids, other)))
    g.connect("c", "a", translator="procrustes", pairs=list(zip(other, ids)))
    h = synchronize(g, "universe")
    assert h.walk(["a", "b", "c", "a"])["loss_mean"] < 1e-6
    assert h.edge("b", "c")["pair_table"] is not None


def test_bad_input_raises_clear_errors(ridge_graph):
    g, _, _ = ridge_graph
    with pytest.raises(InvalidParameter, match="'nope'.*universe.*cycle"):
        synchronize(g, "nope")
    with pytest.raises(InvalidParameter, match="'skew'.*orthogonal"):
        synchronize(g, "universe", variant="skew")
    with pytest.raises(InvalidParameter, match="tol"):
        fit_universe(g, tol=-1)
    with pytest.raises(InvalidParameter, match="max_iter"):
        fit_universe(g, max_iter=0)
    with pytest.raises(InvalidParameter, match="ridge_alphas"):
        fit_universe(g, ridge_alphas=())
    with pytest.raises(InvalidParameter, match="ModalityGraph"):
        synchronize("graph")
    with pytest.raises(InvalidParameter, match="'universe' takes no option 'epochs'.*variant"):
        synchronize(g, "universe", epochs=3)  # an option of the other method
    one = bridge.ModalityGraph()
    one.add_node("solo", np.ones((4, 3), np.float32))
    with pytest.raises(NoPairs, match="at least two nodes.*'solo'"):
        synchronize(one)
    lone = g.copy()
    lone.add_node("island", np.ones((4, K), np.float32))
    with pytest.raises(NoPairs, match="'island' has no edge"):
        synchronize(lone)
    U = fit_universe(g)
    with pytest.raises(UnknownNode, match="'zz'"):
        U.embed("zz", np.ones((1, K), np.float32))
    with pytest.raises(BridgeError, match="'island'"):
        U.apply(lone)


def test_a_node_whose_pairs_are_all_held_out_is_refused():
    rng, L = _latent(7)
    g = bridge.ModalityGraph(seed=0, splits="prefix")
    pre = ["train" if i < N // 2 else "val" if i < 3 * N // 4 else "test" for i in range(N)]
    ids = [f"{p}:{i}" for i, p in enumerate(pre)]
    for n in "ab":
        g.add_node(n, bridge.Cache.from_arrays((L @ _orth(rng, K, K)).astype(np.float32),
                                               ids=ids))
    g.connect("a", "b", translator="procrustes")
    # node c shares only val and test ids with a: nothing to fit it on
    held = [i for i, p in enumerate(pre) if p != "train"]
    g.add_node("c", bridge.Cache.from_arrays((L[held] @ _orth(rng, K, K)).astype(np.float32),
                                             ids=[ids[i] for i in held]))
    g.edge_pairs("c", "a")  # the graph pairs them by id
    T = bridge.make_translator("procrustes").fit(g.cache("c").vectors(), g.cache("a").vectors(
        g.cache("a").rows(g.cache("c").ids)))
    g.add_edge("c", "a", T)
    with pytest.raises(NoPairs, match="node 'c' has no paired training rows"):
        fit_universe(g)


def test_graph_cycles_lists_every_rotation(ridge_graph):
    g, _, _ = ridge_graph
    two = graph_cycles(g, 2)
    assert len(two) == 8 and all(len(w) == 3 and w[0] == w[-1] for w in two)
    three = graph_cycles(g, 3)
    assert len(three) == 8 + 6
    assert ["a", "b", "c", "a"] in three and ["b", "a", "c", "b"] in three
    with pytest.raises(InvalidParameter, match="max_length"):
        graph_cycles(g, 1)


MLP = dict(width=16, depth=1, epochs=1, batch_size=64, seed=0)


@pytest.fixture(scope="module")
def mlp_graph():
    g, _, _ = _graph(noise=0.3, translator="mlp", **MLP)
    return g


def test_cycle_finetune_returns_mlp_edges_never_worse_on_val(mlp_graph):
    g = mlp_graph
    before = _digest(g)
    h = synchronize(g, "cycle", weights=(0.0, 3.0), epochs=2, steps_per_epoch=4,
                    batch_size=32, lr=1e-3, max_length=3)
    assert _digest(g) == before
    assert sorted(h.edges) == sorted(g.edges)
    rep = h.translator("a", "b").fit_report_["sync"]
    assert rep["method"] == "cycle" and rep["cycle_weight"] in (0.0, 3.0)
    assert set(rep["weights"]) == {"0.0", "3.0"}
    for w, r in rep["weights"].items():
        curve = r["curve"]
        keys = [np.mean([c["edge_val_R@1"], c["cycle_val_R@1"], c["route_val_R@1"]])
                for c in curve]
        assert [c["val_key"] for c in curve] == pytest.approx(keys)
        # the kept epoch is the best on the validation key, epoch 0 (the input) included
        assert r["val_key"][0] == pytest.approx(max(keys))
        assert r["val_key"][0] >= keys[0]
    for a, b in h.edges:
        d = h.edge(a, b)
        assert d["kind"] == "mlp" and "val_R@1" in d["metrics"] and "test_R@1" in d["metrics"]
    # the kept weights are those the report describes: edge val R@1 measured again
    win = rep["weights"][str(rep["cycle_weight"])]
    best = win["curve"][win["best_epoch"]]
    got = np.mean([h.edge(a, b)["metrics"]["val_R@1"] for a, b in h.edges])
    assert got == pytest.approx(best["edge_val_R@1"], abs=1e-9)


def test_cycle_terms_close_cycles_of_mlp_edges(mlp_graph):
    g = mlp_graph
    walks = (["a", "b", "c", "a"], ["a", "c", "b", "a"], ["a", "b", "a"], ["c", "d", "c"])

    def loss(graph):
        return np.mean([graph.walk(w)["loss_mean"] for w in walks])

    opts = dict(epochs=2, steps_per_epoch=20, batch_size=64, lr=3e-3, max_length=3, patience=3)
    plain = synchronize(g, "cycle", weights=(0.0,), **opts)  # the edges' own losses only
    closed = synchronize(g, "cycle", weights=(10.0,), **opts)
    assert loss(closed) < loss(g)
    assert loss(closed) < loss(plain)


def test_cycle_method_refuses_non_mlp_edges_and_bad_options(ridge_graph, mlp_graph):
    g, _, _ = ridge_graph
    with pytest.raises(InvalidParameter, match="MLP edges.*'linear'.*universe"):
        synchronize(g, "cycle")
    for bad in ({"weights": ()}, {"weights": (-1.0,)}, {"epochs": 0}, {"batch_size": 1},
                {"max_length": 1}, {"steps_per_epoch": 0}):
        with pytest.raises(InvalidParameter):
            synchronize(mlp_graph, "cycle", **bad)
    tree = mlp_graph.copy()
    for e in [("c", "a"), ("a", "c"), ("b", "c"), ("c", "b")]:
        tree.G.remove_edge(*e)
    tree.remove_node("d")
    tree.remove_node("c")
    tree.G.remove_edge("b", "a")  # a -> b only: no cycle left
    with pytest.raises(NoPairs, match="no cycle"):
        synchronize(tree, "cycle")


def test_graph_method_synchronizes_like_the_function(ridge_graph):
    g, _, _ = ridge_graph
    before = _digest(g)
    a = g.synchronize("universe")
    b = synchronize(g, "universe")
    assert _digest(g) == before
    assert _digest(a) == _digest(b) != before
