"""Calibrated route prediction: the model recovers composed R@1 measured by brute force,
routes carry predictions, the calibration survives save/load and is validated when read,
and an uncalibrated graph plans exactly as before."""

import json
import math
import re
import warnings

import numpy as np
import pytest

import bridge
from bridge.calibration import (
    FEATURES,
    Calibration,
    gallery_items,
    prediction_check,
    refit,
    sub_gallery_r1,
)
from bridge.errors import CorruptFile, InvalidParameter, NoRoute, SmallSampleWarning
from bridge.evaluate import HeldOut
from bridge.planner import k_best_routes
from bridge.store import Cache
from bridge.translators.base import Translator

N, D = 1500, 16
#: items of the graphs whose composed R@1 is known in closed form (val and test hold ~10%)
N_LOSSY = 4000
#: every node holds the same items, each in its own rotated space; every edge is the exact
#: map between two nodes composed with a small random rotation of its own (angle scale
#: TURN[edge]), as a translator fitted on few noisy pairs would be off. A route's error is
#: the composition of its edges' independent errors, so it compounds with every hop.
NODES = "abcde"
TURN = {("a", "b"): 0.42, ("b", "c"): 0.55, ("c", "d"): 0.48, ("a", "e"): 0.6,
        ("e", "d"): 0.5, ("b", "e"): 0.45}


def _name(k):
    return f"x@{k}"


def _turn(rng, scale):
    """A random rotation of angles about ``scale`` radians (the exponential of a random
    skew-symmetric matrix)."""
    from scipy.linalg import expm

    A = rng.standard_normal((D, D)) * scale / math.sqrt(D)
    return expm(A - A.T)


def _graph():
    from bridge.metrics import paired_retrieval
    from bridge.translators import ProcrustesTranslator

    rng = np.random.default_rng(7)
    Z = rng.standard_normal((N, D))
    ids = np.array([f"i{i}" for i in range(N)])
    g = bridge.ModalityGraph(seed=0)
    rot = {}
    for k in NODES:
        rot[k] = np.linalg.qr(rng.standard_normal((D, D)))[0]
        g.add_node(_name(k), Cache.from_arrays((Z @ rot[k]).astype(np.float32), ids=ids))
    for (a, b), scale in TURN.items():
        for u, v in ((a, b), (b, a)):
            x = g.cache(_name(u)).vectors()
            T = ProcrustesTranslator(center=False, scale=False).fit(
                x, (x @ rot[u].T @ rot[v] @ _turn(rng, scale)).astype(np.float32))
            P = g.pairs(_name(u), _name(v))
            m = {}
            for split, rows in g.split(P).items():
                r = paired_retrieval(T.transform(g.cache(_name(u)).vectors(P.a_rows[rows])),
                                     g.cache(_name(v)).vectors(P.b_rows[rows]))
                m.update({f"{split}_R@1": r["R@1"], f"{split}_cos": r["cos"],
                          f"n_{split}": int(rows.size)})
            g.add_edge(_name(u), _name(v), T, m)
    return g


class LossyMap(Translator):
    """The exact map between two nodes that loses some items: a row whose image projects
    beyond ``threshold`` on direction ``h`` is sent elsewhere (turned by ``scramble``)."""

    kind = "lossy"

    def __init__(self, M, h, threshold, scramble):
        self.M, self.h, self.threshold, self.scramble = M, h, threshold, scramble
        self.in_dim_ = self.out_dim_ = M.shape[0]

    def _transform(self, X):
        Y = X @ self.M
        lost = Y @ self.h > self.threshold
        Y[lost] = Y[lost] @ self.scramble
        return Y.astype(np.float32)


def _metrics(g, u, v, T) -> dict:
    from bridge.metrics import paired_retrieval

    P = g.pairs(u, v)
    m = {}
    for split, rows in g.split(P).items():
        r = paired_retrieval(T.transform(g.cache(u).vectors(P.a_rows[rows])),
                             g.cache(v).vectors(P.b_rows[rows]))
        m.update({f"{split}_R@1": r["R@1"], f"{split}_cos": r["cos"], f"n_{split}": int(rows.size)})
    return m


#: the share of items each directed edge loses
LOSS = dict(zip([(a, b) for a, b in TURN] + [(b, a) for a, b in TURN],
                (0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.09, 0.11, 0.13, 0.15, 0.17)))


