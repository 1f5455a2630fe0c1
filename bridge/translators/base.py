"""The estimator contract every translator follows, and its safetensors persistence.

``__init__`` stores hyper-parameters only; ``fit(X, Y)`` validates shapes, sets
trailing-underscore state and returns ``self``; ``transform`` before ``fit`` raises
:class:`~bridge.errors.NotFittedError`. ``save(dir)`` writes ``config.json`` (kind,
hyper-parameters, dimensions, fit report) and ``model.safetensors`` (the fitted arrays);
:func:`load_translator` reads them back without unpickling anything.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import numpy as np

from ..errors import CorruptFile, DimensionMismatch, NotFittedError
from ..metrics import paired_retrieval
from ..files import atomic_dir, dumps_json, read_json, to_jsonable
from ..store import check_embeddings

__all__ = ["Translator", "register", "load_translator", "TRANSLATORS", "make_translator"]

TRANSLATORS: dict[str, type] = {}


def register(cls):
    TRANSLATORS[cls.kind] = cls
    return cls


class Translator:
    """Base class: maps rows of one embedding space (dim ``in_dim_``) into another."""

    kind = "base"

    # -- sklearn-style parameters -------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- contract -----------------------------------------------------------------
    def fit(self, X, Y, X_val=None, Y_val=None, labels=None, labels_val=None):
        """Fit on paired rows; ``labels`` marks rows that share a target (optional)."""
        t0 = time.perf_counter()
        X, Y = self._check_pair(X, Y, "X", "Y")
        if X_val is not None:
            X_val, Y_val = self._check_pair(X_val, Y_val, "X_val", "Y_val")
            if X_val.shape[1] != X.shape[1] or Y_val.shape[1] != Y.shape[1]:
                raise DimensionMismatch(
                    f"validation dims ({X_val.shape[1]}, {Y_val.shape[1]}) differ from "
                    f"training dims ({X.shape[1]}, {Y.shape[1]})"
                )
        self.in_dim_ = int(X.shape[1])
        self.out_dim_ = int(Y.shape[1])
        report = self._fit(X, Y, X_val, Y_val, labels, labels_val) or {}
        if X_val is not None and "val_R@1" not in report:
            m = paired_retrieval(self.transform(X_val), Y_val, labels_val)
            report.update({"val_R@1": m["R@1"], "val_cos": m["cos"]})
        report["seconds"] = time.perf_counter() - t0
        report["n_train"] = int(X.shape[0])
        self.fit_report_ = report
        return self

    def transform(self, X) -> np.ndarray:
        self._check_fitted()
        X = check_embeddings(X, "X", dim=self.in_dim_)
        return self._transform(X.astype(np.float32, copy=False))

    def fit_transform(self, X, Y, **kw) -> np.ndarray:
        return self.fit(X, Y, **kw).transform(X)

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "in_dim_")

    def _check_fitted(self):
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(X, Y) before transform"
            )

    @staticmethod
    def _check_pair(X, Y, nx="X", ny="Y"):
        X = check_embeddings(X, nx).astype(np.float32, copy=False)
        Y = check_embeddings(Y, ny).astype(np.float32, copy=False)
        if X.shape[0] != Y.shape[0]:
            raise DimensionMismatch(
                f"{nx} has {X.shape[0]} rows but {ny} has {Y.shape[0]}; expected paired rows"
            )
        return X, Y

    # -- to implement ---------------------------------------------------------------
    def _fit(self, X, Y, X_val, Y_val, labels, labels_val) -> dict | None:
        raise NotImplementedError

    def _transform(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _get_state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _set_state(self, tensors: dict[str, np.ndarray], config: dict) -> None:
        raise NotImplementedError

    # -- persistence ----------------------------------------------------------------
    def config(self) -> dict:
        from .. import __version__

        self._check_fitted()
        return {
            "kind": self.kind,
            "params": to_jsonable(self.get_params()),
            "in_dim": self.in_dim_,
            "out_dim": self.out_dim_,
            "fit_report": to_jsonable(getattr(self, "fit_report_", {})),
            "extra": to_jsonable(self._extra_config()),
            "bridge_version": __version__,
        }

    def _extra_config(self) -> dict:
        return {}

    def save(self, path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into folder ``path`` atomically."""
        from safetensors.numpy import save

        path = Path(path)
        tensors = {k: np.ascontiguousarray(v) for k, v in self._get_state().items()}
        blob = save(tensors)
        cfg = self.config()
        with atomic_dir(path, kind="translator") as tmp:
            (tmp / "model.safetensors").write_bytes(blob)
            (tmp / "config.json").write_text(dumps_json(cfg))
        return path


def make_translator(kind: str | Translator, **params) -> Translator:
    """A translator from its kind name (``"linear"``, ``"procrustes"``, ``"mlp"``,
    ``"relative"``) and hyper-parameters, or an unfitted instance cloned."""
    _ensure_registered()
    if isinstance(kind, Translator):
        return type(kind)(**{**kind.get_params(), **params})
    if kind not in TRANSLATORS:
        raise ValueError(f"unknown translator {kind!r}; expected one of {sorted(TRANSLATORS)}")
    cls = TRANSLATORS[kind]
    bad = [k for k in params if k not in cls._param_names()]
    if bad:
        raise TypeError(
            f"{cls.__name__} has no parameter {bad[0]!r}; expected one of {cls._param_names()}"
        )
    return cls(**params)


def _ensure_registered():
    from . import identity, linear, mlp, posthoc, procrustes, relative  # noqa: F401  (registration)


def load_translator(path) -> Translator:
    """Read a translator saved by :meth:`Translator.save`; never unpickles."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    _ensure_registered()
    path = Path(path)
    cfg_path, w_path = path / "config.json", path / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.exists():
            raise CorruptFile(f"translator file missing: {p}")
    cfg = read_json(cfg_path, "translator config")
    kind = cfg.get("kind")
    if kind not in TRANSLATORS:
        raise CorruptFile(f"{cfg_path}: unknown translator kind {kind!r}; expected one of {sorted(TRANSLATORS)}")
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFile(f"{w_path} is not a readable safetensors file: {e}") from e
    obj = TRANSLATORS[kind](**cfg.get("params", {}))
    obj.in_dim_ = int(cfg["in_dim"])
    obj.out_dim_ = int(cfg["out_dim"])
    obj.fit_report_ = cfg.get("fit_report", {})
    try:
        obj._set_state(tensors, cfg)
    except KeyError as e:
        raise CorruptFile(f"{w_path} lacks tensor {e}; the file does not match {kind!r}") from e
    return obj
