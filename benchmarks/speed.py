"""Speed of the package against the machine's own limits, measured side by side in one run.

Every figure is set against a reference measured in the same process, on the same data:

- ``matmul``: torch float32 matrix products of the shapes used below (GFLOP/s), the
  machine's limit for dense work at the configured thread count;
- ``train``: pairs/s of ``make_translator(kind).fit`` for ``linear`` (ridge),
  ``procrustes`` and ``mlp`` at 384 and 1024 dimensions on synthetic pairs. For the MLP
  the FLOPs of one epoch (forward + backward of every linear layer, 3x the forward
  product, plus the contrastive logits ``pred @ target.T`` and their gradient) give the
  achieved GFLOP/s and its fraction of the matmul limit; a plain PyTorch loop of the same
  network, loss terms, optimiser and batch size is the reference;
- ``exact``: ``retrieval_metrics`` (flat) and ``ranks_of_relevant`` against a plain
  blocked torch product (and numpy) of the same queries x gallery, and a Faiss flat top-10;
- ``ann``: Faiss HNSW and IVF through ``build_index``/``index_search`` on galleries of
  1,000,000 x 384 (smaller with ``--quick`` or ``--ann-rows``), one entry per data set:
  ``spectrum`` (a Gaussian gallery whose covariance eigenvalues are measured at run time
  on a real embedding cache, ``--spectrum-source``; queries are gallery rows plus noise
  of the same spectrum at cosine ``query_cos`` to their row, as translated queries sit
  near their targets) and ``isotropic`` (uniformly random unit gallery and queries: the
  worst case for any index). Recall of the exact top-10 and the speed-up over the exact
  Faiss flat search of the same queries, for sweeps of ``efSearch`` and ``nprobe``, the
  HNSW build time and index size; and the gallery in ``shards`` contiguous shards
  (``bridge.sharded``, flat and ivf) against the single index;
- ``translate``: rows/s of ``transform`` of each fitted kind;
- ``routes``: ``ModalityGraph.route`` for every ordered pair of a 200-node random graph of
  tiny fitted edges, against networkx's all-pairs Dijkstra on the same graph.

Each step records its wall time and its peak resident set (``VmHWM`` after resetting it
through ``/proc/self/clear_refs``, so each peak is the step's own, including what was
already resident when it started). The machine may be shared: the load average at the
start and the end is in the JSON. Prints a table and writes
``benchmarks/results/speed.json`` (``speed_quick.json`` with ``--quick``).

    .venv/bin/python benchmarks/speed.py [--quick] [--threads N] [--device DEV]
        [--skip train,translate,exact,routes,ann] [--out PATH] [--update]
        [--ann-rows N] [--ann-data spectrum,isotropic] [--spectrum-source PATH]
        [--hnsw-m M] [--ef-construction N] [--ef-values 16,32,..] [--nprobe-values 4,8,..]

``--update`` merges the parts measured into the existing JSON (each part records the
command and date of its run under ``runs``), so a long part can be re-measured alone.
``--device`` (``cpu``, ``cuda``, ``auto``) adds the torch path of the exact products
(``retrieval_metrics(..., device=)``, ``exact_search``) next to the default numpy one;
Faiss indexes go to the GPU only when Faiss has GPU support. On a shared machine run
with ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP threads of Faiss otherwise slow its
multi-threaded flat search several times over when the cores are oversubscribed.

The HNSW graph (M=32, efConstruction=100) is the long step: on 2 heavily shared cores
it took about 15 minutes for 300,000 rows and had not finished after 50 minutes for
1,000,000 (pass ``--ann-rows`` to size it to the time there is).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MB = 2 ** 20


# ---------------------------------------------------------------------------
# machine, memory and timing helpers


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


class Step:
    """``with Step(results, "name") as s: ...``: wall seconds and the step's peak RSS."""

    def __init__(self, log: dict, name: str):
        self.log, self.name = log, name

    def __enter__(self):
        gc.collect()
        self.rss0 = _status_kb("VmRSS") / 1024
        self.clean = _reset_peak()
        self.t0 = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {self.name} ...", flush=True)
        return self

    def __exit__(self, *exc):
        sec = time.perf_counter() - self.t0
        peak = _status_kb("VmHWM") / 1024
        self.log[self.name] = {"seconds": round(sec, 3), "rss_start_mb": round(self.rss0, 1),
                               "peak_rss_mb": round(peak, 1), "peak_is_step_own": self.clean}
        return False


def _best_time(fn, reps: int = 3, min_seconds: float = 0.0) -> float:
    """Smallest wall time of ``reps`` calls (one warm-up first)."""
    fn()
    best = float("inf")
    t_all = time.perf_counter()
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if i >= 1 and time.perf_counter() - t_all > max(min_seconds, 30.0):
            break
    return best


# ---------------------------------------------------------------------------
# the matmul limit


def matmul_gflops(torch, m: int, k: int, n: int, reps: int = 5) -> float:
    """GFLOP/s of a float32 ``(m, k) @ (k, n)`` product in torch (best of ``reps``)."""
    a = torch.randn(m, k)
    b = torch.randn(k, n)
    out = torch.empty(m, n)
    flop = 2.0 * m * k * n
    inner = max(1, int(0.05 * 50e9 / flop))  # about 50 ms a timed call at 50 GFLOP/s

    def run():
        for _ in range(inner):
            torch.matmul(a, b, out=out)

    t = _best_time(run, reps) / inner
    return flop / t / 1e9


