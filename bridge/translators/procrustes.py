"""Orthogonal Procrustes with centering and scaling, for equal or different dimensions."""

from __future__ import annotations

import numpy as np

from .base import Translator, register
from .functional import affine_apply, procrustes_fit, procrustes_from_moments

__all__ = ["ProcrustesTranslator"]


@register
class ProcrustesTranslator(Translator):
    """``Y ~ s (X - mx) R + my`` with ``R`` (semi-)orthogonal.

    A rotation keeps the geometry of the source space (norms and angles of centred rows,
    up to the scale ``s``); it is the right prior when both spaces are already good and
    differ by an isometry. Without centering, spaces whose rows share a large common
    component (most sentence encoders) are badly matched.

    Parameters
    ----------
    center : bool
        Subtract each side's mean before the rotation, add the target mean after.
    scale : bool
        Fit an isotropic scale ``s``.
    """

    kind = "procrustes"
    streams = True  # fitted from moments accumulated over row blocks

    _parameter_constraints = {"center": [bool], "scale": [bool]}

    def __init__(self, center: bool = True, scale: bool = True):
        self.center = center
        self.scale = scale

    def _fit(self, X, Y, X_val, Y_val, labels, labels_val):
        self.R_, self.mx_, self.my_, self.s_ = procrustes_fit(X, Y, self.center, self.scale)
        return {"scale": self.s_}

    def _fit_moments(self, moments, X_val, Y_val, labels_val):
        self.R_, self.mx_, self.my_, self.s_ = procrustes_from_moments(moments, self.center,
                                                                       self.scale)
        return {"scale": self.s_}

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` of the fitted map written as ``x W + b`` (``W = s R``)."""
        self.check_fitted()
        W = (self.s_ * np.asarray(self.R_, np.float64))
        b = np.asarray(self.my_, np.float64) - np.asarray(self.mx_, np.float64) @ W
        return W.astype(np.float32), b.astype(np.float32)

    def _transform(self, X):
        return affine_apply(X, self.R_, self.my_, self.mx_, self.s_)

    def _get_state(self):
        return {"R": self.R_, "mx": self.mx_, "my": self.my_, "s": np.array([self.s_], np.float32)}

    def _set_state(self, tensors, config):
        self.R_, self.mx_, self.my_ = tensors["R"], tensors["mx"], tensors["my"]
        self.s_ = float(tensors["s"][0])
