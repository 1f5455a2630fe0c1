"""Embedding caches: a node's vectors with their sample ids, pairing and splits.

A cache is ``ids`` (one string per row), ``emb`` (an ``(n, d)`` float16/float32 array,
memory-mapped when read from ``.npy``), optional ``groups`` (one string per row; rows of a
group always land in the same split) and ``meta`` (modality, language, encoder...).

On disk a cache is one of:

- a folder holding ``embeddings.npy`` (memory-mapped), ``ids.json`` and ``meta.json``
  (the format :func:`save_cache` writes by default);
- a ``.npy`` file, with ids from a sibling ``<name>.ids.json`` or ``<name>.ids.txt`` file
  (one id a line), else the row numbers ``"0" .. "n-1"``;
- a ``.npz`` file with arrays ``embeddings`` (or ``emb``) and ``ids`` (and optionally
  ``groups``);
- a ``.safetensors`` file with tensor ``embeddings`` and the ids, groups and meta as JSON
  in its metadata header;
- a table: ``.parquet``, ``.arrow``/``.ipc``/``.feather`` (memory-mapped) or a Hugging Face
  ``datasets`` ``save_to_disk`` folder, with an embedding column and an id column
  (read by :mod:`bridge.formats`; needs pyarrow, the ``parquet`` extra).

Every write goes to a temporary file first and is renamed into place, so an interrupted
save never leaves a half-written cache where a good one was. :class:`CacheWriter` writes a
cache folder a block of rows at a time, for caches larger than memory.

Large caches. Validation reads a memory-mapped cache a block at a time and hands the
mapped pages back to the operating system (:func:`bridge.chunks.read_rows`), so loading a
cache larger than memory does not grow the resident set. Id and group columns read from
byte-identical files (the same items embedded by two encoders) share their strings: the
second cache costs one pointer per row, not one string per row. :func:`pair_by_ids` joins
the id columns by their hashes, with no per-id dictionary.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tokenize
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import (
    BridgeError,
    CorruptFile,
    DimensionMismatch,
    EmptyData,
    InvalidEmbeddings,
    InvalidParameter,
    NoPairs,
)
from .files import atomic_dir, atomic_write_bytes, read_json, write_json

__all__ = [
    "Cache",
    "CacheWriter",
    "Pairs",
    "check_embeddings",
    "check_finite_rows",
    "load_cache",
    "save_cache",
    "pair_by_ids",
    "join_ids",
    "pair_table",
    "PairTable",
    "as_pair_table",
    "split_groups",
    "concat_caches",
]


# ---------------------------------------------------------------------------
# validation


def check_embeddings(x, name: str = "embeddings", dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a 2-D float array, or raise naming what is wrong with it.

    Accepts numpy arrays (memory maps stay memory maps: a float16/float32/float64 array
    is returned as is, never copied), torch tensors and nested sequences of numbers.
    Integer arrays are converted to float32. Refused with
    :class:`~bridge.errors.InvalidEmbeddings`: complex, boolean, object and string
    arrays, ragged sequences, zero columns and NaN/inf values;
    :class:`~bridge.errors.EmptyData`: zero rows; :class:`~bridge.errors.DimensionMismatch`:
    another rank than 2, or another width than ``dim``. Finiteness is checked
    :data:`CHECK_CHUNK_ROWS` rows at a time, so that validating a large memory-mapped
    array allocates no temporary of its size.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        x = (x.float() if str(getattr(x, "dtype", "")) == "torch.bfloat16" else x).numpy()
    if not isinstance(x, np.ndarray):  # keeps a memory map a memory map
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise InvalidEmbeddings(
                f"{name}: cannot be read as a 2-D array of numbers ({e}); expected rows of "
                "equal length holding numbers") from None
    if x.dtype == object:
        raise InvalidEmbeddings(
            f"{name}: expected a float array, got dtype object (ragged rows or non-numeric "
            "values); expected rows of equal length holding numbers")
    if x.dtype == np.bool_:
        raise InvalidEmbeddings(f"{name}: expected a float array, got dtype bool; convert it "
                                "explicitly (x.astype(np.float32)) if 0/1 values are meant")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise InvalidEmbeddings(
            f"{name}: expected a real float array, got complex dtype {x.dtype}; the imaginary "
            "part would be dropped; pass x.real (or np.abs(x)) explicitly")
    if x.ndim == 1 and dim is not None and x.shape[0] == dim:
        x = x[None, :]
    if x.ndim != 2:
        raise DimensionMismatch(
            f"{name}: expected a 2-D array (rows, dim), got shape {tuple(x.shape)}"
        )
    if not np.issubdtype(x.dtype, np.number):
        raise InvalidEmbeddings(f"{name}: expected a float array, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise EmptyData(f"{name}: expected at least one row, got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise InvalidEmbeddings(
            f"{name}: expected at least one column, got shape {tuple(x.shape)} (zero width)")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if dim is not None and x.shape[1] != dim:
        raise DimensionMismatch(f"{name}: expected dimension {dim}, got {x.shape[1]}")
    check_finite_rows(x, name)
    return x


def check_finite_rows(x: np.ndarray, name: str = "embeddings", offset: int = 0) -> None:
    """Raise :class:`InvalidEmbeddings` if a row of the 2-D float array ``x`` holds NaN or
    inf, naming up to ten such rows by ``offset`` + their index in ``x`` (so a block of a
    larger array names its rows in the whole array)."""
    bad = _nonfinite_rows(x)
    if bad.size:
        shown = ", ".join(str(int(b) + offset) for b in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise InvalidEmbeddings(
            f"{name}: {bad.size} row(s) hold NaN or inf values (rows {shown}); "
            "expected finite values in every row"
        )


#: rows per block when :func:`check_embeddings` scans an array for NaN/inf values
CHECK_CHUNK_ROWS = 65536


def _nonfinite_rows(x: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Indices of the rows of a 2-D float array holding NaN or inf, scanned in row blocks.

    A row's float64 sum is finite exactly when the row is (float16/float32 rows cannot
    overflow it), so a block is summed first and only a block with a non-finite sum is
    inspected element-wise. Working memory is a few rows' worth per block; a memory map's pages
    are handed back to the operating system after each block (:func:`_blocks`).
    """
    chunk = chunk or CHECK_CHUNK_ROWS
    out = []
    for s, block in _blocks(x, chunk):
        with np.errstate(over="ignore", invalid="ignore"):
            sums = block.sum(axis=1, dtype=np.float64)
        if np.isfinite(sums).all():
            continue
        rows = np.flatnonzero(~np.isfinite(sums))
        rows = rows[~np.isfinite(block[rows]).all(axis=1)]  # float64 overflow is not NaN
        out.append(rows + s)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _blocks(x, chunk: int):
    """``(start, rows start:start+chunk)`` of ``x`` in order, as views (nothing copied); a
    memory map's pages under a block are handed back to the operating system once the
    caller is done with it (:func:`bridge.chunks.release_rows`), so scanning a file
    larger than memory keeps the resident set small."""
    from .chunks import release_rows

    for s in range(0, x.shape[0], chunk):
        yield s, x[s:s + chunk]
        release_rows(x, s, s + chunk)