def lossy_graph(shared: bool):
    """Nodes as in :func:`_graph`; edges exact but losing items: each edge the items that
    project high on a latent direction of its own (``shared=False``: independent losses,
    a route keeps an item with the product of its edges' chances) or on one direction for
    all (``shared=True``: nested losses, a route keeps what its weakest edge keeps)."""
    from scipy.stats import norm

    rng = np.random.default_rng(11)
    Z = rng.standard_normal((N_LOSSY, D))
    ids = np.array([f"i{i}" for i in range(N_LOSSY)])
    basis = np.linalg.qr(rng.standard_normal((D, D)))[0]  # orthonormal latent directions
    g = bridge.ModalityGraph(seed=0)
    rot = {}
    for k in NODES:
        rot[k] = np.linalg.qr(rng.standard_normal((D, D)))[0]
        g.add_node(_name(k), Cache.from_arrays((Z @ rot[k]).astype(np.float32), ids=ids))
    for i, ((u, v), q) in enumerate(LOSS.items()):
        direction = basis[0 if shared else i]
        T = LossyMap(rot[u].T @ rot[v], rot[v].T @ direction, norm.ppf(1 - q),
                     np.linalg.qr(rng.standard_normal((D, D)))[0])
        g.add_edge(_name(u), _name(v), T, _metrics(g, _name(u), _name(v), T))
    return g


@pytest.fixture(scope="module")
def plain():
    return _graph()


@pytest.fixture(scope="module")
def calibrated(plain):
    g = plain.copy()
    g.calibrate()
    return g


def brute_r1(g, nodes, split="test") -> float:
    """Composed R@1 by hand: the split's paired rows run through every translator, each
    query ranked against every target row by cosine (ties against the query)."""
    src, dst = nodes[0], nodes[-1]
    P = g.pairs(src, dst)
    idx = g.split(P)[split]
    x = g.cache(src).vectors(P.a_rows[idx]).astype(np.float64)
    y = g.cache(dst).vectors(P.b_rows[idx]).astype(np.float64)
    for u, v in zip(nodes[:-1], nodes[1:]):
        x = g.translator(u, v).transform(x.astype(np.float32)).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    S = x @ y.T
    right = np.diag(S).copy()
    np.fill_diagonal(S, -np.inf)
    return float(np.mean(right > S.max(axis=1)))


# ---------------------------------------------------------------------------
# the model recovers what brute force measures


@pytest.mark.parametrize("shared, exponent", [(False, 1.0), (True, 0.0)])
def test_calibration_recovers_composed_r1(shared, exponent):
    g = lossy_graph(shared)
    cal = g.calibrate()
    # independent losses compose as the product of edge R@1 (exponent 1), nested losses
    # as the weakest edge (exponent 0): the grouped CV finds which
    assert cal.weights["exponent"] == pytest.approx(exponent, abs=0.25)
    errors, truth_errors, multi = [], [], 0
    for s in g.nodes:
        for d in g.nodes:
            if s == d:
                continue
            for r in g.route(s, d, k=3):
                measured = brute_r1(g, r.nodes)
                kept = [1 - LOSS[(u[-1], v[-1])] for u, v in r.edges]
                truth = min(kept) if shared else math.prod(kept)  # closed form
                errors.append(abs(r.predicted_r1 - measured))
                truth_errors.append(abs(r.predicted_r1 - truth))
                multi += r.hops > 1
                assert abs(r.predicted_r1 - measured) <= 3 * r.predicted_sd + 0.01, r
                assert r.predicted_sd < 0.05
    assert multi >= 20  # composed routes to predict, not only edges
    # off by the sampling noise of ~400 val and ~400 test items, not more
    assert np.mean(errors) < 0.04
    assert np.mean(truth_errors) < 0.03
    if shared:
        return
    chk = prediction_check(g)
    s = chk["summary"]
    assert s["n_pairs"] == 20 and s["n_multi_hop"] > 0
    assert s["mae_all"] < s["uncalibrated_mae_all"]
    assert s["within_tolerance"] >= 0.9
    for p in chk["pairs"][:3]:  # the check's measurements are the brute-force ones
        for x in p["routes"]:
            assert x["measured"] == pytest.approx(brute_r1(g, x["nodes"]))
            assert x["uncalibrated"] == pytest.approx(math.exp(-sum(
                g.G.edges[u, v]["cost"] for u, v in zip(x["nodes"][:-1], x["nodes"][1:]))))


