"""Weak edges that borrow from the graph.

An edge trained on few pairs can lean on what the graph already knows: the route between
its two nodes through other edges (Czech e5 -> English e5 -> English MiniLM, when a new
Czech -> MiniLM edge has only a hundred captions). :meth:`bridge.ModalityGraph.connect`
with ``prior="route"`` fits the edge with the route's help, in one of two ways that both
use the source node's own **training** rows (unpaired ones included, by the graph's split
rule; none of the edge's validation or test rows) translated along the route as extra,
"pseudo" pairs:

- **regularised** (ridge and Procrustes): the edge is the weighted least-squares (or
  weighted Procrustes) fit of the real pairs plus the pseudo pairs, whose total weight is
  ``weight`` times that of the real pairs. ``weight = 0`` is the edge alone; a large
  weight is the route's own map distilled into one linear edge. In between, the real
  pairs correct the route where it is wrong and the route fills in where the few pairs
  leave the map undetermined. The pseudo pairs' moments are accumulated once, so every
  weight of the grid costs one linear solve (plus, with ``alpha="auto"``, the ridge
  penalty search).
- **initialised** (MLP, ``prior_mode="start"``): the network's linear path starts from the
  regularised ridge (penalty picked on validation; or Procrustes, with
  ``init="procrustes"``) map above and is then
  trained on the real pairs with early stopping on validation R@1, so it ends no worse on
  validation than where it started; ``prior_mode="mix"`` also trains on ``weight`` x
  ``n`` of the pseudo pairs alongside the real ones.

``prior_weight="auto"`` picks the weight from :data:`PRIOR_WEIGHTS` (0 included: the lone
edge is always a candidate) by validation R@1 of the edge's own validation pairs (ties:
higher cosine, then the smaller weight). The choice and the validation curve are kept in
the edge's fit report (``fit_report["prior"]``), saved with the graph.
"""

from __future__ import annotations

import math
import numbers

import networkx as nx
import numpy as np

from .errors import InvalidParameter, NoPairs, NoRoute
from .planner import Route, k_best_routes, route_cost

__all__ = ["PRIOR_WEIGHTS", "PRIOR_ROWS", "PRIOR_MODES", "prior_route", "prior_rows",
           "fit_with_prior", "check_prior"]

#: pseudo-pair weights (relative to the real pairs) that ``prior_weight="auto"`` tries
PRIOR_WEIGHTS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
#: source rows translated along the route, at most (a seeded draw of the training rows)
PRIOR_ROWS = 20000
PRIOR_MODES = ("start", "mix")
#: translator kinds that can borrow (closed forms by weighted moments, MLP by its start)
BORROWING_KINDS = ("linear", "procrustes", "mlp")


def check_prior(prior, weight, rows, mode, kind) -> None:
    """Refuse bad ``prior`` options before anything is trained."""
    if not isinstance(prior, (str, Route, list, tuple)):
        raise InvalidParameter(f"prior must be 'route', a Route or a list of nodes, got "
                               f"{type(prior).__name__}")
    if isinstance(prior, str) and prior != "route":
        raise InvalidParameter(f"prior must be 'route', a Route or a list of nodes, got {prior!r}")
    if not (weight == "auto" or (isinstance(weight, numbers.Real) and not isinstance(weight, bool)
                                 and math.isfinite(weight) and weight >= 0)):
        raise InvalidParameter(f"prior_weight must be 'auto' or a finite number >= 0, got "
                               f"{weight!r}")
    if isinstance(rows, bool) or not isinstance(rows, numbers.Integral) or rows < 2:
        raise InvalidParameter(f"prior_rows must be an integer >= 2, got {rows!r}")
    if mode not in PRIOR_MODES:
        raise InvalidParameter(f"prior_mode must be one of {list(PRIOR_MODES)}, got {mode!r}")
    if kind not in BORROWING_KINDS:
        raise InvalidParameter(f"prior= needs translator 'linear', 'procrustes' or 'mlp', got "
                               f"{kind!r}")


def prior_route(graph, src: str, dst: str, prior) -> Route:
    """The route ``src -> dst`` the edge borrows from: with ``prior="route"`` the cheapest
    one that does not use the edge ``src -> dst`` itself, else the given route (a
    :class:`Route` or list of nodes), checked to join ``src`` to ``dst`` without that edge."""
    G = graph.G
    if isinstance(prior, str):
        view = nx.restricted_view(G, [], [(src, dst)])
        try:
            return k_best_routes(view, src, dst)[0]
        except NoRoute as e:
            raise NoRoute(f"prior='route' for edge {src!r} -> {dst!r}: the graph has no other "
                          f"route between them ({e}); add edges first, or train the edge alone "
                          "(prior=None)") from None
    nodes = tuple(prior.nodes if isinstance(prior, Route) else prior)
    for n in nodes:
        graph.node(n)
    if len(nodes) < 2 or nodes[0] != src or nodes[-1] != dst:
        raise InvalidParameter(f"prior route {list(nodes)} must start at {src!r} and end at "
                               f"{dst!r}")
    hops = list(zip(nodes[:-1], nodes[1:]))
    if (src, dst) in hops:
        raise InvalidParameter(f"prior route {list(nodes)} uses the edge {src!r} -> {dst!r} "
                               "it is meant to help train")
    for u, v in hops:
        if not G.has_edge(u, v):
            raise NoRoute(f"prior route {list(nodes)}: no edge {u!r} -> {v!r} in the graph")
    cost, costs = route_cost(G, nodes)
    return Route(nodes, cost, costs)


