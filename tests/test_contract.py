"""The estimator contract, checked the same way over every translator kind, and the
library's promise of no hidden side effects (torch's global RNG, matplotlib's backend)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import sklearn.exceptions
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from bridge.errors import InvalidParameter, NotFittedError
from bridge.metrics import paired_retrieval
from bridge.training import train
from bridge.translators import (
    AutoTranslator,
    CentredTranslator,
    IdentityTranslator,
    LinearTranslator,
    MLPTranslator,
    PostHocTranslator,
    ProcrustesTranslator,
    RelativeTranslator,
    Translator,
    load_translator,
)

TINY_MLP = dict(width=16, depth=2, dropout=0.2, epochs=3, batch_size=32, patience=2, seed=3)

KINDS = {
    "linear": lambda: LinearTranslator(alpha=0.5),
    "procrustes": lambda: ProcrustesTranslator(),
    "mlp": lambda: MLPTranslator(**TINY_MLP),
    "relative": lambda: RelativeTranslator(n_anchors=60, k=8, power=4.0, seed=1),
    "identity": lambda: IdentityTranslator(),
    "posthoc": lambda: PostHocTranslator(LinearTranslator(alpha=0.5), steps="center+procrustes"),
    "centred": lambda: CentredTranslator(LinearTranslator(alpha=0.5)),
    "auto": lambda: AutoTranslator(candidates=["procrustes", {"kind": "linear", "alpha": 0.5}]),
    "centred_posthoc": lambda: CentredTranslator(
        PostHocTranslator(ProcrustesTranslator(), steps="center"),
        in_mean=np.full(8, 0.1, np.float32), out_mean=np.full(8, 0.5, np.float32)),
}


def _data(seed=0, n=120, d=8, noise=0.3):
    r = np.random.default_rng(seed)
    X = r.standard_normal((n, d)).astype(np.float32)
    A = np.eye(d) + 0.3 * r.standard_normal((d, d))
    Y = (X @ A + 0.5 + noise * r.standard_normal((n, d))).astype(np.float32)
    return X[:90], Y[:90], X[90:], Y[90:]


def _plain(params: dict) -> dict:
    """Parameters with wrapped translators replaced by (class, their plain parameters)."""
    return {k: (type(v).__name__, _plain(v.get_params(deep=False)))
            if isinstance(v, Translator) else v.tolist() if isinstance(v, np.ndarray) else v
            for k, v in params.items()}


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return request.param


def test_fit_transform_save_load_round_trip(kind, tmp_path):
    X, Y, Xv, Yv = _data()
    T = KINDS[kind]().fit(X, Y, Xv, Yv)
    before = T.transform(Xv)
    assert before.shape == Yv.shape and np.isfinite(before).all()
    U = load_translator(T.save(tmp_path / kind))
    np.testing.assert_array_equal(U.transform(Xv), before)
    assert type(U) is type(T)
    assert _plain(U.get_params(deep=False)) == _plain(T.get_params(deep=False))
    assert U.score(Xv, Yv) == T.score(Xv, Yv)


def test_clone_is_unfitted_with_equal_params_and_refits_the_same(kind):
    X, Y, Xv, Yv = _data()
    T = KINDS[kind]().fit(X, Y, Xv, Yv)
    C = clone(T)
    assert type(C) is type(T) and not C.is_fitted
    assert _plain(C.get_params(deep=True)) == _plain(T.get_params(deep=True))
    with pytest.raises(NotFittedError):
        C.transform(Xv)
    # every kind is deterministic for its parameters: the clone refits to the same map
    np.testing.assert_allclose(C.fit(X, Y, Xv, Yv).transform(Xv), T.transform(Xv), atol=1e-6)


def test_get_params_set_params_round_trip(kind):
    T = KINDS[kind]()
    params = T.get_params(deep=True)
    shallow = T.get_params(deep=False)
    assert set(shallow) == set(T._param_names())
    U = KINDS[kind]()
    assert U.set_params(**params) is U
    assert _plain(U.get_params(deep=True)) == _plain(params)
    with pytest.raises(InvalidParameter, match="'nonsense'"):
        U.set_params(nonsense=1)


def test_transform_before_fit_raises(kind):
    X, _, _, _ = _data()
    T = KINDS[kind]()
    with pytest.raises(NotFittedError, match="not fitted"):
        T.transform(X)
    with pytest.raises(sklearn.exceptions.NotFittedError):
        check_is_fitted(T)
    X, Y, Xv, Yv = _data()
    check_is_fitted(T.fit(X, Y, Xv, Yv))  # passes once fitted


def test_score_is_paired_r1(kind):
    X, Y, Xv, Yv = _data()
    T = KINDS[kind]().fit(X, Y, Xv, Yv)
    assert T.score(Xv, Yv) == paired_retrieval(T.transform(Xv), Yv)["R@1"]


def test_posthoc_params_reach_its_base():
    T = PostHocTranslator(LinearTranslator(alpha=0.5), steps="center")
    p = T.get_params(deep=True)
    assert p["steps"] == "center" and p["base__alpha"] == 0.5
    assert p["base__fit_intercept"] is True and isinstance(p["base"], LinearTranslator)
    T.set_params(base__alpha=3.0, steps="procrustes")
    assert T.base.alpha == 3.0 and T.steps == "procrustes"
    with pytest.raises(InvalidParameter, match="'beta'"):
        T.set_params(base__beta=1.0)
    with pytest.raises(InvalidParameter, match="not a translator"):
        PostHocTranslator().set_params(base__alpha=1.0)


def test_posthoc_with_a_fitted_base_keeps_it_and_an_unfitted_one_is_fitted_first():
    X, Y, Xv, Yv = _data()
    base = LinearTranslator(alpha=0.5).fit(X, Y)
    W = PostHocTranslator(base, "center").fit(X, Y)
    assert W.base_ is base
    fresh = PostHocTranslator(LinearTranslator(alpha=0.5), "center").fit(X, Y)
    assert not fresh.base.is_fitted  # the parameter stays as given; its fitted clone is base_
    np.testing.assert_allclose(fresh.transform(Xv), W.transform(Xv), atol=1e-6)


def test_grid_search_picks_the_brute_force_alpha():
    r = np.random.default_rng(5)
    n, d = 80, 30  # few rows for the dimension: the penalty matters
    X = r.standard_normal((n, d)).astype(np.float32)
    Y = (X @ r.standard_normal((d, d)) + 6.0 * r.standard_normal((n, d))).astype(np.float32)
    grid = [0.0, 1.0, 10.0, 30.0, 100.0, 1000.0, 10000.0]
    folds = KFold(4, shuffle=True, random_state=0)
    search = GridSearchCV(LinearTranslator(), {"alpha": grid}, cv=folds).fit(X, Y)
    means = []
    for a in grid:
        scores = [LinearTranslator(alpha=a).fit(X[tr], Y[tr]).score(X[te], Y[te])
                  for tr, te in folds.split(X)]
        means.append(np.mean(scores))
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], means)
    assert len(set(means)) > 2  # the grid is not flat: the choice means something
    best = grid[int(np.argmax(means))]
    assert search.best_params_ == {"alpha": best}
    assert 0.0 < best < 10000.0  # an interior choice, not an end of the grid
    assert search.best_estimator_.alpha == best and search.best_estimator_.is_fitted


def test_pipeline_of_scaler_and_translator():
    X, Y, Xv, Yv = _data()
    pipe = Pipeline([("scale", StandardScaler()), ("map", LinearTranslator(alpha=2.0))])
    pipe.fit(X, Y)
    scaler = StandardScaler().fit(X)
    T = LinearTranslator(alpha=2.0).fit(scaler.transform(X), Y)
    np.testing.assert_allclose(pipe.transform(Xv), T.transform(scaler.transform(Xv)), atol=1e-5)
    assert pipe.score(Xv, Yv) == T.score(scaler.transform(Xv), Yv)
    search = GridSearchCV(pipe, {"map__alpha": [0.1, 10.0]}, cv=3).fit(X, Y)
    assert search.best_params_["map__alpha"] in (0.1, 10.0)


# -- no hidden side effects ------------------------------------------------------------

def test_build_fit_and_load_leave_torch_global_rng_alone(tmp_path):
    X, Y, Xv, Yv = _data()
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    M = MLPTranslator(**TINY_MLP)
    M.build(8, 8)
    assert torch.equal(torch.get_rng_state(), state), "build reseeded the global RNG"
    M.fit(X, Y, Xv, Yv)
    assert torch.equal(torch.get_rng_state(), state), "fit reseeded the global RNG"
    path = M.save(tmp_path / "mlp")
    load_translator(path)
    assert torch.equal(torch.get_rng_state(), state), "load_translator reseeded the global RNG"
    net = M.build(8, 8)
    train(net, X, Y, Xv, Yv, epochs=2, batch_size=32, seed=9)
    assert torch.equal(torch.get_rng_state(), state), "train reseeded the global RNG"
    # and the global stream continues where the user left it
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.set_rng_state(state)
    np.testing.assert_array_equal(torch.rand(3), expected)


def test_same_seed_fits_identically_whatever_the_global_state():
    X, Y, Xv, Yv = _data()
    torch.manual_seed(1)
    a = MLPTranslator(**TINY_MLP).fit(X, Y, Xv, Yv)
    torch.manual_seed(2)
    torch.rand(100)
    b = MLPTranslator(**TINY_MLP).fit(X, Y, Xv, Yv)
    for (ka, va), (kb, vb) in zip(a.net_.state_dict().items(), b.net_.state_dict().items()):
        assert ka == kb
        assert torch.equal(va, vb), ka
    c = MLPTranslator(**{**TINY_MLP, "seed": 4}).fit(X, Y, Xv, Yv)
    assert not torch.equal(a.net_.body[0].weight, c.net_.body[0].weight)


def test_plots_leave_the_matplotlib_backend_alone():
    code = (
        "import matplotlib; matplotlib.use('svg')\n"
        "import bridge.plots as bp\n"
        "ax = bp.plot_gap_bars([{'pair': 'a vs b', 'gap': 0.3}], metrics=['gap'])\n"
        "print(matplotlib.get_backend(), type(ax).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items()
           if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    assert out.stdout.split() == ["svg", "Axes"], out.stdout + out.stderr
