"""Files the package writes and reads, in one place.

- **Strict JSON**: :func:`to_jsonable` turns numpy values, paths and tuples into plain
  JSON types and non-finite floats into ``null``; :func:`dumps_json` then refuses anything
  a strict parser would reject. :func:`read_json` raises :class:`CorruptFile`.
- **Atomic writes**: :func:`atomic_write_bytes` and :func:`write_json` write a temporary
  file and rename it into place; :class:`atomic_dir` builds a folder beside its final
  place and swaps it in when the block succeeds.
- **Ownership**: a folder is replaced only when it is empty or already holds what is
  being written (a graph replaces a graph, a translator a translator, a cache a cache);
  anything else needs ``overwrite=True`` (:func:`folder_kind`, :func:`check_replace`).
- **Paths inside a folder**: :func:`resolve_inside` resolves a relative path read from a
  file and refuses one that leaves the folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import BridgeError, CorruptFile, FolderExists

__all__ = [
    "to_jsonable",
    "dumps_json",
    "write_json",
    "read_json",
    "atomic_write_bytes",
    "atomic_dir",
    "folder_kind",
    "check_replace",
    "resolve_inside",
    "FolderExists",
    "FOLDER_KINDS",
]

#: what :func:`folder_kind` recognises
FOLDER_KINDS = ("graph", "translator", "cache", "cache-build", "report")


# ---------------------------------------------------------------------------
# JSON


def to_jsonable(obj):
    """``obj`` with numpy scalars and arrays, tuples and paths turned into JSON types.

    Non-finite floats (NaN, inf) become ``None``; dict keys become strings.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def dumps_json(obj, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (see :func:`to_jsonable`), ending with a newline."""
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as strict JSON to ``path`` atomically."""
    path = Path(path)
    atomic_write_bytes(path, dumps_json(obj).encode("utf-8"))
    return path


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def read_json(path: str | os.PathLike, what: str = "file"):
    """Parse a strict JSON file; :class:`CorruptFile` names the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise CorruptFile(f"{what} missing: {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise CorruptFile(f"{what} {path} cannot be read: {e}") from e
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise CorruptFile(f"{what} {path} is not valid JSON: {e}") from e


# ---------------------------------------------------------------------------
# atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def folder_kind(path: str | os.PathLike) -> str | None:
    """What a folder holds: ``"graph"``, ``"translator"``, ``"cache"``, ``"cache-build"``
    (an unfinished cache build), ``"report"``, ``"empty"``; ``None`` for anything else
    (or a path that is not a folder)."""
    p = Path(path)
    if not p.is_dir():
        return None
    names = {q.name for q in p.iterdir()}
    if not names:
        return "empty"
    if "manifest.json" in names:
        try:
            m = json.loads((p / "manifest.json").read_text())
        except (OSError, ValueError):
            m = None
        if isinstance(m, dict) and m.get("format") == "modality-bridge-graph":
            return "graph"
    if {"config.json", "model.safetensors"} <= names:
        return "translator"
    if "embeddings.npy" in names:
        return "cache"
    if names <= {"parts"} and (p / "parts" / "manifest.json").exists():
        return "cache-build"
    if {"report.json", "index.html"} <= names:
        return "report"
    return None


def check_replace(path: str | os.PathLike, kind: str | tuple[str, ...],
                  overwrite: bool = False) -> None:
    """Raise :class:`FolderExists` unless ``path`` may be replaced by a folder of ``kind``.

    A missing path, an empty folder and a folder of the same kind may be replaced; with
    ``overwrite=True`` anything may.
    """
    p = Path(path)
    if overwrite or not os.path.lexists(p):
        return
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    found = folder_kind(p)
    if found == "empty" or found in kinds:
        return
    what = "a file" if not p.is_dir() else (f"a {found} folder" if found else "a folder of other files")
    raise FolderExists(f"{p} already exists and holds {what}, not a {kinds[0]}; refusing to "
                       f"replace it (pass overwrite=True / --overwrite, or choose another path)")


class atomic_dir:
    """Build a folder beside ``path`` and swap it in when the block succeeds.

    ``with atomic_dir(path, kind="graph") as tmp: write files into tmp``. When the block
    ends without an exception the previous ``path`` (if any) is replaced by ``tmp``;
    otherwise ``tmp`` is removed and ``path`` is untouched. ``kind`` (with ``overwrite``)
    refuses to replace a folder that holds something else (see :func:`check_replace`);
    the check runs on entry, before anything is written.
    """

    def __init__(self, path: str | os.PathLike, kind: str | tuple[str, ...] | None = None,
                 overwrite: bool = False):
        self.path = Path(path)
        self.kind = kind
        self.overwrite = overwrite

    def __enter__(self) -> Path:
        if self.kind is not None:
            check_replace(self.path, self.kind, self.overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        os.chmod(self.tmp, 0o777 & ~_umask())
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if os.path.lexists(self.path):
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            if os.path.lexists(old):
                shutil.rmtree(old)
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        return False


# ---------------------------------------------------------------------------
# paths read from files


def resolve_inside(root: str | os.PathLike, rel, field: str) -> Path:
    """``root / rel`` resolved, refusing a path that is absolute or leaves ``root``.

    ``field`` names where the path was read (``"manifest.json: edges[3].dir"``) for the
    :class:`CorruptFile` raised otherwise.
    """
    if not isinstance(rel, str) or not rel:
        raise CorruptFile(f"{field}: expected a relative path inside {root}, got {rel!r}")
    if os.path.isabs(rel) or Path(rel).is_absolute():
        raise CorruptFile(f"{field}: path {rel!r} is absolute; expected a path inside {root}")
    base = Path(root).resolve()
    full = (base / rel).resolve()
    if full != base and base not in full.parents:
        raise CorruptFile(f"{field}: path {rel!r} leaves the folder {base}")
    return full
