"""Post-hoc alignment an edge can carry after training.

:class:`PostHocTranslator` wraps a fitted translator and corrects its outputs, fitted on
the same training pairs:

- ``"center"``: a mean shift, so that the translated rows have the target rows' mean
  (closes the centroid gap a contrastive loss leaves open);
- ``"procrustes"``: an orthogonal Procrustes refinement (centred and scaled) from the
  translated rows onto the target rows.

``"center+procrustes"`` applies both, in that order. Saved and loaded like any other
translator (the wrapped translator's arrays are stored under ``base.``).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidParameter
from ..params import Satisfies
from .base import Translator, register, restore_base
from .functional import affine_apply, procrustes_fit

__all__ = ["PostHocTranslator", "POST_STEPS", "parse_post"]

POST_STEPS = ("center", "procrustes")


def parse_post(post) -> tuple[str, ...]:
    if post in (None, "", "none"):
        return ()
    if isinstance(post, str):
        steps = tuple(post.split("+"))
    elif isinstance(post, (list, tuple)):
        steps = tuple(post)
    else:
        raise InvalidParameter(f"post must be a string such as 'center+procrustes', got {post!r}")
    bad = [s for s in steps if s not in POST_STEPS]
    if bad:
        raise InvalidParameter(f"unknown post-hoc step {bad[0]!r}; expected 'center', "
                               "'procrustes' or 'center+procrustes'")
    if len(set(steps)) != len(steps):
        raise InvalidParameter(f"post-hoc step repeated in {post!r}; each step applies once")
    return steps


def _post_error(v):
    try:
        parse_post(v)
    except InvalidParameter as e:
        return str(e)
    return None


@register
class PostHocTranslator(Translator):
    """``steps`` applied to the outputs of a ``base`` translator.

    A fitted ``base`` is used as it is (its own training pairs and split stay its own); an
    unfitted one (such as the clone :func:`sklearn.base.clone` makes) is cloned and fitted
    on the pairs given to :meth:`fit` first. The fitted base is ``base_``.
    """

    kind = "posthoc"

    _parameter_constraints = {
        "steps": [Satisfies(_post_error, "'center', 'procrustes' or 'center+procrustes'")],
        "base": [Translator, None],
    }

    def __init__(self, base: Translator | None = None, steps: str = "center"):
        self.base = base
        self.steps = steps

    def _config_params(self) -> dict:
        return {"steps": self.steps}  # the base is saved whole, under extra.base

    def _fit(self, X, Y, X_val, Y_val, labels, labels_val):
        from sklearn.base import clone

        if self.base is None:
            raise InvalidParameter("PostHocTranslator needs a base translator, got None")
        if self.base.is_fitted:
            self.base_ = self.base
        else:
            self.base_ = clone(self.base).fit(X, Y, X_val, Y_val, labels=labels,
                                              labels_val=labels_val)
        P = self.base_.transform(X)
        self.shift_ = np.zeros(P.shape[1], np.float32)
        self.R_ = None
        if "center" in parse_post(self.steps):
            self.shift_ = (Y.mean(0) - P.mean(0)).astype(np.float32)
            P = P + self.shift_
        if "procrustes" in parse_post(self.steps):
            self.R_, self.mx_, self.my_, self.s_ = procrustes_fit(P, Y, center=True, scale=True)
        return {"base": getattr(self.base_, "fit_report_", {}), "steps": self.steps}

    def _transform(self, X):
        P = self.base_.transform(X) + self.shift_
        if self.R_ is not None:
            P = affine_apply(P, self.R_, self.my_, self.mx_, self.s_)
        return P

    def _extra_config(self) -> dict:
        return {"base": self.base_.config()}

    def _get_state(self):
        st = {f"base.{k}": v for k, v in self.base_._get_state().items()}
        st["shift"] = self.shift_
        if self.R_ is not None:
            st.update({"R": self.R_, "mx": self.mx_, "my": self.my_,
                       "s": np.array([self.s_], np.float32)})
        return st

    def _set_state(self, tensors, config):
        self.base = self.base_ = restore_base(config, tensors)
        self.shift_ = tensors["shift"]
        self.R_ = tensors.get("R")
        if self.R_ is not None:
            self.mx_, self.my_, self.s_ = tensors["mx"], tensors["my"], float(tensors["s"][0])
