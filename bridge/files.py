"""Files the package writes and reads, in one place.

- **Strict JSON**: :func:`to_jsonable` turns numpy values, paths and tuples into plain
  JSON types and non-finite floats into ``null``; :func:`dumps_json` then refuses anything
  a strict parser would reject. :func:`read_json` raises :class:`CorruptFile`.
- **Atomic writes**: :func:`atomic_write_bytes` and :func:`write_json` write a temporary
  file and rename it into place; :class:`atomic_dir` builds a folder beside its final
  place and swaps it in when the block succeeds, with one atomic exchange (no instant
  without a complete folder at the path), under a lock (:class:`FolderLock`) so that
  concurrent saves take turns; leftovers of killed processes are cleaned up by the next
  save, and :func:`recover` repairs the one crash window of the fallback two-rename swap.
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

from .errors import BridgeError, CorruptFile, FolderExists, FolderLocked

__all__ = [
    "to_jsonable",
    "dumps_json",
    "write_json",
    "read_json",
    "atomic_write_bytes",
    "atomic_dir",
    "FolderLock",
    "recover",
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes, clean: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename.

    The temporary file ``.NAME.tmp-PID-START-XXXX`` names its writer; with ``clean=True``
    those of writers that are no longer alive are deleted first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if clean:
        _remove_stale(path, own=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{_owner_tag()}-", dir=path.parent)
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

    Crash safety. The new folder is written to ``.NAME.tmp-PID-START-XXXX`` beside
    ``path`` and swapped in with one ``renameat2(RENAME_EXCHANGE)`` system call, which
    exchanges the two folders atomically: at every instant ``path`` is either the
    complete previous folder or the complete new one, even under ``kill -9`` or a power
    cut. The previous folder, now under the temporary name, is then deleted. On file
    systems without that call the swap is two renames (``path -> .NAME.old-PID-START``,
    then ``tmp -> path``); a crash between them is repaired by :func:`recover`, which
    every loader and the next save call, by renaming the complete old folder back.

    Concurrency. The whole block runs under an exclusive ``fcntl.flock`` on the lock
    file ``.NAME.lock`` beside ``path`` (removed again when the block ends): two
    processes saving the same folder take turns; one that waits longer than
    ``timeout`` seconds gets :class:`FolderLocked` naming the folder. Once the lock is
    held, hidden temporary and old folders of ``path`` left by processes that are no
    longer alive are deleted (never those of a live process).
    """

    def __init__(self, path: str | os.PathLike, kind: str | tuple[str, ...] | None = None,
                 overwrite: bool = False, timeout: float = 300.0):
        self.path = Path(path)
        self.kind = kind
        self.overwrite = overwrite
        self.timeout = timeout
        self._lock = None

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(self.path, self.timeout)
        self._lock.acquire()
        try:
            _recover_locked(self.path)
            _remove_stale(self.path)
            if self.kind is not None:
                check_replace(self.path, self.kind, self.overwrite)
            self.tmp = _make_tmp(self.path)
        except BaseException:
            self._lock.release()
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            _swap_in(self.tmp, self.path)
            return False
        finally:
            self._lock.release()


# -- the pieces of atomic_dir -------------------------------------------------------

#: test hook: when set, called as ``_fault_hook(stage, path)`` at ``"written"`` (the
#: new folder is complete, nothing swapped), ``"moved-out"`` (two-rename swap only:
#: the previous folder has been renamed away, the new one not yet in place) and
#: ``"swapped"`` (the new folder is in place, the previous one not yet deleted)
_fault_hook = None

#: set to False to use the two-rename swap even where RENAME_EXCHANGE exists (tests)
_USE_EXCHANGE = True

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2 = None


def _hook(stage: str, path: Path) -> None:
    if _fault_hook is not None:
        _fault_hook(stage, path)


