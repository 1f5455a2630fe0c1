"""Weak edges that borrow from the graph (bridge.borrow, connect(prior=...)): weighted
closed-form fits against explicit references, the route's pseudo pairs, the selection of
the weight on validation, MLPs that start from the borrowed map, and refusals."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import bridge
from bridge.borrow import PRIOR_WEIGHTS, fit_with_prior, prior_route, prior_rows
from bridge.errors import DimensionMismatch, InvalidParameter, NoPairs, NoRoute
from bridge.evaluate import evaluate_route
from bridge.translators import make_translator
from bridge.translators.functional import pair_moments, ridge_fit

N, D = 1500, 16
TRAIN, VAL = 1100, 1300  # ids train:0..1099, val:1100..1299, test:1300..1499


def _ids():
    return [f"{'train' if i < TRAIN else 'val' if i < VAL else 'test'}:{i}" for i in range(N)]


def _graph(noise=0.2, seed=0):
    """Three views a, b, c of one latent (c far from linear in a only through noise);
    strong edges a -> b and b -> c trained on every training caption."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((N, D))
    g = bridge.ModalityGraph(splits="prefix", seed=0)
    for name in ("a", "b", "c"):
        X = Z @ rng.standard_normal((D, D)) + noise * rng.standard_normal((N, D))
        g.add_node(name, bridge.Cache.from_arrays(X.astype(np.float32), ids=_ids()))
    g.connect("a", "b", translator="linear", alpha="auto")
    g.connect("b", "c", translator="linear", alpha="auto")
    return g


@pytest.fixture(scope="module")
def graph():
    return _graph()


def _few(n_train=30, n_val=40):
    ids = _ids()
    keep = ids[:n_train] + ids[TRAIN:TRAIN + n_val] + ids[VAL:]
    return [(i, i) for i in keep]


def _connect(g, **kw):
    h = g.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h.connect("a", "c", pairs=_few(), directions="forward", **kw)
    return h


# ---------------------------------------------------------------- weighted moments
def test_weighted_moments_equal_repeated_rows(rng):
    X, Y = rng.standard_normal((50, 6)), rng.standard_normal((50, 4))
    U, V = rng.standard_normal((30, 6)), rng.standard_normal((30, 4))
    shift = (X.mean(0), Y.mean(0))
    m = pair_moments(X, Y, shift=shift).plus(pair_moments(U, V, shift=shift), 3.0)
    ref = ridge_fit(np.vstack([X, U, U, U]), np.vstack([Y, V, V, V]), 0.5)
    got = ridge_fit(m, None, 0.5)
    np.testing.assert_allclose(got[0], ref[0], atol=1e-10)
    np.testing.assert_allclose(got[1], ref[1], atol=1e-10)
    assert m.n == 50 + 3 * 30


def test_plus_refuses_other_shift_and_bad_weight(rng):
    X, Y = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    a, b = pair_moments(X, Y), pair_moments(X + 1, Y)
    with pytest.raises(ValueError, match="shift"):
        a.plus(b)
    with pytest.raises(ValueError, match="weight"):
        a.plus(a, -1.0)


@pytest.mark.parametrize("kind,opts", [("linear", {"alpha": 0.3}), ("linear", {"alpha": "auto"}),
                                       ("procrustes", {})])
def test_fit_moments_equals_fit_on_rows(rng, kind, opts):
    X, Y = rng.standard_normal((200, 8)), rng.standard_normal((200, 8))
    Xv, Yv = rng.standard_normal((40, 8)), rng.standard_normal((40, 8))
    a = make_translator(kind, **opts).fit(X, Y, Xv, Yv)
    b = make_translator(kind, **opts).fit_moments(pair_moments(X, Y), Xv, Yv)
    np.testing.assert_allclose(a.transform(Xv), b.transform(Xv), atol=1e-5)
    assert b.fit_report_["n_train"] == 200
    assert b.fit_report_["val_R@1"] == pytest.approx(a.fit_report_["val_R@1"])
    W, c = b.affine()
    np.testing.assert_allclose(Xv.astype(np.float32) @ W + c, b.transform(Xv), atol=1e-4)


