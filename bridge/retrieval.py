"""Retrieval evaluation through Faiss: indexes, search, R@K, MRR, median rank, mAP.

Similarity is cosine: queries and gallery rows are L2-normalised and compared by inner
product. ``kind="flat"`` (the default) is exact; ``"hnsw"`` and ``"ivf"`` are approximate
indexes for large galleries.

Relevance (which gallery rows are right for a query) is given as one of

- ``None``: query i matches gallery row i (paired rows, same count);
- an int array of length ``n_queries``: the one right gallery row of each query;
- a list of int arrays: the right gallery rows of each query (class-level or one image with
  five captions);
- a boolean matrix ``(n_queries, n_gallery)``.

Ranks are 1-based and pessimistic under ties: a wrong gallery row that scores *the same* as a
right one counts as ranked above it, so duplicate gallery rows never inflate a score.

With ``kind="flat"`` every rank is exact and counted by a streamed engine
(:func:`ranks_of_relevant`): queries go a block at a time, the gallery streams in blocks
normalised on the fly (a memory map, float16 included, is never copied whole), and the
wrong rows scoring at least as high as each right row are counted inside the blocked
product, so working memory does not grow with the gallery or the query count. With an
approximate index the metrics come from the top ``depth`` rows the index returns: a right row beyond ``depth`` counts as not found (reciprocal rank 0,
rank ``inf``), so MRR and mAP are then "at depth".

Search results (:func:`search`, :func:`index_search`) are ordered by score, equal scores
lower gallery row first, and a tie at the ``k``-th place keeps the lower rows; a flat
index's scores are exact (float64 products of the float32 rows, rounded to float32), so
they do not depend on the BLAS, and a gallery split into shards (:mod:`bridge.sharded`)
gives the same rows and scores as one index.

``device=`` (:func:`resolve_device`): ``None`` (the default) computes the exact products
with numpy; ``"cpu"``, ``"cuda"`` or ``"auto"`` with torch on that device (a Faiss index
goes onto a GPU only when Faiss has GPU support). The ranks, rows and scores are the same
on every device: the device chooses candidates and counts, exact re-scoring decides.

``scoring="csls"`` or ``"qbnorm"`` (:mod:`bridge.hubness`) ranks by a hubness-corrected score
computed with a query ``bank`` (queries of the same kind that are not the evaluated ones):
the corrected score is the inner product of augmented rows, ranked by the same exact engine
with the same tie rule, or searched in an index over the augmented gallery rows.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .errors import BridgeError, DimensionMismatch, EmptyData, InvalidParameter
from .store import check_embeddings

__all__ = [
    "l2_normalize",
    "normalize",
    "build_index",
    "search",
    "as_relevance",
    "ranks_of_relevant",
    "metrics_from_ranks",
    "retrieval_metrics",
    "bidirectional_metrics",
    "recovery_ratio",
    "resolve_device",
    "faiss_has_gpu",
    "exact_search",
    "index_search",
    "order_hits",
    "GALLERY_CACHE_BYTES",
    # building blocks of the exact rank engine, shared with bridge.fusion
    "check_k",
    "check_ks",
    "check_index_options",
    "relevance_csr",
    "row_source",
    "paired_sources",
    "rank_engine",
    "metrics_from_csr",
    "ranks_from_lists",
]

INDEX_KINDS = ("flat", "hnsw", "ivf", "ivfpq")
INDEX_OPTIONS = ("hnsw_m", "ef_search", "ef_construction", "nlist", "nprobe", "seed", "pq_m",
                 "refine")


# -- argument checks (before any Faiss call: a bad value is an error naming it, never a
# Faiss assertion) ----------------------------------------------------------------------

def check_k(k, name: str = "k", low: int = 1, allow_none: bool = False) -> int | None:
    """``k`` as an int >= ``low`` (bools and non-integral numbers refused); ``None`` passes
    with ``allow_none``. Raises :class:`~bridge.errors.InvalidParameter` naming ``name``."""
    from .params import check_int

    return check_int(name, k, low=low, allow_none=allow_none)


def check_ks(ks, name: str = "ks") -> tuple[int, ...]:
    """``ks`` as a tuple of cut-offs (R@K): a non-empty sequence, each an int >= 1; else
    :class:`~bridge.errors.InvalidParameter` naming ``name``."""
    if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__"):
        raise InvalidParameter(f"parameter {name!r} must be a non-empty sequence of integers "
                               f">= 1, got {ks!r}")
    ks = tuple(ks)
    if not ks:
        raise InvalidParameter(f"parameter {name!r} must be a non-empty sequence of integers "
                               f">= 1, got {ks!r}")
    for k in ks:
        check_k(k, f"{name} entry")
    return tuple(int(k) for k in ks)


def _check_kind(kind) -> str:
    if not isinstance(kind, str) or kind not in INDEX_KINDS:
        raise InvalidParameter(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
    return kind


def check_index_options(kind, opts: dict, n: int | None = None, d: int | None = None) -> None:
    """Check index options for :func:`build_index` of ``kind``: every name one of
    :data:`INDEX_OPTIONS`, of the right type and range (``nlist`` at most ``n`` rows,
    ``pq_m`` a divisor of the dimension ``d``); else
    :class:`~bridge.errors.InvalidParameter` naming the option."""
    _check_kind(kind)
    bad = [k for k in opts if k not in INDEX_OPTIONS]
    if bad:
        raise InvalidParameter(f"unknown index option {bad[0]!r}; expected one of "
                               f"{list(INDEX_OPTIONS)}")
    if "hnsw_m" in opts:
        check_k(opts["hnsw_m"], "hnsw_m", low=2)
    if "ef_search" in opts:
        check_k(opts["ef_search"], "ef_search")
    if "ef_construction" in opts:
        check_k(opts["ef_construction"], "ef_construction")
    if "nprobe" in opts:
        check_k(opts["nprobe"], "nprobe")
    if "seed" in opts:
        check_k(opts["seed"], "seed", low=0)
    if opts.get("nlist") is not None:
        check_k(opts["nlist"], "nlist")
        if kind in ("ivf", "ivfpq") and n is not None and opts["nlist"] > n:
            raise InvalidParameter(
                f"parameter 'nlist' must be at most the number of gallery rows ({n}) for an "
                f"{kind} index, got {opts['nlist']}")
    if opts.get("pq_m") is not None:
        check_k(opts["pq_m"], "pq_m")
        if d is not None and d % int(opts["pq_m"]):
            raise InvalidParameter(f"parameter 'pq_m' (sub-quantizers) must divide the "
                                   f"dimension {d}, got {opts['pq_m']}")
    if "refine" in opts:
        check_k(opts["refine"], "refine")


def l2_normalize(x, name: str = "embeddings", check: bool = True, *,
                 copy: bool = True) -> np.ndarray:
    """Rows of ``x`` scaled to unit length, float32, C-contiguous (what Faiss wants).

    The package's one normaliser. All-zero rows stay zero. ``check=False`` skips the
    validation of :func:`~bridge.store.check_embeddings` for arrays already checked.
    ``copy=False`` scales ``x`` itself when it already is a writable C-contiguous float32
    array (the caller owns it and no longer needs the raw rows); any other input is
    converted into a new array once. The result is the same bits either way.
    """
    if check:
        x = check_embeddings(x, name)
    if copy or not (isinstance(x, np.ndarray) and x.dtype == np.float32
                    and x.flags.c_contiguous and x.flags.writeable):
        x = np.array(x, dtype=np.float32, order="C", copy=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


normalize = l2_normalize  # the name the retrieval functions below use


def resolve_device(device):
    """Where exact products run: ``None`` (the default): numpy on the CPU; ``"cpu"``,
    ``"cuda"``, ``"cuda:N"`` or a ``torch.device``: torch on that device; ``"auto"``:
    ``cuda`` when torch sees a GPU, else ``None``. Returns ``None`` or a ``torch.device``.

    Asking for CUDA where torch has none raises :class:`~bridge.errors.InvalidParameter`
    naming the device and what torch reports; nothing falls back silently.
    """
    if device is None:
        return None
    if isinstance(device, str) and device.strip().lower() == "auto":
        import torch

        return torch.device("cuda") if torch.cuda.is_available() else None
    import torch

    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InvalidParameter(f"unknown device {device!r} ({e}); expected None, 'auto', "
                               f"'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type not in ("cpu", "cuda"):
        raise InvalidParameter(f"device {device!r} is not supported; expected None, 'auto', "
                               f"'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = (f"built with CUDA {torch.version.cuda}" if torch.version.cuda
                     else "built without CUDA")
            raise InvalidParameter(f"device {device!r} was asked for, but torch "
                                   f"{torch.__version__} ({built}) sees no CUDA device; use "
                                   f"device='cpu', 'auto' or None")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidParameter(f"device {device!r} was asked for, but torch sees "
                                   f"{torch.cuda.device_count()} CUDA device(s)")
    return dev


def faiss_has_gpu() -> bool:
    """Whether the installed Faiss was built with GPU support and sees a GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(gallery, kind: str = "flat", *, hnsw_m: int = 32, ef_search: int = 128,
                ef_construction: int = 40, nlist: int | None = None, nprobe: int = 16,
                seed: int = 0, pq_m: int | None = None, refine: int = 8,
                normalized: bool = False, device=None):
    """A Faiss inner-product index over the (normalised) gallery rows.

    ``flat``: exact. ``hnsw``: graph index (``hnsw_m`` links a node, ``ef_search`` search
    breadth, ``ef_construction`` build breadth: raise it for recall on large galleries, at
    a longer build). ``ivf``: inverted lists over ``nlist`` k-means cells (default ``4 * sqrt(n)``),
    searching ``nprobe`` of them. ``ivfpq``: the same cells holding 4-bit product-quantised
    codes (``pq_m`` sub-quantizers, default ``d / 2``: 2 bits a dimension; Faiss's
    SIMD "fast scan" lists), whose ``refine * k`` best candidates are then re-scored
    exactly on the stored float32 rows (``faiss.IndexRefineFlat``): the codes only choose
    candidates, so scores and order are exact ones, and recall is limited by the cells
    probed (``nprobe``) far more than by the codes. It keeps the float32 rows plus
    ``d / 4`` bytes a row of codes.

    ``device`` (see :func:`resolve_device`): a CUDA device moves a flat or ivf index onto
    that GPU (``faiss.StandardGpuResources``, ``faiss.index_cpu_to_gpu``); this needs a
    Faiss built with GPU support, else :class:`~bridge.errors.InvalidParameter` says so
    (exact search on a GPU without it: :func:`search` with ``kind="flat"`` and a gallery
    array runs the product in torch). Faiss has no GPU HNSW, so ``kind="hnsw"`` on CUDA
    is refused. ``None``, ``"cpu"`` and ``"auto"`` without a GPU build a CPU index. A GPU
    flat index returns Faiss's own float32 scores (the exact re-scoring of
    :func:`index_search` applies to CPU flat indexes).
    """
    _check_kind(kind)
    dev = resolve_device(device)
    if dev is not None and dev.type == "cuda":
        if kind in ("hnsw", "ivfpq"):
            raise InvalidParameter(f"kind {kind!r} cannot run on device {device!r}: Faiss has "
                                   f"no GPU {'HNSW' if kind == 'hnsw' else 'fast-scan PQ'} "
                                   f"index; use kind='ivf' or 'flat' on the GPU, or "
                                   f"device=None")
        if not faiss_has_gpu():
            raise InvalidParameter(f"a {kind} index on device {device!r} needs Faiss with GPU "
                                   f"support (faiss-gpu), but the installed faiss has none; "
                                   f"use device=None, or search(..., kind='flat', "
                                   f"device={str(device)!r}) for exact search with torch")
    g = gallery if normalized else normalize(gallery, "gallery")
    n, d = g.shape
    check_index_options(kind, {"hnsw_m": hnsw_m, "ef_search": ef_search,
                               "ef_construction": ef_construction, "nlist": nlist,
                               "nprobe": nprobe, "seed": seed, "refine": refine,
                               **({} if kind != "ivfpq" else {"pq_m": pq_m})}, n, d)
    import faiss

    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        index.hnsw.efSearch = int(ef_search)
    else:  # ivf, ivfpq: inverted lists over k-means cells
        cells = int(nlist or max(1, min(n // 39, int(4 * math.sqrt(n)))))
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            base = index = faiss.IndexIVFFlat(quantizer, d, cells, faiss.METRIC_INNER_PRODUCT)
        else:
            m = int(pq_m) if pq_m is not None else _default_pq_m(d)
            base = faiss.IndexIVFPQFastScan(quantizer, d, cells, m, 4,
                                            faiss.METRIC_INNER_PRODUCT)
        base.cp.seed = int(seed)
        base.train(g)
        base.nprobe = int(min(nprobe, cells))
        if kind == "ivfpq":
            index = faiss.IndexRefineFlat(base)
            index.k_factor = float(refine)
            index.referenced_objects = [base, quantizer]  # kept alive with the index
    index.add(g)
    if dev is not None and dev.type == "cuda":
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, dev.index or 0, index)
        index.referenced_objects = [res]  # the resources live as long as the index
    return index


def _default_pq_m(d: int) -> int:
    """Sub-quantizers of an ``ivfpq`` index: the largest divisor of ``d`` up to ``d / 2``."""
    return max(m for m in range(1, max(1, d // 2) + 1) if d % m == 0)


def set_search(index, *, ef_search: int | None = None, nprobe: int | None = None,
               refine: int | None = None):
    """Set the search breadth of a Faiss index of :func:`build_index`: ``ef_search``
    (hnsw), ``nprobe`` (ivf, ivfpq; at most the cell count), ``refine`` (ivfpq: candidates
    re-scored exactly, per result). An option the index kind has not raises
    :class:`~bridge.errors.InvalidParameter`. Returns the index."""
    import faiss

    kind = index_kind(index)
    for name, value, kinds in (("ef_search", ef_search, ("hnsw",)),
                               ("nprobe", nprobe, ("ivf", "ivfpq")),
                               ("refine", refine, ("ivfpq",))):
        if value is None:
            continue
        check_k(value, name)
        if kind not in kinds:
            raise InvalidParameter(f"{name} applies to {' and '.join(kinds)} indexes, this one "
                                   f"is {kind}")
        if name == "ef_search":
            index.hnsw.efSearch = int(value)
        elif name == "nprobe":
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = int(min(value, ivf.nlist))
        else:
            index.k_factor = float(value)
    return index


def index_kind(index) -> str:
    """The :data:`INDEX_KINDS` name of a Faiss index that :func:`build_index` made."""
    import faiss

    if isinstance(index, faiss.IndexRefineFlat):
        return "ivfpq"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    return "flat"


def order_hits(scores: np.ndarray, rows: np.ndarray):
    """Search results in the package's order: by score (best first), equal scores by
    lower gallery row, missing results (row ``-1``) last. Returns ``(scores, rows)``."""
    key = np.lexsort((rows, -scores.astype(np.float64), rows < 0), axis=-1)
    return np.take_along_axis(scores, key, -1), np.take_along_axis(rows, key, -1)


def index_search(index, queries: np.ndarray, k: int):
    """Top ``k`` rows of a Faiss index for float32 ``queries``, in :func:`order_hits` order,
    with ties at the ``k``-th place resolved to the lower rows.

    Faiss keeps ties at the cut in the order its heap meets them, not by row. The index is
    asked for one row more than ``k``; a query whose ``(k+1)``-th score equals its
    ``k``-th is asked again, for twice as many rows, until the tie ends inside the list
    (all queries go again together). So the rows kept are the ``k`` best by (score, lower
    row).

    A flat (exact) CPU index is scored exactly (:func:`_flat_exact`): its scores are the
    float64 inner products of the float32 rows, rounded to float32, so they depend on the
    query and the row only, not on the BLAS blocking or on where the row sits (identical
    rows tie; a gallery split into shards gives the same rows and scores).
    """
    import faiss

    if isinstance(index, faiss.IndexFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return _flat_exact(index, queries, k)
    n = int(index.ntotal)
    k = int(min(k, n))
    w = min(k + 1, n)
    D, I = order_hits(*index.search(queries, w))
    out_d, out_i = D[:, :k].copy(), I[:, :k].copy()

    def open_tie(D, I):  # the k-th score goes on to the end of the list returned
        if w == k:
            return np.zeros(D.shape[0], dtype=bool)
        return (I[:, w - 1] >= 0) & (D[:, w - 1] == D[:, k - 1])

    cross = open_tie(D, I)
    while cross.any() and w < n:
        w = min(n, 2 * w)
        D, I = order_hits(*index.search(queries, w))
        out_d[cross], out_i[cross] = D[cross, :k], I[cross, :k]
        cross &= open_tie(D, I)
    return out_d, out_i


def _flat_exact(index, queries: np.ndarray, k: int):
    """The exact top ``k`` of a CPU ``IndexFlatIP`` by exact scores (see :func:`index_search`).

    Faiss's float32 search gives ``w`` candidates (``2k``, at least ``k + 8``); they are
    re-scored exactly (:func:`_pair_dots`) and ordered by (rounded exact score, lower row).
    A row left out scored at most the ``w``-th float32 score, so its exact score is at most
    that plus the product's rounding bound ``gamma_d |q| max|g|``: a query whose ``k``-th
    exact score is above that is settled, the others are asked again for twice as many
    candidates (all rows at the end).
    """
    import faiss

    n, d = int(index.ntotal), int(index.d)
    k = int(min(k, n))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    nq = q.shape[0]
    xb = faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d) if n else np.zeros((0, d),
                                                                                  np.float32)
    u = d * 2.0 ** -24
    gamma = u / (1.0 - u) * 1.01 + 1e-12
    bound = gamma * _row_norms(q) * _max_norm(xb) + 1e-30
    out_d = np.empty((nq, k), dtype=np.float32)
    out_i = np.empty((nq, k), dtype=np.int64)
    todo = np.arange(nq)
    w = min(n, max(2 * k, k + 8))
    while todo.size:
        D, I = index.search(q[todo], w)
        E, R = _rescored(q, todo, I, lambda idx: xb[idx])
        out_d[todo], out_i[todo] = E[:, :k], R[:, :k]
        if w == n:
            break
        todo = todo[~_settled(E, D[:, w - 1], bound[todo], k)]
        w = min(n, 2 * w)
    return out_d, out_i


def _rescored(q, qrows, I, rows_of):
    """Candidates ``I`` of queries ``q[qrows]`` re-scored exactly (float64 products of the
    float32 rows, rounded to float32) and put in :func:`order_hits` order."""
    w = I.shape[1]
    uniq, inv = np.unique(I, return_inverse=True)
    ex = _pair_dots(q, np.repeat(qrows, w), rows_of(uniq), inv.reshape(-1)).reshape(-1, w)
    return order_hits(ex.astype(np.float32), I)


def _settled(E, last, bound, k: int) -> np.ndarray:
    """Whether the ``k``-th exact score is above what any row left out can score: at most
    the last candidate's product score ``last`` plus the rounding ``bound``."""
    return E[:, k - 1] > _f32_up(np.asarray(last, dtype=np.float64) + bound)


def exact_search(queries, gallery, k: int = 10, *, device="cpu", normalized: bool = False,
                 block: int = 1024):
    """Exact top ``k`` gallery rows by cosine with torch products on ``device``:
    ``(scores, rows)`` as numpy arrays, the same as :func:`search` with ``kind="flat"``.

    The gallery (an array, memory map or row view) streams in blocks, each read and
    normalised once and kept on the device up to :data:`GALLERY_CACHE_BYTES`; queries go
    ``block`` at a time. The float32 products (full precision, no TF32) choose ``2k``
    candidates per query, which are re-scored exactly on the CPU as by
    :func:`index_search` on a flat index (a query whose candidates might miss a row is
    searched again with twice as many), so every device returns the same rows and scores,
    in :func:`order_hits` order.
    """
    import torch

    from .chunks import check_chunk_size

    k = check_k(k)
    block = check_chunk_size(block, "block")
    dev = resolve_device(device)
    if dev is None:
        dev = torch.device("cpu")
    (nq, _, qblock, _), (ng, dim, gblock, grows) = paired_sources(queries, gallery, normalized)
    k = int(min(k, ng))
    b_max = max(1, min(block, nq))
    gb = max(64, min(ENGINE_CELLS // b_max, ENGINE_CELLS // max(dim, 1)))
    blocks = _GalleryBlocks(gblock, ng, dim, gb, reuse=nq > b_max, device=dev)
    u = dim * 2.0 ** -24
    gamma = u / (1.0 - u) * 1.01 + 1e-12
    scores = np.empty((nq, k), dtype=np.float32)
    rows = np.empty((nq, k), dtype=np.int64)
    with _exact_matmul(dev):
        for s in range(0, nq, block):
            e = min(nq, s + block)
            Q = qblock(s, e)
            qn = _row_norms(Q)
            todo = np.arange(e - s)
            w = min(ng, max(2 * k, k + 8))
            while todo.size:
                V, I, gmax = _device_topk(_to_device(Q[todo], dev), blocks, w)
                E, R = _rescored(Q, todo, I, grows)
                scores[s + todo], rows[s + todo] = E[:, :k], R[:, :k]
                if w == ng:
                    break
                todo = todo[~_settled(E, V[:, w - 1], gamma * qn[todo] * gmax + 1e-30, k)]
                w = min(ng, 2 * w)
    return scores, rows


def _device_topk(Qd, blocks, w: int):
    """The ``w`` best gallery rows of each query of ``Qd`` by the device's float32
    products: ``(scores, rows)`` as numpy arrays, and the largest gallery row norm bound."""
    import torch

    V = I = None
    gmax = 0.0
    for gs, _, G, gm in blocks:
        gmax = max(gmax, gm)
        v, i = _block_topk(Qd @ G.T, w)
        i = i + gs
        if V is None:
            V, I = v, i
        else:
            V, I = _merge_ordered(torch.cat([V, v], 1), torch.cat([I, i], 1), w)
    return V.cpu().numpy(), I.cpu().numpy(), gmax


def _block_topk(S, k: int):
    """The ``k`` best entries of each row of a score tensor by (score, lower column),
    best first."""
    import torch

    kk = min(k, S.shape[1])
    v, i = torch.topk(S, kk, dim=1)
    # rows whose k-th score is shared beyond the list: order those rows stably instead
    tied = torch.nonzero((S >= v[:, -1:]).sum(dim=1) > kk).reshape(-1)
    if tied.numel():
        sv, si = torch.sort(S[tied], dim=1, descending=True, stable=True)
        v[tied], i[tied] = sv[:, :kk], si[:, :kk]
    return _merge_ordered(v, i, kk)


def _merge_ordered(V, I, k: int):
    """Entries of each row ordered by (score desc, row asc), the first ``k`` kept."""
    import torch

    o = torch.argsort(I, dim=1, stable=True)
    V, I = V.gather(1, o), I.gather(1, o)
    o = torch.argsort(V, dim=1, descending=True, stable=True)
    return V.gather(1, o)[:, :k], I.gather(1, o)[:, :k]


def search(queries, gallery_or_index, k: int = 10, kind: str = "flat", *, scoring=None,
           bank=None, device=None, **index_opts):
    """Top ``k`` gallery rows of each query by cosine: ``(scores, rows)``, best first.

    ``gallery_or_index`` is an array (an index of ``kind`` is built over it) or an index
    from :func:`build_index`. Missing results (fewer than ``k`` found) have row ``-1``.
    Equal scores are listed lower row first, and a tie at the ``k``-th place keeps the
    lower rows (:func:`index_search`), whatever order Faiss met them in.

    ``device`` (see :func:`resolve_device`): with ``kind="flat"`` and a gallery array, a
    device other than ``None`` runs the exact search as torch products on it
    (:func:`exact_search`: no Faiss GPU build needed); an ``hnsw``/``ivf`` index is built
    by :func:`build_index` for that device. A prebuilt index is searched where it lives.

    ``scoring`` (``"csls"``, ``"qbnorm"``..., see :mod:`bridge.hubness`) ranks by the
    hubness-corrected score computed with ``bank`` (rows of queries of the same kind, not
    these queries, or a :class:`bridge.hubness.Adjustment` of this gallery): the index is
    built over the augmented gallery rows ``[g_hat, bias]`` and searched with ``[q_hat,
    w_q]``, so the scores returned are the adjusted scores in ranking form (``s - r_bank /
    2`` for CSLS, ``s - logZ / beta`` for a switched-on QB-Norm query). This needs the
    gallery array, not a prebuilt index.
    """
    from .hubness import parse_scoring

    k = check_k(k)
    check_index_options(kind, index_opts)
    dev = resolve_device(device)
    sc = parse_scoring(scoring)
    is_array = ((isinstance(gallery_or_index, np.ndarray) or hasattr(gallery_or_index, "shape"))
                and not hasattr(gallery_or_index, "ntotal"))  # rows, not a Faiss index
    if not sc.is_cosine:
        if not is_array:
            raise InvalidParameter(f"scoring {str(sc)!r} needs the gallery rows, not a "
                                   f"prebuilt index (the index holds the adjusted rows)")
        from .hubness import adjusted

        Qa, Ga, _ = adjusted(queries, gallery_or_index, bank, sc)
        if kind == "flat" and dev is not None:
            return exact_search(Qa, Ga, k, device=dev, normalized=True)
        index = build_index(Ga[:], kind, normalized=True, device=dev, **index_opts)
        return index_search(index, np.ascontiguousarray(Qa[:], dtype=np.float32), k)
    if is_array and kind == "flat" and dev is not None:
        return exact_search(queries, gallery_or_index, k, device=dev)
    q = normalize(queries, "queries")
    if is_array:
        index = build_index(gallery_or_index, kind, device=dev, **index_opts)
    else:
        index = gallery_or_index
    if q.shape[1] != index.d:
        raise DimensionMismatch(f"queries have dimension {q.shape[1]} but the index holds "
                                f"dimension {index.d}")
    return index_search(index, q, k)


def as_relevance(relevant, n_queries: int, n_gallery: int) -> list[np.ndarray]:
    """Normalise any accepted form of ``relevant`` into a list of sorted row arrays."""
    if relevant is None:
        if n_queries != n_gallery:
            raise DimensionMismatch(
                f"relevant=None pairs query i with gallery row i, but there are {n_queries} "
                f"queries and {n_gallery} gallery rows; pass the right rows per query")
        return [np.array([i]) for i in range(n_queries)]
    if isinstance(relevant, np.ndarray) and relevant.ndim == 2:
        if relevant.shape != (n_queries, n_gallery):
            raise DimensionMismatch(f"relevance matrix has shape {relevant.shape}; expected "
                                    f"({n_queries}, {n_gallery})")
        out = [np.flatnonzero(r) for r in relevant.astype(bool)]
    elif isinstance(relevant, np.ndarray) and relevant.ndim == 1 and relevant.dtype != object:
        if relevant.shape[0] != n_queries:
            raise DimensionMismatch(f"relevant has {relevant.shape[0]} entries; expected one "
                                    f"per query ({n_queries})")
        out = [np.array([int(r)]) for r in relevant]
    else:
        relevant = list(relevant)
        if len(relevant) != n_queries:
            raise DimensionMismatch(f"relevant has {len(relevant)} entries; expected one per "
                                    f"query ({n_queries})")
        out = [np.unique(np.atleast_1d(np.asarray(r, dtype=np.int64))) for r in relevant]
    for i, r in enumerate(out):
        if r.size == 0:
            raise EmptyData(f"query {i} has no relevant gallery row")
        if r.min() < 0 or r.max() >= n_gallery:
            bad = int(r[(r < 0) | (r >= n_gallery)][0])
            raise DimensionMismatch(f"query {i} names gallery row {bad}; the gallery has rows "
                                    f"0..{n_gallery - 1}")
    return out


# ---------------------------------------------------------------------------
# the exact streamed rank engine

#: score-matrix entries (query block x gallery block) computed at a time
ENGINE_CELLS = 1 << 21
#: queries with at most this many right rows are counted by direct comparisons
DIRECT_MAX_RELEVANT = 16
_PAIR_CHUNK = 4096


def relevance_csr(relevant, n_queries: int, n_gallery: int):
    """``relevant`` (any accepted form) as ``(indptr, rows)``: query i's right rows are
    ``rows[indptr[i]:indptr[i + 1]]`` (sorted, unique). Same checks as :func:`as_relevance`."""
    if relevant is None:
        if n_queries != n_gallery:
            as_relevance(None, n_queries, n_gallery)  # raises, naming both counts
        return np.arange(n_queries + 1, dtype=np.int64), np.arange(n_queries, dtype=np.int64)
    if (isinstance(relevant, np.ndarray) and relevant.ndim == 1 and relevant.dtype != object
            and np.issubdtype(relevant.dtype, np.integer)):
        if relevant.shape[0] != n_queries:
            as_relevance(relevant, n_queries, n_gallery)  # raises
        r = relevant.astype(np.int64)
        bad = np.flatnonzero((r < 0) | (r >= n_gallery))
        if bad.size:
            raise DimensionMismatch(f"query {int(bad[0])} names gallery row {int(r[bad[0]])}; "
                                    f"the gallery has rows 0..{n_gallery - 1}")
        return np.arange(n_queries + 1, dtype=np.int64), r
    lists = as_relevance(relevant, n_queries, n_gallery)
    indptr = np.zeros(n_queries + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([r.size for r in lists])
    rows = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64)
    return indptr, rows


def _pair_dots(A: np.ndarray, ia: np.ndarray, B: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """``A[ia[k]] . B[ib[k]]`` in float64 for every k.

    A row pair's value depends on the two rows only (element-wise products, summed along
    the row), never on where the rows sit or how many pairs are computed together, so two
    identical gallery rows always score exactly the same.
    """
    out = np.empty(ia.shape[0], dtype=np.float64)
    for s in range(0, ia.shape[0], _PAIR_CHUNK):
        a = A[ia[s:s + _PAIR_CHUNK]].astype(np.float64)
        a *= B[ib[s:s + _PAIR_CHUNK]]
        out[s:s + _PAIR_CHUNK] = a.sum(axis=1)
    return out


def _f32_up(x: np.ndarray) -> np.ndarray:
    """The smallest float32 >= each float64 value."""
    y = x.astype(np.float32)
    return np.where(y.astype(np.float64) < x, np.nextafter(y, np.float32(np.inf)), y) + np.float32(0)


def _f32_down(x: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 value."""
    y = x.astype(np.float32)
    return np.where(y.astype(np.float64) > x, np.nextafter(y, np.float32(-np.inf)), y) + np.float32(0)


def rank_engine(qblock, gblock, grows, n_q: int, n_g: int, dim: int, indptr, rows,
                q_block: int, g_block: int | None = None, device=None) -> np.ndarray:
    """Exact pessimistic ranks of every right row, counted inside the blocked product.

    ``qblock(s, e)`` and ``gblock(s, e)`` return float32 query/gallery rows ``s:e`` as they
    are to be scored (inner product); ``grows(idx)`` returns gallery rows ``idx`` exactly as
    ``gblock`` would. The exact score of a pair is the float64 inner product of its two
    float32 rows (:func:`_pair_dots`: it depends on the two rows only, so identical gallery
    rows score identically). For each query block the right rows' scores come first; then
    the gallery streams by blocks and, for each right row, the wrong rows scoring at least
    as high are counted. A block score more than its rounding bound (``gamma_d |q| |g|``)
    above a right score counts, more than the bound below does not, and the few within
    the bound are recomputed exactly. So the result is the ranking by exact scores with
    ties counted against the query, whatever the block sizes, the BLAS or the device.
    Queries with at most :data:`DIRECT_MAX_RELEVANT` right rows are scored in float32 and compared
    directly; with more (class-level relevance) a few queries at a time get full float64
    score rows, sorted once (:func:`_count_rows`). Returns the 1-based ranks in CSR
    order (query i: ``ranks[indptr[i]:indptr[i + 1]]``, best first).

    Each gallery block is read and prepared once: with several query blocks the prepared
    blocks are kept for the next ones, up to :data:`GALLERY_CACHE_BYTES` (blocks past
    the budget are read again). ``device`` (a ``torch.device``, see
    :func:`resolve_device`; ``None``: numpy) is where the block products and the
    comparisons run; the exact re-scoring stays in float64 on the CPU, so every device
    gives the same ranks.
    """
    out = np.empty(rows.shape[0], dtype=np.int64)
    many = n_q > 0 and int(np.diff(indptr).max()) > DIRECT_MAX_RELEVANT
    if many:  # full score rows of a few queries at a time
        q_block = max(1, min(q_block, 2 * ENGINE_CELLS // max(n_g, 1)))
    b_max = max(1, min(q_block, n_q))
    # one gallery block size for every query block, so that prepared blocks are reused
    gb = g_block or max(64, min(ENGINE_CELLS // b_max, ENGINE_CELLS // max(dim, 1)))
    blocks = _GalleryBlocks(gblock, n_g, dim, gb, reuse=n_q > b_max, device=device)
    with _exact_matmul(device):
        for s in range(0, n_q, q_block):
            e = min(n_q, s + q_block)
            b = e - s
            Q = qblock(s, e)
            p0, p1 = int(indptr[s]), int(indptr[e])
            m = np.diff(indptr[s:e + 1])
            starts = indptr[s:e] - p0
            pq = np.repeat(np.arange(b), m)
            pg = rows[p0:p1]
            if many:
                above = _count_rows(Q, pq, pg, m, blocks, grows, n_g, dim, device)
            else:
                above = _count_direct(Q, pq, pg, m, starts, blocks, grows, dim, device)
            # the counts fall as the right score rises: sorted, they list the right rows
            # best first, and the t-th best has t - 1 right rows ahead of it
            srt = above[np.lexsort((above, pq))]
            out[p0:p1] = srt + (np.arange(p1 - p0) - np.repeat(starts, m)) + 1
    return out


#: bytes of prepared gallery blocks the exact engine keeps between query blocks
GALLERY_CACHE_BYTES = 1 << 29


class _GalleryBlocks:
    """The gallery in blocks of ``gb`` rows, iterated as ``(start, end, G, gmax)``: ``G``
    the rows as ``gblock`` gives them (a float32 tensor on ``device`` when one is given),
    ``gmax`` a bound of their largest norm. With ``reuse`` the blocks are kept, up to
    :data:`GALLERY_CACHE_BYTES`, so each is read, checked and normalised once."""

    def __init__(self, gblock, n_g: int, dim: int, gb: int, reuse: bool, device=None):
        self.gblock, self.n_g, self.gb, self.device = gblock, n_g, gb, device
        self.room = GALLERY_CACHE_BYTES if reuse else 0
        self.kept: dict[int, tuple] = {}
        self.row_bytes = 4 * max(dim, 1)

    def _load(self, gs: int, ge: int):
        G = self.gblock(gs, ge)
        gmax = _max_norm(G)
        if self.device is not None:
            G = _to_device(G, self.device)
        return G, gmax

    def __iter__(self):
        for gs in range(0, self.n_g, self.gb):
            ge = min(self.n_g, gs + self.gb)
            item = self.kept.get(gs)
            if item is None:
                item = self._load(gs, ge)
                size = (ge - gs) * self.row_bytes
                if size <= self.room:
                    self.kept[gs] = item
                    self.room -= size
            yield gs, ge, item[0], item[1]


def _to_device(x: np.ndarray, device):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x))
    return t if device.type == "cpu" else t.to(device)


def _host_rows(G, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of a block (numpy, or a tensor on a device) as a numpy array."""
    if isinstance(G, np.ndarray):
        return G[idx]
    import torch

    return G[torch.from_numpy(idx).to(G.device)].cpu().numpy()


class _exact_matmul:
    """Within: torch float32 products at full float32 precision (no TF32 or reduced
    precision), which the rounding bound of the exact engine assumes."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device is None:
            return self
        import torch

        self.prec = torch.get_float32_matmul_precision()
        self.tf32 = torch.backends.cuda.matmul.allow_tf32
        self.cudnn = torch.backends.cudnn.allow_tf32
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        return self

    def __exit__(self, *exc):
        if self.device is not None:
            import torch

            torch.set_float32_matmul_precision(self.prec)
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.cudnn
            torch.set_grad_enabled(self.grad)
        return False


def _mask_right(S, pq, pg, by_g, g_sorted, gs, ge):
    k0, k1 = np.searchsorted(g_sorted, [gs, ge])
    sel = by_g[k0:k1]
    if isinstance(S, np.ndarray):
        S[pq[sel], pg[sel] - gs] = -np.inf  # right rows are not counted against
    elif sel.size:
        import torch

        S[torch.from_numpy(pq[sel]).to(S.device),
          torch.from_numpy(pg[sel] - gs).to(S.device)] = float("-inf")


def _row_norms(X: np.ndarray) -> np.ndarray:
    X64 = X.astype(np.float64)
    return np.sqrt(np.einsum("ij,ij->i", X64, X64))


def _max_norm(X: np.ndarray) -> float:
    """An upper bound of the largest row norm of float32 ``X`` (float32 sums, widened by
    their own rounding bound)."""
    if X.shape[0] == 0:
        return 0.0
    sq = float(np.einsum("ij,ij->i", X, X).max())
    return float(np.sqrt(sq * (1.0 + 4.0 * X.shape[1] * 2.0 ** -24))) + 1e-30


def _row_counts(A: np.ndarray) -> np.ndarray:
    """True entries per row of a boolean matrix (int64)."""
    dt = np.uint16 if A.shape[1] < 2 ** 16 else np.int64  # narrow sums are much faster
    return A.view(np.uint8).sum(axis=1, dtype=dt).astype(np.int64)


def _count_direct(Q, pq, pg, m, starts, blocks, grows, dim, device=None):
    """Wrong rows scoring >= each right row, for queries with few right rows (float32
    block products on ``device``, exact float64 re-scoring of the near ones)."""
    u = dim * 2.0 ** -24
    gamma = u / (1.0 - u) * 1.01 + 1e-12
    b, M = Q.shape[0], pq.shape[0]
    mmax = int(m.max())
    col = np.arange(M) - np.repeat(starts, m)
    uniq, inv = np.unique(pg, return_inverse=True)
    R = grows(uniq)
    erel = _pair_dots(Q, pq, R, inv.reshape(-1))
    gmax_r = _max_norm(R)
    del R
    E = np.full((b, mmax), np.inf)
    E[pq, col] = erel
    qn = _row_norms(Q)
    by_g = np.argsort(pg, kind="stable")
    g_sorted = pg[by_g]
    above = np.zeros(M, dtype=np.int64)
    Qd = _to_device(Q, device) if device is not None else _cpu_tensor(Q)
    bufs: dict = {}  # score and mask blocks reused from block to block (no fresh pages)
    for gs, ge, G, gmax in blocks:
        delta = gamma * qn * (gmax + gmax_r) + 1e-300
        HI, LO = _f32_up(E + delta[:, None]), _f32_down(E - delta[:, None])
        if device is None:
            w = ge - gs
            if w not in bufs:
                St = _torch_block(b, w)
                bufs[w] = (St, St.numpy(), np.empty((b, w), bool))
            St, S, mask = bufs[w]
            _block_product(Qd, G, St)  # S is St's memory
            _mask_right(S, pq, pg, by_g, g_sorted, gs, ge)
            counts = _counts_numpy(S, HI, LO, mmax, mask)
        else:
            S = Qd @ G.T
            _mask_right(S, pq, pg, by_g, g_sorted, gs, ge)
            counts = _counts_torch(S, _to_device(HI, device), _to_device(LO, device), mmax)
        for t, (above_t, ii, jj) in enumerate(counts):
            if ii.size:  # scores within the rounding bound: recompute them exactly
                uj, ij = np.unique(jj, return_inverse=True)
                hit = _pair_dots(Q, ii, _host_rows(G, uj), ij.reshape(-1)) >= E[ii, t]
                above_t = above_t + np.bincount(ii[hit], minlength=b)
            has = np.flatnonzero(m > t)
            above[starts[has] + t] += above_t[has]
    return above


def _torch_block(b: int, w: int):
    """A float32 CPU tensor of ``(b, w)`` block scores (its ``.numpy()`` shares the memory)."""
    import torch

    return torch.empty((b, w), dtype=torch.float32)


def _cpu_tensor(x: np.ndarray):
    """float32 rows as a CPU tensor sharing their memory. The rows are only read, so
    read-only arrays (memory maps) are wrapped without a copy."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _block_product(q, G: np.ndarray, out) -> None:
    """``out = q @ G.T`` (float32) by torch's CPU matmul: ``q`` a tensor of
    :func:`_cpu_tensor`, ``out`` one from :func:`_torch_block`. Faster than numpy's product
    on the machines measured, and any float32 product meets the rounding bound the exact
    engine assumes."""
    import torch

    with torch.no_grad():
        torch.mm(q, _cpu_tensor(G).T, out=out)


def _counts_numpy(S, HI, LO, mmax, out=None):
    """Per right-row column ``t``: wrong rows of the block surely above it (per query),
    and the (query, row) pairs within the rounding bound, to be re-scored exactly.

    One full pass per column: the rows at or above the band's lower edge are counted;
    only the few queries with any (most right rows outrank the whole block) are compared
    with the upper edge as well."""
    empty = np.zeros(0, dtype=np.int64)
    for t in range(mmax):
        B = np.greater_equal(S, LO[:, t:t + 1], out=out)  # ``out``: a bool block to reuse
        above_t = _row_counts(B)
        cand = np.flatnonzero(above_t)
        if not cand.size:
            yield above_t, empty, empty
            continue
        A = S[cand] > HI[cand, t:t + 1]
        n_hi = _row_counts(A)
        sel = above_t[cand] > n_hi
        above_t[cand] = n_hi
        if sel.any():
            near = cand[sel]
            ii, jj = np.nonzero(B[near] & ~A[sel])
            yield above_t, near[ii], jj
        else:
            yield above_t, empty, empty


def _counts_torch(S, HI, LO, mmax):
    """:func:`_counts_numpy` on torch tensors (the same float32 comparisons)."""
    import torch

    for t in range(mmax):
        A = S > HI[:, t:t + 1]
        above_t = A.sum(dim=1)
        B = S >= LO[:, t:t + 1]
        near = torch.nonzero(B.sum(dim=1) > above_t).reshape(-1)
        above_np = above_t.cpu().numpy().astype(np.int64)
        if near.numel():
            ii, jj = torch.nonzero(B[near] & ~A[near], as_tuple=True)
            yield above_np, near[ii].cpu().numpy(), jj.cpu().numpy()
        else:
            empty = np.zeros(0, dtype=np.int64)
            yield above_np, empty, empty


def _count_rows(Q, pq, pg, m, blocks, grows, n_g, dim, device=None):
    """Wrong rows scoring >= each right row, for queries with many right rows.

    The query block is small enough for its full score rows (float64) to fit
    :data:`ENGINE_CELLS`; each row is sorted once and every right score is located in it by
    one vectorised ``searchsorted`` (rows shifted apart by a constant; the rounding of the
    shift is monotone, so it can only move a score into the exact-recheck band). The
    float64 block products run on ``device`` when one is given.
    """
    u = dim * 2.0 ** -53
    gamma = u / (1.0 - u) * 1.01 + 1e-300
    b, M = Q.shape[0], pq.shape[0]
    Q64 = Q.astype(np.float64)
    S = np.empty((b, n_g))
    gmax = 0.0
    Qd = None if device is None else _to_device(Q64, device)
    for gs, ge, G, gm in blocks:
        gmax = max(gmax, gm)
        if device is None:
            S[:, gs:ge] = Q64 @ G.astype(np.float64).T
        else:
            S[:, gs:ge] = (Qd @ G.double().T).cpu().numpy()
    qn = _row_norms(Q)
    big = float(qn.max()) * gmax * 1.01 + 1.0
    delta = 2.0 * gamma * qn * gmax + 1e-300      # both scores of a comparison are rounded
    srel = S[pq, pg]
    S[pq, pg] = -2.0 * big                       # right rows are not counted against
    order = np.lexsort((srel, pq))
    pq_o, pg_o, srel_o = pq[order], pg[order], srel[order]
    shift = np.arange(b) * (8.0 * big)
    keys = np.sort(S, axis=1)
    keys += shift[:, None]
    keys = keys.reshape(-1)
    base = pq_o * n_g
    n_le_hi = np.searchsorted(keys, srel_o + delta[pq_o] + shift[pq_o], side="right") - base
    n_lt_lo = np.searchsorted(keys, srel_o - delta[pq_o] + shift[pq_o], side="left") - base
    del keys
    above_o = n_g - n_le_hi
    band = np.flatnonzero(n_le_hi > n_lt_lo)
    if band.size:
        need, row_of = np.unique(pq_o[band], return_inverse=True)
        A = np.argsort(S[need], axis=1, kind="stable")
        cnt = (n_le_hi - n_lt_lo)[band]
        pos = np.repeat(n_lt_lo[band], cnt) + (np.arange(int(cnt.sum()))
                                              - np.repeat(np.cumsum(cnt) - cnt, cnt))
        k = np.repeat(band, cnt)
        cols = A[np.repeat(row_of.reshape(-1), cnt), pos]
        del A
        uc, ci = np.unique(cols, return_inverse=True)
        ew = _pair_dots(Q, pq_o[k], grows(uc), ci.reshape(-1))
        ur, ui = np.unique(pg_o[k], return_inverse=True)
        er = _pair_dots(Q, pq_o[k], grows(ur), ui.reshape(-1))
        above_o += np.bincount(k[ew >= er], minlength=M)
    above = np.empty(M, dtype=np.int64)
    above[order] = above_o
    return above


def row_source(x, name: str, normalized: bool):
    """Rows of ``x`` (an array, memory map or :class:`bridge.chunks.RowView`) read on
    demand, for :func:`rank_engine`: returns ``(n, dim, block(s, e), rows(idx))``, where
    ``block`` and ``rows`` give float32 rows ``s:e`` / ``idx``, L2-normalised unless
    ``normalized``, each read checked for NaN/inf (errors name ``name``)."""
    from .chunks import check_finite_rows, check_header, read_rows

    x = check_header(x, name)
    # the array whose memory a read may alias (a slice of an in-memory array is a view);
    # None where that cannot be known, and then every read is copied before scaling
    held = x if isinstance(x, np.ndarray) else getattr(x, "array", None)
    if not isinstance(held, np.ndarray):
        held = None

    def prep(raw, offset):
        raw = np.asarray(raw)
        x32 = np.ascontiguousarray(raw, dtype=np.float32)
        # float16/float32 keep NaN/inf through the cast (checked in float32, fast)
        check_finite_rows(raw if raw.dtype.itemsize > 4 else x32, name, offset)
        if normalized:
            return x32
        # a cast or a copied read (memory map, index array) is ours to scale in place
        owned = x32 is not raw or (held is not None and not np.may_share_memory(x32, held))
        return l2_normalize(x32, check=False, copy=not owned)

    def block(s, e):
        return prep(read_rows(x, slice(s, e)), s)

    def rows(idx):
        return prep(read_rows(x, idx), 0)

    return int(x.shape[0]), int(x.shape[1]), block, rows


def paired_sources(queries, gallery, normalized: bool):
    """:func:`row_source` of the queries and of the gallery, refused with
    :class:`DimensionMismatch` when their widths differ."""
    q = row_source(queries, "queries", normalized)
    g = row_source(gallery, "gallery", normalized)
    if q[1] != g[1]:
        raise DimensionMismatch(f"queries have dimension {q[1]} but the gallery has "
                                f"dimension {g[1]}")
    return q, g


def _ranks_csr(queries, gallery, relevant=None, block: int = 1024, normalized: bool = False,
               gallery_block: int | None = None, device=None):
    from .chunks import check_chunk_size

    block = check_chunk_size(block, "block")
    (nq, dq, qblock, _), (ng, _, gblock, grows) = paired_sources(queries, gallery, normalized)
    indptr, rows = relevance_csr(relevant, nq, ng)
    if nq and np.any(np.diff(indptr) == 0):
        i = int(np.flatnonzero(np.diff(indptr) == 0)[0])
        raise EmptyData(f"query {i} has no relevant gallery row")
    ranks = rank_engine(qblock, gblock, grows, nq, ng, dq, indptr, rows, block, gallery_block,
                        device=resolve_device(device))
    return indptr, ranks, ng


def ranks_of_relevant(queries, gallery, relevant=None, block: int = 1024,
                      normalized: bool = False, *, gallery_block: int | None = None,
                      device=None) -> list[np.ndarray]:
    """Exact 1-based ranks of every right gallery row, per query, best first.

    Counted inside the blocked product (see :func:`rank_engine`): queries go ``block`` at
    a time, the gallery streams in blocks normalised on the fly (``gallery_block`` rows,
    default: about two million scores a block), so working memory does not depend on the
    gallery size, and a memory-mapped (float16) gallery is read once per query block.
    A wrong row that scores the same as a right one counts as ranked above it.
    ``device`` (:func:`resolve_device`) runs the block products on a torch device; the
    ranks are the same on every device.
    """
    indptr, ranks, _ = _ranks_csr(queries, gallery, relevant, block, normalized, gallery_block,
                                  device)
    return np.split(ranks, indptr[1:-1])


def top1_hits(queries, gallery, q_labels, g_labels, normalized: bool = False) -> np.ndarray:
    """Whether each query's first right row has rank 1: R@1 per query, exactly as
    :func:`ranks_of_relevant` counts it, for relevance given by labels.

    Gallery row j is right for query i when ``g_labels[j] == q_labels[i]``. Query i is a
    hit when its best right row scores strictly above every wrong row (ties count
    against). Scores come from float32 products over blocks of queries; a query whose
    best right and best wrong scores lie within the product's rounding bound is decided
    on exact float64 scores of the rows concerned (:func:`_pair_dots`), so duplicates of a
    right row under another label always tie. Memory is bounded by the block size.
    """
    nq, dq, qblock, qrows = row_source(queries, "queries", normalized)
    ng, dg, gblock, grows = row_source(gallery, "gallery", normalized)
    if dq != dg:
        raise DimensionMismatch(f"queries have dimension {dq} but the gallery has "
                                f"dimension {dg}")
    ql, gl = np.asarray(q_labels), np.asarray(g_labels)
    if ql.shape != (nq,) or gl.shape != (ng,):
        raise DimensionMismatch(f"labels have shapes {ql.shape} and {gl.shape}; expected one "
                                f"label per query ({nq},) and per gallery row ({ng},)")
    _, inv = np.unique(np.concatenate([ql, gl]), return_inverse=True)
    qi, gi = inv[:nq].reshape(-1), inv[nq:].reshape(-1)
    if nq and not np.isin(qi, gi).all():
        i = int(np.flatnonzero(~np.isin(qi, gi))[0])
        raise EmptyData(f"query {i} has no relevant gallery row (label {ql[i]!r})")
    G = gblock(0, ng)
    gmax = _max_norm(G)
    b = max(1, min(1024, ENGINE_CELLS // max(ng, 1)))
    hits = np.zeros(nq, dtype=bool)
    for s in range(0, nq, b):
        e = min(nq, s + b)
        Q = qblock(s, e)
        S = Q @ G.T
        right = qi[s:e, None] == gi[None, :]
        best_r = np.where(right, S, -np.inf).max(axis=1)
        best_w = np.where(right, -np.inf, S).max(axis=1)
        bound = 2.0 * (dq + 2) * 2.0 ** -24 * _row_norms(Q) * gmax + 1e-30
        hits[s:e] = best_w < best_r - 2 * bound
        unsure = np.flatnonzero(np.abs(best_w - best_r) <= 2 * bound)
        for i in unsure:
            near = np.flatnonzero(S[i] >= best_r[i] - 2 * bound[i])
            exact = _pair_dots(Q, np.full(near.size, i), G, near)
            is_r = right[i, near]
            hits[s + i] = bool(is_r.any()) and (
                not (~is_r).any() or exact[is_r].max() > exact[~is_r].max())
    return hits


def metrics_from_csr(indptr: np.ndarray, ranks: np.ndarray, ks) -> dict:
    """:func:`metrics_from_ranks` on ranks in CSR form (no per-query arrays)."""
    n = indptr.shape[0] - 1
    if n == 0:
        raise EmptyData("no queries to score")
    m = np.diff(indptr)
    first = ranks[indptr[:-1]].astype(np.float64)
    hits = np.arange(ranks.shape[0]) - np.repeat(indptr[:-1], m) + 1
    r = ranks.astype(np.float64)
    contrib = np.where(np.isfinite(r), hits / r, 0.0)
    ap = np.add.reduceat(contrib, indptr[:-1]) / m
    med = float(np.median(first))
    out = {f"R@{k}": float(np.mean(first <= k)) for k in ks}
    out.update({
        "MRR": float(np.mean(1.0 / first)),
        "median_rank": med if math.isfinite(med) else None,
        "mAP": float(np.mean(ap)),
        "n_queries": int(n),
    })
    return out


def ranks_from_lists(rows: np.ndarray, rel: list[np.ndarray], scores=None) -> list[np.ndarray]:
    """Ranks of the right rows within returned top lists; rows not returned rank ``inf``.

    With the lists' ``scores``, ties count against the query as in the exact engine: a
    wrong returned row scoring the same as a right one ranks above it, whatever order the
    index returned them in. Without scores, the returned order is taken as the ranking.
    """
    out = []
    for i, (top, r) in enumerate(zip(rows, rel)):
        valid = top >= 0
        t = top[valid]
        is_rel = np.isin(t, r)
        if scores is None:
            found = np.flatnonzero(is_rel) + 1
        else:
            s = np.asarray(scores[i])[valid]
            rs = np.sort(s[is_rel])[::-1]
            wrong = np.sort(s[~is_rel])
            found = wrong.size - np.searchsorted(wrong, rs, side="left") + np.arange(1, rs.size + 1)
        ranks = np.full(r.size, np.inf)
        ranks[:found.size] = found
        out.append(ranks)
    return out


def metrics_from_ranks(ranks: list[np.ndarray], ks=(1, 5, 10)) -> dict:
    """R@K, MRR, median rank and mAP from per-query ranks of the right rows (best first).

    R@K: share of queries with a right row in the top K. MRR: mean of 1 / first right rank.
    Median rank: median first right rank. mAP: mean over queries of average precision over
    all right rows (equal to MRR when each query has one right row).
    """
    ks = check_ks(ks)
    if not ranks:
        raise EmptyData("no queries to score")
    indptr = np.zeros(len(ranks) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([np.size(r) for r in ranks])
    flat = np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1) for r in ranks])
    return metrics_from_csr(indptr, flat, ks)


def retrieval_metrics(queries, gallery, relevant=None, ks=(1, 5, 10), kind: str = "flat",
                      depth: int | None = None, block: int = 1024, *, scoring=None, bank=None,
                      device=None, **index_opts) -> dict:
    """Retrieve gallery rows for each query and score the ranking (see the module doc).

    ``kind="flat"`` ranks exactly; ``"hnsw"``/``"ivf"`` search the top ``depth`` rows
    (default ``max(100, max(ks))``) in a Faiss index. Returns R@K for each K in ``ks``,
    MRR, median rank, mAP, the query and gallery counts and the index kind.

    ``scoring`` other than cosine (``"csls"``, ``"csls:k=5"``, ``"qbnorm"``, a
    :class:`bridge.hubness.Scoring`) ranks by a hubness-corrected score and needs a
    ``bank``: rows of queries of the same kind that are not these queries (for a route, its
    own train or val rows translated along it), or a :class:`bridge.hubness.Adjustment`
    already computed for this gallery. The flat path ranks the adjusted scores exactly with
    the same engine and tie rule (the augmented rows of :func:`bridge.hubness.adjusted`);
    hnsw/ivf index the augmented gallery rows, so their candidates are chosen by the
    adjusted score itself (the bank statistics are exact either way). The result then also
    holds ``scoring`` and ``n_bank``. With cosine ``bank`` is ignored.

    ``device`` (:func:`resolve_device`): the flat path's block products run in torch on
    that device (the ranks do not depend on it); hnsw/ivf indexes are built for it by
    :func:`build_index`.
    """
    from .hubness import parse_scoring

    ks = check_ks(ks)
    check_index_options(kind, index_opts)
    depth = check_k(depth, "depth", allow_none=True)
    if depth is not None and depth < max(ks):
        raise InvalidParameter(f"parameter 'depth' must be at least max(ks) = {max(ks)}, "
                               f"got {depth}")
    block = check_k(block, "block")
    ks = tuple(int(k) for k in ks)
    dev = resolve_device(device)
    sc = parse_scoring(scoring)
    extra = {}
    normalized = False
    if not sc.is_cosine:
        from .hubness import adjusted

        queries, gallery, adj = adjusted(queries, gallery, bank, sc, block)
        normalized = True
        extra = {"scoring": str(sc), "n_bank": int(adj.n_bank)}
    if kind == "flat":
        # exact ranks counted while the gallery streams: no normalised copy of either side
        indptr, ranks, n_gallery = _ranks_csr(queries, gallery, relevant, block=block,
                                              normalized=normalized, device=dev)
        m = metrics_from_csr(indptr, ranks, ks)
        m.update({"n_gallery": int(n_gallery), "index": kind, **extra})
        return m
    if normalized:
        q = np.ascontiguousarray(queries[:], dtype=np.float32)
        g = np.ascontiguousarray(gallery[:], dtype=np.float32)
    else:
        q = normalize(queries, "queries")
        g = normalize(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise DimensionMismatch(f"queries have dimension {q.shape[1]} but the gallery has "
                                f"dimension {g.shape[1]}")
    rel = as_relevance(relevant, q.shape[0], g.shape[0])
    index = build_index(g, kind, normalized=True, device=dev, **index_opts)
    if normalized:
        scores, rows = index_search(index, q, depth or max(100, max(ks)))
    else:
        scores, rows = search(q, index, k=depth or max(100, max(ks)))
    ranks = ranks_from_lists(rows, rel, scores)
    m = metrics_from_ranks(ranks, ks)
    m.update({"n_gallery": int(g.shape[0]), "index": kind, **extra})
    return m


def bidirectional_metrics(a, b, relevant=None, ks=(1, 5, 10), *, bank=None,
                          reverse_bank=None, **kw) -> dict:
    """Retrieval both ways between paired sets ``a`` and ``b``: ``{"a->b": .., "b->a": ..}``.

    ``relevant`` is given for ``a`` as queries; the reverse relevance is derived from it.
    With a hubness-aware ``scoring`` each direction needs its own bank of queries of its
    own kind: ``bank`` (rows like ``a``) for ``a -> b``, ``reverse_bank`` (rows like ``b``)
    for ``b -> a``.
    """
    fwd = retrieval_metrics(a, b, relevant, ks=ks, bank=bank, **kw)
    kw["bank"] = reverse_bank
    na, nb = np.asarray(a).shape[0], np.asarray(b).shape[0]
    rel = as_relevance(relevant, na, nb)
    back = [[] for _ in range(nb)]
    for i, r in enumerate(rel):
        for j in r:
            back[int(j)].append(i)
    keep = np.array([len(x) > 0 for x in back])
    b_rows = np.flatnonzero(keep)
    rev = retrieval_metrics(np.asarray(b)[b_rows], a, [back[j] for j in b_rows], ks=ks, **kw)
    return {"a->b": fwd, "b->a": rev}


def recovery_ratio(bridged: dict, native: dict, keys=None) -> dict:
    """``bridged[key] / native[key]`` for the ranking metrics both hold (higher is better)."""
    keys = keys or [k for k in bridged if (k.startswith("R@") or k in ("MRR", "mAP"))
                    and k in native]
    return {k: (float(bridged[k]) / float(native[k]) if native[k] else float("nan"))
            for k in keys}
