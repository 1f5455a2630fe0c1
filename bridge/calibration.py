"""Calibrated route prediction: the R@1 a route will reach, fitted on the graph's own
validation routes.

:func:`calibrate` measures routes of a graph on its **validation** pairs, with the project's
one R@1 (:func:`bridge.evaluate.evaluate_route`, ``split="val"``; ties count against the
query): every edge on its own, and for every ordered node pair with paired validation rows
the ``k`` cheapest routes of the edge-cost planner up to ``max_hops`` hops. It then fits a
small model that predicts a route's R@1 from what is known before the route is run.

The model works in ``-ln R@1`` and has four weights, all non-negative (monotone: more loss
on the way never predicts a better route). For a route of ``h`` edges at gallery size ``N``:

- each edge ``e`` brings ``l_e = -ln r_e * ((N - 1) / (n_e - 1)) ** gamma``: ``r_e`` is its
  val R@1 measured at its val gallery of ``n_e`` items (:func:`gallery_items`; shrunk by
  half a hit, so a perfect score on few rows is not taken for a perfect edge), moved to
  gallery ``N`` by a power law in the gallery size whose exponent ``gamma`` is measured on the edges' own val rankings
  (R@1 of random sub-galleries, from the ranks the full gallery gave);
- ``y = (sum(l ** (1 / kappa))) ** kappa + s * (w_hops * (h - 1)
  + w_cos * sum(1 - cos_e) + w_shift * sum(shift_e))``, the last two sums over the edges
  that hand their output to another edge (all but the last). The composition exponent
  ``kappa`` (weight ``exponent``) spans the ways hops combine: 1 is the old planner's
  product of edge R@1 (hops that fail independently), 0 is "only the weakest edge
  counts" (hops that fail on the same items), above 1 losses compound (translation
  errors that add up until items are lost faster than the product says). ``cos_e`` is
  the edge's val cosine, ``shift_e`` the distance between the centroid of the edge's
  translated source rows and the target node's centroid
  (:meth:`~bridge.graph.ModalityGraph.node_stats`), over the target's mean norm: how far
  off its training distribution the next edge is fed.
  ``s`` (the mean gallery factor of the route's edges) moves these extra losses with the
  gallery as well;
- predicted R@1 = ``exp(-y)``. A one-edge route is predicted by its own val R@1.

The weights are fitted by least squares on R@1 (what the error is judged on; every route
weighs by the precision of its measurement), regularised toward the old planner
(``hops = 0.05``, ``cos = shift = 0``); the exponent (from :data:`EXPONENTS`) and the
regularisation strength are chosen by cross-validation grouped by node pair (every route
of a pair is left out together). The
predictive variance of a route is the binomial noise of R@1 on ``N`` new queries, plus the
noise of its edges' val measurements carried through the product, plus (multi-hop routes)
the model's own spread: the cross-validated residual variance less those two noises.

A :class:`Calibration` is stored with the graph (``calibration.json``, see
:mod:`bridge.graph_io`) and validated field by field when read.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import replace

import numpy as np

from .errors import CorruptFile, InvalidParameter, NoPairs, NoRoute
from .planner import HOP_COST, R1_FLOOR, Route, k_best_routes

__all__ = ["Calibration", "calibrate", "refit", "prediction_check", "FEATURES", "PRIOR",
           "LAMBDAS", "EXPONENTS", "CALIBRATION_FORMAT", "gallery_exponent", "sub_gallery_r1",
           "check_gallery"]

#: the route features beyond the edges' own R@1, in the order of the weights
FEATURES = ("exponent", "hops", "cos", "shift")
#: the weights the fit is regularised toward: the old planner's cost (product of edge R@1
#: and a charge of :data:`bridge.planner.HOP_COST` per extra hop)
PRIOR = {"exponent": 1.0, "hops": HOP_COST, "cos": 0.0, "shift": 0.0}
#: composition exponents the grouped cross-validation chooses from (0: the weakest edge
#: alone, 1: the product of edge R@1, above 1: losses that compound)
EXPONENTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
#: regularisation strengths tried by the grouped cross-validation (per route)
LAMBDAS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: source rows translated per edge to measure its centroid shift
SHIFT_ROWS = 1000
#: sub-gallery fractions whose R@1 fixes the gallery exponent
SUB_GALLERY = (0.25, 0.5, 1.0)
#: the gallery exponent when no edge has an R@1 strictly between these bounds to measure it
#: on: 1, the model where every wrong gallery row outranks the right one independently
GAMMA_DEFAULT = 1.0
GAMMA_RANGE = (0.0, 1.5)
#: the two-sided normal quantile of the 95% predictive interval
Z95 = 1.96
CALIBRATION_FORMAT = "modality-bridge-calibration"
#: routes the calibrated planner re-ranks per query (the cheapest under its additive cost)
CANDIDATES = 8


def _edge_key(u: str, v: str) -> str:
    return f"{u} -> {v}"


def _check_int(name, value, lowest):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lowest:
        raise InvalidParameter(f"{name} must be an integer >= {lowest}, got {value!r}")
    return int(value)


def check_gallery(gallery):
    """``gallery`` as a gallery size (an integer >= 2) or None."""
    if gallery is None:
        return None
    if isinstance(gallery, (bool, np.bool_)) or not isinstance(gallery, (numbers.Integral,)) \
            or gallery < 2:
        raise InvalidParameter(f"gallery must be an integer >= 2 (the number of gallery rows "
                               f"a query is ranked among), got {gallery!r}")
    return int(gallery)


# ---------------------------------------------------------------------------
# gallery size


def sub_gallery_r1(wrong_ahead, fraction: float) -> float:
    """Expected R@1 when each wrong gallery row is kept with probability ``fraction``.

    ``wrong_ahead[i]`` is the number of wrong gallery rows that rank at or above query i's
    first right row (its first rank less one; ties count against the query): the query
    stays a hit when none of them is kept, with probability ``(1 - fraction) ** k``.
    """
    k = np.asarray(wrong_ahead, dtype=np.float64)
    if k.size == 0:
        raise InvalidParameter("wrong_ahead holds no queries")
    f = float(fraction)
    if not 0.0 < f <= 1.0:
        raise InvalidParameter(f"fraction must be in (0, 1], got {fraction!r}")
    if f == 1.0:
        return float(np.mean(k == 0))
    return float(np.mean(np.exp(k * math.log1p(-f))))


def gallery_exponent(wrong_ahead, n_gallery: int, fractions=SUB_GALLERY) -> float | None:
    """Slope of ``ln(-ln R@1)`` against ``ln(gallery - 1)`` over sub-galleries of one
    ranking (:func:`sub_gallery_r1`); None when R@1 is too close to 0 or 1 to tell."""
    xs, ys = [], []
    for f in fractions:
        r = sub_gallery_r1(wrong_ahead, f)
        if not 0.005 < r < 0.995:
            return None
        xs.append(math.log(max(f * (n_gallery - 1), 1e-9)))
        ys.append(math.log(-math.log(r)))
    x, y = np.array(xs), np.array(ys)
    if np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, y, 1)[0])


def gallery_items(held) -> int:
    """Distinct items in a held-out gallery (:class:`~bridge.evaluate.HeldOut`): gallery
    rows that one query counts right together (the images of one digit class, the clips
    of one word) are one item; a row right for no query is an item of its own. It is the
    gallery size that R@1 depends on: with one right row per query it is the row count."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nq, ng = int(len(held.q_rows)), int(len(held.g_rows))
    sizes = [np.asarray(r).size for r in held.relevant]
    if all(n == 1 for n in sizes) and ng == nq:
        cols = np.concatenate([np.asarray(r).reshape(-1) for r in held.relevant])
        if np.unique(cols).size == ng:
            return ng
    rows = np.repeat(np.arange(nq), sizes)
    cols = nq + np.concatenate([np.asarray(r, dtype=np.int64).reshape(-1) for r in held.relevant])
    m = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(nq + ng, nq + ng))
    _, comp = connected_components(m, directed=False)
    return int(np.unique(comp[nq:]).size)


