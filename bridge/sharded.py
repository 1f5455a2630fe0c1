"""Sharded search: a gallery split into row ranges, one Faiss index per shard, merged top-k.

A gallery too large for one index (or one machine) is cut into ``S`` shards of
contiguous rows. Each shard gets its own index of any kind :func:`bridge.retrieval.build_index`
builds (``flat``, ``hnsw``, ``ivf``, same options), built from that shard's rows only:
a memory-mapped gallery is read one shard at a time, so building never holds more than
one shard's rows besides the indexes. A search asks every shard for its top ``k``,
shifts the shard's rows to global gallery rows and merges the lists.

**Order and ties.** Results follow :func:`bridge.retrieval.order_hits`, the order of
:func:`bridge.retrieval.search` on one index: by score (best first), equal scores by
lower global row, missing results (row ``-1``) last; a tie at the ``k``-th place keeps
the lower rows (:func:`bridge.retrieval.index_search`). Each shard's list is exact in
that order, so the merge of the lists is the top ``k`` of the whole gallery in it: a
sharded flat index returns exactly the rows and scores of one flat index over the whole
gallery, duplicated rows and ties included.

Two ways to run it:

- in one process, :func:`build_sharded` returns a :class:`ShardedIndex` whose shards are
  searched in turn;
- across processes, :func:`distributed_search`: every rank of a ``torch.distributed``
  group holds one shard (its row range from :func:`shard_bounds`, or any rows with their
  global offset), searches it, and the per-rank lists are gathered and merged on every
  rank or on one. Launch with ``torchrun --nproc-per-node N script.py`` (or any
  ``init_process_group``); the ``gloo`` backend works on CPUs.
"""

from __future__ import annotations

import numpy as np

from .errors import DimensionMismatch, EmptyData, InvalidParameter
from .retrieval import build_index, check_index_options, check_k, index_search, normalize, \
    order_hits, set_search

__all__ = ["shard_bounds", "merge_topk", "ShardedIndex", "build_sharded", "distributed_search"]


def shard_bounds(n_rows: int, n_shards: int) -> np.ndarray:
    """Row boundaries of ``n_shards`` contiguous shards of ``n_rows`` rows, as equal as
    possible (the first ``n_rows % n_shards`` shards one row longer): shard ``s`` holds
    rows ``bounds[s]:bounds[s + 1]``. Every shard has at least one row."""
    from .params import check_int

    n_rows = check_int("n_rows", n_rows, low=1)
    n_shards = check_int("n_shards", n_shards, low=1)
    if n_shards > n_rows:
        raise InvalidParameter(f"parameter 'n_shards' must be at most the number of gallery "
                               f"rows ({n_rows}), got {n_shards}: every shard needs a row")
    size, extra = divmod(n_rows, n_shards)
    lengths = np.full(n_shards, size, dtype=np.int64)
    lengths[:extra] += 1
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _check_bounds(bounds, n_rows: int) -> np.ndarray:
    b = np.asarray(bounds)
    if b.ndim != 1 or b.shape[0] < 2 or not np.issubdtype(b.dtype, np.integer):
        raise InvalidParameter(f"parameter 'bounds' must be increasing integer row boundaries "
                               f"[0, ..., {n_rows}] (at least two), got {bounds!r}")
    b = b.astype(np.int64)
    if b[0] != 0 or b[-1] != n_rows or np.any(np.diff(b) <= 0):
        raise InvalidParameter(f"parameter 'bounds' must start at 0, end at the number of "
                               f"gallery rows ({n_rows}) and increase strictly (no empty "
                               f"shard), got {b.tolist()}")
    return b


def merge_topk(scores: list, rows: list, k: int):
    """The top ``k`` of several result lists of the same queries, in
    :func:`~bridge.retrieval.order_hits` order: ``scores[s]``, ``rows[s]`` are the
    ``(n_queries, k_s)`` lists of source ``s`` with global rows (``-1``: missing).
    Returns ``(scores, rows)`` of width ``min(k, sum k_s)``."""
    k = check_k(k)
    if not scores or len(scores) != len(rows):
        raise InvalidParameter(f"merge_topk needs one rows list per scores list and at "
                               f"least one of each, got {len(scores)} and {len(rows)}")
    n = {np.shape(s)[0] for s in scores} | {np.shape(r)[0] for r in rows}
    if len(n) != 1:
        raise DimensionMismatch(f"result lists cover different query counts: {sorted(n)}")
    D = np.concatenate([np.asarray(s, dtype=np.float32) for s in scores], axis=1)
    I = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows], axis=1)
    if D.shape != I.shape:
        raise DimensionMismatch(f"scores {D.shape} and rows {I.shape} differ in shape")
    D, I = order_hits(D, I)
    k = min(k, D.shape[1])
    return np.ascontiguousarray(D[:, :k]), np.ascontiguousarray(I[:, :k])


