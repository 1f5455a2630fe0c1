"""Route planning over the modality graph, in the style of networkx's weighted paths.

``weight`` is an edge attribute name or a function ``f(u, v, data) -> float``. The
default attribute ``"cost"`` is set by :class:`~bridge.graph.ModalityGraph` from each
edge's held-out quality (see :func:`edge_cost`), so the cost of a path is the sum of the
costs of its edges and the cheapest path is the one expected to lose least.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

import networkx as nx

from .errors import InvalidParameter, NoRoute, UnknownNode

__all__ = ["Route", "edge_cost", "wilson_lower_bound", "shortest_route", "k_best_routes", "route_cost",
           "all_best_routes"]

R1_FLOOR = 1e-3
HOP_COST = 0.05
#: one-sided 95% normal quantile of the lower confidence bound of an edge's R@1
Z_LCB = 1.64


def wilson_lower_bound(p: float, n: int, z: float = Z_LCB) -> float:
    """Wilson score lower confidence bound of a proportion ``p`` measured on ``n`` trials.

    With the default ``z = 1.64`` it is a one-sided 95% bound: the true rate is above it
    with 95% confidence. It is 0 at ``p = 0`` and below 1 at ``p = 1`` for every finite
    ``n`` (``n / (n + z**2)``: 0.27 for one trial, 0.92 for 30, 0.997 for 1000), so a
    perfect score on a handful of rows is not taken for a perfect edge.
    """
    p, n, z = float(p), int(n), float(z)
    if not 0.0 <= p <= 1.0:
        raise InvalidParameter(f"p must be a proportion in [0, 1], got {p!r}")
    if n < 1:
        raise InvalidParameter(f"n must be at least 1 to bound a proportion, got {n!r}")
    if not (math.isfinite(z) and z >= 0):
        raise InvalidParameter(f"z must be a finite number >= 0, got {z!r}")
    z2 = z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z2 / n))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def edge_cost(metrics: dict, key: str = "val_R@1", hop_cost: float = HOP_COST,
              z: float = Z_LCB) -> float:
    """Planner cost of an edge from its held-out metrics: ``-ln(max(lcb, 0.001)) + hop_cost``.

    ``lcb`` is the Wilson lower confidence bound (:func:`wilson_lower_bound`, one-sided
    95% with ``z = 1.64``) of the held-out R@1 ``metrics[key]`` at its sample size
    ``metrics["n_val"]`` (``n_<split>`` for ``key = "<split>_R@1"``): the R@1 the edge is
    likely to reach at least. An edge scored on few rows thus costs more than one with
    the same R@1 on many, and edges measured on different numbers of rows are compared
    on what their measurements support (1/1 correct is a bound of 0.27, 30/30 of 0.92).
    Metrics without a sample size (given by hand to
    :meth:`~bridge.graph.ModalityGraph.add_edge`) are taken at their word: ``lcb = R@1``.

    R@1 is the probability that a translated row is still closest to its own target; the
    sum of ``-ln`` over a path is ``-ln`` of the product, the chance that every hop keeps
    the item identifiable if hops were independent. They are not: a second translator
    receives rows that are already off its training distribution, so a composed route
    loses more than the product of its edges' R@1 predicts. ``hop_cost`` charges every
    edge a fixed extra (0.05, about 5% of R@1 per hop) so that, between routes of similar
    held-out quality, the planner prefers fewer hops. The default is the per-hop shortfall
    measured by ``benchmarks/multihop.py`` (composed two-hop routes against direct edges
    on Multi30K). An edge whose bound is 1 costs ``hop_cost``, one whose bound is 0.5
    costs 0.69 + ``hop_cost``. Edges without a held-out R@1 fall back to ``1 - cos`` of
    their held-out pairs, else to 1, plus ``hop_cost``.
    """
    if not (_is_number(hop_cost) and hop_cost >= 0):
        raise InvalidParameter(f"hop_cost must be a finite number >= 0, got {hop_cost!r}")
    r1, cos = metrics.get(key), metrics.get("val_cos")
    n = metrics.get(f"n_{key.split('_', 1)[0]}")
    if _is_number(r1):
        r1 = min(max(float(r1), 0.0), 1.0)
        lcb = wilson_lower_bound(r1, int(n), z) if _is_number(n) and n >= 1 else r1
        loss = -math.log(max(lcb, R1_FLOOR))
    elif _is_number(cos):
        loss = 1.0 - float(cos)
    else:
        loss = 1.0
    return loss + hop_cost


@dataclass(frozen=True)
class Route:
    """A path through the graph: its nodes, and its predicted cost (sum of edge costs).

    On a calibrated graph (:meth:`~bridge.graph.ModalityGraph.calibrate`) a route also
    carries ``predicted_r1``, the R@1 it is predicted to reach among ``gallery`` rows, with
    its standard deviation ``predicted_sd`` (:attr:`interval`: the 95% predictive
    interval), ``calibrated=True`` and ``stale_edges``, the edges on it that the
    calibration did not measure as they are now (their own val metrics stand in). An
    uncalibrated route has ``calibrated=False`` and no prediction.
    """

    nodes: tuple[str, ...]
    cost: float
    edge_costs: tuple[float, ...] = field(default=())
    predicted_r1: float | None = None
    predicted_sd: float | None = None
    gallery: int | None = None
    calibrated: bool = False
    stale_edges: tuple[str, ...] = field(default=())

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95% predictive interval of R@1 (None when uncalibrated)."""
        if self.predicted_r1 is None or self.predicted_sd is None:
            return None
        half = 1.96 * self.predicted_sd
        return (max(0.0, self.predicted_r1 - half), min(1.0, self.predicted_r1 + half))

    @property
    def edges(self) -> list[tuple[str, str]]:
        return list(zip(self.nodes[:-1], self.nodes[1:]))

    @property
    def hops(self) -> int:
        return len(self.nodes) - 1

    @property
    def src(self) -> str:
        return self.nodes[0]

    @property
    def dst(self) -> str:
        return self.nodes[-1]

    def __str__(self) -> str:
        text = " -> ".join(self.nodes) + f"  (cost {self.cost:.4f}"
        if self.predicted_r1 is not None:
            text += (f", predicted R@1 {self.predicted_r1:.3f} ± {self.predicted_sd:.3f}"
                     f" at gallery {self.gallery}")
        return text + ")"

    def to_dict(self) -> dict:
        out = {"nodes": list(self.nodes), "cost": self.cost, "edge_costs": list(self.edge_costs),
               "calibrated": self.calibrated}
        if self.calibrated:
            out.update({"predicted_R@1": self.predicted_r1, "predicted_sd": self.predicted_sd,
                        "interval": None if self.interval is None else list(self.interval),
                        "gallery": self.gallery, "stale_edges": list(self.stale_edges)})
        return out


