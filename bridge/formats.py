"""Caches from table formats: Parquet, Arrow IPC / Feather and Hugging Face ``datasets``.

A table holds one row per sample: an embedding column (a fixed-size list of numbers, or a
list column whose rows all have the same length), an id column and optionally a groups
column. :func:`bridge.store.load_cache` reads these files through this module:

- ``.arrow`` / ``.ipc`` (Arrow IPC, file or stream format) and ``.feather`` are memory-mapped
  (``pyarrow.memory_map``): an uncompressed embedding column held in one record batch
  becomes an ``(n, d)`` numpy view of the mapped file, without a copy; a column split over
  several record batches (or files) is gathered into one array in memory, and a compressed
  file (the ``write_feather`` default, lz4) is decompressed into memory;
- ``.parquet`` is read into memory (only the columns asked for);
- a folder written by ``datasets.Dataset.save_to_disk`` (``state.json`` and
  ``data-*.arrow``) is read with pyarrow, memory-mapped, without importing ``datasets``;
- an in-memory ``datasets.Dataset`` (anything with ``column_names`` and
  ``with_format("numpy")``) is read through its numpy formatting (:func:`from_dataset`).

pyarrow is an optional dependency (the ``parquet`` extra); the error raised without it names
the extra to install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CorruptFile, InvalidEmbeddings, InvalidParameter

__all__ = ["TABLE_SUFFIXES", "TABLE_FORMATS", "COLUMN_KEYS", "TABLE_META",
           "is_table_path", "is_hf_folder",
           "table_format", "table_reference", "read_table_cache", "is_dataset", "from_dataset"]

#: file suffixes read as tables (``.arrow``/``.ipc``/``.feather`` memory-mapped)
TABLE_SUFFIXES = (".parquet", ".arrow", ".ipc", ".feather")
#: the format names :func:`table_format` gives (``hf-datasets``: a ``save_to_disk`` folder)
TABLE_FORMATS = ("parquet", "arrow", "feather", "hf-datasets")
#: the keyword arguments of :func:`read_table_cache` that name its columns
COLUMN_KEYS = ("embedding_column", "id_column", "groups_column")
#: the ``meta`` entry of a cache read from a table: its format and the columns it was read from
TABLE_META = "table"


def _pyarrow():
    try:
        import pyarrow
    except ImportError as e:  # pragma: no cover - pyarrow is in the test extra
        raise InvalidParameter(
            "reading Parquet/Arrow/Hugging Face caches needs pyarrow: "
            "pip install 'modality-bridge[parquet]'") from e
    return pyarrow


def is_hf_folder(p: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` (or a ``DatasetDict`` of them)."""
    return p.is_dir() and not (p / "embeddings.npy").exists() and (
        (p / "state.json").exists() or (p / "dataset_dict.json").exists()
        or any(p.glob("data-*.arrow")))


def is_table_path(p: Path) -> bool:
    """Whether :func:`read_table_cache` reads ``p`` (a table file or a datasets folder)."""
    return (p.suffix.lower() in TABLE_SUFFIXES and not p.is_dir()) or is_hf_folder(p)


def table_format(p: Path) -> str:
    """The format name (one of :data:`TABLE_FORMATS`) of a table path, by its suffix: a
    path without a table suffix is a ``datasets`` folder."""
    suffix = Path(p).suffix.lower()
    if suffix in (".arrow", ".ipc"):
        return "arrow"
    return suffix[1:] if suffix in TABLE_SUFFIXES else "hf-datasets"


def table_reference(cache) -> dict | None:
    """How to read ``cache`` again from its file, when it was read from a table:
    ``{"format": ..., "columns": {"embedding_column": ..., "id_column": ...,
    "groups_column": ...}}`` (the keyword arguments of :func:`read_table_cache`), else None.

    A saved graph that references the table stores this, so that loading it reads the
    same columns (see :func:`bridge.graph_io.save_graph`).
    """
    path = getattr(cache, "path", None)
    info = cache.meta.get(TABLE_META) if isinstance(getattr(cache, "meta", None), dict) else None
    if path is None or not isinstance(info, dict) or not is_table_path(Path(path)):
        return None
    columns = {k: info.get(k) for k in COLUMN_KEYS}
    return {"format": table_format(Path(path)), "columns": columns}


# ---------------------------------------------------------------------------
# reading files


