"""Closed-form edges fitted from moments streamed over row blocks."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import bridge
from bridge.chunks import RowView
from bridge.errors import InvalidEmbeddings
from bridge.store import Cache, load_cache, save_cache
from bridge.translators import LinearTranslator, ProcrustesTranslator
from bridge.translators import functional as F


def _pairs(n=3000, dx=12, dy=9, seed=0, shift=40.0):
    r = np.random.default_rng(seed)
    X = (r.standard_normal((n, dx)) + shift).astype(np.float32)  # a large mean
    Y = (X @ r.standard_normal((dx, dy)) + 0.1 * r.standard_normal((n, dy)) - shift).astype(np.float32)
    return X, Y


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("alpha", [0.0, 2.5])
def test_streamed_ridge_equals_the_dense_solution(alpha, fit_intercept):
    X, Y = _pairs()
    x, y = X.astype(np.float64), Y.astype(np.float64)
    if fit_intercept:
        mx, my = x.mean(0), y.mean(0)
    else:
        mx, my = np.zeros(x.shape[1]), np.zeros(y.shape[1])
    xc, yc = x - mx, y - my
    W = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ yc) if alpha else \
        np.linalg.lstsq(xc, yc, rcond=None)[0]
    m = F.pair_moments(X, Y, block=257)  # blocks that do not divide the row count
    W2, b2 = F.ridge_from_moments(m, alpha, fit_intercept)
    np.testing.assert_allclose(W2, W, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b2, my - mx @ W, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("center,scale", [(True, True), (False, False), (True, False)])
def test_streamed_procrustes_equals_the_dense_solution(center, scale):
    X, Y = _pairs(dy=12, shift=3.0)
    x, y = X.astype(np.float64), Y.astype(np.float64)
    mx = x.mean(0) if center else np.zeros(12)
    my = y.mean(0) if center else np.zeros(12)
    U, _, Vt = np.linalg.svd((x - mx).T @ (y - my))
    s = np.sqrt(((y - my) ** 2).sum() / ((x - mx) ** 2).sum()) if scale else 1.0
    R2, mx2, my2, s2 = F.procrustes_from_moments(F.pair_moments(X, Y, block=500), center, scale)
    np.testing.assert_allclose(R2, U @ Vt, atol=1e-5)
    np.testing.assert_allclose(mx2, mx, rtol=1e-6)
    assert s2 == pytest.approx(s, rel=1e-9)


def _memmapped(tmp_path, n, d=16):
    r = np.random.default_rng(1)
    X = r.standard_normal((n, d)).astype(np.float16)
    Y = (X.astype(np.float32) @ np.linalg.qr(r.standard_normal((d, d)))[0]).astype(np.float16)
    ids = [f"{'train' if i < n - 2000 else 'val' if i < n - 1000 else 'test'}:{i}" for i in range(n)]
    for name, arr in (("x", X), ("y", Y)):
        save_cache(tmp_path / name, Cache.from_arrays(arr, ids))
    return load_cache(tmp_path / "x"), load_cache(tmp_path / "y"), X, Y


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    n = 400_000
    return n, *_memmapped(tmp_path_factory.mktemp("big"), n)[:2]


@pytest.mark.parametrize("kind", [LinearTranslator(alpha="auto"), ProcrustesTranslator()])
def test_a_memory_mapped_float16_cache_fits_without_a_full_copy(big, kind):
    n, a, b = big
    assert isinstance(a.emb, np.memmap)
    rows = np.arange(n - 2000)
    val = np.arange(n - 2000, n - 1000)
    tracemalloc.start()
    kind.fit(RowView(a.emb, rows), RowView(b.emb, rows), a.vectors(val), b.vectors(val))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    full = rows.size * a.dim * 4 * 2  # both sides' training rows as float32
    assert peak < full / 3, (peak, full)  # about 12 MB: a few blocks, whatever n


def test_connect_streams_a_closed_form_edge_and_matches_the_dense_fit(tmp_path):
    n = 60_000
    a, b, X, Y = _memmapped(tmp_path, n)
    g = bridge.ModalityGraph(splits="prefix")
    g.add_node("a@x", a)
    g.add_node("b@y", b)
    g.connect("a@x", "b@y", translator="procrustes", directions="forward")
    assert g.edge("a@x", "b@y")["metrics"]["test_R@1"] > 0.99
    dense = ProcrustesTranslator().fit(X[: n - 2000].astype(np.float32), Y[: n - 2000].astype(np.float32))
    np.testing.assert_allclose(g.translator("a@x", "b@y").R_, dense.R_, atol=1e-5)


def test_lazy_rows_with_nan_are_refused_naming_the_row():
    X, Y = _pairs(n=400)
    X[321, 2] = np.nan
    with pytest.raises(InvalidEmbeddings, match="321"):
        LinearTranslator(alpha=1.0).fit(RowView(X), RowView(Y))
