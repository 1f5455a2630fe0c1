"""Row-chunked access to large (memory-mapped) arrays with bounded working memory.

Translation, retrieval and fusion read their inputs a block of rows at a time through the
helpers here, so the memory they use does not grow with the number of rows:

- :func:`check_header` validates rank, dtype and width of an array without reading its
  rows; :func:`check_finite_rows` validates one block, naming rows by their index in the
  whole array;
- :func:`read_rows` copies a block (a slice or row indices) into memory and, when the array
  is a read-only or shared memory map, hands the mapped pages of that block back to the
  operating system, so that streaming a file larger than memory does not grow the
  process's resident set (the file stays in the page cache); :func:`release_rows` does the
  same for rows just written to a shared (``"r+"``/``"w+"``) memory map, e.g. the ``out``
  of a translation kept on disk;
- :class:`RowView` is a lazy row subset of an array (a gallery of selected cache rows),
  read block by block.
"""

from __future__ import annotations

import mmap

import numpy as np

from .errors import InvalidParameter
from .store import check_embeddings, check_finite_rows  # noqa: F401  (re-exported)

__all__ = ["TRANSLATE_CHUNK", "check_header", "check_finite_rows", "read_rows", "release_rows",
           "RowView", "MappedRows", "materialize", "check_chunk_size", "column_stats", "lazy"]

#: rows per block when :meth:`bridge.ModalityGraph.translate` streams its input
TRANSLATE_CHUNK = 16384


