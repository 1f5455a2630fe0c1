"""Bad input is refused with a BridgeError that names the bad value, and changes nothing."""

import math
import tracemalloc

import numpy as np
import pytest

from bridge import store
from bridge.errors import (
    BridgeError,
    DimensionMismatch,
    EmptyData,
    InvalidEmbeddings,
    InvalidParameter,
)
from bridge.fusion import fit_route_weights, fused_metrics, fused_search, simplex_grid
from bridge.losses import make_loss, parse_loss
from bridge.params import Interval, Options, check_int, validate_params
from bridge.retrieval import build_index, metrics_from_ranks, retrieval_metrics, search
from bridge.store import (
    Cache,
    PairTable,
    check_embeddings,
    check_float16_range,
    concat_caches,
    load_cache,
    save_cache,
    split_groups,
)
from bridge.translators import make_translator
from bridge.translators.base import TRANSLATORS, _ensure_registered
from bridge.translators.posthoc import parse_post


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---------------------------------------------------------------------------
# embeddings


@pytest.mark.parametrize("bad, exc, fragment", [
    (np.ones((3, 4), np.complex64), InvalidEmbeddings, "complex"),
    (np.ones((3, 4)) + 0j, InvalidEmbeddings, "complex"),  # zero imaginary part: still refused
    (np.ones((5, 0), np.float32), InvalidEmbeddings, "zero width"),
    ([[1.0, 2.0], [3.0]], InvalidEmbeddings, "equal length"),
    (np.array([[1.0, "a"]], dtype=object), InvalidEmbeddings, "dtype object"),
    (np.array([["a", "b"], ["c", "d"]]), InvalidEmbeddings, "<U1"),
    ([["a", "b"]], InvalidEmbeddings, "<U1"),
    (np.ones((3, 4), bool), InvalidEmbeddings, "dtype bool"),
    (np.ones((2, 3, 4), np.float32), DimensionMismatch, "(2, 3, 4)"),
    (np.ones(4, np.float32), DimensionMismatch, "(4,)"),
    (np.ones((0, 4), np.float32), EmptyData, "(0, 4)"),
    (np.array([[1.0, np.nan], [1.0, 2.0], [np.inf, 0.0]]), InvalidEmbeddings, "rows 0, 2"),
])
def test_check_embeddings_refuses(bad, exc, fragment):
    with pytest.raises(exc) as info:
        check_embeddings(bad, "emb")
    assert fragment in str(info.value) and "emb" in str(info.value)


def test_check_embeddings_refuses_complex_tensor():
    torch = pytest.importorskip("torch")
    with pytest.raises(InvalidEmbeddings, match="complex"):
        check_embeddings(torch.ones((2, 3), dtype=torch.complex64))
    x = check_embeddings(torch.ones((2, 3), dtype=torch.bfloat16))
    assert x.dtype == np.float32 and x.shape == (2, 3)