def _start_time(pid: int) -> int:
    """The start time of process ``pid`` (clock ticks since boot), 0 where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


_OWNER = None


def _owner_tag() -> str:
    global _OWNER
    pid = os.getpid()
    if _OWNER is None or _OWNER[0] != pid:  # recomputed after fork
        _OWNER = (pid, f"{pid}-{_start_time(pid)}")
    return _OWNER[1]


def _owner_alive(tag: str) -> bool:
    """Whether the process named by ``PID-START`` still runs (the start time guards
    against a recycled PID)."""
    try:
        pid_s, start_s = tag.split("-")[:2]
        pid, start = int(pid_s), int(start_s)
    except ValueError:
        return False
    if pid == os.getpid():
        return tag == _owner_tag()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    now = _start_time(pid)
    return not (start and now and now != start)


def _make_tmp(path: Path) -> Path:
    import secrets

    while True:
        tmp = path.with_name(f".{path.name}.tmp-{_owner_tag()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


def _siblings(path: Path, what: str) -> list[tuple[Path, str]]:
    """Hidden ``.NAME.<what>-PID-START[-XXXX]`` siblings of ``path`` with their owner tag."""
    prefix = f".{path.name}.{what}-"
    out = []
    try:
        entries = os.listdir(path.parent)
    except OSError:
        return out
    for name in entries:
        if name.startswith(prefix):
            out.append((path.with_name(name), name[len(prefix):]))
    return out


def _remove_tree(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except OSError:
            pass


def _remove_stale(path: Path, own: bool = True) -> None:
    """Delete temporary/old folders of ``path`` whose owning process is gone; with
    ``own`` (the folder's lock is held) also those of this process."""
    for what in ("tmp", "old"):
        for p, tag in _siblings(path, what):
            if not _owner_alive(tag) or (own and tag.startswith(f"{os.getpid()}-")):
                _remove_tree(p)


def _recover_locked(path: Path) -> bool:
    """With the lock held: when ``path`` is missing and a previous folder was renamed
    away by a two-rename swap that never finished, rename it back."""
    if os.path.lexists(path):
        return False
    # the lock is held, so no live process is between its two renames: an old folder of
    # this process is left over from a failed swap
    olds = [(p, tag) for p, tag in _siblings(path, "old")
            if not _owner_alive(tag) or tag.startswith(f"{os.getpid()}-")]
    olds = [(p, tag) for p, tag in olds if p.is_dir()]
    if not olds:
        return False
    olds.sort(key=lambda pt: pt[0].stat().st_mtime, reverse=True)
    os.rename(olds[0][0], path)
    _fsync_dir(path.parent)
    return True


def recover(path: str | os.PathLike, timeout: float = 30.0) -> bool:
    """Repair ``path`` after a crash in the middle of a two-rename swap.

    When ``path`` is missing but a complete previous folder ``.NAME.old-PID-START`` of
    a dead process lies beside it, rename it back (under the folder's lock) and return
    True. Cheap when ``path`` exists. Loaders call this before reading.
    """
    path = Path(path)
    if os.path.lexists(path) or not _siblings(path, "old"):
        return False
    lock = FolderLock(path, timeout)
    try:
        lock.acquire()
    except OSError:  # a read-only location: nothing can be repaired from here
        return False
    try:
        return _recover_locked(path)
    finally:
        lock.release()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths; False where the system cannot."""
    global _renameat2
    if not _USE_EXCHANGE:
        return False
    if _renameat2 is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (OSError, AttributeError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    import ctypes

    rc = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    import errno

    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _exchange_supported(folder: str | os.PathLike) -> bool:
    """Whether folders in ``folder`` can be swapped with RENAME_EXCHANGE."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix=".exchange-probe-", dir=folder))
    try:
        (d / "a").mkdir()
        (d / "b").mkdir()
        return _exchange(d / "a", d / "b")
    except OSError:
        return False
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the complete folder ``tmp`` at ``path`` (see :class:`atomic_dir`)."""
    os.chmod(tmp, 0o777 & ~_umask())
    _hook("written", path)
    if not os.path.lexists(path):
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        _hook("swapped", path)
        return
    if _exchange(tmp, path):
        _fsync_dir(path.parent)
        _hook("swapped", path)
        _remove_tree(tmp)  # now the previous folder
        return
    old = path.with_name(f".{path.name}.old-{_owner_tag()}")
    if os.path.lexists(old):
        _remove_tree(old)
    os.rename(path, old)
    _hook("moved-out", path)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    _fsync_dir(path.parent)
    _hook("swapped", path)
    _remove_tree(old)


class FolderLock:
    """An exclusive ``fcntl.flock`` on ``.NAME.lock`` beside ``path``.

    The lock file is removed on release; a waiter that then holds a lock on a removed
    file notices (the inode at the lock path changed) and locks the new file instead, so
    exactly one process holds the lock of a folder at a time.
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 300.0):
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self.timeout = timeout
        self.fd = None

    def acquire(self) -> None:
        import fcntl
        import time

        deadline = time.monotonic() + max(float(self.timeout), 0.0)
        delay = 0.005
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except (BlockingIOError, PermissionError):
                        if time.monotonic() >= deadline:
                            raise FolderLocked(self._busy_message(fd)) from None
                        time.sleep(delay)
                        delay = min(delay * 2, 0.1)
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return
            os.close(fd)  # the holder removed that lock file: lock the new one

    def _busy_message(self, fd) -> str:
        try:
            holder = os.pread(fd, 32, 0).decode().strip() or "?"
        except OSError:
            holder = "?"
        return (f"{self.path} is being written by another process (pid {holder}, lock file "
                f"{self.lock_path}); waited {self.timeout:g} s; try again when it has finished")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.lock_path)
        except OSError:
            pass
        os.close(self.fd)  # closing releases the flock
        self.fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
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
