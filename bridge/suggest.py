"""Where to add paired data: candidate edges ranked by the gain the planner predicts.

:func:`suggest` (also :meth:`bridge.ModalityGraph.suggest`) scores two kinds of candidate
for the routes a user cares about (``routes``: ordered node pairs, default every one):

- ``"edge"``: a direct edge between two nodes that have paired rows and no edge yet. A
  probe edge (``translator``, default ridge with its penalty picked on val: a few seconds)
  is fitted in a copy of the graph on the pairs there are, both directions, and measured on
  its own val pairs like any edge;
- ``"more"``: more pairs on an existing edge. The edge is refitted in a copy (probe kind)
  on half of its training pairs and on all of them; its val R@1 at ``more`` times the
  pairs is **extrapolated** in the logarithm of the pair count,
  ``r(more n) = r(n) + log2(more) (r(n) - r(n / 2))``, clipped to ``[r(n), 1]``, and put on
  the copy's edge (both directions).

Each target's R@1 is then predicted again in the copy. The prediction is the planner's
for the route it would pick: ``Route.predicted_r1`` when the graph is calibrated
(:meth:`~bridge.ModalityGraph.calibrate`; a probe edge is one the calibration did not
measure, so its own val metrics stand in), else ``exp(-cost)`` of the edge-cost planner; a
pair with no route counts 0. A candidate's ``gain`` is the mean over the targets of
predicted R@1 after less before; candidates are ranked by it (ties: fewer pairs, then
names). The graph passed in is not changed.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import InvalidParameter, NoPairs, NoRoute
from .store import Pairs

__all__ = ["Suggestion", "suggest", "predicted_r1", "extrapolate_r1"]


@dataclass
class Suggestion:
    """One ranked candidate (see the module doc). ``pair`` ``(a, b)``; ``kind`` ``"edge"``
    or ``"more"``; ``gain`` the mean predicted R@1 gain over the targets; ``gains``,
    ``before``, ``after`` per target (``"src -> dst"``); ``edge_r1`` the probe's val R@1 per
    direction (for ``"more"``: the extrapolated one); ``n_pairs`` the pairs the probe was
    fitted on; ``calibrated`` whether the predictions came from a calibration."""

    pair: tuple
    kind: str
    gain: float
    gains: dict = field(default_factory=dict)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    edge_r1: dict = field(default_factory=dict)
    n_pairs: int = 0
    calibrated: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pair"] = list(self.pair)
        return d


def predicted_r1(graph, src: str, dst: str, gallery: int | None = None) -> float:
    """The planner's predicted R@1 of its route ``src -> dst`` (0 with no route), for
    ``gallery`` rows on a calibrated graph (default: the pair's test gallery)."""
    try:
        r = graph.route(src, dst, gallery=gallery)
    except NoRoute:
        return 0.0
    if r.predicted_r1 is not None:
        return float(r.predicted_r1)
    return float(math.exp(-r.cost))


def extrapolate_r1(r_half: float, r_full: float, more: float) -> float:
    """Val R@1 at ``more`` times the pairs from R@1 at half and all of them (log-linear in
    the pair count, clipped to ``[r_full, 1]``)."""
    return float(min(1.0, max(r_full, r_full + math.log2(more) * (r_full - r_half))))


def _key(s: str, d: str) -> str:
    return f"{s} -> {d}"


def _check_routes(graph, routes) -> list[tuple[str, str]]:
    if routes is None:
        return [(s, d) for s in graph.nodes for d in graph.nodes if s != d]
    if isinstance(routes, (str, bytes)) or not hasattr(routes, "__iter__"):
        raise InvalidParameter(f"routes must be a list of (src, dst) node pairs, got {routes!r}")
    out = []
    for r in routes:
        if isinstance(r, (str, bytes)) or not hasattr(r, "__len__") or len(r) != 2:
            raise InvalidParameter(f"routes must be a list of (src, dst) node pairs; bad "
                                   f"entry {r!r}")
        s, d = r
        graph.node(s), graph.node(d)  # UnknownNode names the valid nodes
        if s == d:
            raise InvalidParameter(f"a route needs two different nodes, got {r!r}")
        out.append((s, d))
    if not out:
        raise InvalidParameter("routes is empty; give at least one (src, dst) pair")
    return out


def _candidates(graph, candidates):
    if candidates is None:
        nodes = graph.nodes
        pairs = [(a, b) for i, a in enumerate(nodes) for b in nodes[i + 1:]]
    else:
        if isinstance(candidates, (str, bytes)) or not hasattr(candidates, "__iter__"):
            raise InvalidParameter(f"candidates must be a list of (a, b) node pairs, got "
                                   f"{candidates!r}")
        pairs = []
        for c in candidates:
            if isinstance(c, (str, bytes)) or not hasattr(c, "__len__") or len(c) != 2 \
                    or c[0] == c[1]:
                raise InvalidParameter(f"candidates must be pairs of two different nodes; "
                                       f"bad entry {c!r}")
            graph.node(c[0]), graph.node(c[1])
            pairs.append((c[0], c[1]))
    return pairs


def _predict_all(graph, targets, gallery) -> dict:
    return {_key(s, d): predicted_r1(graph, s, d, gallery) for s, d in targets}


def _train_subset(P: Pairs, idx: dict, size: int, seed: int) -> Pairs:
    """``P`` with ``size`` of its training pairs (drawn with ``seed``) and every val and
    test pair."""
    tr = np.random.default_rng(seed).choice(idx["train"], size, replace=False)
    keep = np.sort(np.concatenate([tr, idx["val"], idx["test"]]))
    return Pairs(P.a_rows[keep], P.b_rows[keep], P.groups[keep])


def _probe_edge(graph, a, b, translator, probe_rows, seed, fit_options):
    h = graph.copy()
    pairs = None
    if probe_rows is not None:
        P = graph.pairs(a, b)
        idx = graph.split(P)
        if idx["train"].size > probe_rows:
            pairs = _train_subset(P, idx, probe_rows, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reports = h.connect(a, b, translator=translator, directions="both", pairs=pairs,
                            **fit_options)
    n = int(h.edge(a, b)["split"].get("n_train", 0))
    return h, {_key(*k): float(m.get("val_R@1", 0.0)) for k, m in reports.items()}, n


def _probe_more(graph, a, b, translator, more, seed, fit_options):
    P, rule = graph.edge_pairs(a, b)
    idx = graph.split(P, rule)
    tr = idx["train"]
    if tr.size < 4:
        raise NoPairs(f"edge {a!r} -> {b!r} has {tr.size} training pairs; extrapolating "
                      "needs at least 4")
    sub = _train_subset(P, idx, tr.size // 2, seed)
    fits = {}
    for name, pairs in (("half", sub), ("full", P)):
        h = graph.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits[name] = h.connect(a, b, translator=translator, directions="both",
                                   pairs=pairs, splits=rule, **fit_options)
    out = graph.copy()
    r1 = {}
    for (s, d), m_full in fits["full"].items():
        if not graph.G.has_edge(s, d):
            continue
        r = extrapolate_r1(float(fits["half"][(s, d)].get("val_R@1", 0.0)),
                           float(m_full.get("val_R@1", 0.0)), more)
        metrics = dict(graph.edge(s, d)["metrics"])
        metrics["val_R@1"] = r
        out.add_edge(s, d, graph.translator(s, d), metrics)
        r1[_key(s, d)] = r
    return out, r1, int(tr.size)


def suggest(graph, routes=None, candidates=None, translator="linear", more: float = 2.0,
            top: int | None = None, gallery: int | None = None, probe_rows: int | None = None,
            seed: int = 0, **fit_options) -> list[Suggestion]:
    """Candidates for new paired data, best first (see the module doc).

    ``routes``: the ``(src, dst)`` pairs to improve (default every ordered pair);
    ``candidates``: ``(a, b)`` node pairs to consider (default every pair of nodes: a new
    edge where there is none, more pairs where there is one); ``translator`` and
    ``fit_options``: the probe edge (default ridge, ``alpha="auto"``); ``more``: the
    factor of extra pairs a ``"more"`` candidate gets (> 1); ``top``: keep the first
    ``top``; ``gallery``: the gallery size the calibrated predictions are for (default:
    each pair's test gallery); ``probe_rows``: fit each ``"edge"`` probe on at most that
    many training pairs (>= 2; drawn with ``seed``; val pairs all kept), for speed on big
    pair sets; ``seed``: those rows, and the half of the training pairs a ``"more"`` probe
    refits on.
    Candidates whose nodes have too few pairs to train an edge are left out.
    """
    targets = _check_routes(graph, routes)
    pairs = _candidates(graph, candidates)
    if isinstance(more, bool) or not isinstance(more, numbers.Real) or not math.isfinite(more) \
            or more <= 1:
        raise InvalidParameter(f"more must be a finite number > 1 (the factor of extra pairs), "
                               f"got {more!r}")
    if top is not None and (isinstance(top, bool) or not isinstance(top, numbers.Integral)
                            or top < 1):
        raise InvalidParameter(f"top must be an integer >= 1 or None, got {top!r}")
    if probe_rows is not None and (isinstance(probe_rows, bool) or
                                   not isinstance(probe_rows, numbers.Integral)
                                   or probe_rows < 2):
        raise InvalidParameter(f"probe_rows must be an integer >= 2 or None (training pairs "
                               f"per probe edge), got {probe_rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InvalidParameter(f"seed must be an integer >= 0, got {seed!r}")
    if gallery is not None:
        from .calibration import check_gallery

        gallery = check_gallery(gallery)
    if translator == "linear" and not fit_options:
        fit_options = {"alpha": "auto"}
    calibrated = graph.calibration is not None
    before = _predict_all(graph, targets, gallery)
    out = []
    for a, b in pairs:
        linked = graph.G.has_edge(a, b) or graph.G.has_edge(b, a)
        try:
            if linked:
                if not graph.G.has_edge(a, b):
                    a, b = b, a
                h, r1, n = _probe_more(graph, a, b, translator, more, seed, fit_options)
                kind = "more"
            else:
                h, r1, n = _probe_edge(graph, a, b, translator, probe_rows, seed,
                                       fit_options)
                kind = "edge"
        except NoPairs:
            continue
        after = _predict_all(h, targets, gallery)
        gains = {k: after[k] - before[k] for k in before}
        out.append(Suggestion((a, b), kind, float(np.mean(list(gains.values()))), gains,
                              dict(before), after, r1, n, calibrated))
    out.sort(key=lambda s: (-s.gain, s.n_pairs, s.pair))
    return out if top is None else out[:top]
