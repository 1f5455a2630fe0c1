"""Training-free translation through relative representations over anchor pairs (ASIF)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from ..params import Interval, Options
from .base import Translator, register
from ..retrieval import l2_normalize
from .functional import relative_weights

__all__ = ["RelativeTranslator"]


@register
class RelativeTranslator(Translator):
    """Translate by similarity to anchors: ``y = sum_j w_j(x) Y_anchor_j``.

    ``fit`` trains nothing: it keeps up to ``n_anchors`` paired rows as anchors. A new row
    is described by its cosine similarities to the source-side anchors (its relative
    representation, as in ASIF, Norelli et al. 2023), sparsified to the ``k`` nearest
    anchors and sharpened by ``power``; its translation is the weighted mean of the
    target-side anchors. ``k`` and ``power`` are chosen on validation rows when ``"auto"``.
    """

    kind = "relative"

    _parameter_constraints = {
        "n_anchors": [Interval(Integral, 1, None), None],
        "k": [Interval(Integral, 1, None), Options({"auto"})],
        "power": [Interval(Real, 0, None, closed="neither"), Options({"auto"})],
        "seed": [Interval(Integral, 0, 2**32 - 1)],
    }

    def __init__(self, n_anchors: int | None = None, k: int | str = "auto",
                 power: float | str = "auto", seed: int = 0):
        self.n_anchors = n_anchors
        self.k = k
        self.power = power
        self.seed = seed

    def _fit(self, X, Y, X_val, Y_val, labels, labels_val):
        from ..metrics import paired_retrieval

        n = X.shape[0]
        if self.n_anchors is not None and self.n_anchors < n:
            rng = np.random.default_rng(self.seed)
            keep = np.sort(rng.choice(n, self.n_anchors, replace=False))
            X, Y = X[keep], Y[keep]
        self.anchors_x_ = l2_normalize(X, check=False)
        self.anchors_y_ = np.asarray(Y, dtype=np.float32)
        # more neighbours than anchors means all anchors
        ks = [16, 64, 256] if self.k == "auto" else [min(int(self.k), X.shape[0])]
        ps = [1.0, 4.0, 8.0, 16.0] if self.power == "auto" else [float(self.power)]
        if X_val is None or (len(ks) == 1 and len(ps) == 1):
            self.k_, self.power_ = ks[min(1, len(ks) - 1)], ps[min(2, len(ps) - 1)]
            return {"k": self.k_, "power": self.power_}
        best = None
        for k in ks:
            for p in ps:
                self.k_, self.power_ = k, p
                m = paired_retrieval(self._transform(X_val), Y_val, labels_val)
                key = (m["R@1"], m["cos"])
                if best is None or key > best[0]:
                    best = (key, k, p)
        self.k_, self.power_ = best[1], best[2]
        return {"k": self.k_, "power": self.power_}

    def _transform(self, X):
        out = np.empty((X.shape[0], self.anchors_y_.shape[1]), dtype=np.float32)
        for s in range(0, X.shape[0], 512):
            idx, w = relative_weights(X[s : s + 512], self.anchors_x_, k=self.k_, power=self.power_)
            out[s : s + 512] = np.einsum("nk,nkd->nd", w, self.anchors_y_[idx])
        return out

    def _get_state(self):
        return {"anchors_x": self.anchors_x_, "anchors_y": self.anchors_y_,
                "k": np.array([self.k_], np.int64), "power": np.array([self.power_], np.float32)}

    def _set_state(self, tensors, config):
        self.anchors_x_, self.anchors_y_ = tensors["anchors_x"], tensors["anchors_y"]
        self.k_ = int(tensors["k"][0])
        self.power_ = float(tensors["power"][0])
