"""Encode a large input set into a cache, in resumable chunks; and read the inputs.

:func:`build_cache` encodes ``chunk_size`` items at a time and writes each finished chunk
atomically to ``out_dir/parts/part-NNNNNN.npy``. If the run stops (a crash, Ctrl-C, a
job time limit), running the same call again skips every finished chunk. When all
chunks are there they are assembled into the cache folder ``out_dir`` with
:func:`bridge.store.save_cache` (which swaps the folder in atomically, so ``parts/``
disappears with it).

Input helpers: :func:`read_lines` (a plain or gzipped text file, one item a line),
:func:`list_files` / :func:`list_audio_files` / :func:`list_image_files` (a folder,
sorted by name), :func:`read_csv_items` (ids and items from CSV columns) and
:func:`read_csv_column` (one more column, e.g. the groups). :func:`sample_rows` picks
rows spread across an input; :func:`groups_from_pattern` reads a group out of each id.

A build stopped by Ctrl-C raises :class:`BuildInterrupted` (a ``KeyboardInterrupt``)
saying how many rows are done; the finished chunks stay, so the same call resumes.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import (
    BridgeError,
    CorruptFile,
    DimensionMismatch,
    EmptyData,
    FolderExists,
    InvalidParameter,
)
from ..files import atomic_dir, atomic_write_bytes, check_replace, write_json
from ..store import Cache, check_same_encoder, load_cache, save_cache

__all__ = [
    "build_cache",
    "read_lines",
    "list_files",
    "list_audio_files",
    "list_image_files",
    "read_csv_items",
    "read_csv_column",
    "sample_rows",
    "groups_from_pattern",
    "BuildInterrupted",
    "AUDIO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aiff", ".aif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_PARTS = "parts"
_MANIFEST = "manifest.json"


# ---------------------------------------------------------------------------
# resumable encoding


class BuildInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`build_cache`: ``rows_done`` of ``rows_total`` rows are in
    finished chunks under ``out_dir/parts/``; the same call again resumes from there."""

    def __init__(self, rows_done: int, rows_total: int, out_dir):
        self.rows_done = int(rows_done)
        self.rows_total = int(rows_total)
        self.out_dir = str(out_dir)
        super().__init__(
            f"interrupted after {self.rows_done} of {self.rows_total} rows; "
            "run the same command to resume")