# ---------------------------------------------------------------------------
# the model


def _route_terms(facts: list[dict], gallery: int, gamma: float, hops: int):
    """``(l, phi, s)``: per-edge losses at ``gallery``, the features multiplying the
    linear weights (``hops``, ``cos``, ``shift``) and the mean gallery factor."""
    ells, factors = [], []
    for f in facts:
        n_q = max(int(f["n_queries"]), 1)
        r = (float(f["r1"]) * n_q + 0.5) / (n_q + 1)
        n_g = int(f["n_gallery"])
        factor = ((gallery - 1) / (n_g - 1)) ** gamma if n_g > 1 else 1.0
        ells.append(-math.log(max(r, R1_FLOOR)) * factor)
        factors.append(factor)
    ells = np.array(ells)
    s = float(np.mean(factors))
    inner = facts[:-1]
    phi = np.array([s * (hops - 1), s * sum(1.0 - float(f["cos"]) for f in inner),
                    s * sum(float(f["shift"]) for f in inner)])
    return ells, phi, s


def _edge_noise(facts) -> float:
    """Relative variance of a route's predicted R@1 from the binomial noise of its edges'
    val R@1 (each measured on ``n_queries``): ``sum((1 - r) / (r n))``, as for a product
    of the edges' R@1."""
    out = 0.0
    for f in facts:
        n = max(int(f["n_queries"]), 1)
        r = (float(f["r1"]) * n + 0.5) / (n + 1)
        out += (1 - r) / (r * n)
    return out


def _combine(ells: np.ndarray, kappa: float) -> np.ndarray:
    """The edges' losses combined with composition exponent ``kappa``: ``(sum l ** (1 /
    kappa)) ** kappa``, per edge (the parts sum to the whole): the largest loss for
    ``kappa = 0``, the sum for 1, more than the sum above 1."""
    top = float(ells.max())
    if top <= 0:
        return np.zeros_like(ells)
    if kappa <= 0:
        out = np.zeros_like(ells)
        out[int(np.argmax(ells))] = top
        return out
    q = (ells / top) ** (1.0 / kappa)
    total = top * float(q.sum()) ** kappa
    return total * q / q.sum()


def _base(ells: np.ndarray, kappa: float) -> float:
    return float(_combine(ells, kappa).sum())


def _fit(base: np.ndarray, Phi: np.ndarray, R: np.ndarray, prior: np.ndarray,
         active: np.ndarray, lam: float, weight: np.ndarray | None = None) -> np.ndarray:
    """Weights minimising ``sum(weight * (exp(-(base + Phi w)) - R)^2) / mean(weight)
    + n lam |w - prior|^2`` over the active features, ``w >= 0`` (inactive weights are 0)."""
    from scipy.optimize import least_squares

    w = np.zeros(Phi.shape[1])
    idx = np.flatnonzero(active)
    if idx.size == 0 or base.size == 0:
        w[idx] = prior[idx]
        return w
    A = Phi[:, idx]
    p0 = prior[idx]
    root = math.sqrt(lam * base.size)
    sw = np.ones(base.size) if weight is None else np.sqrt(weight / np.mean(weight))

    def res(x):
        p = np.exp(-(base + A @ x))
        return np.concatenate([sw * (p - R), root * (x - p0)])

    def jac(x):
        p = np.exp(-(base + A @ x))
        return np.vstack([-(sw * p)[:, None] * A, root * np.eye(idx.size)])

    out = least_squares(res, np.maximum(p0, 0.0), jac=jac, bounds=(0.0, np.inf), method="trf")
    w[idx] = out.x
    return w