#: the largest finite float16 value
FLOAT16_MAX = float(np.finfo(np.float16).max)

#: dtypes a cache can be stored as
CACHE_DTYPES = ("float16", "float32")


def check_float16_range(x, name: str = "embeddings", chunk: int | None = None) -> None:
    """Refuse values that float16 cannot hold (they would be stored as inf).

    Raises :class:`~bridge.errors.InvalidEmbeddings` naming the largest ``|value|`` and the
    limit 65504. A value that rounds to 65504 (below 65520) is kept. Scans ``x`` in row
    blocks (no temporary of its size).
    """
    chunk = chunk or CHECK_CHUNK_ROWS
    top = 0.0
    for _, block in _blocks(x, chunk):
        if block.size:
            top = max(top, abs(float(block.max())), abs(float(block.min())))
    with np.errstate(over="ignore"):
        fits = bool(np.isfinite(np.float64(top).astype(np.float16)))
    if not fits:
        raise InvalidEmbeddings(
            f"{name}: largest |value| is {top:.6g}, over the float16 limit {FLOAT16_MAX:.0f}; "
            "it would be stored as inf; save with dtype='float32' or rescale the rows")


def check_cache_dtype(x, dtype, name: str = "embeddings") -> np.dtype:
    """The storage dtype of a cache (float16 or float32), checked against ``x``'s values."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in CACHE_DTYPES:
        raise InvalidParameter(
            f"parameter 'dtype' must be one of {list(CACHE_DTYPES)}, got {dtype!r}")
    if dt == np.float16 and x.dtype != np.float16:
        check_float16_range(x, name)
    return dt


def _as_str_array(values, name: str, n: int | None = None, what: str = "row") -> np.ndarray:
    """One string per entry of a 1-D sequence (ids, groups); non-strings become ``str(v)``.

    Refuses a scalar, a 2-D array and nested entries (:class:`DimensionMismatch`), and with
    ``n`` another length than ``n``.
    """
    if values is None or isinstance(values, (str, bytes, dict, set, frozenset)) or not (
            isinstance(values, np.ndarray) or hasattr(values, "__iter__")) or (
            isinstance(values, np.ndarray) and values.ndim == 0):
        raise InvalidParameter(
            f"{name}: expected a sequence of one id per {what}, got {type(values).__name__} "
            f"{str(values)[:40]!r}")
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise DimensionMismatch(
                f"{name}: expected a 1-D sequence of one id per {what}, got an array of shape "
                f"{values.shape}")
        if values.dtype.kind in "iuU":  # str() of each element, without a Python loop
            return _check_len(values.astype(str).astype(object), name, n, what)
        if values.dtype == object and all(type(v) is str for v in values):
            return _check_len(values.copy(), name, n, what)  # the same strings, new pointers
    out = []
    for v in values:
        if isinstance(v, (list, tuple, set, dict)) or (isinstance(v, np.ndarray) and v.ndim > 0):
            raise DimensionMismatch(
                f"{name}: expected one scalar id per {what}, got a nested "
                f"{type(v).__name__} {str(v)[:40]!r} at position {len(out)}")
        out.append(str(v))
    return _check_len(np.asarray(out, dtype=object).reshape(-1), name, n, what)


def _check_len(arr, name, n, what):
    if n is not None and arr.shape[0] != n:
        raise DimensionMismatch(
            f"{name}: got {arr.shape[0]} entries for {n} {what}s; expected one per {what}")
    return arr


# ---------------------------------------------------------------------------
# caches


@dataclass
class Cache:
    """A node's embeddings and the ids that say which rows pair with which."""

    ids: np.ndarray
    emb: np.ndarray
    meta: dict = field(default_factory=dict)
    groups: np.ndarray | None = None
    path: str | None = None

    def __post_init__(self):
        if self.meta is None:
            self.meta = {}
        if not isinstance(self.meta, dict):
            raise InvalidParameter(
                f"cache meta: expected a dict, got {type(self.meta).__name__} {self.meta!r:.60}")
        self.emb = check_embeddings(self.emb, name=str(self.meta.get("name", "cache")))
        self.ids = _as_str_array(self.ids, "ids")
        if self.ids.shape[0] != self.emb.shape[0]:
            raise DimensionMismatch(
                f"cache has {self.emb.shape[0]} embedding rows but {self.ids.shape[0]} ids; "
                "expected one id per row"
            )
        if self.groups is not None:
            self.groups = _as_str_array(self.groups, "groups")
            if self.groups.shape[0] != self.emb.shape[0]:
                raise DimensionMismatch(
                    f"cache has {self.emb.shape[0]} rows but {self.groups.shape[0]} groups"
                )
        self._index = None

    @classmethod
    def from_arrays(cls, emb, ids=None, meta=None, groups=None) -> "Cache":
        emb = check_embeddings(emb)
        if ids is None:
            ids = [str(i) for i in range(emb.shape[0])]
        return cls(ids=ids, emb=emb, meta=dict(meta or {}), groups=groups)

    def __len__(self) -> int:
        return int(self.emb.shape[0])

    @property
    def dim(self) -> int:
        return int(self.emb.shape[1])

    def index(self) -> dict[str, int]:
        """Map id -> first row holding it."""
        if self._index is None:
            idx: dict[str, int] = {}
            for i, k in enumerate(self.ids):
                idx.setdefault(k, i)
            self._index = idx
        return self._index

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        idx = self.index()
        missing = [k for k in ids if k not in idx]
        if missing:
            raise NoPairs(f"ids not in cache: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return np.array([idx[k] for k in ids], dtype=np.int64)

    def vectors(self, rows=None, dtype=np.float32) -> np.ndarray:
        x = self.emb if rows is None else self.emb[np.asarray(rows)]
        return np.asarray(x, dtype=dtype)

    def group_of_rows(self) -> np.ndarray:
        return self.groups if self.groups is not None else self.ids

    def subset(self, rows) -> "Cache":
        rows = np.asarray(rows)
        return Cache(
            ids=self.ids[rows],
            emb=np.asarray(self.emb[rows]),
            meta=dict(self.meta),
            groups=None if self.groups is None else self.groups[rows],
        )


def _ids_file_of(path: Path) -> Path | None:
    """The sibling ``<name>.ids.json`` / ``<name>.ids.txt`` of a ``.npy`` cache, if any."""
    for cand in (path.with_suffix(".ids.json"), path.with_suffix(".ids.txt")):
        if cand.exists():
            return cand
    return None


#: id and group columns read from files, by the files' size and digest, while a cache
#: still holds them (read-only object arrays; caches hold copies of the pointers)
_COLUMNS: "weakref.WeakValueDictionary[tuple, np.ndarray]" = weakref.WeakValueDictionary()


def _read_column(path: Path, n: int, label: str, what: str = "ids") -> np.ndarray:
    """A column of one string per row read from a JSON list (``.json``) or a text file of
    one value a line, as a read-only object array, checked by :func:`_check_column`.

    A file byte-identical to one whose column a live cache still holds returns that
    column, unparsed: paired caches of the same items (one per encoder) share their id
    strings. ``label`` names the file in errors (:class:`CorruptFile`).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise CorruptFile(f"{label} missing: {path}") from e
    except OSError as e:
        raise CorruptFile(f"{label} {path} cannot be read: {e}") from e
    key = (path.suffix == ".json", len(raw), hashlib.blake2b(raw, digest_size=16).digest())
    col = _COLUMNS.get(key)
    if col is not None and col.shape[0] == n:
        return col
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFile(f"{label} {path} cannot be read: {e}") from e
    del raw
    if path.suffix == ".json":
        try:
            values = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise CorruptFile(f"{label} {path} is not valid JSON: {e}") from e
    else:
        values = text.splitlines()
    del text
    values = _check_column(values, n, f"{path}: {what}", what)
    col = np.empty(len(values), dtype=object)
    col[:] = values
    del values
    col.flags.writeable = False
    _COLUMNS[key] = col
    return col


def _check_column(values, n: int, where: str, what: str = "ids") -> list[str]:
    """A column read from a cache file: a flat list of one scalar per row."""
    if not isinstance(values, list):
        raise CorruptFile(f"{where}: expected a list of {what} (one per row), got "
                          f"{type(values).__name__}")
    bad = next((k for k, v in enumerate(values)
                if not isinstance(v, (str, int)) or isinstance(v, bool)), None)
    if bad is not None:
        raise CorruptFile(f"{where}: entry {bad} is {values[bad]!r:.40}; expected one string "
                          f"per row")
    if len(values) != n:
        raise CorruptFile(f"{where}: {len(values)} {what} for {n} embedding rows; expected "
                          "one per row")
    return [str(v) for v in values]


def load_cache(path: str | os.PathLike, mmap: bool = True, *,
               embedding_column: str = "embedding", id_column: str | None = "id",
               groups_column: str | None = None, **meta) -> Cache:
    """Read a cache from a folder, ``.npy``, ``.npz`` or ``.safetensors`` file, or a table.

    Tables (:mod:`bridge.formats`, needs pyarrow): ``.parquet``, ``.arrow``/``.ipc``/``.feather``
    (memory-mapped), a ``datasets`` ``save_to_disk`` folder, or an in-memory
    ``datasets.Dataset``; ``embedding_column``, ``id_column`` (``None``: row numbers) and
    ``groups_column`` name their columns, and apply to tables only.
    Other keyword arguments are merged into the cache's ``meta`` (``modality="text"``...).
    Nothing is ever unpickled: ``.npy``/``.npz`` are read with ``allow_pickle=False``.
    Everything is checked here: a 2-D float array of finite values, one id (and group)
    per row, a ``meta`` object; anything else raises
    :class:`~bridge.errors.CorruptFile` naming the file and the field.
    """
    import zipfile
    import zlib

    from . import formats
    from .files import recover

    columns = dict(embedding_column=embedding_column, id_column=id_column,
                   groups_column=groups_column)
    if formats.is_dataset(path):
        return formats.from_dataset(path, **columns, **meta)
    p = Path(path)
    recover(p)
    if not p.exists():
        raise CorruptFile(f"cache not found: {p}")
    if formats.is_table_path(p):
        return formats.read_table_cache(p, mmap, **columns, **meta)
    if (embedding_column, id_column, groups_column) != ("embedding", "id", None):
        raise InvalidParameter(
            f"{p}: embedding_column, id_column and groups_column apply to Parquet/Arrow/"
            f"Feather files and datasets folders only; got {columns}")
    ids = groups = None
    m: dict = {}
    emb_file = ids_file = groups_file = meta_file = p
    try:
        if p.is_dir():
            emb_path = emb_file = p / "embeddings.npy"
            if not emb_path.exists():
                raise CorruptFile(f"cache folder {p} has no embeddings.npy")
            emb = np.load(emb_path, mmap_mode="r" if mmap else None, allow_pickle=False)
            ids_file, groups_file, meta_file = p / "ids.json", p / "groups.json", p / "meta.json"
            n = int(emb.shape[0]) if emb.ndim == 2 else 0
            if ids_file.exists() and emb.ndim == 2:  # another rank is refused below
                ids = _read_column(ids_file, n, "cache ids")
            if groups_file.exists() and emb.ndim == 2:
                groups = _read_column(groups_file, n, "cache groups", "groups")
            if meta_file.exists():
                m = read_json(meta_file, "cache meta")
        elif p.suffix == ".npy":
            emb = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
            found = _ids_file_of(p)
            if found is not None and emb.ndim == 2:
                ids_file = found
                ids = _read_column(found, int(emb.shape[0]), "ids file")
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                key = "embeddings" if "embeddings" in z else "emb" if "emb" in z else None
                if key is None:
                    raise CorruptFile(f"{p}: expected an array named 'embeddings', found {list(z)}")
                emb = z[key]
                for name in ("ids", "groups"):
                    if name in z and z[name].ndim != 1:
                        raise CorruptFile(f"{p}: array {name!r} has shape {z[name].shape}; "
                                          "expected one entry per row (1-D)")
                ids = _npz_strings(z, "ids", p)
                groups = _npz_strings(z, "groups", p)
        elif p.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.numpy import load_file
            from safetensors import safe_open

            try:
                tensors = load_file(str(p))
                with safe_open(str(p), framework="np") as fh:
                    header = fh.metadata() or {}
            except SafetensorError as e:
                raise CorruptFile(f"{p}: not a readable safetensors cache ({e})") from e
            if "embeddings" not in tensors:
                raise CorruptFile(f"{p}: expected a tensor named 'embeddings', found "
                                  f"{sorted(tensors)}")
            emb = tensors["embeddings"]
            for name in ("ids", "groups", "meta"):
                if name in header:
                    try:
                        val = json.loads(header[name], parse_constant=_no_constant)
                    except (ValueError, RecursionError) as e:
                        raise CorruptFile(f"{p}: header field {name!r} is not valid JSON: {e}") from e
                    if name == "ids":
                        ids = val
                    elif name == "groups":
                        groups = val
                    else:
                        m = val
        else:
            raise CorruptFile(
                f"unknown cache format {p.suffix!r} for {p}; expected a folder, "
                ".npy, .npz, .safetensors, .parquet, .arrow, .ipc or .feather"
            )
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError,
            SyntaxError, tokenize.TokenError) as e:  # numpy parses .npy headers as Python literals
        if isinstance(e, CorruptFile):
            raise
        raise CorruptFile(f"{p}: cannot read cache ({e})") from e
    if not isinstance(emb, np.ndarray) or emb.ndim != 2:
        raise CorruptFile(f"{emb_file}: embeddings have shape {getattr(emb, 'shape', '?')}; "
                          "expected a 2-D array (rows, dim)")
    if emb.dtype.kind not in "fiu":
        raise CorruptFile(f"{emb_file}: embeddings have dtype {emb.dtype}; expected floats")
    n = int(emb.shape[0])
    if not isinstance(m, dict):
        raise CorruptFile(f"{meta_file}: meta: expected an object, got {type(m).__name__}")
    columns = [c for c in (ids, groups) if isinstance(c, np.ndarray)]  # read by _read_column
    if ids is not None and not isinstance(ids, np.ndarray):
        ids = _check_column(ids, n, f"{ids_file}: ids")
    if groups is not None and not isinstance(groups, np.ndarray):
        groups = _check_column(groups, n, f"{groups_file}: groups", "groups")
    m.update(meta)
    m.setdefault("name", p.stem if not p.is_dir() else p.name)
    if ids is None:
        ids = [str(i) for i in range(n)]
    try:
        cache = Cache(ids=ids, emb=emb, meta=m, groups=groups, path=str(p))
    except BridgeError as e:
        raise CorruptFile(f"{emb_file}: {e}") from e
    cache._columns = tuple(columns)  # keeps the shared columns alive while the cache lives
    return cache


def _no_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _encoder_of(meta) -> tuple:
    meta = meta if isinstance(meta, dict) else {}
    return meta.get("encoder"), meta.get("model")


def check_same_encoder(path: str | os.PathLike, meta: dict, overwrite: bool = False) -> None:
    """Refuse to replace the cache at ``path`` by one of another encoder.

    A finished cache is replaced only by one whose ``meta`` names the same ``encoder``
    (and the same ``model`` where both name one); otherwise
    :class:`~bridge.errors.FolderExists`, unless ``overwrite=True``.
    """
    from .errors import FolderExists
    from .files import folder_kind

    p = Path(path)
    if overwrite or not p.exists():
        return
    if p.is_dir():
        if folder_kind(p) != "cache":
            return
        try:
            old = json.loads((p / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
    elif p.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(p), framework="np") as fh:
                old = json.loads((fh.metadata() or {}).get("meta", "{}"))
        except Exception:  # an unreadable file holds no encoder to protect  # noqa: BLE001
            old = {}
    else:
        return
    (ea, ma), (eb, mb) = _encoder_of(old), _encoder_of(meta)
    if ea != eb or (ma is not None and mb is not None and ma != mb):
        was = f"{ea!r}" + (f" (model {ma!r})" if ma else "")
        now = f"{eb!r}" + (f" (model {mb!r})" if mb else "")
        raise FolderExists(f"{p} holds a cache of encoder {was}; refusing to replace it with "
                           f"one of encoder {now} (pass overwrite=True / --overwrite, or "
                           "choose another path)")


def _json_bytes(values: list[str]) -> np.ndarray:
    return np.frombuffer(json.dumps(values, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def _npz_strings(z, name: str, path) -> list | None:
    """Column ``name`` of an ``.npz`` cache: the exact JSON copy when present, else the
    numpy string array; ``None`` when the file has neither."""
    key = f"{name}_json"
    if key in z:
        raw = z[key]
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise CorruptFile(f"{path}: array {key!r} must be 1-D uint8 (UTF-8 JSON), got "
                              f"{raw.dtype} of shape {raw.shape}")
        try:
            values = json.loads(raw.tobytes().decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise CorruptFile(f"{path}: array {key!r} is not UTF-8 JSON: {e}") from e
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise CorruptFile(f"{path}: array {key!r} must hold a JSON list of strings")
        return values
    return z[name].tolist() if name in z else None


def save_cache(path: str | os.PathLike, cache: Cache, dtype="float16",
               overwrite: bool = False) -> Path:
    """Write ``cache`` atomically: ``.npz`` and ``.safetensors`` paths are single files,
    any other path is a cache folder.

    An existing cache is replaced only by one of the same encoder (see
    :func:`check_same_encoder`); a folder that holds anything else than a cache (or is
    not empty) and a folder where a cache file should go are refused with
    :class:`~bridge.errors.FolderExists` unless ``overwrite=True``.
    """
    from .errors import FolderExists
    from .files import dumps_json

    p = Path(path)
    dtype = check_cache_dtype(cache.emb, dtype, str(cache.meta.get("name", p.name)))
    emb = np.ascontiguousarray(np.asarray(cache.emb, dtype=dtype))
    ids = [str(v) for v in cache.ids]
    groups = None if cache.groups is None else [str(v) for v in cache.groups]
    single = p.suffix in (".npz", ".safetensors")
    if single and p.is_dir() and not overwrite:
        raise FolderExists(f"{p} is a folder; refusing to replace it with a cache file (pass "
                           "overwrite=True / --overwrite, or choose another path)")
    if single and p.is_dir():
        import shutil

        shutil.rmtree(p)
    if p.suffix == ".npz":
        import io

        buf = io.BytesIO()
        # "ids"/"groups" as numpy strings for other readers; the exact strings (numpy
        # strings drop trailing NUL characters) as UTF-8 JSON in "ids_json"/"groups_json"
        arrays = {"embeddings": emb, "ids": np.asarray(ids, dtype=str),
                  "ids_json": _json_bytes(ids)}
        if groups is not None:
            arrays["groups"] = np.asarray(groups, dtype=str)
            arrays["groups_json"] = _json_bytes(groups)
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(p, buf.getvalue(), clean=True)
    elif p.suffix == ".safetensors":
        from safetensors.numpy import save

        check_same_encoder(p, cache.meta, overwrite)
        header = {"ids": dumps_json(ids, None), "meta": dumps_json(cache.meta, None)}
        if groups is not None:
            header["groups"] = dumps_json(groups, None)
        atomic_write_bytes(p, save({"embeddings": emb}, metadata=header), clean=True)
    else:  # any other name is a cache folder ("en.minilm" included)
        with atomic_dir(p, kind="cache", overwrite=overwrite) as tmp:
            check_same_encoder(p, cache.meta, overwrite)
            np.save(tmp / "embeddings.npy", emb, allow_pickle=False)
            write_json(tmp / "ids.json", ids)
            write_json(tmp / "meta.json", cache.meta)
            if groups is not None:
                write_json(tmp / "groups.json", groups)
    return p


class CacheWriter:
    """Write a cache folder a block of rows at a time (a cache larger than memory).

    ``rows`` x ``dim`` embeddings stored as ``dtype`` (float16 or float32), with ``ids``
    (one per row; ``None``: the row numbers, and no ``ids.json`` is written), optional
    ``groups`` and ``meta``; the folder is the one :func:`save_cache` writes, read back by
    :func:`load_cache` (memory-mapped)::

        with CacheWriter("big/x", rows=n, dim=384, ids=ids) as w:
            for block in blocks:   # (m, 384) arrays, in row order
                w.append(block)

    Each block is validated like a cache's rows (finite; within the float16 range for a
    float16 cache) and written to a memory-mapped ``embeddings.npy``, whose pages are then
    handed back to the operating system, so the resident set stays at about one block.
    The folder is built beside ``path`` and swapped in when the block ends with all
    ``rows`` written (see :class:`bridge.files.atomic_dir`); an exception, or fewer rows
    than announced, leaves ``path`` as it was. Replacing a folder follows
    :func:`save_cache` (same encoder, else ``overwrite=True``).
    """

    def __init__(self, path: str | os.PathLike, rows: int, dim: int, ids=None,
                 dtype="float16", meta: dict | None = None, groups=None,
                 overwrite: bool = False):
        for name, v in (("rows", rows), ("dim", dim)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InvalidParameter(f"parameter {name!r} must be a positive integer, "
                                       f"got {v!r}")
        self.path, self.rows, self.dim = Path(path), int(rows), int(dim)
        self.dtype = check_cache_dtype(np.zeros((1, 1), np.float16), dtype)
        if meta is not None and not isinstance(meta, dict):
            raise InvalidParameter(f"parameter 'meta' must be a dict, got "
                                   f"{type(meta).__name__} {meta!r:.60}")
        self.meta = dict(meta or {})
        self.meta.setdefault("name", self.path.name)
        self.ids = None if ids is None else _as_str_array(ids, "ids", self.rows)
        self.groups = None if groups is None else _as_str_array(groups, "groups", self.rows,
                                                                "row")
        self.overwrite = overwrite
        self.written = 0
        self._dir = self._emb = None

    def __enter__(self) -> "CacheWriter":
        self._dir = atomic_dir(self.path, kind="cache", overwrite=self.overwrite)
        tmp = self._dir.__enter__()
        try:
            check_same_encoder(self.path, self.meta, self.overwrite)
            self._emb = np.lib.format.open_memmap(tmp / "embeddings.npy", "w+", self.dtype,
                                                  (self.rows, self.dim))
            if self.ids is not None:
                write_json(tmp / "ids.json", self.ids)
            write_json(tmp / "meta.json", self.meta)
            if self.groups is not None:
                write_json(tmp / "groups.json", self.groups)
        except BaseException:
            self._close()
            self._dir.__exit__(*sys.exc_info())  # removes the temporary folder
            raise
        return self

    def append(self, block) -> int:
        """Write ``block`` (``(m, dim)`` rows) after the rows written so far; returns the
        number of rows written. Raises :class:`DimensionMismatch` for another width or more
        rows than announced, :class:`InvalidEmbeddings` for NaN/inf or (float16) values
        over 65504, naming the rows by their place in the cache."""
        if self._emb is None:
            raise BridgeError("CacheWriter.append: the writer is not open; use it as "
                              "'with CacheWriter(...) as w: w.append(block)'")
        lo = self.written
        name = f"{self.meta['name']} rows {lo}.."
        x = _checked_block(block, name, self.dim)
        if lo + x.shape[0] > self.rows:
            raise DimensionMismatch(f"{self.path}: block of {x.shape[0]} rows after {lo} "
                                    f"would exceed the announced {self.rows} rows")
        check_finite_rows(x, str(self.meta["name"]), lo)
        if self.dtype == np.float16 and x.dtype != np.float16:
            check_float16_range(x, name)
        self._emb[lo:lo + x.shape[0]] = x
        from .chunks import release_rows

        release_rows(self._emb, lo, lo + x.shape[0])
        self.written = lo + int(x.shape[0])
        return self.written

    def _close(self) -> None:
        if self._emb is not None:
            self._emb.flush()
            self._emb = None  # the mapping closes with its last array

    def __exit__(self, exc_type, exc, tb):
        self._close()
        if exc_type is None and self.written != self.rows:
            err = DimensionMismatch(f"{self.path}: {self.written} rows written of the "
                                    f"announced {self.rows}; the cache was not saved")
            self._dir.__exit__(DimensionMismatch, err, None)  # removes the temporary folder
            raise err
        return self._dir.__exit__(exc_type, exc, tb)


def _checked_block(x, name: str, dim: int):
    """A block for :meth:`CacheWriter.append`: a 2-D array of width ``dim`` with at least
    one row (rank, dtype and width checked without reading its values, see
    :func:`bridge.chunks.check_header`)."""
    from .chunks import check_header

    return check_header(x, name, dim)


def concat_caches(caches: Sequence[Cache], prefixes: Sequence[str]) -> Cache:
    """Stack caches into one, ids and groups prefixed ``"<prefix>:"`` per source.

    The usual use is one cache per predefined split (``prefixes=["train", "val",
    "test"]``), so that ``splits="prefix"`` in :meth:`ModalityGraph.connect` keeps them.
    """
    caches, prefixes = list(caches), list(prefixes)
    if len(caches) != len(prefixes):
        raise InvalidParameter(
            f"got {len(caches)} caches but {len(prefixes)} prefixes; expected one each")
    if not caches:
        raise EmptyData("concat_caches: expected at least one cache, got none")
    bad = [c for c in caches if not isinstance(c, Cache)]
    if bad:
        raise InvalidParameter(f"concat_caches: expected Cache objects, got {type(bad[0]).__name__}")
    if len(set(map(str, prefixes))) != len(prefixes):
        raise InvalidParameter(f"concat_caches: prefixes must be distinct, got {prefixes}")
    dims = {c.dim for c in caches}
    if len(dims) != 1:
        raise DimensionMismatch(f"caches to stack have different dimensions: {sorted(dims)}")
    ids = np.concatenate([[f"{p}:{i}" for i in c.ids] for c, p in zip(caches, prefixes)])
    groups = np.concatenate([[f"{p}:{g}" for g in c.group_of_rows()] for c, p in zip(caches, prefixes)])
    emb = np.concatenate([np.asarray(c.emb) for c in caches])
    return Cache(ids=ids, emb=emb, meta=dict(caches[0].meta), groups=groups)


# ---------------------------------------------------------------------------
# pairs and splits


@dataclass
class Pairs:
    """Rows ``a_rows[i]`` of node A pair with rows ``b_rows[i]`` of node B.

    ``groups[i]`` names the unit that must stay in one split (an image and its five
    captions; a speaker; a digit class when pairing is by class).
    """

    a_rows: np.ndarray
    b_rows: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return int(self.a_rows.shape[0])

    def take(self, mask_or_idx) -> "Pairs":
        return Pairs(self.a_rows[mask_or_idx], self.b_rows[mask_or_idx], self.groups[mask_or_idx])

    def reversed(self) -> "Pairs":
        return Pairs(self.b_rows, self.a_rows, self.groups)

    def unique_a(self) -> tuple[np.ndarray, np.ndarray]:
        """Unique rows of A and, for each pair, the position of its A row in that list."""
        return np.unique(self.a_rows, return_inverse=True)


def pair_by_ids(a: Cache, b: Cache, groups: str = "a") -> Pairs:
    """Pair the rows of ``a`` and ``b`` that carry the same id.

    Ids repeated in one cache pair with every row of the same id in the other (many to
    many). ``groups`` picks which cache's ``groups`` column keeps pairs together
    (``"a"`` or ``"b"``); without one, the shared id is the group.
    """
    _check_group_side(groups)
    ar, br = join_ids(a.ids, b.ids)
    if not ar.size:
        raise NoPairs(
            f"caches {a.meta.get('name', '?')!r} and {b.meta.get('name', '?')!r} share no ids "
            f"(first ids: {list(a.ids[:3])} vs {list(b.ids[:3])}); pass a pair table instead"
        )
    return Pairs(ar, br, _pair_groups(a, b, ar, br, groups))


def _hashes(ids: np.ndarray) -> np.ndarray:
    return np.fromiter(map(hash, ids), dtype=np.int64, count=ids.shape[0])


def join_ids(a_ids: np.ndarray, b_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(i, j)`` with ``a_ids[i] == b_ids[j]``, ordered by ``i`` then ``j``, as two
    int64 arrays.

    Ids are matched through their hashes (sorted, then searched), and every candidate
    pair is confirmed by comparing the strings, so working memory is a few integers per
    row (no dictionary of ids). Two equal columns of distinct ids (the usual paired
    caches) pair row ``i`` with row ``i`` after one comparison pass.
    """
    na, nb = int(a_ids.shape[0]), int(b_ids.shape[0])
    if na == 0 or nb == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    hb = _hashes(b_ids)
    if a_ids is b_ids or (na == nb and bool((a_ids == b_ids).all())):
        s = np.sort(hb)
        if not (s[1:] == s[:-1]).any():  # distinct hashes: distinct ids
            rows = np.arange(na, dtype=np.int64)
            return rows, rows.copy()
        del s
    order = np.argsort(hb, kind="stable")  # equal hashes keep b's row order
    hb = hb[order]
    ha = _hashes(a_ids)
    lo = np.searchsorted(hb, ha, "left")
    count = np.searchsorted(hb, ha, "right") - lo
    del ha, hb
    ar = np.repeat(np.arange(na, dtype=np.int64), count)
    start = np.repeat(lo - (np.cumsum(count) - count), count)
    br = order[start + np.arange(ar.size, dtype=np.int64)]
    del order, start, lo, count
    same = a_ids[ar] == b_ids[br]  # a hash shared by different ids is no match
    if not same.all():
        ar, br = ar[same], br[same]
    return ar, br