def test_fit_moments_refusals(rng):
    X = rng.standard_normal((20, 4))
    with pytest.raises(InvalidParameter, match="not fitted from pair moments"):
        make_translator("mlp").fit_moments(pair_moments(X, X))
    with pytest.raises(InvalidParameter, match="PairMoments"):
        make_translator("linear").fit_moments(X)
    with pytest.raises(DimensionMismatch, match="moments' dims"):
        make_translator("linear").fit_moments(pair_moments(X, X), X[:, :3], X[:, :3])


# ---------------------------------------------------------------- the route's help
def test_weight_zero_is_the_lone_edge(graph):
    lone = _connect(graph, translator="linear", alpha=0.1)
    zero = _connect(graph, translator="linear", alpha=0.1, prior="route", prior_weight=0.0)
    x = graph.cache("a").vectors(np.arange(5))
    np.testing.assert_allclose(lone.translator("a", "c").transform(x),
                               zero.translator("a", "c").transform(x), atol=1e-4)
    assert zero.translator("a", "c").fit_report_["prior"]["weight"] == 0.0


def test_large_weight_distils_the_route(graph):
    """With the pseudo pairs outweighing the 30 real pairs a million to one, the edge is
    the ridge fit of the route's own outputs on the source's training rows."""
    h = _connect(graph, translator="linear", alpha=0.1, prior="route", prior_weight=1e6)
    rows = graph.split_rows("a")["train"]
    Xu = graph.cache("a").vectors(rows)
    Ru = graph.translate(Xu, ["a", "b", "c"])
    W, b = ridge_fit(Xu, Ru, 0.1 / (1e6 * 30 / rows.size))  # the penalty per pseudo weight
    x = graph.cache("a").vectors(graph.test_rows("a"))
    got = h.translator("a", "c").transform(x)
    np.testing.assert_allclose(got, x @ W + b, atol=2e-3 * np.abs(got).max())


def test_borrowed_edge_beats_the_lone_edge_on_few_pairs(graph):
    route = evaluate_route(graph, "a", "c", route=["a", "b", "c"])["R@1"]
    for kind, opts in (("linear", {"alpha": "auto"}), ("procrustes", {})):
        lone = evaluate_route(_connect(graph, translator=kind, **opts), "a", "c",
                              route=["a", "c"])["R@1"]
        h = _connect(graph, translator=kind, prior="route", **opts)
        got = evaluate_route(h, "a", "c", route=["a", "c"])["R@1"]
        assert got > lone + 0.05, (kind, got, lone)
        if kind == "linear":  # a rotation cannot follow the route's general linear map
            assert got >= route - 0.05, (kind, got, route)
        rep = h.translator("a", "c").fit_report_["prior"]
        assert rep["route"] == ["a", "b", "c"]
        assert rep["weights"] == list(PRIOR_WEIGHTS)
        assert rep["weight"] == rep["weights"][int(np.argmax(rep["val_R@1"]))] or \
            rep["val_R@1"][rep["weights"].index(rep["weight"])] == max(rep["val_R@1"])
        assert rep["rows"] == TRAIN  # every training row of a; no val or test row


def test_pseudo_rows_are_training_rows_outside_the_edge_held_pairs(graph):
    held = np.array([0, 1, 2, TRAIN + 3, VAL + 4])
    rows = prior_rows(graph, "a", held)
    assert rows.max() < TRAIN and not set(rows) & {0, 1, 2}
    assert rows.size == TRAIN - 3
    few = prior_rows(graph, "a", held, rows=10, seed=1)
    assert few.size == 10 and np.all(np.diff(few) > 0)
    np.testing.assert_array_equal(few, prior_rows(graph, "a", held, rows=10, seed=1))


def test_prior_route_avoids_the_edge_itself(graph):
    h = _connect(graph, translator="linear", alpha=0.1)
    r = prior_route(h, "a", "c", "route")
    assert r.nodes == ("a", "b", "c")
    with pytest.raises(InvalidParameter, match="uses the edge"):
        prior_route(h, "a", "c", ["a", "c"])
    with pytest.raises(InvalidParameter, match="must start at"):
        prior_route(h, "a", "c", ["b", "c"])
    with pytest.raises(NoRoute, match="no edge"):
        prior_route(h, "a", "c", ["a", "b", "c", "a", "b", "c"])  # no edge c -> a


def test_both_directions_borrow_from_their_own_routes(graph):
    h = graph.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h.connect("a", "c", translator="linear", alpha="auto", pairs=_few(), prior="route")
    assert h.translator("a", "c").fit_report_["prior"]["route"] == ["a", "b", "c"]
    assert h.translator("c", "a").fit_report_["prior"]["route"] == ["c", "b", "a"]