def test_check_embeddings_accepts_and_converts():
    x = check_embeddings([[1, 2], [3, 4]])
    assert x.dtype == np.float32 and x.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    # finite float64 rows whose sum overflows float64 are finite: accepted
    big = np.full((2, 4), 1e308)
    assert check_embeddings(big) is big
    assert check_embeddings(np.ones(3), dim=3).shape == (1, 3)


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_nonfinite_rows_found_across_chunks(monkeypatch, rng, chunk):
    monkeypatch.setattr(store, "CHECK_CHUNK_ROWS", chunk)
    x = rng.standard_normal((200, 5)).astype(np.float32)
    bad = [0, 6, 7, 63, 64, 199]
    for i, r in enumerate(bad):
        x[r, i % 5] = [np.nan, np.inf, -np.inf][i % 3]
    expected = np.flatnonzero(~np.isfinite(x).all(axis=1))  # brute force
    assert expected.tolist() == bad
    with pytest.raises(InvalidEmbeddings) as info:
        check_embeddings(x, "emb")
    assert f"{len(bad)} row(s)" in str(info.value)
    assert "rows " + ", ".join(map(str, bad)) in str(info.value)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_memmap_validated_in_place_without_a_full_size_temporary(tmp_path, dtype):
    n, d = 200_000, 64
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=dtype, shape=(n, d))
    for s in range(0, n, 50_000):
        mm[s:s + 50_000] = 0.5
    mm.flush()
    del mm
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    tracemalloc.start()
    try:
        out = check_embeddings(x, "big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out is x  # not copied
    assert isinstance(out, np.memmap)
    assert peak < x.nbytes / 8, (peak, x.nbytes)
    x2 = np.load(tmp_path / "x.npy", mmap_mode="r+")
    x2[n - 3, 5] = np.nan
    x2.flush()
    with pytest.raises(InvalidEmbeddings, match=f"rows {n - 3}"):
        check_embeddings(np.load(tmp_path / "x.npy", mmap_mode="r"))


# ---------------------------------------------------------------------------
# caches and pair tables


@pytest.mark.parametrize("ids, exc, fragment", [
    (np.array([["a", "b"], ["c", "d"], ["e", "f"]]), DimensionMismatch, "shape (3, 2)"),
    ([["a"], ["b"], ["c"]], DimensionMismatch, "nested list"),
    ("abc", InvalidParameter, "'abc'"),
    (None, InvalidParameter, "NoneType"),
    (7, InvalidParameter, "int"),
    ({"a", "b", "c"}, InvalidParameter, "set"),  # a set has no row order
    (["a", "b"], DimensionMismatch, "2 ids"),
])
def test_cache_refuses_bad_ids(ids, exc, fragment):
    with pytest.raises(exc) as info:
        Cache(ids=ids, emb=np.ones((3, 2), np.float32))
    assert fragment in str(info.value)


def test_cache_ids_become_strings():
    c = Cache(ids=[0, 1.5, float("nan")], emb=np.ones((3, 2), np.float32))
    assert c.ids.tolist() == ["0", "1.5", "nan"]
    c = Cache(ids=np.arange(3), emb=np.ones((3, 2), np.float32))
    assert c.ids.tolist() == ["0", "1", "2"] and c.ids.dtype == object
    c = Cache(ids=["a", "a", "b"], emb=np.ones((3, 2), np.float32))  # duplicates allowed
    assert c.rows(["a"]).tolist() == [0]


@pytest.mark.parametrize("groups, fragment", [
    (["g", "h"], "2 "),
    (np.array([["g"], ["h"], ["i"]]), "shape (3, 1)"),
    ([("g", 1), ("h", 2), ("i", 3)], "nested tuple"),
])
def test_cache_refuses_bad_groups(groups, fragment):
    with pytest.raises(DimensionMismatch) as info:
        Cache(ids=["a", "b", "c"], emb=np.ones((3, 2), np.float32), groups=groups)
    assert fragment in str(info.value)


def test_cache_refuses_bad_meta_and_embeddings():
    with pytest.raises(InvalidParameter, match="meta: expected a dict, got list"):
        Cache(ids=["a"], emb=np.ones((1, 2)), meta=["x"])
    with pytest.raises(InvalidEmbeddings, match="complex"):
        Cache(ids=["a"], emb=np.ones((1, 2)) * 1j)
    with pytest.raises(InvalidEmbeddings, match="zero width"):
        Cache.from_arrays(np.ones((4, 0)))


def test_pair_table_refuses_bad_shapes():
    with pytest.raises(DimensionMismatch, match=r"shape \(2, 2\)"):
        PairTable(np.array([["a", "b"], ["c", "d"]]), ["x", "y"])
    with pytest.raises(DimensionMismatch, match="got 3 and 2 ids"):
        PairTable(["a", "b", "c"], ["x", "y"])
    with pytest.raises(DimensionMismatch, match="2 pairs but 3 groups"):
        PairTable(["a", "b"], ["x", "y"], groups=["g", "h", "i"])
    with pytest.raises(DimensionMismatch, match=r"\('a', 'b', 'c'\)"):
        PairTable.from_pairs([("a", "b", "c")])
    with pytest.raises(InvalidParameter, match="got int '5'"):
        PairTable.from_pairs(5)
    t = PairTable.from_pairs(np.array([["a", "x"], ["b", "y"]]))
    assert t.pairs() == [("a", "x"), ("b", "y")]


def test_save_float16_refuses_values_over_its_range(tmp_path):
    x = np.ones((4, 3), np.float32)
    good = Cache(ids=list("abcd"), emb=x)
    save_cache(tmp_path / "c", good)
    big = x.copy()
    big[2, 1] = -70000.0
    bad = Cache(ids=list("abcd"), emb=big)
    with pytest.raises(InvalidEmbeddings) as info:
        save_cache(tmp_path / "c", bad)
    msg = str(info.value)
    assert "70000" in msg and "65504" in msg and "float32" in msg
    np.testing.assert_array_equal(load_cache(tmp_path / "c").vectors(), x)  # old cache kept
    for suffix in (".npz", ".safetensors", ""):
        with pytest.raises(InvalidEmbeddings):
            save_cache(tmp_path / f"new{suffix}", bad)
        assert not (tmp_path / f"new{suffix}").exists()
    save_cache(tmp_path / "c32", bad, dtype="float32")
    assert load_cache(tmp_path / "c32").vectors()[2, 1] == -70000.0
    # exactly the values that float16 turns into inf are refused
    for v, ok in ((65504.0, True), (65519.0, True), (65520.0, False), (-65520.0, False)):
        edge = x.copy()
        edge[0, 0] = v
        with np.errstate(over="ignore"):
            assert np.isfinite(np.float16(v)) == ok
        if ok:
            save_cache(tmp_path / "edge", Cache(ids=list("abcd"), emb=edge), overwrite=True)
            assert abs(load_cache(tmp_path / "edge").vectors()[0, 0]) == 65504.0
        else:
            with pytest.raises(InvalidEmbeddings, match="65520"):
                save_cache(tmp_path / "edge", Cache(ids=list("abcd"), emb=edge), overwrite=True)


def test_float16_range_scanned_in_chunks(monkeypatch):
    monkeypatch.setattr(store, "CHECK_CHUNK_ROWS", 3)
    x = np.zeros((10, 2), np.float32)
    x[9, 1] = 1e5
    with pytest.raises(InvalidEmbeddings, match="100000"):
        check_float16_range(x, "x")
    x[9, 1] = 100.0
    check_float16_range(x, "x")


@pytest.mark.parametrize("dtype", ["int8", "float64", "bogus", None])
def test_save_cache_refuses_other_dtypes(tmp_path, dtype):
    with pytest.raises(InvalidParameter, match="'dtype'"):
        save_cache(tmp_path / "c", Cache(ids=["a"], emb=np.ones((1, 2))), dtype=dtype)
    assert not (tmp_path / "c").exists()


def test_concat_caches_arguments():
    a = Cache(ids=["x"], emb=np.ones((1, 2)))
    with pytest.raises(InvalidParameter, match="1 caches but 2 prefixes"):
        concat_caches([a], ["train", "val"])
    with pytest.raises(EmptyData):
        concat_caches([], [])
    with pytest.raises(InvalidParameter, match="distinct"):
        concat_caches([a, a], ["train", "train"])
    c = concat_caches([a, a], ["train", "test"])
    assert c.ids.tolist() == ["train:x", "test:x"]


@pytest.mark.parametrize("fractions", [
    (0.5, 0.5, 0.5), (math.nan, 0.5, 0.5), (0.8, 0.2), (-0.1, 0.6, 0.5), "abc",
    (0.8, 0.1, "0.1"), (True, False, False), (math.inf, 0, 0),
])
def test_split_groups_refuses_bad_fractions(fractions):
    with pytest.raises(InvalidParameter) as info:
        split_groups(["a", "b", "c"], fractions)
    assert "'fractions'" in str(info.value) and repr(fractions) in str(info.value)


def test_split_groups_refuses_bad_groups():
    with pytest.raises(DimensionMismatch, match=r"shape \(2, 2\)"):
        split_groups([["a", "b"], ["c", "d"]])
    with pytest.raises(DimensionMismatch, match="a string"):
        split_groups("abc")
    s = split_groups(["a", "b", "c", "d"], [1, 0, 0])  # integers are numbers
    assert s["train"].tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------------------
# translator hyper-parameters

BAD_PARAMS = [
    ("linear", "alpha", math.nan), ("linear", "alpha", -1.0), ("linear", "alpha", "1.0"),
    ("linear", "alpha", True), ("linear", "alpha", math.inf), ("linear", "fit_intercept", "yes"),
    ("procrustes", "center", 1), ("procrustes", "scale", "True"),
    ("relative", "k", 0), ("relative", "k", 2.5), ("relative", "k", "many"),
    ("relative", "power", 0), ("relative", "power", -1.0), ("relative", "power", math.nan),
    ("relative", "n_anchors", 0), ("relative", "seed", -1),
    ("mlp", "width", 0), ("mlp", "width", 1.5), ("mlp", "width", -3), ("mlp", "depth", 0),
    ("mlp", "epochs", -1), ("mlp", "epochs", 2.0), ("mlp", "batch_size", 0),
    ("mlp", "batch_size", 1), ("mlp", "lr", math.nan), ("mlp", "lr", 0.0), ("mlp", "lr", -1e-3),
    ("mlp", "dropout", 1.0), ("mlp", "dropout", -0.1), ("mlp", "temperature", 0.0),
    ("mlp", "temperature", -1.0), ("mlp", "loss", "l1"), ("mlp", "loss", "infonce+x*mse"),
    ("mlp", "loss", "mse+mse"), ("mlp", "loss", {"mse": -1.0}), ("mlp", "loss", 5),
    ("mlp", "loss", "0*mse"), ("mlp", "init", "random"), ("mlp", "patience", 0),
    ("mlp", "device", "gpu0"), ("mlp", "progress", "yes"), ("mlp", "weight_decay", -1.0),
    ("mlp", "alpha", -0.5), ("mlp", "seed", 1.0), ("mlp", "residual", None),
]


@pytest.mark.parametrize("kind, name, value", BAD_PARAMS)
def test_make_translator_names_the_bad_parameter(kind, name, value):
    with pytest.raises(InvalidParameter) as info:
        make_translator(kind, **{name: value})
    msg = str(info.value)
    assert f"'{name}'" in msg and repr(value) in msg, msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("kind, name, value", BAD_PARAMS)
def test_fit_validates_before_any_work(kind, name, value, rng):
    _ensure_registered()
    T = TRANSLATORS[kind](**{name: value})  # __init__ only stores
    assert getattr(T, name) is value
    X = rng.standard_normal((20, 4)).astype(np.float32)
    with pytest.raises(InvalidParameter, match=f"'{name}'"):
        T.fit(X, X, X, X)
    assert not T.is_fitted


@pytest.mark.parametrize("kind, name", [("linear", "beta"), ("mlp", "widht"),
                                        ("procrustes", "alpha"), ("identity", "k")])
def test_unknown_parameter_names(kind, name):
    with pytest.raises(InvalidParameter) as info:
        make_translator(kind, **{name: 1})
    assert repr(name) in str(info.value) and "expected one of" in str(info.value)


def test_make_translator_kind_and_clone():
    with pytest.raises(InvalidParameter, match="unknown translator 'cubic'"):
        make_translator("cubic")
    with pytest.raises(InvalidParameter, match="unknown translator 3"):
        make_translator(3)
    base = make_translator("linear", alpha=0.5)
    with pytest.raises(InvalidParameter, match="'alpha'.*-2"):
        make_translator(base, alpha=-2)
    with pytest.raises(InvalidParameter, match="'gamma'"):
        make_translator(base, gamma=1)
    assert make_translator(base, alpha=2.0).alpha == 2.0


def test_numpy_scalars_and_auto_are_accepted(rng):
    X = rng.standard_normal((60, 4)).astype(np.float32)
    T = make_translator("linear", alpha=np.float64(0.1)).fit(X, X)
    assert T.alpha_ == pytest.approx(0.1)
    make_translator("mlp", epochs=np.int64(1), lr=np.float32(1e-3), width=8, dropout=0.0,
                    loss={"infonce": 1, "mse": 0.5}, device="cpu")
    make_translator("relative", k="auto", power=2, n_anchors=None)
    make_translator("mlp", epochs=0, init="lstsq")  # closed-form start, no training


def test_mlp_zero_epochs_needs_an_init():
    with pytest.raises(InvalidParameter, match="'epochs'.*init=None"):
        make_translator("mlp", epochs=0, init=None)


def test_linear_auto_grid_is_checked(monkeypatch, rng):
    from bridge.translators import linear

    monkeypatch.setattr(linear, "ALPHA_GRID", (0.0, math.nan))
    X = rng.standard_normal((40, 3)).astype(np.float32)
    with pytest.raises(InvalidParameter, match="ALPHA_GRID.*nan"):
        make_translator("linear", alpha="auto").fit(X[:30], X[:30], X[30:], X[30:])


def test_posthoc_steps():
    with pytest.raises(InvalidParameter, match="'rotate'"):
        parse_post("rotate")
    with pytest.raises(InvalidParameter, match="5"):
        parse_post(5)
    with pytest.raises(InvalidParameter, match="repeated"):
        parse_post("center+center")
    with pytest.raises(InvalidParameter, match="'steps'"):
        make_translator("posthoc", steps="rotate")
    assert parse_post("center+procrustes") == ("center", "procrustes")


def test_parse_loss():
    assert parse_loss("infonce+0.5*mse") == {"infonce": 1.0, "mse": 0.5}
    assert parse_loss({"cosine": 2}) == {"cosine": 2.0}
    with pytest.raises(InvalidParameter, match="unknown loss 'l1'"):
        make_loss("l1")
    with pytest.raises(InvalidParameter, match="'x'"):
        parse_loss("x*mse")


def test_every_translator_declares_its_parameters():
    _ensure_registered()
    for kind, cls in TRANSLATORS.items():
        assert set(cls._param_names()) == set(cls._parameter_constraints), kind


def test_params_module():
    with pytest.raises(InvalidParameter, match=r"'n' must be an integer in \[1, 5\], got 6"):
        check_int("n", 6, 1, 5)
    with pytest.raises(InvalidParameter, match="got True"):
        check_int("n", True, 0)
    cs = {"a": [Interval(float, 0, 1, closed="neither"), Options({"auto"}), None]}
    for ok in (0.5, "auto", None):
        validate_params(cs, {"a": ok})
    for bad in (0.0, 1.0, "x"):
        with pytest.raises(InvalidParameter, match="'auto' or None"):
            validate_params(cs, {"a": bad})
    with pytest.raises(InvalidParameter, match="unknown parameter 'b'"):
        validate_params(cs, {"b": 1})


# ---------------------------------------------------------------------------
# retrieval and fusion arguments


@pytest.fixture
def qg(rng):
    G = rng.standard_normal((50, 8)).astype(np.float32)
    return G + 0.1 * rng.standard_normal((50, 8)).astype(np.float32), G


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3", None])
def test_search_k(qg, k):
    Q, G = qg
    with pytest.raises(InvalidParameter, match="'k'"):
        search(Q, G, k=k)


@pytest.mark.parametrize("ks", [(0,), (), ("1",), 5, (1, -5), (1.5,)])
def test_retrieval_ks(qg, ks):
    Q, G = qg
    with pytest.raises(InvalidParameter, match="'ks"):
        retrieval_metrics(Q, G, ks=ks)
    with pytest.raises(InvalidParameter, match="'ks"):
        metrics_from_ranks([np.array([1])], ks=ks)


@pytest.mark.parametrize("opts, fragment", [
    (dict(kind="lsh"), "unknown index kind 'lsh'"),
    (dict(kind="ivf", nlist=51), "'nlist' must be at most the number of gallery rows (50)"),
    (dict(kind="ivf", nlist=0), "'nlist'"),
    (dict(kind="ivf", nprobe=0), "'nprobe'"),
    (dict(kind="hnsw", hnsw_m=0), "'hnsw_m'"),
    (dict(kind="hnsw", hnsw_m=1), "'hnsw_m'"),
    (dict(kind="hnsw", ef_search=0), "'ef_search'"),
    (dict(kind="hnsw", ef_construction=0), "'ef_construction'"),
    (dict(kind="hnsw", efsearch=10), "unknown index option 'efsearch'"),
    (dict(kind="hnsw", depth=0), "'depth'"),
    (dict(kind="hnsw", depth=5, ks=(1, 10)), "'depth' must be at least max(ks) = 10"),
    (dict(block=0), "'block'"),
])
def test_retrieval_index_options(qg, opts, fragment):
    Q, G = qg
    with pytest.raises(InvalidParameter) as info:
        retrieval_metrics(Q, G, **opts)
    assert fragment in str(info.value)


def test_build_index_checks_before_faiss(qg):
    _, G = qg
    with pytest.raises(InvalidParameter, match="'nlist'.*got 100"):
        build_index(G, "ivf", nlist=100)
    with pytest.raises(InvalidParameter, match="'hnsw_m'"):
        build_index(G, "hnsw", hnsw_m=1)
    assert build_index(G, "ivf", nlist=50).ntotal == 50  # one list per row is allowed


@pytest.mark.parametrize("call, fragment", [
    (lambda Q, G: fused_search([Q], [G], k=0), "'k'"),
    (lambda Q, G: fused_search([Q], [G], candidates=0), "'candidates'"),
    (lambda Q, G: fused_search([Q], [G], method="max"), "unknown fusion method 'max'"),
    (lambda Q, G: fused_search([Q], [G], kind="lsh"), "unknown index kind"),
    (lambda Q, G: fused_metrics([Q], [G], ks=()), "'ks'"),
    (lambda Q, G: fused_metrics([Q], [G], candidates=-5), "'candidates'"),
    (lambda Q, G: fused_metrics([Q], [G], candidates=5, kind="ivf", nlist=500), "'nlist'"),
    (lambda Q, G: fused_metrics([Q], [G], block=0), "'block'"),
    (lambda Q, G: fit_route_weights([Q], [G], step=0), "'step'"),
    (lambda Q, G: fit_route_weights([Q], [G], step=0.3), "divide 1"),
    (lambda Q, G: fit_route_weights([Q], [G], metric="R@3"), "unknown metric 'R@3'"),
    (lambda Q, G: simplex_grid(2, step=-1), "'step'"),
])
def test_fusion_arguments(qg, call, fragment):
    Q, G = qg
    with pytest.raises(InvalidParameter) as info:
        call(Q, G)
    assert fragment in str(info.value)


def test_fused_candidates_beyond_the_gallery_mean_every_row(qg):
    Q, G = qg
    a = fused_metrics([Q, Q], [G, G], candidates=10**6)
    b = fused_metrics([Q, Q], [G, G], candidates=50)
    exact = fused_metrics([Q, Q], [G, G])
    for key in ("R@1", "R@5", "MRR"):
        assert a[key] == b[key] == exact[key]


def test_all_errors_are_bridge_errors():
    for exc in (InvalidParameter, InvalidEmbeddings, DimensionMismatch, EmptyData):
        assert issubclass(exc, BridgeError) and issubclass(exc, ValueError)


@pytest.mark.parametrize("side", [None, "c", 1, "A"])
def test_pairing_group_side(side):
    from bridge.store import pair_by_ids, pair_table

    a = Cache(ids=["x", "y"], emb=np.ones((2, 2)))
    b = Cache(ids=["y", "x"], emb=np.ones((2, 2)))
    with pytest.raises(InvalidParameter, match=f"'groups' must be 'a' or 'b'.*got {side!r}"):
        pair_by_ids(a, b, groups=side)
    with pytest.raises(InvalidParameter, match="'groups'"):
        pair_table(a, b, [("x", "x")], groups=side)


def test_huge_k_means_every_row(qg, rng):
    Q, G = qg
    s, r = fused_search([Q], [G], k=10**12)
    assert r.shape == (50, 50) and (r >= 0).all()
    X = rng.standard_normal((30, 4)).astype(np.float32)
    T = make_translator("relative", k=2**70, power=1.0).fit(X, X)
    assert T.k_ == 30
    with pytest.raises(DimensionMismatch, match="2 finite route weights"):
        fused_metrics([Q, Q], [G, G], method="weighted", weights="x")
