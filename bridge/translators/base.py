"""The estimator contract every translator follows, and its safetensors persistence.

Translators are scikit-learn estimators (:class:`sklearn.base.BaseEstimator`):
``get_params(deep=True)``/``set_params`` (nested ``base__...`` for a wrapper),
:func:`sklearn.base.clone`, and ``score(X, Y)`` (paired R@1, higher is better), so they
work inside ``GridSearchCV`` and ``Pipeline``. ``__init__`` stores hyper-parameters
only; ``fit(X, Y)`` checks them against the class's ``_parameter_constraints`` (see
:mod:`bridge.params`; so does :func:`make_translator`, which also refuses unknown
parameter names), validates shapes, sets trailing-underscore state and returns
``self``; ``transform`` before ``fit`` raises :class:`~bridge.errors.NotFittedError`.
``save(dir)`` writes ``config.json`` (kind, hyper-parameters, dimensions, fit report)
and ``model.safetensors`` (the fitted arrays); :func:`load_translator` reads them back
without unpickling anything.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator

from ..errors import CorruptFile, DimensionMismatch, InvalidParameter, NotFittedError
from ..metrics import paired_retrieval
from ..files import atomic_dir, dumps_json, read_json, to_jsonable
from ..params import validate_params
from ..store import check_embeddings

__all__ = ["Translator", "register", "load_translator", "TRANSLATORS", "make_translator",
           "restore_base", "WRAPPERS"]

TRANSLATORS: dict[str, type] = {}


def register(cls):
    TRANSLATORS[cls.kind] = cls
    return cls


class Translator(BaseEstimator):
    """Base class: maps rows of one embedding space (dim ``in_dim_``) into another."""

    kind = "base"

    #: parameter name -> list of accepted constraints (see :mod:`bridge.params`); checked
    #: by :meth:`fit` and :func:`make_translator`
    _parameter_constraints: dict = {}

    # -- sklearn-style parameters -------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    @classmethod
    def _get_param_names(cls) -> list[str]:  # scikit-learn's name for the same list
        return sorted(cls._param_names())

    def get_params(self, deep: bool = True) -> dict:
        """Hyper-parameters by name; with ``deep``, also those of a wrapped translator
        as ``base__name``."""
        out = {}
        for k in self._param_names():
            v = getattr(self, k)
            out[k] = v
            if deep and isinstance(v, Translator):
                out.update((f"{k}__{kk}", vv) for kk, vv in v.get_params(deep=True).items())
        return out

    def set_params(self, **params):
        """Set hyper-parameters (``base__name`` reaches a wrapped translator); returns
        ``self``. Values are checked by :meth:`fit`; an unknown name raises
        :class:`~bridge.errors.InvalidParameter` here."""
        names = self._param_names()
        for key in params:
            top, _, sub = key.partition("__")
            if top not in names:
                raise InvalidParameter(
                    f"{type(self).__name__} has no parameter {top!r}; expected one of {names}")
            if sub and not isinstance(getattr(self, top), Translator):
                raise InvalidParameter(
                    f"{type(self).__name__}: parameter {top!r} holds "
                    f"{getattr(self, top)!r}, not a translator; cannot set {key!r}")
        return super().set_params(**params)

    def _config_params(self) -> dict:
        """The hyper-parameters ``config.json`` stores (plain values only)."""
        return self.get_params(deep=False)

    @classmethod
    def validate_param_values(cls, params: dict) -> None:
        """Raise :class:`~bridge.errors.InvalidParameter` naming the first unknown parameter
        or the first value outside its declared constraints."""
        names = cls._param_names()
        bad = [k for k in params if k not in names]
        if bad:
            raise InvalidParameter(
                f"{cls.__name__} has no parameter {bad[0]!r}; expected one of {names}")
        validate_params(cls._parameter_constraints, params, owner=cls.__name__, unknown=False)

    def _validate_params(self) -> None:
        self.validate_param_values(self.get_params(deep=False))

    def __repr__(self, N_CHAR_MAX=None) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({args})"

    # -- contract -----------------------------------------------------------------
    def fit(self, X, Y, X_val=None, Y_val=None, labels=None, labels_val=None):
        """Fit on paired rows; ``labels`` marks rows that share a target (optional)."""
        t0 = time.perf_counter()
        self._validate_params()
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
        return self._finish_fit(report, t0, int(X.shape[0]), X_val, Y_val, labels_val)

    def fit_moments(self, moments, X_val=None, Y_val=None, labels_val=None):
        """Fit a closed-form kind (ridge, Procrustes) from accumulated pair moments
        (:class:`~bridge.translators.functional.PairMoments`, weighted ones included:
        :meth:`~bridge.translators.functional.PairMoments.plus`) instead of rows;
        validation rows, when given, pick ``alpha="auto"`` and are scored as in :meth:`fit`.
        Other kinds raise :class:`~bridge.errors.InvalidParameter`."""
        from .functional import PairMoments

        if not hasattr(self, "_fit_moments"):
            raise InvalidParameter(f"{type(self).__name__} (kind {self.kind!r}) is not fitted "
                                   "from pair moments; only closed-form kinds (linear, "
                                   "procrustes) are")
        if not isinstance(moments, PairMoments) or not moments.n > 0:
            raise InvalidParameter(f"moments must be PairMoments of at least one row, got "
                                   f"{type(moments).__name__}")
        t0 = time.perf_counter()
        self._validate_params()
        dx, dy = int(moments.cx.size), int(moments.cy.size)
        if X_val is not None:
            X_val, Y_val = self._check_pair(X_val, Y_val, "X_val", "Y_val")
            if X_val.shape[1] != dx or Y_val.shape[1] != dy:
                raise DimensionMismatch(
                    f"validation dims ({X_val.shape[1]}, {Y_val.shape[1]}) differ from the "
                    f"moments' dims ({dx}, {dy})")
        self.in_dim_, self.out_dim_ = dx, dy
        report = self._fit_moments(moments, X_val, Y_val, labels_val) or {}
        return self._finish_fit(report, t0, moments.n, X_val, Y_val, labels_val)

    def _finish_fit(self, report, t0, n_train, X_val, Y_val, labels_val):
        if X_val is not None and "val_R@1" not in report:
            m = paired_retrieval(self.transform(X_val), Y_val, labels_val)
            report.update({"val_R@1": m["R@1"], "val_cos": m["cos"]})
        report["seconds"] = time.perf_counter() - t0
        report["n_train"] = int(n_train) if float(n_train).is_integer() else float(n_train)
        self.fit_report_ = report
        return self

    def transform(self, X) -> np.ndarray:
        self.check_fitted()
        X = check_embeddings(X, "X", dim=self.in_dim_)
        return self._transform(X.astype(np.float32, copy=False))

    def fit_transform(self, X, Y, **kw) -> np.ndarray:
        return self.fit(X, Y, **kw).transform(X)

    def score(self, X, Y, labels=None) -> float:
        """Paired R@1 of ``transform(X)`` against ``Y`` (see
        :func:`bridge.metrics.paired_retrieval`); higher is better, so
        ``GridSearchCV(translator, grid)`` selects by held-out retrieval."""
        X, Y = self._check_pair(X, Y, "X", "Y")
        return float(paired_retrieval(self.transform(X), Y, labels)["R@1"])

    def __sklearn_is_fitted__(self) -> bool:
        return self.is_fitted

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "in_dim_")

    def check_fitted(self) -> None:
        """Raise :class:`~bridge.errors.NotFittedError` unless :meth:`fit` (or a load) has
        set this translator's state."""
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(X, Y) before transform"
            )

    #: True for kinds whose fit streams its training rows block by block (closed forms
    #: from accumulated moments, :func:`~bridge.translators.functional.pair_moments`):
    #: memory maps and lazy row views are then checked here for shape and dtype only,
    #: their values in the same pass that reads them, and never copied whole
    streams: bool = False

    def _check_pair(self, X, Y, nx="X", ny="Y"):
        from ..chunks import check_header, lazy

        def checked(a, name):
            if self.streams and (lazy(a) or isinstance(a, np.memmap)):
                return check_header(a, name)
            return check_embeddings(a, name).astype(np.float32, copy=False)

        X, Y = checked(X, nx), checked(Y, ny)
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

        self.check_fitted()
        return {
            "kind": self.kind,
            "params": to_jsonable(self._config_params()),
            "in_dim": self.in_dim_,
            "out_dim": self.out_dim_,
            "fit_report": to_jsonable(getattr(self, "fit_report_", {})),
            "extra": to_jsonable(self._extra_config()),
            "bridge_version": __version__,
        }

    def _extra_config(self) -> dict:
        return {}

    def save(self, path, overwrite: bool = False) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into folder ``path`` atomically.

        An existing translator folder is replaced (see :class:`bridge.files.atomic_dir`);
        any other non-empty folder is refused with
        :class:`~bridge.errors.FolderExists` unless ``overwrite=True``.
        """
        from safetensors.numpy import save

        path = Path(path)
        tensors = {k: np.ascontiguousarray(v) for k, v in self._get_state().items()}
        blob = save(tensors)
        cfg = self.config()
        with atomic_dir(path, kind="translator", overwrite=overwrite) as tmp:
            (tmp / "model.safetensors").write_bytes(blob)
            (tmp / "config.json").write_text(dumps_json(cfg))
        return path


def make_translator(kind: str | Translator, **params) -> Translator:
    """A translator from its kind name (``"linear"``, ``"procrustes"``, ``"mlp"``,
    ``"relative"``) and hyper-parameters, or an unfitted instance cloned."""
    _ensure_registered()
    if isinstance(kind, Translator):
        from sklearn.base import clone

        cls = type(kind)
        unfitted = clone(kind)  # a wrapped translator is cloned too
        params = {**unfitted.get_params(deep=False), **params}
    else:
        if not isinstance(kind, str) or kind not in TRANSLATORS:
            raise InvalidParameter(
                f"unknown translator {kind!r}; expected one of {sorted(TRANSLATORS)}")
        cls = TRANSLATORS[kind]
    cls.validate_param_values(params)
    return cls(**params)


def _ensure_registered():
    from . import auto, centred, identity, linear, mlp, posthoc, procrustes, relative  # noqa: F401  (registration)


def load_translator(path) -> Translator:
    """Read a translator saved by :meth:`Translator.save`; never unpickles.

    Everything is checked at load time, so that a damaged or hostile folder fails here
    and never later at translate time: ``config.json`` fields (kind, params, in_dim,
    out_dim, fit_report, extra) must have their types and the parameters must be valid
    for the kind; every tensor of ``model.safetensors`` must have the shape the config
    implies for that kind (no tensor missing, none extra) and hold finite values; the
    restored translator must map a probe row of ``in_dim`` to ``out_dim`` finite values.
    Any failure raises :class:`~bridge.errors.CorruptFile` naming the file and field.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from ..files import recover

    _ensure_registered()
    path = Path(path)
    recover(path)
    cfg_path, w_path = path / "config.json", path / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.exists():
            raise CorruptFile(f"translator file missing: {p}")
    cfg = read_json(cfg_path, "translator config")
    _check_config(cfg, f"{cfg_path}")
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFile(f"{w_path} is not a readable safetensors file: {e}") from e
    _check_tensors(tensors, cfg, f"{w_path}")
    obj = _restore(cfg, tensors)
    kind = cfg["kind"]
    try:
        y = obj.transform(np.ones((2, obj.in_dim_), np.float32))
    except (ValueError, RuntimeError, IndexError, KeyError) as e:
        raise CorruptFile(f"{w_path}: the {kind!r} weights do not translate a row of "
                          f"dimension {obj.in_dim_}: {e}") from e
    y = np.asarray(y)
    if y.shape != (2, obj.out_dim_) or not np.isfinite(y).all():
        raise CorruptFile(f"{w_path}: the {kind!r} weights map a row of dimension "
                          f"{obj.in_dim_} to shape {y.shape[1:]} (finite: "
                          f"{bool(np.isfinite(y).all())}); config.json says out_dim "
                          f"{obj.out_dim_}")
    return obj