class ShardedIndex:
    """Indexes over contiguous row ranges of one gallery, searched as one
    (:func:`build_sharded`). ``bounds``: shard ``s`` holds global rows
    ``bounds[s]:bounds[s + 1]``; ``shards``: the Faiss indexes; ``d``, ``ntotal`` as on a
    Faiss index; ``kind``: the index kind."""

    def __init__(self, shards: list, bounds, kind: str):
        self.shards = list(shards)
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.kind = kind
        if len(self.shards) != self.bounds.shape[0] - 1:
            raise DimensionMismatch(f"{len(self.shards)} shard indexes for "
                                    f"{self.bounds.shape[0] - 1} row ranges")
        for s, ix in enumerate(self.shards):
            if int(ix.ntotal) != int(self.bounds[s + 1] - self.bounds[s]):
                raise DimensionMismatch(f"shard {s} holds {ix.ntotal} rows; its range "
                                        f"{self.bounds[s]}:{self.bounds[s + 1]} has "
                                        f"{self.bounds[s + 1] - self.bounds[s]}")
        dims = {int(ix.d) for ix in self.shards}
        if len(dims) != 1:
            raise DimensionMismatch(f"shard indexes of different dimensions: {sorted(dims)}")
        self.d = dims.pop()
        self.ntotal = int(self.bounds[-1])

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    def set_search(self, *, ef_search: int | None = None, nprobe: int | None = None,
                   refine: int | None = None):
        """Set the search breadth of every shard: ``ef_search`` (hnsw), ``nprobe`` (ivf,
        ivfpq), ``refine`` (ivfpq); see :func:`bridge.retrieval.set_search`."""
        for ix in self.shards:
            set_search(ix, ef_search=ef_search, nprobe=nprobe, refine=refine)
        return self

    def search(self, queries, k: int = 10, normalized: bool = False):
        """Top ``k`` global gallery rows of each query: ``(scores, rows)``, best first, in
        :func:`~bridge.retrieval.order_hits` order (see the module doc)."""
        k = check_k(k)
        q = (np.ascontiguousarray(queries, dtype=np.float32) if normalized
             else normalize(queries, "queries"))
        if q.ndim != 2 or q.shape[1] != self.d:
            raise DimensionMismatch(f"queries have dimension {q.shape[-1]} but the sharded "
                                    f"index holds dimension {self.d}")
        scores, rows = [], []
        for s, ix in enumerate(self.shards):
            D, I = index_search(ix, q, k)
            scores.append(D)
            rows.append(np.where(I >= 0, I + self.bounds[s], -1))
        return merge_topk(scores, rows, k)


def build_sharded(gallery, n_shards: int | None = None, kind: str = "flat", *, bounds=None,
                  normalized: bool = False, **index_opts) -> ShardedIndex:
    """A :class:`ShardedIndex` over ``gallery`` (an array, memory map or row view).

    The shards are ``n_shards`` equal contiguous row ranges (:func:`shard_bounds`) or the
    given ``bounds`` (increasing row boundaries from 0 to the row count); each shard's
    rows are read, normalised (unless ``normalized``) and indexed by
    :func:`~bridge.retrieval.build_index` with ``kind`` and ``index_opts`` (an ivf shard
    trains its own cells on its rows: pass ``nlist`` for a fixed cell count per shard).
    Only one shard's rows are in memory besides the indexes.
    """
    from .chunks import check_header, read_rows

    check_index_options(kind, index_opts)
    x = check_header(gallery, "gallery")
    n = int(x.shape[0])
    if (n_shards is None) == (bounds is None):
        raise InvalidParameter("build_sharded needs exactly one of n_shards (equal row "
                               "ranges) and bounds (given row boundaries)")
    b = shard_bounds(n, n_shards) if bounds is None else _check_bounds(bounds, n)
    shards = []
    for s in range(b.shape[0] - 1):
        rows = np.asarray(read_rows(x, slice(int(b[s]), int(b[s + 1]))))
        g = (np.ascontiguousarray(rows, dtype=np.float32) if normalized
             else normalize(rows, f"gallery shard {s}"))
        del rows
        shards.append(build_index(g, kind, normalized=True, **index_opts))
        del g
    return ShardedIndex(shards, b, kind)