def mlp_gemms(d: int, width: int, batch: int) -> list[tuple[int, int, int]]:
    """The matrix products of one training step of the default MLP (skip, input layer,
    one residual block, head) and the contrastive logits, as ``(m, k, n)``: each linear
    layer ``(batch, a) -> (batch, b)`` is a forward product and its two gradient products
    (input and weight; the input layers' input gradient is not needed but is counted in
    the 3x rule of thumb, as a plain loop would not skip it either)."""
    layers = [(d, d), (d, width), (width, width), (width, d)]
    out = []
    for a, b in layers:
        out += [(batch, a, b), (batch, b, a), (a, batch, b)]
    # logits = pred @ target.T (batch x batch over d) and the gradient of pred
    out += [(batch, d, batch), (batch, batch, d)]
    return out


def gemm_limit(torch, gemms, cache: dict) -> dict:
    """Time of the products ``gemms`` at the measured rate of each shape: the matmul-only
    time of one step, its FLOPs and the rate they imply."""
    flops = 0.0
    seconds = 0.0
    for m, k, n in gemms:
        if (m, k, n) not in cache:
            cache[(m, k, n)] = matmul_gflops(torch, m, k, n)
        f = 2.0 * m * k * n
        flops += f
        seconds += f / (cache[(m, k, n)] * 1e9)
    return {"flops_per_step": flops, "gemm_seconds_per_step": seconds,
            "limit_gflops": flops / seconds / 1e9}


# ---------------------------------------------------------------------------
# synthetic data