def _restore(cfg: dict, tensors: dict) -> Translator:
    obj = TRANSLATORS[cfg["kind"]](**cfg.get("params", {}))
    obj.in_dim_ = int(cfg["in_dim"])
    obj.out_dim_ = int(cfg["out_dim"])
    obj.fit_report_ = cfg.get("fit_report", {})
    obj._set_state(tensors, cfg)
    return obj


#: translator kinds that wrap a base translator -> the kinds their base may not be
WRAPPERS = {"posthoc": ("posthoc",), "centred": ("centred",),
            "auto": ("auto", "centred", "posthoc")}


def restore_base(config: dict, tensors: dict) -> Translator:
    """The fitted base translator a wrapper's ``config["extra"]["base"]`` and its
    ``base.``-prefixed tensors describe."""
    bc = config["extra"]["base"]
    base = TRANSLATORS[bc["kind"]](**bc.get("params", {}))
    base.in_dim_, base.out_dim_ = int(bc["in_dim"]), int(bc["out_dim"])
    base.fit_report_ = bc.get("fit_report", {})
    base._set_state({k[5:]: v for k, v in tensors.items() if k.startswith("base.")}, bc)
    return base


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_config(cfg, where: str) -> None:
    """Types and values of a translator ``config.json`` (``where`` names the file and,
    for a nested config, the field holding it)."""
    from ..errors import BridgeError

    def fail(field, msg):
        raise CorruptFile(f"{where}: {field}: {msg}")

    if not isinstance(cfg, dict):
        raise CorruptFile(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    kind = cfg.get("kind")
    if not isinstance(kind, str) or kind not in TRANSLATORS or kind == "base":
        fail("kind", f"unknown translator kind {kind!r}; expected one of {sorted(TRANSLATORS)}")
    for k in ("in_dim", "out_dim"):
        v = cfg.get(k)
        if not _is_int(v) or v < 1:
            fail(k, f"expected a positive integer, got {v!r:.40}")
    for k in ("params", "fit_report", "extra"):
        if k in cfg and not isinstance(cfg[k], dict):
            fail(k, f"expected an object, got {type(cfg[k]).__name__} {cfg[k]!r:.40}")
    params = cfg.get("params", {})
    cls = TRANSLATORS[kind]
    try:
        cls.validate_param_values(dict(params)) if hasattr(cls, "validate_param_values") else None
        cls(**params)
    except BridgeError as e:
        fail("params", str(e))
    except TypeError as e:  # a parameter name the class does not take
        fail("params", f"{e}; expected parameters {cls._param_names()}")
    if kind in WRAPPERS:
        extra = cfg.get("extra", {})
        if not isinstance(extra.get("base"), dict):
            fail("extra.base", "expected the base translator's config (an object)")
        base = extra["base"]
        _check_config(base, f"{where}: extra.base")
        if base["kind"] in WRAPPERS[kind]:
            fail("extra.base.kind", f"a {kind!r} translator's base cannot be {base['kind']!r}")
        if kind == "centred" and extra.get("means", "training") not in ("training", "given"):
            fail("extra.means", f"expected 'training' or 'given', got {extra.get('means')!r:.40}")
        if base["in_dim"] != cfg["in_dim"] or base["out_dim"] != cfg["out_dim"]:
            fail("extra.base", f"base dimensions ({base['in_dim']}, {base['out_dim']}) differ "
                               f"from in_dim, out_dim ({cfg['in_dim']}, {cfg['out_dim']})")


def _expected_shapes(cfg: dict, n_tensors: int | None = None) -> dict[str, tuple] | None:
    """Tensor name -> shape that a translator of ``cfg`` stores; None when unknown.

    A shape entry ``None`` stands for any length (the number of anchors); an optional
    tensor is marked by a name ending in ``?``.
    """
    kind, i, o = cfg["kind"], cfg["in_dim"], cfg["out_dim"]
    if kind == "linear":
        return {"W": (i, o), "b": (o,)}
    if kind == "procrustes":
        return {"R": (i, o), "mx": (i,), "my": (o,), "s": (1,)}
    if kind == "identity":
        return {"dim": (1,)}
    if kind == "relative":
        return {"anchors_x": (None, i), "anchors_y": (None, o), "k": (1,), "power": (1,)}
    if kind == "mlp":
        depth = cfg.get("params", {}).get("depth")
        if n_tensors is not None and isinstance(depth, int) and depth > n_tensors:
            # every block stores its own weights: more blocks than tensors cannot match,
            # and building a network of that depth (even shapes only) would take forever
            raise CorruptFile(f"config.json: params.depth is {depth}, but the weights file "
                              f"holds only {n_tensors} tensors")
        net = _restore_net(cfg)
        return {k: tuple(v.shape) for k, v in net.state_dict().items()}
    if kind in WRAPPERS:
        base = cfg["extra"]["base"]
        out = {f"base.{k}": v for k, v in (_expected_shapes(base, n_tensors) or {}).items()}
        if kind == "posthoc":
            out.update({"shift": (o,), "R?": (o, o), "mx?": (o,), "my?": (o,), "s?": (1,)})
        elif kind == "centred":
            out.update({"in_mean": (i,), "out_mean": (o,)})
        return out
    return None


def _restore_net(cfg):
    """The network a config describes, on torch's "meta" device: shapes only, no memory,
    so a hostile config (a width of 10**9) costs nothing to check."""
    import torch

    obj = TRANSLATORS["mlp"](**cfg.get("params", {}))
    with torch.device("meta"):
        return obj.build(cfg["in_dim"], cfg["out_dim"])


def _check_tensors(tensors: dict, cfg: dict, where: str) -> None:
    """Names, shapes and finiteness of the tensors of ``model.safetensors``."""
    def fail(name, msg):
        raise CorruptFile(f"{where}: tensor {name!r}: {msg} (config.json: kind "
                          f"{cfg['kind']!r}, in_dim {cfg['in_dim']}, out_dim {cfg['out_dim']})")

    for name, t in tensors.items():
        if t.dtype.kind == "f" and not np.isfinite(t).all():
            fail(name, f"holds {int((~np.isfinite(t)).sum())} NaN or inf value(s)")
        if t.dtype.kind not in "fiu":
            fail(name, f"has dtype {t.dtype}; expected numbers")
    shapes = _expected_shapes(cfg, len(tensors))
    if shapes is None:  # a kind registered elsewhere: its _set_state and the probe decide
        return
    required = {k: v for k, v in shapes.items() if not k.endswith("?")}
    optional = {k[:-1]: v for k, v in shapes.items() if k.endswith("?")}
    for name in required:
        if name not in tensors:
            fail(name, "missing")
    extra = sorted(set(tensors) - set(required) - set(optional))
    if extra:
        fail(extra[0], f"unexpected; a {cfg['kind']!r} translator stores {sorted(required)}")
    if cfg["kind"] == "posthoc":
        got = [k for k in optional if k in tensors]
        if got and len(got) != len(optional):
            fail(sorted(set(optional) - set(got))[0], f"missing (post-hoc rotation stores "
                                                      f"{sorted(optional)} together)")
    n_anchor = None
    for name, want in {**required, **optional}.items():
        if name not in tensors:
            continue
        got = tuple(tensors[name].shape)
        ok = len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want))
        if not ok:
            shown = tuple("n" if w is None else w for w in want)
            fail(name, f"has shape {got}, expected {shown}")
        if None in want:
            if n_anchor is not None and got[0] != n_anchor:
                fail(name, f"has {got[0]} rows, other anchors {n_anchor}")
            n_anchor = got[0]
    kind = cfg["kind"]
    if kind == "identity":
        if int(tensors["dim"][0]) != cfg["in_dim"] or cfg["in_dim"] != cfg["out_dim"]:
            fail("dim", f"holds {int(tensors['dim'][0])}; an identity edge needs in_dim == "
                        f"out_dim == dim")
    if kind == "relative":
        if n_anchor == 0:
            fail("anchors_x", "has no rows; expected at least one anchor")
        k = tensors["k"]
        if k.dtype.kind not in "iu" or int(k[0]) < 1:
            fail("k", f"holds {k[0]!r} ({k.dtype}); expected a positive integer")
