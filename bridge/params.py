"""Declarative checks of hyper-parameters and arguments.

A class (or a function) declares, for each parameter, the list of constraints one of
which the value must satisfy, as scikit-learn's ``_parameter_constraints`` does::

    _parameter_constraints = {
        "alpha": [Interval(Real, 0, None, closed="left"), Options({"auto"})],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "scale": [bool],
        "init": [Options({"lstsq", "procrustes"}), None],
    }

:func:`validate_params` raises :class:`~bridge.errors.InvalidParameter` naming the
parameter, the value given and what was expected. Booleans never pass as numbers and
numbers never pass as booleans; NaN lies in no interval.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping

import numpy as np

from .errors import InvalidParameter

__all__ = [
    "Interval",
    "Options",
    "Satisfies",
    "validate_params",
    "check_int",
    "check_real",
    "check_bool",
    "describe",
]

Integral = numbers.Integral
Real = numbers.Real


def _is_bool(v) -> bool:
    return isinstance(v, (bool, np.bool_))


class Interval:
    """A number of ``type`` (``Integral`` or ``Real``) in ``[left, right]``.

    ``None`` bounds are open-ended; ``closed`` is ``"left"``, ``"right"``, ``"both"`` or
    ``"neither"``. ``Real`` accepts integers too; ``Integral`` accepts only integers.
    NaN is never accepted, nor infinity unless ``finite=False``.
    """

    def __init__(self, type, left=None, right=None, closed: str = "both", finite: bool = True):
        self.type = type
        self.left = left
        self.right = right
        self.closed = closed
        self.finite = finite

    def is_satisfied_by(self, v) -> bool:
        if _is_bool(v) or not isinstance(v, self.type):
            return False
        if self.type is not Integral:
            try:
                v = float(v)
            except OverflowError:
                v = math.inf if v > 0 else -math.inf
            if math.isnan(v) or (self.finite and math.isinf(v)):
                return False
        if self.left is not None:
            if v < self.left or (v == self.left and self.closed not in ("left", "both")):
                return False
        if self.right is not None:
            if v > self.right or (v == self.right and self.closed not in ("right", "both")):
                return False
        return True

    def __str__(self) -> str:
        kind = "an integer" if self.type is Integral else (
            "a finite number" if self.finite else "a number")
        lo = "-inf" if self.left is None else repr(self.left)
        hi = "inf" if self.right is None else repr(self.right)
        lb = "[" if self.left is not None and self.closed in ("left", "both") else "("
        rb = "]" if self.right is not None and self.closed in ("right", "both") else ")"
        return f"{kind} in {lb}{lo}, {hi}{rb}"


class Options:
    """One of a fixed set of values (usually strings)."""

    def __init__(self, options):
        self.options = set(options)

    def is_satisfied_by(self, v) -> bool:
        try:
            return isinstance(v, str) and v in self.options
        except TypeError:
            return False

    def __str__(self) -> str:
        shown = ", ".join(map(repr, sorted(self.options)))
        return shown if len(self.options) == 1 else "one of " + shown


class Satisfies:
    """A value for which ``check(value)`` returns None (accepted) or an error text."""

    def __init__(self, check: Callable[[object], str | None], text: str):
        self.check = check
        self.text = text
        self.last_error: str | None = None

    def is_satisfied_by(self, v) -> bool:
        self.last_error = self.check(v)
        return self.last_error is None

    def __str__(self) -> str:
        return self.text


def _satisfied(c, v) -> bool:
    if c is None:
        return v is None
    if c is bool:
        return _is_bool(v)
    if c is str:
        return isinstance(v, str)
    if isinstance(c, type):
        return isinstance(v, c) and not (_is_bool(v) and c is not bool)
    return c.is_satisfied_by(v)


def _text(c) -> str:
    if c is None:
        return "None"
    if c is bool:
        return "a bool (True or False)"
    if c is str:
        return "a string"
    if isinstance(c, type):
        return f"an instance of {c.__name__}"
    return str(c)


def describe(constraints) -> str:
    """What a list of constraints accepts, in words."""
    parts = [_text(c) for c in constraints]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def validate_params(constraints: Mapping[str, list], params: Mapping[str, object],
                    owner: str = "", unknown: bool = True) -> None:
    """Raise :class:`InvalidParameter` for the first parameter that satisfies none of its
    constraints (and, with ``unknown``, for a parameter that has none declared)."""
    where = f"{owner}: " if owner else ""
    if unknown:
        bad = [k for k in params if k not in constraints]
        if bad:
            raise InvalidParameter(
                f"{where}unknown parameter {bad[0]!r}; expected one of {sorted(constraints)}")
    for name, value in params.items():
        cs = constraints.get(name)
        if cs is None or cs == "no_validation":
            continue
        if any(_satisfied(c, value) for c in cs):
            continue
        detail = [c.last_error for c in cs if isinstance(c, Satisfies) and c.last_error]
        extra = f" ({detail[0]})" if detail else ""
        raise InvalidParameter(
            f"{where}parameter {name!r} must be {describe(cs)}, got {value!r}{extra}")


def check_int(name: str, value, low: int | None = None, high: int | None = None,
              allow_none: bool = False) -> int | None:
    """``value`` as an ``int`` in ``[low, high]``, or :class:`InvalidParameter` naming it."""
    cs = [Interval(Integral, low, high, closed="both")] + ([None] if allow_none else [])
    validate_params({name: cs}, {name: value})
    return None if value is None else int(value)


def check_real(name: str, value, low: float | None = None, high: float | None = None,
               closed: str = "both", allow_none: bool = False) -> float | None:
    """``value`` as a finite-or-bounded ``float`` in the interval, or :class:`InvalidParameter`."""
    cs = [Interval(Real, low, high, closed=closed)] + ([None] if allow_none else [])
    validate_params({name: cs}, {name: value})
    return None if value is None else float(value)


def check_bool(name: str, value) -> bool:
    """``value`` if it is a bool, else :class:`InvalidParameter` naming it."""
    validate_params({name: [bool]}, {name: value})
    return bool(value)