def paired_data(n: int, d: int, seed: int):
    """``Y = X A + noise`` with unit-scale rows, float32."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32)
    A = rng.standard_normal((d, d), dtype=np.float32) / np.sqrt(d)
    Y = X @ A + 0.3 * rng.standard_normal((n, d), dtype=np.float32)
    return X, Y.astype(np.float32)


def clustered(n: int, d: int, seed: int, centers: int = 1000, latent: int = 16,
              spread: float = 0.5, noise: float = 0.1, rng=None):
    """Rows drawn around ``centers`` unit-norm cluster centres, each cluster spread along
    its own random ``latent``-dimensional subspace (offsets of typical norm ``spread``)
    plus isotropic noise (typical norm ``noise``): a low intrinsic dimension in a 384-d
    space, as embeddings have. L2-normalised, float32."""
    rng = rng or np.random.default_rng(seed)
    C = rng.standard_normal((centers, d), dtype=np.float32)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    bases = rng.standard_normal((centers, latent, d), dtype=np.float32) * (
        float(spread / np.sqrt(latent * d)))
    out = np.empty((n, d), dtype=np.float32)
    step = 262144
    for s in range(0, n, step):
        e = min(n, s + step)
        out[s:e] = _draw(rng, e - s, C, bases, noise)
    return out, (C, bases)


def _draw(rng, n, C, bases, noise):
    """``n`` rows: a random centre each, plus its subspace spread and noise, normalised."""
    latent, d = bases.shape[1], bases.shape[2]
    lab = rng.integers(0, C.shape[0], n)
    order = np.argsort(lab, kind="stable")
    cuts = np.searchsorted(lab[order], np.arange(C.shape[0] + 1))
    x = float(noise / np.sqrt(d)) * rng.standard_normal((n, d), dtype=np.float32)
    for c in range(C.shape[0]):
        rows = order[cuts[c]:cuts[c + 1]]
        if rows.size:
            z = rng.standard_normal((rows.size, latent), dtype=np.float32)
            x[rows] += C[c] + z @ bases[c]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


# ---------------------------------------------------------------------------
# the steps


def bench_matmul(torch, cfg, log, out):
    shapes = {}
    with Step(log, "matmul"):
        for d in cfg["dims"]:
            for m, k, n in mlp_gemms(d, cfg["width"], cfg["batch"]):
                shapes[(m, k, n)] = matmul_gflops(torch, m, k, n)
        for nq, ng, d in cfg["exact"]:
            b = min(nq, 1024)
            shapes[(b, d, min(ng, 16384))] = matmul_gflops(torch, b, d, min(ng, 16384))
        shapes[(2048, 2048, 2048)] = matmul_gflops(torch, 2048, 2048, 2048)
    out["matmul"] = {f"{m}x{k}x{n}": round(g, 1) for (m, k, n), g in shapes.items()}
    out["matmul_peak_gflops"] = round(max(shapes.values()), 1)
    return shapes


def plain_mlp_epoch(torch, X, Y, width, batch, epochs, seed, temperature=0.05):
    """A plain PyTorch loop of the same network and loss terms (symmetric InfoNCE + MSE),
    AdamW, one step a batch: seconds for ``epochs`` passes."""
    import torch.nn.functional as F

    from bridge.translators.mlp import MLPNet

    torch.manual_seed(seed)
    net = MLPNet(X.shape[1], Y.shape[1], width=width, depth=2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    n = Xt.shape[0]
    net.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            if idx.shape[0] < 2:
                continue
            xb, yb = Xt[idx], Yt[idx]
            pred = net(xb)
            p, t = F.normalize(pred, dim=-1), F.normalize(yb, dim=-1)
            logits = p @ t.T / temperature
            target = torch.arange(idx.shape[0])
            loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
            loss = loss + F.mse_loss(pred, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def bench_train(torch, cfg, log, out, shapes):
    from bridge.translators import make_translator

    rows, fitted = [], {}
    n, epochs, batch, width = cfg["pairs"], cfg["epochs"], cfg["batch"], cfg["width"]
    for d in cfg["dims"]:
        X, Y = paired_data(n, d, seed=d)
        for kind in ("linear", "procrustes"):
            name = f"train_{kind}_{d}"
            with Step(log, name):
                T = make_translator(kind).fit(X, Y)
            sec = log[name]["seconds"]
            # closed form: X^T X and X^T Y (2 n d^2 each) dominate
            flops = 4.0 * n * d * d
            lim = gemm_limit(torch, [(d, min(n, 8192), d)], shapes)["limit_gflops"]
            rows.append({"step": name, "kind": kind, "dim": d, "pairs": n,
                         "pairs_per_s": n / sec, "gflops": flops / sec / 1e9,
                         "limit_gflops": lim, "fraction_of_limit": flops / sec / 1e9 / lim})
            fitted[(kind, d)] = T
        name = f"train_mlp_{d}"
        with Step(log, name):
            T = make_translator("mlp", epochs=epochs, batch_size=batch, width=width,
                                patience=epochs + 1).fit(X, Y)
        rows.append(mlp_record(torch, shapes, log, d, n, epochs, batch, width,
                               plain_seconds=_plain(torch, log, X, Y, d, width, batch, epochs)))
        fitted[("mlp", d)] = T
    out["train"] = rows
    return fitted


def _plain(torch, log, X, Y, d, width, batch, epochs) -> float:
    with Step(log, f"train_mlp_{d}_plain_torch"):
        return plain_mlp_epoch(torch, X, Y, width, batch, epochs, seed=0)


def mlp_record(torch, shapes, log, d, n, epochs, batch, width, plain_seconds) -> dict:
    """Figures of the MLP fit of dimension ``d`` against the matmul limit and the plain
    loop. ``fit`` seconds include the closed-form start (a ridge fit, about the time of
    the linear edge's fit); the ``loop`` figures subtract that time (an estimate)."""
    sec = log[f"train_mlp_{d}"]["seconds"]
    init = log.get(f"train_linear_{d}", {}).get("seconds", 0.0)
    loop_sec = max(sec - init, 1e-9)
    psec = plain_seconds
    lim = gemm_limit(torch, mlp_gemms(d, width, batch), shapes)
    flops = lim["flops_per_step"] / batch * n * epochs  # per pair, all epochs
    limit_pairs = batch / lim["gemm_seconds_per_step"]
    return {"step": f"train_mlp_{d}", "kind": "mlp", "dim": d, "pairs": n, "epochs": epochs,
            "pairs_per_s": n * epochs / sec,
            "gflops": flops / sec / 1e9, "limit_gflops": lim["limit_gflops"],
            "fraction_of_limit": flops / sec / 1e9 / lim["limit_gflops"],
            "init_seconds_est": init,
            "loop_pairs_per_s_est": n * epochs / loop_sec,
            "loop_fraction_of_limit_est": flops / loop_sec / 1e9 / lim["limit_gflops"],
            "limit_pairs_per_s": limit_pairs,
            "gflop_per_epoch": lim["flops_per_step"] / batch * n / 1e9,
            "plain_torch_pairs_per_s": n * epochs / psec,
            "plain_torch_fraction_of_limit": flops / psec / 1e9 / lim["limit_gflops"],
            "ratio_to_plain_torch": psec / sec, "loop_ratio_to_plain_torch_est": psec / loop_sec}


def bench_translate(cfg, log, out, fitted):
    rows = []
    for (kind, d), T in fitted.items():
        X, _ = paired_data(cfg["translate_rows"], d, seed=7)
        name = f"translate_{kind}_{d}"
        with Step(log, name):
            sec = _best_time(lambda: T.transform(X), reps=1)
        rows.append({"step": name, "kind": kind, "dim": d, "rows": X.shape[0],
                     "rows_per_s": X.shape[0] / sec, "seconds": sec})
    out["translate"] = rows


def blocked_product(torch, Q, G, block=1024):
    """The plain reference: ``Q @ G.T`` in query blocks (scores only, discarded)."""
    Qt, Gt = torch.from_numpy(Q), torch.from_numpy(G)
    buf = torch.empty(min(block, Q.shape[0]), G.shape[0])
    for s in range(0, Q.shape[0], block):
        q = Qt[s:s + block]
        torch.matmul(q, Gt.T, out=buf[:q.shape[0]])


def bench_exact(torch, cfg, log, out, device=None):
    import faiss

    from bridge.retrieval import build_index, ranks_of_relevant, retrieval_metrics, search

    rows = []
    for nq, ng, d in cfg["exact"]:
        rng = np.random.default_rng(nq + ng)
        G, model = clustered(ng, d, seed=ng, centers=max(10, ng // 100))
        rel = rng.choice(ng, nq, replace=False)
        Q = G[rel] + 0.05 * rng.standard_normal((nq, d), dtype=np.float32)
        Q /= np.linalg.norm(Q, axis=1, keepdims=True)
        tag = f"{nq}x{ng}x{d}"
        rec = {"shape": tag, "queries": nq, "gallery": ng, "dim": d,
               "product_gflop": 2.0 * nq * ng * d / 1e9}
        with Step(log, f"exact_product_torch_{tag}"):
            rec["product_torch_s"] = _best_time(lambda: blocked_product(torch, Q, G), reps=2)
        with Step(log, f"exact_product_numpy_{tag}"):
            def np_prod():
                for s in range(0, nq, 1024):
                    Q[s:s + 1024] @ G.T
            rec["product_numpy_s"] = _best_time(np_prod, reps=1)
        with Step(log, f"exact_retrieval_metrics_{tag}"):
            got = {}
            # the best of two, as the products are (the machine's load changes)
            rec["retrieval_metrics_s"] = _timed_twice(
                lambda: got.setdefault("m", retrieval_metrics(Q, G, rel)))
            m = got["m"]
        rec["R@1"] = m["R@1"]
        if device is not None:
            dev_tag = device.replace(":", "")
            with Step(log, f"exact_product_torch_{dev_tag}_{tag}"):
                rec[f"product_torch_{dev_tag}_s"] = _best_time(
                    lambda: device_product(torch, Q, G, device), reps=2)
            with Step(log, f"exact_retrieval_metrics_{dev_tag}_{tag}"):
                retrieval_metrics(Q[:64], G, rel[:64], device=device)  # warm
                t0 = time.perf_counter()
                md = retrieval_metrics(Q, G, rel, device=device)
                rec[f"retrieval_metrics_{dev_tag}_s"] = time.perf_counter() - t0
            rec[f"retrieval_metrics_{dev_tag}_same_as_numpy"] = md == m
            rec[f"retrieval_metrics_{dev_tag}_x_product_{dev_tag}"] = (
                rec[f"retrieval_metrics_{dev_tag}_s"] / rec[f"product_torch_{dev_tag}_s"])
        with Step(log, f"exact_ranks_of_relevant_{tag}"):
            rec["ranks_of_relevant_s"] = _timed_twice(lambda: ranks_of_relevant(Q, G, rel))
        with Step(log, f"exact_faiss_flat_top10_{tag}"):
            t0 = time.perf_counter()
            index = build_index(G, "flat")
            rec["faiss_flat_build_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            search(Q, index, k=10)
            rec["faiss_flat_top10_s"] = time.perf_counter() - t0
        del index
        derive_exact(rec)
        rows.append(rec)
        del G, Q
        gc.collect()
    out["exact"] = rows
    _ = faiss


def _timed_twice(fn) -> float:
    """The smaller wall time of two calls of ``fn`` (no warm-up call)."""
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def device_product(torch, Q, G, device, block=1024):
    """The plain reference on a torch device: ``Q @ G.T`` in query blocks, the gallery
    moved to the device once (included), scores discarded."""
    dev = torch.device(device)
    Gt = torch.from_numpy(G).to(dev)
    Qt = torch.from_numpy(Q).to(dev)
    buf = torch.empty(min(block, Q.shape[0]), G.shape[0], device=dev)
    for s in range(0, Q.shape[0], block):
        q = Qt[s:s + block]
        torch.matmul(q, Gt.T, out=buf[:q.shape[0]])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def derive_exact(rec: dict) -> dict:
    """Ratios of an exact-retrieval record to the plain product: the faster of the torch
    and numpy blocked products of the same queries x gallery."""
    base = min(rec["product_torch_s"], rec["product_numpy_s"])
    rec["product_best_s"] = base
    rec["product_gflops"] = rec["product_gflop"] / base
    for k in ("retrieval_metrics_s", "ranks_of_relevant_s", "faiss_flat_top10_s"):
        rec[k[:-2] + "_x_product"] = rec[k] / base
    return rec


def spectrum_of(path) -> np.ndarray:
    """Eigenvalues (descending, >= 0) of the covariance of the rows of a real embedding
    cache (a ``.npy`` file, float16 or float32): the only thing taken from it."""
    X = np.load(path, mmap_mode="r")
    mean = np.zeros(X.shape[1])
    cov = np.zeros((X.shape[1], X.shape[1]))
    for s in range(0, X.shape[0], 65536):
        B = np.asarray(X[s:s + 65536], dtype=np.float64)
        mean += B.sum(0)
        cov += B.T @ B
    n = X.shape[0]
    mean /= n
    cov = cov / n - np.outer(mean, mean)
    return np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)


def spectrum_gallery(n: int, d: int, eigenvalues: np.ndarray, seed: int):
    """``n`` rows from a zero-mean Gaussian whose covariance has the given eigenvalues
    along a random orthonormal basis, L2-normalised, float32 (and the map that draws
    them: ``rows = z @ A.T`` for standard normal ``z``)."""
    rng = np.random.default_rng(seed)
    ev = np.zeros(d)
    ev[:min(d, eigenvalues.shape[0])] = eigenvalues[:d]
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = (basis * np.sqrt(ev)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 262144):
        e = min(n, s + 262144)
        out[s:e] = rng.standard_normal((e - s, d), dtype=np.float32) @ A.T
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, A


def near_queries(G: np.ndarray, A: np.ndarray, nq: int, cos: float, seed: int):
    """Queries near gallery rows: row ``t`` plus noise drawn from the same spectrum,
    scaled so that the expected cosine to the row is ``cos``, normalised. Returns the
    queries and their target rows."""
    rng = np.random.default_rng(seed)
    tgt = rng.choice(G.shape[0], nq, replace=False)
    Z = rng.standard_normal((nq, G.shape[1]), dtype=np.float32) @ A.T
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    Q = G[tgt] + float(np.sqrt(1.0 / cos ** 2 - 1.0)) * Z
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    return Q, tgt


def isotropic(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` uniformly random unit rows (isotropic Gaussian, normalised), float32."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 262144):
        e = min(n, s + 262144)
        out[s:e] = rng.standard_normal((e - s, d), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def ann_data(kind: str, cfg, n: int, d: int, nq: int):
    """Gallery, queries and a description of the ``kind`` data set of the ann step."""
    if kind == "isotropic":
        G = isotropic(n, d, seed=11)
        Q = isotropic(nq, d, seed=12)
        return G, Q, {"data": "isotropic: gallery and queries uniformly random unit vectors "
                              "(independent); the worst case for any graph or cell index",
                      "data_kind": "isotropic"}
    path = Path(cfg["spectrum_source"])
    if not path.is_file():
        raise SystemExit(f"spectrum source {path} not found: pass --spectrum-source PATH (a "
                         f"real .npy embedding cache), or --ann-data isotropic")
    ev = spectrum_of(path)
    G, A = spectrum_gallery(n, d, ev, seed=11)
    Q, tgt = near_queries(G, A, nq, cfg["query_cos"], seed=12)
    cos = float(np.mean(np.sum(Q * G[tgt], axis=1)))
    return G, Q, {
        "data": f"spectrum: Gaussian gallery whose covariance eigenvalues are those measured "
                f"on {path.name} (only the eigenvalues are used; random orthonormal basis), "
                f"rows normalised; queries = gallery rows plus noise of the same spectrum at "
                f"cosine {cfg['query_cos']} to their row",
        "data_kind": "spectrum", "spectrum_source": str(path),
        "spectrum_effective_dim": float(ev.sum() ** 2 / (ev ** 2).sum()),
        "query_target_cos_mean": cos}


def bench_ann(torch, cfg, log, out, device=None):
    """Approximate search on each data set of ``cfg["ann_data"]`` (see :func:`ann_data`)."""
    out.setdefault("ann", {})
    for kind in cfg["ann_data"]:
        out["ann"][kind] = bench_ann_one(torch, cfg, log, kind, device)
        if cfg.get("save"):
            cfg["save"]()


def bench_ann_one(torch, cfg, log, kind, device=None):
    import faiss

    from bridge.retrieval import build_index, exact_search, faiss_has_gpu, index_search, set_search

    n, d, nq = cfg["ann_rows"], 384, cfg["ann_queries"]
    tag = f"ann_{kind}"
    with Step(log, f"{tag}_generate"):
        G, Q, desc = ann_data(kind, cfg, n, d, nq)
    res = {"gallery": n, "dim": d, "queries": nq, "k": 10, **desc,
           "faiss_threads": faiss.omp_get_max_threads()}
    with Step(log, f"{tag}_exact_flat"):
        index = build_index(G, "flat", normalized=True)
        index_search(index, Q[:50], 10)  # warm
        t0 = time.perf_counter()
        truth_s, truth = index_search(index, Q, 10)
        res["exact_flat_s"] = time.perf_counter() - t0
    flat = index  # kept: each speed-up is against a flat search timed right beside it

    def flat_time() -> float:
        t0 = time.perf_counter()
        index_search(flat, Q, 10)
        return time.perf_counter() - t0
    if device is not None:
        with Step(log, f"{tag}_exact_torch_{device}"):
            exact_search(Q[:50], G, 10, device=device, normalized=True)
            t0 = time.perf_counter()
            _, rows_t = exact_search(Q, G, 10, device=device, normalized=True)
            res[f"exact_search_{device}_s"] = time.perf_counter() - t0
            res[f"exact_search_{device}_same_rows_as_flat"] = float(np.mean(rows_t == truth))

    def recall(rows):
        return float(np.mean([len(np.intersect1d(a, b)) / 10.0 for a, b in zip(rows, truth)]))

    def sweep(index, param, values, setter):
        # the machine may be shared and its load changes: the exact flat search of the
        # same queries is timed again just before each point, and the point's speed-up
        # is against that time
        pts = []
        for v in values:
            setter(index, v)
            index_search(index, Q[:50], 10)  # warm
            base_s = flat_time()
            t0 = time.perf_counter()
            _, rows = index_search(index, Q, 10)
            sec = time.perf_counter() - t0
            pts.append({param: v, "seconds": sec, "recall@10": recall(rows),
                        "flat_seconds": base_s, "speedup_vs_flat": base_s / sec,
                        "qps": nq / sec})
        good = [p for p in pts if p["recall@10"] >= 0.95]
        best = max(good, key=lambda p: p["speedup_vs_flat"]) if good else max(
            pts, key=lambda p: p["recall@10"])
        return pts, best

    m, efc = cfg["hnsw_m"], cfg["ef_construction"]
    with Step(log, f"{tag}_hnsw_build"):
        index = build_index(G, "hnsw", hnsw_m=m, ef_construction=efc, normalized=True)
    res["hnsw"] = {"hnsw_m": m, "ef_construction": int(index.hnsw.efConstruction),
                   "build_s": log[f"{tag}_hnsw_build"]["seconds"],
                   "build_peak_rss_mb": log[f"{tag}_hnsw_build"]["peak_rss_mb"],
                   "index_mb": (index.ntotal * d * 4 + index.hnsw.neighbors.size() * 4) / MB}
    with Step(log, f"{tag}_hnsw_search"):
        pts, best = sweep(index, "ef_search", cfg["ef_values"],
                          lambda ix, v: setattr(ix.hnsw, "efSearch", int(v)))
    res["hnsw"].update({"sweep": pts, "chosen": best})
    del index
    gc.collect()
    nlist = cfg["nlist"]
    ivf_dev = device if (device is not None and str(device).startswith("cuda")
                         and faiss_has_gpu()) else None
    with Step(log, f"{tag}_ivf_build"):
        index = build_index(G, "ivf", nlist=nlist, normalized=True, device=ivf_dev)
    res["ivf"] = {"nlist": nlist, "build_s": log[f"{tag}_ivf_build"]["seconds"],
                  "device": str(ivf_dev or "cpu")}
    with Step(log, f"{tag}_ivf_search"):
        pts, best = sweep(index, "nprobe", cfg["nprobe_values"],
                          lambda ix, v: setattr(ix, "nprobe", int(v)))
    res["ivf"].update({"sweep": pts, "chosen": best})
    ivf_best = best
    del index
    gc.collect()
    pq_nlist = cfg["pq_nlist"]
    with Step(log, f"{tag}_ivfpq_build"):
        index = build_index(G, "ivfpq", nlist=pq_nlist, refine=cfg["pq_refine"], normalized=True)
    res["ivfpq"] = {"nlist": pq_nlist, "pq_m": int(faiss.downcast_index(index.base_index).pq.M),
                    "bits": 4, "refine": cfg["pq_refine"],
                    "build_s": log[f"{tag}_ivfpq_build"]["seconds"],
                    "build_peak_rss_mb": log[f"{tag}_ivfpq_build"]["peak_rss_mb"]}
    with Step(log, f"{tag}_ivfpq_search"):
        pts, best = sweep(index, "nprobe", cfg["pq_nprobe_values"],
                          lambda ix, v: set_search(ix, nprobe=int(v)))
    res["ivfpq"].update({"sweep": pts, "chosen": best})
    del index
    gc.collect()
    res["sharded"] = bench_sharded(cfg, log, tag, G, Q, truth, truth_s, flat_time, recall,
                                   ivf_best)
    del G, flat
    gc.collect()
    return res


def bench_sharded(cfg, log, tag, G, Q, truth, truth_s, flat_time, recall, ivf_best):
    """The gallery in ``cfg["shards"]`` contiguous shards (one index each, merged top-10)
    against the single index: flat (same rows and scores?) and ivf (each shard with
    ``nlist / shards`` cells, the single index's best ``nprobe``)."""
    from bridge.sharded import build_sharded

    S = cfg["shards"]
    rows_out = []
    with Step(log, f"{tag}_sharded_flat"):
        t0 = time.perf_counter()
        sh = build_sharded(G, S, "flat", normalized=True)
        build_s = time.perf_counter() - t0
        sh.search(Q[:50], 10, normalized=True)
        flat_s = flat_time()  # the single index, timed beside the sharded one
        t0 = time.perf_counter()
        s_sc, s_rows = sh.search(Q, 10, normalized=True)
        sec = time.perf_counter() - t0
    rows_out.append({"kind": "flat", "shards": S, "build_s": build_s, "seconds": sec,
                     "single_seconds": flat_s, "time_x_single": sec / flat_s,
                     "recall@10": recall(s_rows), "same_rows_as_single": bool(
                         np.array_equal(s_rows, truth)),
                     "same_scores_as_single": bool(np.array_equal(s_sc, truth_s))})
    del sh
    gc.collect()
    nprobe = ivf_best["nprobe"]
    with Step(log, f"{tag}_sharded_ivf"):
        t0 = time.perf_counter()
        sh = build_sharded(G, S, "ivf", nlist=max(1, cfg["nlist"] // S), nprobe=nprobe,
                           normalized=True)
        build_s = time.perf_counter() - t0
        sh.search(Q[:50], 10, normalized=True)
        flat_s = flat_time()
        t0 = time.perf_counter()
        _, s_rows = sh.search(Q, 10, normalized=True)
        sec = time.perf_counter() - t0
    rows_out.append({"kind": "ivf", "shards": S, "nlist_per_shard": max(1, cfg["nlist"] // S),
                     "nprobe": nprobe, "build_s": build_s, "seconds": sec,
                     "single_seconds": ivf_best["seconds"],
                     "time_x_single": sec / ivf_best["seconds"],
                     "recall@10": recall(s_rows), "single_recall@10": ivf_best["recall@10"],
                     "flat_seconds": flat_s, "speedup_vs_flat": flat_s / sec})
    del sh
    gc.collect()
    return rows_out


def bench_routes(cfg, log, out):
    import networkx as nx

    from bridge.graph import ModalityGraph
    from bridge.translators import make_translator

    n_nodes, deg = cfg["route_nodes"], cfg["route_degree"]
    rng = np.random.default_rng(5)
    Xs, Ys = paired_data(16, 4, seed=3)
    T = make_translator("linear").fit(Xs, Ys)
    g = ModalityGraph()
    names = [f"n{i:03d}" for i in range(n_nodes)]
    for name in names:
        g.add_node(name, dim=4)
    edges = set()
    for i in range(n_nodes):  # a ring in both directions keeps every pair reachable
        edges.add((i, (i + 1) % n_nodes))
        edges.add(((i + 1) % n_nodes, i))
        for j in rng.choice(n_nodes, deg, replace=False):
            if j != i:
                edges.add((i, int(j)))
    with Step(log, "routes_build_graph"):
        for i, j in sorted(edges):
            g.add_edge(names[i], names[j], T,
                       metrics={"val_R@1": float(rng.uniform(0.3, 0.99)), "n_val": 1000})
    res = {"nodes": n_nodes, "edges": len(edges), "pairs": n_nodes * (n_nodes - 1)}
    budget = cfg["route_budget_s"]
    with Step(log, "routes_all_pairs"):
        t0 = time.perf_counter()
        done = 0
        for a in names:
            for b in names:
                if a != b:
                    g.route(a, b)
                    done += 1
            if time.perf_counter() - t0 > budget:
                break
        sec = time.perf_counter() - t0
    with Step(log, "routes_all_pairs_planner"):
        t0 = time.perf_counter()
        every = g.all_routes()
        res["all_routes_s"] = time.perf_counter() - t0
        res["all_routes_pairs"] = len(every)
        # the same routes as one graph.route call per pair, at the same cost
        res["all_routes_agree"] = all(
            abs(every[(a, b)].cost - g.route(a, b).cost) < 1e-12
            for a, b in list(every)[:: max(1, len(every) // 500)])
    res["pairs_routed"] = done
    res["route_s"] = sec
    res["route_all_pairs_s_est"] = sec * res["pairs"] / max(done, 1)
    res["routes_per_s"] = done / sec
    with Step(log, "routes_networkx_all_pairs"):
        t0 = time.perf_counter()
        dict(nx.all_pairs_dijkstra_path(g.G, weight="cost"))
        res["networkx_all_pairs_dijkstra_s"] = time.perf_counter() - t0
    res["ratio_to_networkx"] = res["route_all_pairs_s_est"] / res["networkx_all_pairs_dijkstra_s"]
    out["routes"] = res


# ---------------------------------------------------------------------------
# report


def _f(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1e5:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def report(out) -> str:
    lines = []
    t = out.get("train", [])
    lines.append("training (pairs/s; GFLOP/s and fraction of the matmul limit of the same shapes)")
    lines.append(common.format_table(
        [[r["step"], _f(r["pairs_per_s"], 0), _f(r["gflops"]), _f(r["limit_gflops"]),
          _f(r["fraction_of_limit"], 2), _f(r.get("plain_torch_pairs_per_s"), 0),
          _f(r.get("ratio_to_plain_torch"), 2)] for r in t],
        ["edge", "pairs/s", "GFLOP/s", "limit", "fraction", "plain torch", "vs plain"]))
    lines.append("")
    lines.append("exact retrieval (seconds; x = ratio to the faster plain product, torch or numpy)")
    lines.append(common.format_table(
        [[r["shape"], _f(r["product_torch_s"], 2), _f(r["product_numpy_s"], 2),
          _f(r["retrieval_metrics_s"], 2), _f(r["retrieval_metrics_x_product"], 2),
          _f(r["ranks_of_relevant_s"], 2), _f(r["ranks_of_relevant_x_product"], 2),
          _f(r["faiss_flat_top10_s"], 2), _f(r["faiss_flat_top10_x_product"], 2)]
         for r in out.get("exact", [])],
        ["queries x gallery x d", "torch", "numpy", "metrics", "x", "ranks", "x",
         "faiss top10", "x"]))
    lines.append("")
    a = out.get("ann")
    if a:
        lines += _ann_lines(a)
    lines.append(common.format_table(
        [[r["step"], _f(r["rows_per_s"], 0)] for r in out.get("translate", [])],
        ["translate", "rows/s"]))
    lines.append("")
    r = out.get("routes")
    if r:
        lines.append(f"routes: {r['pairs_routed']} of {r['pairs']} pairs on {r['nodes']} nodes / "
                     f"{r['edges']} edges in {r['route_s']:.2f} s (all pairs est. "
                     f"{r['route_all_pairs_s_est']:.2f} s); networkx all-pairs Dijkstra "
                     f"{r['networkx_all_pairs_dijkstra_s']:.3f} s")
        if "all_routes_s" in r:
            lines.append(f"graph.all_routes(): {r['all_routes_pairs']} pairs in "
                         f"{r['all_routes_s']:.3f} s (same costs as graph.route: "
                         f"{r['all_routes_agree']})")
        lines.append("")
    lines.append(common.format_table(
        [[k, _f(v["seconds"], 2), _f(v["peak_rss_mb"], 0)] for k, v in out["steps"].items()],
        ["step", "seconds", "peak RSS MB"]))
    return "\n".join(lines)


def _ann_lines(ann) -> list[str]:
    lines = []
    for kind, a in ann.items():
        if not isinstance(a, dict) or "hnsw" not in a:
            continue
        extra = "".join(f", {k[:-2].replace('_', ' ')} {v:.2f} s" for k, v in a.items()
                        if k.startswith("exact_search_") and k.endswith("_s"))
        lines.append(f"approximate top-10, {kind} data, {a['gallery']:,} x {a['dim']} "
                     f"({a['queries']} queries); exact flat {a['exact_flat_s']:.2f} s{extra}")
        rows = []
        h = a["hnsw"]
        for pt in h["sweep"]:
            rows.append([f"hnsw M={h['hnsw_m']} efC={h['ef_construction']} ef={pt['ef_search']}",
                         _f(h["build_s"], 1), _f(pt["seconds"], 3), _f(pt["recall@10"], 3),
                         _f(pt["speedup_vs_flat"], 1)])
        for pt in a["ivf"]["sweep"]:
            rows.append([f"ivf nlist={a['ivf']['nlist']} nprobe={pt['nprobe']}",
                         _f(a["ivf"]["build_s"], 1), _f(pt["seconds"], 3),
                         _f(pt["recall@10"], 3), _f(pt["speedup_vs_flat"], 1)])
        pq = a.get("ivfpq")
        for pt in (pq or {}).get("sweep", []):
            rows.append([f"ivfpq nlist={pq['nlist']} pq={pq['pq_m']}x4 refine={pq['refine']} "
                         f"nprobe={pt['nprobe']}", _f(pq["build_s"], 1), _f(pt["seconds"], 3),
                         _f(pt["recall@10"], 3), _f(pt["speedup_vs_flat"], 1)])
        for r in a.get("sharded", []):
            rows.append([f"{r['shards']} shards {r['kind']}", _f(r["build_s"], 1),
                         _f(r["seconds"], 3), _f(r["recall@10"], 3),
                         _f(r.get("speedup_vs_flat", r["single_seconds"] / r["seconds"]), 1)])
        lines.append(common.format_table(rows, ["index", "build s", "search s", "recall@10",
                                                "speed-up"]))
        for r in a.get("sharded", []):
            if r["kind"] == "flat":
                lines.append(f"sharded flat: same rows as one flat index "
                             f"{r['same_rows_as_single']}, same scores "
                             f"{r['same_scores_as_single']}, time x single "
                             f"{r['time_x_single']:.2f}")
        lines.append("")
    return lines


def config(quick: bool) -> dict:
    common_ann = {"hnsw_m": 32, "ef_construction": 100, "query_cos": 0.85, "shards": 4,
                  "ann_data": ["spectrum", "isotropic"],
                  "spectrum_source": str(Path(__file__).resolve().parents[2] / "shared" /
                                         "embeddings" / "multi30k" / "train.en.minilm.npy")}
    if quick:
        return {"dims": [384, 1024], "pairs": 8000, "epochs": 1, "batch": 512, "width": 1024,
                "exact": [(1000, 29000, 384)], "ann_rows": 100_000, "ann_queries": 500,
                **common_ann, "ef_values": [32, 64, 128], "nlist": 256,
                "nprobe_values": [8, 16, 32], "pq_nlist": 256, "pq_nprobe_values": [16, 32, 64],
                "pq_refine": 8, "translate_rows": 20000, "route_nodes": 200,
                "route_degree": 4, "route_budget_s": 10.0}
    return {"dims": [384, 1024], "pairs": 50_000, "epochs": 1, "batch": 512, "width": 1024,
            "exact": [(1000, 29000, 384), (10000, 100000, 384)], "ann_rows": 1_000_000,
            "ann_queries": 1000, **common_ann, "ef_values": [16, 32, 64, 128, 256, 512],
            "nlist": 1024, "nprobe_values": [4, 8, 16, 32, 64], "pq_nlist": 2048,
            "pq_nprobe_values": [64, 128, 256, 384], "pq_refine": 8, "translate_rows": 50_000,
            "route_nodes": 200, "route_degree": 4, "route_budget_s": 30.0}


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise SystemExit(f"expected comma-separated integers >= 1, got {text!r}")
    return vals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (about 3 minutes)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--out", default=None, help="result JSON path")
    ap.add_argument("--update", action="store_true",
                    help="merge into the existing result JSON: replace only the parts this "
                    "run measures (each part keeps the command and date of its run)")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out "
                    "(train, exact, ann, translate, routes)")
    ap.add_argument("--device", default=None,
                    help="device of the exact products (None: numpy; cpu, cuda, auto: torch)")
    ap.add_argument("--ann-rows", type=int, default=0,
                    help="gallery rows of the approximate-search step (default 1,000,000; "
                    "100,000 with --quick)")
    ap.add_argument("--ann-data", default=None,
                    help="comma-separated data sets of the approximate-search step: spectrum, "
                    "isotropic (default both)")
    ap.add_argument("--spectrum-source", default=None,
                    help="real .npy embedding cache whose covariance eigenvalues shape the "
                    "spectrum data set (default ../shared/embeddings/multi30k/"
                    "train.en.minilm.npy)")
    ap.add_argument("--hnsw-m", type=int, default=0, help="HNSW links per node (default 32)")
    ap.add_argument("--ef-construction", type=int, default=0,
                    help="HNSW build breadth (default 100)")
    ap.add_argument("--ef-values", default=None, help="HNSW efSearch sweep, e.g. 32,64,128")
    ap.add_argument("--nprobe-values", default=None, help="IVF nprobe sweep, e.g. 8,16,32")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    threads = common.set_threads(args.threads)
    import torch

    from bridge.retrieval import resolve_device

    try:
        dev = resolve_device(args.device)
    except Exception as e:  # a bad --device: say so and stop
        raise SystemExit(f"--device: {e}") from None
    device = None if dev is None else str(dev)
    common.set_seed(0)
    cfg = config(args.quick)
    if args.ann_rows:
        cfg["ann_rows"] = args.ann_rows
    if args.ann_data:
        kinds = [k.strip() for k in args.ann_data.split(",") if k.strip()]
        bad = [k for k in kinds if k not in ("spectrum", "isotropic")]
        if bad or not kinds:
            raise SystemExit(f"--ann-data: unknown data set {bad or args.ann_data!r}; expected "
                             f"spectrum and/or isotropic")
        cfg["ann_data"] = kinds
    if args.spectrum_source:
        cfg["spectrum_source"] = args.spectrum_source
    if args.hnsw_m:
        cfg["hnsw_m"] = args.hnsw_m
    if args.ef_construction:
        cfg["ef_construction"] = args.ef_construction
    if args.ef_values:
        cfg["ef_values"] = _ints(args.ef_values)
    if args.nprobe_values:
        cfg["nprobe_values"] = _ints(args.nprobe_values)
    skip = {s for s in args.skip.split(",") if s}
    machine = {"cpu_model": _cpu_model(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "threads_asked": threads,
               "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE")
                                     * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
               "device": device, "gpu": (torch.cuda.get_device_name(dev) if dev is not None
                                         and dev.type == "cuda" else None),
               "loadavg_start": _loadavg()}
    out: dict = {"machine": machine, "quick": args.quick, "config": dict(cfg)}
    log: dict = {}
    out["steps"] = log
    path = Path(args.out) if args.out else common.results_dir() / (
        "speed_quick.json" if args.quick else "speed.json")
    parts = [p for p in ("train", "translate", "exact", "routes", "ann") if p not in skip]
    run_info = {"command": common.command_line(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": machine, "config": dict(cfg)}

    def save():  # after every part, so an interrupted run keeps what it measured
        machine["loadavg_end"] = _loadavg()
        payload = out
        if args.update and path.is_file():
            import json

            payload = json.loads(path.read_text())
            payload.pop("meta", None)
            runs = payload.setdefault("runs", {})
            for p in parts:
                if p not in out:
                    continue
                if p == "ann":  # one entry per data set; others measured before are kept
                    old = payload.get("ann")
                    keep = old if isinstance(old, dict) and all(
                        isinstance(v, dict) and "data_kind" in v for v in old.values()) else {}
                    payload["ann"] = {**keep, **out["ann"]}
                    payload.pop("ann_run", None)
                    for kind in out["ann"]:
                        runs[f"ann:{kind}"] = run_info
                else:
                    payload[p] = out[p]
                    runs[p] = run_info
            if "matmul" in out:
                payload["matmul"] = out["matmul"]
                payload["matmul_peak_gflops"] = out["matmul_peak_gflops"]
            payload.setdefault("steps", {}).update(log)
        common.write_result(path, payload, started)

    cfg["save"] = save
    # the matmul limit is what training and exact retrieval are set against
    shapes = bench_matmul(torch, cfg, log, out) if {"train", "exact"} - skip else {}
    fitted = {}
    if "train" not in skip:
        fitted = bench_train(torch, cfg, log, out, shapes)
        save()
    if "translate" not in skip:
        bench_translate(cfg, log, out, fitted)
        save()
    if "exact" not in skip:
        bench_exact(torch, cfg, log, out, device)
        save()
    if "routes" not in skip:
        bench_routes(cfg, log, out)
        save()
    if "ann" not in skip:
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        bench_ann(torch, cfg, log, out, device)
    save()
    print(report(out))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
