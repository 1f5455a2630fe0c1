"""Peak memory of translation, exact retrieval and fusion on a 2,000,000 x 384 float16 memmap.

Generates the rows (random, float16, ``--rows`` x 384, 1.5 GB at the default size) in a
temporary folder, or in ``--dir`` (kept there for reruns; never inside the repository), then
runs each step in its own subprocess so that every peak is clean:

- ``translate_memmap``: ``graph.translate(x, route, out=open_memmap(...))`` through a linear
  edge (384 -> 384) trained by ``ModalityGraph.connect``; the output lives on disk;
- ``translate_ram``: the same into an in-memory output array;
- ``retrieval``: ``retrieval_metrics`` of ``--queries`` queries against the first
  ``--gallery`` rows of the memmap (exact, pessimistic ties);
- ``fusion``: ``fused_metrics`` (z-score) over two views of the first ``--gallery // 2``
  items: the raw rows and their translations (read from the ``translate_memmap`` output).

For each step the peak resident set above the step's baseline (measured after its setup,
with ``/proc/self/clear_refs`` resetting the peak) is recorded, with and without the output
array, plus wall time. Prints a table and writes ``benchmarks/results/memory.json``.

    .venv/bin/python benchmarks/memory.py [--rows 2000000] [--dir /tmp/bridge-mem]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rss import MB, reset_peak, status  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIM = 384


def make_input(path: Path, rows: int, seed: int = 0) -> None:
    if path.exists():
        x = np.load(path, mmap_mode="r")
        if x.shape == (rows, DIM) and x.dtype == np.float16:
            return
    x = np.lib.format.open_memmap(path, "w+", np.float16, (rows, DIM))
    rng = np.random.default_rng(seed)
    for s in range(0, rows, 100_000):
        e = min(rows, s + 100_000)
        x[s:e] = rng.standard_normal((e - s, DIM)).astype(np.float16)
    x.flush()
    del x


def small_graph():
    """Two 384-d nodes with 2,000 paired rows and a linear edge, trained by connect()."""
    import bridge
    from bridge.store import Cache

    rng = np.random.default_rng(1)
    n = 2000
    A = rng.standard_normal((n, DIM)).astype(np.float32)
    R = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0]
    B = (A @ R + 0.2 * rng.standard_normal((n, DIM))).astype(np.float32)
    ids = [str(i) for i in range(n)]
    g = bridge.ModalityGraph()
    g.add_node("src@a", Cache.from_arrays(A, ids))
    g.add_node("dst@b", Cache.from_arrays(B, ids))
    g.connect("src@a", "dst@b", translator="linear", directions="forward")
    return g


def run_step(step: str, folder: Path, args) -> dict:
    """One step, in this (fresh) process: setup, reset the peak, run, measure."""
    from bridge.fusion import fused_metrics
    from bridge.retrieval import retrieval_metrics

    x = np.load(folder / "x.npy", mmap_mode="r")
    n = x.shape[0]
    g = small_graph()
    route = ["src@a", "dst@b"]
    rng = np.random.default_rng(2)
    out_bytes = 0
    extra = {}
    if step in ("retrieval", "fusion"):
        nq = args.queries
        gal = args.gallery if step == "retrieval" else args.gallery // 2
        rows = np.sort(rng.choice(gal, nq, replace=False))
        q = np.asarray(x[rows], dtype=np.float32) + 0.3 * rng.standard_normal((nq, DIM)).astype(np.float32)
        if step == "fusion":
            y = np.load(folder / "y.npy", mmap_mode="r")
            qb = g.translate(q, route)
    reset_peak()
    base = status("VmRSS")
    t0 = time.perf_counter()
    if step == "translate_memmap":
        out = np.lib.format.open_memmap(folder / "y.npy", "w+", np.float32, (n, DIM))
        g.translate(x, route, out=out)
        out.flush()
        out_bytes = out.nbytes
    elif step == "translate_ram":
        out = g.translate(x, route)
        out_bytes = out.nbytes
    elif step == "retrieval":
        m = retrieval_metrics(q, x[:gal], rows, ks=(1, 10))
        extra = {"R@1": m["R@1"], "R@10": m["R@10"], "n_queries": nq, "n_gallery": gal}
    elif step == "fusion":
        m = fused_metrics([q, qb], [x[:gal], y[:gal]], rows, ks=(1, 10))
        extra = {"R@1": m["R@1"], "R@10": m["R@10"], "n_queries": nq, "n_gallery": gal,
                 "routes": 2}
    seconds = time.perf_counter() - t0
    peak = status("VmHWM") - base
    return {"step": step, "rows": int(n), "seconds": round(seconds, 2),
            "peak_above_baseline_MB": round(peak / MB, 1),
            "output_MB": round(out_bytes / MB, 1),
            "peak_minus_output_MB": round((peak - out_bytes) / MB, 1), **extra}


STEPS = ("translate_memmap", "translate_ram", "retrieval", "fusion")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--gallery", type=int, default=1_000_000)
    p.add_argument("--dir", type=Path, default=None,
                   help="folder for the generated arrays (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    p.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step:  # child process
        print(json.dumps(run_step(args.step, args.dir, args)))
        return 0
    if args.dir is not None and ROOT in args.dir.resolve().parents:
        p.error("--dir must be outside the repository (the arrays are large)")
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bridge-mem-")
        args.dir = Path(tmp.name)
    args.dir.mkdir(parents=True, exist_ok=True)
    args.gallery = min(args.gallery, args.rows)
    t0 = time.perf_counter()
    make_input(args.dir / "x.npy", args.rows)
    print(f"input: {args.rows} x {DIM} float16 in {args.dir} "
          f"({time.perf_counter() - t0:.0f} s to prepare)", flush=True)
    results = []
    for step in STEPS:
        cmd = [sys.executable, __file__, "--step", step, "--dir", str(args.dir),
               "--rows", str(args.rows), "--queries", str(args.queries),
               "--gallery", str(args.gallery)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"step {step} failed")
        r = json.loads(res.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{r['step']:<18} {r['seconds']:>8.1f} s  peak {r['peak_above_baseline_MB']:>8.1f} MB"
              f"  output {r['output_MB']:>7.1f} MB  peak - output {r['peak_minus_output_MB']:>7.1f} MB",
              flush=True)
    from bridge import __version__
    from bridge.files import write_json

    write_json(args.out, {
        "benchmark": "memory",
        "command": "python benchmarks/memory.py " + " ".join(argv or sys.argv[1:]),
        "bridge_version": __version__,
        "input": {"rows": args.rows, "dim": DIM, "dtype": "float16",
                  "bytes": args.rows * DIM * 2},
        "measure": "VmHWM - VmRSS after setup (peak reset through /proc/self/clear_refs), "
                   "each step in its own process; 'peak_minus_output' leaves out the output "
                   "array (in RAM, or the dirty pages of the output memmap)",
        "steps": results,
    })
    print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
