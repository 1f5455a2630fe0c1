"""Training losses for translators: small ``torch.nn.Module``s with testable cores.

``info_nce``, ``mse`` and ``cosine`` are plain functions on tensors; the modules wrap
them (the InfoNCE module owns a learnable temperature). ``make_loss("infonce+mse")``
or ``make_loss({"infonce": 1.0, "mse": 0.5})`` builds a weighted sum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InvalidParameter

__all__ = ["info_nce", "InfoNCE", "MSE", "Cosine", "CombinedLoss", "make_loss", "parse_loss",
           "LOSSES"]


def info_nce(
    pred: torch.Tensor,
    target: torch.Tensor,
    temperature: torch.Tensor | float = 0.07,
    labels: torch.Tensor | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE between translated rows ``pred`` and their targets.

    Logits are cosine similarities divided by ``temperature``. Without ``labels`` row i of
    ``pred`` is positive with row i of ``target`` only. With ``labels`` (one integer per
    row) every pair of rows with the same label is positive, so repeated targets in a
    batch (five captions of one image, many clips of one class) are not pushed apart:
    the loss of row i is ``-log(sum_pos exp(s_ij) / sum_j exp(s_ij))``. The symmetric
    loss averages the pred->target and target->pred directions.
    """
    p = F.normalize(pred, dim=-1)
    t = F.normalize(target, dim=-1)
    logits = p @ t.T / temperature
    if labels is None:
        idx = torch.arange(p.shape[0], device=p.device)
        loss = F.cross_entropy(logits, idx)
        if symmetric:
            loss = 0.5 * (loss + F.cross_entropy(logits.T, idx))
        return loss
    pos = (labels[:, None] == labels[None, :]).to(logits.dtype)

    def one_side(lg):
        log_all = torch.logsumexp(lg, dim=1)
        log_pos = torch.logsumexp(lg.masked_fill(pos == 0, float("-inf")), dim=1)
        return (log_all - log_pos).mean()

    loss = one_side(logits)
    if symmetric:
        loss = 0.5 * (loss + one_side(logits.T))
    return loss


class InfoNCE(nn.Module):
    """Symmetric InfoNCE with a learnable temperature (stored as its log, clamped)."""

    def __init__(self, temperature: float = 0.05, learnable: bool = True, min_t: float = 0.01):
        super().__init__()
        init = torch.tensor(math.log(temperature), dtype=torch.float32)
        self.log_t = nn.Parameter(init) if learnable else nn.Parameter(init, requires_grad=False)
        self.min_t = min_t

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_t.exp().clamp(min=self.min_t)

    def forward(self, pred, target, labels=None):
        return info_nce(pred, target, self.temperature, labels)


class MSE(nn.Module):
    """Mean squared error summed over dimensions, averaged over rows."""

    def forward(self, pred, target, labels=None):
        return ((pred - target) ** 2).sum(-1).mean()


class Cosine(nn.Module):
    """Mean of ``1 - cos(pred, target)``."""

    def forward(self, pred, target, labels=None):
        return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()


LOSSES = {"infonce": InfoNCE, "mse": MSE, "cosine": Cosine}


class CombinedLoss(nn.Module):
    """Weighted sum of named losses; ``parts`` holds the last value of each term."""

    def __init__(self, weights: dict[str, float], temperature: float = 0.05):
        super().__init__()
        self.weights = parse_loss(weights)
        self.terms = nn.ModuleDict(
            {k: (InfoNCE(temperature) if k == "infonce" else LOSSES[k]()) for k in weights}
        )
        self.parts: dict[str, float] = {}

    def forward(self, pred, target, labels=None):
        total = 0.0
        for name, w in self.weights.items():
            v = self.terms[name](pred, target, labels)
            self.parts[name] = float(v.detach())
            total = total + w * v
        return total


def parse_loss(spec: str | Mapping) -> dict[str, float]:
    """The term weights of ``"infonce+0.5*mse"`` or of a dict ``{"infonce": 1, "mse": 0.5}``.

    Raises :class:`~bridge.errors.InvalidParameter` for an unknown or repeated term, a weight
    that is not a finite non-negative number, or no term with a positive weight.
    """
    if isinstance(spec, str):
        items = []
        for term in spec.replace(" ", "").split("+"):
            w, name = term.split("*", 1) if "*" in term else ("1", term)
            try:
                w = float(w)
            except ValueError:
                raise InvalidParameter(
                    f"loss {spec!r}: weight {w!r} of term {name!r} is not a number") from None
            items.append((name, w))
    elif isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        raise InvalidParameter(
            f"loss must be a string such as 'infonce+mse' or a dict of weights, got {spec!r}")
    weights: dict[str, float] = {}
    for name, w in items:
        if name not in LOSSES:
            raise InvalidParameter(f"unknown loss {name!r} in {spec!r}; expected one of "
                                   f"{sorted(LOSSES)}")
        if name in weights:
            raise InvalidParameter(f"loss {spec!r}: term {name!r} appears twice")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise InvalidParameter(f"loss {spec!r}: weight of {name!r} must be a finite "
                                   f"non-negative number, got {w!r}")
        weights[name] = float(w)
    if not any(w > 0 for w in weights.values()):
        raise InvalidParameter(f"loss {spec!r}: expected at least one term with a positive weight")
    return weights


def make_loss(spec: str | dict | nn.Module, temperature: float = 0.05) -> nn.Module:
    """Build a loss from ``"infonce+mse"``, ``"infonce+0.5*mse"``, a dict of weights, or
    return a module unchanged."""
    if isinstance(spec, nn.Module):
        return spec
    return CombinedLoss(parse_loss(spec), temperature=temperature)
