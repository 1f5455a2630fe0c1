"""Shared helpers for the benchmark scripts in this folder.

- where the shared real data lives (``../shared`` beside the clone, or ``$BRIDGE_SHARED``);
- loading the Multi30K embeddings (``{split}.{lang}.{encoder}.npy``) as float32;
- seeding and thread limits;
- mean/std aggregation over seeds;
- JSON result files that record the command line, versions and time, written atomically;
- a plain-text table printer.

The scripts only use the public ``bridge`` API; this module adds nothing to the package.
"""

from __future__ import annotations

import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bridge.files import write_json

__all__ = [
    "shared_dir",
    "results_dir",
    "M30K_SPLITS",
    "M30K_LANGS",
    "m30k_path",
    "load_m30k",
    "m30k_cache",
    "set_seed",
    "set_threads",
    "command_line",
    "mean_std",
    "aggregate",
    "write_result",
    "format_table",
    "fmt_stat",
    "Timer",
]

M30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
M30K_LANGS = ("en", "de", "fr", "cs")


# ---------------------------------------------------------------------------
# paths


def shared_dir() -> Path:
    """The shared data folder: ``$BRIDGE_SHARED`` or ``<clone>/../shared``."""
    env = os.environ.get("BRIDGE_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    if not path.is_dir():
        raise FileNotFoundError(
            f"shared data folder not found at {path}; set BRIDGE_SHARED to the folder that "
            "holds data/ and embeddings/"
        )
    return path


def results_dir() -> Path:
    """``benchmarks/results`` (created on demand)."""
    path = Path(__file__).resolve().parent / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------
# Multi30K embeddings


def m30k_path(split: str, lang: str, encoder: str) -> Path:
    """Path of ``{split}.{lang}.{encoder}.npy``; ``split`` may be a short name
    (``train``, ``val``, ``test``) or the file's own (``test_2016_flickr``)."""
    split = M30K_SPLITS.get(split, split)
    return shared_dir() / "embeddings" / "multi30k" / f"{split}.{lang}.{encoder}.npy"


_CACHE: dict[tuple, np.ndarray] = {}


def load_m30k(split: str, lang: str, encoder: str, rows: int | None = None) -> np.ndarray:
    """Multi30K embeddings as a float32 array (row i = caption line i), memoised."""
    path = m30k_path(split, lang, encoder)
    key = (str(path),)
    if key not in _CACHE:
        if not path.exists():
            raise FileNotFoundError(f"missing embeddings file {path}")
        _CACHE[key] = np.load(path).astype(np.float32)
    arr = _CACHE[key]
    return arr if rows is None else arr[:rows]


def m30k_cache(lang: str, encoder: str, train_rows=None):
    """One node cache of Multi30K: the train, val and test rows stacked, ids and groups
    ``"<split>:<line>"`` (so ``splits="prefix"`` keeps Multi30K's own splits).

    ``train_rows`` keeps only these training lines (an int: the first N; an index array:
    those lines, ids keep their line numbers); ``"none"`` keeps no training row. Splits
    with no file for ``lang``/``encoder`` (German MiniLM training rows) are left out.
    """
    from bridge.store import Cache, concat_caches

    parts, prefixes = [], []
    for split in M30K_SPLITS:
        if split == "train" and isinstance(train_rows, str) and train_rows == "none":
            continue
        if not m30k_path(split, lang, encoder).exists():
            continue
        arr = load_m30k(split, lang, encoder)
        lines = np.arange(arr.shape[0])
        if split == "train" and train_rows is not None:
            lines = lines[:train_rows] if np.isscalar(train_rows) else np.asarray(train_rows)
            arr = arr[lines]
        parts.append(Cache.from_arrays(arr, ids=[str(i) for i in lines]))
        prefixes.append(split)
    cache = concat_caches(parts, prefixes)
    cache.meta.update({"name": f"multi30k.{lang}.{encoder}", "language": lang, "encoder": encoder})
    return cache


# ---------------------------------------------------------------------------
# reproducibility


def set_seed(seed: int) -> None:
    """Seed python, numpy and (if imported or importable) torch."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def set_threads(n: int | None) -> int:
    """Limit torch (and BLAS through the environment, for child processes) to ``n``
    threads; returns the number in use."""
    if n is None or n <= 0:
        n = os.cpu_count() or 1
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass
    return n


def command_line() -> str:
    """The command that started this process, shell-quoted."""
    exe = Path(sys.executable).name
    return " ".join([exe] + [shlex.quote(a) for a in sys.argv])


# ---------------------------------------------------------------------------
# aggregation


def mean_std(values: Iterable[float]) -> dict:
    """``{"mean", "std", "n", "values"}`` of finite-or-not numbers (population std,
    ``ddof=0``: with 3 seeds it describes the spread seen, not an estimate)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "n": 0, "values": []}
    arr = np.asarray(vals, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": len(vals), "values": vals}


def aggregate(runs: Sequence[Mapping]) -> dict:
    """Mean/std of nested dicts of numbers with the same keys (one dict per seed).

    ``[{"de": {"R@1": .9}}, {"de": {"R@1": .8}}]`` -> ``{"de": {"R@1": {"mean": .85, ...}}}``.
    Keys missing from some runs are aggregated over the runs that have them.
    """
    if not runs:
        return {}
    keys: list = []
    for r in runs:
        for k in r:
            if k not in keys:
                keys.append(k)
    out = {}
    for k in keys:
        vals = [r[k] for r in runs if k in r]
        if all(isinstance(v, Mapping) for v in vals):
            out[k] = aggregate(vals)
        elif all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in vals):
            out[k] = mean_std(vals)
        else:
            out[k] = vals[0] if all(v == vals[0] for v in vals) else list(vals)
    return out


# ---------------------------------------------------------------------------
# output


def _versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "faiss", "bridge"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except ImportError:
            pass
    return out


def write_result(path, payload: Mapping, started: float | None = None) -> Path:
    """Write ``payload`` as JSON with a ``meta`` block (command line, versions, host
    CPU count, date, wall time). Non-finite floats become ``null``. Written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": command_line(),
        "argv": list(sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
        "cpu_count": os.cpu_count(),
    }
    if started is not None:
        meta["wall_seconds"] = round(time.perf_counter() - started, 1)
    return write_json(path, {"meta": meta, **dict(payload)})


def format_table(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    """A left/right aligned plain-text table (first column left, the others right)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def fmt_stat(stat, scale: float = 100.0, digits: int = 1, sep: str = " ± ") -> str:
    """``mean ± std`` of a :func:`mean_std` block scaled by ``scale`` (the mean alone for one
    run, ``-`` for none); a plain number is printed as is."""
    if stat is None:
        return "-"
    if not isinstance(stat, Mapping):
        return f"{scale * float(stat):.{digits}f}"
    if stat.get("n", 0) == 0:
        return "-"
    if stat["n"] == 1:
        return f"{scale * stat['mean']:.{digits}f}"
    return f"{scale * stat['mean']:.{digits}f}{sep}{scale * stat['std']:.{digits}f}"


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False
