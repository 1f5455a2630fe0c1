import json
import math

import numpy as np
import pytest
import torch

from bridge.errors import CorruptFile, DimensionMismatch, InvalidEmbeddings, NotFittedError
from bridge.metrics import paired_retrieval
from bridge.translators import (
    LinearTranslator,
    MLPTranslator,
    ProcrustesTranslator,
    RelativeTranslator,
    load_translator,
    make_translator,
)
from conftest import random_orthogonal, unit


def test_procrustes_recovers_rotation_under_noise(rng):
    d = 32
    Q = random_orthogonal(d, rng)
    X = rng.standard_normal((2000, d))
    Y = 2.5 * X @ Q + 0.3 + 0.05 * rng.standard_normal((2000, d))
    T = ProcrustesTranslator().fit(X[:1500], Y[:1500])
    cos = paired_retrieval(T.transform(X[1500:]), Y[1500:])["cos"]
    assert cos > 0.99
    np.testing.assert_allclose(T.R_, Q, atol=0.02)
    assert T.s_ == pytest.approx(2.5, rel=0.01)


def test_procrustes_preserves_norms_and_handles_dims(rng):
    X = rng.standard_normal((500, 16))
    T = ProcrustesTranslator(center=False, scale=False).fit(X, rng.standard_normal((500, 16)))
    np.testing.assert_allclose(np.linalg.norm(T.transform(X), axis=1),
                               np.linalg.norm(X, axis=1), rtol=1e-5)
    # into a larger space: semi-orthogonal map, still isometric
    Q = random_orthogonal(24, rng)[:16]  # (16, 24) orthonormal rows
    Y = X @ Q
    T = ProcrustesTranslator(center=False, scale=False).fit(X, Y)
    assert T.R_.shape == (16, 24)
    np.testing.assert_allclose(T.R_ @ T.R_.T, np.eye(16), atol=1e-5)
    np.testing.assert_allclose(T.transform(X), Y, atol=1e-4)
    # into a smaller space
    T2 = ProcrustesTranslator().fit(Y, X)
    assert T2.transform(Y).shape == (500, 16)


