"""Property-based tests over the public API.

Every call either returns a correct result (checked against a closed form or a brute
force written here) or raises a :class:`bridge.errors.BridgeError` subclass; any other
exception fails the property. Inputs are drawn by hypothesis: arbitrary arrays, ids,
hyper-parameters, split rules, retrieval arguments, and mutated saved files.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, example, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import bridge  # noqa: E402
from bridge.errors import BridgeError, CorruptFile, SmallSampleWarning  # noqa: E402
from bridge.store import (  # noqa: E402
    Cache,
    PairTable,
    check_embeddings,
    load_cache,
    pair_by_ids,
    pair_table,
    save_cache,
    split_groups,
)

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large,
                                                      HealthCheck.filter_too_much])


#: multiplies every property's example count (``BRIDGE_PROPERTY_SCALE=10`` explores deeper)
SCALE = float(os.environ.get("BRIDGE_PROPERTY_SCALE", "1"))


def examples(n: int) -> int:
    return max(5, int(n * SCALE))


def attempt(fn, *args, **kwargs):
    """``(True, result)`` or ``(False, BridgeError)``; any other exception propagates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        try:
            return True, fn(*args, **kwargs)
        except BridgeError as e:
            assert str(e), f"{type(e).__name__} raised without a message"
            return False, e


def must_raise(fn, *args, **kwargs) -> BridgeError:
    ok, out = attempt(fn, *args, **kwargs)
    assert not ok, f"expected a BridgeError, got a result: {out!r}"
    return out


def tmpdir():
    return tempfile.TemporaryDirectory(prefix="bridge-prop-")


# ---------------------------------------------------------------------------
# strategies

FLOAT_DTYPES = [np.float16, np.float32, np.float64]
OTHER_DTYPES = [np.int8, np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128]

any_arrays = st.one_of(
    hnp.arrays(st.sampled_from(FLOAT_DTYPES + OTHER_DTYPES),
               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
    hnp.arrays(st.sampled_from(FLOAT_DTYPES),
               st.tuples(st.integers(0, 5), st.integers(0, 5))),
)

# finite, float16-safe values (a cache saved as float16 must round trip)
small_floats = st.floats(-1000, 1000, allow_nan=False, allow_infinity=False, width=32)

id_text = st.text(min_size=0, max_size=6)
few_ids = st.sampled_from(["a", "b", "c", "d", "é", "日本", "", " x", "1"])


def finite_matrix(n, d, elements=small_floats, dtype=np.float32):
    return hnp.arrays(dtype, (n, d), elements=elements)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=8))
json_values = st.recursive(
    json_scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=3),
                           st.dictionaries(st.text(max_size=5), kids, max_size=3)),
    max_leaves=6,
)
# the same with small integers: a translator config sizes a network by its numbers, and
# a huge one is tried separately under a memory limit (test_load_translator_huge_sizes)
json_values_small = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-4096, 4096),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)),
    lambda kids: st.one_of(st.lists(kids, max_size=3),
                           st.dictionaries(st.text(max_size=5), kids, max_size=3)),
    max_leaves=6,
)


# ---------------------------------------------------------------------------
# caches


def _expected_embeddings(x: np.ndarray):
    """What a correct check_embeddings returns for ``x`` (None: it must raise)."""
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        return None
    if np.iscomplexobj(x):
        if np.any(x.imag != 0):
            return None
        x = x.real
    if x.dtype == np.bool_:
        x = x.astype(np.float32)
    x64 = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x64).all():
        return None
    return x64


@settings(max_examples=examples(150), **SETTINGS)
@given(any_arrays)
def test_check_embeddings_arbitrary_arrays(x):
    ok, out = attempt(check_embeddings, x)
    want = _expected_embeddings(x)
    if want is None:
        assert not ok, f"accepted {x.dtype} {x.shape}: {out!r}"
        return
    if not ok:
        # a complex or bool array with a clean value may still be refused
        assert np.iscomplexobj(x) or x.dtype == np.bool_, f"refused a valid array: {out}"
        return
    assert isinstance(out, np.ndarray) and out.ndim == 2
    assert np.issubdtype(out.dtype, np.floating)
    assert out.shape == x.shape
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=1e-6)


ragged = st.lists(st.lists(st.floats(-5, 5, allow_nan=False), min_size=0, max_size=3),
                  min_size=1, max_size=4)


@settings(max_examples=examples(60), **SETTINGS)
@given(ragged)
def test_check_embeddings_nested_lists(rows):
    ok, out = attempt(check_embeddings, rows)
    lengths = {len(r) for r in rows}
    if len(lengths) != 1 or 0 in lengths:
        assert not ok, f"accepted ragged/empty rows {rows!r}: {out!r}"
    else:
        assert ok, out
        np.testing.assert_allclose(out, np.asarray(rows, np.float64), rtol=1e-6)


@settings(max_examples=examples(60), **SETTINGS)
@given(st.sampled_from([None, "wrong", object(), {"a": 1}, "1.0", b"xx", [["a", "b"]],
                        [[1, None]], [[1.0, "2"]]]))
def test_check_embeddings_non_numeric(x):
    must_raise(check_embeddings, x)


@st.composite
def ids_for(draw, n):
    """Ids for n rows: right count (unicode, duplicates), a wrong count, 2-D or None."""
    kind = draw(st.sampled_from(["ok", "ok", "ok", "dups", "wrong", "2d", "none", "ints"]))
    if kind == "ok":
        return kind, draw(st.lists(id_text, min_size=n, max_size=n, unique=True))
    if kind == "dups":
        return kind, draw(st.lists(few_ids, min_size=n, max_size=n))
    if kind == "wrong":
        m = draw(st.integers(0, n + 3).filter(lambda m: m != n))
        return kind, draw(st.lists(id_text, min_size=m, max_size=m))
    if kind == "2d":
        w = draw(st.integers(1, 3))
        return kind, [[f"{i}-{j}" for j in range(w)] for i in range(n)]
    if kind == "ints":
        return kind, draw(st.lists(st.integers(-5, 10**12), min_size=n, max_size=n))
    return kind, None


@settings(max_examples=examples(100), **SETTINGS)
@given(st.data())
def test_cache_from_arrays_ids(data):
    n = data.draw(st.integers(1, 6))
    d = data.draw(st.integers(1, 4))
    emb = data.draw(finite_matrix(n, d, dtype=data.draw(st.sampled_from(FLOAT_DTYPES))))
    kind, ids = data.draw(ids_for(n))
    ok, c = attempt(Cache.from_arrays, emb, ids=ids)
    if kind in ("wrong", "2d"):
        assert not ok, f"ids {ids!r} for {n} rows accepted: {c.ids!r}"
        return
    assert ok, c
    want = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    assert list(c.ids) == want
    assert len(c) == n and c.dim == d
    np.testing.assert_array_equal(np.asarray(c.emb, np.float64), emb.astype(np.float64))
    # every row is found by its id (first row for duplicates)
    for k in set(want):
        assert c.index()[k] == want.index(k)


FORMATS = ["folder", ".npz", ".safetensors"]


@st.composite
def cache_case(draw):
    n = draw(st.integers(1, 6))
    d = draw(st.integers(1, 4))
    big = draw(st.booleans())
    elems = (st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)
             if big else small_floats)
    emb = draw(finite_matrix(n, d, elements=elems,
                             dtype=draw(st.sampled_from([np.float32, np.float64]))))
    unique = draw(st.booleans())
    ids = draw(st.lists(id_text if unique else few_ids, min_size=n, max_size=n, unique=unique))
    groups = draw(st.one_of(st.none(), st.lists(few_ids, min_size=n, max_size=n)))
    return emb, ids, groups


@settings(max_examples=examples(60), **SETTINGS)
@given(cache_case(), st.sampled_from(FORMATS), st.sampled_from(["float16", "float32"]))
@example(case=(np.zeros((2, 1), np.float32), ["a\x00", "a"], ["\x00", ""]), fmt=".npz",
         dtype="float32")  # ids and groups with a trailing NUL character
def test_save_load_cache_round_trip(case, fmt, dtype):
    emb, ids, groups = case
    c = Cache.from_arrays(emb, ids=ids, groups=groups, meta={"name": "prop", "modality": "text"})
    with tmpdir() as tmp:
        path = Path(tmp) / ("c" if fmt == "folder" else f"c{fmt}")
        ok, out = attempt(save_cache, path, c, dtype=dtype)
        with np.errstate(over="ignore"):
            cast = emb.astype(dtype)
        if not np.isfinite(cast).all():
            # values beyond the range of the stored dtype: refused, nothing written
            assert not ok, f"saved values over the {dtype} range as inf"
            assert not path.exists() and os.listdir(tmp) == []
            return
        assert ok, out
        back = load_cache(path)
        assert list(back.ids) == [str(i) for i in ids]
        if groups is None:
            assert back.groups is None
        else:
            assert list(back.groups) == [str(g) for g in groups]
        np.testing.assert_array_equal(np.asarray(back.emb), cast)
        if fmt != ".npz":  # an .npz cache holds arrays only
            assert back.meta.get("modality") == "text"
        assert os.listdir(tmp) == [path.name], "temporary files left beside the cache"


