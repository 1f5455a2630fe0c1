"""Caches larger than memory: the steps of ``benchmarks/big_cache.py`` on a small cache
(results equal to the same computation in memory), the block-by-block cache writer, shared
id columns, the hash join of ids and the resident set of validating a memory-mapped cache."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bridge import load_graph
from bridge import store
from bridge.errors import BridgeError, DimensionMismatch, InvalidEmbeddings, InvalidParameter
from bridge.retrieval import retrieval_metrics
from bridge.store import Cache, CacheWriter, join_ids, load_cache, pair_by_ids, save_cache

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import big_cache  # noqa: E402

ROWS, HELD_OUT, DIM = 50_000, 1_000, 64


# --------------------------------------------------------------------------- the benchmark


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The generated caches and the linear edge trained on them, by the benchmark's steps."""
    folder = tmp_path_factory.mktemp("big")
    args = big_cache.parser().parse_args(
        ["--rows", str(ROWS), "--held-out", str(HELD_OUT), "--dim", str(DIM), "--noise", "1.5",
         "--dir", str(folder), "--translate-rows", "12345", "--translate-scope", "all"])
    steps = {s: big_cache.run_step(s, folder, args)
             for s in ("generate", "linear", "evaluate_linear", "translate_all")}
    return folder, args, steps


def test_generated_caches_are_paired_float16_caches_with_split_ids(bench):
    folder, args, steps = bench
    x, y = load_cache(folder / "x"), load_cache(folder / "y")
    assert isinstance(x.emb, np.memmap) and x.emb.dtype == np.float16
    assert x.emb.shape == y.emb.shape == (ROWS, DIM)
    n_train = ROWS - 2 * HELD_OUT
    assert x.ids[0] == "train:0" and x.ids[n_train - 1] == f"train:{n_train - 1}"
    assert x.ids[n_train] == "val:0" and x.ids[-1] == f"test:{HELD_OUT - 1}"
    assert list(x.ids) == list(y.ids)
    # y is x @ R plus noise of the announced size
    parts = big_cache.known_map(DIM, args.seed)
    X = np.asarray(x.emb[:5000], np.float64)
    resid = np.asarray(y.emb[:5000], np.float64) - X @ parts["R"]
    sigma = big_cache.noise_sigma(big_cache.spec_of(args), parts)
    assert abs(resid.std() / sigma - 1) < 0.02
    assert steps["generate"]["results"]["reused"] is False
    again = big_cache.run_step("generate", folder, args)
    assert again["results"]["reused"] is True


def test_streamed_linear_edge_equals_the_fit_in_memory(bench):
    folder, args, steps = bench
    n_train = ROWS - 2 * HELD_OUT
    X = np.asarray(load_cache(folder / "x").emb[:n_train], np.float64)
    Y = np.asarray(load_cache(folder / "y").emb[:n_train], np.float64)
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    W = np.linalg.solve(Xc.T @ Xc + 1.0 * np.eye(DIM), Xc.T @ Yc)  # ridge, alpha 1
    b = my - mx @ W
    T = load_graph(folder / "graph-linear", allow_external=True).translator("a@x", "b@y")
    np.testing.assert_allclose(T.W_, W, rtol=0, atol=1e-5)
    np.testing.assert_allclose(T.b_, b, rtol=0, atol=1e-5)
    res = steps["linear"]["results"]
    assert res["n_train"] == n_train and res["n_val"] == res["n_test"] == HELD_OUT
    R = big_cache.known_map(DIM, args.seed)["R"]
    assert res["W_rel_error"] == pytest.approx(np.linalg.norm(W - R) / np.linalg.norm(R),
                                               rel=1e-4)
    # the error is the one least squares makes from this many noisy rows
    assert res["W_rel_error"] == pytest.approx(res["W_rel_error_expected"], rel=0.1)


def _in_memory_retrieval(folder):
    g = load_graph(folder / "graph-linear", allow_external=True)
    test = np.arange(ROWS - HELD_OUT, ROWS)
    q = g.translator("a@x", "b@y").transform(np.asarray(g.cache("a@x").emb[test], np.float32))
    gallery = np.asarray(g.cache("b@y").emb[test], np.float32)
    return q, gallery


