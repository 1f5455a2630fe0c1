"""A float16 cache larger than memory: train a linear and an MLP edge on 10,000,000 x 384
rows, translate and evaluate them, with the peak resident set of every step.

Generates (once; kept in ``--dir`` for reruns, never inside the repository) two paired
float16 caches of ``--rows`` x ``--dim`` in the package's cache-folder format, written a
block at a time by :class:`bridge.store.CacheWriter`:

- ``x``: rows ``z * s @ Q`` (standard normal ``z``, a decaying spectrum ``s_k ~ (k+1)^-1/2``
  scaled to unit expected squared norm, a fixed random rotation ``Q``);
- ``y``: ``x @ R + noise`` for a fixed random linear map ``R = O diag(g)`` (rotation ``O``,
  gains ``g`` in [0.5, 1.5]) and Gaussian noise of ``--noise`` times the signal's
  per-coordinate scale, computed from the stored (float16) ``x``, so a linear edge has a
  known answer ``R``;
- ids ``train:i`` for all rows but the last ``2 * --held-out``, then ``val:i`` and
  ``test:i`` (``--held-out`` each), the same in both caches (``splits="prefix"``).

Then each step runs in its own process (a clean peak), through the public API:

- ``linear``: ``load_cache`` both caches (memory-mapped), ``ModalityGraph(splits="prefix")``,
  ``connect(..., translator="linear")`` (ridge from moments streamed in one pass over the
  training rows), the relative error of the fitted map against ``R``; the graph is saved;
- ``mlp``: the same with ``translator="mlp"`` and ``epoch_rows`` rows drawn per epoch
  (``--epoch-rows``, ``--epochs``, ``--width``, ``--init``; the training rows are streamed
  in blocks);
- ``evaluate_linear``, ``evaluate_mlp``: ``load_graph`` and ``evaluate_route`` (R@1, R@10)
  of the saved edge on the test slice against its gallery (the test rows of ``y``);
- ``translate_all``: ``graph.translate`` of every row of ``x`` (``--translate-scope all``),
  or of the held-out slice (the default), through the linear edge into an on-disk float16
  memory map (``--translate-rows`` rows per call, the written pages
  handed back after each by :func:`bridge.chunks.release_rows`), then ``retrieval_metrics``
  of its test rows against their gallery.

Every step records its wall time, its resident set after each stage, its absolute peak
(``VmHWM``) and its peak above the process baseline (after the imports). Target: an absolute
peak under 3 GB in every step. Prints a table and writes ``benchmarks/results/big_cache.json``.

    .venv/bin/python benchmarks/big_cache.py [--rows 10000000] [--dim 384] [--dir /tmp/p/big]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rss import MB, Stages, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SRC, DST = "a@x", "b@y"
STEPS = ("generate", "linear", "evaluate_linear", "mlp", "evaluate_mlp", "translate_all")
#: the target of every step: an absolute peak resident set under this
TARGET_MB = 3 * 1000 ** 3 / MB
GB = 1000 ** 3


# ---------------------------------------------------------------------------
# the synthetic caches


def known_map(dim: int, seed: int) -> dict:
    """The fixed parts of the data: rotation ``Q``, spectrum ``s`` (unit expected squared
    row norm) and the linear map ``R`` from ``x`` to ``y``, all float32."""
    rng = np.random.default_rng([seed, 0])
    Q = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    s = (1.0 + np.arange(dim)) ** -0.5
    s /= np.sqrt((s ** 2).sum())
    O = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    R = O * rng.uniform(0.5, 1.5, dim)
    return {"Q": Q.astype(np.float32), "s": s.astype(np.float32), "R": R.astype(np.float32)}


def noise_sigma(spec: dict, parts: dict) -> float:
    """The noise's standard deviation: ``spec["noise"]`` times the per-coordinate scale of
    ``x @ R``, ``sqrt(E|x R|^2 / dim)`` with ``E|x R|^2 = trace(R^T C R)``, ``C`` the
    covariance of ``x``."""
    Q, s, R = (parts[k].astype(np.float64) for k in ("Q", "s", "R"))
    C = (Q.T * s ** 2) @ Q
    return float(spec["noise"] * np.sqrt(np.trace(R.T @ C @ R) / spec["dim"]))


def expected_map_error(spec: dict, parts: dict, n_train: int) -> float:
    """The relative error ``|W - R| / |R|`` least squares is expected to make from
    ``n_train`` rows: ``sigma * sqrt(dim * trace(C^-1) / n_train) / |R|``."""
    Q, s = parts["Q"].astype(np.float64), parts["s"].astype(np.float64)
    trace_inv = float((1.0 / s ** 2).sum())  # C = Q^T diag(s^2) Q
    sigma = noise_sigma(spec, parts)
    return sigma * np.sqrt(spec["dim"] * trace_inv / n_train) / float(
        np.linalg.norm(parts["R"].astype(np.float64)))


def split_ids(rows: int, held_out: int) -> list[str]:
    """``train:i`` for the first ``rows - 2 * held_out`` rows, then ``val:i``, ``test:i``."""
    n_train = rows - 2 * held_out
    if n_train < 2 or held_out < 5:
        raise SystemExit(f"--rows {rows} leaves {n_train} training rows with --held-out "
                         f"{held_out}; need at least 2 training and 5 held-out rows")
    return ([f"train:{i}" for i in range(n_train)] + [f"val:{i}" for i in range(held_out)]
            + [f"test:{i}" for i in range(held_out)])


def spec_of(args) -> dict:
    return {"rows": int(args.rows), "dim": int(args.dim), "held_out": int(args.held_out),
            "noise": float(args.noise), "seed": int(args.seed)}


def cached(folder: Path, spec: dict) -> bool:
    """True when both caches in ``folder`` were generated with ``spec``."""
    import json

    try:
        return all(json.loads((folder / side / "meta.json").read_text()).get("synthetic") == spec
                   for side in ("x", "y"))
    except (OSError, ValueError):
        return False


def generate(folder: Path, spec: dict, block: int = 65536) -> dict:
    """Write the caches ``folder/x`` and ``folder/y`` a block at a time (see the module doc)."""
    from bridge.store import CacheWriter

    rows, dim = spec["rows"], spec["dim"]
    parts = known_map(dim, spec["seed"])
    Q, s, R = parts["Q"], parts["s"], parts["R"]
    sigma = noise_sigma(spec, parts)
    ids = split_ids(rows, spec["held_out"])
    common = dict(rows=rows, dim=dim, ids=ids, dtype="float16", overwrite=True)
    with CacheWriter(folder / "x", meta={"name": "x", "encoder": "x", "synthetic": spec},
                     **common) as wx, \
            CacheWriter(folder / "y", meta={"name": "y", "encoder": "y", "synthetic": spec},
                        **common) as wy:
        del ids, common
        for lo in range(0, rows, block):
            m = min(block, rows - lo)
            rng = np.random.default_rng([spec["seed"], 1, lo])
            x = ((rng.standard_normal((m, dim), dtype=np.float32) * s) @ Q).astype(np.float16)
            y = x.astype(np.float32) @ R
            y += sigma * rng.standard_normal((m, dim), dtype=np.float32)
            wx.append(x)
            wy.append(y)
    return {"sigma": sigma}


# ---------------------------------------------------------------------------
# the steps (each in its own process when run by main())


def _graph(folder: Path):
    import bridge
    from bridge.store import load_cache

    g = bridge.ModalityGraph(splits="prefix")
    g.add_node(SRC, load_cache(folder / "x"))
    g.add_node(DST, load_cache(folder / "y"))
    return g


def _edge_results(metrics: dict) -> dict:
    keys = ("n_train", "n_val", "n_test", "val_R@1", "test_R@1", "test_cos")
    return {k: metrics[k] for k in keys if k in metrics}


def step_linear(folder: Path, args, st: Stages) -> dict:
    g = _graph(folder)
    st.mark("load caches")
    t0 = time.perf_counter()
    metrics = g.connect(SRC, DST, translator="linear", directions="forward")[(SRC, DST)]
    fit_s = time.perf_counter() - t0
    st.mark("connect linear")
    T = g.translator(SRC, DST)
    parts = known_map(args.dim, args.seed)
    R = parts["R"].astype(np.float64)
    err = float(np.linalg.norm(T.W_ - R) / np.linalg.norm(R))
    g.save(folder / "graph-linear", overwrite=True)
    st.mark("save graph")
    return {"fit_seconds": round(fit_s, 2), "W_rel_error": err,
            "W_rel_error_expected": expected_map_error(spec_of(args), parts, metrics["n_train"]),
            "b_norm": float(np.linalg.norm(T.b_)), **_edge_results(metrics)}


def mlp_options(args) -> dict:
    return {"epoch_rows": args.epoch_rows, "epochs": args.epochs, "width": args.width,
            "init": None if args.init == "none" else args.init,
            "patience": max(1, args.epochs)}


def step_mlp(folder: Path, args, st: Stages) -> dict:
    g = _graph(folder)
    st.mark("load caches")
    t0 = time.perf_counter()
    opts = mlp_options(args)
    metrics = g.connect(SRC, DST, translator="mlp", directions="forward", **opts)[(SRC, DST)]
    fit_s = time.perf_counter() - t0
    st.mark("connect mlp")
    g.save(folder / "graph-mlp", overwrite=True)
    st.mark("save graph")
    return {"fit_seconds": round(fit_s, 2), "options": opts, **_edge_results(metrics)}


def step_evaluate(kind: str, folder: Path, args, st: Stages) -> dict:
    """``evaluate_route`` of the edge saved by step ``kind`` on the test slice."""
    from bridge import load_graph
    from bridge.evaluate import evaluate_route

    g = load_graph(folder / f"graph-{kind}", allow_external=True)
    st.mark(f"load graph-{kind}")
    t0 = time.perf_counter()
    m = evaluate_route(g, SRC, DST, route=[SRC, DST], ks=(1, 10))
    st.mark(f"evaluate {kind}")
    return {"R@1": m["R@1"], "R@10": m["R@10"], "MRR": m.get("MRR"),
            "n_queries": m["n_queries"], "n_gallery": m["n_gallery"],
            "evaluate_seconds": round(time.perf_counter() - t0, 2)}


def step_translate_all(folder: Path, args, st: Stages) -> dict:
    from bridge import load_graph
    from bridge.chunks import RowView, release_rows
    from bridge.evaluate import held_out
    from bridge.retrieval import retrieval_metrics

    g = load_graph(folder / "graph-linear", allow_external=True)
    st.mark("load graph-linear")
    x, y = g.cache(SRC), g.cache(DST)
    n = len(x)
    # every row, or the held-out slice (the last 2 * held_out rows: val, then test)
    start = 0 if args.translate_scope == "all" else n - 2 * args.held_out
    out = np.lib.format.open_memmap(folder / "y_hat.npy", "w+", np.float16,
                                    (n - start, args.dim))
    t0 = time.perf_counter()
    step = args.translate_rows
    for lo in range(start, n, step):
        hi = min(n, lo + step)
        g.translate(x.emb[lo:hi], [SRC, DST], out=out[lo - start:hi - start])
        release_rows(out, lo - start, hi - start)
    out.flush()
    seconds = time.perf_counter() - t0
    st.mark(f"translate {'all rows' if start == 0 else 'the held-out slice'}")
    h = held_out(g, SRC, DST)  # the test queries and gallery evaluate_route scores
    if h.q_rows.min() < start:
        raise SystemExit(f"test rows before row {start} were not translated")
    q = np.asarray(out[h.q_rows - start], dtype=np.float32)
    relevant = np.array([r[0] for r in h.relevant]) if h.one_to_one else h.relevant
    m = retrieval_metrics(q, RowView(y.emb, h.g_rows), relevant, ks=(1, 10))
    st.mark("retrieval of the test rows")
    return {"scope": args.translate_scope, "rows_translated": n - start,
            "translate_seconds": round(seconds, 2), "rows_per_s": round((n - start) / seconds),
            "output": str(folder / "y_hat.npy"), "output_GB": round(out.nbytes / GB, 2),
            "R@1": m["R@1"], "R@10": m["R@10"], "n_queries": int(h.q_rows.size),
            "n_gallery": int(h.g_rows.size)}


def step_generate(folder: Path, args, st: Stages) -> dict:
    spec = spec_of(args)
    if cached(folder, spec):
        st.mark("reused")
        return {"reused": True}
    t0 = time.perf_counter()
    info = generate(folder, spec)
    seconds = time.perf_counter() - t0
    st.mark("written")
    return {"reused": False, "generate_seconds": round(seconds, 2),
            "bytes": 2 * spec["rows"] * spec["dim"] * 2, "noise_sigma": info["sigma"]}


RUN = {"generate": step_generate, "linear": step_linear, "mlp": step_mlp,
       "evaluate_linear": partial(step_evaluate, "linear"),
       "evaluate_mlp": partial(step_evaluate, "mlp"), "translate_all": step_translate_all}


def run_step(step: str, folder: Path, args) -> dict:
    """One step in this process: the imports, then the step, measured stage by stage."""
    import bridge  # noqa: F401  (the baseline counts the package and its imports)
    import faiss  # noqa: F401
    import torch  # noqa: F401

    st = Stages()
    t0 = time.perf_counter()
    results = RUN[step](folder, args, st)
    return {"step": step, "rows": int(args.rows), "seconds": round(time.perf_counter() - t0, 2),
            **st.summary(), "results": results}


# ---------------------------------------------------------------------------
# the driver


def _results_text(r: dict) -> str:
    res = r["results"]
    if r["step"] == "generate":
        return "reused" if res.get("reused") else f"{res['bytes'] / GB:.1f} GB written"
    if r["step"] == "linear":
        return (f"|W-R|/|R| {res['W_rel_error']:.2e} (expected {res['W_rel_error_expected']:.2e})"
                f"  test R@1 {res.get('test_R@1', 0):.3f}  cos {res.get('test_cos', 0):.3f}")
    if r["step"] == "mlp":
        return f"test R@1 {res.get('test_R@1', 0):.3f}  cos {res.get('test_cos', 0):.3f}"
    if r["step"].startswith("evaluate"):
        return f"R@1 {res['R@1']:.3f}  R@10 {res['R@10']:.3f}  ({res['n_queries']} queries)"
    return (f"{res['rows_translated']:,} rows ({res['scope']}), {res['rows_per_s']:,} rows/s  "
            f"R@1 {res['R@1']:.3f}  R@10 {res['R@10']:.3f}")


def merged(path: Path, data: dict, results: list[dict]) -> list[dict]:
    """``results`` with the steps of an earlier run on the same data (``path``, when it
    holds one) that this run did not repeat, in step order; each step keeps its command."""
    import json

    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    by_step = {r["step"]: {"command": old.get("command"), **r} for r in old.get("steps", [])
               } if old.get("data") == data else {}
    by_step.update({r["step"]: r for r in results})
    return [by_step[s] for s in STEPS if s in by_step]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--held-out", type=int, default=10_000,
                   help="validation rows, and as many test rows (default 10000)")
    p.add_argument("--noise", type=float, default=3.0,
                   help="noise of y, times the per-coordinate scale of x @ R (default 3.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epoch-rows", type=int, default=500_000,
                   help="MLP rows drawn per epoch (default 500000)")
    p.add_argument("--epochs", type=int, default=2, help="MLP epochs (default 2)")
    p.add_argument("--width", type=int, default=1024, help="MLP width (default 1024)")
    p.add_argument("--init", choices=("lstsq", "procrustes", "none"), default="lstsq",
                   help="MLP start: the closed form (one more streamed pass over the "
                        "training rows) or none (random; default lstsq)")
    p.add_argument("--translate-scope", choices=("all", "held-out"), default="held-out",
                   help="translate_all: every row of x, or only the held-out slice (val and "
                        "test rows; default held-out)")
    p.add_argument("--translate-rows", type=int, default=250_000,
                   help="rows per graph.translate call in translate_all (default 250000)")
    p.add_argument("--steps", default=",".join(STEPS),
                   help=f"comma-separated steps to run (default: all of {','.join(STEPS)})")
    p.add_argument("--dir", type=Path, default=Path("/tmp/bridge-big"),
                   help="folder for the generated caches (kept for reruns; default "
                        "/tmp/bridge-big)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "big_cache.json")
    p.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.step:  # child process
        import json

        print(json.dumps(run_step(args.step, args.dir, args)))
        return 0
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        p.error(f"unknown steps {unknown}; expected some of {list(STEPS)}")
    if ROOT in args.dir.resolve().parents or args.dir.resolve() == ROOT:
        p.error("--dir must be outside the repository (the caches are large)")
    args.dir.mkdir(parents=True, exist_ok=True)
    split_ids(min(args.rows, 2 * args.held_out + 2), args.held_out)  # refuses bad sizes early
    passed = list(argv if argv is not None else sys.argv[1:])
    forward = [str(v) for name in ("rows", "dim", "held_out", "noise", "seed", "epoch_rows",
                                   "epochs", "width", "init", "translate_scope",
                                   "translate_rows", "dir")
               for v in ("--" + name.replace("_", "-"), getattr(args, name))]
    results = []
    print(f"{'step':<14} {'seconds':>9} {'baseline MB':>12} {'peak MB':>9} {'above MB':>9}  "
          "results", flush=True)
    for step in steps:
        r = run_child(__file__, ["--step", step, *forward], ROOT)
        results.append(r)
        print(f"{r['step']:<14} {r['seconds']:>9.1f} {r['baseline_MB']:>12.0f} "
              f"{r['peak_abs_MB']:>9.0f} {r['peak_above_baseline_MB']:>9.0f}  "
              f"{_results_text(r)}", flush=True)
    from bridge import __version__
    from bridge.files import write_json

    data = {**spec_of(args), "dtype": "float16", "caches": 2,
            "bytes_per_cache": args.rows * args.dim * 2, "dir": str(args.dir)}
    command = "python benchmarks/big_cache.py " + " ".join(passed)
    for r in results:
        r["command"] = command
    results = merged(args.out, data, results)
    under = all(r["peak_abs_MB"] < TARGET_MB for r in results)
    write_json(args.out, {
        "benchmark": "big_cache",
        "command": command,
        "bridge_version": __version__,
        "machine": {"cpus": "2 shared CPU cores", "platform": platform.platform(),
                    "python": platform.python_version()},
        "data": data,
        "measure": "each step in its own process; baseline = VmRSS after importing bridge, "
                   "torch and faiss; peak_abs = VmHWM of the process (the resident set "
                   "counts touched pages of memory-mapped files); stages = VmRSS and VmHWM "
                   "after each stage",
        "target": {"peak_abs_MB_below": round(TARGET_MB, 1), "met": under},
        "steps": results,
    })
    print(f"target: absolute peak < 3 GB in every step: {'met' if under else 'NOT met'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
