"""The seams between modules: the MLP pair training lives on the translator, no module
reaches into another's private names, the package's lazy names exist, and pyproject
declares what the package imports."""

import ast
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bridge
from bridge import Cache, InvalidParameter, ModalityGraph
from bridge.errors import DimensionMismatch
from bridge.graph import pair_components
from bridge.training import train
from bridge.translators import MLPTranslator, make_translator

ROOT = Path(__file__).resolve().parents[1]

TINY = dict(width=8, epochs=3, batch_size=32, patience=50, seed=3)


def _data(n=120, d1=5, d2=4, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d1)).astype(np.float32)
    B = (np.tanh(A @ rng.standard_normal((d1, d2))) + 0.2 * rng.standard_normal((n, d2)))
    return A, B.astype(np.float32)


def _joint_reference(template, X, Y, Xv, Yv, labels, labels_val, cycle_weight):
    """Both directions trained together as ModalityGraph.connect trained them before the
    pair training moved onto the translator: two copies of the template, networks from
    the closed-form start, one joint call of training.train."""
    p = template.get_params(deep=False)
    opts = {k: p[k] for k in ("loss", "epochs", "batch_size", "lr", "weight_decay", "patience",
                              "temperature", "seed", "device", "progress")}
    fwd, bwd = make_translator(template), make_translator(template)
    fwd.in_dim_, fwd.out_dim_ = X.shape[1], Y.shape[1]
    bwd.in_dim_, bwd.out_dim_ = Y.shape[1], X.shape[1]
    fwd.net_, bwd.net_ = fwd.init_network(X, Y), bwd.init_network(Y, X)
    r1, r2 = train(fwd.net_, X, Y, Xv, Yv, labels=labels, labels_val=labels_val,
                   reverse=bwd.net_, cycle_weight=cycle_weight, **opts)
    for T, r in ((fwd, r1), (bwd, r2)):
        T.net_.cpu().eval()
        T.fit_report_ = {**r.to_dict(), "cycle_weight": cycle_weight, "n_train": int(X.shape[0])}
    return fwd, bwd


def _same_fit(T, R):
    assert (T.in_dim_, T.out_dim_) == (R.in_dim_, R.out_dim_)
    w, wr = T.net_.state_dict(), R.net_.state_dict()
    assert list(w) == list(wr)
    for k in w:
        assert torch.equal(w[k], wr[k]), k
    drop = lambda rep: {k: v for k, v in rep.items() if k != "seconds"}  # noqa: E731
    assert drop(T.fit_report_) == drop(R.fit_report_)


@pytest.mark.parametrize("init,loss,grouped", [("lstsq", "infonce+mse", True),
                                               (None, "infonce", False)])
def test_fit_pair_equals_the_joint_training_it_replaces(init, loss, grouped):
    A, B = _data()
    labels = np.arange(A.shape[0]) // 3 if grouped else None  # rows sharing a target
    tr, va = slice(0, 90), slice(90, None)
    template = MLPTranslator(init=init, loss=loss, **TINY)
    lab = (None, None) if labels is None else (labels[tr], labels[va])
    fwd, bwd = template.fit_pair(A[tr], B[tr], A[va], B[va], labels=lab[0], labels_val=lab[1],
                                 cycle_weight=0.7)
    rf, rb = _joint_reference(template, A[tr], B[tr], A[va], B[va], *lab, 0.7)
    _same_fit(fwd, rf)
    _same_fit(bwd, rb)
    assert not template.is_fitted  # the template only carries hyper-parameters
    assert fwd.fit_report_["cycle_weight"] == 0.7 and fwd.fit_report_["n_train"] == 90
    assert fwd.transform(A[:3]).shape == (3, B.shape[1])
    assert bwd.transform(B[:3]).shape == (3, A.shape[1])