def _weight_fn(G, weight) -> Callable:
    if callable(weight):
        return weight
    if not isinstance(weight, str):
        raise InvalidParameter(f"weight must be an edge attribute name or a function "
                               f"f(u, v, data) -> float, got {weight!r}")

    def fn(u, v, d):
        if weight not in d:
            raise InvalidParameter(f"weight: edge {u!r} -> {v!r} has no attribute {weight!r}; "
                                   f"attributes: {sorted(k for k in d if not k.startswith('_'))}")
        return d[weight]
    return fn


def route_cost(G: nx.DiGraph, nodes, weight="cost") -> tuple[float, tuple[float, ...]]:
    """Sum of edge weights along ``nodes`` (each edge must exist)."""
    fn = _weight_fn(G, weight)
    costs = []
    for u, v in zip(nodes[:-1], nodes[1:]):
        if not G.has_edge(u, v):
            raise NoRoute(f"no edge {u!r} -> {v!r} in the graph")
        costs.append(float(fn(u, v, G.edges[u, v])))
    return float(sum(costs)), tuple(costs)


def _check_nodes(G, *names):
    for n in names:
        if n not in G:
            raise UnknownNode(n, G.nodes)


def shortest_route(G: nx.DiGraph, src: str, dst: str, weight="cost") -> Route:
    """The cheapest route from ``src`` to ``dst`` (Dijkstra)."""
    return k_best_routes(G, src, dst, k=1, weight=weight)[0]


def k_best_routes(G: nx.DiGraph, src: str, dst: str, k: int = 1, weight="cost") -> list[Route]:
    """The ``k`` cheapest simple routes, cheapest first (bidirectional Dijkstra for
    ``k=1``, Yen's algorithm for more)."""
    _check_nodes(G, src, dst)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise InvalidParameter(f"k must be an integer >= 1, got {k!r}")
    if src == dst:
        return [Route((src,), 0.0, ())]
    fn = _weight_fn(G, weight)
    try:
        if k == 1:  # one Dijkstra; Yen's algorithm only when more routes are asked for
            paths = [nx.bidirectional_dijkstra(G, src, dst, weight=fn)[1]]
        else:
            paths = list(islice(nx.shortest_simple_paths(G, src, dst, weight=fn), k))
    except nx.NetworkXNoPath:
        paths = []
    if not paths:
        reach = sorted(nx.descendants(G, src))
        raise NoRoute(
            f"no route from {src!r} to {dst!r}; nodes reachable from {src!r}: "
            f"{reach if reach else '(none)'}"
        )
    out = []
    for p in paths:
        cost, costs = route_cost(G, p, fn)
        out.append(Route(tuple(p), cost, costs))
    return out


def all_best_routes(G: nx.DiGraph, sources=None, weight="cost") -> dict[tuple[str, str], Route]:
    """The cheapest route of every reachable ordered pair ``(src, dst)``, ``src`` in
    ``sources`` (default: every node): one single-source Dijkstra per source, so planning
    all pairs of a graph costs about as much as networkx's all-pairs Dijkstra. Pairs with
    no route are absent; ``(n, n)`` is not included."""
    srcs = list(G.nodes) if sources is None else list(sources)
    _check_nodes(G, *srcs)
    fn = _weight_fn(G, weight)
    out = {}
    for src in srcs:
        _, paths = nx.single_source_dijkstra(G, src, weight=fn)
        for dst, p in paths.items():
            if dst == src:
                continue
            costs = tuple(float(fn(u, v, G.edges[u, v])) for u, v in zip(p[:-1], p[1:]))
            out[(src, dst)] = Route(tuple(p), float(sum(costs)), costs)
    return out