def test_val_routes_are_measured_with_evaluate_route(calibrated):
    from bridge.evaluate import evaluate_route

    cal = calibrated.calibration
    assert len(cal.routes) >= 40
    for r in cal.routes[::7]:
        m = evaluate_route(calibrated, r["nodes"][0], r["nodes"][-1], route=r["nodes"],
                           ks=(1,), split="val")
        assert r["r1"] == m["R@1"] == pytest.approx(brute_r1(calibrated, r["nodes"], "val"))


# ---------------------------------------------------------------------------
# routes carry predictions


def test_route_carries_prediction_and_is_ranked_by_it(calibrated):
    routes = calibrated.route("x@c", "x@a", k=3)
    assert len(routes) == 3
    preds = [r.predicted_r1 for r in routes]
    assert preds == sorted(preds, reverse=True)
    for r in routes:
        assert r.calibrated and 0 < r.predicted_r1 < 1 and r.predicted_sd > 0
        assert r.cost == pytest.approx(-math.log(r.predicted_r1))
        assert sum(r.edge_costs) == pytest.approx(r.cost)
        lo, hi = r.interval
        assert lo < r.predicted_r1 < hi
        assert r.gallery == calibrated.calibration.pairs["x@c -> x@a"]["n_test"]
        d = r.to_dict()
        assert d["calibrated"] and d["predicted_R@1"] == r.predicted_r1
        assert "predicted R@1" in str(r)
    assert calibrated.route("x@c", "x@a") == routes[0]


def test_prediction_falls_with_gallery_size(calibrated):
    small = calibrated.route("x@a", "x@d", gallery=10)
    large = calibrated.route("x@a", "x@d", gallery=100_000)
    assert small.predicted_r1 > large.predicted_r1
    assert small.gallery == 10 and large.gallery == 100_000
    # the one-edge route at its own val gallery is its own val R@1, shrunk by half a hit
    cal = calibrated.calibration
    e = cal.edges["x@a -> x@b"]
    p = cal.predict(calibrated, ["x@a", "x@b"], e["n_gallery"])["r1"]
    assert p == pytest.approx((e["r1"] * e["n_queries"] + 0.5) / (e["n_queries"] + 1))


def test_other_weights_rank_as_before_but_carry_predictions(calibrated, plain):
    by_hops = lambda u, v, d: 1.0  # noqa: E731
    a = calibrated.route("x@a", "x@d", k=3, weight=by_hops)
    b = plain.route("x@a", "x@d", k=3, weight=by_hops)
    assert [r.nodes for r in a] == [r.nodes for r in b]
    assert [r.cost for r in a] == [r.cost for r in b]
    assert all(r.predicted_r1 is not None for r in a)


def test_all_routes_and_translate_use_the_calibrated_pick(calibrated):
    allr = calibrated.all_routes()
    assert len(allr) == 20
    assert allr[("x@c", "x@a")] == calibrated.route("x@c", "x@a")
    x = calibrated.cache("x@c").vectors(np.arange(5))
    best = calibrated.route("x@c", "x@a")
    np.testing.assert_allclose(calibrated.translate(x, ("x@c", "x@a")),
                               calibrated.translate(x, best))


def test_retrained_edge_is_marked_stale(calibrated):
    g = calibrated.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        g.connect("x@a", "x@b", translator="procrustes")
    r = g.route("x@a", "x@c", k=3)
    stale = [x for x in r if "x@a -> x@b" in x.stale_edges]
    assert stale and all(x.predicted_r1 is not None for x in r)
    assert not calibrated.route("x@a", "x@c").stale_edges


def test_refit_without_features_and_weights_are_monotone(calibrated):
    cal = calibrated.calibration
    assert all(w >= 0 for w in cal.weights.values())
    assert sorted(cal.weights) == sorted(FEATURES)
    none = refit(calibrated, cal, features=())
    assert none.weights == {"exponent": 1.0, "hops": 0.0, "cos": 0.0, "shift": 0.0}
    assert none.routes is not cal.routes and len(none.routes) == len(cal.routes)
    # with no feature a route is predicted by the product of its edges' R@1, each moved
    # to the route's gallery
    r = next(x for x in cal.routes if len(x["nodes"]) == 3)
    edges = [cal.edges[f"{u} -> {v}"] for u, v in zip(r["nodes"][:-1], r["nodes"][1:])]
    p = none.predict(calibrated, r["nodes"], r["gallery"])["r1"]
    ells = [-math.log((e["r1"] * e["n_queries"] + 0.5) / (e["n_queries"] + 1))
            * ((r["gallery"] - 1) / (e["n_gallery"] - 1)) ** cal.gamma for e in edges]
    assert p == pytest.approx(math.exp(-sum(ells)))
    weakest = refit(calibrated, cal, features=("hops",))
    assert weakest.weights["exponent"] == 1.0  # the exponent is not fitted unless asked