def test_linear_equals_numpy_lstsq(rng):
    X = rng.standard_normal((300, 10))
    Y = rng.standard_normal((300, 7))
    T = LinearTranslator(alpha=0.0).fit(X, Y)
    Xa = np.hstack([X, np.ones((300, 1))])
    ref = np.linalg.lstsq(Xa, Y, rcond=None)[0]
    np.testing.assert_allclose(T.W_, ref[:-1], atol=1e-4)
    np.testing.assert_allclose(T.b_, ref[-1], atol=1e-4)
    # ridge matches the closed form on centred data
    T = LinearTranslator(alpha=5.0).fit(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    W = np.linalg.solve(Xc.T @ Xc + 5.0 * np.eye(10), Xc.T @ Yc)
    np.testing.assert_allclose(T.W_, W, atol=1e-4)


def _pessimistic_r1(P, Y):
    """R@1 of row i of P retrieving row i of Y by cosine, ties counted as misses."""
    P = P / np.linalg.norm(P, axis=1, keepdims=True)
    Y = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    S = P @ Y.T
    right = np.diag(S).copy()
    np.fill_diagonal(S, -np.inf)
    return float(np.mean(right > S.max(1)))


@pytest.mark.parametrize("n, d, noise, expected", [(60, 50, 3.0, 10.0), (80, 30, 1.0, 30.0)])
def test_linear_auto_alpha_is_the_brute_force_validation_choice(n, d, noise, expected):
    """alpha="auto" picks what a brute-force validation over the grid picks: the largest
    alpha whose held-out R@1 is within the tolerance of the best. The first task has an
    interior optimum, the second is flat up to 30 and drops at 100."""
    from bridge.translators.linear import ALPHA_GRID, AUTO_TOLERANCE

    rng = np.random.default_rng(0)
    W0 = rng.standard_normal((d, 20))
    X = rng.standard_normal((n, d))
    Y = X @ W0 + noise * rng.standard_normal((n, 20))
    Xv = rng.standard_normal((200, d))
    Yv = Xv @ W0 + noise * rng.standard_normal((200, 20))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    scores = []
    for a in ALPHA_GRID:  # centred ridge in closed form
        W = np.linalg.lstsq(Xc.T @ Xc + a * np.eye(d), Xc.T @ Yc, rcond=None)[0]
        scores.append(_pessimistic_r1((Xv - X.mean(0)) @ W + Y.mean(0), Yv))
    best = max(scores)
    brute = ALPHA_GRID[max(i for i, s in enumerate(scores) if s >= best - AUTO_TOLERANCE)]
    T = LinearTranslator(alpha="auto").fit(X, Y, Xv, Yv)
    assert T.alpha_ == brute == expected
    np.testing.assert_allclose(T.fit_report_["alpha_search"]["val_R@1"], scores, atol=1e-12)
    # the choice is what the validation rows say, not a default: without them alpha is 1
    assert LinearTranslator(alpha="auto").fit(X, Y).alpha_ == 1.0 != brute


def nonlinear_task(n, d=8, seed=1):
    """A fixed nonlinear map (sines and tanh of random projections) on fresh inputs."""
    r = np.random.default_rng(seed)
    A, B = r.standard_normal((d, 16)), r.standard_normal((d, 16))
    X = np.random.default_rng(seed + 10).standard_normal((n, d)).astype(np.float32)
    return X, np.concatenate([np.sin(X @ A), np.tanh(X @ B)], 1).astype(np.float32)


def test_mlp_learns_nonlinear_map():
    X, Y = nonlinear_task(4000)
    tr, va, te = slice(0, 2500), slice(2500, 3000), slice(3000, 4000)  # 1,000 held-out items
    T = MLPTranslator(width=128, depth=2, epochs=60, patience=10, batch_size=128, lr=3e-3,
                      loss="mse", init=None, dropout=0.0, seed=0)
    T.fit(X[tr], Y[tr], X[va], Y[va])
    r1 = paired_retrieval(T.transform(X[te]), Y[te])["R@1"]
    r1_lin = paired_retrieval(LinearTranslator(alpha=0.0).fit(X[tr], Y[tr]).transform(X[te]), Y[te])["R@1"]
    assert r1 >= 0.95
    assert r1_lin < 0.8  # the map is far from linear


def test_mlp_from_lstsq_starts_at_closed_form(rng):
    X = rng.standard_normal((400, 12)).astype(np.float32)
    Y = X @ rng.standard_normal((12, 6)).astype(np.float32)
    T = MLPTranslator(width=32, epochs=0, init="lstsq", alpha=0.0).fit(X, Y)
    L = LinearTranslator(alpha=0.0).fit(X, Y)
    np.testing.assert_allclose(T.transform(X), L.transform(X), atol=1e-3)


def test_mlp_deterministic_on_cpu():
    X, Y = nonlinear_task(600)
    kw = dict(width=64, epochs=3, batch_size=128, seed=7, device="cpu")
    a = MLPTranslator(**kw).fit(X[:500], Y[:500], X[500:], Y[500:]).transform(X)
    b = MLPTranslator(**kw).fit(X[:500], Y[:500], X[500:], Y[500:]).transform(X)
    np.testing.assert_array_equal(a, b)


def test_mlp_fit_report():
    X, Y = nonlinear_task(600)
    T = MLPTranslator(width=64, epochs=4, batch_size=128, patience=100).fit(X[:500], Y[:500], X[500:], Y[500:])
    rep = T.fit_report_
    assert len(rep["train_loss"]) == 4 and len(rep["val_r1"]) == 5  # epoch 0 included
    assert 0 <= rep["val_R@1"] <= 1 and -1 <= rep["val_cos_best"] <= 1
    assert rep["temperature"] > 0


def test_relative_translator_reads_anchors(rng):
    X = unit(rng.standard_normal((800, 24)))
    Q = random_orthogonal(24, rng)
    Y = X @ Q
    T = RelativeTranslator(k=8, power=8.0).fit(X[:700], Y[:700])
    # an anchor translates to (close to) its own target
    assert paired_retrieval(T.transform(X[:50]), Y[:50])["R@1"] == 1.0
    m = paired_retrieval(T.transform(X[700:]), Y[700:])
    assert m["cos"] > 0.5


@pytest.mark.parametrize("kind", ["linear", "procrustes", "relative", "mlp"])
def test_save_load_round_trip(tmp_path, rng, kind):
    X = rng.standard_normal((300, 12)).astype(np.float32)
    Y = rng.standard_normal((300, 9)).astype(np.float32)
    params = {"epochs": 2, "width": 32} if kind == "mlp" else {}
    T = make_translator(kind, **params).fit(X, Y, X[:50], Y[:50])
    T.save(tmp_path / "edge")
    assert sorted(p.name for p in (tmp_path / "edge").iterdir()) == ["config.json", "model.safetensors"]
    U = load_translator(tmp_path / "edge")
    assert type(U) is type(T)
    np.testing.assert_array_equal(U.transform(X), T.transform(X))


def test_translator_errors(tmp_path, rng):
    X = rng.standard_normal((50, 4))
    with pytest.raises(NotFittedError, match="fit"):
        LinearTranslator().transform(X)
    with pytest.raises(DimensionMismatch, match="50 rows"):
        LinearTranslator().fit(X, rng.standard_normal((40, 3)))
    T = LinearTranslator().fit(X, rng.standard_normal((50, 3)))
    with pytest.raises(DimensionMismatch, match="expected dimension 4, got 5"):
        T.transform(rng.standard_normal((3, 5)))
    bad = X.copy()
    bad[7] = np.inf
    with pytest.raises(InvalidEmbeddings, match="rows 7"):
        T.transform(bad)
    with pytest.raises(ValueError, match="unknown translator 'cubic'"):
        make_translator("cubic")
    # missing and corrupt weight files
    T.save(tmp_path / "e")
    (tmp_path / "e" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFile, match="model.safetensors"):
        load_translator(tmp_path / "e")
    (tmp_path / "e" / "model.safetensors").unlink()
    with pytest.raises(CorruptFile, match="missing"):
        load_translator(tmp_path / "e")
    with pytest.raises(CorruptFile):
        load_translator(tmp_path / "nowhere")
