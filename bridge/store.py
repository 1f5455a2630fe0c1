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
  in its metadata header.

Every write goes to a temporary file first and is renamed into place, so an interrupted
save never leaves a half-written cache where a good one was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CorruptFile, DimensionMismatch, EmptyData, InvalidEmbeddings, NoPairs
from .files import atomic_dir, atomic_write_bytes, read_json, write_json

__all__ = [
    "Cache",
    "Pairs",
    "check_embeddings",
    "load_cache",
    "save_cache",
    "pair_by_ids",
    "pair_table",
    "PairTable",
    "as_pair_table",
    "split_groups",
    "concat_caches",
]


# ---------------------------------------------------------------------------
# validation


def check_embeddings(x, name: str = "embeddings", dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a 2-D float array, or raise naming what is wrong with it."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):  # keeps a memory map a memory map
        x = np.asarray(x)
    if x.ndim == 1 and dim is not None and x.shape[0] == dim:
        x = x[None, :]
    if x.ndim != 2:
        raise DimensionMismatch(
            f"{name}: expected a 2-D array (rows, dim), got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise EmptyData(f"{name}: expected at least one row, got shape {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        if np.issubdtype(x.dtype, np.number):
            x = x.astype(np.float32)
        else:
            raise InvalidEmbeddings(f"{name}: expected a float array, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise DimensionMismatch(f"{name}: expected dimension {dim}, got {x.shape[1]}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        shown = ", ".join(map(str, bad[:10])) + (" ..." if bad.size > 10 else "")
        raise InvalidEmbeddings(
            f"{name}: {bad.size} row(s) hold NaN or inf values (rows {shown}); "
            "expected finite values in every row"
        )
    return x


def _as_str_array(values, name: str) -> np.ndarray:
    arr = np.asarray([str(v) for v in values], dtype=object)
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
        self.emb = check_embeddings(self.emb, name=self.meta.get("name", "cache"))
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


def _read_ids_file(path: Path) -> list[str] | None:
    for cand in (path.with_suffix(".ids.json"), path.with_suffix(".ids.txt")):
        if cand.exists():
            if cand.suffix == ".json":
                return [str(v) for v in read_json(cand)]
            return cand.read_text().splitlines()
    return None


def load_cache(path: str | os.PathLike, mmap: bool = True, **meta) -> Cache:
    """Read a cache from a folder, ``.npy``, ``.npz`` or ``.safetensors`` file.

    Keyword arguments are merged into the cache's ``meta`` (``modality="text"``...).
    Nothing is ever unpickled: ``.npy``/``.npz`` are read with ``allow_pickle=False``.
    """
    p = Path(path)
    if not p.exists():
        raise CorruptFile(f"cache not found: {p}")
    ids = groups = None
    m: dict = {}
    try:
        if p.is_dir():
            emb_path = p / "embeddings.npy"
            if not emb_path.exists():
                raise CorruptFile(f"cache folder {p} has no embeddings.npy")
            emb = np.load(emb_path, mmap_mode="r" if mmap else None, allow_pickle=False)
            ids = read_json(p / "ids.json") if (p / "ids.json").exists() else None
            if (p / "groups.json").exists():
                groups = read_json(p / "groups.json")
            if (p / "meta.json").exists():
                m = read_json(p / "meta.json")
        elif p.suffix == ".npy":
            emb = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
            ids = _read_ids_file(p)
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                key = "embeddings" if "embeddings" in z else "emb" if "emb" in z else None
                if key is None:
                    raise CorruptFile(f"{p}: expected an array named 'embeddings', found {list(z)}")
                emb = z[key]
                ids = z["ids"].tolist() if "ids" in z else None
                groups = z["groups"].tolist() if "groups" in z else None
        elif p.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.numpy import load_file
            from safetensors import safe_open

            try:
                emb = load_file(str(p))["embeddings"]
                with safe_open(str(p), framework="np") as fh:
                    header = fh.metadata() or {}
            except (SafetensorError, KeyError) as e:
                raise CorruptFile(f"{p}: not a readable safetensors cache ({e})") from e
            ids = json.loads(header["ids"]) if "ids" in header else None
            groups = json.loads(header["groups"]) if "groups" in header else None
            m = json.loads(header.get("meta", "{}"))
        else:
            raise CorruptFile(
                f"unknown cache format {p.suffix!r} for {p}; expected a folder, "
                ".npy, .npz or .safetensors"
            )
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, CorruptFile):
            raise
        raise CorruptFile(f"{p}: cannot read cache ({e})") from e
    m.update(meta)
    m.setdefault("name", p.stem if not p.is_dir() else p.name)
    if ids is None:
        ids = [str(i) for i in range(emb.shape[0])]
    cache = Cache(ids=ids, emb=emb, meta=m, groups=groups, path=str(p))
    return cache


def save_cache(path: str | os.PathLike, cache: Cache, dtype="float16") -> Path:
    """Write ``cache`` atomically: ``.npz`` and ``.safetensors`` paths are single files,
    any other path is a cache folder."""
    p = Path(path)
    emb = np.ascontiguousarray(np.asarray(cache.emb, dtype=dtype))
    ids = [str(v) for v in cache.ids]
    groups = None if cache.groups is None else [str(v) for v in cache.groups]
    if p.suffix == ".npz":
        import io

        buf = io.BytesIO()
        arrays = {"embeddings": emb, "ids": np.asarray(ids, dtype=str)}
        if groups is not None:
            arrays["groups"] = np.asarray(groups, dtype=str)
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(p, buf.getvalue())
    elif p.suffix == ".safetensors":
        from safetensors.numpy import save

        header = {"ids": json.dumps(ids), "meta": json.dumps(cache.meta)}
        if groups is not None:
            header["groups"] = json.dumps(groups)
        atomic_write_bytes(p, save({"embeddings": emb}, metadata=header))
    else:  # any other name is a cache folder ("en.minilm" included)
        with atomic_dir(p) as tmp:
            np.save(tmp / "embeddings.npy", emb, allow_pickle=False)
            write_json(tmp / "ids.json", ids)
            write_json(tmp / "meta.json", cache.meta)
            if groups is not None:
                write_json(tmp / "groups.json", groups)
    return p


def concat_caches(caches: Sequence[Cache], prefixes: Sequence[str]) -> Cache:
    """Stack caches into one, ids and groups prefixed ``"<prefix>:"`` per source.

    The usual use is one cache per predefined split (``prefixes=["train", "val",
    "test"]``), so that ``splits="prefix"`` in :meth:`ModalityGraph.connect` keeps them.
    """
    if len(caches) != len(prefixes):
        raise ValueError(f"got {len(caches)} caches but {len(prefixes)} prefixes; expected one each")
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
    b_index: dict[str, list[int]] = {}
    for j, k in enumerate(b.ids):
        b_index.setdefault(k, []).append(j)
    ar, br = [], []
    for i, k in enumerate(a.ids):
        for j in b_index.get(k, ()):
            ar.append(i)
            br.append(j)
    if not ar:
        raise NoPairs(
            f"caches {a.meta.get('name', '?')!r} and {b.meta.get('name', '?')!r} share no ids "
            f"(first ids: {list(a.ids[:3])} vs {list(b.ids[:3])}); pass a pair table instead"
        )
    ar = np.asarray(ar, dtype=np.int64)
    br = np.asarray(br, dtype=np.int64)
    return Pairs(ar, br, _pair_groups(a, b, ar, br, groups))


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
        pairs = list(pairs)
        bad = [p for p in pairs if not isinstance(p, (tuple, list)) or len(p) != 2]
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
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    groups = np.asarray(groups).astype(str)
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