def test_evaluation_on_the_held_out_slice_equals_retrieval_in_memory(bench):
    folder, _, steps = bench
    q, gallery = _in_memory_retrieval(folder)
    want = retrieval_metrics(q, gallery, np.arange(HELD_OUT), ks=(1, 10))
    got = steps["evaluate_linear"]["results"]
    assert got["n_queries"] == got["n_gallery"] == HELD_OUT
    assert (got["R@1"], got["R@10"]) == (want["R@1"], want["R@10"])
    assert 0.3 < got["R@1"] < 1.0  # a task that is neither trivial nor hopeless


def test_translation_of_every_row_to_disk(bench):
    folder, _, steps = bench
    g = load_graph(folder / "graph-linear", allow_external=True)
    out = np.load(folder / "y_hat.npy", mmap_mode="r")
    assert out.shape == (ROWS, DIM) and out.dtype == np.float16
    X = np.asarray(g.cache("a@x").emb, np.float32)
    want = g.translator("a@x", "b@y").transform(X)
    np.testing.assert_allclose(out.astype(np.float32), want, rtol=2e-3, atol=2e-4)
    q, gallery = _in_memory_retrieval(folder)
    res = steps["translate_all"]["results"]
    want = retrieval_metrics(np.asarray(out[ROWS - HELD_OUT:], np.float32), gallery,
                             np.arange(HELD_OUT), ks=(1, 10))
    assert (res["R@1"], res["R@10"]) == (want["R@1"], want["R@10"])
    assert res["n_queries"] == HELD_OUT
    # float16 output rounding moves at most a few ranks
    assert abs(res["R@1"] - steps["evaluate_linear"]["results"]["R@1"]) <= 5 / HELD_OUT


def test_every_step_reports_its_resident_set(bench):
    for r in bench[2].values():
        assert r["peak_abs_MB"] >= r["baseline_MB"] > 0
        assert r["peak_above_baseline_MB"] == pytest.approx(r["peak_abs_MB"] - r["baseline_MB"],
                                                            abs=0.2)
        assert r["stages"] and all(s["peak_MB"] >= s["rss_MB"] for s in r["stages"])


def test_mlp_step_trains_an_edge_on_the_memory_mapped_caches(bench):
    folder, args, _ = bench
    args = big_cache.parser().parse_args(
        ["--rows", str(ROWS), "--held-out", str(HELD_OUT), "--dim", str(DIM), "--noise", "1.5",
         "--dir", str(folder), "--epoch-rows", "4096", "--epochs", "1", "--width", "32"])
    res = big_cache.run_step("mlp", folder, args)["results"]
    assert res["n_train"] == ROWS - 2 * HELD_OUT and res["options"]["epoch_rows"] == 4096
    g = load_graph(folder / "graph-mlp", allow_external=True)
    T = g.translator("a@x", "b@y")
    assert T.kind == "mlp" and T.epoch_rows == 4096
    assert 0.3 < res["test_R@1"] <= 1.0
    # its evaluation through evaluate_route equals retrieval of the same rows in memory
    test = np.arange(ROWS - HELD_OUT, ROWS)
    q = T.transform(np.asarray(g.cache("a@x").emb[test], np.float32))
    want = retrieval_metrics(q, np.asarray(g.cache("b@y").emb[test], np.float32),
                             np.arange(HELD_OUT), ks=(1, 10))
    got = big_cache.run_step("evaluate_mlp", folder, args)["results"]
    assert (got["R@1"], got["R@10"]) == (want["R@1"], want["R@10"])


# --------------------------------------------------------------------------- CacheWriter


def test_cache_writer_round_trip(tmp_path, rng):
    x = rng.standard_normal((1000, 16)).astype(np.float32)
    ids = [f"r{i}" for i in range(1000)]
    groups = [f"g{i // 10}" for i in range(1000)]
    with CacheWriter(tmp_path / "c", rows=1000, dim=16, ids=ids, groups=groups,
                     meta={"encoder": "e"}) as w:
        for lo, hi in ((0, 1), (1, 400), (400, 1000)):
            assert w.append(x[lo:hi]) == hi
    c = load_cache(tmp_path / "c")
    assert isinstance(c.emb, np.memmap) and c.emb.dtype == np.float16
    np.testing.assert_array_equal(c.emb, x.astype(np.float16))
    assert list(c.ids) == ids and list(c.groups) == groups
    assert c.meta["encoder"] == "e" and c.meta["name"] == "c"
    # without ids, the ids are the row numbers and float32 is kept exactly
    with CacheWriter(tmp_path / "d", rows=1000, dim=16, dtype="float32") as w:
        w.append(x)
    d = load_cache(tmp_path / "d")
    assert d.emb.dtype == np.float32 and np.array_equal(d.emb, x)
    assert list(d.ids[:3]) == ["0", "1", "2"] and not (tmp_path / "d" / "ids.json").exists()