def _cross_validate(ells, Phi, R, groups, kappas, prior, active, lambdas, weight):
    """Grouped (leave-one-node-pair-out) CV of every composition exponent and
    regularisation strength, judged by the weighted mean squared error:
    ``(best_kappa, best_lam, residuals, grid)``."""
    uniq = sorted(set(groups))
    grid = []
    best = None
    g = np.asarray(groups)
    for kappa in kappas:
        base = np.array([_base(e, kappa) for e in ells])
        for lam in lambdas:
            resid = np.empty(R.size)
            for grp in uniq:
                out = g == grp
                w = _fit(base[~out], Phi[~out], R[~out], prior, active, lam, weight[~out])
                resid[out] = np.exp(-(base[out] + Phi[out] @ w)) - R[out]
            mse = float(np.sum(weight * resid ** 2) / np.sum(weight))
            grid.append({"exponent": float(kappa), "lambda": float(lam),
                         "cv_mae": float(np.mean(np.abs(resid))), "cv_rmse": math.sqrt(
                             float(np.mean(resid ** 2)))})
            if best is None or mse < best[2] - 1e-15:
                best = (kappa, lam, mse, resid)
    return best[0], best[1], best[3], grid


class Calibration:
    """A fitted route-quality model of one graph (see the module doc).

    ``weights`` (:data:`FEATURES` -> weight), ``gamma`` (gallery exponent), ``sd_model``
    (cross-validated residual spread of multi-hop routes, None when it could not be
    cross-validated), ``lam`` (the chosen regularisation), ``edges`` (per edge: val
    ``r1``, ``n_queries``, ``n_gallery``, ``cos``, ``shift`` and the edge's ``val_R@1``
    metric when measured, to tell a retrained edge), ``pairs`` (per node pair: the val and
    test gallery sizes), ``routes`` (the measured validation routes and their
    cross-validated predictions), ``cv`` (the grid and errors) and ``settings``.
    """

    def __init__(self, weights: dict, gamma: float, sd_model, lam, edges: dict, pairs: dict,
                 routes: list, cv: dict, settings: dict):
        self.weights = {f: float(weights.get(f, 0.0)) for f in FEATURES}
        self.gamma = float(gamma)
        self.sd_model = None if sd_model is None else float(sd_model)
        self.lam = None if lam is None else float(lam)
        self.edges = edges
        self.pairs = pairs
        self.routes = routes
        self.cv = cv
        self.settings = settings

    @property
    def w(self) -> np.ndarray:
        return np.array([self.weights[f] for f in FEATURES])

    def __repr__(self) -> str:
        ws = ", ".join(f"{k}={v:.3g}" for k, v in self.weights.items())
        return (f"Calibration({ws}, gamma={self.gamma:.3g}, sd_model={self.sd_model}, "
                f"{len(self.routes)} val routes)")

    # -------------------------------------------------------------- facts
    def edge_facts(self, graph, u: str, v: str) -> tuple[dict, bool]:
        """``(facts, stale)`` of edge ``u -> v``: the calibration's measurement, or (for an
        edge it did not measure, or one retrained since: its ``val_R@1`` differs) the
        edge's own val metrics with no centroid shift, and ``stale=True``."""
        d = graph.G.edges[u, v]
        m = d.get("metrics", {})
        rec = self.edges.get(_edge_key(u, v))
        if rec is not None and rec.get("metric_r1") == m.get("val_R@1"):
            return rec, False
        r1 = m.get("val_R@1")
        if not isinstance(r1, (int, float)) or not math.isfinite(r1):
            r1 = 1.0 - float(m["val_cos"]) if isinstance(m.get("val_cos"), (int, float)) else 0.0
            r1 = min(max(1.0 - r1, 0.0), 1.0)
        n = m.get("n_val") if isinstance(m.get("n_val"), int) else 1
        cos = m.get("val_cos") if isinstance(m.get("val_cos"), (int, float)) else 1.0
        return {"r1": float(r1), "n_queries": int(n), "n_gallery": int(n), "cos": float(cos),
                "shift": 0.0}, True

    def default_gallery(self, src: str, dst: str, graph=None) -> int:
        """The gallery a prediction for ``src -> dst`` is for when none is given: the
        pair's test gallery, else its val gallery, else the largest test (val) gallery
        among measured pairs ending at ``dst``, else the largest val gallery of an edge
        into ``dst`` (measured, else its ``n_test`` or ``n_val`` metric in ``graph``)."""
        rec = self.pairs.get(_edge_key(src, dst))
        if rec is not None:
            n = rec.get("n_test") or rec.get("n_val")
            if n:
                return int(n)
        ends = [r for k, r in self.pairs.items() if k.rsplit(" -> ", 1)[-1] == dst]
        for key in ("n_test", "n_val"):
            sizes = [int(r[key]) for r in ends if r.get(key)]
            if sizes:
                return max(sizes)
        sizes = [int(r["n_gallery"]) for k, r in self.edges.items()
                 if k.rsplit(" -> ", 1)[-1] == dst]
        if not sizes and graph is not None and dst in graph.G:
            for _, _, d in graph.G.in_edges(dst, data=True):
                m = d.get("metrics", {})
                n = m.get("n_test") or m.get("n_val")
                if isinstance(n, int) and n >= 2:
                    sizes.append(n)
        if sizes and max(sizes) >= 2:
            return max(sizes)
        raise InvalidParameter(f"no gallery size known for {dst!r} (the calibration measured "
                               f"no pair ending there); pass gallery= (rows a query is "
                               f"ranked among)")

    # -------------------------------------------------------------- prediction
    def predict(self, graph, nodes, gallery: int | None = None) -> dict:
        """Predicted R@1 of the route ``nodes`` at ``gallery`` rows (default:
        :meth:`default_gallery`): ``r1``, ``sd``, ``interval`` (95%), ``gallery``, ``y``
        (``-ln r1``), ``edge_costs`` (``y`` split over the edges) and ``stale_edges``
        (edges the calibration did not measure as they are now)."""
        nodes = tuple(nodes)
        if len(nodes) < 2:
            raise InvalidParameter(f"a route to predict needs at least two nodes, got {list(nodes)}")
        for u, v in zip(nodes[:-1], nodes[1:]):
            if not graph.G.has_edge(u, v):
                raise NoRoute(f"no edge {u!r} -> {v!r} in the graph")
        gallery = check_gallery(gallery)
        if gallery is None:
            gallery = self.default_gallery(nodes[0], nodes[-1], graph)
        facts, stale = [], []
        for u, v in zip(nodes[:-1], nodes[1:]):
            f, old = self.edge_facts(graph, u, v)
            facts.append(f)
            if old:
                stale.append(_edge_key(u, v))
        h = len(nodes) - 1
        ells, phi, s = _route_terms(facts, gallery, self.gamma, h)
        w = self.w
        parts = _combine(ells, w[0])
        y = float(parts.sum() + phi @ w[1:])
        p = math.exp(-y)
        var = p * (1 - p) / gallery + p * p * _edge_noise(facts)
        if h > 1 and self.sd_model is not None:
            var += self.sd_model ** 2
        sd = math.sqrt(var)
        # y split over the edges: each edge's share of the combined loss, the hop charge
        # on every edge after the first, and the cosine and shift terms on the edges that
        # feed another edge
        costs = []
        for i, f in enumerate(facts):
            c = float(parts[i])
            if i > 0:
                c += s * w[1]
            if i < h - 1:
                c += s * (w[2] * (1.0 - float(f["cos"])) + w[3] * float(f["shift"]))
            costs.append(float(c))
        return {"r1": p, "sd": sd, "interval": (max(0.0, p - Z95 * sd), min(1.0, p + Z95 * sd)),
                "gallery": gallery, "y": y, "edge_costs": tuple(costs), "stale_edges": stale}

    def annotate(self, graph, route: Route, gallery: int | None = None,
                 as_cost: bool = False) -> Route:
        """``route`` carrying its prediction (``as_cost``: its cost becomes ``-ln`` of it)."""
        if route.hops == 0:
            return replace(route, predicted_r1=1.0, predicted_sd=0.0, gallery=gallery,
                           calibrated=True)
        pr = self.predict(graph, route.nodes, gallery)
        extra = {"cost": pr["y"], "edge_costs": pr["edge_costs"]} if as_cost else {}
        return replace(route, predicted_r1=pr["r1"], predicted_sd=pr["sd"],
                       gallery=pr["gallery"], calibrated=True,
                       stale_edges=tuple(pr["stale_edges"]), **extra)

    def edge_weight(self, graph, gallery: int):
        """An additive stand-in for the route model, ``f(u, v, data) -> float``, that
        lists candidate routes for :meth:`plan` (Yen's algorithm needs edge weights)."""
        w = self.w

        def fn(u, v, d):
            f, _ = self.edge_facts(graph, u, v)
            ells, _, s = _route_terms([f], gallery, self.gamma, 1)
            return float(ells[0] + s * (w[1] + w[2] * (1.0 - float(f["cos"]))
                                        + w[3] * float(f["shift"])))
        return fn

    def plan(self, graph, src: str, dst: str, k: int = 1, gallery: int | None = None,
             candidates: int = CANDIDATES) -> list[Route]:
        """The ``k`` routes of highest predicted R@1, best first, among the ``candidates``
        cheapest under :meth:`edge_weight` and the ``candidates`` cheapest under the edge
        cost; each route's cost is ``-ln`` of its predicted R@1."""
        k = _check_int("k", k, 1)
        gallery = check_gallery(gallery)
        if src == dst:
            return [Route((src,), 0.0, (), predicted_r1=1.0, predicted_sd=0.0,
                          calibrated=True)]
        if gallery is None:
            gallery = self.default_gallery(src, dst, graph)
        n = max(k, candidates)
        seen, pool = set(), []
        for weight in (self.edge_weight(graph, gallery), "cost"):
            for r in k_best_routes(graph.G, src, dst, k=n, weight=weight):
                if r.nodes not in seen:
                    seen.add(r.nodes)
                    pool.append(self.annotate(graph, r, gallery, as_cost=True))
        pool.sort(key=lambda r: (r.cost, r.hops, r.nodes))
        return pool[:k]

    # -------------------------------------------------------------- storage
    def to_json(self) -> dict:
        return {"format": CALIBRATION_FORMAT, "weights": dict(self.weights),
                "gamma": self.gamma, "sd_model": self.sd_model, "lambda": self.lam,
                "edges": [{"src": k.split(" -> ", 1)[0], "dst": k.split(" -> ", 1)[1], **v}
                          for k, v in self.edges.items()],
                "pairs": [{"src": k.split(" -> ", 1)[0], "dst": k.split(" -> ", 1)[1], **v}
                          for k, v in self.pairs.items()],
                "routes": self.routes, "cv": self.cv, "settings": self.settings}

    @classmethod
    def from_json(cls, d, where: str = "calibration", nodes=None) -> "Calibration":
        """A calibration from :meth:`to_json`'s form, every field checked:
        :class:`~bridge.errors.CorruptFile` names ``<where>: <field>``."""
        c = _Checker(where)
        c.dict(d, "(top level)")
        if d.get("format") != CALIBRATION_FORMAT:
            c.fail("format", f"{d.get('format')!r}, expected {CALIBRATION_FORMAT!r}")
        known = {"format", "weights", "gamma", "sd_model", "lambda", "edges", "pairs",
                 "routes", "cv", "settings"}
        unknown = sorted(set(d) - known)
        if unknown:
            c.fail(unknown[0], f"unknown field; expected {sorted(known)}")
        ws = c.dict(d.get("weights"), "weights")
        if sorted(ws) != sorted(FEATURES):
            c.fail("weights", f"expected the weights {list(FEATURES)}, got {sorted(ws)}")
        for f in FEATURES:
            c.number(ws[f], f"weights.{f}", low=0.0)
        gamma = c.number(d.get("gamma"), "gamma", low=GAMMA_RANGE[0], high=GAMMA_RANGE[1])
        sd = d.get("sd_model")
        if sd is not None:
            c.number(sd, "sd_model", low=0.0)
        lam = d.get("lambda")
        if lam is not None:
            c.number(lam, "lambda", low=0.0)
        names = None if nodes is None else set(nodes)
        edges = {}
        for i, e in enumerate(c.list(d.get("edges"), "edges")):
            f = f"edges[{i}]"
            key = c.ends(e, f, names)
            c.number(e.get("r1"), f"{f}.r1", low=0.0, high=1.0)
            c.integer(e.get("n_queries"), f"{f}.n_queries", low=1)
            c.integer(e.get("n_gallery"), f"{f}.n_gallery", low=1)
            c.number(e.get("cos"), f"{f}.cos", low=-1.0, high=1.0 + 1e-6)
            c.number(e.get("shift"), f"{f}.shift", low=0.0)
            if e.get("metric_r1") is not None:
                c.number(e["metric_r1"], f"{f}.metric_r1", low=0.0, high=1.0)
            extra = sorted(set(e) - {"src", "dst", "r1", "n_queries", "n_gallery", "cos",
                                     "shift", "metric_r1", "gamma"})
            if extra:
                c.fail(f"{f}.{extra[0]}", "unknown field")
            if e.get("gamma") is not None:
                c.number(e["gamma"], f"{f}.gamma")
            edges[key] = {k: v for k, v in e.items() if k not in ("src", "dst")}
        pairs = {}
        for i, p in enumerate(c.list(d.get("pairs"), "pairs")):
            f = f"pairs[{i}]"
            key = c.ends(p, f, names)
            for k in ("n_val", "n_test"):
                if p.get(k) is not None:
                    c.integer(p[k], f"{f}.{k}", low=1)
            extra = sorted(set(p) - {"src", "dst", "n_val", "n_test"})
            if extra:
                c.fail(f"{f}.{extra[0]}", "unknown field")
            pairs[key] = {k: v for k, v in p.items() if k not in ("src", "dst")}
        routes = c.list(d.get("routes"), "routes")
        for i, r in enumerate(routes):
            f = f"routes[{i}]"
            c.dict(r, f)
            nl = c.list(r.get("nodes"), f"{f}.nodes")
            if len(nl) < 2 or not all(isinstance(n, str) for n in nl):
                c.fail(f"{f}.nodes", f"expected a list of at least two node names, got {nl!r:.60}")
            if names is not None and not set(nl) <= names:
                c.fail(f"{f}.nodes", f"node {sorted(set(nl) - names)[0]!r} is not a node of "
                                     "the graph")
            c.number(r.get("r1"), f"{f}.r1", low=0.0, high=1.0)
            c.integer(r.get("gallery"), f"{f}.gallery", low=1)
            c.integer(r.get("n_queries"), f"{f}.n_queries", low=1)
            for k in ("predicted_cv", "predicted"):
                if r.get(k) is not None:
                    c.number(r[k], f"{f}.{k}", low=0.0, high=1.0)
        cv = c.dict(d.get("cv"), "cv")
        settings = c.dict(d.get("settings"), "settings")
        return cls(ws, gamma, sd, lam, edges, pairs, routes, cv, settings)

    def summary(self) -> dict:
        """The fitted figures (weights, gamma, spreads, counts): JSON-ready."""
        return {"weights": dict(self.weights), "gamma": self.gamma, "sd_model": self.sd_model,
                "lambda": self.lam, "n_routes": len(self.routes),
                "n_multi_hop": sum(1 for r in self.routes if len(r["nodes"]) > 2),
                "cv_mae": self.cv.get("cv_mae"), "cv_rmse": self.cv.get("cv_rmse"),
                "settings": self.settings}