# ---------------------------------------------------------------------------
# gallery helpers against closed forms


def test_sub_gallery_r1_closed_form():
    assert sub_gallery_r1([0, 1, 2], 1.0) == pytest.approx(1 / 3)
    assert sub_gallery_r1([0, 1, 2], 0.5) == pytest.approx((1 + 0.5 + 0.25) / 3)
    # Monte Carlo: keep each wrong row with probability f
    rng = np.random.default_rng(0)
    k = rng.integers(0, 6, 200)
    sims = [np.mean([(rng.random(int(n)) >= 0.3).all() for n in k]) for _ in range(200)]
    assert sub_gallery_r1(k, 0.3) == pytest.approx(np.mean(sims), abs=0.01)
    with pytest.raises(InvalidParameter, match="fraction"):
        sub_gallery_r1([1], 0.0)


def test_gallery_items_counts_classes():
    one = HeldOut(np.arange(4), np.arange(4), [np.array([i]) for i in range(4)])
    assert gallery_items(one) == 4
    # 3 queries of two classes; gallery rows 0-2 are class A, 3-4 class B, row 5 unrelated
    cls = HeldOut(np.arange(3), np.arange(6),
                  [np.array([0, 1, 2]), np.array([0, 1, 2]), np.array([3, 4])])
    assert gallery_items(cls) == 3


# ---------------------------------------------------------------------------
# saving and loading


def test_save_load_round_trip(calibrated, tmp_path):
    calibrated.save(tmp_path / "g")
    assert (tmp_path / "g" / "calibration.json").is_file()
    g2 = bridge.load_graph(tmp_path / "g")
    assert g2.calibration.to_json() == calibrated.calibration.to_json()
    for s, d in (("x@c", "x@a"), ("x@a", "x@d"), ("x@e", "x@c")):
        assert g2.route(s, d, k=2) == calibrated.route(s, d, k=2)
    # without caches too: predictions need no embeddings
    g3 = bridge.load_graph(tmp_path / "g", load_caches=False)
    assert g3.route("x@c", "x@a") == calibrated.route("x@c", "x@a")


def test_uncalibrated_graph_saves_no_calibration(plain, tmp_path):
    plain.save(tmp_path / "g")
    assert not (tmp_path / "g" / "calibration.json").exists()
    assert bridge.load_graph(tmp_path / "g").calibration is None


def _corrupt(path, edit):
    p = path / "calibration.json"
    d = json.loads(p.read_text())
    edit(d)
    p.write_text(json.dumps(d))


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["weights"].__setitem__("hops", -1.0), "weights.hops"),
    (lambda d: d["weights"].pop("cos"), "weights"),
    (lambda d: d.__setitem__("gamma", "x"), "gamma"),
    (lambda d: d["edges"][0].__setitem__("src", "x@nowhere"), "edges[0].src"),
    (lambda d: d["edges"][1].__setitem__("r1", 1.5), "edges[1].r1"),
    (lambda d: d["edges"][0].__setitem__("n_gallery", 2.5), "edges[0].n_gallery"),
    (lambda d: d["pairs"][0].__setitem__("n_test", 0), "pairs[0].n_test"),
    (lambda d: d["routes"][2].__setitem__("nodes", ["x@a"]), "routes[2].nodes"),
    (lambda d: d.__setitem__("format", "other"), "format"),
    (lambda d: d.__setitem__("extra", 1), "extra"),
])
def test_corrupt_calibration_names_the_field(calibrated, tmp_path, edit, field):
    calibrated.save(tmp_path / "g")
    _corrupt(tmp_path / "g", edit)
    with pytest.raises(CorruptFile, match=re.escape(f"calibration.json: {field}")):
        bridge.load_graph(tmp_path / "g")


