"""The shared-space edge: two nodes embedded by one encoder already share a space."""

from __future__ import annotations

import numpy as np

from ..errors import DimensionMismatch
from .base import Translator, register

__all__ = ["IdentityTranslator"]


@register
class IdentityTranslator(Translator):
    """``Y = X``: no training, no parameters.

    Links nodes of one multilingual encoder (``text:de@e5`` and ``text:en@e5``) so the planner
    can take the native route and fusion can combine it with bridged ones. Fitting only checks
    that both sides have the same dimension; the edge's held-out metrics still measure how
    well the shared space pairs the two nodes.
    """

    kind = "identity"

    _parameter_constraints: dict = {}

    def __init__(self):
        pass

    def _fit(self, X, Y, X_val, Y_val, labels, labels_val):
        if X.shape[1] != Y.shape[1]:
            raise DimensionMismatch(
                f"an identity edge needs one space on both sides; got dimensions "
                f"{X.shape[1]} and {Y.shape[1]}")
        return {}

    def _transform(self, X):
        return np.array(X, dtype=np.float32, copy=True)

    def _get_state(self):
        return {"dim": np.array([self.in_dim_], np.int64)}

    def _set_state(self, tensors, config):
        pass