def _check_group_side(groups) -> None:
    if not isinstance(groups, str) or groups not in ("a", "b"):
        raise InvalidParameter(f"parameter 'groups' must be 'a' or 'b' (the cache whose groups "
                               f"keep pairs together), got {groups!r}")


def _pair_groups(a: Cache, b: Cache, ar, br, which: str) -> np.ndarray:
    if which == "b" and b.groups is not None:
        return b.groups[br]
    if a.groups is not None:
        return a.groups[ar]
    if b.groups is not None:
        return b.groups[br]
    return a.ids[ar]


@dataclass
class PairTable:
    """An explicit pairing of ids of node A with ids of node B (many to many).

    ``a_ids[i]`` pairs with ``b_ids[i]``; ``groups[i]`` (optional) names the unit that must
    stay in one split. Ids are looked up among every row that carries them, so
    ``("digit:3", "num:3")`` pairs one image class with every row of that number.
    """

    a_ids: np.ndarray
    b_ids: np.ndarray
    groups: np.ndarray | None = None

    def __post_init__(self):
        self.a_ids = _as_str_array(self.a_ids, "a_ids")
        self.b_ids = _as_str_array(self.b_ids, "b_ids")
        if self.a_ids.ndim != 1 or self.a_ids.shape != self.b_ids.shape:
            raise DimensionMismatch(
                f"a pair table needs two equal-length id columns, got {self.a_ids.shape[0]} "
                f"and {self.b_ids.shape[0]} ids")
        if self.groups is not None:
            self.groups = _as_str_array(self.groups, "groups")
            if self.groups.shape != self.a_ids.shape:
                raise DimensionMismatch(f"pair table has {self.a_ids.shape[0]} pairs but "
                                        f"{self.groups.shape[0]} groups")

    def __len__(self) -> int:
        return int(self.a_ids.shape[0])

    @classmethod
    def from_pairs(cls, pairs, groups=None) -> "PairTable":
        """From a sequence of ``(id_a, id_b)`` tuples."""
        if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__iter__"):
            raise InvalidParameter(f"expected a sequence of (id_a, id_b) pairs, got "
                                   f"{type(pairs).__name__} {str(pairs)[:40]!r}")
        pairs = list(pairs)
        bad = [p for p in pairs
               if not isinstance(p, (tuple, list, np.ndarray)) or len(p) != 2]
        if bad:
            raise DimensionMismatch(f"expected (id_a, id_b) pairs, got {bad[0]!r}")
        return cls([p[0] for p in pairs], [p[1] for p in pairs], groups)

    @classmethod
    def read(cls, path) -> "PairTable":
        """From a two-column CSV (or ``.tsv``) file, one pair a line."""
        return cls.from_pairs(_read_pair_file(Path(path)))

    def reversed(self) -> "PairTable":
        return PairTable(self.b_ids, self.a_ids, self.groups)

    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.a_ids.tolist(), self.b_ids.tolist()))


