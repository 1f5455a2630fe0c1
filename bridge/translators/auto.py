"""``translator="auto"``: fit several kinds, keep the one validation favours.

:class:`AutoTranslator` fits every candidate on the training pairs and scores each on the
validation pairs by paired R@1 and mean cosine (:func:`bridge.metrics.paired_retrieval`).
R@1 alone is a poor judge of an edge that other edges will follow: an MLP early-stopped
on R@1 can rank well while its outputs drift away from the target rows (low cosine), and
the next hop then receives rows off its training distribution. So the rule is:

1. the candidates whose val R@1 reaches the best candidate's one-sided 95% Wilson lower
   bound (:func:`bridge.planner.wilson_lower_bound` at the number of val pairs) are tied
   with it: the val set cannot tell them apart;
2. among the tied candidates the one with the highest val cosine wins (the first listed on
   an exact tie).

The fit report names every candidate's figures, the tied set and the reason for the
choice. Saved and loaded like any translator (the chosen translator is stored under
``base.``); the edge kind it shows is ``auto:<chosen kind>``.
"""

from __future__ import annotations

import time

from ..errors import InvalidParameter
from ..params import Satisfies
from .base import TRANSLATORS, WRAPPERS, Translator, make_translator, register, restore_base

__all__ = ["AutoTranslator", "DEFAULT_CANDIDATES"]

#: the kinds ``translator="auto"`` tries unless told otherwise
DEFAULT_CANDIDATES = (
    {"kind": "linear", "alpha": "auto"},
    {"kind": "procrustes", "center": True, "scale": True},
    {"kind": "mlp", "init": "lstsq", "loss": "infonce+0.1*mse", "epochs": 10, "lr": 1e-4},
)


def _candidate(c) -> tuple[str, dict]:
    """``(kind, params)`` of one candidate: a kind name, ``{"kind": ..., **params}``."""
    if isinstance(c, str):
        kind, params = c, {}
    elif isinstance(c, dict) and isinstance(c.get("kind"), str):
        kind, params = c["kind"], {k: v for k, v in c.items() if k != "kind"}
    else:
        raise InvalidParameter(f"an auto candidate must be a kind name or a dict with a 'kind' "
                               f"key, got {c!r:.60}")
    plain = sorted(k for k in TRANSLATORS if k != "base" and k not in WRAPPERS)
    if kind not in plain:
        raise InvalidParameter(f"unknown auto candidate kind {kind!r}; expected one of {plain}")
    TRANSLATORS[kind].validate_param_values(params)
    return kind, params


def _candidates_error(v):
    if not isinstance(v, (list, tuple)) or not v:
        return f"got {v!r:.60}"
    try:
        for c in v:
            _candidate(c)
    except InvalidParameter as e:
        return str(e)
    return None


def _label(kind: str, params: dict) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    return f"{kind}({shown})" if shown else kind


@register
class AutoTranslator(Translator):
    """Fits each of ``candidates`` and keeps the best on validation (see the module doc).

    ``candidates``: kind names or ``{"kind": ..., **params}`` dicts (default
    :data:`DEFAULT_CANDIDATES`: ridge with its alpha chosen on val, centred Procrustes,
    and the MLP that starts from least squares). Needs validation pairs. The chosen,
    fitted translator is ``best_``; ``selection_`` lists every candidate's figures.
    """

    kind = "auto"

    _parameter_constraints = {
        "candidates": [Satisfies(_candidates_error, "a non-empty list of kind names or "
                                                    "{'kind': ..., **params} dicts")],
    }

    def __init__(self, candidates=DEFAULT_CANDIDATES):
        self.candidates = candidates

    def _config_params(self) -> dict:
        return {"candidates": [dict(c) if isinstance(c, dict) else c for c in self.candidates]}

    def _fit(self, X, Y, X_val, Y_val, labels, labels_val):
        from ..metrics import paired_retrieval
        from ..planner import wilson_lower_bound

        if X_val is None or len(X_val) == 0:
            raise InvalidParameter("translator='auto' chooses on validation pairs; got none "
                                   "(pass X_val, Y_val)")
        rows, fitted = [], []
        for c in self.candidates:
            kind, params = _candidate(c)
            t0 = time.perf_counter()
            T = make_translator(kind, **params).fit(X, Y, X_val, Y_val, labels=labels,
                                                    labels_val=labels_val)
            m = paired_retrieval(T.transform(X_val), Y_val, labels_val)
            rows.append({"candidate": _label(kind, params), "kind": kind,
                         "val_R@1": m["R@1"], "val_cos": m["cos"],
                         "seconds": round(time.perf_counter() - t0, 3)})
            fitted.append(T)
        best_r1 = max(r["val_R@1"] for r in rows)
        floor = wilson_lower_bound(best_r1, len(X_val))
        tied = [i for i, r in enumerate(rows) if r["val_R@1"] >= floor]
        pick = max(tied, key=lambda i: (rows[i]["val_cos"], -i))
        self.best_ = fitted[pick]
        self.selection_ = rows
        chosen = rows[pick]
        why = (f"{chosen['candidate']}: val R@1 {chosen['val_R@1']:.4f} and cosine "
               f"{chosen['val_cos']:.4f}; candidates at or above the best R@1's lower bound "
               f"{floor:.4f} (n_val={len(X_val)}) are tied, the highest cosine among them wins")
        return {"candidates": rows, "tied": [rows[i]["candidate"] for i in tied],
                "chosen": chosen["candidate"], "why": why, "val_R@1": chosen["val_R@1"],
                "val_cos": chosen["val_cos"]}

    def _transform(self, X):
        return self.best_.transform(X)

    def _extra_config(self) -> dict:
        return {"base": self.best_.config()}

    def _get_state(self):
        return {f"base.{k}": v for k, v in self.best_._get_state().items()}

    def _set_state(self, tensors, config):
        self.best_ = restore_base(config, tensors)
        self.selection_ = config.get("fit_report", {}).get("candidates", [])