@settings(max_examples=examples(40), **SETTINGS)
@given(st.data())
def test_save_refusal_keeps_old_cache(data):
    """A refused save (values beyond float16) leaves the cache already there intact."""
    fmt = data.draw(st.sampled_from(FORMATS))
    n, d = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    good = Cache.from_arrays(data.draw(finite_matrix(n, d)), ids=[f"i{k}" for k in range(n)])
    huge = np.full((n, d), 1e6, np.float32)
    with tmpdir() as tmp:
        path = Path(tmp) / ("c" if fmt == "folder" else f"c{fmt}")
        save_cache(path, good)
        must_raise(save_cache, path, Cache.from_arrays(huge), dtype="float16")
        back = load_cache(path)
        np.testing.assert_array_equal(np.asarray(back.emb), good.emb.astype(np.float16))
        assert list(back.ids) == list(good.ids)


@st.composite
def mutated_cache_file(draw):
    how = draw(st.sampled_from(["truncate", "flip", "append", "json"]))
    pos = draw(st.floats(0, 1))
    mask = draw(st.integers(1, 255))
    value = draw(json_values)
    return how, pos, mask, value


@settings(max_examples=examples(80), **SETTINGS)
@given(st.sampled_from(FORMATS), mutated_cache_file(),
       st.sampled_from(["embeddings.npy", "ids.json", "meta.json", "groups.json"]))
@example(fmt="folder", mutation=("flip", 0.453125, 1, None), member="embeddings.npy")
@example(fmt=".npz", mutation=("flip", 0.705078125, 64, None), member="")
@example(fmt=".npz", mutation=("flip", 0.7109375, 1, None), member="")
@example(fmt=".npz", mutation=("flip", 0.625, 16, None), member="")
@example(fmt=".npz", mutation=("truncate", 0.5, 1, None), member="")
def test_load_mutated_cache(fmt, mutation, member):
    how, pos, mask, value = mutation
    n, d = 4, 3
    c = Cache.from_arrays(np.arange(n * d, dtype=np.float32).reshape(n, d) / 7,
                          ids=["a", "b", "c", "d"], groups=["g", "g", "h", "i"])
    with tmpdir() as tmp:
        path = Path(tmp) / ("c" if fmt == "folder" else f"c{fmt}")
        save_cache(path, c)
        if fmt == "folder":
            target = path / member
        else:
            target = path
        blob = target.read_bytes()
        if how == "json":
            if target.suffix != ".json":
                how = "flip"
            else:
                blob = json.dumps(value).encode()
        if how == "truncate":
            blob = blob[: int(pos * len(blob))]
        elif how == "flip":
            i = min(int(pos * len(blob)), len(blob) - 1)
            blob = blob[:i] + bytes([blob[i] ^ mask]) + blob[i + 1:]
        elif how == "append":
            blob = blob + bytes([mask]) * 7
        target.write_bytes(blob)
        note(f"{target.name}: {how} -> {blob[:80]!r}")
        ok, back = attempt(load_cache, path)
        if ok:
            assert isinstance(back, Cache)
            e = np.asarray(back.emb)
            assert e.ndim == 2 and e.shape[0] == len(back.ids) >= 1 and e.shape[1] >= 1
            assert np.isfinite(e.astype(np.float64)).all()
            assert all(isinstance(i, str) for i in back.ids)
            if back.groups is not None:
                assert len(back.groups) == len(back.ids)
                assert all(isinstance(g, str) for g in back.groups)
            assert isinstance(back.meta, dict)


@settings(max_examples=examples(60), **SETTINGS)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3), st.booleans()), min_size=0,
                max_size=4),
       st.lists(st.sampled_from(["train", "val", "test", "x", ""]), max_size=5))
def test_concat_caches(specs, prefixes):
    from bridge.store import concat_caches

    rng = np.random.default_rng(0)
    caches = [Cache.from_arrays(rng.standard_normal((n, d)), ids=[f"r{j}" for j in range(n)],
                                groups=[f"g{j // 2}" for j in range(n)] if grouped else None)
              for n, d, grouped in specs]
    ok, c = attempt(concat_caches, caches, prefixes)
    if (len(caches) != len(prefixes) or not caches or len({d for _, d, _ in specs}) != 1
            or len(set(prefixes)) != len(prefixes)):
        assert not ok, f"concat_caches accepted {specs} with prefixes {prefixes}"
        return
    assert ok, c
    assert list(c.ids) == [f"{p}:{i}" for cc, p in zip(caches, prefixes) for i in cc.ids]
    assert list(c.groups) == [f"{p}:{g}" for cc, p in zip(caches, prefixes)
                              for g in cc.group_of_rows()]
    np.testing.assert_array_equal(np.asarray(c.emb, np.float64),
                                  np.concatenate([np.asarray(cc.emb, np.float64) for cc in caches]))


# ---------------------------------------------------------------------------
# pairs and splits


def _cache(ids, d=2, groups=None, seed=0):
    rng = np.random.default_rng(seed)
    return Cache.from_arrays(rng.standard_normal((len(ids), d)).astype(np.float32),
                             ids=ids, groups=groups)


@settings(max_examples=examples(100), **SETTINGS)
@given(st.lists(few_ids, min_size=1, max_size=8), st.lists(few_ids, min_size=1, max_size=8),
       st.booleans(), st.booleans(), st.sampled_from(["a", "b"]))
def test_pair_by_ids_brute_force(a_ids, b_ids, ga, gb, which):
    a = _cache(a_ids, groups=[f"A{x}" for x in a_ids] if ga else None)
    b = _cache(b_ids, groups=[f"B{j}" for j in range(len(b_ids))] if gb else None)
    want = [(i, j) for i in range(len(a_ids)) for j in range(len(b_ids)) if a_ids[i] == b_ids[j]]
    ok, P = attempt(pair_by_ids, a, b, groups=which)
    if not want:
        assert not ok and isinstance(P, bridge.NoPairs)
        return
    assert ok, P
    got = list(zip(P.a_rows.tolist(), P.b_rows.tolist()))
    assert sorted(got) == want
    assert len(P.groups) == len(got)
    for (i, j), g in zip(got, P.groups.tolist()):
        if which == "a" and ga:
            assert g == a.groups[i]
        elif which == "b" and gb:
            assert g == b.groups[j]
        elif not ga and not gb:
            assert g == a_ids[i]


@settings(max_examples=examples(30), **SETTINGS)
@given(st.one_of(st.text(max_size=3), st.integers(), st.none()).filter(lambda v: v not in ("a", "b")))
def test_pair_by_ids_bad_groups_argument(which):
    a, b = _cache(["x", "y"]), _cache(["y", "x"])
    must_raise(pair_by_ids, a, b, groups=which)


pair_rows = st.lists(st.tuples(few_ids, few_ids), min_size=0, max_size=8)


@settings(max_examples=examples(100), **SETTINGS)
@given(st.lists(few_ids, min_size=1, max_size=6), st.lists(few_ids, min_size=1, max_size=6),
       pair_rows, st.sampled_from(["tuples", "lists", "table", "csv"]))
def test_pair_table_brute_force(a_ids, b_ids, table, form):
    a, b = _cache(a_ids), _cache(b_ids, seed=1)
    want = [(i, j) for ka, kb in table for i in range(len(a_ids)) if a_ids[i] == ka
            for j in range(len(b_ids)) if b_ids[j] == kb]
    with tmpdir() as tmp:
        if form == "lists":
            arg = [list(p) for p in table]
        elif form == "table":
            arg = PairTable([p[0] for p in table], [p[1] for p in table])
        elif form == "csv":
            if any(("," in x or x != x.strip()) for p in table for x in p):
                form, arg = "tuples", table  # not representable in a CSV file
            else:
                arg = Path(tmp) / "pairs.csv"
                arg.write_text("".join(f"{x},{y}\n" for x, y in table))
        else:
            arg = table
        ok, P = attempt(pair_table, a, b, arg)
    if not want:
        assert not ok and isinstance(P, bridge.NoPairs), P
        return
    assert ok, P
    got = list(zip(P.a_rows.tolist(), P.b_rows.tolist()))
    assert sorted(got) == sorted(want)
    assert P.groups.tolist() == [a_ids[i] for i, _ in got]


@settings(max_examples=examples(60), **SETTINGS)
@given(st.lists(st.one_of(st.tuples(few_ids, few_ids), st.tuples(few_ids),
                          st.tuples(few_ids, few_ids, few_ids), few_ids, st.none(),
                          st.integers()), min_size=1, max_size=5))
def test_pair_table_malformed_rows(rows):
    a, b = _cache(["a", "b", "c"]), _cache(["a", "b", "c"])
    ok, P = attempt(pair_table, a, b, rows)
    well_formed = all(isinstance(r, tuple) and len(r) == 2 for r in rows)
    if not well_formed:
        assert not ok, f"malformed rows accepted: {rows!r}"


@settings(max_examples=examples(60), **SETTINGS)
@given(st.lists(few_ids, max_size=5), st.lists(few_ids, max_size=5),
       st.one_of(st.none(), st.lists(few_ids, max_size=5)))
def test_pair_table_columns(a_ids, b_ids, groups):
    ok, T = attempt(PairTable, a_ids, b_ids, groups)
    if len(a_ids) != len(b_ids) or (groups is not None and len(groups) != len(a_ids)):
        assert not ok
        return
    assert ok, T
    assert T.pairs() == list(zip(a_ids, b_ids))
    assert T.reversed().pairs() == list(zip(b_ids, a_ids))
    assert len(T) == len(a_ids)


@st.composite
def fractions3(draw):
    w = draw(st.lists(st.floats(0, 1), min_size=3, max_size=3).filter(lambda v: sum(v) > 0.01))
    return tuple(x / sum(w) for x in w)


@settings(max_examples=examples(100), **SETTINGS)
@given(st.lists(st.text(max_size=3), min_size=1, max_size=30), fractions3(),
       st.integers(-2**40, 2**40), st.randoms(use_true_random=False))
