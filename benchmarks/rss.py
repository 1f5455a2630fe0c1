"""Resident-set measurements for the memory benchmarks (``memory.py``, ``big_cache.py``).

- :func:`status` reads a ``/proc/self/status`` field (``VmRSS``: resident now, ``VmHWM``:
  the peak so far) in bytes;
- :func:`reset_peak` restarts ``VmHWM`` at the current resident set (``/proc/self/clear_refs``);
- :class:`Stages` records wall time and resident set after each stage of a step;
- :func:`run_child` runs one step of a benchmark in a fresh interpreter (a clean peak) and
  returns the JSON object it prints last.

Linux only (``/proc``). The resident set counts the pages of memory-mapped files that the
process touched, so a step that streams a file larger than memory stays small only if it
hands those pages back (:func:`bridge.chunks.release_rows`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["MB", "status", "reset_peak", "Stages", "run_child"]

MB = 2 ** 20


def status(key: str) -> int:
    """Field ``key`` of ``/proc/self/status`` (``"VmRSS"``, ``"VmHWM"``...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak() -> None:
    """Restart the peak (``VmHWM``) at the current resident set."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Stages:
    """Wall time and resident set after each stage of one step, against the process's
    baseline (the resident set when the object is made, after the imports)."""

    def __init__(self):
        self.base = status("VmRSS")
        self.t0 = time.perf_counter()
        self.rows: list[dict] = []

    def mark(self, stage: str) -> dict:
        row = {"stage": stage, "seconds": round(time.perf_counter() - self.t0, 2),
               "rss_MB": round(status("VmRSS") / MB, 1),
               "peak_MB": round(status("VmHWM") / MB, 1)}
        self.rows.append(row)
        return row

    def summary(self) -> dict:
        """Baseline, absolute peak and peak above the baseline, in MB, with the stages."""
        peak = status("VmHWM")
        return {"baseline_MB": round(self.base / MB, 1), "peak_abs_MB": round(peak / MB, 1),
                "peak_above_baseline_MB": round((peak - self.base) / MB, 1),
                "stages": self.rows}


def run_child(script: str | Path, args: list[str], root: Path) -> dict:
    """Run ``python script *args`` with ``root`` on ``PYTHONPATH``; the child prints one
    JSON object as its last line of output, which is returned. A failing child raises
    :class:`SystemExit` with the end of its error output."""
    cmd = [sys.executable, str(script), *args]
    env = dict(os.environ, PYTHONPATH=str(root))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"step {' '.join(args[:2])} failed (exit {res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])