class _Checker:
    def __init__(self, where):
        self.where = where

    def fail(self, field, msg):
        raise CorruptFile(f"{self.where}: {field}: {msg}")

    def dict(self, v, field):
        if not isinstance(v, dict):
            self.fail(field, f"expected an object, got {type(v).__name__}")
        return v

    def list(self, v, field):
        if not isinstance(v, list):
            self.fail(field, f"expected a list, got {type(v).__name__}")
        return v

    def number(self, v, field, low=None, high=None):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail(field, f"expected a finite number, got {v!r:.40}")
        if (low is not None and v < low) or (high is not None and v > high):
            self.fail(field, f"{v!r} is outside [{low}, {high}]")
        return float(v)

    def integer(self, v, field, low=None):
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(field, f"expected an integer, got {v!r:.40}")
        if low is not None and v < low:
            self.fail(field, f"{v!r} is below {low}")
        return v

    def ends(self, e, field, names):
        self.dict(e, field)
        for k in ("src", "dst"):
            v = e.get(k)
            if not isinstance(v, str) or not v:
                self.fail(f"{field}.{k}", f"expected a node name, got {v!r:.40}")
            if names is not None and v not in names:
                self.fail(f"{field}.{k}", f"node {v!r} is not a node of the graph")
        return _edge_key(e["src"], e["dst"])