@example(groups=["", "\x00", "000"], fractions=(0.0, 0.5, 0.5), seed=0, rnd=random.Random(0))
def test_split_groups_properties(groups, fractions, seed, rnd):
    s = split_groups(groups, fractions, seed)
    n = len(groups)
    assert set(s) == {"train", "val", "test"}
    parts = [np.asarray(s[k]) for k in ("train", "val", "test")]
    allrows = np.concatenate(parts)
    assert sorted(allrows.tolist()) == list(range(n)), "splits overlap or miss rows"
    where = {}
    for k, p in zip(("train", "val", "test"), parts):
        for r in p.tolist():
            assert where.setdefault(groups[r], k) == k, f"group {groups[r]!r} is split"
    # deterministic, and a group's split depends only on its name and the seed
    again = split_groups(list(groups), fractions, seed)
    for k in s:
        np.testing.assert_array_equal(s[k], again[k])
    perm = list(range(n))
    rnd.shuffle(perm)
    shuffled = [groups[i] for i in perm]
    s2 = split_groups(shuffled, fractions, seed)
    where2 = {shuffled[r]: k for k in s2 for r in s2[k].tolist()}
    assert where2 == where, "a group's split depends on the order of the rows"
    if len(set(groups)) >= 3:
        for k, f in zip(("train", "val", "test"), fractions):
            if f > 0:
                assert s[k].size > 0, f"{k} split empty with fraction {f}"


bad_fraction = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=5),
    st.tuples(st.floats(-2, -1e-3), st.floats(0, 1), st.floats(0, 1)),
    st.tuples(st.just(float("nan")), st.just(0.5), st.just(0.5)),
    st.tuples(st.text(max_size=2), st.just(0.5), st.just(0.5)),
    st.sampled_from([None, "0.8,0.1,0.1", 1.0, (0.8, 0.1), (0.5, 0.5, 0.5), {"train": 1}]),
)


@settings(max_examples=examples(80), **SETTINGS)
@given(bad_fraction)
def test_split_groups_bad_fractions(fr):
    try:
        arr = np.asarray(fr, dtype=float)
        valid = arr.shape == (3,) and np.isfinite(arr).all() and (arr >= 0).all() \
            and abs(arr.sum() - 1) < 1e-6
    except (TypeError, ValueError):
        valid = False
    ok, out = attempt(split_groups, ["a", "b", "c", "d"], fr)
    if not valid:
        assert not ok, f"fractions {fr!r} accepted: {out!r}"


# ---------------------------------------------------------------------------
# translators

weird_values = st.one_of(
    st.sampled_from([float("nan"), float("inf"), -float("inf"), -1, -1.0, 0, 0.0, 1e30, -1e30,
                     "auto", "x", "", None, True, False, [1], {"a": 1}, 2**70, 1e-300]),
    st.floats(-10, 10), st.integers(-3, 50),
)

# values that are cheap even when valid (a huge width or epochs count would be slow)
cheap_size = st.one_of(st.sampled_from([float("nan"), -1, 0, 0.5, "8", None, True, [2], 1e30,
                                        2**70, -10**9]), st.integers(1, 4))

PARAMS = {
    "linear": {"alpha": weird_values, "fit_intercept": weird_values},
    "procrustes": {"center": weird_values, "scale": weird_values},
    "relative": {"n_anchors": weird_values, "k": weird_values, "power": weird_values,
                 "seed": weird_values},
    "identity": {},
    "posthoc": {"steps": st.sampled_from(["center", "procrustes", "center+procrustes", "x"])},
    "mlp": {"width": cheap_size, "depth": cheap_size, "epochs": cheap_size,
            "patience": cheap_size, "batch_size": weird_values, "lr": weird_values,
            "weight_decay": weird_values, "temperature": weird_values, "dropout": weird_values,
            "alpha": weird_values, "init": st.sampled_from(["lstsq", "procrustes", None, "x", 3]),
            "loss": st.sampled_from(["mse", "cosine", "infonce", "infonce+mse", "nope", "", 3,
                                     "mse+"]),
            "residual": weird_values, "layer_norm": weird_values,
            "seed": st.one_of(st.integers(-2**70, 2**70), weird_values),
            "device": st.sampled_from([None, "cpu", "nope", 3]),
            "progress": st.sampled_from([False, None])},
}
MLP_BASE = {"width": 8, "epochs": 2, "patience": 1, "batch_size": 8}

# valid values of every parameter (cheap to fit), drawn in about half the cases
VALID = {
    "linear": {"alpha": st.one_of(st.floats(0, 1e6), st.just("auto")),
               "fit_intercept": st.booleans()},
    "procrustes": {"center": st.booleans(), "scale": st.booleans()},
    "relative": {"n_anchors": st.one_of(st.none(), st.integers(1, 40)),
                 "k": st.one_of(st.just("auto"), st.integers(1, 40)),
                 "power": st.one_of(st.just("auto"), st.floats(0.001, 64)),
                 "seed": st.integers(0, 2**31)},
    "identity": {},
    "posthoc": {"steps": st.sampled_from(["center", "procrustes", "center+procrustes"])},
    "mlp": {"width": st.integers(1, 8), "depth": st.integers(1, 3), "epochs": st.integers(1, 2),
            "patience": st.integers(1, 3), "batch_size": st.integers(2, 64),
            "lr": st.floats(1e-5, 0.1), "weight_decay": st.floats(0, 1),
            "temperature": st.floats(0.01, 1), "dropout": st.floats(0, 0.9),
            "alpha": st.floats(0, 10), "init": st.sampled_from(["lstsq", "procrustes", None]),
            "loss": st.sampled_from(["mse", "cosine", "infonce", "infonce+mse"]),
            "residual": st.booleans(), "layer_norm": st.booleans(),
            "seed": st.integers(0, 2**31), "device": st.sampled_from([None, "cpu"])},
}


def _must_refuse(kind, params) -> str | None:
    """The parameter a correct make_translator/fit must refuse, if any is plainly invalid."""
    def num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def nan(v):
        return isinstance(v, float) and math.isnan(v)

    for k, v in params.items():
        if k == "alpha" and (nan(v) or (num(v) and v < 0) or v == float("inf")):
            return k
        if k in ("epochs", "width", "batch_size", "depth") and num(v) and v <= 0:
            return k
        if k == "lr" and (nan(v) or (num(v) and v <= 0)):
            return k
        if k == "dropout" and num(v) and not 0 <= v < 1:
            return k
        if k == "temperature" and (nan(v) or (num(v) and v <= 0)):
            return k
        if k == "power" and (nan(v) or (num(v) and v < 0)):
            return k
        if k in ("k", "n_anchors") and num(v) and v <= 0:
            return k
    return None


@st.composite
def translator_case(draw):
    kind = draw(st.sampled_from(sorted(PARAMS) + ["nope", "", 3, None]))
    params = {}
    valid = False
    if kind in PARAMS:
        valid = draw(st.booleans())
        pool = VALID[kind] if valid else PARAMS[kind]
        names = draw(st.lists(st.sampled_from(sorted(pool) or ["alpha"]),
                              max_size=len(pool) if valid else 3, unique=True))
        for name in names:
            if name in pool:
                params[name] = draw(pool[name])
        if not valid and draw(st.integers(0, 4)) == 0:
            params[draw(st.sampled_from(["bogus", "alpah", "Alpha", "n_epochs"]))] = 1
    n = draw(st.integers(4, 12))
    dx, dy = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if kind == "identity" and draw(st.booleans()):
        dy = dx
    seed = draw(st.integers(0, 2**16))
    return kind, params, n, dx, dy, seed, valid


@settings(max_examples=examples(60), **SETTINGS)
@given(translator_case())
def test_make_translator_and_fit(case):
    from bridge.translators import load_translator, make_translator

    kind, params, n, dx, dy, seed, valid = case
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, dx)), rng.standard_normal((n, dy))
    Xv, Yv = rng.standard_normal((4, dx)), rng.standard_normal((4, dy))
    full = {**MLP_BASE, **params} if kind == "mlp" else params
    refuse = _must_refuse(kind, full)
    unknown = kind in PARAMS and any(k not in PARAMS[kind] for k in full)
    note(f"kind={kind!r} params={full!r} refuse={refuse} unknown={unknown}")

    def build_and_fit():
        T = make_translator(kind, **full)
        return T.fit(X, Y, Xv, Yv)

    ok, T = attempt(build_and_fit)
    event(f"{kind!r}: {'fitted' if ok else 'refused'}")
    if kind not in PARAMS or unknown or refuse is not None:
        assert not ok, f"{kind!r} with {full!r} accepted"
        if refuse is not None and not unknown and kind in PARAMS:
            # the error names the parameter (this one, or another invalid one given)
            assert any(repr(k) in str(T) or k in str(T) for k in params), \
                f"error does not name a parameter: {T}"
        return
    if (kind == "identity" and dx != dy) or kind == "posthoc":
        assert not ok, "fitted without a fitted base translator / across dimensions"
        return
    if not ok:
        # a refused unusual value (a wrong type...) is fine; a valid setting must fit
        assert not valid, f"valid parameters {full!r} refused: {T}"
        return
    Xt = rng.standard_normal((5, dx))
    out = T.transform(Xt)
    assert out.shape == (5, dy)
    assert np.isfinite(out).all(), f"non-finite translation with {full!r}"
    with tmpdir() as tmp:
        ok, _ = attempt(T.save, Path(tmp) / "t")
        assert ok, _
        T2 = load_translator(Path(tmp) / "t")
        np.testing.assert_allclose(T2.transform(Xt), out, rtol=1e-5, atol=1e-5)
        assert T2.in_dim_ == dx and T2.out_dim_ == dy


