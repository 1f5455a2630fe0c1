"""Train one MLP edge on several processes with ``torch.distributed`` (DDP).

Launched by ``torchrun`` (one process per GPU, or per CPU slot with the gloo backend)::

    torchrun --nproc_per_node 2 -m bridge.distributed --src SRC_CACHE --dst DST_CACHE \\
        --out EDGE_DIR [--val-fraction 0.1] [--test-fraction 0.1] [--epochs 20 ...]

Every rank opens the same memory-mapped caches, pairs their rows by shared ids and
splits the pairs by group exactly as :meth:`bridge.ModalityGraph.connect` does, and
draws the same global batch order (:func:`bridge.training.chunk_plan`, seeded). Rank
``r`` reads only its slice of each global batch from the caches, runs its replica of the
network on it (:class:`torch.nn.parallel.DistributedDataParallel`), and the predictions
and targets of all ranks are gathered with the autograd-aware
:func:`torch.distributed.nn.functional.all_gather`, so that every rank computes the loss
of the whole global batch (the contrastive loss needs every row of it). The backward of
that gather sums the gradients of the ``world`` identical losses, which makes each
rank's gradient ``world`` times its share of the single-process gradient; DDP averages
over the ``world`` ranks, so the step is exactly the single-process step. The learnt
temperature of the loss, outside DDP, gets the full gradient on every rank. For the same
seed and global batch the trained weights therefore equal one process's, up to float
rounding (sums split across ranks round differently). **Dropout masks cannot match**: each
rank draws its masks for its own rows, so with ``dropout > 0`` the runs differ (both are
valid training runs); equality holds for ``dropout=0``.

The closed-form start (``init``) is computed by rank 0 in one streamed pass and broadcast
by DDP. Validation and early stopping run identically on every rank (same weights, same
held-out rows); rank 0 saves the edge atomically (:meth:`~bridge.translators.Translator.save`).
Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) the module trains in one
process through the same code.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .errors import BridgeError, InvalidEmbeddings, InvalidParameter

__all__ = ["fit_distributed", "train_edge", "ShardedRows", "main", "world_from_env"]


def world_from_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` as ``torchrun`` sets them (``(0, 1, 0)`` without
    it); a value that is not a non-negative integer raises :class:`InvalidParameter`."""
    out = []
    for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = os.environ.get(key)
        try:
            v = default if raw is None else int(raw)
        except ValueError:
            v = -1
        if v < 0 or (key == "WORLD_SIZE" and v < 1):
            raise InvalidParameter(f"environment variable {key}={raw!r}: expected a "
                                   f"{'positive' if key == 'WORLD_SIZE' else 'non-negative'} "
                                   "integer (as torchrun sets it)")
        out.append(v)
    rank, world, local = out
    if rank >= world:
        raise InvalidParameter(f"environment variable RANK={rank} is not below "
                               f"WORLD_SIZE={world}")
    return rank, world, local


