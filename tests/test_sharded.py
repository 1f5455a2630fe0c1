"""Sharded search (bridge.sharded): the merge of per-shard top-k lists equals one index,
in one process and across torch.distributed (gloo) processes; the tie order of search."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bridge.errors import BridgeError, DimensionMismatch, InvalidParameter
from bridge.retrieval import build_index, index_search, order_hits, search
from bridge.sharded import build_sharded, merge_topk, shard_bounds

ROOT = Path(__file__).resolve().parents[1]


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def dup_problem():
    """A gallery of 3 copies of 400 rows (plus 150 more copies), shuffled, and queries
    that are gallery rows themselves (exact ties at the top) or near them."""
    r = np.random.default_rng(7)
    base = _unit(r.standard_normal((400, 24)))
    G = np.concatenate([base, base, base, base[:150]])
    G = np.ascontiguousarray(G[r.permutation(G.shape[0])])
    Q = np.concatenate([base[:40], _unit(base[40:100] + 0.2 * r.standard_normal((60, 24)))])
    return Q.astype(np.float32), G


def _brute(Q, G, k):
    """Reference top-k: exact float64 scores of the float32 rows, rounded to float32,
    ordered by score then lower row."""
    q, g = _unit(Q).astype(np.float64), _unit(G).astype(np.float64)
    S = (q @ g.T).astype(np.float32)
    rows = np.broadcast_to(np.arange(G.shape[0]), S.shape)
    D, I = order_hits(S, np.ascontiguousarray(rows))
    return D[:, :k], I[:, :k]


def test_search_orders_ties_by_lower_row_and_keeps_lower_rows_at_the_cut(dup_problem):
    Q, G = dup_problem
    for k in (1, 2, 5, 11):
        D, I = search(Q, G, k=k)
        _, I_ref = _brute(Q, G, k)
        assert np.array_equal(I, I_ref), k
        # queries equal to a row with 3+ copies: the copies come first, lowest row first
        top = I[:40, :min(k, 3)]
        assert np.all(np.diff(top, axis=1) > 0)


@pytest.mark.parametrize("n_shards", [1, 2, 3, 7])
def test_sharded_flat_equals_one_flat_index_exactly(dup_problem, n_shards):
    Q, G = dup_problem
    single = search(Q, build_index(G, "flat"), k=12)
    sharded = build_sharded(G, n_shards, "flat").search(Q, 12)
    assert np.array_equal(sharded[1], single[1])
    assert np.array_equal(sharded[0], single[0])  # scores bit for bit, ties included
    assert np.array_equal(single[1], _brute(Q, G, 12)[1])


def test_sharded_flat_from_a_memory_map_with_given_bounds(dup_problem, tmp_path):
    Q, G = dup_problem
    path = tmp_path / "g.npy"
    np.save(path, G.astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    bounds = [0, 5, 600, 601, G.shape[0]]  # uneven, one shard of a single row
    ix = build_sharded(mm, bounds=bounds)
    assert ix.n_shards == 4 and ix.ntotal == G.shape[0] and ix.d == 24
    want = search(Q, build_index(np.asarray(mm, dtype=np.float32), "flat"), k=9)
    got = ix.search(Q, 9)
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])


def test_sharded_approximate_recall_within_a_hundredth_of_one_index():
    r = np.random.default_rng(3)
    G = _unit(r.standard_normal((6000, 32)) @ np.diag(np.linspace(2.0, 0.2, 32)))
    Q = _unit(G[r.choice(6000, 300, replace=False)] + 0.3 * r.standard_normal((300, 32)))
    _, truth = search(Q, G, k=10)

    def recall(rows):
        return np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(rows, truth)])

    opts = {"hnsw": dict(hnsw_m=16, ef_construction=80, ef_search=64),
            "ivf": dict(nlist=64, nprobe=12)}
    for kind, o in opts.items():
        one = recall(search(Q, build_index(G, kind, **o), k=10)[1])
        sh_opts = dict(o, nlist=16) if kind == "ivf" else o  # same cells in all
        sh = build_sharded(G, 4, kind, **sh_opts)
        four = recall(sh.search(Q, 10)[1])
        assert one > 0.8, (kind, one)  # the problem is not trivial for the index
        assert abs(four - one) <= 0.01 or four > one, (kind, one, four)


def test_merge_topk_orders_by_score_then_row_and_puts_missing_last():
    s1 = np.array([[0.9, 0.5, -np.inf]], np.float32)
    r1 = np.array([[7, 3, -1]])
    s2 = np.array([[0.9, 0.5]], np.float32)
    r2 = np.array([[2, 9]])
    D, I = merge_topk([s1, s2], [r1, r2], 4)
    assert I.tolist() == [[2, 7, 3, 9]]
    assert D[0].tolist() == pytest.approx([0.9, 0.9, 0.5, 0.5])
    D, I = merge_topk([s1], [r1], 5)
    assert I.tolist() == [[7, 3, -1]]


def test_bad_input_is_refused_with_clear_errors(dup_problem):
    Q, G = dup_problem
    with pytest.raises(InvalidParameter, match="n_shards"):
        build_sharded(G, 0)
    with pytest.raises(InvalidParameter, match=r"at most the number of gallery rows \(3\)"):
        build_sharded(G[:3], 4)
    with pytest.raises(InvalidParameter, match="bounds"):
        build_sharded(G, bounds=[0, 10, 10, G.shape[0]])
    with pytest.raises(InvalidParameter, match="bounds"):
        build_sharded(G, bounds=[0, 10])
    with pytest.raises(InvalidParameter, match="exactly one of n_shards"):
        build_sharded(G, 2, bounds=[0, 10, G.shape[0]])
    with pytest.raises(InvalidParameter, match="unknown index option 'efs'"):
        build_sharded(G, 2, "hnsw", efs=3)
    ix = build_sharded(G, 3)
    with pytest.raises(DimensionMismatch, match="dimension 20 but the sharded index holds "
                                                "dimension 24"):
        ix.search(Q[:, :20], 5)
    with pytest.raises(InvalidParameter, match="ef_search applies to hnsw"):
        ix.set_search(ef_search=10)
    with pytest.raises(BridgeError, match="'k'"):
        ix.search(Q, 0)
    with pytest.raises(InvalidParameter, match="distributed_search needs an initialised"):
        from bridge.sharded import distributed_search

        distributed_search(Q, G)
    assert shard_bounds(10, 3).tolist() == [0, 4, 7, 10]


WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    import torch.distributed as dist
    from bridge.sharded import distributed_search, shard_bounds

    rank, world, init, out, data = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                    sys.argv[4], np.load(sys.argv[5]))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    Q, G = data["Q"], data["G"]
    b = shard_bounds(G.shape[0], world)
    mine = G[b[rank]:b[rank + 1]]
    res = {}
    for kind, opts in (("flat", {}), ("hnsw", {"hnsw_m": 8, "ef_construction": 40})):
        s, r = distributed_search(Q, mine, 7, kind, **opts)
        res[kind + "_scores"], res[kind + "_rows"] = s, r
    only0 = distributed_search(Q, mine, 7, dst=1)
    assert (only0 is None) == (rank != 1)
    np.savez(out, **res)
    dist.destroy_process_group()
""")