def distributed_search(queries, shard, k: int = 10, kind: str = "flat", *, offset=None,
                       dst: int | None = None, group=None, normalized: bool = False,
                       **index_opts):
    """Search a gallery sharded across the ranks of a ``torch.distributed`` group.

    Every rank calls this with the same ``queries`` and its own ``shard`` of gallery rows
    (an array, memory map or row view); ``offset`` is the global row of the shard's first
    row (``None``: the shards are consecutive in rank order, and the offsets are the
    running sums of the shard sizes, gathered from the ranks). Each rank builds a
    ``kind`` index over its shard (``index_opts`` as for
    :func:`~bridge.retrieval.build_index`), searches it, and the lists are gathered and
    merged (:func:`merge_topk`): on every rank (``dst=None``: each returns ``(scores,
    rows)``), or on rank ``dst`` only (the others return ``None``). The result equals
    :meth:`ShardedIndex.search` over the same shards.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise InvalidParameter("distributed_search needs an initialised torch.distributed "
                               "process group (torchrun, or dist.init_process_group)")
    k = check_k(k)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if dst is not None and (isinstance(dst, bool) or not isinstance(dst, (int, np.integer))
                            or not 0 <= int(dst) < world):
        raise InvalidParameter(f"parameter 'dst' must be None or a rank in 0..{world - 1}, "
                               f"got {dst!r}")
    index = build_sharded(shard, 1, kind, normalized=normalized, **index_opts)
    sizes = torch.zeros(world, dtype=torch.int64)
    sizes[rank] = index.ntotal
    dims = torch.zeros(world, dtype=torch.int64)
    dims[rank] = index.d
    dist.all_reduce(sizes, group=group)
    dist.all_reduce(dims, group=group)
    if len(set(dims.tolist())) != 1:
        raise DimensionMismatch(f"the ranks' shards have different dimensions: "
                                f"{dims.tolist()} (rank order)")
    if offset is None:
        offset = int(sizes[:rank].sum())
    else:
        from .params import check_int

        offset = check_int("offset", offset, low=0)
    D, I = index.search(queries, k, normalized=normalized)
    I = np.where(I >= 0, I + offset, -1)
    # every rank sends k columns (padded with missing results), so the tensors match
    width = min(k, int(sizes.sum()))
    pad = width - D.shape[1]
    if pad > 0:
        D = np.concatenate([D, np.full((D.shape[0], pad), -np.inf, np.float32)], 1)
        I = np.concatenate([I, np.full((I.shape[0], pad), -1, np.int64)], 1)
    n_q = torch.tensor([D.shape[0]], dtype=torch.int64)
    n_all = [torch.zeros_like(n_q) for _ in range(world)]
    dist.all_gather(n_all, n_q, group=group)
    if len({int(t) for t in n_all}) != 1:
        raise DimensionMismatch(f"the ranks searched different query counts: "
                                f"{[int(t) for t in n_all]} (rank order); pass the same "
                                f"queries on every rank")
    Dt, It = torch.from_numpy(np.ascontiguousarray(D)), torch.from_numpy(np.ascontiguousarray(I))
    if dst is None:
        Ds = [torch.empty_like(Dt) for _ in range(world)]
        Is = [torch.empty_like(It) for _ in range(world)]
        dist.all_gather(Ds, Dt, group=group)
        dist.all_gather(Is, It, group=group)
    else:
        here = rank == int(dst)
        Ds = [torch.empty_like(Dt) for _ in range(world)] if here else None
        Is = [torch.empty_like(It) for _ in range(world)] if here else None
        dist.gather(Dt, Ds, dst=int(dst), group=group)
        dist.gather(It, Is, dst=int(dst), group=group)
        if not here:
            return None
    if not Ds:
        raise EmptyData("no shard results were gathered")
    return merge_topk([t.numpy() for t in Ds], [t.numpy() for t in Is], k)