def _ids_digest(ids: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for k in ids:
        h.update(k.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def _encoder_info(encoder) -> dict:
    describe = getattr(encoder, "describe", None)
    if callable(describe):
        return dict(describe())
    return {
        "encoder": getattr(encoder, "name", type(encoder).__name__),
        "modality": getattr(encoder, "modality", None),
        "dim": getattr(encoder, "dim", None),
    }


def _part_path(parts: Path, k: int) -> Path:
    return parts / f"part-{k:06d}.npy"


def _part_width(path: Path, rows: int) -> int | None:
    """The width of a finished chunk (read from its header only), None when missing."""
    if not path.exists():
        return None
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if x.ndim != 2 or x.shape[0] != rows:
        return None
    return int(x.shape[1])


def _check_part_widths(parts: Path, bounds) -> int | None:
    """The common width of the finished parts; :class:`DimensionMismatch` naming the
    first part whose width differs."""
    first = None
    for k, (a, b) in enumerate(bounds):
        w = _part_width(_part_path(parts, k), b - a)
        if w is None:
            continue
        if first is None:
            first = (k, w)
        elif w != first[1]:
            raise DimensionMismatch(
                f"{_part_path(parts, k)} has width {w} but {_part_path(parts, first[0]).name} "
                f"has width {first[1]}; the finished parts of one cache must share a width "
                "(delete parts/ or pass overwrite=True to start again)")
    return None if first is None else first[1]


def _read_part(path: Path, rows: int) -> np.ndarray | None:
    """A finished chunk, or None when it is missing or unreadable."""
    if not path.exists():
        return None
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if x.ndim != 2 or x.shape[0] != rows:
        return None
    return x


def build_cache(
    encoder,
    items,
    ids,
    out_dir: str | os.PathLike,
    chunk_size: int = 256,
    groups=None,
    meta: dict | None = None,
    progress: bool = True,
    batch_size: int | None = None,
    dtype: str = "float16",
    overwrite: bool = False,
) -> Cache:
    """Encode ``items`` with ``encoder`` into the cache folder ``out_dir``, resumably.

    ``encoder`` is an :class:`~bridge.encoders.Encoder` (or any object with
    ``encode(items, batch_size=..., progress=...)``); ``ids[i]`` names row ``i``;
    ``groups`` (optional, one per row) keeps rows together when splitting; ``meta`` is
    merged over the encoder's description (name, modality, dim, model) in the cache's
    ``meta.json``. Rows are stored as ``dtype``.

    Finished chunks of ``chunk_size`` items are kept under ``out_dir/parts/``; calling
    again with the same encoder name, ids and ``chunk_size`` encodes only the chunks
    that are missing. Parts left by a different input set are discarded. If ``out_dir``
    already holds a finished cache for the same ids it is returned as is, unless
    ``overwrite=True``. Returns the cache read back from ``out_dir``.

    Nothing that is not this build's is replaced without ``overwrite=True``
    (:class:`~bridge.errors.FolderExists`, before anything is written): ``out_dir`` may
    be missing, empty, an unfinished build or a finished cache *of the same encoder*.
    Unfinished parts made by another encoder are refused too (they are discarded only
    with ``overwrite=True``), and a resumed build whose parts, or whose new chunks,
    differ in width raises :class:`~bridge.errors.DimensionMismatch` naming the part and
    the widths, before the new chunk is written.
    """
    items, ids, groups, chunk_size = _check_build_inputs(items, ids, groups, chunk_size)
    out_dir = Path(out_dir)
    info = _encoder_info(encoder)
    manifest = {
        "encoder": info.get("encoder"),
        "model": info.get("model"),
        "rows": len(items),
        "chunk_size": chunk_size,
        "ids": _ids_digest(ids),
    }
    check_replace(out_dir, ("cache", "cache-build"), overwrite)
    if not overwrite and (out_dir / "embeddings.npy").exists():
        done = _finished_cache(out_dir, ids, manifest)
        if done is not None:
            return done
        check_same_encoder(out_dir, {**_described(info), **(meta or {})})

    parts = out_dir / _PARTS
    _discard_stale_parts(parts, manifest, overwrite)
    bounds = _chunk_bounds(len(items), chunk_size)
    dim = _check_part_widths(parts, bounds) if parts.exists() else None
    parts.mkdir(parents=True, exist_ok=True)
    write_json(parts / _MANIFEST, manifest)
    todo = _missing_chunks(parts, bounds)
    _encode_chunks(encoder, items, bounds, todo, parts, dim, batch_size=batch_size,
                   progress=progress, name=info.get("encoder"), out_dir=out_dir)
    emb = _assemble_parts(parts, bounds)
    return _save_built(out_dir, ids, emb, groups, info, manifest, meta, dtype, overwrite)


def _check_build_inputs(items, ids, groups, chunk_size):
    """``(items, ids, groups, chunk_size)`` checked and normalised: items a sequence, ids
    and groups strings (one per item), chunk_size a positive int."""
    if isinstance(items, (str, bytes, os.PathLike)):
        raise InvalidParameter(f"parameter 'items' must be a list of inputs, not a single "
                               f"string or path, got {str(items)[:60]!r}")
    if not isinstance(items, (Sequence, np.ndarray)):
        items = list(items)
    ids = [str(k) for k in ids]
    n = len(items)
    if n == 0:
        raise EmptyData("build_cache: no items to encode")
    if len(ids) != n:
        raise DimensionMismatch(f"build_cache: {n} items but {len(ids)} ids; expected one id per item")
    if groups is not None:
        groups = [str(g) for g in groups]
        if len(groups) != n:
            raise DimensionMismatch(f"build_cache: {n} items but {len(groups)} groups")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise InvalidParameter(f"parameter 'chunk_size' must be a positive integer, got {chunk_size!r}")
    return items, ids, groups, int(chunk_size)


def _described(info: dict) -> dict:
    """The encoder's description without its unknown (None) entries."""
    return {k: v for k, v in info.items() if v is not None}


def _discard_stale_parts(parts: Path, manifest: dict, overwrite: bool) -> None:
    """Delete ``parts/`` (with a warning) when its manifest is not this build's.

    Parts of another encoder or model are refused with :class:`FolderExists` unless
    ``overwrite``; parts of the same encoder for other ids or another chunk size, or
    without a readable manifest, are discarded."""
    if not parts.exists():
        return
    old = None
    try:
        old = json.loads((parts / _MANIFEST).read_text())
    except (OSError, ValueError):
        pass
    if old == manifest:
        return
    same = isinstance(old, dict) and (old.get("encoder"), old.get("model")) == (
        manifest["encoder"], manifest["model"])
    if not same and not overwrite and isinstance(old, dict):
        raise FolderExists(
            f"{parts} holds unfinished parts made by encoder {old.get('encoder')!r} "
            f"(model {old.get('model')!r}); this run uses {manifest['encoder']!r} "
            f"(model {manifest['model']!r}); refusing to discard them (pass "
            "overwrite=True / --overwrite, or choose another --out)")
    warnings.warn(
        f"discarding unfinished parts in {parts}: they were made for another "
        "encoder, id list or chunk size",
        stacklevel=3,  # the caller of build_cache
    )
    shutil.rmtree(parts)


def _chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each chunk of ``chunk_size`` rows (the last may be shorter)."""
    n_chunks = -(-n // chunk_size)
    return [(k * chunk_size, min(n, (k + 1) * chunk_size)) for k in range(n_chunks)]


def _missing_chunks(parts: Path, bounds) -> list[int]:
    """The numbers of the chunks with no finished, readable part, in order."""
    return [k for k, (a, b) in enumerate(bounds) if _read_part(_part_path(parts, k), b - a) is None]


def _encode_chunks(encoder, items, bounds, todo, parts: Path, dim: int | None, *,
                   batch_size, progress: bool, name, out_dir) -> None:
    """Encode the chunks numbered ``todo``, writing each as soon as it is done.

    Ctrl-C raises :class:`BuildInterrupted` with the rows in finished parts (those done
    before, and those of this call); the progress bar is closed whatever happens."""
    n = bounds[-1][1]
    done_rows = n - sum(bounds[k][1] - bounds[k][0] for k in todo)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=done_rows, desc=f"encoding {name}", unit="row")
    try:
        for k in todo:
            a, b = bounds[k]
            dim = _encode_chunk(encoder, items, a, b, _part_path(parts, k), dim, batch_size, name)
            done_rows += b - a
            if bar is not None:
                bar.update(b - a)
    except BuildInterrupted:
        raise
    except KeyboardInterrupt as e:
        raise BuildInterrupted(done_rows, n, out_dir) from e
    finally:
        if bar is not None:
            bar.close()


def _encode_chunk(encoder, items, a: int, b: int, path: Path, dim: int | None, batch_size,
                  name) -> int:
    """Encode ``items[a:b]`` and write the rows (float32) atomically to ``path``; returns
    their width. A wrong shape, or a width other than ``dim`` (the finished parts'),
    raises before anything is written."""
    x = np.asarray(encoder.encode(items[a:b], batch_size=batch_size, progress=False))
    if x.ndim != 2 or x.shape[0] != b - a:
        raise BridgeError(f"encoder {name!r} returned shape {x.shape} for {b - a} items")
    if dim is not None and x.shape[1] != dim:
        raise DimensionMismatch(
            f"encoder {name!r} returned width {x.shape[1]} for "
            f"{path.name} but the finished parts in {path.parent} have width "
            f"{dim}; nothing was written for it (same encoder name, another model? "
            "pass overwrite=True to start again)")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    return x.shape[1]


def _assemble_parts(parts: Path, bounds) -> np.ndarray:
    """All the finished parts, in order, as one array."""
    chunks = []
    for k, (a, b) in enumerate(bounds):
        x = _read_part(_part_path(parts, k), b - a)
        if x is None:  # only if a part vanished while we ran
            raise CorruptFile(f"part {_part_path(parts, k)} is missing or unreadable; run again")
        chunks.append(x)
    dims = {c.shape[1] for c in chunks}
    if len(dims) != 1:
        raise DimensionMismatch(f"parts in {parts} have different widths {sorted(dims)}")
    return np.concatenate(chunks, axis=0)


def _save_built(out_dir: Path, ids, emb, groups, info, manifest, meta, dtype,
                overwrite) -> Cache:
    """Save the finished cache into ``out_dir`` (dropping ``parts/``) and read it back."""
    m = {**_described(info), "dim": int(emb.shape[1])}
    m["build"] = manifest
    m.update(meta or {})
    m.setdefault("name", out_dir.name)
    cache = Cache(ids=ids, emb=emb, meta=m, groups=groups)
    # save_cache picks the format from the suffix, and a cache folder may well be named
    # "en.minilm": write the folder format inside a temporary directory, then swap that
    # directory in for out_dir (which drops parts/ with it).
    with atomic_dir(out_dir, kind=("cache", "cache-build"), overwrite=overwrite) as tmp:
        save_cache(tmp / "cache", cache, dtype=dtype)
        for f in (tmp / "cache").iterdir():
            os.replace(f, tmp / f.name)
        (tmp / "cache").rmdir()
    shutil.rmtree(out_dir / _PARTS, ignore_errors=True)
    return load_cache(out_dir)


def _finished_cache(out_dir: Path, ids: list[str], manifest: dict) -> Cache | None:
    try:
        cache = load_cache(out_dir)
    except CorruptFile:
        return None
    built = cache.meta.get("build")
    if built == manifest or (built is None and list(cache.ids) == ids):
        return cache
    return None


# ---------------------------------------------------------------------------
# inputs


def read_lines(path: str | os.PathLike, limit: int | None = None, encoding: str = "utf-8") -> list[str]:
    """Lines of a text file (gzipped when it ends in ``.gz``), without line endings.

    Empty lines are kept: line ``i`` is row ``i``, which keeps parallel files aligned.
    """
    path = Path(path)
    if not path.exists():
        raise CorruptFile(f"text file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[str] = []
    try:
        with opener(path, "rt", encoding=encoding, newline="") as fh:
            for line in fh:
                if limit is not None and len(out) >= limit:
                    break
                out.append(line.rstrip("\r\n"))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise CorruptFile(f"cannot read {path}: {e}") from e
    return out


def list_files(
    folder: str | os.PathLike, extensions: Sequence[str] | None = None, recursive: bool = False
) -> list[Path]:
    """Files of ``folder`` (optionally recursive) with one of ``extensions`` (any case),
    sorted by their path relative to ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CorruptFile(f"folder not found: {folder}")
    exts = None if extensions is None else {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    it = folder.rglob("*") if recursive else folder.iterdir()
    files = [p for p in it if p.is_file() and not p.name.startswith(".")]
    if exts is not None:
        files = [p for p in files if p.suffix.lower() in exts]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def list_audio_files(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Audio files of ``folder`` sorted by name (ids: ``[p.name for p in files]``)."""
    return list_files(folder, AUDIO_EXTENSIONS, recursive)


def list_image_files(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files of ``folder`` sorted by name."""
    return list_files(folder, IMAGE_EXTENSIONS, recursive)


def read_csv_items(
    path: str | os.PathLike,
    id_column: str,
    item_column: str | None = None,
    base_dir: str | os.PathLike | None = None,
    delimiter: str | None = None,
) -> tuple[list[str], list[str]]:
    """``(ids, items)`` from two columns of a CSV/TSV file with a header line.

    ``item_column`` defaults to ``id_column``. With ``base_dir``, relative items are
    joined to it (a column of file names becomes paths). The delimiter defaults to a tab
    for ``.tsv`` files and a comma otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise CorruptFile(f"CSV file not found: {path}")
    item_column = item_column or id_column
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    opener = gzip.open if path.suffix == ".gz" else open
    ids, items = [], []
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        cols = reader.fieldnames or []
        for col in (id_column, item_column):
            if col not in cols:
                raise CorruptFile(f"{path} has no column {col!r}; columns: {cols}")
        for row in reader:
            ids.append(row[id_column])
            item = row[item_column]
            if base_dir is not None and not os.path.isabs(item):
                item = os.path.join(os.fspath(base_dir), item)
            items.append(item)
    return ids, items


def read_csv_column(path: str | os.PathLike, column: str, delimiter: str | None = None) -> list[str]:
    """The values of one column of a CSV/TSV file with a header line, row by row (the
    same rows, in the same order, as :func:`read_csv_items`)."""
    return read_csv_items(path, column, column, delimiter=delimiter)[0]


def sample_rows(n: int, k: int, seed: int = 0, how: str = "random") -> np.ndarray:
    """Sorted indices of ``k`` of ``n`` rows spread across the whole input.

    ``how="random"``: ``k`` distinct rows drawn uniformly with ``seed`` (the same seed
    gives the same rows); ``how="even"``: every ``n/k``-th row, starting at row 0. With
    ``k >= n`` every row is kept. Indices come back in input order, so a sorted input
    stays sorted.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidParameter(f"parameter 'sample' must be a positive integer, got {k!r}")
    if how not in ("random", "even"):
        raise InvalidParameter(f"parameter 'how' must be 'random' or 'even', got {how!r}")
    n, k = int(n), int(k)
    if k >= n:
        return np.arange(n)
    if how == "even":
        return (np.arange(k) * n) // k
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def groups_from_pattern(ids: Sequence[str], pattern: str) -> list[str]:
    """The group of every id: the one capture group of the regular expression
    ``pattern``, searched in the id (``r"_(\\w+)_\\d+$"`` gives ``"jackson"`` for the
    FSDD clip ``"3_jackson_12"``).

    Raises :class:`~bridge.errors.InvalidParameter` for a pattern that does not compile
    or has not exactly one group, and naming the first id it does not match.
    """
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise InvalidParameter(f"groups pattern {pattern!r} is not a valid regular expression: {e}") from None
    if rx.groups != 1:
        raise InvalidParameter(
            f"groups pattern {pattern!r} has {rx.groups} capture groups; expected exactly one, "
            "e.g. '_(\\w+)_\\d+$'")
    out = []
    for i in ids:
        m = rx.search(str(i))
        if m is None or m.group(1) is None:
            raise InvalidParameter(f"groups pattern {pattern!r} does not match the id {str(i)!r}")
        out.append(m.group(1))
    return out