def test_mlp_starts_from_the_borrowed_map(graph):
    h = _connect(graph, translator="mlp", prior="route", epochs=0, width=32, seed=0)
    T = h.translator("a", "c")
    rep = T.fit_report_["prior"]
    assert rep["mode"] == "start"
    ridge = _connect(graph, translator="linear", alpha="auto", prior="route",
                     prior_weight=rep["weight"])
    x = graph.cache("a").vectors(graph.test_rows("a"))
    np.testing.assert_allclose(T.transform(x), ridge.translator("a", "c").transform(x),
                               atol=1e-4)
    m = _connect(graph, translator="mlp", prior="route", prior_mode="mix", epochs=2,
                 width=32, seed=0)
    mix = m.translator("a", "c").fit_report_["prior"]
    assert mix["mode"] == "mix"
    assert mix["mixed_rows"] == min(TRAIN, round(mix["weight"] * 30)) or mix["weight"] == 0


def test_fit_from_refusals(rng):
    X = rng.standard_normal((40, 4)).astype(np.float32)
    start = make_translator("linear").fit(X, X)
    with pytest.raises(InvalidParameter, match="init=None"):
        make_translator("mlp", init=None).fit_from(start, X, X)
    with pytest.raises(InvalidParameter, match="affine"):
        make_translator("mlp").fit_from(object(), X, X)
    with pytest.raises(DimensionMismatch, match="start maps"):
        make_translator("mlp").fit_from(start, X, X[:, :3])


def test_fit_with_prior_auto_needs_validation(rng):
    X = rng.standard_normal((20, 4))
    with pytest.raises(InvalidParameter, match="validation"):
        fit_with_prior(make_translator("linear"), X, X, None, None, None, None, X, X)


@pytest.mark.parametrize("kw,err,match", [
    ({"prior": "nearest"}, InvalidParameter, "prior must be"),
    ({"prior": 3}, InvalidParameter, "prior must be"),
    ({"prior": "route", "prior_weight": -1}, InvalidParameter, "prior_weight"),
    ({"prior": "route", "prior_weight": float("nan")}, InvalidParameter, "prior_weight"),
    ({"prior": "route", "prior_rows": 1}, InvalidParameter, "prior_rows"),
    ({"prior": "route", "prior_mode": "blend"}, InvalidParameter, "prior_mode"),
    ({"prior": "route", "translator": "relative"}, InvalidParameter, "needs translator"),
    ({"prior": "route", "translator": "mlp", "init": None}, InvalidParameter, "init=None"),
    ({"prior": "route", "translator": "mlp", "cycle_weight": 1.0, "directions": "both"},
     InvalidParameter, "cycle_weight"),
])
def test_bad_prior_options_are_refused_before_training(graph, kw, err, match):
    h = graph.copy()
    kw = {"translator": "linear", "directions": "forward", **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(err, match=match):
            h.connect("a", "c", pairs=_few(), **kw)
    assert not h.G.has_edge("a", "c")


def test_no_other_route_is_refused(graph):
    h = bridge.ModalityGraph(splits="prefix")
    for n in ("a", "c"):
        h.add_node(n, graph.cache(n))
    with pytest.raises(NoRoute, match="no other route"):
        h.connect("a", "c", translator="linear", prior="route")


def test_no_training_rows_to_borrow_from(graph):
    h = graph.copy()
    with pytest.raises(NoPairs, match="training rows"):
        prior_rows(h, "a", np.arange(TRAIN))


def test_borrowed_edge_saves_and_loads(graph, tmp_path):
    h = _connect(graph, translator="linear", alpha="auto", prior="route")
    h.save(tmp_path / "g")
    g2 = bridge.load_graph(tmp_path / "g")
    rep = g2.translator("a", "c").fit_report_["prior"]
    assert rep["route"] == ["a", "b", "c"]
    for f in (tmp_path / "g").rglob("*.json"):
        json.loads(f.read_text(), parse_constant=lambda c: pytest.fail(f"{f}: {c}"))
    x = graph.cache("a").vectors(np.arange(4))
    np.testing.assert_allclose(g2.translator("a", "c").transform(x),
                               h.translator("a", "c").transform(x), atol=1e-6)
