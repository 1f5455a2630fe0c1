"""Where to add paired data (bridge.suggest): candidates ranked by the planner's predicted
gain, checked against predictions recomputed by hand, the extrapolation of more pairs, and
refusals."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import bridge
from bridge.errors import InvalidParameter, UnknownNode
from bridge.suggest import extrapolate_r1, predicted_r1, suggest

N, D = 1500, 16


def _ids(prefix=""):
    return [f"{'train' if i < 1100 else 'val' if i < 1300 else 'test'}:{prefix}{i}"
            for i in range(N)]


@pytest.fixture(scope="module")
def graph():
    """A chain a - b - c - d of views of one latent; c is very noisy, so routes through it
    are weak, and e shares no ids with anyone."""
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((N, D))
    g = bridge.ModalityGraph(splits="prefix")
    for name, noise in (("a", 0.2), ("b", 0.2), ("c", 1.5), ("d", 0.2)):
        X = Z @ rng.standard_normal((D, D)) + noise * rng.standard_normal((N, D))
        g.add_node(name, bridge.Cache.from_arrays(X.astype(np.float32), ids=_ids()))
    g.add_node("e", bridge.Cache.from_arrays(rng.standard_normal((N, D)).astype(np.float32),
                                             ids=_ids("x")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b in (("a", "b"), ("b", "c"), ("c", "d")):
            g.connect(a, b, translator="linear", alpha="auto")
    return g


def _digest(g):
    return sorted((a, b, g.edge(a, b)["cost"], tuple(sorted(g.edge(a, b)["metrics"].items())))
                  for a, b in g.edges)


def test_edges_that_bypass_the_weak_node_rank_first(graph):
    before = _digest(graph)
    targets = [("a", "d"), ("d", "a"), ("b", "d")]
    out = suggest(graph, targets)
    assert _digest(graph) == before  # the graph passed in is unchanged
    assert {s.pair for s in out[:2]} == {("a", "d"), ("b", "d")}
    assert all(s.kind == "edge" for s in out[:2])
    gains = [s.gain for s in out]
    assert gains == sorted(gains, reverse=True)
    assert out[0].gain > 0.05
    assert not any("e" in s.pair for s in out)  # no shared ids: no edge can be trained
    kinds = {s.pair: s.kind for s in out}
    assert kinds[("a", "b")] == kinds[("b", "c")] == kinds[("c", "d")] == "more"


def test_gain_is_the_mean_of_predictions_recomputed_by_hand(graph):
    targets = [("a", "d"), ("c", "a")]
    s = next(x for x in suggest(graph, targets) if x.pair == ("a", "c"))
    h = graph.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h.connect("a", "c", translator="linear", alpha="auto")
    for src, dst in targets:
        k = f"{src} -> {dst}"
        assert s.before[k] == pytest.approx(predicted_r1(graph, src, dst))
        assert s.after[k] == pytest.approx(predicted_r1(h, src, dst))
        assert s.before[k] == pytest.approx(math.exp(-graph.route(src, dst).cost))
    assert s.gain == pytest.approx(np.mean([s.after[k] - s.before[k] for k in s.before]))
    assert s.edge_r1["a -> c"] == pytest.approx(h.edge("a", "c")["metrics"]["val_R@1"])
    assert s.n_pairs == 1100 and s.calibrated is False


def test_more_pairs_are_extrapolated_in_log_pairs():
    assert extrapolate_r1(0.6, 0.7, 2.0) == pytest.approx(0.8)
    assert extrapolate_r1(0.6, 0.7, 4.0) == pytest.approx(0.9)
    assert extrapolate_r1(0.8, 0.7, 2.0) == pytest.approx(0.7)  # never below today's
    assert extrapolate_r1(0.2, 0.9, 8.0) == 1.0


def test_more_candidate_carries_its_extrapolated_edge(graph):
    s = suggest(graph, [("c", "d")], candidates=[("c", "d")], more=4.0)[0]
    assert s.kind == "more" and s.pair == ("c", "d")
    r_now = graph.edge("c", "d")["metrics"]["val_R@1"]
    assert 0.0 <= s.edge_r1["c -> d"] <= 1.0
    assert s.after["c -> d"] == pytest.approx(math.exp(-bridge.planner.edge_cost(
        {**graph.edge("c", "d")["metrics"], "val_R@1": s.edge_r1["c -> d"]})))
    assert s.edge_r1["c -> d"] >= min(r_now, 1.0) - 0.2


def test_calibrated_predictions_and_json(graph):
    g = graph.copy()
    g.remove_node("e")
    g.calibrate()
    out = g.suggest(top=2)
    assert len(out) == 2 and all(s.calibrated for s in out)
    r = g.route("a", "d")
    assert out[0].before["a -> d"] == pytest.approx(r.predicted_r1)
    json.dumps([s.to_dict() for s in out], allow_nan=False)


@pytest.mark.parametrize("kw,err,match", [
    ({"routes": "a"}, InvalidParameter, "routes must be"),
    ({"routes": [("a",)]}, InvalidParameter, "bad entry"),
    ({"routes": [("a", "a")]}, InvalidParameter, "two different nodes"),
    ({"routes": []}, InvalidParameter, "empty"),
    ({"routes": [("a", "zz")]}, UnknownNode, "zz"),
    ({"candidates": [("a", "a")]}, InvalidParameter, "candidates"),
    ({"more": 1.0}, InvalidParameter, "more must be"),
    ({"more": float("inf")}, InvalidParameter, "more must be"),
    ({"top": 0}, InvalidParameter, "top must be"),
])
def test_bad_arguments(graph, kw, err, match):
    with pytest.raises(err, match=match):
        suggest(graph, **kw)


def test_probe_rows_caps_the_probe_training_pairs(graph):
    out = suggest(graph, [("a", "d")], candidates=[("a", "d")], probe_rows=50, seed=3)
    assert out[0].kind == "edge" and out[0].n_pairs == 50
    again = suggest(graph, [("a", "d")], candidates=[("a", "d")], probe_rows=50, seed=3)
    assert again[0].gain == out[0].gain  # the same seed draws the same rows


def test_gallery_reaches_the_calibrated_prediction(graph):
    g = graph.copy()
    g.remove_node("e")
    g.calibrate()
    s = suggest(g, [("a", "d")], candidates=[("a", "d")], gallery=10)[0]
    assert s.before["a -> d"] == pytest.approx(g.route("a", "d", gallery=10).predicted_r1)
    assert s.before["a -> d"] >= suggest(g, [("a", "d")], candidates=[("a", "d")],
                                         gallery=1000)[0].before["a -> d"]


@pytest.mark.parametrize("kw,match", [
    ({"probe_rows": 1}, "probe_rows must be"),
    ({"probe_rows": 2.5}, "probe_rows must be"),
    ({"gallery": 1}, "gallery must be"),
    ({"seed": -1}, "seed must be"),
])
def test_bad_probe_arguments(graph, kw, match):
    with pytest.raises(InvalidParameter, match=match):
        suggest(graph, [("a", "d")], **kw)
