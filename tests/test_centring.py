"""Node statistics and node-centred edges (``connect(..., node_center=True)``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bridge
from bridge.chunks import column_stats
from bridge.errors import CorruptFile, EmptyData, InvalidParameter
from bridge.evaluate import evaluate_route
from bridge.store import Cache
from bridge.translators import (
    CentredTranslator,
    IdentityTranslator,
    LinearTranslator,
    PostHocTranslator,
    load_translator,
)


def _ids(n, n_train, n_val):
    return [f"{'train' if i < n_train else 'val' if i < n_train + n_val else 'test'}:{i}"
            for i in range(n)]


def _shared_space(seed=0, n=400, d=16, offset=3.0):
    """English rows E, the same items' 'German' rows D = E + noise + a node offset, and a
    target space M = E rotated (plus a mean of its own)."""
    r = np.random.default_rng(seed)
    E = r.standard_normal((n, d)).astype(np.float32)
    D = (E + 0.3 * r.standard_normal((n, d)) + offset * r.standard_normal(d)).astype(np.float32)
    Q, _ = np.linalg.qr(r.standard_normal((d, d)))
    M = (E @ Q + 0.5).astype(np.float32)
    return E, D, M


def _graph(E, D, M, node_center, n_train=300, n_val=50):
    ids = _ids(E.shape[0], n_train, n_val)
    g = bridge.ModalityGraph(splits="prefix")
    g.add_node("text:en@e5", Cache.from_arrays(E, ids))
    g.add_node("text:de@e5", Cache.from_arrays(D, ids))
    g.add_node("text:en@minilm", Cache.from_arrays(M, ids))
    g.connect("text:de@e5", "text:en@e5", translator="identity", directions="forward",
              node_center=node_center)
    g.connect("text:en@e5", "text:en@minilm", translator="linear", alpha=0.0,
              directions="forward", node_center=node_center)
    return g


def test_column_stats_streams_to_the_exact_mean_and_norm(tmp_path):
    r = np.random.default_rng(1)
    x = (r.standard_normal((1003, 5)) + 2).astype(np.float16)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    st = column_stats(mm, chunk=97)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(st["mean"], x64.mean(0), rtol=1e-6)
    assert st["mean"].dtype == np.float32 and st["n"] == 1003
    assert st["mean_norm"] == pytest.approx(np.linalg.norm(x64, axis=1).mean(), rel=1e-9)
    with pytest.raises(EmptyData, match="no rows"):
        column_stats(np.zeros((0, 3), np.float32))


def test_node_stats_are_the_whole_cache_mean_and_follow_the_node():
    E, D, M = _shared_space()
    g = _graph(E, D, M, node_center=False)
    np.testing.assert_allclose(g.node_stats("text:de@e5")["mean"], D.astype(np.float64).mean(0), rtol=1e-6)
    h = g.copy()
    assert "text:de@e5" in h._stats  # carried by copy, not recomputed
    g.remove_node("text:de@e5")
    g.add_node("text:de@e5", Cache.from_arrays(D[:10] + 1, _ids(10, 5, 3)))
    np.testing.assert_allclose(g.node_stats("text:de@e5")["mean"], (D[:10] + 1).astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(h.node_stats("text:de@e5")["mean"], D.astype(np.float64).mean(0), rtol=1e-6)


def test_centred_edge_is_its_base_fitted_between_the_node_means():
    E, D, M = _shared_space()
    g = _graph(E, D, M, node_center=True)
    T = g.translator("text:en@e5", "text:en@minilm")
    assert isinstance(T, CentredTranslator)
    assert g.edge("text:en@e5", "text:en@minilm")["kind"] == "linear@centred"
    mu_e, mu_m = E.mean(0), M.mean(0)
    tr = np.arange(300)
    ref = LinearTranslator(alpha=0.0).fit(E[tr] - mu_e, M[tr] - mu_m)
    x = D[:7]
    np.testing.assert_allclose(T.transform(x), ref.transform(x - mu_e) + mu_m, atol=1e-4)
    # the identity edge became the mean shift from the German to the English node
    S = g.translator("text:de@e5", "text:en@e5")
    np.testing.assert_allclose(S.transform(x), x - D.mean(0) + mu_e, atol=1e-5)


def test_node_centring_removes_the_query_nodes_own_offset_along_a_route():
    E, D, M = _shared_space(offset=3.0)
    plain = _graph(E, D, M, node_center=False)
    centred = _graph(E, D, M, node_center=True)
    r_plain = evaluate_route(plain, "text:de@e5", "text:en@minilm", ks=(1,))
    r_centred = evaluate_route(centred, "text:de@e5", "text:en@minilm", ks=(1,))
    assert r_plain["routes"][0]["nodes"] == ["text:de@e5", "text:en@e5", "text:en@minilm"]
    # brute force of the centred route: the German rows lose their own mean, then the
    # exact linear map of the English rows applies
    test = np.arange(350, 400)
    mu_e, mu_m = E.mean(0), M.mean(0)
    W = LinearTranslator(alpha=0.0).fit(E[:300] - mu_e, M[:300] - mu_m)
    pred = W.transform(D[test] - D.mean(0)) + mu_m
    pn = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    gn = M[test] / np.linalg.norm(M[test], axis=1, keepdims=True)
    S = pn @ gn.T
    hits = np.mean([(S[i] >= S[i, i]).sum() == 1 for i in range(len(test))])
    assert r_centred["R@1"] == pytest.approx(hits)
    assert r_centred["R@1"] > r_plain["R@1"] + 0.2


def test_centred_edges_survive_save_and_load(tmp_path):
    E, D, M = _shared_space()
    g = _graph(E, D, M, node_center=True)
    h = bridge.load_graph(g.save(tmp_path / "g"))
    route = ["text:de@e5", "text:en@e5", "text:en@minilm"]
    np.testing.assert_array_equal(h.translate(D[:9], route), g.translate(D[:9], route))
    assert h.edge("text:de@e5", "text:en@e5")["kind"] == "identity@centred"


def test_centred_posthoc_kind_and_refusals():
    E, D, M = _shared_space()
    g = _graph(E, D, M, node_center=False)
    g.connect("text:en@e5", "text:en@minilm", translator="linear", alpha=0.0, post="center",
              directions="forward", node_center=True)
    assert g.edge("text:en@e5", "text:en@minilm")["kind"] == "linear@centred+center"
    with pytest.raises(InvalidParameter, match="node_center"):
        g.connect("text:en@e5", "text:en@minilm", node_center="yes")
    with pytest.raises(InvalidParameter, match="cycle_weight"):
        g.connect("text:en@e5", "text:en@minilm", translator="mlp", cycle_weight=0.5,
                  node_center=True)
    with pytest.raises(InvalidParameter, match="centre once"):
        CentredTranslator(CentredTranslator(IdentityTranslator())).fit(E, E)
    with pytest.raises(InvalidParameter, match="in_mean has 3 values, expected 16"):
        CentredTranslator(IdentityTranslator(), in_mean=np.zeros(3)).fit(E, E)
    with pytest.raises(InvalidParameter, match="NaN"):
        CentredTranslator(IdentityTranslator(), out_mean=np.full(16, np.nan)).fit(E, E)


def test_add_modality_passes_node_center_on():
    E, D, M = _shared_space()
    ids = _ids(E.shape[0], 300, 50)
    g = bridge.ModalityGraph(splits="prefix")
    g.add_node("text:en@e5", Cache.from_arrays(E, ids))
    g.add_modality("text:en@minilm", Cache.from_arrays(M, ids), link_to="text:en@e5",
                   translator="linear", directions="forward", node_center=True)
    assert g.edge("text:en@minilm", "text:en@e5")["kind"] == "linear@centred"
    np.testing.assert_allclose(g.node_stats("text:en@minilm")["mean"], M.astype(np.float64).mean(0), rtol=1e-6)


@pytest.mark.parametrize("field, value, match", [
    ("means", "sideways", "extra.means"),
    ("base_kind", "centred", "extra.base"),
])
def test_corrupt_centred_config_is_refused(tmp_path, field, value, match):
    E, _, M = _shared_space()
    T = CentredTranslator(PostHocTranslator(LinearTranslator(alpha=0.1))).fit(E, M)
    path = T.save(tmp_path / "t")
    cfg = json.loads((path / "config.json").read_text())
    if field == "means":
        cfg["extra"]["means"] = value
    else:
        cfg["extra"]["base"]["kind"] = value
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptFile, match=match):
        load_translator(path)


def test_a_spec_edge_can_be_node_centred_and_auto(tmp_path):
    from bridge.spec import SpecError, build_graph_from_spec, load_spec
    from bridge.store import save_cache

    E, D, M = _shared_space()
    ids = _ids(E.shape[0], 300, 50)
    for name, x in (("en", E), ("de", D), ("mini", M)):
        save_cache(tmp_path / name, Cache.from_arrays(x, ids))
    spec = tmp_path / "g.toml"
    body = """
