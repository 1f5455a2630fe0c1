"""Fused retrieval through a graph: identity (shared-space) edges, routes to several gallery
nodes holding the same items, weights fitted on validation pairs, the CLI."""

import json

import numpy as np
import pytest

from bridge import ModalityGraph
from bridge.cli import main
from bridge.errors import BridgeError, DimensionMismatch, NoPairs
from bridge.evaluate import fused_evaluation, fusion_routes
from bridge.retrieval import retrieval_metrics
from bridge.store import Cache
from conftest import random_orthogonal, unit


def fused_graph(n=1500, d=16, seed=0):
    """A query language and one gallery of items seen by two encoders.

    ``text:de@e`` shares encoder e's space with ``text:en@e`` (a shared multilingual space);
    ``text:en@m`` is a rotation of the item vectors, reached by a trained linear edge. The two
    gallery nodes carry independent noise, so each route sees different evidence and fusing
    them helps.
    """
    rng = np.random.default_rng(seed)
    ids = [f"{'train' if i < n - 400 else ('val' if i < n - 200 else 'test')}:{i}" for i in range(n)]
    items = rng.standard_normal((n, d))
    de = unit(items + 0.4 * rng.standard_normal((n, d)))
    en_e = unit(items + 0.8 * rng.standard_normal((n, d)))
    en_m = unit((items + 0.8 * rng.standard_normal((n, d))) @ random_orthogonal(d, rng))
    g = ModalityGraph(seed=seed, splits="prefix")
    for name, x in (("text:de@e", de), ("text:en@e", en_e), ("text:en@m", en_m)):
        g.add_node(name, Cache(ids=ids, emb=x.astype(np.float32)))
    g.connect("text:de@e", "text:en@e", translator="identity")
    g.connect("text:de@e", "text:en@m", translator="linear", alpha=0.1)
    return g


@pytest.fixture(scope="module")
def graph():
    return fused_graph()


def test_identity_edge_is_the_native_space(graph):
    T = graph.translator("text:de@e", "text:en@e")
    x = graph.cache("text:de@e").vectors()[:5]
    assert np.array_equal(T.transform(x), x)
    with pytest.raises(DimensionMismatch, match="dimensions 4 and 3"):
        from bridge.translators import make_translator

        make_translator("identity").fit(np.ones((5, 4)), np.ones((5, 3)))


def test_fused_routes_beat_every_single_route(graph):
    r = fused_evaluation(graph, "text:de@e", ["text:en@e", "text:en@m"])
    singles = [m["R@1"] for m in r["single"].values()]
    assert set(r["single"]) == {"text:de@e -> text:en@e", "text:de@e -> text:en@m"}
    assert r["fused"]["R@1"] > max(singles) + 0.05
    # the native single route is what plain retrieval in the shared space gives
    c_de, c_en = graph.cache("text:de@e"), graph.cache("text:en@e")
    test = [i for i in c_de.ids if i.startswith("test:")]
    native = retrieval_metrics(c_de.vectors(c_de.rows(test)), c_en.vectors(c_en.rows(test)))
    assert r["single"]["text:de@e -> text:en@e"]["R@1"] == pytest.approx(native["R@1"])
    # candidate search over a few dozen rows per route agrees with dense scoring
    rc = fused_evaluation(graph, "text:de@e", ["text:en@e", "text:en@m"], candidates=50)
    assert rc["fused"]["R@1"] == pytest.approx(r["fused"]["R@1"])


def test_weights_fitted_on_val_and_explicit_routes(graph):
    r = fused_evaluation(graph, "text:de@e", routes=[["text:de@e", "text:en@e"],
                                                     ["text:de@e", "text:en@m"]],
                         method="weighted", val_weights=True)
    assert len(r["weights"]) == 2 and sum(r["weights"]) == pytest.approx(1.0)
    assert 0.0 < r["weights"][0] < 1.0
    with pytest.raises(BridgeError, match="needs weights"):
        fused_evaluation(graph, "text:de@e", ["text:en@e", "text:en@m"], method="weighted")
    with pytest.raises(BridgeError, match="does not start at 'text:de@e'"):
        fusion_routes(graph, "text:de@e", routes=[["text:en@e", "text:de@e"]])


def test_gallery_nodes_must_share_ids():
    g = fused_graph(n=800)
    c = g.cache("text:en@m")
    g.add_node("text:en@x", Cache(ids=[f"other:{i}" for i in range(len(c))], emb=c.vectors()))
    g.add_edge("text:de@e", "text:en@x", g.translator("text:de@e", "text:en@m"))
    with pytest.raises(NoPairs, match="ids not in cache"):
        fused_evaluation(g, "text:de@e", routes=[["text:de@e", "text:en@e"],
                                                 ["text:de@e", "text:en@x"]])


def test_cli_eval_fuse(graph, tmp_path, capsys):
    graph.save(tmp_path / "g")
    out = tmp_path / "f.json"
    assert main(["eval", str(tmp_path / "g"), "text:de@e", "--fuse", "text:en@e,text:en@m",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fused (zscore)" in text and "route text:de@e -> text:en@m" in text
    res = json.loads(out.read_text())["fused"]
    assert res["fused"]["R@1"] > max(m["R@1"] for m in res["single"].values())
    assert main(["eval", str(tmp_path / "g"), "text:de@e", "--fuse", "text:en@e,text:en@m",
                 "--method", "rrf", "--candidates", "40"]) == 0
    assert "fused (rrf)" in capsys.readouterr().out