def _orthogonal(d, rng):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@settings(max_examples=examples(60), **SETTINGS)
@given(st.integers(1, 6), st.integers(0, 8), st.floats(0.1, 10), st.booleans(),
       st.integers(0, 2**16))
def test_procrustes_recovers_rotation(d, extra, s, center, seed):
    from bridge.translators import ProcrustesTranslator

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((d + 2 + extra, d))
    R = _orthogonal(d, rng)
    t = rng.standard_normal(d) * 3 if center else np.zeros(d)
    Y = s * X @ R + t
    T = ProcrustesTranslator(center=center, scale=True).fit(X, Y)
    Xn = rng.standard_normal((7, d))
    np.testing.assert_allclose(T.transform(Xn), s * Xn @ R + t, rtol=1e-3, atol=1e-3 * (1 + s))
    np.testing.assert_allclose(np.asarray(T.R_) @ np.asarray(T.R_).T, np.eye(d), atol=1e-4)


@settings(max_examples=examples(40), **SETTINGS)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(0, 6), st.integers(0, 2**16))
def test_linear_recovers_affine_map(dx, dy, extra, seed):
    from bridge.translators import LinearTranslator

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((dx + 3 + extra, dx))
    W, b = rng.standard_normal((dx, dy)), rng.standard_normal(dy)
    T = LinearTranslator(alpha=0.0).fit(X, X @ W + b)
    Xn = rng.standard_normal((6, dx))
    np.testing.assert_allclose(T.transform(Xn), Xn @ W + b, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------
# retrieval


@st.composite
def exact_vectors(draw, n, d):
    """Rows whose normalised form and dot products are exact in float32: 1 or 4 non-zero
    entries of +-1 (norm 1 or 2), times a power of two, or all zero. Ties are frequent."""
    rows = []
    for _ in range(n):
        k = draw(st.sampled_from([0, 1, 1, 4] if d >= 4 else [0, 1, 1]))
        v = np.zeros(d, np.float32)
        if k:
            where = draw(st.lists(st.integers(0, d - 1), min_size=k, max_size=k, unique=True))
            signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=k, max_size=k))
            v[where] = signs
            v *= draw(st.sampled_from([1.0, 2.0, 0.5, 8.0]))
        rows.append(v)
    # duplicate some rows on purpose
    if n > 1 and draw(st.booleans()):
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        rows[i] = rows[j].copy()
    return np.stack(rows)


def _unit64(x):
    x = np.asarray(x, np.float64)
    nrm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(nrm, 1e-12)


def brute_ranks(S: np.ndarray, rel: list[np.ndarray], tol: float = 0.0,
                same: np.ndarray | None = None) -> list[np.ndarray]:
    """Pessimistic ranks: 1 + #wrong rows scoring >= the right row + #right rows ahead.

    ``tol > 0`` also counts wrong rows within ``tol`` below; ``tol < 0`` counts only wrong
    rows more than ``-tol`` above, or duplicates of the right row (``same[w, r]``): the
    bounds of a ranking under rounding, where only true duplicates must tie.
    """
    out = []
    for i, r in enumerate(rel):
        r = np.unique(np.asarray(r))
        wi = np.setdiff1d(np.arange(S.shape[1]), r)
        wrong = S[i, wi]
        rs = sorted(r.tolist(), key=lambda j: -S[i, j])
        if tol >= 0:
            above = [int(np.sum(wrong >= S[i, j] - tol)) for j in rs]
        else:
            dup = same if same is not None else np.zeros((S.shape[1],) * 2, bool)
            # optimistic: right rows within rounding of each other may come in any order
            above = sorted(int(np.sum((wrong > S[i, j] - tol) | dup[wi, j])) for j in rs)
        out.append(np.array([1 + k + a for k, a in enumerate(above)], dtype=np.float64))
    return out


def assert_metrics_between(m, F, rel, ks, same, tol=1e-4):
    """``m`` lies between the metrics of the pessimistic and optimistic readings of
    near-ties of ``F`` (duplicate gallery rows always count against); equal when there
    are no near-ties."""
    hi = brute_metrics(brute_ranks(F, rel, tol), ks)          # near-ties count against
    lo = brute_metrics(brute_ranks(F, rel, -tol, same), ks)   # only duplicates do
    for k in [f"R@{k}" for k in ks] + ["MRR", "mAP"]:
        assert hi[k] - 1e-12 <= m[k] <= lo[k] + 1e-12, (k, m[k], hi[k], lo[k])


def brute_metrics(ranks, ks):
    first = np.array([r[0] for r in ranks])
    m = {f"R@{k}": float(np.mean(first <= k)) for k in ks}
    m["MRR"] = float(np.mean(1.0 / first))
    m["median_rank"] = float(np.median(first))
    m["mAP"] = float(np.mean([np.mean(np.arange(1, r.size + 1) / r) for r in ranks]))
    return m


@st.composite
def relevance(draw, nq, ng):
    form = draw(st.sampled_from(["none", "ints", "lists", "matrix"] if nq == ng
                                else ["ints", "lists", "matrix"]))
    if form == "none":
        return None, [np.array([i]) for i in range(nq)]
    if form == "ints":
        r = draw(st.lists(st.integers(0, ng - 1), min_size=nq, max_size=nq))
        return np.array(r), [np.array([x]) for x in r]
    sets = draw(st.lists(st.lists(st.integers(0, ng - 1), min_size=1, max_size=ng, unique=True),
                         min_size=nq, max_size=nq))
    rel = [np.array(sorted(s)) for s in sets]
    if form == "lists":
        return sets, rel
    M = np.zeros((nq, ng), bool)
    for i, s in enumerate(sets):
        M[i, s] = True
    return M, rel


@st.composite
def retrieval_case(draw, exact=True):
    nq, ng = draw(st.integers(1, 6)), draw(st.integers(1, 8))
    if draw(st.booleans()):
        ng = nq
    d = draw(st.integers(1, 5))
    if exact:
        q, g = draw(exact_vectors(nq, d)), draw(exact_vectors(ng, d))
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        q = rng.standard_normal((nq, d)).astype(np.float32)
        g = rng.standard_normal((ng, d)).astype(np.float32)
        if ng > 1 and draw(st.booleans()):
            g[draw(st.integers(0, ng - 1))] = g[draw(st.integers(0, ng - 1))]
    arg, rel = draw(relevance(nq, ng))
    return q, g, arg, rel


@settings(max_examples=examples(100), **SETTINGS)
@given(retrieval_case(), st.sampled_from([1, 2, 3, 1024, 0, -1]))
def test_ranks_of_relevant_brute_force(case, block):
    from bridge.retrieval import ranks_of_relevant

    q, g, arg, rel = case
    ok, ranks = attempt(ranks_of_relevant, q, g, arg, block=block)
    if block <= 0:
        assert not ok, f"block={block} accepted"
        return
    assert ok, ranks
    want = brute_ranks(_unit64(q) @ _unit64(g).T, rel)
    assert len(ranks) == len(want)
    for got, w in zip(ranks, want):
        np.testing.assert_array_equal(np.asarray(got, np.float64), w)


ks_values = st.one_of(
    st.lists(st.integers(1, 12), min_size=1, max_size=3).map(tuple),
    st.lists(st.one_of(st.integers(-3, 12), st.just(10**9)), min_size=0, max_size=3).map(tuple),
    st.sampled_from([(0,), (-1,), ("a",), (None,), (1, 0), "R@1", (float("nan"),)]),
)


@settings(max_examples=examples(100), **SETTINGS)
@given(retrieval_case(), ks_values)
def test_retrieval_metrics_flat_brute_force(case, ks):
    from bridge.retrieval import retrieval_metrics

    q, g, arg, rel = case
    ok, m = attempt(retrieval_metrics, q, g, arg, ks=ks)
    valid = (isinstance(ks, tuple) and len(ks) > 0
             and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks))
    if not valid:
        if ok:
            # only an empty ks may be accepted (then no R@K is reported)
            assert ks == () and not any(k.startswith("R@") for k in m), (ks, m)
        return
    assert ok, m
    want = brute_metrics(brute_ranks(_unit64(q) @ _unit64(g).T, rel), ks)
    for k, v in want.items():
        assert m[k] == pytest.approx(v, abs=1e-12), (k, m[k], v)
    assert m["n_queries"] == q.shape[0] and m["n_gallery"] == g.shape[0]


@settings(max_examples=examples(80), **SETTINGS)
@given(retrieval_case(exact=False), st.sampled_from(["hnsw", "ivf"]),
       st.sampled_from([None, 1, 1, 2, 0, -1, 10**6]), st.sampled_from([None, 1, 5, 100, 0, -3]))
@example(case=(np.array([[0.1], [-0.1]], np.float32), np.array([[0.6], [0.1]], np.float32), None,
               [np.array([0]), np.array([1])]), kind="hnsw", nlist=None, depth=None)