# ---------------------------------------------------------------------------
# measuring and fitting


def _measure_edge(graph, u: str, v: str, shift_rows: int) -> dict | None:
    """Val R@1 of the one-edge route ``u -> v`` (with its gallery exponent) and the
    centroid shift of its output; None when the pair has no val rows."""
    from .evaluate import evaluate_route, held_out
    from .retrieval import ranks_of_relevant

    try:
        h = held_out(graph, u, v, split="val")
    except NoPairs:
        return None
    m = evaluate_route(graph, u, v, route=[u, v], ks=(1,), split="val")
    cu, cv = graph.cache(u), graph.cache(v)
    y = graph.translate(cu.vectors(h.q_rows), [u, v])
    ranks = ranks_of_relevant(y, cv.vectors(h.g_rows), h.relevant)
    wrong = np.array([float(r[0]) - 1.0 for r in ranks])
    items = gallery_items(h)
    gamma = gallery_exponent(wrong, items)
    n = len(cu)
    rows = np.unique(np.linspace(0, n - 1, min(n, shift_rows)).astype(np.int64))
    out = graph.translate(cu.vectors(rows), [u, v])
    st = graph.node_stats(v)
    shift = float(np.linalg.norm(out.mean(0) - st["mean"]) / max(st["mean_norm"], 1e-12))
    metrics = graph.G.edges[u, v].get("metrics", {})
    cos = metrics.get("val_cos")
    return {"r1": float(m["R@1"]), "n_queries": int(m["n_queries"]),
            "n_gallery": items,
            "cos": float(cos) if isinstance(cos, (int, float)) else 1.0, "shift": shift,
            "metric_r1": metrics.get("val_R@1"), "gamma": gamma}


