"""device= for exact search and exact retrieval evaluation: the torch path (run here on
the CPU) gives exactly the ranks and rows of the numpy/Faiss path, CUDA asked for where
there is none is a clear error, and the gallery-block cache changes nothing."""

import numpy as np
import pytest
import torch

import bridge.retrieval as R
from bridge.errors import InvalidParameter
from bridge.retrieval import (
    build_index,
    exact_search,
    ranks_of_relevant,
    resolve_device,
    retrieval_metrics,
    search,
)

HAS_CUDA = torch.cuda.is_available()


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def tied():
    """Unnormalised gallery with duplicated rows (exact ties) and queries that are gallery
    rows or near them; relevance pointing at one copy, so the other copies tie against."""
    r = np.random.default_rng(11)
    base = r.standard_normal((700, 20)).astype(np.float32) * r.uniform(0.5, 3, (700, 1))
    G = np.concatenate([base, base[:300], 2.0 * base[:100]]).astype(np.float32)
    G = np.ascontiguousarray(G[r.permutation(G.shape[0])])
    picks = r.choice(G.shape[0], 2500, replace=True)
    Q = G[picks] + np.where(np.arange(2500)[:, None] < 800, 0.0,
                            0.4 * r.standard_normal((2500, 20))).astype(np.float32)
    return Q.astype(np.float32), G, picks


def _same_ranks(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_torch_cpu_ranks_equal_numpy_ranks_with_ties(tied):
    Q, G, picks = tied
    # several query blocks and gallery blocks: the kept gallery blocks are reused
    ref = ranks_of_relevant(Q, G, picks, block=512, gallery_block=333)
    got = ranks_of_relevant(Q, G, picks, block=512, gallery_block=333, device="cpu")
    assert _same_ranks(ref, got)
    first = np.array([r[0] for r in ref])
    assert (first[:800] > 1).any()  # the duplicates tie against their copy: ties are tested
    assert retrieval_metrics(Q, G, picks, device="cpu") == retrieval_metrics(Q, G, picks)


def test_torch_cpu_ranks_equal_numpy_for_many_right_rows(tied):
    Q, G, _ = tied
    labels = np.arange(G.shape[0]) % 7  # class-level relevance: the full-score-row path
    rel = [np.flatnonzero(labels == c) for c in range(7)]
    ref = ranks_of_relevant(Q[:7], G, rel)
    got = ranks_of_relevant(Q[:7], G, rel, device="cpu")
    assert _same_ranks(ref, got)


def test_ranks_do_not_depend_on_the_gallery_cache(tied, monkeypatch):
    Q, G, picks = tied
    kept = ranks_of_relevant(Q, G, picks, block=256)
    monkeypatch.setattr(R, "GALLERY_CACHE_BYTES", 0)
    assert _same_ranks(kept, ranks_of_relevant(Q, G, picks, block=256))
    monkeypatch.setattr(R, "GALLERY_CACHE_BYTES", 5 * 20 * 4 * 333)  # part of it kept
    assert _same_ranks(kept, ranks_of_relevant(Q, G, picks, block=256, gallery_block=333))


def test_streamed_normalisation_never_writes_into_the_callers_rows(tied, tmp_path):
    Q, G, picks = tied
    Qc, Gc = Q.copy(), G.copy()
    a = retrieval_metrics(Q, G, picks, block=300)
    b = retrieval_metrics(Q, G, picks, device="cpu")
    assert np.array_equal(Q, Qc) and np.array_equal(G, Gc)  # raw rows untouched
    assert a == b
    # a float16 memory map and a float64 copy rank the same as the float32 array
    path = tmp_path / "g.npy"
    np.save(path, G.astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    g16 = np.asarray(mm, dtype=np.float32)
    assert _same_ranks(ranks_of_relevant(Q, mm, picks), ranks_of_relevant(Q, g16, picks))


def test_l2_normalize_copy_false_scales_in_place_with_the_same_bits():
    r = np.random.default_rng(0)
    x = r.standard_normal((50, 9)).astype(np.float32)
    want = R.l2_normalize(x)
    y = x.copy()
    out = R.l2_normalize(y, copy=False)
    assert out is y and np.array_equal(out, want)
    z = x.astype(np.float64)  # another dtype: converted once, the input left alone
    out = R.l2_normalize(z, copy=False)
    assert out is not z and np.array_equal(out, want) and z.dtype == np.float64


def test_exact_search_on_torch_equals_flat_search(tied):
    Q, G, _ = tied
    for k in (1, 4, 10):
        ref = search(Q, G, k=k)
        got = exact_search(Q, G, k, device="cpu", block=700)
        assert np.array_equal(got[1], ref[1]), k
        assert np.array_equal(got[0], ref[0]), k
    assert np.array_equal(search(Q, G, k=5, device="cpu")[1], ref[1][:, :5])


def test_cuda_without_cuda_is_a_clear_error(tied):
    if HAS_CUDA:
        pytest.skip("this machine has CUDA")
    Q, G, picks = tied
    for call in (lambda: resolve_device("cuda"),
                 lambda: retrieval_metrics(Q, G, picks, device="cuda"),
                 lambda: ranks_of_relevant(Q, G, picks, device="cuda:0"),
                 lambda: search(Q, G, k=3, device="cuda"),
                 lambda: exact_search(Q, G, 3, device="cuda"),
                 lambda: build_index(G, "ivf", device="cuda")):
        with pytest.raises(InvalidParameter, match="device 'cuda(:0)?' was asked for, but "
                                                   "torch .* sees no CUDA device"):
            call()
    # 'auto' falls back to the CPU path
    assert resolve_device("auto") is None
    assert retrieval_metrics(Q, G, picks, device="auto") == retrieval_metrics(Q, G, picks)


def test_bad_device_names_are_refused():
    for bad in ("gpu", "tpu:0", 3.5):
        with pytest.raises(InvalidParameter, match="device"):
            resolve_device(bad)
    assert resolve_device(None) is None
    assert resolve_device(" cpu ") == torch.device("cpu")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_ranks_and_search_equal_the_cpu(tied):
    Q, G, picks = tied
    assert _same_ranks(ranks_of_relevant(Q, G, picks, device="cuda"),
                       ranks_of_relevant(Q, G, picks))
    ref = search(Q, G, k=6)
    got = search(Q, G, k=6, device="cuda")
    assert np.array_equal(got[1], ref[1]) and np.array_equal(got[0], ref[0])
    if not R.faiss_has_gpu():
        with pytest.raises(InvalidParameter, match="needs Faiss with GPU support"):
            build_index(G, "ivf", device="cuda")
    with pytest.raises(InvalidParameter, match="no GPU HNSW"):
        build_index(G, "hnsw", device="cuda")