def test_retrieval_metrics_approximate(case, kind, nlist, depth):
    from bridge.retrieval import retrieval_metrics

    q, g, arg, rel = case
    opts = {"nlist": nlist} if (kind == "ivf" and nlist is not None) else {}
    if depth is not None:
        opts["depth"] = depth
    ok, m = attempt(retrieval_metrics, q, g, arg, ks=(1, 3), kind=kind, **opts)
    ng = g.shape[0]
    if (depth is not None and depth < 3) or ("nlist" in opts and not 1 <= nlist <= ng):
        assert not ok, f"kind={kind} nlist={nlist} depth={depth} on {ng} rows accepted: {m}"
        return
    if not ok:
        assert kind == "ivf" and nlist is None, m  # the default nlist is always valid
        raise AssertionError(f"default ivf refused {ng} rows: {m}")
    for k in ("R@1", "R@3", "MRR", "mAP"):
        assert 0.0 <= m[k] <= 1.0
    exact_search = (kind == "hnsw" or (nlist == 1 or ng < 39)) and (depth is None or depth >= ng)
    if exact_search:
        # every row is returned: ranks exact, duplicate gallery rows counted against
        want = brute_metrics(brute_ranks(_unit64(q) @ _unit64(g).T, rel), (1, 3))
        for k, v in want.items():
            assert m[k] == pytest.approx(v, abs=1e-9), (k, m[k], v)


@settings(max_examples=examples(100), **SETTINGS)
@given(retrieval_case(exact=False), st.one_of(st.integers(-3, 12), st.sampled_from([10**9])),
       st.sampled_from(["flat", "hnsw", "ivf", "FLAT", "", "x", None, 3]))
def test_search_top_k(case, k, kind):
    from bridge.retrieval import INDEX_KINDS, search

    q, g, _, _ = case
    ok, out = attempt(search, q, g, k=k, kind=kind)
    if k <= 0 or kind not in INDEX_KINDS:
        assert not ok, f"k={k} kind={kind!r} accepted"
        return
    assert ok, out
    scores, rows = out
    kk = min(k, g.shape[0])
    assert scores.shape == rows.shape == (q.shape[0], kk)
    if kind == "flat":
        S = _unit64(q) @ _unit64(g).T
        for i in range(q.shape[0]):
            np.testing.assert_allclose(scores[i], np.sort(S[i])[::-1][:kk], atol=1e-5)
            np.testing.assert_allclose(S[i, rows[i]], scores[i], atol=1e-5)


@settings(max_examples=examples(60), **SETTINGS)
@given(retrieval_case())
def test_bidirectional_metrics_brute_force(case):
    """b->a retrieves, for every gallery row some query names, the queries that name it."""
    from bridge.retrieval import bidirectional_metrics

    q, g, arg, rel = case
    ok, m = attempt(bidirectional_metrics, q, g, arg, ks=(1, 2))
    assert ok, m
    S = _unit64(q) @ _unit64(g).T
    fwd = brute_metrics(brute_ranks(S, rel), (1, 2))
    back = {}
    for i, r in enumerate(rel):
        for j in r.tolist():
            back.setdefault(j, []).append(i)
    rows = sorted(back)
    rev = brute_metrics(brute_ranks(S.T[rows], [np.array(back[j]) for j in rows]), (1, 2))
    for k in fwd:
        assert m["a->b"][k] == pytest.approx(fwd[k], abs=1e-12), ("a->b", k)
        assert m["b->a"][k] == pytest.approx(rev[k], abs=1e-12), ("b->a", k)
    assert m["b->a"]["n_queries"] == len(rows)


@settings(max_examples=examples(60), **SETTINGS)
@given(st.integers(1, 5), st.integers(1, 5), st.data())
def test_retrieval_bad_relevance(nq, ng, data):
    from bridge.retrieval import retrieval_metrics

    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((nq, 3)), rng.standard_normal((ng, 3))
    bad = data.draw(st.one_of(
        st.just([[]] * nq),
        st.lists(st.integers(ng, ng + 5), min_size=nq, max_size=nq),
        st.lists(st.integers(-5, -1), min_size=nq, max_size=nq),
        st.lists(st.integers(0, ng - 1), min_size=nq + 1, max_size=nq + 2),
        st.just(np.zeros((nq, ng + 1), bool)),
        st.just(np.zeros((nq, ng), bool)),
    ))
    must_raise(retrieval_metrics, q, g, bad)


# ---------------------------------------------------------------------------
# fusion


@st.composite
def fusion_case(draw):
    nroutes = draw(st.integers(1, 3))
    nq, ng = draw(st.integers(1, 5)), draw(st.integers(2, 7))
    if draw(st.booleans()):
        ng = nq = max(nq, 2)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    dims = [draw(st.integers(2, 4)) for _ in range(nroutes)]
    Q = [rng.standard_normal((nq, d)).astype(np.float32) for d in dims]
    G = [rng.standard_normal((ng, d)).astype(np.float32) for d in dims]
    if ng >= 3 and draw(st.booleans()):  # gallery row j duplicates row i in every route
        # (not with 2 rows: a gallery of one repeated row has no spread to z-score by)
        i, j = draw(st.integers(0, ng - 1)), draw(st.integers(0, ng - 1))
        for g in G:
            g[j] = g[i]
    arg, rel = draw(relevance(nq, ng))
    return Q, G, arg, rel


def same_rows(G):
    """``same[i, j]``: gallery rows i and j are identical in every route's view."""
    return np.logical_and.reduce([(g[:, None, :] == g[None, :, :]).all(-1) for g in G])


def _zscores(q, g):
    S = _unit64(q) @ _unit64(g).T
    return (S - S.mean(1, keepdims=True)) / np.maximum(S.std(1, keepdims=True), 1e-6)


def _rrf(q, g, ties):
    S = _unit64(q) @ _unit64(g).T
    if ties == "min":
        R = 1 + (S[:, None, :] > S[:, :, None] + 1e-9).sum(2)
    else:
        R = (S[:, None, :] >= S[:, :, None] - 1e-9).sum(2)
    return 1.0 / (60 + R)


weights_values = st.one_of(
    st.lists(st.floats(0.05, 5), min_size=1, max_size=3),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=4),
    st.sampled_from([None, "x", ["a"], [[1.0]]]),
)


@settings(max_examples=examples(80), **SETTINGS)
@given(fusion_case(), st.sampled_from(["zscore", "weighted", "rrf", "ZSCORE", "", None, 1]),
       weights_values)
def test_fused_metrics_brute_force(case, method, weights):
    from bridge.fusion import FUSION_METHODS, fused_metrics

    Q, G, arg, rel = case
    n = len(Q)
    ok, m = attempt(fused_metrics, Q, G, arg, method=method, weights=weights, ks=(1, 2))
    if method not in FUSION_METHODS:
        assert not ok, f"method {method!r} accepted"
        return
    if method == "weighted":
        try:
            w = np.asarray(weights, dtype=np.float64)
            good_w = w.shape == (n,) and np.isfinite(w).all()
        except (TypeError, ValueError):
            good_w = False
        if not good_w:
            assert not ok, f"weights {weights!r} accepted for {n} routes"
            return
    assert ok, m
    if method == "rrf":
        cands = [sum(_rrf(q, g, t) for q, g in zip(Q, G)) for t in ("min", "max")]
    else:
        w = np.asarray(weights, np.float64) if method == "weighted" else np.ones(n)
        cands = [sum(wr * _zscores(q, g) for wr, q, g in zip(w, Q, G))]
    errors = []
    for F in cands:
        try:
            assert_metrics_between(m, F, rel, (1, 2), same_rows(G))
            return
        except AssertionError as e:
            errors.append(e)
    raise errors[0]


@settings(max_examples=examples(80), **SETTINGS)
@given(retrieval_case(), st.sampled_from(["zscore", "weighted", "rrf"]), st.floats(0.01, 100))
def test_fusion_single_route_equals_retrieval(case, method, w):
    from bridge.fusion import fused_metrics
    from bridge.retrieval import retrieval_metrics

    q, g, arg, rel = case
    plain = retrieval_metrics(q, g, arg, ks=(1, 2, 3))
    ok, fused = attempt(fused_metrics, [q], [g], arg, method=method,
                        weights=[w] if method == "weighted" else None, ks=(1, 2, 3))
    assert ok, fused
    for k in ("R@1", "R@2", "R@3", "MRR", "mAP", "median_rank"):
        assert fused[k] == pytest.approx(plain[k], abs=1e-12), (k, fused[k], plain[k])


@settings(max_examples=examples(60), **SETTINGS)
@given(fusion_case(), st.floats(0.01, 100))
def test_fusion_weights_scale_free(case, c):
    """Equal weights are plain z-score fusion; scaling all weights changes nothing."""
    from bridge.fusion import fused_metrics

    Q, G, arg, rel = case
    n = len(Q)
    F = sum(_zscores(q, g) for q, g in zip(Q, G))
    base = fused_metrics(Q, G, arg, method="zscore", ks=(1, 2))
    eq = fused_metrics(Q, G, arg, method="weighted", weights=[c] * n, ks=(1, 2))
    # both equal the brute force (up to the reading of near-ties under rounding)
    assert_metrics_between(base, F, rel, (1, 2), same_rows(G))
    assert_metrics_between(eq, c * F, rel, (1, 2), same_rows(G), tol=1e-4 * c)


@settings(max_examples=examples(60), **SETTINGS)
@given(fusion_case(), st.sampled_from(["zscore", "rrf"]),
       st.one_of(st.integers(-3, 12), st.just(10**8)))
@example(case=([np.array([[0.1, -0.1], [0.6, 0.1], [-0.5, 0.4]], np.float32)],
               [np.array([[1.3, 0.9], [1.3, 0.9], [-0.6, 0.04]], np.float32)], None,
               [np.array([0]), np.array([1]), np.array([2])]), method="zscore", candidates=3)