def _candidates(graph, s: str, d: str, k: int, max_hops: int) -> list[Route]:
    """The ``k`` cheapest simple routes under the edge cost with at most ``max_hops``."""
    out = []
    try:
        for r in k_best_routes(graph.G, s, d, k=4 * k, weight="cost"):
            if r.hops <= max_hops:
                out.append(r)
            if len(out) == k:
                break
    except NoRoute:
        return []
    return out


def calibrate(graph, k: int = 3, max_hops: int = 4, features=FEATURES, lambdas=LAMBDAS,
              nodes=None, shift_rows: int = SHIFT_ROWS, log=None) -> Calibration:
    """Measure validation routes of ``graph`` and fit the route model (see the module doc).

    ``k`` routes per ordered node pair (the edge-cost planner's cheapest, up to
    ``max_hops`` hops) are scored on val with :func:`~bridge.evaluate.evaluate_route`;
    ``nodes`` limits the pairs to these nodes. ``features`` is the subset of
    :data:`FEATURES` the model may use (the others are held at 0: for ablations).
    ``lambdas`` are the regularisation strengths the grouped CV chooses from. Needs the
    nodes' caches. Returns the :class:`Calibration` (the graph is not changed).
    """
    from .evaluate import evaluate_route, held_out

    k = _check_int("k", k, 1)
    max_hops = _check_int("max_hops", max_hops, 1)
    shift_rows = _check_int("shift_rows", shift_rows, 1)
    feats, lams = _check_features(features), _check_lambdas(lambdas)
    names = list(graph.nodes if nodes is None else nodes)
    for n in names:
        graph.node(n)  # UnknownNode names the valid nodes
    if graph.G.number_of_edges() == 0:
        raise NoRoute("the graph has no edges: there is no route to calibrate on")

    edges, gammas = {}, []
    for u, v in graph.G.edges:
        rec = _measure_edge(graph, u, v, shift_rows)
        if rec is None:
            continue
        if rec["gamma"] is not None:
            gammas.append(rec["gamma"])
        edges[_edge_key(u, v)] = rec
    if not edges:
        raise NoPairs("no edge of the graph has validation pairs to calibrate on")
    gamma = float(np.clip(np.median(gammas), *GAMMA_RANGE)) if gammas else GAMMA_DEFAULT

    pairs, routes = {}, []
    for s in names:
        for d in names:
            if s == d:
                continue
            try:
                hv = held_out(graph, s, d, split="val")
            except (NoPairs, NoRoute):
                continue
            items = gallery_items(hv)
            rec = {"n_val": items, "n_test": None}
            try:
                rec["n_test"] = gallery_items(held_out(graph, s, d, split="test"))
            except (NoPairs, NoRoute):
                pass
            cands = _candidates(graph, s, d, k, max_hops)
            if not cands:
                continue
            pairs[_edge_key(s, d)] = rec
            for r in cands:
                m = evaluate_route(graph, s, d, route=list(r.nodes), ks=(1,), split="val")
                routes.append({"nodes": list(r.nodes), "r1": float(m["R@1"]),
                               "gallery": items, "n_queries": int(m["n_queries"])})
                if log:
                    log(f"val {' -> '.join(r.nodes)}: R@1 {m['R@1']:.3f}")

    settings = {"k": k, "max_hops": max_hops, "features": list(feats), "lambdas": list(lams),
                "shift_rows": shift_rows, "nodes": names}
    return _fit_calibration(graph, edges, pairs, routes, gamma, feats, lams, settings)


