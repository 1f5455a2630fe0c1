"""Node centring: a translator applied between fixed means.

Each node of a graph sits at an offset of its own inside its space: the German rows of a
multilingual encoder have a centroid that is not the English rows' centroid. An edge
trained on English pairs then receives German rows off its training distribution.
:class:`CentredTranslator` removes the source node's mean before its ``base`` translator
and adds the target node's mean after it::

    T(x) = base(x - in_mean) + out_mean

The means are those of the nodes' whole caches (no labels needed;
:meth:`~bridge.graph.ModalityGraph.node_stats`), so composing centred edges removes the
query node's own offset: along ``text:de@e5 -> text:en@e5 -> text:en@minilm`` with a
centred identity edge and a centred trained edge, German rows reach the trained edge
centred by the German mean, not by the English one. With ``base`` an identity
translator, the edge is the mean shift ``x - in_mean + out_mean``.

Without given means, :meth:`fit` uses the training pairs' means. Saved and loaded like any
translator (the wrapped translator's arrays under ``base.``, the means as ``in_mean`` and
``out_mean``).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidParameter
from ..params import Satisfies
from .base import Translator, register, restore_base

__all__ = ["CentredTranslator"]


def _vector_error(v):
    if v is None:
        return None
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        return f"got {type(v).__name__}"
    if a.ndim != 1 or a.size == 0:
        return f"got an array of shape {a.shape}"
    if not np.isfinite(a).all():
        return f"holds {int((~np.isfinite(a)).sum())} NaN or inf value(s)"
    return None


def _base_error(v):
    if isinstance(v, CentredTranslator):
        return "got a CentredTranslator (centre once)"
    return None


@register
class CentredTranslator(Translator):
    """``base`` applied to ``x - in_mean``, then ``out_mean`` added.

    ``in_mean`` / ``out_mean``: 1-D vectors of the input / output dimension, or None for
    the means of the training rows. An unfitted ``base`` is cloned and fitted on the
    centred pairs; a fitted one is used as it is. The fitted base is ``base_``; the means
    used are ``in_mean_`` and ``out_mean_``.
    """

    kind = "centred"

    _parameter_constraints = {
        "base": [Satisfies(_base_error, "a translator that is not itself centred")],
        "in_mean": [Satisfies(_vector_error, "a finite 1-D vector or None")],
        "out_mean": [Satisfies(_vector_error, "a finite 1-D vector or None")],
    }

    def __init__(self, base: Translator | None = None, in_mean=None, out_mean=None):
        self.base = base
        self.in_mean = in_mean
        self.out_mean = out_mean

    def _config_params(self) -> dict:
        return {}  # the base is saved under extra.base, the means as tensors

    @staticmethod
    def _mean(given, rows, name: str) -> np.ndarray:
        if given is None:
            return rows.mean(0, dtype=np.float64).astype(np.float32)
        m = np.asarray(given, dtype=np.float32)
        if m.shape != (rows.shape[1],):
            raise InvalidParameter(f"CentredTranslator: {name} has {m.size} values, expected "
                                   f"{rows.shape[1]} (the dimension of the rows)")
        return m

    def _fit(self, X, Y, X_val, Y_val, labels, labels_val):
        from sklearn.base import clone

        if not isinstance(self.base, Translator):
            raise InvalidParameter(f"CentredTranslator needs a base translator, got {self.base!r}")
        self.in_mean_ = self._mean(self.in_mean, X, "in_mean")
        self.out_mean_ = self._mean(self.out_mean, Y, "out_mean")
        if self.base.is_fitted:
            self.base_ = self.base
        else:
            cx = None if X_val is None else X_val - self.in_mean_
            cy = None if Y_val is None else Y_val - self.out_mean_
            self.base_ = clone(self.base).fit(X - self.in_mean_, Y - self.out_mean_, cx, cy,
                                              labels=labels, labels_val=labels_val)
        return {"base": getattr(self.base_, "fit_report_", {}),
                "in_mean_norm": float(np.linalg.norm(self.in_mean_)),
                "out_mean_norm": float(np.linalg.norm(self.out_mean_))}

    def _transform(self, X):
        return self.base_.transform(X - self.in_mean_) + self.out_mean_

    def recentred(self, in_mean, out_mean) -> "CentredTranslator":
        """The same fitted base between other means: the edge moved to nodes of another
        domain (their own unlabelled means), with nothing refitted."""
        self.check_fitted()
        for name, m, dim in (("in_mean", in_mean, self.in_dim_), ("out_mean", out_mean, self.out_dim_)):
            err = _vector_error(m)
            if err or np.asarray(m).shape != (dim,):
                raise InvalidParameter(f"recentred: {name} must be a finite vector of {dim} values, "
                                       f"{err or f'got shape {np.asarray(m).shape}'}")
        out = CentredTranslator(self.base_, in_mean=np.asarray(in_mean, np.float32),
                                out_mean=np.asarray(out_mean, np.float32))
        out.base_, out.in_mean_, out.out_mean_ = self.base_, out.in_mean, out.out_mean
        out.in_dim_, out.out_dim_ = self.in_dim_, self.out_dim_
        out.fit_report_ = {**getattr(self, "fit_report_", {}), "recentred": True}
        return out

    def _extra_config(self) -> dict:
        return {"base": self.base_.config(), "means": "training" if self.in_mean is None else "given"}

    def _get_state(self):
        st = {f"base.{k}": v for k, v in self.base_._get_state().items()}
        st["in_mean"] = self.in_mean_
        st["out_mean"] = self.out_mean_
        return st

    def _set_state(self, tensors, config):
        self.base = self.base_ = restore_base(config, tensors)
        self.in_mean_ = np.asarray(tensors["in_mean"], np.float32)
        self.out_mean_ = np.asarray(tensors["out_mean"], np.float32)
        if config["extra"].get("means") == "given":
            self.in_mean, self.out_mean = self.in_mean_.copy(), self.out_mean_.copy()
