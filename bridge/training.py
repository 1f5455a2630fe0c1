"""Minibatch AdamW training of translator networks with early stopping.

:func:`train` fits one network (X -> Y), or two at once (X -> Y and Y -> X) with an
optional cycle-consistency term. It is seeded and deterministic on CPU, runs on CUDA
when present, shows a progress bar on request, and returns a :class:`FitReport`.
Early stopping watches held-out R@1 (:func:`bridge.metrics.paired_retrieval`: a wrong
row scoring as high as the right one counts as a miss), then mean cosine between epochs
of equal R@1; the weights of the best epoch are restored at the end, and epoch 0 (the
initial weights) counts as a candidate, so a network started from a closed-form solution
never ends worse than it on the held-out rows.

Training rows held in memory are copied to the device once and drawn in a seeded random
order each epoch. Rows that are memory-mapped or lazy (a :class:`numpy.memmap`, a
:class:`bridge.chunks.RowView`) are streamed instead (:class:`ChunkedRows`): each epoch
visits contiguous blocks of ``chunk_rows`` rows in a seeded order, shuffles the rows
inside each block, and cuts the batches from them (a batch may span two blocks), so the
working memory is about one block whatever the number of rows, and with a single block
(``chunk_rows >= n``) the batches are exactly those of the in-memory path. ``epoch_rows``
bounds the rows drawn per epoch. The loop itself (:func:`fit_rows`) takes any source of
batches, which is how :mod:`bridge.distributed` trains one network on several processes.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .losses import make_loss
from .metrics import paired_retrieval

__all__ = ["FitReport", "train", "fit_rows", "resolve_device", "progress_desc", "MemoryRows",
           "ChunkedRows", "chunk_plan", "cut_batches", "CHUNK_ROWS", "is_streamed",
           "training_rows", "label_codes"]

#: rows per block when :func:`train` streams memory-mapped or lazy training rows
CHUNK_ROWS = 65536

#: the progress bar's name when :func:`train` is given no ``desc`` (see :func:`progress_desc`)
_DESC = contextvars.ContextVar("bridge_training_desc", default="training")


@contextlib.contextmanager
def progress_desc(desc: str):
    """Name the progress bars of :func:`train` calls made inside the block (a caller that
    fits through a translator's ``fit``, such as ``ModalityGraph.connect``, names the edge)."""
    token = _DESC.set(str(desc))
    try:
        yield
    finally:
        _DESC.reset(token)


@dataclass
class FitReport:
    """Curves and held-out figures of one training run."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_r1: list[float] = field(default_factory=list)
    val_cos: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_val_r1: float = float("nan")
    best_val_cos: float = float("nan")
    epochs_run: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    device: str = "cpu"
    temperature: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["val_R@1"] = d["best_val_r1"]
        d["val_cos"] = d.pop("val_cos")
        d["val_cos_best"] = d["best_val_cos"]
        return d


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def _evaluate(model, X, Y, labels, loss_fn, batch=8192):
    model.eval()
    preds = torch.cat([model(X[s : s + batch]) for s in range(0, X.shape[0], batch)])
    m = paired_retrieval(preds.cpu().numpy(), Y.cpu().numpy(),
                         None if labels is None else labels.cpu().numpy())
    # loss on a bounded sample so that large validation sets stay cheap
    k = min(X.shape[0], 1024)
    vloss = float(loss_fn(preds[:k], Y[:k], None if labels is None else labels[:k]))
    return m["R@1"], m["cos"], vloss


def _own_rng(fn):
    """Run ``fn`` on a fork of torch's random state (CPU, and the CUDA device it trains on):
    the caller's global generators are left as they were, whatever the training draws."""
    import inspect

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        dev = resolve_device(bound.arguments.get("device"))
        devices = [] if dev.type != "cuda" else [
            dev.index if dev.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices):
            return fn(*args, **kwargs)
    return wrapper


def _seed(seed: int, dev: torch.device) -> None:
    """Seed the generators dropout draws from on ``dev`` (inside :func:`_own_rng`)."""
    torch.random.default_generator.manual_seed(seed)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            torch.cuda.manual_seed(seed)


def train(
    model: torch.nn.Module,
    X,
    Y,
    X_val=None,
    Y_val=None,
    labels=None,
    labels_val=None,
    loss="infonce+mse",
    epochs: int = 100,
    batch_size: int = 512,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    patience: int = 8,
    temperature: float = 0.05,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
    reverse: torch.nn.Module | None = None,
    cycle_weight: float = 0.0,
    desc: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
    epoch_rows: int | None = None,
) -> tuple[FitReport, FitReport | None]:
    """Train ``model`` to map rows of ``X`` onto ``Y`` (and ``reverse`` back, if given).

    ``labels`` (ints, one per row) marks rows that share a target; InfoNCE then treats
    them all as positives and R@1 is scored against the distinct targets. With
    ``reverse`` both directions train together on the same batches, and
    ``cycle_weight > 0`` adds ``1 - cos(reverse(model(x)), x)`` and its mirror to the
    loss. Returns ``(report, reverse_report or None)``; the models end in ``eval`` mode
    with their best weights. ``progress=True`` shows a bar named ``desc`` (default: the
    name :func:`progress_desc` set, else "training") and, at the end, one line on stderr
    saying why training stopped (early stop, or the epoch limit).

    ``X``/``Y`` held in memory are copied to the device whole (:class:`MemoryRows`); a
    memory map or a lazy row view on either side is streamed ``chunk_rows`` rows at a
    time (:class:`ChunkedRows`; NaN/inf rows raise
    :class:`~bridge.errors.InvalidEmbeddings` naming the row when its block is read).
    ``epoch_rows`` (None: all rows) is the number of rows drawn per epoch, so that a very
    large cache trains for a bounded number of steps per epoch; the learning-rate schedule
    and early stopping still count epochs. Validation rows are held in memory.
    """
    from .chunks import check_chunk_size

    chunk_rows = check_chunk_size(chunk_rows, "chunk_rows")
    dev = resolve_device(device)
    rows = training_rows(X, Y, labels, dev, chunk_rows)
    return fit_rows(model, rows, X_val, Y_val, labels_val, loss=loss, epochs=epochs,
                    batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                    patience=patience, temperature=temperature, seed=seed, device=device,
                    progress=progress, reverse=reverse, cycle_weight=cycle_weight, desc=desc,
                    epoch_rows=epoch_rows)


def training_rows(X, Y, labels, dev: torch.device, chunk_rows: int = CHUNK_ROWS):
    """The batch source :func:`train` draws from: :class:`ChunkedRows` when ``X`` or ``Y``
    is streamed (:func:`is_streamed`), else :class:`MemoryRows` (a lazy view of rows held
    in memory is read whole first, and checked for NaN/inf, as a copy of those rows
    would be)."""
    if any(is_streamed(a) for a in (X, Y)):
        return ChunkedRows(X, Y, labels, dev, chunk_rows)
    return MemoryRows(_dense(X, "X"), _dense(Y, "Y"), labels, dev)


def is_streamed(a) -> bool:
    """True for training rows that :func:`train` streams by block: a memory map, a
    :class:`~bridge.chunks.RowView` of one, or another lazy row source (see
    :func:`bridge.chunks.lazy`; a subclass of ``RowView`` computes its rows, and streams).
    A plain ``RowView`` of an in-memory array is not streamed: its rows are read into
    memory, so that a cache held in memory trains exactly as its rows copied out would."""
    from .chunks import RowView, lazy

    if isinstance(a, np.memmap):
        return True
    if isinstance(a, RowView):
        return type(a) is not RowView or is_streamed(a.array)  # a subclass computes its rows
    return lazy(a)


@_own_rng
def fit_rows(
    model: torch.nn.Module,
    rows,
    X_val=None,
    Y_val=None,
    labels_val=None,
    *,
    loss="infonce+mse",
    epochs: int = 100,
    batch_size: int = 512,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    patience: int = 8,
    temperature: float = 0.05,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
    reverse: torch.nn.Module | None = None,
    cycle_weight: float = 0.0,
    desc: str | None = None,
    epoch_rows: int | None = None,
) -> tuple[FitReport, FitReport | None]:
    """The training loop of :func:`train`, drawing its batches from ``rows``.

    ``rows`` is a batch source: ``rows.epoch(gen, batch_size, epoch_rows)`` yields
    ``(batch, size)`` for one epoch in an order drawn from the generator ``gen``, and
    ``rows.loss(run, batch, cycle_weight)`` returns the loss of one batch as a tensor
    (:class:`MemoryRows`, :class:`ChunkedRows`, or the sharded source of
    :mod:`bridge.distributed`). Other arguments are those of :func:`train`.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    _seed(seed, dev)  # on a fork of the global state (see _own_rng)
    gen = torch.Generator().manual_seed(seed)  # the order of the rows, epoch after epoch
    X_val, Y_val = _tensor(_dense(X_val, "X_val"), dev), _tensor(_dense(Y_val, "Y_val"), dev)
    labels_val = label_codes(labels_val, dev)
    run = _setup(model, reverse, loss, temperature, lr, weight_decay, epochs, dev)
    rep = FitReport(device=str(dev))
    rep_rev = FitReport(device=str(dev)) if reverse is not None else None
    has_val = X_val is not None
    val = (X_val, Y_val, labels_val) if has_val else None
    # epoch 0 (the initial weights) is the first candidate for the best epoch
    stop = _EarlyStop(_validate(run, val, rep, rep_rev), model, reverse) if has_val else None
    bar, desc = _open_bar(progress, epochs, desc)
    epoch = 0
    for epoch in range(1, epochs + 1):
        mean_loss = _train_epoch(run, rows, gen, batch_size, cycle_weight, epoch_rows)
        for r in (rep, rep_rev):
            if r is not None:
                r.train_loss.append(mean_loss)
        if stop is not None:
            stop.update(epoch, _validate(run, val, rep, rep_rev), model, reverse)
        _bar_step(bar, rep, has_val)
        if stop is not None and stop.bad >= patience:
            rep.stopped_early = True
            break
    best_epoch = 0 if stop is None else stop.epoch
    _close_bar(bar, desc, rep.stopped_early, epoch, epochs, best_epoch, has_val)
    if stop is not None:
        stop.restore(model, reverse)
    _finish_reports(run, rep, rep_rev, epoch, best_epoch, has_val, t0)
    return rep, rep_rev


def stop_reason(stopped_early: bool, epoch: int, epochs: int, best_epoch: int,
                has_val: bool) -> str:
    """Why a run of :func:`train` ended, in words."""
    if stopped_early:
        return (f"early stop at epoch {epoch} of {epochs} (val R@1 no better since epoch "
                f"{best_epoch}; weights of epoch {best_epoch} kept)")
    tail = f" (best val epoch {best_epoch} kept)" if has_val else " (no val rows: last epoch kept)"
    return f"stopped at max epochs {epochs}{tail}"


# ---------------------------------------------------------------------------
# the parts of one run of :func:`train`


def _tensor(a, dev: torch.device) -> torch.Tensor | None:
    """``a`` as a float32 tensor on ``dev`` (None stays None)."""
    return None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float32), device=dev)


def label_codes(a, dev: torch.device) -> torch.Tensor | None:
    """Labels of any kind recoded as ints ``0..k-1`` (the order of their sorted values), as
    a tensor on ``dev`` (None stays None)."""
    if a is None:
        return None
    _, inv = np.unique(np.asarray(a), return_inverse=True)
    return torch.as_tensor(inv, device=dev)


def _dense(a, name: str):
    """Rows in memory: a memory map or lazy view is read whole and checked for NaN/inf,
    naming its rows by ``name`` (anything else was checked by the caller); None stays
    None."""
    from .chunks import lazy, read_rows
    from .store import check_finite_rows

    if a is None or not (lazy(a) or isinstance(a, np.memmap)):
        return a
    out = np.asarray(read_rows(a, slice(None)), dtype=np.float32)
    check_finite_rows(out, name)
    return out


class MemoryRows:
    """Training pairs held whole on the device, drawn in a fresh seeded order each epoch
    (a last batch of one row is skipped)."""

    def __init__(self, X, Y, labels, dev: torch.device):
        self.X, self.Y = _tensor(X, dev), _tensor(Y, dev)
        self.labels = label_codes(labels, dev)
        self.n = int(self.X.shape[0])

    def epoch(self, gen, batch_size: int, epoch_rows: int | None = None):
        perm = torch.randperm(self.n, generator=gen).to(self.X.device)
        if epoch_rows is not None:
            perm = perm[:epoch_rows]
        for s in range(0, perm.shape[0], batch_size):
            idx = perm[s : s + batch_size]
            if idx.shape[0] < 2:
                continue
            lb = None if self.labels is None else self.labels[idx]
            yield (self.X[idx], self.Y[idx], lb), int(idx.shape[0])

    def loss(self, run: "_Run", batch, cycle_weight: float) -> torch.Tensor:
        return _batch_loss(run, *batch, cycle_weight)


def chunk_plan(n: int, chunk_rows: int, gen, epoch_rows: int | None = None):
    """The row order of one streamed epoch: ``(lo, hi, order)`` for each block of rows
    ``lo:hi`` visited, ``order`` the seeded order of its rows (offsets from ``lo``).

    Blocks are ``chunk_rows`` contiguous rows, visited in an order drawn from ``gen``
    (nothing is drawn for a single block, so one block's order is ``randperm(n)``, the
    in-memory order); the rows of each block are shuffled when it is reached. With
    ``epoch_rows`` the epoch stops after that many rows (the last block partly used).
    """
    k = -(-n // chunk_rows)
    blocks = torch.randperm(k, generator=gen).tolist() if k > 1 else [0]
    left = n if epoch_rows is None else min(int(epoch_rows), n)
    for c in blocks:
        if left <= 0:
            return
        lo, hi = c * chunk_rows, min(n, (c + 1) * chunk_rows)
        order = torch.randperm(hi - lo, generator=gen)
        if order.shape[0] > left:
            order = order[:left]
        left -= int(order.shape[0])
        yield lo, hi, order


def cut_batches(plan, batch_size: int):
    """Batches of ``batch_size`` rows cut from a :func:`chunk_plan`, in its order.

    Yields ``(segments, size)`` for each batch: ``segments`` is a list of
    ``(lo, offsets)``, the batch's rows ``lo + offsets`` in order, one segment per block
    it takes rows from (a batch spans two blocks when one ends mid-batch). The epoch's
    last batch may be smaller; one of fewer than two rows is dropped (as in memory).
    """
    pending, count = [], 0
    for lo, _, order in plan:
        pos, m = 0, int(order.shape[0])
        while pos < m:
            take = min(batch_size - count, m - pos)
            pending.append((lo, order[pos : pos + take]))
            count += take
            pos += take
            if count == batch_size:
                yield pending, count
                pending, count = [], 0
    if count >= 2:
        yield pending, count


class ChunkedRows:
    """Training pairs streamed from memory maps or lazy views, a block at a time.

    Each block of ``chunk_rows`` rows is read once per epoch (float16 or float32 on disk,
    a float32 tensor on the device), checked for NaN/inf (naming the row in ``X``/``Y``),
    and its mapped pages handed back to the operating system
    (:func:`bridge.chunks.read_rows`); batches are cut from it in the order of
    :func:`chunk_plan` and :func:`cut_batches`. Memory held: one block per side plus
    one batch, whatever the number of rows.
    """

    def __init__(self, X, Y, labels, dev: torch.device, chunk_rows: int = CHUNK_ROWS,
                 names=("X", "Y")):
        self.X, self.Y, self.dev = X, Y, dev
        self.labels = label_codes(labels, dev)
        self.n = int(X.shape[0])
        self.chunk_rows = int(chunk_rows)
        self.names = names

    def read(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``lo:hi`` of both sides as float32 tensors on the device, checked."""
        return tuple(_block(a, slice(lo, hi), name, lo, self.dev)
                     for a, name in zip((self.X, self.Y), self.names))

    def epoch(self, gen, batch_size: int, epoch_rows: int | None = None):
        plan = chunk_plan(self.n, self.chunk_rows, gen, epoch_rows)
        held = {}
        for segments, size in cut_batches(plan, batch_size):
            xs, ys, ls = [], [], []
            for lo, off in segments:
                if lo not in held:
                    held.clear()  # the block before is no longer needed: one at a time
                    held[lo] = self.read(lo, min(self.n, lo + self.chunk_rows))
                xc, yc = held[lo]
                xs.append(xc[off.to(xc.device)])
                ys.append(yc[off.to(yc.device)])
                if self.labels is not None:
                    ls.append(self.labels[(off + lo).to(self.labels.device)])
            xb = xs[0] if len(xs) == 1 else torch.cat(xs)
            yb = ys[0] if len(ys) == 1 else torch.cat(ys)
            lb = None if self.labels is None else (ls[0] if len(ls) == 1 else torch.cat(ls))
            yield (xb, yb, lb), size

    def loss(self, run: "_Run", batch, cycle_weight: float) -> torch.Tensor:
        return _batch_loss(run, *batch, cycle_weight)


def _block(a, key, name: str, offset: int, dev: torch.device) -> torch.Tensor:
    """Rows ``key`` of ``a`` (read through :func:`bridge.chunks.read_rows`) as a float32
    tensor on ``dev``, after a NaN/inf check naming rows from ``offset``."""
    from .chunks import read_rows
    from .store import check_finite_rows

    r = np.asarray(read_rows(a, key), dtype=np.float32)
    check_finite_rows(r, name, offset)
    return torch.from_numpy(np.ascontiguousarray(r)).to(dev)


@dataclass
class _Run:
    """The networks of one run, their losses, optimiser and learning-rate schedule."""

    model: torch.nn.Module
    reverse: torch.nn.Module | None
    loss_fn: torch.nn.Module
    loss_rev: torch.nn.Module | None
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler


def _setup(model, reverse, loss, temperature, lr, weight_decay, epochs, dev) -> _Run:
    """Move the networks to ``dev`` and build one loss per direction and one AdamW over
    all their parameters (the losses' own, such as a learnt temperature, included)."""
    model.to(dev)
    loss_fn = make_loss(loss, temperature=temperature).to(dev)
    params = list(model.parameters()) + list(loss_fn.parameters())
    loss_rev = None
    if reverse is not None:
        reverse.to(dev)
        loss_rev = make_loss(loss, temperature=temperature).to(dev)
        params += list(reverse.parameters()) + list(loss_rev.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    return _Run(model, reverse, loss_fn, loss_rev, opt, sched)


def _batch_loss(run: _Run, xb, yb, lb, cycle_weight: float) -> torch.Tensor:
    """The loss of one batch: forward, plus backward and the cycle terms with ``reverse``."""
    pred = run.model(xb)
    loss_v = run.loss_fn(pred, yb, lb)
    if run.reverse is not None:
        back = run.reverse(yb)
        loss_v = loss_v + run.loss_rev(back, xb, lb)
        if cycle_weight > 0:
            cyc = (1 - F.cosine_similarity(run.reverse(pred), xb, dim=-1)).mean()
            cyc = cyc + (1 - F.cosine_similarity(run.model(back), yb, dim=-1)).mean()
            loss_v = loss_v + cycle_weight * cyc
    return loss_v


def _train_epoch(run: _Run, rows, gen, batch_size: int, cycle_weight: float,
                 epoch_rows: int | None = None) -> float:
    """One pass over the batches ``rows`` draws from ``gen`` (see :func:`fit_rows`), one
    optimiser step per batch, then one step of the schedule. Returns the mean loss per
    row. The sum stays on the device until the end of the epoch (no host sync a batch)."""
    run.model.train()
    if run.reverse is not None:
        run.reverse.train()
    total, count = None, 0
    for batch, size in rows.epoch(gen, batch_size, epoch_rows):
        loss_v = rows.loss(run, batch, cycle_weight)
        run.opt.zero_grad(set_to_none=True)
        loss_v.backward()
        run.opt.step()
        part = loss_v.detach().double() * size
        total = part if total is None else total + part
        count += size
    run.sched.step()
    return (0.0 if total is None else float(total)) / max(count, 1)


def _validate(run: _Run, val, rep: FitReport, rep_rev: FitReport | None) -> tuple[float, float]:
    """Score the held-out rows ``val = (X_val, Y_val, labels_val)`` in each direction,
    append the figures to the reports, and return the key epochs are ranked by:
    ``(R@1, cos)``, averaged over the two directions when there are two."""
    X_val, Y_val, labels_val = val
    a = _evaluate(run.model, X_val, Y_val, labels_val, run.loss_fn)
    b = None if run.reverse is None else _evaluate(run.reverse, Y_val, X_val, labels_val,
                                                   run.loss_rev)
    rep.val_r1.append(a[0]); rep.val_cos.append(a[1]); rep.val_loss.append(a[2])
    if b is None:
        return (a[0], a[1])
    rep_rev.val_r1.append(b[0]); rep_rev.val_cos.append(b[1]); rep_rev.val_loss.append(b[2])
    return (0.5 * (a[0] + b[0]), 0.5 * (a[1] + b[1]))


def _snapshot(model, reverse):
    """A deep copy of the weights of both networks."""
    snap = {"model": copy.deepcopy(model.state_dict())}
    if reverse is not None:
        snap["reverse"] = copy.deepcopy(reverse.state_dict())
    return snap


def _restore(model, reverse, snap):
    """Load weights copied by :func:`_snapshot` back into the networks."""
    model.load_state_dict(snap["model"])
    if reverse is not None:
        reverse.load_state_dict(snap["reverse"])


class _EarlyStop:
    """Early-stopping bookkeeping: the best epoch so far (starting with epoch 0 and its
    ``key``), a copy of its weights, and ``bad``, the epochs since the key last improved.
    Keys compare as tuples; only a strictly greater key is an improvement."""

    def __init__(self, key, model, reverse=None):
        self.key, self.state, self.epoch, self.bad = key, _snapshot(model, reverse), 0, 0

    def update(self, epoch: int, key, model, reverse=None) -> None:
        """Count ``epoch`` with its ``key``: a new best is kept (its weights copied)."""
        if key > self.key:
            self.key, self.state, self.epoch, self.bad = key, _snapshot(model, reverse), epoch, 0
        else:
            self.bad += 1

    def restore(self, model, reverse=None) -> None:
        """Load the best epoch's weights back into the networks."""
        _restore(model, reverse, self.state)


def _open_bar(progress: bool, epochs: int, desc: str | None):
    """``(bar or None, name)``: the epoch bar, named ``desc`` or :func:`progress_desc`'s."""
    if not progress:
        return None, desc
    from tqdm.auto import tqdm

    desc = _DESC.get() if desc is None else str(desc)
    return tqdm(total=epochs, desc=desc, unit="epoch", leave=False), desc


def _bar_step(bar, rep: FitReport, has_val: bool) -> None:
    """Advance the bar by one epoch, showing the last train loss (and val R@1)."""
    if bar is None:
        return
    bar.update(1)
    post = {"loss": f"{rep.train_loss[-1]:.4f}"}
    if has_val:
        post["val_R@1"] = f"{rep.val_r1[-1]:.3f}"
    bar.set_postfix(post)


def _close_bar(bar, desc, stopped_early, epoch, epochs, best_epoch, has_val) -> None:
    """Close the bar and say on stderr why training stopped."""
    if bar is None:
        return
    bar.close()
    print(f"{desc}: {stop_reason(stopped_early, epoch, epochs, best_epoch, has_val)}",
          file=sys.stderr)


def _finish_reports(run: _Run, rep, rep_rev, epoch, best_epoch, has_val, t0) -> None:
    """Leave the networks in ``eval`` mode and fill in the reports' closing figures."""
    run.model.eval()
    if run.reverse is not None:
        run.reverse.eval()
    for r in (rep, rep_rev):
        if r is None:
            continue
        r.epochs_run = epoch
        r.best_epoch = best_epoch if has_val else epoch
        r.stopped_early = rep.stopped_early
        r.seconds = time.perf_counter() - t0
        if has_val:
            r.best_val_r1 = r.val_r1[best_epoch]
            r.best_val_cos = r.val_cos[best_epoch]
    terms = getattr(run.loss_fn, "terms", None)
    if terms is not None and "infonce" in terms:
        rep.temperature = float(terms["infonce"].temperature.detach())