def refit(graph, calibration: Calibration, features=FEATURES, lambdas=LAMBDAS) -> Calibration:
    """The model fitted again on the routes ``calibration`` measured (no route is run):
    another choice of ``features`` or ``lambdas``, e.g. to see which features matter."""
    if not isinstance(calibration, Calibration):
        raise InvalidParameter(f"calibration must be a Calibration, got "
                               f"{type(calibration).__name__}")
    feats, lams = _check_features(features), _check_lambdas(lambdas)
    routes = [{k: v for k, v in r.items() if k not in ("predicted", "predicted_cv")}
              for r in calibration.routes]
    settings = {**calibration.settings, "features": list(feats), "lambdas": list(lams)}
    return _fit_calibration(graph, calibration.edges, calibration.pairs, routes,
                            calibration.gamma, feats, lams, settings)


def _check_features(features):
    feats = tuple(features) if not isinstance(features, str) else (features,)
    bad = [f for f in feats if f not in FEATURES]
    if bad:
        raise InvalidParameter(f"features: unknown feature {bad[0]!r}; expected some of "
                               f"{list(FEATURES)}")
    return feats


def _check_lambdas(lambdas):
    try:
        lams = tuple(float(x) for x in lambdas)
    except (TypeError, ValueError):
        lams = ()
    if not lams or not all(math.isfinite(x) and x >= 0 for x in lams):
        raise InvalidParameter(f"lambdas must be a non-empty list of finite numbers >= 0, "
                               f"got {lambdas!r}")
    return lams


def _fit_calibration(graph, edges, pairs, routes, gamma, feats, lams, settings) -> Calibration:
    """Fit the weights on the measured multi-hop ``routes`` (grouped CV over the
    composition exponents and ``lams``)."""
    cal = Calibration(PRIOR, gamma, None, None, edges, pairs, routes, {}, settings)
    multi = [r for r in routes if len(r["nodes"]) > 2]
    prior = np.array([PRIOR[f] for f in FEATURES[1:]])
    active = np.array([f in feats for f in FEATURES[1:]])
    kappas = EXPONENTS if "exponent" in feats else (PRIOR["exponent"],)
    cv: dict = {"grid": [], "n_multi_hop": len(multi), "n_groups": 0}
    kappa, w = PRIOR["exponent"], np.where(active, prior, 0.0)
    sd_model, lam = None, None
    if multi:
        ells, Phi, R, groups = [], [], [], []
        for r in multi:
            facts = [cal.edge_facts(graph, u, v)[0] for u, v in zip(r["nodes"][:-1], r["nodes"][1:])]
            e, phi, _ = _route_terms(facts, r["gallery"], gamma, len(r["nodes"]) - 1)
            ells.append(e)
            Phi.append(phi)
            R.append(r["r1"])
            groups.append(f"{r['nodes'][0]} -> {r['nodes'][-1]}")
        Phi, R = np.array(Phi), np.array(R)
        # every route weighs by the precision of its measurement: binomial noise of R@1
        # on its queries plus the model's own error (first guessed from the prior model)
        nq = np.array([max(int(r["n_queries"]), 1) for r in multi], dtype=np.float64)
        shrunk = (R * nq + 0.5) / (nq + 1)
        noise = shrunk * (1 - shrunk) / nq
        feature_noise = np.array([
            _edge_noise([cal.edge_facts(graph, u, v)[0]
                         for u, v in zip(r["nodes"][:-1], r["nodes"][1:])]) for r in multi])
        base0 = np.array([_base(e, PRIOR["exponent"]) for e in ells])
        prior_fit = np.exp(-(base0 + Phi @ np.where(active, prior, 0.0)))
        tau0 = max(float(np.mean((prior_fit - R) ** 2 - noise)), 1e-4)
        weight = 1.0 / (noise + tau0)
        cv["n_groups"] = len(set(groups))
        cv["prior_mae"] = float(np.mean(np.abs(prior_fit - R)))
        if cv["n_groups"] >= 3:
            kappa, lam, resid, cv["grid"] = _cross_validate(ells, Phi, R, groups, kappas, prior,
                                                            active, lams, weight)
            # the model's own spread: CV residuals less the noise of the val measurements
            # (the route's own and its edges')
            sd_model = math.sqrt(max(float(np.mean(
                resid ** 2 - noise - R ** 2 * feature_noise)), 0.0))
            cv.update({"cv_mae": float(np.mean(np.abs(resid))),
                       "cv_rmse": float(np.sqrt(np.mean(resid ** 2))),
                       "val_noise_rmse": float(np.sqrt(np.mean(noise)))})
            for r, e in zip(multi, resid):
                r["predicted_cv"] = float(min(max(r["r1"] + e, 0.0), 1.0))
        else:  # too few node pairs to cross-validate: the prior exponent, strongest penalty
            lam = max(lams)
        base = np.array([_base(e, kappa) for e in ells])
        w = _fit(base, Phi, R, prior, active, lam, weight)
        cv["fit_mae"] = float(np.mean(np.abs(np.exp(-(base + Phi @ w)) - R)))
    cal.weights = {"exponent": float(kappa), **{f: float(x) for f, x in zip(FEATURES[1:], w)}}
    cal.sd_model, cal.lam, cal.cv = sd_model, lam, cv
    for r in routes:
        r["predicted"] = float(cal.predict(graph, r["nodes"], r["gallery"])["r1"])
    return cal