def as_pair_table(table) -> PairTable:
    """A :class:`PairTable` from a table, a list of ``(id_a, id_b)`` or a CSV/TSV path."""
    if isinstance(table, PairTable):
        return table
    if isinstance(table, (str, os.PathLike)):
        return PairTable.read(table)
    return PairTable.from_pairs(table)


def pair_table(
    a: Cache,
    b: Cache,
    table: "PairTable | Sequence[tuple[str, str]] | str | os.PathLike",
    groups: str = "a",
) -> Pairs:
    """Pair rows through an explicit table of ``(id_in_a, id_in_b)`` pairs.

    Each id is looked up among every row that carries it, so ``("digit-3", "3")`` pairs one
    class with all of its clips. ``table`` may also be a path to a CSV/TSV file with two
    columns (a header line is skipped when its values are not ids of either cache).
    """
    _check_group_side(groups)
    table = as_pair_table(table).pairs()
    a_index: dict[str, list[int]] = {}
    for i, k in enumerate(a.ids):
        a_index.setdefault(k, []).append(i)
    b_index: dict[str, list[int]] = {}
    for j, k in enumerate(b.ids):
        b_index.setdefault(k, []).append(j)
    ar, br, unknown = [], [], []
    for ka, kb in table:
        ka, kb = str(ka), str(kb)
        ia, jb = a_index.get(ka), b_index.get(kb)
        if ia is None or jb is None:
            unknown.append((ka, kb))
            continue
        for i in ia:
            for j in jb:
                ar.append(i)
                br.append(j)
    if unknown and not ar:
        raise NoPairs(
            f"none of the {len(unknown)} pair(s) in the table match ids of both caches; "
            f"first unmatched: {unknown[:3]}"
        )
    if not ar:
        raise NoPairs("the pair table is empty")
    ar = np.asarray(ar, dtype=np.int64)
    br = np.asarray(br, dtype=np.int64)
    return Pairs(ar, br, _pair_groups(a, b, ar, br, groups))