def test_fused_candidates(case, method, candidates):
    from bridge.fusion import fused_metrics

    Q, G, arg, rel = case
    ng = G[0].shape[0]
    ok, m = attempt(fused_metrics, Q, G, arg, method=method, candidates=candidates, ks=(1, 5))
    if candidates <= 0:
        assert not ok, f"candidates={candidates} accepted"
        return
    assert ok, m
    for k in ("R@1", "MRR", "mAP"):
        assert 0.0 <= m[k] <= 1.0
    if candidates >= ng and method == "zscore":
        # every gallery row is a candidate: the exact (dense) figures
        F = sum(_zscores(q, g) for q, g in zip(Q, G))
        assert_metrics_between(m, F, rel, (1, 5), same_rows(G))


@settings(max_examples=examples(30), **SETTINGS)
@given(fusion_case(), st.sampled_from(["zscore", "rrf"]),
       st.one_of(st.integers(-2, 10), st.just(10**12)), st.sampled_from([None, 0, 1, 3, 1000]))
def test_fused_search(case, method, k, candidates):
    """Top k by fused score: valid rows, best first, scores equal the dense fused scores."""
    from bridge.fusion import fuse_scores, fused_search

    Q, G, _, _ = case
    ng = G[0].shape[0]
    opts = {} if candidates is None else {"candidates": candidates}
    ok, out = attempt(fused_search, Q, G, k=k, method=method, **opts)
    if k <= 0 or (candidates is not None and candidates <= 0):
        assert not ok, f"k={k} candidates={candidates} accepted"
        return
    assert ok, out
    scores, rows = out
    assert scores.shape == rows.shape and scores.shape[0] == Q[0].shape[0]
    # k beyond the gallery: clamped (as search does) or padded with -1 rows
    assert scores.shape[1] in (k, min(k, ng))
    F = fuse_scores(Q, G, method=method)
    for i in range(rows.shape[0]):
        found = rows[i][rows[i] >= 0]
        assert len(set(found.tolist())) == found.size, "a row returned twice"
        assert np.all(np.diff(scores[i][: found.size]) <= 1e-9), "not best first"
        if method == "zscore":
            np.testing.assert_allclose(scores[i][: found.size], F[i, found], rtol=1e-4,
                                       atol=1e-4)  # float32 scores, float64 moments
        if (candidates is None or candidates >= ng) and method == "zscore":
            # every row is a candidate: the top k of the dense scores
            assert found.size == min(k, ng)
            top = np.sort(F[i])[::-1][: found.size]
            np.testing.assert_allclose(scores[i][: found.size], top, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# graphs

NODE_NAMES = ["text:en@a", "text:de@b", "image@c", "audio@d"]


@st.composite
def split_rule(draw, groups):
    kind = draw(st.sampled_from(["hash", "prefix", "dict", "dict-overlap", "bad"]))
    if kind == "hash":
        return kind, None
    if kind == "prefix":
        return kind, "prefix"
    if kind == "bad":
        return kind, draw(st.sampled_from(["hash", "Prefix", 3, ["train"], ("a", "b")]))
    assign = {g: draw(st.sampled_from(["train", "val", "test", None])) for g in groups}
    rule = {k: [g for g, v in assign.items() if v == k] for k in ("train", "val", "test")}
    if draw(st.booleans()):
        rule["test"].append("not-a-group")
    if kind == "dict-overlap" and groups:
        g = draw(st.sampled_from(groups))
        a, b = draw(st.sampled_from([("train", "test"), ("train", "val"), ("val", "test")]))
        for k in (a, b):
            if g not in rule[k]:
                rule[k].append(g)
    return kind, rule


def _expected_split(groups: list[str], kind, rule, fractions, seed):
    """Per-pair split name under the rule (a brute force of the documented rules)."""
    if kind == "hash":
        s = split_groups(groups, fractions, seed)
        return {k: set(v.tolist()) for k, v in s.items()}
    if kind == "prefix":
        return {k: {i for i, g in enumerate(groups) if g.split(":", 1)[0] == k}
                for k in ("train", "val", "test")}
    return {k: {i for i, g in enumerate(groups) if g in set(rule.get(k, ()))}
            for k in ("train", "val", "test")}


@st.composite
def graph_case(draw):
    nnodes = draw(st.integers(2, 4))
    nrows = draw(st.integers(3, 40))
    prefixes = ["train", "train", "train", "val", "test"]
    base_ids = [f"{prefixes[draw(st.integers(0, 4))]}:{i}" for i in range(nrows)]
    dims = [draw(st.integers(1, 4)) for _ in range(nnodes)]
    seed = draw(st.integers(0, 2**16))
    # each node holds a random subset of the ids (in a shuffled order)
    node_ids = []
    for _ in range(nnodes):
        drop = draw(st.sets(st.sampled_from(base_ids), max_size=nrows // 3))
        keep = [i for i in base_ids if i not in drop]
        node_ids.append(draw(st.permutations(keep)) if keep else [base_ids[0]])
    kind, rule = draw(split_rule(sorted(set(base_ids))))
    edges = draw(st.lists(st.tuples(st.integers(0, nnodes - 1), st.integers(0, nnodes - 1),
                                    st.sampled_from(["linear", "procrustes", "identity",
                                                     "relative"]),
                                    st.sampled_from(["both", "forward", "backward"])),
                          min_size=1, max_size=4))
    via_add = draw(st.booleans())
    settings = {"seed": draw(st.integers(0, 5)), "min_val": draw(st.sampled_from([1, 2, 3])),
                "min_train": draw(st.sampled_from([1, 2]))}
    tr_opts = {"k": draw(st.sampled_from([1, 2, 3, 0, -1, 2.0, "2", True])),
               "combine": draw(st.sampled_from(["mean", "weighted", "sum", None])),
               "chunk_size": draw(st.sampled_from([None, 1, 2, 0, -1]))}
    return nnodes, node_ids, dims, seed, kind, rule, edges, via_add, settings, tr_opts


def check_translate_options(g, x, src, dst, opts):
    """translate with k routes, a combine rule and a chunk size: correct or BridgeError."""
    import networkx as nx

    k, combine, chunk = opts["k"], opts["combine"], opts["chunk_size"]
    out = np.full((x.shape[0], g.node(dst)["dim"]), np.nan, np.float32)
    ok, y = attempt(g.translate, x, (src, dst), k=k, combine=combine, chunk_size=chunk, out=out)
    valid = (type(k) is int and k >= 1 and combine in ("mean", "weighted")
             and (chunk is None or chunk >= 1))
    if not valid:
        assert not ok, f"translate accepted k={k!r} combine={combine!r} chunk_size={chunk!r}"
        return
    assert ok, y
    assert y is out, "translate did not write into out="
    paths = sorted((sum(g.edge(u, v)["cost"] for u, v in zip(p[:-1], p[1:])), p)
                   for p in nx.all_simple_paths(g.G, src, dst))
    routes = g.route(src, dst, k=k) if k > 1 else [g.route(src, dst)]
    routes = routes if isinstance(routes, list) else [routes]
    assert len(routes) == min(k, len(paths))
    np.testing.assert_allclose([r.cost for r in routes], [c for c, _ in paths[:len(routes)]],
                               rtol=1e-9, atol=1e-12)
    if k == 1:
        # a two-node list names the direct edge when there is one, else the cheapest route
        want = g.translate(x, [src, dst] if g.G.has_edge(src, dst) else routes[0])
    else:
        w = np.ones(len(routes)) if combine == "mean" else np.exp(-np.array([r.cost for r in routes]))
        w = w / w.sum()
        want = sum(wi * _unit64(g.translate(x, r)) for wi, r in zip(w, routes))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def _all_simple_paths_cost(G, src, dst):
    import networkx as nx

    best = None
    for p in nx.all_simple_paths(G, src, dst):
        c = sum(G.edges[u, v]["cost"] for u, v in zip(p[:-1], p[1:]))
        best = c if best is None else min(best, c)
    return best


@settings(max_examples=examples(35), **SETTINGS)
@given(graph_case())
def test_graph_build_route_translate_save_load(case):
    from bridge.graph import ModalityGraph, load_graph

    nnodes, node_ids, dims, seed, kind, rule, edges, via_add, settings, tr_opts = case
    rng = np.random.default_rng(seed)
    caches = [Cache.from_arrays(rng.standard_normal((len(ids), d)).astype(np.float32), ids=ids,
                                meta={"name": NODE_NAMES[i]})
              for i, (ids, d) in enumerate(zip(node_ids, dims))]
    ok, g = attempt(ModalityGraph, splits=rule, **settings)
    if kind == "bad":
        assert not ok, f"splits={rule!r} accepted"
        return
    if kind == "dict-overlap":
        # a group listed in two splits is a leak: refused by the graph or by every edge
        if not ok:
            return
    assert ok, g
    for i in range(nnodes - 1 if via_add else nnodes):
        g.add_node(NODE_NAMES[i], caches[i])
    made = set()

    def expected(a, b):
        ca, cb = caches[NODE_NAMES.index(a)], caches[NODE_NAMES.index(b)]
        ok, P = attempt(pair_by_ids, ca, cb)
        if not ok:
            return None
        return _expected_split(P.groups.tolist(), kind, rule, g.fractions, g.seed)

    def trainable(a, b):
        """Whether a correct connect(a, b) must train: enough pairs in train and val."""
        if kind == "dict-overlap":
            return False  # a group in two splits is a leak: never trained on
        want = expected(a, b)
        return (want is not None and len(want["train"]) >= g.min_train
                and len(want["val"]) >= g.min_val)

    def check_split(a, b, metrics):
        want = expected(a, b)
        for k in ("train", "val", "test"):
            assert g.G.edges[a, b]["split"][f"n_{k}"] == len(want[k]), (k, metrics)
        assert metrics["n_train"] == len(want["train"])
        assert metrics.get("n_val", 0) == len(want["val"])

    if via_add:
        new, link = NODE_NAMES[nnodes - 1], NODE_NAMES[edges[0][1] % (nnodes - 1)]
        g.add_node(new, caches[nnodes - 1])
        must_train = trainable(new, link)
        g.remove_node(new)
        ok, rep = attempt(g.add_modality, new, caches[nnodes - 1], link_to=link,
                          translator="linear")
        assert ok == must_train, (must_train, rep)
        if ok:
            for (a, b), met in rep.items():
                made.add((a, b))
                check_split(a, b, met)
        else:
            assert new not in g, "a failed add_modality left its node in the graph"
            g.add_node(new, caches[nnodes - 1])
    for ia, ib, tkind, directions in edges:
        a, b = NODE_NAMES[ia], NODE_NAMES[ib]
        before = set(g.edges)
        ok, rep = attempt(g.connect, a, b, translator=tkind, directions=directions)
        if tkind == "identity" and dims[ia] != dims[ib]:
            assert not ok
        elif a != b:  # a self-loop may be refused or trained
            assert ok == trainable(a, b), rep
        if not ok:
            assert set(g.edges) == before, "a failed connect changed the graph"
            continue
        for (u, v), met in rep.items():
            made.add((u, v))
            check_split(u, v, met)
    assert set(g.edges) == made
    event(f"edges trained: {min(len(made), 3)}+")
    x = {n: rng.standard_normal((3, g.node(n)["dim"])).astype(np.float32) for n in g.nodes}
    routes = {}
    for src, dst in itertools.permutations(g.nodes, 2):
        ok, r = attempt(g.route, src, dst)
        best = _all_simple_paths_cost(g.G, src, dst)
        if best is None:
            assert not ok and isinstance(r, bridge.NoRoute)
            continue
        assert ok, r
        assert r.nodes[0] == src and r.nodes[-1] == dst
        assert r.cost == pytest.approx(sum(g.edge(u, v)["cost"] for u, v in r.edges))
        assert r.cost == pytest.approx(best), "the planner missed a cheaper route"
        y = g.translate(x[src], r)
        want = x[src]
        for u, v in r.edges:
            want = g.translator(u, v).transform(want)
        assert y.shape == (3, g.node(dst)["dim"]) and np.isfinite(y).all()
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
        routes[src, dst] = (r, y)
        check_translate_options(g, x[src], src, dst, tr_opts)
    with tmpdir() as tmp:
        ok, p = attempt(g.save, Path(tmp) / "g")
        assert ok, p
        g2 = load_graph(Path(tmp) / "g")
        assert sorted(g2.nodes) == sorted(g.nodes) and sorted(g2.edges) == sorted(g.edges)
        assert g2.splits == g.splits and g2.seed == g.seed
        assert tuple(g2.fractions) == tuple(g.fractions)
        for (src, dst), (r, y) in routes.items():
            r2 = g2.route(src, dst)
            assert r2.cost == pytest.approx(r.cost)
            np.testing.assert_allclose(g2.translate(x[src], r.nodes), y, rtol=1e-5, atol=1e-5)
        for n in g.nodes:
            np.testing.assert_array_equal(np.asarray(g2.cache(n).emb, np.float32),
                                          np.asarray(g.cache(n).emb, np.float32))
            assert list(g2.cache(n).ids) == list(g.cache(n).ids)


@settings(max_examples=examples(60), **SETTINGS)
@given(st.one_of(st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True),
                           st.floats(allow_nan=True)),
                 st.sampled_from([(0.8, 0.1), (1, 1, 1), ("a", 0, 0), None, 5])),
       st.one_of(st.integers(-3, 3), st.sampled_from([float("nan"), "x", None, 2.5])))
def test_graph_settings(fractions, seed):
    from bridge.graph import ModalityGraph

    ids = [f"i{k}" for k in range(30)]
    ok, g = attempt(ModalityGraph, fractions=fractions, seed=seed)
    if ok:
        g.add_node("a@x", _cache(ids, 3))
        g.add_node("b@y", _cache(ids, 2, seed=1))
        ok, rep = attempt(g.connect, "a@x", "b@y", translator="linear")
    try:
        fr = np.asarray(fractions, dtype=float)
        good = fr.shape == (3,) and np.isfinite(fr).all() and (fr >= 0).all() \
            and abs(fr.sum() - 1) < 1e-6
    except (TypeError, ValueError):
        good = False
    good = good and isinstance(seed, int)
    if not good:
        assert not ok, f"fractions={fractions!r} seed={seed!r} accepted"


# ---------------------------------------------------------------------------
# load of mutated files

_TEMPLATE: dict = {}


def _template() -> Path:
    """A small saved graph (2 nodes with stored caches, 2 edges) and bait files outside it."""
    if "root" not in _TEMPLATE:
        from bridge.graph import ModalityGraph

        root = Path(tempfile.mkdtemp(prefix="bridge-prop-template-"))
        rng = np.random.default_rng(0)
        ids = [f"i{k}" for k in range(60)]
        g = ModalityGraph(seed=0, min_val=2)
        g.add_node("text:en@a", Cache.from_arrays(rng.standard_normal((60, 3)).astype(np.float32),
                                                  ids=ids))
        g.add_node("image@b", Cache.from_arrays(rng.standard_normal((60, 2)).astype(np.float32),
                                                ids=ids))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallSampleWarning)
            g.connect("text:en@a", "image@b", translator="linear", directions="forward")
            g.connect("image@b", "text:en@a", translator="procrustes", directions="forward")
            g.add_node("audio@c", Cache.from_arrays(rng.standard_normal((60, 2)).astype(np.float32),
                                                    ids=ids))
            g.connect("image@b", "audio@c", translator="mlp", width=4, epochs=1, patience=1,
                      batch_size=16, directions="forward")
            g.connect("audio@c", "text:en@a", translator="relative", directions="forward")
        _TEMPLATE["graph"] = g
        g.save(root / "graph")
        # bait outside the graph folder: a valid cache and a valid translator
        save_cache(root / "outside" / "cache.safetensors",
                   Cache.from_arrays(np.full((60, 3), 7.0, np.float32), ids=ids))
        shutil.copytree(root / "graph" / "edges" / "000", root / "outside" / "edge")
        _TEMPLATE["root"] = root
    return _TEMPLATE["root"]


