"""MLP translator: a linear path plus a residual network, trained contrastively."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from torch import nn

from ..errors import InvalidParameter
from ..params import Interval, Options, Satisfies
from .base import Translator, register
from ..training import CHUNK_ROWS
from .functional import procrustes_fit, ridge_fit

__all__ = ["MLPTranslator", "MLPNet"]


class _Block(nn.Module):
    def __init__(self, width, dropout, layer_norm, residual):
        super().__init__()
        self.norm = nn.LayerNorm(width) if layer_norm else nn.Identity()
        self.lin = nn.Linear(width, width)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.residual = residual

    def forward(self, h):
        out = self.drop(self.act(self.lin(self.norm(h))))
        return h + out if self.residual else out


class MLPNet(nn.Module):
    """``y = skip(x) + head(body(x))``.

    ``skip`` is a linear map (optional), ``body`` an input projection followed by
    ``depth - 1`` blocks (LayerNorm, Linear, GELU, Dropout, residual connection when
    ``residual``), ``head`` a final linear layer. ``depth`` counts hidden layers.
    """

    def __init__(self, in_dim, out_dim, width=1024, depth=2, residual=True, dropout=0.1,
                 layer_norm=True, linear_skip=True):
        super().__init__()
        self.skip = nn.Linear(in_dim, out_dim) if linear_skip else None
        layers: list[nn.Module] = [nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout)]
        for _ in range(max(depth - 1, 0)):
            layers.append(_Block(width, dropout, layer_norm, residual))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_dim)

    def forward(self, x):
        out = self.head(self.body(x))
        return out + self.skip(x) if self.skip is not None else out


def _loss_error(spec):
    from ..losses import parse_loss

    if isinstance(spec, nn.Module):
        return None
    try:
        parse_loss(spec)
    except InvalidParameter as e:
        return str(e)
    return None


def _device_error(device):
    if device == "auto":
        return None
    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        return f"not a torch device: {e}"
    return None


@register
class MLPTranslator(Translator):
    """A translator network trained by minibatch AdamW with early stopping.

    Parameters
    ----------
    width, depth, residual, dropout, layer_norm
        Architecture of :class:`MLPNet`.
    init : "lstsq", "procrustes" or None
        Start the linear path from the closed-form solution (ridge least squares with
        ``alpha``, or centred and scaled Procrustes) and the residual network's output
        layer at zero: training starts exactly at the closed-form map and, with early
        stopping on held-out R@1, never ends worse than it on the validation rows.
        ``None`` trains everything from random initialisation (no linear path).
    loss
        ``"infonce"``, ``"mse"``, ``"cosine"`` or a weighted sum such as ``"infonce+mse"``.
    alpha : ridge penalty for ``init="lstsq"``.
    epochs, batch_size, lr, weight_decay, patience, temperature, seed, device, progress
        Training options (see :func:`bridge.training.train`). ``epochs=0`` keeps the
        closed-form start of ``init`` (refused with ``init=None``); ``batch_size`` is at
        least 2 (a contrastive batch needs negatives).
    epoch_rows : int or None
        Rows drawn per epoch (None: every training row). A cache of millions of rows then
        trains for a bounded number of steps per epoch (``epoch_rows / batch_size``); the
        rows of each epoch are a fresh seeded draw, so successive epochs see different
        rows. Early stopping and the learning-rate schedule still count epochs.
    chunk_rows : int
        Rows per block when the training rows are memory-mapped or a lazy row view
        (:class:`bridge.chunks.RowView`, as :meth:`bridge.ModalityGraph.connect` passes
        them): training then never copies them whole but reads one block of
        ``chunk_rows`` contiguous rows at a time, in a seeded order of blocks, shuffling
        the rows inside each (see :class:`bridge.training.ChunkedRows`), so its memory
        stays about one block of float32 rows per side whatever the cache size; the
        closed-form start of ``init`` is accumulated in one streamed pass
        (:func:`~bridge.translators.functional.pair_moments`). With
        ``chunk_rows >= n`` the result equals that of the same rows held in memory.
    """

    kind = "mlp"
    #: memory-mapped and lazy training rows are streamed by block (see ``chunk_rows``)
    streams = True

    _parameter_constraints = {
        "width": [Interval(Integral, 1, None)],
        "depth": [Interval(Integral, 1, None)],
        "residual": [bool],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "layer_norm": [bool],
        "init": [Options({"lstsq", "procrustes"}), None],
        "loss": [Satisfies(_loss_error, "a loss such as 'infonce', 'mse', 'cosine', "
                                        "'infonce+0.5*mse' or a dict of weights")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "epochs": [Interval(Integral, 0, None)],
        "batch_size": [Interval(Integral, 2, None)],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "patience": [Interval(Integral, 1, None)],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "seed": [Interval(Integral, 0, 2**63 - 1)],
        "device": [Satisfies(_device_error, "'auto', a torch device name such as 'cpu' or "
                                            "'cuda'"), None],
        "progress": [bool],
        "epoch_rows": [Interval(Integral, 1, None), None],
        "chunk_rows": [Interval(Integral, 1, None)],
    }

    def __init__(self, width: int = 1024, depth: int = 2, residual: bool = True,
                 dropout: float = 0.1, layer_norm: bool = True, init: str | None = "lstsq",
                 loss: str = "infonce+mse", alpha: float = 1.0, epochs: int = 60,
                 batch_size: int = 512, lr: float = 1e-3, weight_decay: float = 1e-2,
                 patience: int = 6, temperature: float = 0.05, seed: int = 0,
                 device: str | None = None, progress: bool = False,
                 epoch_rows: int | None = None, chunk_rows: int = CHUNK_ROWS):
        self.width = width
        self.depth = depth
        self.residual = residual
        self.dropout = dropout
        self.layer_norm = layer_norm
        self.init = init
        self.loss = loss
        self.alpha = alpha
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.temperature = temperature
        self.seed = seed
        self.device = device
        self.progress = progress
        self.epoch_rows = epoch_rows
        self.chunk_rows = chunk_rows

    @classmethod
    def validate_param_values(cls, params: dict) -> None:
        super().validate_param_values(params)
        if params.get("epochs", 1) == 0 and params.get("init", "lstsq") is None:
            raise InvalidParameter(
                "MLPTranslator: parameter 'epochs' must be at least 1 with init=None (a random "
                "network trained for 0 epochs), got 0; epochs=0 keeps the closed-form start "
                "of init='lstsq' or 'procrustes'")

    def build(self, in_dim: int, out_dim: int) -> MLPNet:
        """A fresh (untrained) network of this translator's architecture, initialised from
        ``seed`` without touching torch's global random state (it is forked and restored)."""
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(self.seed)
            return MLPNet(in_dim, out_dim, self.width, self.depth, self.residual,
                          self.dropout, self.layer_norm, linear_skip=self.init is not None)

    def init_network(self, X, Y, start=None) -> MLPNet:
        """Build the network and set its linear path from the closed-form solution, or from
        ``start``: a fitted translator with an ``affine()`` map (ridge, Procrustes)."""
        self._validate_params()
        net = self.build(X.shape[1], Y.shape[1])
        if start is not None:
            W, b = start.affine()
            with torch.no_grad():
                net.skip.weight.copy_(torch.as_tensor(np.ascontiguousarray(W.T)))
                net.skip.bias.copy_(torch.as_tensor(b))
                net.head.weight.zero_()
                net.head.bias.zero_()
        elif self.init is not None:
            if self.init == "lstsq":
                W, b = ridge_fit(X, Y, self.alpha)
            else:
                R, mx, my, s = procrustes_fit(X, Y)
                W = s * R
                b = my - mx @ W
            with torch.no_grad():
                net.skip.weight.copy_(torch.as_tensor(W.T))
                net.skip.bias.copy_(torch.as_tensor(b))
                net.head.weight.zero_()
                net.head.bias.zero_()
        return net

    def fit_from(self, start, X, Y, X_val=None, Y_val=None, labels=None, labels_val=None):
        """:meth:`fit`, with the linear path starting from ``start`` (a fitted ridge or
        Procrustes translator from ``X``'s space to ``Y``'s, e.g. one fitted with the
        graph's help, see :mod:`bridge.borrow`) instead of this translator's own ``init``,
        which must not be None (the network needs its linear path)."""
        if self.init is None:
            raise InvalidParameter("fit_from needs a linear path: init='lstsq' or "
                                   "'procrustes', got init=None")
        if not callable(getattr(start, "affine", None)):
            raise InvalidParameter(f"start must be a fitted ridge or Procrustes translator "
                                   f"(with affine()), got {type(start).__name__}")
        W, _ = start.affine()
        X_dim, Y_dim = int(np.shape(X)[1]), int(np.shape(Y)[1])
        if W.shape != (X_dim, Y_dim):
            from ..errors import DimensionMismatch

            raise DimensionMismatch(f"start maps {W.shape[0]} -> {W.shape[1]} dims; the rows "
                                    f"are {X_dim} -> {Y_dim}")
        self._start = start
        try:
            return self.fit(X, Y, X_val, Y_val, labels, labels_val)
        finally:
            del self._start

    def _fit(self, X, Y, X_val, Y_val, labels, labels_val):
        from ..training import train

        self.net_ = self.init_network(X, Y, getattr(self, "_start", None))
        rep, _ = train(self.net_, X, Y, X_val, Y_val, labels=labels, labels_val=labels_val,
                       **self.train_options())
        self.net_.cpu().eval()
        return rep.to_dict()

    def fit_pair(self, X, Y, X_val=None, Y_val=None, labels=None, labels_val=None,
                 cycle_weight: float = 0.0) -> tuple["MLPTranslator", "MLPTranslator"]:
        """Fit both directions of a pair together; returns ``(forward, backward)``.

        ``forward`` maps rows of ``X`` onto ``Y`` and ``backward`` maps ``Y`` back onto
        ``X``; both are new fitted translators with this one's hyper-parameters (this one
        stays unfitted). They train on the same batches with one optimiser (see
        :func:`bridge.training.train` with ``reverse=``); ``cycle_weight > 0`` adds the
        cycle-consistency term ``1 - cos(backward(forward(x)), x)`` and its mirror, weighted
        by ``cycle_weight``. ``X_val``/``Y_val`` (optional) drive early stopping on the mean
        held-out R@1 of both directions; ``labels``/``labels_val`` mark rows that share a
        target, as in :meth:`fit`. Each ``fit_report_`` holds its direction's training
        report plus ``cycle_weight`` and ``n_train``.
        """
        from ..training import train
        from .base import make_translator

        if not (isinstance(cycle_weight, Real) and not isinstance(cycle_weight, bool)
                and np.isfinite(cycle_weight) and cycle_weight >= 0):
            raise InvalidParameter(
                f"cycle_weight must be a finite number >= 0, got {cycle_weight!r}")
        self._validate_params()
        X, Y, X_val, Y_val = self.check_training_pairs(X, Y, X_val, Y_val, labels, labels_val)
        fwd, bwd = make_translator(self), make_translator(self)
        fwd.in_dim_, fwd.out_dim_ = X.shape[1], Y.shape[1]
        bwd.in_dim_, bwd.out_dim_ = Y.shape[1], X.shape[1]
        fwd.net_, bwd.net_ = fwd.init_network(X, Y), bwd.init_network(Y, X)
        r1, r2 = train(fwd.net_, X, Y, X_val, Y_val, labels=labels, labels_val=labels_val,
                       reverse=bwd.net_, cycle_weight=cycle_weight, **self.train_options())
        for T, r in ((fwd, r1), (bwd, r2)):
            T.net_.cpu().eval()
            T.fit_report_ = {**r.to_dict(), "cycle_weight": cycle_weight,
                             "n_train": int(X.shape[0])}
        return fwd, bwd

    def check_training_pairs(self, X, Y, X_val=None, Y_val=None, labels=None, labels_val=None):
        """``(X, Y, X_val, Y_val)`` checked as :meth:`fit` checks them: paired rows of
        finite floats (memory maps and lazy views checked for shape and dtype only, their
        values when training reads them), validation rows of the same dimensions given
        with both sides or neither, one label per row. Raises the errors of
        :mod:`bridge.errors` naming the bad argument."""
        from ..errors import DimensionMismatch

        X, Y = self._check_pair(X, Y, "X", "Y")
        if (X_val is None) != (Y_val is None):
            raise InvalidParameter("give both X_val and Y_val, or neither")
        if X_val is not None:
            X_val, Y_val = self._check_pair(X_val, Y_val, "X_val", "Y_val")
            if X_val.shape[1] != X.shape[1] or Y_val.shape[1] != Y.shape[1]:
                raise DimensionMismatch(
                    f"validation dims ({X_val.shape[1]}, {Y_val.shape[1]}) differ from "
                    f"training dims ({X.shape[1]}, {Y.shape[1]})")
        for name, lab, rows in (("labels", labels, X), ("labels_val", labels_val, X_val)):
            if lab is not None and (rows is None or len(lab) != rows.shape[0]):
                raise DimensionMismatch(
                    f"{name} has {len(lab)} entries; expected one per row of "
                    f"{'X' if name == 'labels' else 'X_val'} "
                    f"({None if rows is None else rows.shape[0]})")
        return X, Y, X_val, Y_val

    def train_options(self) -> dict:
        """The keyword arguments of :func:`bridge.training.train` this translator's
        hyper-parameters set (loss, epochs, batch size, ..., ``epoch_rows``, ``chunk_rows``)."""
        return dict(loss=self.loss, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                    weight_decay=self.weight_decay, patience=self.patience,
                    temperature=self.temperature, seed=self.seed, device=self.device,
                    progress=self.progress, epoch_rows=self.epoch_rows,
                    chunk_rows=self.chunk_rows)

    @torch.no_grad()
    def _transform(self, X):
        self.net_.eval()
        out = [self.net_(torch.from_numpy(np.ascontiguousarray(X[s : s + 8192]))).numpy()
               for s in range(0, X.shape[0], 8192)]
        return np.concatenate(out).astype(np.float32)

    def _get_state(self):
        return {k: v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()}

    def _set_state(self, tensors, config):
        self.net_ = self.build(config["in_dim"], config["out_dim"])
        self.net_.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items()})
        self.net_.eval()