def _read_pair_file(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        raise CorruptFile(f"pair table not found: {path}")
    sep = "\t" if path.suffix in (".tsv", ".tab") else ","
    rows = []
    for n, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) < 2:
            raise CorruptFile(f"{path}:{n + 1}: expected two columns separated by {sep!r}")
        rows.append((parts[0].strip(), parts[1].strip()))
    return rows


def _group_hash(groups: np.ndarray, seed: int) -> np.ndarray:
    """A stable uniform number in [0, 1) per group name, the same in every process."""
    import hashlib

    out = np.empty(groups.shape[0], dtype=np.float64)
    salt = f"{seed}:".encode()
    for i, g in enumerate(groups):
        h = hashlib.blake2b(salt + g.encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "big") / 2.0**64
    return out


def check_fractions(fractions) -> np.ndarray:
    """``(train, val, test)`` as three finite non-negative floats summing to 1."""
    ok = isinstance(fractions, (tuple, list, np.ndarray)) and len(fractions) == 3 and all(
        isinstance(f, (int, float, np.integer, np.floating)) and not isinstance(f, (bool, np.bool_))
        for f in fractions)
    fr = np.asarray(fractions, dtype=float) if ok else None
    if fr is None or not np.isfinite(fr).all() or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise InvalidParameter(
            f"parameter 'fractions' must be three non-negative numbers (train, val, test) "
            f"summing to 1, got {fractions!r}")
    return fr