def test_two_gloo_processes_give_the_ids_of_one_process(dup_problem, tmp_path):
    import faiss

    Q, G = dup_problem
    data = tmp_path / "data.npz"
    np.savez(data, Q=Q, G=G)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    init = f"file://{tmp_path / 'rendezvous'}"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")  # one thread: the HNSW graphs are built deterministically
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", init,
                               str(tmp_path / f"out{r}.npz"), str(data)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-3000:]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        refs = {"flat": build_sharded(G, 2, "flat").search(Q, 7),
                "hnsw": build_sharded(G, 2, "hnsw", hnsw_m=8, ef_construction=40).search(Q, 7)}
    finally:
        faiss.omp_set_num_threads(threads)
    for r in range(2):
        got = np.load(tmp_path / f"out{r}.npz")
        for kind, ref in refs.items():
            assert np.array_equal(got[kind + "_rows"], ref[1]), (r, kind)
            assert np.array_equal(got[kind + "_scores"], ref[0]), (r, kind)
    assert np.array_equal(refs["flat"][1], search(Q, G, k=7)[1])


def test_index_search_widens_until_a_tie_at_the_cut_is_resolved():
    # 10 identical rows cut by k: Faiss's heap evicts the lowest of them when the three
    # better rows arrive later, so it returns rows 3, 4 (and 5); the lowest are 0 and 1
    r = np.random.default_rng(0)
    x = _unit(r.standard_normal((1, 8)))
    G = _unit(r.standard_normal((60, 8)))
    G[0:10] = _unit(x + 0.2 * r.standard_normal((1, 8)))
    G[20:23] = x
    ix = build_index(G, "ivf", nlist=1, normalized=True)
    assert ix.search(x, 6)[1].tolist() == [[22, 21, 20, 5, 4, 3]]  # Faiss's own order
    D, I = index_search(ix, x, 5)
    assert I.tolist() == [[20, 21, 22, 0, 1]]
    assert D[0, 3] == D[0, 4] < D[0, 0]
    assert search(x, G, k=5)[1].tolist() == [[20, 21, 22, 0, 1]]  # flat: the same


def test_sharded_flat_scores_do_not_depend_on_blas_blocking():
    # wide rows and many queries: Faiss's blocked float32 products round a pair
    # differently depending on where its row sits; the exact re-scoring removes that
    r = np.random.default_rng(5)
    G = _unit(r.standard_normal((4000, 384)))
    Q = _unit(r.standard_normal((500, 384)))
    single = search(Q, G, k=10)
    for n_shards in (2, 5):
        sharded = build_sharded(G, n_shards).search(Q, 10)
        assert np.array_equal(sharded[1], single[1])
        assert np.array_equal(sharded[0], single[0])
    assert np.array_equal(single[1], _brute(Q, G, 10)[1])