def prior_rows(graph, src: str, held: np.ndarray, rows: int = PRIOR_ROWS,
               seed: int = 0) -> np.ndarray:
    """Rows of node ``src`` to translate along the route: its training rows by the graph's
    split rule, less ``held`` (rows of the edge's validation and test pairs), at most
    ``rows`` of them drawn with ``seed`` (sorted)."""
    train = graph.split_rows(src)["train"]
    train = np.setdiff1d(train, np.asarray(held, dtype=np.int64))
    if train.size < 2:
        raise NoPairs(f"prior='route' for an edge from {src!r}: the node has {train.size} "
                      "training rows (by the graph's split rule) outside the edge's "
                      "validation and test pairs; the route needs at least 2 to borrow from")
    if train.size > rows:
        train = np.sort(np.random.default_rng(seed).choice(train, rows, replace=False))
    return train


def _closed_kind(T):
    """The closed-form translator whose fit the edge borrows through: ``T`` itself for
    ridge and Procrustes; for an MLP, the ridge (``init="lstsq"``, its ``alpha``) or
    Procrustes (``init="procrustes"``) start of its linear path (the ridge penalty picked
    on validation, as the weight is)."""
    from .translators import make_translator

    if T.kind in ("linear", "procrustes"):
        return T
    if T.init is None:
        raise InvalidParameter("prior= with an MLP needs a linear path to start from: "
                               "init='lstsq' or 'procrustes', got init=None")
    return make_translator("linear", alpha="auto") if T.init == "lstsq" \
        else make_translator("procrustes")


def fit_with_prior(T, X, Y, X_val, Y_val, labels, labels_val, Xu, Ru, weight="auto",
                   weights=PRIOR_WEIGHTS, mode: str = "start", seed: int = 0):
    """Fit translator ``T`` (unfitted; it is cloned) on pairs ``X -> Y`` helped by pseudo
    pairs ``Xu -> Ru`` (source rows and their translations along the route); see the
    module doc. Returns ``(fitted translator, report)``: ``report`` holds the weight kept,
    the grid and its validation R@1 and cosine."""
    from .translators import make_translator
    from .translators.functional import pair_moments

    grid = [float(w) for w in (weights if weight == "auto" else (weight,))]
    if weight == "auto" and X_val is None:
        raise InvalidParameter("prior_weight='auto' picks the weight on validation pairs; "
                               "none were given (pass a fixed prior_weight)")
    base = _closed_kind(T)
    X64 = np.asarray(X, dtype=np.float64)
    Y64 = np.asarray(Y, dtype=np.float64)
    shift = (X64.mean(0), Y64.mean(0))
    real = pair_moments(X64, Y64, shift=shift)
    pseudo = pair_moments(Xu, Ru, shift=shift)
    fits, r1s, coss = [], [], []
    for w in grid:
        S = make_translator(base).fit_moments(real.plus(pseudo, w * real.n / pseudo.n),
                                              X_val, Y_val, labels_val)
        fits.append(S)
        r1s.append(float(S.fit_report_.get("val_R@1", float("nan"))))
        coss.append(float(S.fit_report_.get("val_cos", float("nan"))))
    if len(grid) == 1:
        i = 0
    else:  # best val R@1, then cosine, then the smaller weight
        i = max(range(len(grid)), key=lambda j: (r1s[j], coss[j], -grid[j]))
    report = {"weight": grid[i], "weights": grid, "val_R@1": r1s, "val_cos": coss,
              "rows": int(Xu.shape[0]), "mode": mode if T.kind == "mlp" else "regularised"}
    if T.kind != "mlp":
        out = fits[i]
        out.fit_report_["prior"] = report
        return out, report
    M = make_translator(T)
    if mode == "mix" and grid[i] > 0:
        k = int(min(Xu.shape[0], round(grid[i] * X.shape[0])))
        pick = np.sort(np.random.default_rng(seed).choice(Xu.shape[0], k, replace=False))
        labels = np.arange(X.shape[0]) if labels is None else np.asarray(labels)
        top = int(labels.max()) + 1 if labels.size else 0
        X = np.concatenate([np.asarray(X, np.float32), np.asarray(Xu[pick], np.float32)])
        Y = np.concatenate([np.asarray(Y, np.float32), np.asarray(Ru[pick], np.float32)])
        labels = np.concatenate([labels, top + np.arange(k)])
        report["mixed_rows"] = k
    M.fit_from(fits[i], X, Y, X_val, Y_val, labels=labels, labels_val=labels_val)
    report["start_val_R@1"] = r1s[i]
    M.fit_report_["prior"] = report
    return M, report