def test_calibration_that_is_not_json_is_corrupt(calibrated, tmp_path):
    calibrated.save(tmp_path / "g")
    (tmp_path / "g" / "calibration.json").write_text('{"weights": NaN')
    with pytest.raises(CorruptFile, match="calibration"):
        bridge.load_graph(tmp_path / "g")


# ---------------------------------------------------------------------------
# an uncalibrated graph plans exactly as before


def test_uncalibrated_routes_are_the_edge_cost_routes(plain):
    assert plain.calibration is None
    for s, d in (("x@c", "x@a"), ("x@a", "x@d")):
        got = plain.route(s, d, k=3)
        want = k_best_routes(plain.G, s, d, k=3)
        assert got == want
        for r in got:
            assert not r.calibrated and r.predicted_r1 is None and r.interval is None
            assert r.cost == pytest.approx(sum(plain.G.edges[u, v]["cost"] for u, v in r.edges))
            assert r.to_dict() == {"nodes": list(r.nodes), "cost": r.cost,
                                   "edge_costs": list(r.edge_costs), "calibrated": False}
            assert "predicted" not in str(r)
    g = plain.copy()
    g.calibrate(k=1, max_hops=2)
    g.uncalibrate()
    assert g.route("x@c", "x@a", k=3) == plain.route("x@c", "x@a", k=3)


# ---------------------------------------------------------------------------
# bad arguments


@pytest.mark.parametrize("gallery", [1, 0, -5, 2.5, "10", True])
def test_bad_gallery(calibrated, plain, gallery):
    for g in (calibrated, plain):
        with pytest.raises(InvalidParameter, match="gallery must be an integer >= 2"):
            g.route("x@a", "x@d", gallery=gallery)


@pytest.mark.parametrize("kw, match", [
    ({"k": 0}, "k must be an integer >= 1"),
    ({"max_hops": 0}, "max_hops must be an integer >= 1"),
    ({"features": ("hops", "colour")}, "unknown feature 'colour'"),
    ({"lambdas": []}, "lambdas must be a non-empty list"),
    ({"lambdas": [-1.0]}, "lambdas must be a non-empty list"),
    ({"nodes": ["x@a", "x@zz"]}, "x@zz"),
])
def test_bad_calibrate_arguments(plain, kw, match):
    g = plain.copy()
    with pytest.raises(bridge.errors.BridgeError, match=match):
        g.calibrate(**kw)
    assert g.calibration is None


def test_check_and_predict_refuse_what_cannot_be_done(plain, calibrated):
    with pytest.raises(InvalidParameter, match="not calibrated"):
        prediction_check(plain)
    with pytest.raises(NoRoute, match="no edge 'x@a' -> 'x@c'"):
        calibrated.calibration.predict(calibrated, ["x@a", "x@c"])
    with pytest.raises(InvalidParameter, match="split must be"):
        prediction_check(calibrated, split="dev")
    with pytest.raises(InvalidParameter, match="calibration must be a Calibration"):
        refit(calibrated, {"weights": {}})
    empty = bridge.ModalityGraph()
    empty.add_node("x@a", dim=3)
    with pytest.raises(NoRoute, match="no edges"):
        empty.calibrate()
    assert isinstance(calibrated.calibration, Calibration)


# ---------------------------------------------------------------------------
# command line


def test_cli_calibrate_then_route(plain, tmp_path, capsys):
    from bridge.cli import main

    plain.save(tmp_path / "g")
    assert main(["route", str(tmp_path / "g"), "x@c", "x@a"]) == 0
    before = capsys.readouterr().out
    assert "predicted" not in before
    assert main(["calibrate", str(tmp_path / "g"), "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "calibrated on" in out and "calibration.json" in out
    assert main(["route", str(tmp_path / "g"), "x@c", "x@a", "--k", "2", "--gallery", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "predicted R@1" in lines[0] and "at gallery 50" in lines[0]
    assert lines[2].startswith("(calibrated: ranked by predicted R@1")
    g = bridge.load_graph(tmp_path / "g")
    r = g.route("x@c", "x@a", gallery=50)
    assert f"predicted R@1 {r.predicted_r1:.3f} ± {r.predicted_sd:.3f}" in lines[0]
    with pytest.raises(SystemExit):
        main(["route", str(tmp_path / "g"), "x@c", "x@a", "--gallery", "1"])
    assert "--gallery" in capsys.readouterr().err
