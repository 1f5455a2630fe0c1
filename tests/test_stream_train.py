"""MLP edges trained from memory-mapped or lazy rows, streamed block by block."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

import bridge
from bridge.chunks import RowView
from bridge.errors import InvalidEmbeddings, InvalidParameter
from bridge.store import Cache, load_cache, save_cache
from bridge.training import ChunkedRows, MemoryRows, chunk_plan, cut_batches
from bridge.translators import MLPTranslator, load_translator
from bridge.translators.functional import MOMENT_BLOCK

SMALL = dict(width=24, depth=2, dropout=0.1, epochs=3, batch_size=32, patience=5, seed=2)


def _pairs(n=600, dx=12, dy=8, seed=0):
    r = np.random.default_rng(seed)
    X = r.standard_normal((n, dx)).astype(np.float16)
    Y = (X.astype(np.float32) @ r.standard_normal((dx, dy)) / 3
         + 0.1 * r.standard_normal((n, dy))).astype(np.float16)
    return X, Y


def _memmap(path, a):
    m = np.lib.format.open_memmap(path, mode="w+", dtype=a.dtype, shape=a.shape)
    m[:] = a
    m.flush()
    del m
    return np.load(path, mmap_mode="r")


def _weights(T):
    return {k: v.copy() for k, v in T._get_state().items()}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("view", ["memmap", "rowview"])
@pytest.mark.parametrize("extra", [{}, {"epoch_rows": 150},
                                   {"init": None, "loss": "infonce", "epoch_rows": 97}])
def test_chunked_equals_in_memory_when_one_block_holds_every_row(tmp_path, view, extra):
    X, Y = _pairs()
    mx, my = _memmap(tmp_path / "x.npy", X), _memmap(tmp_path / "y.npy", Y)
    rows = np.arange(500)
    val = np.arange(500, 600)
    labels = rows // 2  # two rows per target: the multi-positive loss path
    if view == "memmap":
        lazy_x, lazy_y, dense_x, dense_y, lab = mx, my, X[:], Y[:], np.arange(600)
        rows = np.arange(600)
    else:
        lazy_x, lazy_y = RowView(mx, rows), RowView(my, rows)
        dense_x, dense_y, lab = X[rows], Y[rows], labels
    kw = {**SMALL, **extra}
    a = MLPTranslator(**kw).fit(dense_x, dense_y, X[val], Y[val], labels=lab)
    b = MLPTranslator(**kw).fit(lazy_x, lazy_y, X[val], Y[val], labels=lab)
    _same(_weights(a), _weights(b))
    assert a.fit_report_["train_loss"] == b.fit_report_["train_loss"]
    assert a.fit_report_["best_epoch"] == b.fit_report_["best_epoch"]


def test_fit_pair_on_memory_maps_equals_in_memory(tmp_path):
    X, Y = _pairs(n=400)
    mx, my = _memmap(tmp_path / "x.npy", X), _memmap(tmp_path / "y.npy", Y)
    kw = {**SMALL, "epochs": 2}
    f1, b1 = MLPTranslator(**kw).fit_pair(X[:], Y[:], cycle_weight=0.3)
    f2, b2 = MLPTranslator(**kw).fit_pair(mx, my, cycle_weight=0.3)
    _same(_weights(f1), _weights(f2))
    _same(_weights(b1), _weights(b2))


def test_connect_on_memory_mapped_caches_equals_in_memory_caches(tmp_path):
    X, Y = _pairs(n=500)
    ids = [f"s{i}" for i in range(500)]
    save_cache(tmp_path / "x", Cache.from_arrays(X, ids))
    save_cache(tmp_path / "y", Cache.from_arrays(Y, ids))
    out = []
    for mmap in (False, True):  # rows copied into memory, then rows streamed from the map
        g = bridge.ModalityGraph()
        g.add_node("a", load_cache(tmp_path / "x", mmap=mmap))
        g.add_node("b", load_cache(tmp_path / "y", mmap=mmap))
        assert isinstance(g.cache("a").emb, np.memmap) == mmap
        g.connect("a", "b", translator="mlp", directions="forward", **{**SMALL, "init": None})
        T = g.G.edges["a", "b"]["translator"]
        assert T.fit_report_["best_epoch"] > 0
        out.append((_weights(T), T.fit_report_["train_loss"]))
    _same(out[0][0], out[1][0])
    assert out[0][1] == out[1][1]


def test_the_plan_visits_every_row_once_in_contiguous_blocks():
    n, chunk, batch = 1000, 128, 48
    gen = torch.Generator().manual_seed(5)
    plan = list(chunk_plan(n, chunk, gen))
    assert sorted(lo for lo, _, _ in plan) == list(range(0, n, chunk))
    assert [lo for lo, _, _ in plan] != sorted(lo for lo, _, _ in plan)  # a shuffled order
    for lo, hi, order in plan:
        assert hi - lo == min(chunk, n - lo)
        assert sorted(order.tolist()) == list(range(hi - lo))
    gen = torch.Generator().manual_seed(5)
    batches = list(cut_batches(chunk_plan(n, chunk, gen), batch))
    sizes = [s for _, s in batches]
    assert sizes[:-1] == [batch] * (len(sizes) - 1) and sizes[-1] == n - batch * (len(sizes) - 1)
    seen = np.concatenate([lo + off.numpy() for segs, _ in batches for lo, off in segs])
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    # rows are in plan order: block after block, each block's rows in its drawn order
    expect = np.concatenate([lo + order.numpy() for lo, _, order in plan])
    np.testing.assert_array_equal(seen, expect)
    # a batch that spans the end of one block takes the rest from the next one
    assert any(len(segs) == 2 for segs, _ in batches)


@pytest.mark.parametrize("source", ["memory", "chunked"])
def test_epoch_rows_bounds_the_rows_drawn_per_epoch(source):
    X, Y = _pairs(n=1000)
    dev = torch.device("cpu")
    rows = (MemoryRows(X, Y, None, dev) if source == "memory"
            else ChunkedRows(RowView(X), RowView(Y), None, dev, chunk_rows=128))
    gen = torch.Generator().manual_seed(0)
    first = [b[0] for b, _ in rows.epoch(gen, 64, epoch_rows=300)]
    assert sum(x.shape[0] for x in first) == 300
    second = [b[0] for b, _ in rows.epoch(gen, 64, epoch_rows=300)]
    assert not torch.equal(torch.cat(first), torch.cat(second))  # a fresh draw each epoch
    assert sum(s for _, s in rows.epoch(gen, 64, epoch_rows=5000)) == 1000  # at most n


class _Spy(RowView):
    """A row view that records how many rows each read takes."""

    def __init__(self, array):
        super().__init__(array)
        self.reads = []

    def __getitem__(self, key):
        out = super().__getitem__(key)
        self.reads.append(out.shape[0])
        return out


def test_a_memmap_larger_than_a_block_trains_a_block_at_a_time(tmp_path):
    n, d, chunk = 200_000, 64, 8192
    r = np.random.default_rng(3)
    for name in ("x", "y"):
        m = np.lib.format.open_memmap(tmp_path / f"{name}.npy", mode="w+", dtype=np.float16,
                                      shape=(n, d))
        for lo in range(0, n, 50_000):
            m[lo:lo + 50_000] = r.standard_normal((min(50_000, n - lo), d))
        m.flush()
        del m

    def fit(**kw):
        X, Y = (_Spy(np.load(tmp_path / f"{k}.npy", mmap_mode="r")) for k in ("x", "y"))
        tracemalloc.start()
        T = MLPTranslator(width=32, epochs=2, batch_size=256, epoch_rows=20_000,
                          chunk_rows=chunk, patience=3, **kw).fit(X, Y)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert T.fit_report_["epochs_run"] == 2 and np.isfinite(T.fit_report_["train_loss"]).all()
        return X, Y, peak

    # the closed-form start reads every row once, in blocks; then 2 epochs of 20k rows
    X, Y, _ = fit()
    assert max(X.reads) <= max(chunk, MOMENT_BLOCK) and max(Y.reads) <= max(chunk, MOMENT_BLOCK)
    assert n <= sum(X.reads) < n + 2 * (20_000 + chunk)
    # the training loop alone holds about a block per side (float16 read, float32 copy)
    X, Y, peak = fit(init=None)
    assert max(X.reads) <= chunk and sum(Y.reads) < 2 * (20_000 + chunk)
    whole = n * d * 4  # one side as float32
    assert peak < whole / 4, f"peak traced memory {peak} bytes vs {whole} for one side"


@pytest.mark.parametrize("side", ["X", "Y"])
def test_a_non_finite_row_is_named_when_its_block_is_read(tmp_path, side):
    X, Y = _pairs(n=900)
    (X if side == "X" else Y)[777, 3] = np.nan
    mx, my = _memmap(tmp_path / "x.npy", X), _memmap(tmp_path / "y.npy", Y)
    with pytest.raises(InvalidEmbeddings, match=rf"^{side}: 1 row\(s\) hold NaN or inf values "
                                                r"\(rows 777\)"):
        MLPTranslator(**{**SMALL, "init": None, "chunk_rows": 128}).fit(mx, my)
    with pytest.raises(InvalidEmbeddings, match=r"rows 777\)"):  # the same in memory
        MLPTranslator(**{**SMALL, "init": None}).fit(X, Y)


@pytest.mark.parametrize("bad", [{"epoch_rows": 0}, {"epoch_rows": 2.5}, {"epoch_rows": "all"},
                                 {"chunk_rows": 0}, {"chunk_rows": None}])
def test_bad_streaming_parameters_are_refused_by_name(bad):
    X, Y = _pairs(n=100)
    (name, value), = bad.items()
    with pytest.raises(InvalidParameter, match=name):
        MLPTranslator(**bad).fit(X, Y)
    with pytest.raises(InvalidParameter, match=name):
        bridge.translators.make_translator("mlp", **bad)


def test_streaming_parameters_are_saved_in_the_config(tmp_path):
    X, Y = _pairs(n=300)
    T = MLPTranslator(**{**SMALL, "epoch_rows": 100, "chunk_rows": 64}).fit(X, Y)
    U = load_translator(T.save(tmp_path / "edge"))
    assert U.epoch_rows == 100 and U.chunk_rows == 64
    np.testing.assert_array_equal(U.transform(X[:5].astype(np.float32)),
                                  T.transform(X[:5].astype(np.float32)))