def check_chunk_size(value, name: str = "chunk_size") -> int:
    """A positive integer number of rows, or :class:`InvalidParameter` naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or int(value) < 1:
        raise InvalidParameter(f"parameter {name!r} must be a positive integer (rows per "
                               f"block), got {value!r}")
    return int(value)


def _is_lazy(x) -> bool:
    return isinstance(x, RowView) or (hasattr(x, "shape") and hasattr(x, "__getitem__")
                                      and not isinstance(x, np.ndarray)
                                      and not hasattr(x, "detach"))


def check_header(x, name: str = "embeddings", dim: int | None = None):
    """``x`` checked for rank, row count, dtype and width, without reading all its rows.

    A numpy array (a memory map included) is returned as is (a 1-D row of width ``dim``
    becomes one row); only its first row is read, to validate the dtype. Anything else (a
    list, a tensor) is converted and validated completely by
    :func:`~bridge.store.check_embeddings`; a :class:`RowView` is checked through its
    underlying array. Finiteness of the other rows is left to :func:`check_finite_rows`.
    """
    if isinstance(x, RowView):
        if x.array.shape[0]:
            check_header(x.array[:1], name)
        check_embeddings(np.zeros((min(x.shape[0], 1), x.shape[1]), np.float32), name, dim)
        return x
    if not isinstance(x, np.ndarray):
        return check_embeddings(x, name, dim)
    if x.ndim == 1 and dim is not None and x.shape[0] == dim:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        return check_embeddings(x, name, dim)  # raises, naming the shape
    check_embeddings(np.asarray(x[:1]), name, dim)
    return x


#: numpy memory-map modes whose pages may be dropped from the resident set: read-only and
#: shared ones (written pages stay dirty in the page cache and reach the file)
_SHARED_MODES = ("r", "r+", "w+", "readonly", "readwrite", "write")


def _mapping(a):
    """The ``mmap.mmap`` behind a read-only or shared numpy memory map, else None."""
    if not isinstance(a, np.memmap) or getattr(a, "mode", None) not in _SHARED_MODES:
        return None
    b = a
    while isinstance(b, np.ndarray):
        b = b.base
    return b if isinstance(b, mmap.mmap) else None


def _release(a: np.ndarray, lo: int, hi: int) -> None:
    """Drop the mapped pages of rows ``lo:hi`` of memory map ``a`` from the resident set.

    Only for read-only and shared mappings, whose pages stay in the page cache (written
    pages included: the kernel keeps them dirty there until they reach the file); a private
    copy-on-write mapping would lose its changes, so it is left alone. Best effort.
    """
    mm = _mapping(a)
    if mm is None or hi <= lo or not hasattr(mm, "madvise"):
        return
    try:
        v = a[lo:hi]
        start = v.__array_interface__["data"][0]
        span = (hi - lo - 1) * abs(v.strides[0]) + v[-1:].nbytes if v.ndim else v.nbytes
        base = np.frombuffer(mm, dtype=np.uint8, count=1).__array_interface__["data"][0]
        off = start - base
        page = mmap.PAGESIZE
        a0 = max(0, (off // page) * page)
        a1 = min(len(mm), -(-(off + span) // page) * page)
        if a1 > a0:
            mm.madvise(mmap.MADV_DONTNEED, a0, a1 - a0)
    except (OSError, ValueError, TypeError, AttributeError, BufferError):
        pass


def release_rows(x, lo: int = 0, hi: int | None = None) -> None:
    """Hand the mapped pages under rows ``lo:hi`` (default: all) of the memory map ``x``
    back to the operating system, so that writing (or reading) a file larger than memory
    through ``x`` does not grow the process's resident set; the data stays in the page
    cache and, for rows written to a shared map (modes ``"r+"``, ``"w+"``), reaches the
    file. Anything but a read-only or shared :class:`numpy.memmap` is left alone.

    For example, to keep a translation of a cache larger than memory on disk::

        out = np.lib.format.open_memmap(path, "w+", np.float16, (n, dim))
        for s in range(0, n, step):
            graph.translate(x[s:s + step], route, out=out[s:s + step])
            release_rows(out, s, s + step)
    """
    if not isinstance(x, np.memmap) or x.ndim == 0:
        return
    n = int(x.shape[0])
    lo, hi, _ = slice(lo, n if hi is None else hi).indices(n)
    _release(x, lo, hi)


def read_rows(x, key) -> np.ndarray:
    """Rows ``key`` (a slice or an index array) of ``x`` as an in-memory array.

    When ``x`` is a memory map its pages under those rows are released afterwards (see
    :func:`_release`), so streaming a whole file keeps the resident set small.
    """
    if isinstance(x, RowView):
        return x[key]
    out = np.array(x[key], copy=True) if isinstance(x, np.memmap) else np.asarray(x[key])
    if isinstance(x, np.memmap):
        out = out.view(np.ndarray)
        if isinstance(key, slice):
            lo, hi, _ = key.indices(x.shape[0])
        else:
            k = np.asarray(key)
            lo, hi = (int(k.min()), int(k.max()) + 1) if k.size else (0, 0)
        _release(x, lo, hi)
    return out


def column_stats(x, chunk: int = 65536, name: str = "embeddings") -> dict:
    """Mean row (float64 sums, returned as float32), mean L2 norm and row count of the 2-D
    array ``x``, read ``chunk`` rows at a time (a memory map is streamed, never copied
    whole). An empty array raises :class:`~bridge.errors.EmptyData` naming ``name``."""
    from .errors import EmptyData

    n, d = int(x.shape[0]), int(x.shape[1])
    if n == 0:
        raise EmptyData(f"{name}: no rows to take statistics of")
    total, norms = np.zeros(d, np.float64), 0.0
    for lo in range(0, n, chunk):
        block = np.asarray(read_rows(x, slice(lo, min(n, lo + chunk))), dtype=np.float64)
        total += block.sum(0)
        norms += float(np.sqrt(np.einsum("ij,ij->i", block, block)).sum())
    return {"mean": (total / n).astype(np.float32), "mean_norm": norms / n, "n": n}


class RowView:
    """Rows ``rows`` of a 2-D array (often a memory-mapped cache), read on demand.

    Supports ``shape``, ``dtype``, ``len()`` and indexing by a slice or an index array
    (both return in-memory arrays); ``np.asarray(view)`` reads every row (a full copy).
    """

    def __init__(self, array, rows=None):
        self.array = array
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        n = array.shape[0] if self.rows is None else self.rows.shape[0]
        self.shape = (int(n), int(array.shape[1]))
        self.dtype = array.dtype
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if self.rows is None:
            return read_rows(self.array, key)
        return read_rows(self.array, self.rows[key])

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


class MappedRows(RowView):
    """Rows ``rows`` of ``array`` passed through ``fn`` (e.g. a translation) when read:
    ``fn`` maps an ``(n, d_in)`` block to an ``(n, dim)`` float32 block."""

    def __init__(self, array, rows, fn, dim: int):
        super().__init__(array, rows)
        self.fn = fn
        self.shape = (self.shape[0], int(dim))
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key):
        return np.asarray(self.fn(super().__getitem__(key)), dtype=np.float32)


def materialize(x, max_bytes: int = 1 << 25):
    """``x`` read into memory when it is a lazy view of at most ``max_bytes`` (float32),
    else ``x`` unchanged (so a view that is reused is computed once when it is small)."""
    if isinstance(x, RowView) and x.shape[0] * x.shape[1] * 4 <= max_bytes:
        return x[:]
    return x


def lazy(x) -> bool:
    """True for row sources that are read block by block rather than held in memory."""
    return _is_lazy(x)