def test_cache_writer_refuses_bad_blocks_naming_rows(tmp_path, rng):
    x = rng.standard_normal((100, 8)).astype(np.float32)
    with pytest.raises(DimensionMismatch, match="expected dimension 8, got 9"):
        with CacheWriter(tmp_path / "c", rows=100, dim=8) as w:
            w.append(np.zeros((5, 9)))
    bad = x.copy()
    bad[57, 3] = np.nan
    with pytest.raises(InvalidEmbeddings, match="rows 57"):
        with CacheWriter(tmp_path / "c", rows=100, dim=8) as w:
            w.append(bad[:50])
            w.append(bad[50:])
    with pytest.raises(InvalidEmbeddings, match="float16 limit"):
        with CacheWriter(tmp_path / "c", rows=100, dim=8) as w:
            w.append(x * 1e5)
    with pytest.raises(DimensionMismatch, match="exceed the announced 100 rows"):
        with CacheWriter(tmp_path / "c", rows=100, dim=8) as w:
            w.append(x)
            w.append(x[:1])
    with pytest.raises(DimensionMismatch, match="60 rows written of the announced 100"):
        with CacheWriter(tmp_path / "c", rows=100, dim=8) as w:
            w.append(x[:60])
    assert not (tmp_path / "c").exists()  # nothing was saved by any of them
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    for kw, frag in ((dict(rows=0, dim=8), "'rows'"), (dict(rows=10, dim=True), "'dim'"),
                     (dict(rows=10, dim=8, dtype="int8"), "'dtype'"),
                     (dict(rows=10, dim=8, meta=[1]), "'meta'"),
                     (dict(rows=10, dim=8, ids=["a"]), "1 entries for 10 rows")):
        with pytest.raises((InvalidParameter, DimensionMismatch), match=frag):
            CacheWriter(tmp_path / "c", **kw)
    with pytest.raises(BridgeError, match="not open"):
        CacheWriter(tmp_path / "c", rows=100, dim=8).append(x)


def test_cache_writer_keeps_the_old_cache_when_writing_fails(tmp_path, rng):
    x = rng.standard_normal((10, 4)).astype(np.float32)
    save_cache(tmp_path / "c", Cache.from_arrays(x, meta={"encoder": "e"}))
    with pytest.raises(RuntimeError, match="boom"):
        with CacheWriter(tmp_path / "c", rows=10, dim=4, meta={"encoder": "e"}) as w:
            w.append(x[:5] + 1)
            raise RuntimeError("boom")
    np.testing.assert_array_equal(load_cache(tmp_path / "c").emb, x.astype(np.float16))
    with pytest.raises(BridgeError, match="refusing to replace"):  # another encoder
        with CacheWriter(tmp_path / "c", rows=10, dim=4, meta={"encoder": "other"}) as w:
            w.append(x)
    with CacheWriter(tmp_path / "c", rows=10, dim=4, meta={"encoder": "e"}) as w:
        w.append(x + 1)
    np.testing.assert_array_equal(load_cache(tmp_path / "c").emb, (x + 1).astype(np.float16))


# --------------------------------------------------------------------------- ids


def _brute_join(a, b):
    return [(i, j) for i in range(len(a)) for j in range(len(b)) if a[i] == b[j]]


@pytest.mark.parametrize("case", ["distinct", "same", "same-with-duplicates", "many-to-many"])
def test_join_ids_equals_the_brute_force_join_in_order(case, rng):
    pool = [f"id{k}" for k in range(30)] + ["", "a\x00", "é"]
    if case == "distinct":
        a = list(rng.permutation(pool))[:20]
        b = list(rng.permutation(pool))[:25]
    elif case == "same":
        a = b = list(rng.permutation(pool))
    elif case == "same-with-duplicates":
        a = b = [pool[k] for k in rng.integers(0, 8, 40)]
    else:
        a = [pool[k] for k in rng.integers(0, 12, 40)]
        b = [pool[k] for k in rng.integers(0, 12, 30)]
    A, B = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    ar, br = join_ids(A, B if case != "same" else A)
    assert ar.dtype == br.dtype == np.int64
    assert list(zip(ar.tolist(), br.tolist())) == _brute_join(a, b)