def test_connect_with_a_cycle_term_trains_through_fit_pair():
    A, B = _data(n=150, seed=1)
    ids = [f"i{k}" for k in range(A.shape[0])]
    g = ModalityGraph(seed=2, warn_val=0)
    g.add_node("x@a", Cache(ids=ids, emb=A))
    g.add_node("y@b", Cache(ids=ids, emb=B))
    g.connect("x@a", "y@b", translator="mlp", loss="infonce+mse", cycle_weight=0.5, **TINY)
    P = g.pairs("x@a", "y@b")
    idx = g.split(P)
    labels = pair_components(P)
    tr, va = idx["train"], idx["val"]
    fwd, bwd = MLPTranslator(loss="infonce+mse", **TINY).fit_pair(
        A[P.a_rows[tr]], B[P.b_rows[tr]], A[P.a_rows[va]], B[P.b_rows[va]],
        labels=labels[tr], labels_val=labels[va], cycle_weight=0.5)
    _same_fit(g.translator("x@a", "y@b"), fwd)
    _same_fit(g.translator("y@b", "x@a"), bwd)


def test_fit_pair_refuses_bad_input_naming_it():
    A, B = _data(n=40)
    T = MLPTranslator(**TINY)
    with pytest.raises(DimensionMismatch, match="X has 40 rows but Y has 39"):
        T.fit_pair(A, B[:39])
    with pytest.raises(InvalidParameter, match="cycle_weight must be a finite number >= 0, got -1"):
        T.fit_pair(A, B, cycle_weight=-1)
    with pytest.raises(InvalidParameter, match="cycle_weight .* got nan"):
        T.fit_pair(A, B, cycle_weight=float("nan"))
    with pytest.raises(InvalidParameter, match="X_val and Y_val"):
        T.fit_pair(A, B, A[:5])
    with pytest.raises(DimensionMismatch, match="labels has 3 entries; expected one per row of X"):
        T.fit_pair(A, B, labels=[0, 1, 2])
    with pytest.raises(DimensionMismatch, match="validation dims"):
        T.fit_pair(A, B, A[:5, :3], B[:5])
    with pytest.raises(InvalidParameter, match="epochs"):
        MLPTranslator(epochs=-1).fit_pair(A, B)
    assert not T.is_fitted


# -- private names stay in their module ------------------------------------------------