class ShardedRows:
    """The batch source of one rank (see :func:`bridge.training.fit_rows`).

    Every rank draws the same global batches as one process would from the same rows:
    :func:`~bridge.training.chunk_plan` over blocks of ``chunk_rows`` rows when a side is
    streamed (:func:`~bridge.training.is_streamed`, as :class:`~bridge.training.ChunkedRows`),
    else over one block
    (the in-memory order of :class:`~bridge.training.MemoryRows`). Of a global batch of
    ``b`` rows, rank ``r`` reads rows ``r*k : (r+1)*k`` (``k = ceil(b / world)``), padded
    with zero rows to ``k`` so that every rank gathers tensors of one shape; the padding
    is cut off after the gather. Rows read from a memory map or view are checked for
    NaN/inf and every rank learns of a bad row on any rank (one small all-reduce a
    batch), so all of them raise the same :class:`~bridge.errors.InvalidEmbeddings`.
    """

    def __init__(self, X, Y, labels, dev, model, chunk_rows: int, rank: int, world: int,
                 names=("X", "Y")):
        import torch

        from .chunks import lazy
        from .training import is_streamed, label_codes

        self.X, self.Y, self.dev, self.model = X, Y, dev, model
        self.n = int(X.shape[0])
        self.check = any(lazy(a) or isinstance(a, np.memmap) for a in (X, Y))
        self.block = int(chunk_rows) if any(is_streamed(a) for a in (X, Y)) else max(self.n, 1)
        self.rank, self.world, self.names = rank, world, names
        self.labels = label_codes(labels, dev)
        self._torch = torch

    def epoch(self, gen, batch_size: int, epoch_rows: int | None = None):
        from .training import chunk_plan, cut_batches

        torch = self._torch
        for segments, size in cut_batches(chunk_plan(self.n, self.block, gen, epoch_rows),
                                          batch_size):
            idx = torch.cat([lo + off for lo, off in segments])
            k = -(-size // self.world)
            own = idx[self.rank * k : (self.rank + 1) * k].numpy()
            xb, bad_x = self._read(self.X, own, k)
            yb, bad_y = self._read(self.Y, own, k)
            if self.check:
                self._agree_finite(bad_x, bad_y)
            lb = None if self.labels is None else self.labels[idx.to(self.labels.device)]
            yield (xb, yb, lb, size), size

    def _read(self, a, own: np.ndarray, k: int):
        """This rank's rows ``own`` of ``a`` padded to ``k`` rows, and the first row of
        ``a`` among them holding NaN/inf (-1: none)."""
        from .chunks import read_rows

        out = np.zeros((k, a.shape[1]), np.float32)
        bad = -1
        if own.size:
            rows = np.asarray(read_rows(a, own), dtype=np.float32)
            if self.check:
                nonfinite = np.flatnonzero(~np.isfinite(rows).all(axis=1))
                if nonfinite.size:
                    bad = int(own[nonfinite].min())
            out[: own.size] = rows
        return self._torch.from_numpy(out).to(self.dev), bad

    def _agree_finite(self, bad_x: int, bad_y: int) -> None:
        """Raise on every rank when a rank read a non-finite row (named by its index)."""
        import torch.distributed as dist

        torch = self._torch
        big = self.n + 1
        flags = torch.tensor([big if b < 0 else b for b in (bad_x, bad_y)], dtype=torch.int64,
                             device=self.dev)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        for row, name in zip(flags.tolist(), self.names):
            if row < big:
                raise InvalidEmbeddings(f"{name}: 1 row(s) hold NaN or inf values (rows {row}); "
                                        "expected finite values in every row")

    def loss(self, run, batch, cycle_weight: float):
        """The loss of the whole global batch, from every rank's predictions and targets."""
        from torch.distributed.nn.functional import all_gather

        xb, yb, lb, size = batch
        pred = self.model(xb)  # the DDP replica: its backward all-reduces the gradients
        with warnings.catch_warnings():  # torch 2.13 marks it deprecated; it still works
            warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather",
                                    FutureWarning)
            preds = self._torch.cat(all_gather(pred))[:size]
            targets = self._torch.cat(all_gather(yb))[:size]
        return run.loss_fn(preds, targets, lb)