def test_join_ids_confirms_hash_matches_by_the_strings(monkeypatch):
    monkeypatch.setattr(store, "_hashes", lambda ids: np.zeros(len(ids), np.int64))
    a = np.asarray(["x", "y", "z", "y"], dtype=object)
    b = np.asarray(["y", "w", "x", "y"], dtype=object)
    ar, br = join_ids(a, b)
    assert list(zip(ar.tolist(), br.tolist())) == _brute_join(list(a), list(b))
    ar, br = join_ids(a, a.copy())  # equal columns whose hashes all collide
    assert list(zip(ar.tolist(), br.tolist())) == _brute_join(list(a), list(a))


def test_paired_caches_share_their_id_strings(tmp_path, rng):
    ids = [f"train:{i}" for i in range(500)]
    for name in ("a", "b"):
        save_cache(tmp_path / name, Cache.from_arrays(rng.standard_normal((500, 4)), ids=ids))
    save_cache(tmp_path / "c", Cache.from_arrays(rng.standard_normal((500, 4)),
                                                 ids=ids[::-1]))
    a, b, c = (load_cache(tmp_path / n) for n in "abc")
    assert a.ids is not b.ids and a.ids.flags.writeable
    assert all(u is v for u, v in zip(a.ids, b.ids))  # one string per id for both caches
    assert not any(u is v for u, v in zip(a.ids[:-1], c.ids[::-1][:-1]))
    a.ids[0] = "changed"  # a cache's ids are its own
    assert b.ids[0] == "train:0" and load_cache(tmp_path / "a").ids[0] == "train:0"
    P = pair_by_ids(b, load_cache(tmp_path / "a"))
    np.testing.assert_array_equal(P.a_rows, np.arange(500))
    np.testing.assert_array_equal(P.b_rows, np.arange(500))
    assert list(P.groups) == ids


_RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    from bridge import store
    from bridge.store import load_cache

    store.CHECK_CHUNK_ROWS = 8192  # validated 4 MB at a time

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    c = load_cache(sys.argv[1])
    print(json.dumps({"peak": status("VmHWM") - base, "bytes": c.emb.nbytes}))
""")


def test_loading_a_memory_mapped_cache_keeps_its_pages_out_of_the_resident_set(tmp_path):
    n, d = 400_000, 256  # 205 MB of float16
    with CacheWriter(tmp_path / "c", rows=n, dim=d) as w:
        for lo in range(0, n, 100_000):
            w.append(np.full((100_000, d), 0.5, np.float32))
    res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / "c")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # every row is read to validate it, one block at a time; the ids (row numbers) and one
    # block are resident, not the file
    assert out["peak"] < out["bytes"] / 4, out


def test_translation_of_the_held_out_slice_only(bench):
    folder, args, steps = bench
    args = big_cache.parser().parse_args(
        ["--rows", str(ROWS), "--held-out", str(HELD_OUT), "--dim", str(DIM), "--noise", "1.5",
         "--dir", str(folder / "held-out"), "--translate-scope", "held-out"])
    (folder / "held-out").mkdir(exist_ok=True)
    for name in ("x", "y", "graph-linear"):  # the same caches and edge
        (folder / "held-out" / name).symlink_to(folder / name)
    res = big_cache.run_step("translate_all", folder / "held-out", args)["results"]
    out = np.load(folder / "held-out" / "y_hat.npy", mmap_mode="r")
    assert out.shape == (2 * HELD_OUT, DIM) and res["rows_translated"] == 2 * HELD_OUT
    full = np.load(folder / "y_hat.npy", mmap_mode="r")  # every row, by the fixture
    # the same rows (block boundaries differ, so float16 rounding may differ in the last bit)
    np.testing.assert_allclose(out.astype(np.float32), full[ROWS - 2 * HELD_OUT:], rtol=2e-3,
                               atol=1e-6)
    for k in ("R@1", "R@10"):
        assert abs(res[k] - steps["translate_all"]["results"][k]) <= 2 / HELD_OUT
