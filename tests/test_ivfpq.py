"""The ``ivfpq`` index kind: 4-bit product-quantised inverted lists whose candidates are
re-scored exactly, and the search-breadth setter shared by every kind."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.errors import InvalidParameter
from bridge.retrieval import (build_index, index_kind, index_search, retrieval_metrics,
                              set_search)
from bridge.sharded import build_sharded


def _data(n=3000, d=32, nq=100, seed=0):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, d)).astype(np.float32)
    G /= np.linalg.norm(G, axis=1, keepdims=True)
    Q = G[:nq] + 0.3 * rng.standard_normal((nq, d)).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    return G, Q


def test_every_cell_probed_and_wide_refine_is_exact():
    G, Q = _data()
    flat = build_index(G, "flat", normalized=True)
    ix = build_index(G, "ivfpq", nlist=16, nprobe=16, refine=300, normalized=True)
    assert index_kind(ix) == "ivfpq" and index_kind(flat) == "flat"
    d0, i0 = index_search(flat, Q, 10)
    d1, i1 = index_search(ix, Q, 10)
    np.testing.assert_array_equal(i1, i0)
    np.testing.assert_allclose(d1, d0, atol=1e-6)  # exact scores, not the codes' estimates


def test_recall_grows_with_probes_and_metrics_run_through_it():
    G, Q = _data(n=6000)
    _, truth = index_search(build_index(G, "flat", normalized=True), Q, 10)
    ix = build_index(G, "ivfpq", nlist=64, nprobe=1, normalized=True)
    recalls = []
    for nprobe in (1, 8, 64):
        set_search(ix, nprobe=nprobe)
        _, rows = index_search(ix, Q, 10)
        recalls.append(np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(rows, truth)]))
    assert recalls[0] < recalls[1] < recalls[2] and recalls[2] > 0.95, recalls
    exact = retrieval_metrics(Q, G, np.arange(len(Q)))
    approx = retrieval_metrics(Q, G, np.arange(len(Q)), kind="ivfpq", nlist=64, nprobe=64)
    assert approx["R@1"] == pytest.approx(exact["R@1"], abs=0.02)
    assert approx["index"] == "ivfpq"


def test_sharded_ivfpq_and_its_breadth():
    G, Q = _data()
    sh = build_sharded(G, 3, "ivfpq", nlist=8, normalized=True)
    sh.set_search(nprobe=8, refine=200)
    _, rows = sh.search(Q, 5, normalized=True)
    _, truth = index_search(build_index(G, "flat", normalized=True), Q, 5)
    np.testing.assert_array_equal(rows, truth)


@pytest.mark.parametrize("opts,match", [({"pq_m": 5}, "must divide the dimension 32"),
                                        ({"refine": 0}, "'refine'"),
                                        ({"nlist": 10**6}, "at most the number of gallery rows")])
def test_bad_ivfpq_options(opts, match):
    G, _ = _data(n=500)
    with pytest.raises(InvalidParameter, match=match):
        build_index(G, "ivfpq", **opts)


def test_set_search_refuses_options_of_other_kinds():
    G, _ = _data(n=500)
    with pytest.raises(InvalidParameter, match="ef_search applies to hnsw"):
        set_search(build_index(G, "ivfpq", nlist=4), ef_search=10)
    with pytest.raises(InvalidParameter, match="refine applies to ivfpq"):
        set_search(build_index(G, "ivf", nlist=4), refine=4)
    with pytest.raises(InvalidParameter, match="nprobe applies to ivf and ivfpq"):
        set_search(build_index(G, "hnsw"), nprobe=4)
    ix = set_search(build_index(G, "hnsw"), ef_search=77)
    assert ix.hnsw.efSearch == 77