def _hf_files(p: Path) -> list[Path]:
    """The ``.arrow`` files of a ``save_to_disk`` folder, in the order ``state.json`` lists."""
    from .files import read_json

    if (p / "dataset_dict.json").exists() and not (p / "state.json").exists():
        splits = sorted(d.name for d in p.iterdir() if (d / "state.json").exists())
        raise CorruptFile(f"{p} holds a DatasetDict (splits {splits}); load one split's "
                          f"folder, e.g. {p / (splits[0] if splits else 'train')}")
    state_file = p / "state.json"
    if not state_file.exists():
        return sorted(p.glob("data-*.arrow"))
    state = read_json(state_file, "datasets state")
    entries = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CorruptFile(f"{state_file}: '_data_files': expected a non-empty list of "
                          f"{{'filename': ...}} objects, got {entries!r:.60}")
    files = []
    for k, e in enumerate(entries):
        name = e.get("filename") if isinstance(e, dict) else None
        if (not isinstance(name, str) or not name or "/" in name or "\\" in name
                or name in (".", "..")):
            raise CorruptFile(f"{state_file}: '_data_files'[{k}]: expected a file name inside "
                              f"the folder, got {e!r:.60}")
        if not (p / name).is_file():
            raise CorruptFile(f"{state_file}: '_data_files'[{k}]: file {p / name} not found")
        files.append(p / name)
    return files


def _read_ipc(pa, f: Path, columns: list[str], mmap: bool):
    """An Arrow IPC file (file or stream format) as a table of ``columns``."""
    import pyarrow.ipc as ipc

    source = pa.memory_map(str(f), "r") if mmap else pa.OSFile(str(f), "rb")
    try:
        table = ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        table = ipc.open_stream(source).read_all()
    finally:
        if not mmap:  # the buffers were copied into memory; a map stays open with them
            source.close()
    _check_columns(table.schema.names, columns, f)
    return table.select(columns)


def _check_columns(present, wanted, where) -> None:
    for c in wanted:
        if c not in present:
            raise CorruptFile(f"{where}: no column {c!r}; the columns present are "
                              f"{list(present)}")


def _read_table(p: Path, columns: list[str], mmap: bool):
    pa = _pyarrow()
    suffix = p.suffix.lower()
    if p.is_dir():
        files = _hf_files(p)
        if not files:
            raise CorruptFile(f"{p}: no data-*.arrow files in this datasets folder")
        tables = [_read_ipc(pa, f, columns, mmap) for f in files]
        try:
            return tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        except pa.ArrowInvalid as e:
            raise CorruptFile(f"{p}: its .arrow files have different schemas ({e})") from e
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        _check_columns(pq.read_schema(str(p)).names, columns, p)
        return pq.read_table(str(p), columns=columns, memory_map=mmap)
    if suffix == ".feather":
        import pyarrow.feather as feather

        table = feather.read_table(str(p), memory_map=mmap)
        _check_columns(table.schema.names, columns, p)
        return table.select(columns)
    return _read_ipc(pa, p, columns, mmap)


# ---------------------------------------------------------------------------
# columns to arrays


def _embedding_array(pa, column, where: str) -> np.ndarray:
    """An ``(n, d)`` numpy array from a chunked list column; a view when it is one chunk."""
    t = column.type
    if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise CorruptFile(f"{where}: has type {t}; expected a fixed-size list or a list of "
                          "numbers (one embedding per row)")
    vt = t.value_type
    if not (pa.types.is_floating(vt) or pa.types.is_integer(vt)):
        raise CorruptFile(f"{where}: holds lists of {vt}; expected lists of numbers")
    parts, start, d = [], 0, None
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        if chunk.null_count:
            bad = start + int(np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False))[0])
            raise InvalidEmbeddings(f"{where}: row {bad} is null; expected an embedding in "
                                    "every row")
        if pa.types.is_fixed_size_list(t):
            width = t.list_size
            values = chunk.flatten()
        else:
            offsets = chunk.offsets.to_numpy()
            lengths = np.diff(offsets)
            if d is None and lengths.size:
                d = int(lengths[0])
            off = np.flatnonzero(lengths != d)
            if off.size:
                k = int(off[0])
                raise InvalidEmbeddings(
                    f"{where}: row {start + k} has {int(lengths[k])} values, row 0 has {d}; "
                    "expected embeddings of equal length in every row")
            width = d
            values = chunk.flatten()
        if values.null_count:
            k = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            raise InvalidEmbeddings(f"{where}: row {start + k // max(width, 1)} holds a null "
                                    "value; expected numbers in every row")
        d = width
        parts.append(values.to_numpy(zero_copy_only=True).reshape(len(chunk), width))
        start += len(chunk)
    if not parts:
        return np.zeros((0, d or 0), dtype=np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _string_column(pa, column, where: str) -> list[str]:
    t = column.type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
            or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t))):
        raise CorruptFile(f"{where}: has type {t}; expected strings or integers (one per row)")
    if column.null_count:
        bad = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise CorruptFile(f"{where}: row {bad} is null; expected one value per row")
    return [str(v) for v in column.to_pylist()]