[graph]
splits = "prefix"
[[nodes]]
name = "text:en@e5"
cache = "en"
[[nodes]]
name = "text:de@e5"
cache = "de"
[[nodes]]
name = "text:en@minilm"
cache = "mini"
[[edges]]
src = "text:de@e5"
dst = "text:en@e5"
translator = "identity"
directions = "forward"
node_center = true
[[edges]]
src = "text:en@e5"
dst = "text:en@minilm"
translator = "auto"
directions = "forward"
node_center = true
[edges.params]
candidates = ["identity", "procrustes"]
"""
    spec.write_text(body)
    g = build_graph_from_spec(load_spec(spec), log=lambda *a: None)
    assert g.edge("text:de@e5", "text:en@e5")["kind"] == "identity@centred"
    assert g.edge("text:en@e5", "text:en@minilm")["kind"] == "auto:procrustes@centred"
    spec.write_text(body.replace("node_center = true", 'node_center = "yes"', 1))
    with pytest.raises(SpecError, match="node_center"):
        load_spec(spec)


def test_recentred_moves_the_fitted_base_between_new_means():
    E, D, M = _shared_space()
    T = CentredTranslator(LinearTranslator(alpha=0.0)).fit(E, M)
    a, b = np.full(16, 0.3, np.float32), np.full(16, -1.0, np.float32)
    U = T.recentred(a, b)
    np.testing.assert_allclose(U.transform(D[:4]), T.base_.transform(D[:4] - a) + b, atol=1e-5)
    np.testing.assert_allclose(T.transform(D[:4]), T.base_.transform(D[:4] - E.mean(0)) + M.mean(0),
                               atol=1e-4)  # the original is left alone
    with pytest.raises(InvalidParameter, match="in_mean must be a finite vector of 16"):
        T.recentred(np.zeros(3), b)