@pytest.fixture(scope="module", autouse=True)
def _cleanup_template():
    try:  # one Faiss thread: the tiny indexes here are slower with more on a busy machine
        import faiss

        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
    except ImportError:
        faiss = None
    yield
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    root = _TEMPLATE.pop("root", None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


MANIFEST_PATHS = [
    (), ("format",), ("format_version",), ("bridge_version",), ("fractions",), ("seed",),
    ("splits",), ("settings",), ("settings", "min_val"), ("settings", "seed"),
    ("settings", "fractions"), ("nodes",), ("nodes", 0), ("nodes", 0, "name"), ("nodes", 0, "dim"),
    ("nodes", 1, "dim"), ("nodes", 0, "cache"), ("nodes", 0, "cache", "stored"),
    ("nodes", 1, "cache", "stored"), ("nodes", 0, "modality"), ("edges",), ("edges", 0),
    ("edges", 0, "src"), ("edges", 0, "dst"), ("edges", 0, "dir"), ("edges", 1, "dir"),
    ("edges", 0, "metrics"), ("edges", 0, "metrics", "val_R@1"), ("edges", 0, "cost"),
    ("edges", 0, "split"), ("edges", 0, "kind"), ("edges", 2, "dir"), ("edges", 3, "src"),
    ("nodes", 2, "cache", "stored"),
]
CONFIG_PATHS = [(), ("kind",), ("params",), ("params", "alpha"), ("params", "fit_intercept"),
                ("params", "width"), ("params", "depth"), ("params", "k"), ("params", "power"),
                ("params", "layer_norm"), ("in_dim",), ("out_dim",), ("fit_report",), ("extra",),
                ("bridge_version",)]
PATHLIKE = ["../../x", "/etc/passwd", "..", ".", "", "edges", "edges/001", "edges/000",
            "caches/000.safetensors", "caches/001.safetensors", "manifest.json",
            "../outside/edge", "../outside/cache.safetensors", "OUTSIDE_ABS_EDGE",
            "OUTSIDE_ABS_CACHE", "edges/../edges/000", "caches/../../outside/cache.safetensors"]

mutation = st.one_of(
    st.tuples(st.just("manifest-set"), st.sampled_from(MANIFEST_PATHS),
              st.one_of(json_values, st.sampled_from(PATHLIKE),
                        st.sampled_from([2, 0, -1, 1.5, "1", 10**30, {"path": "OUTSIDE_ABS_CACHE"},
                                         {"stored": "../outside/cache.safetensors"},
                                         {"path": "/nonexistent/x.npy"}]))),
    st.tuples(st.just("manifest-del"), st.sampled_from(MANIFEST_PATHS[1:]), st.none()),
    st.tuples(st.just("config-set"), st.sampled_from(CONFIG_PATHS),
              st.one_of(json_values_small,
                        st.sampled_from(["linear", "procrustes", "mlp", "relative", "identity",
                                         "posthoc", 1, 2, 3, 4, -1, 4096]))),
    st.tuples(st.just("config-del"), st.sampled_from(CONFIG_PATHS[1:]), st.none()),
    st.tuples(st.sampled_from(["weights-truncate", "weights-flip", "cache-truncate",
                               "cache-flip", "manifest-bytes"]),
              st.floats(0, 1), st.integers(1, 255)),
)


def _resolve_marker(v, root: Path):
    if isinstance(v, str):
        return v.replace("OUTSIDE_ABS_EDGE", str(root / "outside" / "edge")).replace(
            "OUTSIDE_ABS_CACHE", str(root / "outside" / "cache.safetensors"))
    if isinstance(v, dict):
        return {k: _resolve_marker(x, root) for k, x in v.items()}
    if isinstance(v, list):
        return [_resolve_marker(x, root) for x in v]
    return v


def _set_path(doc, path, value, delete=False):
    """``doc`` with the value at ``path`` replaced (or deleted); None when it has no such path."""
    if not path:
        return None if delete else value
    doc = copy.deepcopy(doc)
    cur = doc
    for key in path[:-1]:
        try:
            cur = cur[key]
        except (KeyError, IndexError, TypeError):
            return doc
    try:
        if delete:
            del cur[path[-1]]
        else:
            cur[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        pass
    return doc


def _mutate_bytes(p: Path, how: str, pos: float, mask: int):
    blob = p.read_bytes()
    if how.endswith("truncate"):
        blob = blob[: int(pos * len(blob))]
    else:
        i = min(int(pos * len(blob)), len(blob) - 1)
        blob = blob[:i] + bytes([blob[i] ^ mask]) + blob[i + 1:]
    p.write_bytes(blob)


def _leaves_folder(v, root: Path) -> bool:
    if not isinstance(v, str) or not v:
        return False
    full = (root / v).resolve()
    return full != root.resolve() and root.resolve() not in full.parents


@settings(max_examples=examples(80), **SETTINGS)
@given(mutation, st.integers(0, 3))
def test_load_mutated_graph(mut, edge):
    from bridge.graph import load_graph

    tpl = _template()
    how = mut[0]
    with tmpdir() as tmp:
        root = Path(tmp)
        shutil.copytree(tpl / "graph", root / "graph")
        shutil.copytree(tpl / "outside", root / "outside")
        gdir = root / "graph"
        manifest = json.loads((gdir / "manifest.json").read_text())
        leaves = False
        if how in ("manifest-set", "manifest-del"):
            value = _resolve_marker(mut[2], root)
            new = _set_path(manifest, mut[1], value, delete=how == "manifest-del")
            (gdir / "manifest.json").write_text(json.dumps(new))
            if how == "manifest-set" and mut[1][-1:] in (("dir",), ("stored",)):
                leaves = _leaves_folder(value, gdir) or (isinstance(value, str)
                                                         and os.path.isabs(value))
            if how == "manifest-set" and mut[1][-1:] == ("cache",) and isinstance(value, dict):
                p = value.get("path") if isinstance(value.get("path"), str) else None
                s = value.get("stored") if isinstance(value.get("stored"), str) else None
                leaves = (p is not None and os.path.exists(p)) or (s is not None and (
                    _leaves_folder(s, gdir) or os.path.isabs(s)))
            if how == "manifest-set" and mut[1] == ("format_version",):
                if not (type(value) is int and value == 1):
                    leaves = True  # an unknown or future version must be refused
        elif how in ("config-set", "config-del"):
            cpath = gdir / "edges" / f"{edge:03d}" / "config.json"
            cfg = json.loads(cpath.read_text())
            cpath.write_text(json.dumps(_set_path(cfg, mut[1], mut[2], delete=how == "config-del")))
        elif how == "manifest-bytes":
            _mutate_bytes(gdir / "manifest.json", "flip", mut[1], mut[2])
        elif how.startswith("weights"):
            _mutate_bytes(gdir / "edges" / f"{edge:03d}" / "model.safetensors", how, mut[1], mut[2])
        else:
            _mutate_bytes(gdir / "caches" / "000.safetensors", how, mut[1], mut[2])
        note(f"mutation {mut!r}")
        ok, g = attempt(load_graph, gdir)
        event(f"{how}: {'loaded' if ok else 'refused'}")
        if leaves:
            assert not ok, "load followed a path outside the graph folder / an unknown version"
            return
        if not ok:
            # a damaged or malformed file is named as such
            assert isinstance(g, (CorruptFile, bridge.errors.ExternalReference)), repr(g)
            return
        # a graph that loads must work: every edge translates finitely, every cache is sane
        rng = np.random.default_rng(1)
        for u, v in g.edges:
            x = rng.standard_normal((4, g.node(u)["dim"])).astype(np.float32)
            y = g.translate(x, [u, v])
            assert y.shape == (4, g.node(v)["dim"])
            assert np.isfinite(y).all(), f"edge {u} -> {v} translates to non-finite values"
            r = g.route(u, v)
            assert math.isfinite(r.cost) and r.cost >= 0
        for n in g.nodes:
            c = g.node(n).get("cache")
            if c is not None:
                e = np.asarray(c.emb, np.float64)
                assert e.shape == (len(c.ids), g.node(n)["dim"]) and np.isfinite(e).all()
                assert not np.all(e == 7.0), "the bait cache outside the folder was read"


WALK_NODES = ["text:en@a", "image@b", "audio@c", "nope@x"]


@settings(max_examples=examples(60), **SETTINGS)
@given(st.lists(st.sampled_from(WALK_NODES), min_size=0, max_size=5),
       st.one_of(st.none(), st.lists(st.integers(-3, 65), min_size=0, max_size=8)))
@example(nodes=["text:en@a", "image@b"], rows=[])
def test_walk(nodes, rows):
    """walk: every step scored, the cycle loss equal to its brute force, or a BridgeError."""
    _template()
    g = _TEMPLATE["graph"]
    ok, rep = attempt(g.walk, nodes, rows)
    steps_ok = (len(nodes) >= 2 and all(n in g for n in nodes)
                and all(g.G.has_edge(u, v) for u, v in zip(nodes[:-1], nodes[1:])))
    if not steps_ok or (rows is not None and (not rows or max(rows) >= 60)):
        assert not ok, f"walk({nodes}, rows={rows}) accepted"
        return
    if not ok:
        assert rows is not None and min(rows) < 0, rep  # negative rows may be refused
        return
    c0 = g.cache(nodes[0])
    used = g.test_rows(nodes[0]) if rows is None else np.asarray(rows)
    assert rep["n"] == len(used) and len(rep["hops"]) == len(nodes) - 1
    x0 = c0.vectors(used)
    out = x0
    for h, (u, v) in zip(rep["hops"], zip(nodes[:-1], nodes[1:])):
        out = g.translator(u, v).transform(out)
        assert (h["src"], h["dst"]) == (u, v)
        truth = g.cache(v).vectors(g.cache(v).rows(c0.ids[used]))
        cos = np.sum(_unit64(out) * _unit64(truth), axis=1)
        assert h["cos"] == pytest.approx(float(cos.mean()), abs=1e-5)
        assert 0.0 <= h["R@1"] <= 1.0
    if nodes[0] == nodes[-1]:
        loss = 1 - np.clip(np.sum(_unit64(out) * _unit64(x0), axis=1), -1, 1)
        assert rep["loss_mean"] == pytest.approx(float(loss.mean()), abs=1e-5)
        assert 0.0 <= rep["cycle_R@1"] <= 1.0


HUGE_SIZES = [("in_dim", 10**9), ("out_dim", 10**9), ("params.width", 60_000),
              ("params.width", 10**7), ("params.depth", 10**6)]

_HUGE_SCRIPT = r"""
import json, resource, signal, sys
resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
from bridge.errors import BridgeError
from bridge.translators import load_translator

def alarm(*_):
    raise TimeoutError("over 20 s")

signal.signal(signal.SIGALRM, alarm)
out = []
for path in sys.argv[1:]:
    signal.alarm(20)
    try:
        load_translator(path)
        out.append({"outcome": "loaded"})
    except BridgeError as e:
        out.append({"outcome": "refused", "error": type(e).__name__})
    except BaseException as e:
        out.append({"outcome": "crashed", "error": f"{type(e).__name__}: {e}"[:200]})
    signal.alarm(0)
print(json.dumps(out))
"""


def test_load_translator_huge_sizes():
    """A hostile config.json that sizes a network far beyond its stored weights is refused
    (CorruptFile) without building it: loaded in a subprocess under a 6 GiB address-space
    limit, 20 s per file."""
    import subprocess
    import sys

    tpl = _template()
    with tmpdir() as tmp:
        paths = []
        for n, (field, value) in enumerate(HUGE_SIZES):
            edge = Path(tmp) / f"edge{n}"
            shutil.copytree(tpl / "graph" / "edges" / "002", edge)  # the MLP edge
            cfg = json.loads((edge / "config.json").read_text())
            assert cfg["kind"] == "mlp"
            where, keys = cfg, field.split(".")
            for k in keys[:-1]:
                where = where[k]
            where[keys[-1]] = value
            (edge / "config.json").write_text(json.dumps(cfg))
            paths.append(str(edge))
        proc = subprocess.run([sys.executable, "-c", _HUGE_SCRIPT, *paths], capture_output=True,
                              text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 0, proc.stderr[-2000:]
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        bad = {f"{f}={v}": r for (f, v), r in zip(HUGE_SIZES, res)
               if r != {"outcome": "refused", "error": "CorruptFile"}}
        assert not bad, bad