def split_groups(
    groups: Sequence[str] | np.ndarray,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split row indices into train/val/test by group, deterministically for a seed.

    Every row of one group lands in the same split. The split of a group depends only on
    its name and the seed (a stable hash), so two edges that share group names agree on
    which groups are held out: test rows of one edge are never training rows of another,
    and multi-hop evaluation on test rows is clean. When there are at least three groups,
    no split with a non-zero fraction is empty. Returns index arrays keyed ``"train"``, ``"val"``, ``"test"``.
    """
    fr = check_fractions(fractions)
    if isinstance(groups, (str, bytes)) or np.ndim(groups) != 1:
        raise DimensionMismatch(
            f"groups: expected a 1-D sequence of one group per row, got "
            f"{'a string' if isinstance(groups, (str, bytes)) else f'shape {np.shape(groups)}'}")
    # an object array of Python strings: a numpy "U" array would drop trailing NUL
    # characters and merge groups whose names differ only by them
    groups = np.asarray([str(g) for g in groups], dtype=object)
    if groups.shape[0] == 0:
        raise EmptyData("cannot split zero rows")
    uniq, inv = np.unique(groups, return_inverse=True)
    u = _group_hash(uniq, seed)
    s = np.where(u < fr[0], 0, np.where(u < fr[0] + fr[1], 1, 2)).astype(np.int8)
    if uniq.shape[0] >= 3:
        for split in (2, 1, 0):
            if fr[split] > 0 and not (s == split).any():
                donor = np.argmax(np.bincount(s, minlength=3))
                cand = np.flatnonzero(s == donor)
                s[cand[np.argmax(u[cand])]] = split
    rows = s[inv]
    return {
        "train": np.flatnonzero(rows == 0),
        "val": np.flatnonzero(rows == 1),
        "test": np.flatnonzero(rows == 2),
    }
