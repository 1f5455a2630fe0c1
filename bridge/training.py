"""Minibatch AdamW training of translator networks with early stopping.

:func:`train` fits one network (X -> Y), or two at once (X -> Y and Y -> X) with an
optional cycle-consistency term. It is seeded and deterministic on CPU, runs on CUDA
when present, shows a progress bar on request, and returns a :class:`FitReport`.
Early stopping watches held-out R@1 (:func:`bridge.metrics.paired_retrieval`: a wrong
row scoring as high as the right one counts as a miss), then mean cosine between epochs
of equal R@1; the weights of the best epoch are restored at the end, and epoch 0 (the
initial weights) counts as a candidate, so a network started from a closed-form solution
never ends worse than it on the held-out rows.
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

__all__ = ["FitReport", "train", "resolve_device", "progress_desc"]

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


@_own_rng
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
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    _seed(seed, dev)  # on a fork of the global state (see _own_rng)
    gen = torch.Generator().manual_seed(seed)  # the order of the rows, epoch after epoch
    X, Y, X_val, Y_val = (_tensor(a, dev) for a in (X, Y, X_val, Y_val))
    labels, labels_val = _label_codes(labels, dev), _label_codes(labels_val, dev)
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
        mean_loss = _train_epoch(run, X, Y, labels, gen, batch_size, cycle_weight)
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


def _label_codes(a, dev: torch.device) -> torch.Tensor | None:
    """Labels of any kind recoded as ints ``0..k-1`` (the order of their sorted values)."""
    if a is None:
        return None
    _, inv = np.unique(np.asarray(a), return_inverse=True)
    return torch.as_tensor(inv, device=dev)


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
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
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


def _train_epoch(run: _Run, X, Y, labels, gen, batch_size: int, cycle_weight: float) -> float:
    """One pass over the rows in an order drawn from ``gen``, one optimiser step per batch
    (a last batch of one row is skipped), then one step of the schedule. Returns the mean
    loss per row."""
    run.model.train()
    if run.reverse is not None:
        run.reverse.train()
    n = X.shape[0]
    perm = torch.randperm(n, generator=gen).to(X.device)
    total, count = 0.0, 0
    for s in range(0, n, batch_size):
        idx = perm[s : s + batch_size]
        if idx.shape[0] < 2:
            continue
        lb = None if labels is None else labels[idx]
        loss_v = _batch_loss(run, X[idx], Y[idx], lb, cycle_weight)
        run.opt.zero_grad(set_to_none=True)
        loss_v.backward()
        run.opt.step()
        total += float(loss_v.detach()) * idx.shape[0]
        count += idx.shape[0]
    run.sched.step()
    return total / max(count, 1)


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