#: (module path, name) pairs allowed to cross a module boundary; empty on purpose
ALLOWED: set = set()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined(tree) -> set:
    """Private names a module defines: functions, classes, assigned names and attributes
    it assigns on ``self``/``cls``."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        targets = (n.targets if isinstance(n, ast.Assign)
                   else [n.target] if isinstance(n, (ast.AnnAssign, ast.AugAssign)) else [])
        for t in targets:
            for e in ast.walk(t):
                if isinstance(e, ast.Name):
                    out.add(e.id)
                elif (isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name)
                      and e.value.id in ("self", "cls")):
                    out.add(e.attr)
    return {x for x in out if _private(x)}


def _crossings(tree, own: set, elsewhere: set, internal_import) -> list[tuple[int, str]]:
    """``(line, what)`` for every private name of another module this module uses:
    imported from a package module, or read as an attribute that some other module
    defines and this one does not (``graph._as_route``, ``T._check_fitted()``)."""
    bad = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and internal_import(n):
            bad += [(n.lineno, f"from {'.' * n.level}{n.module or ''} import {a.name}")
                    for a in n.names if _private(a.name)]
        elif isinstance(n, ast.Attribute) and _private(n.attr):
            v = n.value
            if isinstance(v, ast.Name) and v.id in ("self", "cls"):
                continue
            if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super":
                continue
            if n.attr in elsewhere and n.attr not in own:
                bad.append((n.lineno, ast.unparse(n)))
    return bad


def _scan(files: dict[str, str]) -> list[str]:
    """Crossings in ``{path: source}``; names count as bridge's when a ``bridge/`` file
    defines them."""
    trees = {p: ast.parse(src) for p, src in files.items()}
    defs = {p: _defined(t) for p, t in trees.items()}
    out = []
    for p, t in trees.items():
        others = set().union(*(d for q, d in defs.items() if q != p and q.startswith("bridge/")))

        def internal(node):
            return node.level > 0 or (node.module or "").split(".")[0] == "bridge"

        out += [f"{p}:{line}: {what}" for line, what in _crossings(t, defs[p], others, internal)
                if (p, what) not in ALLOWED]
    return out


def _sources():
    files = sorted(ROOT.glob("bridge/**/*.py")) + sorted(ROOT.glob("benchmarks/**/*.py"))
    return {f.relative_to(ROOT).as_posix(): f.read_text(encoding="utf-8") for f in files}


def test_no_module_uses_another_modules_private_names():
    bad = _scan(_sources())
    assert not bad, ("private names used across modules (make the name public in its module, "
                     "documented, or keep its use inside that module):\n" + "\n".join(bad))


def test_the_private_name_scan_finds_what_it_looks_for():
    files = {
        "bridge/graph.py": "class G:\n    def _as_route(self, r):\n        return r\n",
        "bridge/retrieval.py": "def _source(x):\n    return x\n",
        "bridge/evaluate.py": ("from .retrieval import _source\n"
                               "def f(graph):\n    return graph._as_route(1)\n"),
        "benchmarks/b.py": "from bridge.retrieval import _source\nimport os\nos._exit\n",
        "bridge/ok.py": ("class T:\n    def _hook(self):\n        return self._x\n"
                         "    def g(self, other):\n        return other._hook(), super()._hook()\n"),
    }
    assert sorted(_scan(files)) == [
        "benchmarks/b.py:1: from bridge.retrieval import _source",
        "bridge/evaluate.py:1: from .retrieval import _source",
        "bridge/evaluate.py:3: graph._as_route",
    ]


# -- the package's names ------------------------------------------------------------------

def test_every_lazy_name_of_the_package_exists():
    import importlib

    for name, module in bridge._LAZY.items():
        mod = importlib.import_module(f"bridge.{module}")
        assert hasattr(mod, name), f"bridge._LAZY names {name!r} in bridge.{module}, which lacks it"
        assert getattr(bridge, name) is getattr(mod, name)
    for name in bridge.__all__:
        assert getattr(bridge, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bridge.nope  # noqa: B018


# -- pyproject ------------------------------------------------------------------------------

#: import name -> distribution name, where they differ
DIST = {"sklearn": "scikit-learn", "faiss": "faiss-cpu", "PIL": "pillow", "umap": "umap-learn",
        "yaml": "pyyaml"}
#: imported but installed another way (each says how)
INSTALLED_OTHERWISE = {
    "PIL": "pillow is a dependency of matplotlib",
    "aisfx": "installed with pip --no-deps (see the README's set-up)",
    "resemblyzer": "installed with pip --no-deps (see the README's set-up)",
}


def _requirements():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for rs in project.get("optional-dependencies", {}).values() for r in rs]
    return project["dependencies"], extras


def _dist(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_pyproject_declares_every_import_with_a_lower_bound_only():
    deps, extras = _requirements()
    declared = {_dist(r) for r in deps + extras}
    imported = set()
    for path in sorted(ROOT.glob("bridge/**/*.py")):
        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(n, ast.Import):
                imported |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                imported.add(n.module.split(".")[0])
    third = sorted(m for m in imported
                   if m not in sys.stdlib_module_names and m != "bridge")
    missing = [m for m in third if DIST.get(m, m).lower().replace("_", "-") not in declared
               and m not in INSTALLED_OTHERWISE]
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert "scipy" in {_dist(r) for r in deps}  # graph.py imports it outside any extra
    for r in deps:
        spec = r.split(";")[0]
        assert ">=" in spec and not re.search(r"<|==|~=", spec), (
            f"dependency {r!r}: expected a lower bound only (>=), no upper bound or pin")