def read_table_cache(p: Path, mmap: bool = True, embedding_column: str = "embedding",
                     id_column: str | None = "id", groups_column: str | None = None, **meta):
    """A :class:`~bridge.store.Cache` from a Parquet/Arrow/Feather file or a datasets folder.

    ``id_column=None`` numbers the rows ``"0" .. "n-1"``. The cache's ``meta["table"]``
    records the format and the three column names (so a saved graph that references the
    file reads the same columns, see :func:`table_reference`). A missing column raises
    :class:`~bridge.errors.CorruptFile` naming it and the columns present; ragged, null or
    NaN/inf embeddings raise :class:`~bridge.errors.InvalidEmbeddings` naming the row.
    """
    _check_names(embedding_column, id_column, groups_column)
    pa = _pyarrow()
    columns = [c for c in (embedding_column, id_column, groups_column) if c is not None]
    try:
        table = _read_table(p, list(dict.fromkeys(columns)), mmap)
    except (pa.ArrowException, OSError, ValueError) as e:
        if isinstance(e, (CorruptFile, InvalidEmbeddings)):
            raise
        raise CorruptFile(f"{p}: cannot read cache ({e})") from e
    emb = _embedding_array(pa, table.column(embedding_column),
                           f"{p}: column {embedding_column!r}")
    ids = (None if id_column is None
           else _string_column(pa, table.column(id_column), f"{p}: column {id_column!r}"))
    groups = (None if groups_column is None
              else _string_column(pa, table.column(groups_column),
                                  f"{p}: column {groups_column!r}"))
    meta.setdefault("name", p.stem if not p.is_dir() else p.name)
    meta[TABLE_META] = {"format": table_format(p), "embedding_column": embedding_column,
                        "id_column": id_column, "groups_column": groups_column}
    return _make_cache(emb, ids, groups, meta, str(p), f"{p}: column {embedding_column!r}")


def _check_names(*names) -> None:
    for label, v in zip(("embedding_column", "id_column", "groups_column"), names):
        if v is not None and not (isinstance(v, str) and v):
            raise InvalidParameter(f"parameter {label!r}: expected a column name, got {v!r}")
    if names[0] is None:
        raise InvalidParameter("parameter 'embedding_column': expected a column name, got None")


def _make_cache(emb, ids, groups, meta, path, where):
    from .errors import EmptyData
    from .store import Cache

    if emb.shape[0] == 0:
        raise EmptyData(f"{where}: the table has no rows; expected at least one")
    if ids is None:
        ids = [str(i) for i in range(emb.shape[0])]
    try:
        return Cache(ids=ids, emb=emb, meta=meta, groups=groups, path=path)
    except InvalidEmbeddings as e:
        raise InvalidEmbeddings(f"{where}: {e}") from e


# ---------------------------------------------------------------------------
# in-memory Hugging Face datasets


def is_dataset(obj) -> bool:
    """Duck-typed ``datasets.Dataset``: ``column_names`` and ``with_format``."""
    return hasattr(obj, "column_names") and callable(getattr(obj, "with_format", None))


def from_dataset(ds, embedding_column: str = "embedding", id_column: str | None = "id",
                 groups_column: str | None = None, **meta):
    """A :class:`~bridge.store.Cache` from an in-memory ``datasets.Dataset``.

    Reads the columns through ``ds.with_format("numpy")``; the same checks as
    :func:`read_table_cache` apply (missing columns -> CorruptFile, ragged rows ->
    InvalidEmbeddings naming the row).
    """
    _check_names(embedding_column, id_column, groups_column)
    if not is_dataset(ds):
        raise InvalidParameter(f"expected a datasets.Dataset (column_names, with_format), got "
                               f"{type(ds).__name__}")
    name = getattr(getattr(ds, "info", None), "dataset_name", None) or "dataset"
    where = f"dataset {name!r}"
    columns = [c for c in (embedding_column, id_column, groups_column) if c is not None]
    present = list(ds.column_names)
    _check_columns(present, columns, where)
    batch = ds.with_format("numpy", columns=list(dict.fromkeys(columns)))[0:len(ds)]
    emb = batch[embedding_column]
    col = f"{where}: column {embedding_column!r}"
    if isinstance(emb, np.ndarray) and emb.dtype == object or isinstance(emb, list):
        rows = [np.asarray(r) for r in emb]
        d = rows[0].shape if rows else None
        bad = next((k for k, r in enumerate(rows) if r.shape != d), None)
        if bad is not None:
            raise InvalidEmbeddings(f"{col}: row {bad} has shape {rows[bad].shape}, row 0 has "
                                    f"{d}; expected embeddings of equal length in every row")
        emb = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.dtype.kind not in "fiu":
        raise CorruptFile(f"{col}: has shape {emb.shape} and dtype {emb.dtype}; expected one "
                          "list of numbers per row")

    def strings(name):
        return None if name is None else [str(v) for v in np.asarray(batch[name]).tolist()]

    meta.setdefault("name", str(name))
    return _make_cache(emb, strings(id_column), strings(groups_column), meta, None, col)