def _agree(fn, rank: int, what: str):
    """Run ``fn`` on rank 0 only, and let every rank know whether it worked: rank 0
    re-raises its own error, the others raise :class:`BridgeError` pointing to it (so no
    rank waits forever for a rank that failed). Returns ``fn()`` on rank 0, else None."""
    import torch
    import torch.distributed as dist

    out, err = None, None
    if rank == 0:
        try:
            out = fn()
        except Exception as e:  # reported to every rank, then re-raised below
            err = e
    flag = torch.tensor([0 if err is None else 1], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.broadcast(flag, src=0)
    if err is not None:
        raise err
    if int(flag.item()):
        raise BridgeError(f"rank 0 failed while {what}; its error is in its output")
    return out


def fit_distributed(translator, X, Y, X_val=None, Y_val=None, labels=None,
                    labels_val=None, device=None):
    """Fit an MLP edge on every rank of the initialised default process group.

    Call it on every rank with the same arguments (the same rows: memory maps of the
    same caches, or equal arrays). ``translator`` is an unfitted
    :class:`~bridge.translators.MLPTranslator` (its hyper-parameters are used; it stays
    unfitted); its ``batch_size`` is the global batch and must be a multiple of the world
    size. ``device`` (default: the translator's, with ``"cuda"`` meaning this rank's GPU
    ``cuda:LOCAL_RANK``) holds this rank's replica. Returns a new fitted translator, the
    same on every rank; its ``fit_report_`` adds ``world_size``. See the module doc for
    why the result equals one process's (dropout aside).
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from .training import fit_rows
    from .translators import MLPTranslator, make_translator

    t0 = time.perf_counter()
    if not dist.is_available() or not dist.is_initialized():
        raise BridgeError("fit_distributed needs an initialised torch.distributed process "
                          "group (launch with torchrun, or call "
                          "torch.distributed.init_process_group first)")
    if not isinstance(translator, MLPTranslator):
        raise InvalidParameter(f"fit_distributed trains MLP edges; expected an MLPTranslator, "
                               f"got {type(translator).__name__}")
    T = make_translator(translator)  # a fresh unfitted copy, parameters checked
    rank, world = dist.get_rank(), dist.get_world_size()
    if T.batch_size % world:
        raise InvalidParameter(f"batch_size={T.batch_size} (the global batch) is not a "
                               f"multiple of the world size {world}; pick a batch size "
                               f"divisible by {world}")
    X, Y, X_val, Y_val = T.check_training_pairs(X, Y, X_val, Y_val, labels, labels_val)
    dev = _rank_device(device if device is not None else T.device)
    net = _agree(lambda: T.init_network(X, Y), rank, "computing the closed-form start")
    if net is None:
        net = T.build(X.shape[1], Y.shape[1])  # replaced by rank 0's weights below
    net.to(dev)
    ddp = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    rows = ShardedRows(X, Y, labels, dev, ddp, T.chunk_rows, rank, world)
    opts = T.train_options()
    opts.pop("chunk_rows")
    opts["device"] = str(dev)
    opts["progress"] = bool(opts["progress"]) and rank == 0
    rep, _ = fit_rows(net, rows, X_val, Y_val, labels_val, **opts)
    T.net_ = net.cpu().eval()
    T.in_dim_, T.out_dim_ = int(X.shape[1]), int(Y.shape[1])
    T.fit_report_ = {**rep.to_dict(), "seconds": time.perf_counter() - t0,
                     "n_train": int(X.shape[0]), "world_size": world}
    return T


def _rank_device(device):
    """This rank's device: ``cuda`` (or ``auto`` on a CUDA machine) becomes
    ``cuda:LOCAL_RANK``."""
    import torch

    from .training import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", world_from_env()[2])
    return dev


def train_edge(src, dst, out, val_fraction: float = 0.1, test_fraction: float = 0.1,
               seed: int = 0, overwrite: bool = False, device=None, **params) -> dict:
    """Train the MLP edge ``src -> dst`` on every rank and save it on rank 0.

    ``src`` and ``dst`` are cache paths (read memory-mapped, :func:`bridge.load_cache`);
    their rows pair by shared ids and split by group into train/val/test with
    ``(1 - val_fraction - test_fraction, val_fraction, test_fraction)`` and ``seed``, as
    :meth:`bridge.ModalityGraph.connect` pairs and splits them (rows of one id share a
    label, so repeated targets are positives of each other). Training rows stay in the
    caches (lazy row views, each rank reading its slices); validation rows are read into
    memory. ``params`` are :class:`~bridge.translators.MLPTranslator` hyper-parameters
    (``seed`` sets its seed too). Rank 0 writes the edge folder ``out`` (config.json +
    model.safetensors; the held-out figures in ``fit_report.edge_metrics``). Returns the
    edge's held-out metrics (``val_R@1``, ``test_R@1``, ...), on every rank.
    """
    import torch.distributed as dist

    from .chunks import RowView
    from .graph import ModalityGraph, held_out_metrics, pair_components
    from .store import load_cache
    from .translators import make_translator

    T = make_translator("mlp", **{"seed": seed, **params})
    fractions = _fractions(val_fraction, test_fraction)
    caches = {}
    for flag, path in (("--src", src), ("--dst", dst)):
        if not Path(path).exists():
            raise InvalidParameter(f"{flag} {str(path)!r}: no cache there; expected a cache "
                                   "folder or file written by bridge (bridge cache build)")
        caches[flag] = load_cache(path, mmap=True)
    g = ModalityGraph(fractions=fractions, seed=seed)
    g.add_node("src", caches["--src"])
    g.add_node("dst", caches["--dst"])
    P = g.pairs("src", "dst")
    idx = g.split(P)
    g.check_split_sizes("src", "dst", P, idx, None)
    labels = pair_components(P)
    cs, cd = caches["--src"], caches["--dst"]
    tr, va = idx["train"], idx["val"]
    F = fit_distributed(T, RowView(cs.emb, P.a_rows[tr]), RowView(cd.emb, P.b_rows[tr]),
                        cs.vectors(P.a_rows[va]), cd.vectors(P.b_rows[va]),
                        labels=labels[tr], labels_val=labels[va], device=device)
    metrics = held_out_metrics(F, cs, cd, P.a_rows, P.b_rows, idx, labels)
    F.fit_report_["edge_metrics"] = metrics
    F.fit_report_["split"] = {"fractions": list(fractions), "seed": seed,
                              **{f"n_{k}": int(v.size) for k, v in idx.items()}}
    _agree(lambda: F.save(out, overwrite=overwrite), dist.get_rank(), f"saving {out}")
    return metrics


def _fractions(val: float, test: float) -> tuple[float, float, float]:
    for name, v in (("--val-fraction", val), ("--test-fraction", test)):
        if not (isinstance(v, (int, float)) and 0 <= v < 1):
            raise InvalidParameter(f"{name} {v!r}: expected a fraction in [0, 1)")
    if val <= 0:
        raise InvalidParameter(f"--val-fraction {val!r}: expected a fraction > 0 (validation "
                               "rows drive early stopping)")
    if val + test >= 1:
        raise InvalidParameter(f"--val-fraction {val!r} plus --test-fraction {test!r} leave no "
                               "training rows; expected a sum below 1")
    return (1.0 - val - test, float(val), float(test))


#: MLP options of the command line: flag -> (parameter, type)
_OPTIONS = {
    "--width": ("width", int), "--depth": ("depth", int), "--dropout": ("dropout", float),
    "--init": ("init", str), "--loss": ("loss", str), "--alpha": ("alpha", float),
    "--epochs": ("epochs", int), "--batch-size": ("batch_size", int), "--lr": ("lr", float),
    "--weight-decay": ("weight_decay", float), "--patience": ("patience", int),
    "--temperature": ("temperature", float), "--epoch-rows": ("epoch_rows", int),
    "--chunk-rows": ("chunk_rows", int),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node N -m bridge.distributed",
        description="Train one MLP edge on several processes (DistributedDataParallel; gloo "
                    "on CPU, nccl on CUDA) and save it. The same seed and global batch give "
                    "the weights of one process (with dropout 0: dropout masks differ).")
    p.add_argument("--src", required=True, help="source cache (read memory-mapped)")
    p.add_argument("--dst", required=True, help="target cache (read memory-mapped)")
    p.add_argument("--out", required=True, help="edge folder to write (config.json + "
                                                "model.safetensors)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of training")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda'")
    p.add_argument("--backend", default="auto", choices=("auto", "gloo", "nccl"),
                   help="process-group backend (auto: nccl on CUDA, else gloo)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty folder that is not a translator")
    for flag, (name, typ) in _OPTIONS.items():
        p.add_argument(flag, dest=name, type=(_none_or(typ) if name in ("init", "epoch_rows")
                                              else typ), default=argparse.SUPPRESS,
                       help=f"MLPTranslator {name}")
    for name in ("residual", "layer_norm"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS,
                       action=argparse.BooleanOptionalAction, help=f"MLPTranslator {name}")
    return p


def _none_or(typ):
    def parse(text: str):
        return None if text.lower() == "none" else typ(text)
    parse.__name__ = typ.__name__
    return parse


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    """The command line (see the module doc); returns the exit status (2: bad input)."""
    import torch
    import torch.distributed as dist

    args = build_parser().parse_args(argv)
    params = {name: getattr(args, name) for name, _ in _OPTIONS.values() if hasattr(args, name)}
    params.update({k: getattr(args, k) for k in ("residual", "layer_norm") if hasattr(args, k)})
    started = False
    try:
        from .translators import make_translator

        rank, world, local = world_from_env()
        T = make_translator("mlp", **{"seed": args.seed, **params})
        if T.batch_size % world:
            raise InvalidParameter(f"--batch-size {T.batch_size} (the global batch) is not a "
                                   f"multiple of the world size {world}; pick a batch size "
                                   f"divisible by {world}")
        _fractions(args.val_fraction, args.test_fraction)
        dev = _rank_device(args.device)
        backend = args.backend if args.backend != "auto" else (
            "nccl" if dev.type == "cuda" else "gloo")
        if backend == "nccl" and dev.type != "cuda":
            raise InvalidParameter(f"--backend nccl needs a CUDA device, got --device "
                                   f"{args.device!r} ({dev})")
        for flag, path in (("--src", args.src), ("--dst", args.dst)):
            if not Path(path).exists():
                raise InvalidParameter(f"{flag} {path!r}: no cache there; expected a cache "
                                       "folder or file written by bridge (bridge cache build)")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend)
        else:  # one process, through the same code
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}",
                                    rank=0, world_size=1)
        started = True
        metrics = train_edge(args.src, args.dst, args.out, args.val_fraction,
                             args.test_fraction, args.seed, args.overwrite, dev, **params)
        if rank == 0:
            from .files import dumps_json

            print(dumps_json({"out": str(args.out), "world_size": world, "metrics": metrics}))
        return 0
    except BridgeError as e:
        msg = " ".join(str(e).split())
        print(f"bridge.distributed: error: {msg}", file=sys.stderr)
        return 2
    finally:
        if started:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
