"""Route planning over the modality graph, in the style of networkx's weighted paths.

``weight`` is an edge attribute name or a function ``f(u, v, data) -> float``. The
default attribute ``"cost"`` is set by :class:`~bridge.graph.ModalityGraph` from each
edge's held-out quality (see :func:`edge_cost`), so the cost of a path is the sum of the
costs of its edges and the cheapest path is the one expected to lose least.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

import networkx as nx

from .errors import NoRoute, UnknownNode

__all__ = ["Route", "edge_cost", "shortest_route", "k_best_routes", "route_cost"]

R1_FLOOR = 1e-3
HOP_COST = 0.05


def edge_cost(metrics: dict, key: str = "val_R@1", hop_cost: float = HOP_COST) -> float:
    """Planner cost of an edge from its held-out metrics: ``-ln(max(R@1, 0.001)) + hop_cost``.

    R@1 is the probability that a translated row is still closest to its own target; the
    sum of ``-ln`` over a path is ``-ln`` of the product, the chance that every hop keeps
    the item identifiable if hops were independent. They are not: a second translator
    receives rows that are already off its training distribution, so a composed route
    loses more than the product of its edges' R@1 predicts. ``hop_cost`` charges every
    edge a fixed extra (0.05, about 5% of R@1 per hop) so that, between routes of similar
    held-out quality, the planner prefers fewer hops. The default is the per-hop shortfall
    measured by ``benchmarks/multihop.py`` (composed two-hop routes against direct edges
    on Multi30K). A perfect edge costs ``hop_cost``, an edge with R@1 = 0.5 costs
    0.69 + ``hop_cost``. Edges without a held-out R@1 fall back to ``1 - cos`` of their
    held-out pairs, else to 1, plus ``hop_cost``.
    """
    if hop_cost < 0:
        raise ValueError(f"hop_cost must be >= 0, got {hop_cost!r}")
    r1, cos = metrics.get(key), metrics.get("val_cos")
    if r1 is not None and not (isinstance(r1, float) and math.isnan(r1)):
        loss = -math.log(max(float(r1), R1_FLOOR))
    elif cos is not None:
        loss = 1.0 - float(cos)
    else:
        loss = 1.0
    return loss + hop_cost


@dataclass(frozen=True)
class Route:
    """A path through the graph: its nodes, and its predicted cost (sum of edge costs)."""

    nodes: tuple[str, ...]
    cost: float
    edge_costs: tuple[float, ...] = field(default=())

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
        return " -> ".join(self.nodes) + f"  (cost {self.cost:.4f})"

    def to_dict(self) -> dict:
        return {"nodes": list(self.nodes), "cost": self.cost, "edge_costs": list(self.edge_costs)}


def _weight_fn(G, weight) -> Callable:
    if callable(weight):
        return weight
    def fn(u, v, d):
        if weight not in d:
            raise KeyError(f"edge {u!r} -> {v!r} has no attribute {weight!r}; "
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
    """The ``k`` cheapest simple routes, cheapest first (Yen's algorithm)."""
    _check_nodes(G, src, dst)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if src == dst:
        return [Route((src,), 0.0, ())]
    fn = _weight_fn(G, weight)
    try:
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