# ---------------------------------------------------------------------------
# checking predictions on held-out routes


def prediction_check(graph, split: str = "test", k: int = 3, max_hops: int = 4, nodes=None,
                     tolerance: float = 0.02) -> dict:
    """Predicted against measured R@1 on the ``split`` pairs of a calibrated ``graph``.

    For every ordered node pair with ``split`` pairs, the candidate routes are the
    calibrated planner's ``k`` best and the edge-cost planner's ``k`` cheapest (up to
    ``max_hops`` hops, plus its cheapest route whatever its length); each is run with
    :func:`~bridge.evaluate.evaluate_route` and predicted at the gallery it was measured
    on, by the calibration and by the edge-cost planner (``exp(-cost)``). Returns
    ``pairs`` (per pair: the routes with ``measured``, ``predicted``, ``sd``,
    ``uncalibrated``, and each planner's pick) and ``summary``: mean absolute error of
    each prediction over the picked routes and over all candidates, the share of pairs
    whose pick is within ``tolerance`` R@1 of the best candidate measured, and the share of
    measurements inside the calibrated 95% interval.
    """
    from .evaluate import evaluate_route, held_out
    from .planner import route_cost

    cal = graph.calibration
    if cal is None:
        raise InvalidParameter("the graph is not calibrated: call graph.calibrate() first")
    k = _check_int("k", k, 1)
    max_hops = _check_int("max_hops", max_hops, 1)
    if split not in ("train", "val", "test"):
        raise InvalidParameter(f"split must be 'train', 'val' or 'test', got {split!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) \
            or not (math.isfinite(tolerance) and tolerance >= 0):
        raise InvalidParameter(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    names = list(graph.nodes if nodes is None else nodes)
    for n in names:
        graph.node(n)  # UnknownNode names the valid nodes
    out = []
    for s in names:
        for d in names:
            if s == d:
                continue
            try:
                items = gallery_items(held_out(graph, s, d, split=split))
                old_pick = k_best_routes(graph.G, s, d, k=1)[0]
            except (NoPairs, NoRoute):
                continue
            new = cal.plan(graph, s, d, k=k)
            cands = [old_pick] + _candidates(graph, s, d, k, max_hops) + new
            seen, rows = set(), []
            for r in cands:
                if r.nodes in seen:
                    continue
                seen.add(r.nodes)
                m = evaluate_route(graph, s, d, route=list(r.nodes), ks=(1,), split=split)
                pr = cal.predict(graph, r.nodes, max(items, 2))
                rows.append({"nodes": list(r.nodes), "hops": len(r.nodes) - 1,
                             "measured": float(m["R@1"]), "gallery": items,
                             "n_queries": int(m["n_queries"]), "predicted": pr["r1"],
                             "sd": pr["sd"],
                             "uncalibrated": math.exp(-route_cost(graph.G, r.nodes)[0])})
            best = max(x["measured"] for x in rows)
            by = {tuple(x["nodes"]): x for x in rows}
            out.append({"src": s, "dst": d, "routes": rows, "best": best,
                        "calibrated_pick": list(new[0].nodes),
                        "uncalibrated_pick": list(old_pick.nodes),
                        "calibrated_pick_measured": by[new[0].nodes]["measured"],
                        "uncalibrated_pick_measured": by[old_pick.nodes]["measured"]})
    if not out:
        raise NoPairs(f"no ordered node pair of the graph has {split} pairs and a route")
    return {"split": split, "tolerance": float(tolerance), "pairs": out,
            "summary": _check_summary(out, tolerance)}


def _check_summary(pairs: list, tol: float) -> dict:
    picked_c = [next(x for x in p["routes"] if x["nodes"] == p["calibrated_pick"]) for p in pairs]
    picked_u = [next(x for x in p["routes"] if x["nodes"] == p["uncalibrated_pick"]) for p in pairs]
    every = [x for p in pairs for x in p["routes"]]
    multi = [x for x in every if x["hops"] > 1]

    def mae(rows, key):
        return float(np.mean([abs(x[key] - x["measured"]) for x in rows])) if rows else None

    inside = [abs(x["predicted"] - x["measured"]) <= Z95 * x["sd"] for x in every]
    # what a perfect predictor would still miss by: the binomial noise of each measurement
    floor = [math.sqrt(2 / math.pi * x["measured"] * (1 - x["measured"]) / x["n_queries"])
             for x in picked_c]
    return {"n_pairs": len(pairs), "n_routes": len(every), "n_multi_hop": len(multi),
            "mae_pick": mae(picked_c, "predicted"), "mae_all": mae(every, "predicted"),
            "mae_multi_hop": mae(multi, "predicted"),
            "uncalibrated_mae_pick": mae(picked_u, "uncalibrated"),
            "uncalibrated_mae_all": mae(every, "uncalibrated"),
            "uncalibrated_mae_multi_hop": mae(multi, "uncalibrated"),
            "within_tolerance": float(np.mean([p["calibrated_pick_measured"] >= p["best"] - tol
                                               for p in pairs])),
            "uncalibrated_within_tolerance": float(np.mean(
                [p["uncalibrated_pick_measured"] >= p["best"] - tol for p in pairs])),
            "coverage95": float(np.mean(inside)),
            "noise_mae_pick": float(np.mean(floor)),
            "mean_pick_measured": float(np.mean([x["measured"] for x in picked_c])),
            "uncalibrated_mean_pick_measured": float(np.mean([x["measured"] for x in picked_u])),
            "mean_best": float(np.mean([p["best"] for p in pairs]))}
