"""Graph synchronisation: refit every edge of a graph jointly so that its cycles close.

Edges trained one pair at a time disagree: ``A -> B -> C`` and ``A -> C`` land in
different places, and a round trip ``A -> B -> C -> A`` does not return home. Two ways to
make them agree, both returning a new graph with the same nodes and every edge replaced
(the input graph is left as it was):

- ``"universe"`` (closed form, :func:`fit_universe`): a shared latent space fitted by
  generalised Procrustes analysis over every node's paired **training** rows. Rows that
  the graph pairs (by shared ids or by an edge's pair table; the connected components of
  all training pairs, so an image and its five captions are one point) are one universe
  point, the mean of the mapped rows of the nodes that hold it. Each node gets a centring
  mean and an orthogonal map into the universe (optionally with a scale per node, or a
  ridge map for a node that fits the universe worse); the maps and the universe are
  refitted in turn until the residual stops falling. Every edge ``A -> B`` becomes the
  composition ``universe <- A`` then ``B <- universe``, stored as an ordinary linear
  edge, so a route through any nodes of the same dimension composes to the direct map
  and a closed cycle to the identity.
- ``"cycle"`` (MLP edges, :func:`cycle_finetune`): the graph's MLP edges fine-tuned
  together for a few epochs with their own losses plus ``1 - cos(x, T_k(...T_1(x)))``
  over the graph's simple cycles up to a length bound, early-stopped on validation rows,
  the cycle weight chosen on validation rows.

Universe dimension: the largest node dimension. Every node then maps in isometrically
(a node of smaller dimension gets a map with orthonormal rows, its way back is the
transpose), nothing a node holds is projected away, and for nodes of one dimension the
universe is simply a common rotation of all of them.

Edges keep held-out metrics measured as :meth:`~bridge.graph.ModalityGraph.connect`
measures them (R@1 with ties against the query, its Wilson lower bound, mean cosine, on
each edge's own val and test pairs), so the planner prices the new edges as usual.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import BridgeError, InvalidParameter, NoPairs

__all__ = ["synchronize", "fit_universe", "Universe", "cycle_finetune", "graph_cycles",
           "polar", "METHODS", "VARIANTS", "RIDGE_ALPHAS"]

#: synchronisation methods of :func:`synchronize`
METHODS = ("universe", "cycle")
#: how :func:`fit_universe` maps nodes into the universe
VARIANTS = ("auto", "orthogonal", "scaled", "ridge")
#: ridge penalties tried by ``variant="auto"`` / ``"ridge"``, relative to the mean
#: eigenvalue of the second-moment matrix the penalty is added to
RIDGE_ALPHAS = (0.001, 0.01, 0.1)


def synchronize(graph, method: str = "universe", **options):
    """A new graph whose edges agree around cycles (see the module doc).

    ``method="universe"`` passes ``options`` to :func:`fit_universe` (``variant``, ``tol``,
    ``max_iter``, ``ridge_alphas``); ``method="cycle"`` to :func:`cycle_finetune`
    (``max_length``, ``weights``, ``epochs``, ...). Returns a
    :class:`~bridge.graph.ModalityGraph` with the same nodes, settings and edges, every
    edge's translator replaced and its metrics and cost measured again; ``graph`` itself
    is unchanged.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise InvalidParameter(f"unknown synchronisation method {method!r}; expected one of "
                               f"{list(METHODS)}")
    import inspect

    fn = fit_universe if method == "universe" else cycle_finetune
    allowed = [p for p in inspect.signature(fn).parameters if p != "graph"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InvalidParameter(f"method {method!r} takes no option {unknown[0]!r}; its options "
                               f"are {allowed}")
    if method == "universe":
        return fit_universe(graph, **options).apply(graph)
    return cycle_finetune(graph, **options)


# ---------------------------------------------------------------------------
# pure maths


def polar(M: np.ndarray) -> np.ndarray:
    """The (semi-)orthogonal factor ``U V^T`` of ``M = U S V^T``: the matrix ``Q`` with
    orthonormal rows (or columns) maximising ``trace(Q^T M)``, i.e. the orthogonal
    Procrustes solution for the cross-covariance ``M = X^T Y``."""
    U, _, Vt = np.linalg.svd(np.asarray(M, dtype=np.float64), full_matrices=False)
    return U @ Vt


def _pad_eye(d: int, D: int) -> np.ndarray:
    Q = np.zeros((d, D))
    Q[np.arange(d), np.arange(d)] = 1.0
    return Q


def _gpa(C: dict, tr: list, scales: np.ndarray, dims: list, D: int, init_order: list,
         tol: float, max_iter: int) -> tuple[list, dict]:
    """Generalised Procrustes analysis from the cross products of the nodes' rows.

    ``C[i, j] = S_i^T W S_j`` where ``S_i`` sums node i's centred rows per universe point
    and ``W`` divides by the number of rows a point has over all nodes; ``tr[i]`` is
    node i's total centred sum of squares. With maps ``Q_j`` and scales ``s_j`` the
    universe is ``U = W sum_j s_j S_j Q_j``, and node i's cross-covariance with it is
    ``sum_j s_i s_j C[i, j] Q_j``: the iteration never forms ``U``. Returns the maps and
    ``{"iterations", "converged", "residual" (relative), "history"}``.
    """
    n = len(dims)
    total = float(sum(scales[i] ** 2 * tr[i] for i in range(n)))

    def cross(i, Q):
        M = np.zeros((dims[i], D))
        for j in range(n):
            if (i, j) in C:
                M += scales[i] * scales[j] * (C[i, j] @ Q[j])
        return M

    def residual(Q):
        fit = 0.0
        for (i, j), Cij in C.items():
            fit += scales[i] * scales[j] * float(np.einsum("ab,ab->", Q[i], Cij @ Q[j]))
        return float(max(total - fit, 0.0) / max(total, 1e-300))

    # start: the first node as it is, then each node rotated onto those already placed
    Q = [None] * n
    Q[init_order[0]] = _pad_eye(dims[init_order[0]], D)
    placed = [init_order[0]]
    for i in init_order[1:]:
        M = np.zeros((dims[i], D))
        for j in placed:
            if (i, j) in C:
                M += scales[i] * scales[j] * (C[i, j] @ Q[j])
        Q[i] = polar(M) if np.abs(M).sum() > 0 else _pad_eye(dims[i], D)
        placed.append(i)
    history = [residual(Q)]
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        # each map in turn onto the universe of the latest maps (Gauss-Seidel): every
        # update maximises a lower bound of the fit, so the residual never rises
        for i in range(n):
            Q[i] = polar(cross(i, Q))
        history.append(residual(Q))
        if history[-2] - history[-1] <= tol:
            converged = True
            break
    return Q, {"iterations": it, "converged": converged, "residual": history[-1],
               "history": history}


# ---------------------------------------------------------------------------
# the graph's pairs, as the graph splits them


@dataclass
class _EdgePairs:
    """The pairs of one linked node pair ``(a, b)`` as the graph trained its edges."""

    a: str
    b: str
    pairs: object  # bridge.store.Pairs oriented a -> b
    idx: dict  # split name -> indices into pairs
    labels: np.ndarray  # pair components (rows sharing a target share a label)

    def oriented(self, src: str):
        """``(src rows, dst rows)`` of the pairs, oriented from ``src``."""
        P = self.pairs
        return (P.a_rows, P.b_rows) if src == self.a else (P.b_rows, P.a_rows)


def _linked_pairs(graph) -> list[_EdgePairs]:
    """One entry per pair of nodes joined by an edge (either direction)."""
    from .graph import pair_components

    seen, out = set(), []
    for a, b in graph.edges:
        if a == b or frozenset((a, b)) in seen:
            continue
        seen.add(frozenset((a, b)))
        P, rule = graph.edge_pairs(a, b)
        idx = graph.split(P, rule)
        out.append(_EdgePairs(a, b, P, idx, pair_components(P)))
    return out


def _check_graph(graph) -> list[_EdgePairs]:
    from .graph import ModalityGraph

    if not isinstance(graph, ModalityGraph):
        raise InvalidParameter(f"expected a ModalityGraph to synchronise, got "
                               f"{type(graph).__name__}")
    if len(graph) < 2:
        raise NoPairs(f"synchronising needs at least two nodes joined by edges; the graph has "
                      f"{len(graph)} node(s) {graph.nodes}")
    linked = _linked_pairs(graph)
    lone = [n for n in graph.nodes if not any(n in (e.a, e.b) for e in linked)]
    if lone:
        raise NoPairs(f"node {lone[0]!r} has no edge, so no paired rows place it among the "
                      f"others (nodes without edges: {lone}); connect it to a node of the graph "
                      "or remove it before synchronising")
    return linked


def _held_rows(linked: list[_EdgePairs]) -> dict[str, set]:
    """Rows of every node that are validation or test rows of any of its edges."""
    held: dict[str, set] = {}
    for e in linked:
        out = np.concatenate([e.idx["val"], e.idx["test"]])
        for node in (e.a, e.b):
            rows = e.oriented(node)[0][out]
            held.setdefault(node, set()).update(rows.tolist())
    return held


def _split_rows(linked: list[_EdgePairs], split: str, held: dict | None = None) -> dict:
    """Rows of every node in ``split`` pairs of its edges (less ``held`` rows)."""
    out: dict[str, set] = {}
    for e in linked:
        for node in (e.a, e.b):
            rows = e.oriented(node)[0][e.idx[split]]
            out.setdefault(node, set()).update(rows.tolist())
    if held is not None:
        out = {n: r - held.get(n, set()) for n, r in out.items()}
    return {n: np.array(sorted(r), dtype=np.int64) for n, r in out.items()}


# ---------------------------------------------------------------------------
# universe


@dataclass
class Universe:
    """A shared latent space and every node's way in and out of it.

    ``embed(node, x) = (x - mean) @ maps_in[node]`` and
    ``decode(node, z) = z @ maps_out[node] + mean``; for an orthogonal node
    ``maps_in = s Q`` and ``maps_out = Q^T / s`` with ``Q`` (node dim, universe dim)
    having orthonormal rows. ``node_maps`` says which kind each node got
    (``"orthogonal"``, or ``"ridge"`` with its penalty), ``report`` how the fit went
    (iterations, convergence, relative residual, the validation scores of the variants).
    """

    dim: int
    means: dict
    maps_in: dict
    maps_out: dict
    scales: dict
    node_maps: dict
    variant: str
    report: dict = field(default_factory=dict)

    @property
    def nodes(self) -> list:
        return list(self.means)

    def _check(self, node):
        if node not in self.means:
            from .errors import UnknownNode

            raise UnknownNode(node, self.means)

    def embed(self, node: str, x) -> np.ndarray:
        """Rows of ``node`` placed in the universe."""
        from .store import check_embeddings

        self._check(node)
        x = check_embeddings(x, "x", dim=self.means[node].shape[0]).astype(np.float64)
        return ((x - self.means[node]) @ self.maps_in[node]).astype(np.float32)

    def decode(self, node: str, z) -> np.ndarray:
        """Universe rows taken into ``node``'s space."""
        from .store import check_embeddings

        self._check(node)
        z = check_embeddings(z, "z", dim=self.dim).astype(np.float64)
        return (z @ self.maps_out[node] + self.means[node]).astype(np.float32)

    def edge_map(self, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` of the composed map ``a -> universe -> b``: ``x W + b``."""
        self._check(a)
        self._check(b)
        W = self.maps_in[a] @ self.maps_out[b]
        return W.astype(np.float32), (self.means[b] - self.means[a] @ W).astype(np.float32)

    def translator(self, a: str, b: str):
        """The composed map ``a -> universe -> b`` as a fitted
        :class:`~bridge.translators.LinearTranslator` (it saves and loads like any edge)."""
        from .translators import LinearTranslator

        W, b_ = self.edge_map(a, b)
        T = LinearTranslator(alpha=0.0, fit_intercept=True)
        # a fitted linear translator's state, as LinearTranslator.fit leaves it
        T.in_dim_, T.out_dim_ = int(W.shape[0]), int(W.shape[1])
        T.W_, T.b_, T.alpha_ = W, b_, 0.0
        T.fit_report_ = {"alpha": 0.0, "sync": "universe", "variant": self.variant,
                         "universe_dim": self.dim, "src_map": self.node_maps[a],
                         "dst_map": self.node_maps[b],
                         **{k: self.report[k] for k in ("iterations", "converged", "residual",
                                                        "n_points") if k in self.report}}
        return T

    def apply(self, graph):
        """A copy of ``graph`` with every edge replaced by its universe composition and
        its metrics measured again on the edge's own val and test pairs."""
        linked = _check_graph(graph)
        missing = [n for n in graph.nodes if n not in self.means]
        if missing:
            raise BridgeError(f"this universe has no map for node {missing[0]!r} (universe "
                              f"nodes: {self.nodes}); fit it on this graph")
        return _replace_edges(graph, linked, {(a, b): self.translator(a, b)
                                              for a, b in graph.edges})


def _node_data(graph, linked, held):
    """Per node: the training rows in universe points, their point numbers, and the
    number of points. Points are the connected components of all training pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = graph.nodes
    n_rows = {n: len(graph.cache(n)) for n in nodes}
    offset, o = {}, 0
    for n in nodes:
        offset[n] = o
        o += n_rows[n]
    src, dst = [], []
    for e in linked:
        ar, br = e.pairs.a_rows[e.idx["train"]], e.pairs.b_rows[e.idx["train"]]
        keep = ~(np.isin(ar, list(held.get(e.a, ()))) | np.isin(br, list(held.get(e.b, ()))))
        src.append(offset[e.a] + ar[keep])
        dst.append(offset[e.b] + br[keep])
    src, dst = np.concatenate(src), np.concatenate(dst)
    linked_v = np.zeros(o, dtype=bool)
    linked_v[src] = linked_v[dst] = True
    m = coo_matrix((np.ones(src.size), (src, dst)), shape=(o, o))
    _, comp = connected_components(m, directed=False)
    # number the components that hold a linked vertex 0..n_points-1
    used, comp_id = np.unique(comp[linked_v], return_inverse=True)
    point = np.full(o, -1, dtype=np.int64)
    point[np.flatnonzero(linked_v)] = comp_id
    data = {}
    for n in nodes:
        p = point[offset[n]: offset[n] + n_rows[n]]
        rows = np.flatnonzero(p >= 0)
        if rows.size == 0:
            raise NoPairs(f"node {n!r} has no paired training rows (every pair of its edges is "
                          "a val or test pair, or held out by another edge); the universe needs "
                          "training pairs for every node")
        data[n] = (rows, p[rows])
    return data, int(used.size)


def _check_num(name, value, lo, integer=False):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if integer:
        ok = ok and isinstance(value, numbers.Integral)
    if not ok or value < lo:
        kind = "an integer" if integer else "a finite number"
        raise InvalidParameter(f"parameter {name!r} must be {kind} >= {lo}, got {value!r}")
    return value


def fit_universe(graph, variant: str = "auto", tol: float = 1e-6, max_iter: int = 200,
                 ridge_alphas=RIDGE_ALPHAS) -> Universe:
    """Fit a shared latent space to every node of ``graph`` by generalised Procrustes.

    Only training pairs are used (a row that is a val or test row of any edge of its node
    is left out). ``variant``:

    - ``"orthogonal"``: node centring mean and orthogonal map, no scale;
    - ``"scaled"``: each node's centred rows first scaled to unit RMS norm, so nodes of
      different spread weigh alike and an edge rescales rows to its target's spread;
    - ``"ridge"``: the scaled universe, then every node's maps in and out refitted by
      ridge least squares onto it (penalty from ``ridge_alphas`` chosen on val);
    - ``"auto"`` (default): ``"orthogonal"`` or ``"scaled"``, whichever gives the higher
      mean val R@1 over the graph's edges, then node by node a ridge map where it raises
      that mean (a node that fits the universe worse than the others).

    The iteration stops when the relative residual (unexplained share of the nodes'
    centred sum of squares) falls by at most ``tol`` in one step, or after ``max_iter``
    steps (with a warning). Returns a :class:`Universe`; ``Universe.apply(graph)`` (or
    :func:`synchronize`) turns it into a graph.
    """
    from scipy.sparse import csr_matrix

    from .metrics import paired_retrieval

    if not isinstance(variant, str) or variant not in VARIANTS:
        raise InvalidParameter(f"unknown universe variant {variant!r}; expected one of "
                               f"{list(VARIANTS)}")
    _check_num("tol", tol, 0)
    _check_num("max_iter", max_iter, 1, integer=True)
    alphas = tuple(ridge_alphas)
    if not alphas:
        raise InvalidParameter("parameter 'ridge_alphas' must hold at least one penalty, got ()")
    for a in alphas:
        _check_num("ridge_alphas", a, 0)
    linked = _check_graph(graph)
    held = _held_rows(linked)
    data, n_points = _node_data(graph, linked, held)
    nodes = graph.nodes
    k = len(nodes)
    dims = [int(graph.node(n)["dim"]) for n in nodes]
    D = max(dims)

    # centred rows, their sums per universe point, and the cross products between nodes
    means, sums, points, tr, X = {}, [], [], [], []
    counts = np.zeros(n_points)
    for n in nodes:
        rows, p = data[n]
        x = graph.cache(n).vectors(rows).astype(np.float64)
        mu = x.mean(0)
        x -= mu
        means[n] = mu
        uniq, inv = np.unique(p, return_inverse=True)
        S = np.asarray(csr_matrix((np.ones(p.size), (inv, np.arange(p.size))),
                                  shape=(uniq.size, p.size)) @ x)
        np.add.at(counts, p, 1.0)
        sums.append(S)
        points.append(uniq)
        tr.append(float(np.einsum("ij,ij->", x, x)))
        X.append(x)
    C, overlap = {}, np.zeros((k, k), dtype=np.int64)
    for i in range(k):
        for j in range(i, k):
            common, ia, ja = np.intersect1d(points[i], points[j], assume_unique=True,
                                            return_indices=True)
            if common.size == 0:
                continue
            Cij = sums[i][ia].T @ (sums[j][ja] / counts[common][:, None])
            C[i, j] = Cij
            if i != j:
                C[j, i] = Cij.T
                overlap[i, j] = overlap[j, i] = common.size
    sizes = np.array([data[n][0].size for n in nodes])
    order = [int(np.argmax(sizes))]
    while len(order) < k:  # place next the node sharing most points with those placed
        rest = [i for i in range(k) if i not in order]
        order.append(max(rest, key=lambda i: (overlap[i, order].sum(), -i)))

    val = _val_sets(graph, linked)

    def score(maps_in, maps_out, only=None):
        """Mean val R@1 (then cos) over the edges, with ``only`` the edges touching it."""
        out = {}
        for (a, b), (xa, yb, lab) in val.items():
            if only is not None and only not in (a, b):
                continue
            W = maps_in[a] @ maps_out[b]
            m = paired_retrieval((xa - means[a]) @ W + means[b], yb, lab)
            out[a, b] = (m["R@1"], m["cos"])
        return out

    def mean_key(s):
        return (float(np.mean([v[0] for v in s.values()])),
                float(np.mean([v[1] for v in s.values()])))

    fits, report = {}, {"universe_dim": D, "n_points": n_points, "variants": {}}
    tried = ("orthogonal", "scaled") if variant == "auto" else (
        ("scaled",) if variant == "ridge" else (variant,))
    for v in tried:
        s = np.ones(k) if v == "orthogonal" else np.array(
            [1.0 / math.sqrt(max(tr[i] / sizes[i], 1e-300)) for i in range(k)])
        Q, info = _gpa(C, tr, s, dims, D, order, float(tol), int(max_iter))
        mi = {n: s[i] * Q[i] for i, n in enumerate(nodes)}
        mo = {n: Q[i].T / s[i] for i, n in enumerate(nodes)}
        sc = score(mi, mo)
        fits[v] = (s, Q, info, mi, mo, sc)
        report["variants"][v] = {"val_R@1": mean_key(sc)[0], "val_cos": mean_key(sc)[1],
                                 "iterations": info["iterations"],
                                 "converged": info["converged"], "residual": info["residual"]}
    best = max(tried, key=lambda v: mean_key(fits[v][5]))
    s, Q, info, maps_in, maps_out, sc = fits[best]
    node_maps = {n: "orthogonal" for n in nodes}
    if variant in ("auto", "ridge"):
        # ridge maps onto the universe found above, node by node
        U = _universe_rows(C, sums, points, counts, s, Q, n_points, D)
        for i, n in enumerate(nodes):
            Ui = U[data[n][1]]
            best_key, best_maps = mean_key(score(maps_in, maps_out, only=n)), None
            if variant == "ridge":
                best_key = (-1.0, -1.0)
            XtX, XtU, UtU = X[i].T @ X[i], X[i].T @ Ui, Ui.T @ Ui
            for a in alphas:
                Win = np.linalg.solve(XtX + a * np.trace(XtX) / dims[i] * np.eye(dims[i]), XtU)
                Wout = np.linalg.solve(UtU + a * np.trace(UtU) / D * np.eye(D), XtU.T)
                trial_in, trial_out = {**maps_in, n: Win}, {**maps_out, n: Wout}
                key = mean_key(score(trial_in, trial_out, only=n))
                if key > best_key:
                    best_key, best_maps = key, (Win, Wout, a)
            if best_maps is not None:
                maps_in[n], maps_out[n] = best_maps[0], best_maps[1]
                node_maps[n] = f"ridge(alpha={best_maps[2]:g})"
        sc = score(maps_in, maps_out)
    if not info["converged"]:
        warnings.warn(f"generalised Procrustes did not converge in max_iter={max_iter} steps "
                      f"(relative residual {info['residual']:.6g}, last decrease "
                      f"{info['history'][-2] - info['history'][-1]:.3g} > tol={tol:g})",
                      UserWarning, stacklevel=2)
    report.update({"variant": best if variant != "ridge" else "ridge",
                   "iterations": info["iterations"], "converged": info["converged"],
                   "residual": info["residual"], "history": info["history"],
                   "val_R@1": mean_key(sc)[0], "val_cos": mean_key(sc)[1],
                   "node_maps": dict(node_maps)})
    name = best if variant != "ridge" else "ridge"
    if variant == "auto" and any(m != "orthogonal" for m in node_maps.values()):
        name = f"{best}+ridge"
    return Universe(dim=D, means=means, maps_in=maps_in, maps_out=maps_out,
                    scales={n: float(s[i]) for i, n in enumerate(nodes)},
                    node_maps=node_maps, variant=name, report=report)


def _universe_rows(C, sums, points, counts, s, Q, n_points, D) -> np.ndarray:
    """The universe points ``U = W sum_j s_j S_j Q_j`` (rows: points)."""
    U = np.zeros((n_points, D))
    for j in range(len(sums)):
        U[points[j]] += s[j] * (sums[j] @ Q[j])
    return U / np.maximum(counts, 1.0)[:, None]


def _val_sets(graph, linked) -> dict:
    """``{(src, dst): (X_val, Y_val, labels)}`` of every edge of the graph."""
    out = {}
    for e in linked:
        va = e.idx["val"]
        for src, dst in ((e.a, e.b), (e.b, e.a)):
            if not graph.G.has_edge(src, dst) or va.size == 0:
                continue
            sr, dr = e.oriented(src)
            out[src, dst] = (graph.cache(src).vectors(sr[va]).astype(np.float64),
                             graph.cache(dst).vectors(dr[va]), e.labels[va])
    return out


# ---------------------------------------------------------------------------
# new edges with their metrics


def _measure(graph, e: _EdgePairs, src: str, dst: str, T) -> dict:
    """The held-out metrics :meth:`ModalityGraph.connect` records for an edge."""
    from .graph import held_out_metrics

    sr, dr = e.oriented(src)
    return held_out_metrics(T, graph.cache(src), graph.cache(dst), sr, dr, e.idx, e.labels)


def _replace_edges(graph, linked, translators: dict):
    """A copy of ``graph`` whose edges carry ``translators`` and fresh metrics; each
    edge keeps its split record and pair table."""
    new = graph.copy()
    by_pair = {frozenset((e.a, e.b)): e for e in linked}
    for (a, b), T in translators.items():
        old = graph.edge(a, b)
        new.add_edge(a, b, T, _measure(graph, by_pair[frozenset((a, b))], a, b, T))
        d = new.G.edges[a, b]
        d["split"] = copy.deepcopy(old.get("split", {}))
        d["pair_table"] = old.get("pair_table")
    return new


# ---------------------------------------------------------------------------
# cycle-consistency fine-tuning of MLP edges


def graph_cycles(graph, max_length: int = 3) -> list[list[str]]:
    """Closed walks ``[n0, n1, ..., n0]`` of every simple cycle of the graph with 2 to
    ``max_length`` edges, one per starting node (each rotation of a cycle)."""
    import networkx as nx

    _check_num("max_length", max_length, 2, integer=True)
    walks = []
    for cyc in nx.simple_cycles(graph.G, length_bound=int(max_length)):
        if len(cyc) < 2:
            continue
        for i in range(len(cyc)):
            rot = cyc[i:] + cyc[:i]
            walks.append(rot + [rot[0]])
    return sorted(walks)


def cycle_finetune(graph, max_length: int = 3, weights=(1.0, 3.0, 10.0), epochs: int = 3,
                   batch_size: int = 256, lr: float = 1e-5, patience: int = 2,
                   steps_per_epoch: int | None = None, cycles_per_step: int | None = None,
                   max_val_rows: int = 2000, seed: int = 0, device: str | None = None):
    """Fine-tune every MLP edge of ``graph`` together so that its cycles close.

    Each step draws a batch of training pairs for every edge (its own loss, the loss it
    was trained with) and a batch of training rows of the start node of every cycle walk
    (:func:`graph_cycles` up to ``max_length`` edges; ``cycles_per_step`` of them drawn at
    random when given) and minimises the mean edge loss plus ``weight`` times the mean of
    ``1 - cos(x, T_k(...T_1(x)))``. After each epoch the validation key is measured: the
    mean of (mean val R@1 of the edges), (mean val cycle R@1: the end point retrieves its
    own start among the start node's val rows, at most ``max_val_rows``) and, where the
    graph has two-hop routes ``u -> v -> w`` whose end rows share ids with the start rows,
    (mean val R@1 of those routes), then mean cos; the best epoch is kept (epoch 0, the
    input edges, is a candidate), training stops
    after ``patience`` epochs without improvement. Every weight of ``weights`` is run;
    the one with the best validation key wins. ``steps_per_epoch`` (default: one pass
    over the largest edge's training pairs) bounds the work per epoch.

    Every edge must be an MLP edge (``kind == "mlp"``). Returns a new graph (see
    :func:`synchronize`); each new translator's ``fit_report_["sync"]`` records the run.
    """
    import torch
    import torch.nn.functional as F

    from .losses import make_loss
    from .metrics import paired_retrieval
    from .training import resolve_device

    linked = _check_graph(graph)
    bad = [(a, b, graph.edge(a, b)["kind"]) for a, b in graph.edges
           if graph.edge(a, b)["kind"] != "mlp"]
    if bad:
        a, b, kind = bad[0]
        raise InvalidParameter(f"method 'cycle' fine-tunes MLP edges; edge {a!r} -> {b!r} is "
                               f"{kind!r} (non-MLP edges: {len(bad)}); use method='universe' "
                               "for closed-form edges")
    ws = tuple(weights)
    if not ws:
        raise InvalidParameter("parameter 'weights' must hold at least one cycle weight, got ()")
    for w in ws:
        _check_num("weights", w, 0)
    _check_num("epochs", epochs, 1, integer=True)
    _check_num("batch_size", batch_size, 2, integer=True)
    _check_num("lr", lr, 0)
    _check_num("patience", patience, 1, integer=True)
    _check_num("max_val_rows", max_val_rows, 2, integer=True)
    _check_num("seed", seed, 0, integer=True)
    if steps_per_epoch is not None:
        _check_num("steps_per_epoch", steps_per_epoch, 1, integer=True)
    if cycles_per_step is not None:
        _check_num("cycles_per_step", cycles_per_step, 1, integer=True)
    walks = graph_cycles(graph, max_length)
    if not walks:
        raise NoPairs(f"the graph has no cycle of 2 to {max_length} edges to close (edges: "
                      f"{graph.edges})")
    dev = resolve_device(device)
    by_pair = {frozenset((e.a, e.b)): e for e in linked}
    held = _held_rows(linked)
    train_rows = _split_rows(linked, "train", held)
    val_rows = _split_rows(linked, "val")
    rng = np.random.default_rng(seed)
    val_rows = {n: (r if r.size <= max_val_rows else np.sort(rng.choice(r, max_val_rows,
                                                                           replace=False)))
                for n, r in val_rows.items()}

    def tensor(a):
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=dev)

    edges = list(graph.edges)
    edata = {}
    for a, b in edges:
        e = by_pair[frozenset((a, b))]
        sr, dr = e.oriented(a)
        tr, va = e.idx["train"], e.idx["val"]
        edata[a, b] = {
            "x": tensor(graph.cache(a).vectors(sr[tr])),
            "y": tensor(graph.cache(b).vectors(dr[tr])),
            "lab": torch.as_tensor(np.unique(e.labels[tr], return_inverse=True)[1], device=dev),
            "xv": graph.cache(a).vectors(sr[va]), "yv": graph.cache(b).vectors(dr[va]),
            "labv": e.labels[va]}
    # two-hop routes u -> v -> w whose end rows are known (shared ids): what a multi-hop
    # user gets, and what neither an edge's R@1 nor a cycle's R@1 sees (a hop whose rows
    # drift off its target's distribution keeps both, and breaks the next hop)
    routes = []
    for u, v in edges:
        for w in graph.G.successors(v):
            if w == u or (v, w) not in edata or u not in val_rows:
                continue
            idx_w = graph.cache(w).index()
            ids_u = graph.cache(u).ids[val_rows[u]]
            have = np.array([i in idx_w for i in ids_u], dtype=bool)
            if have.sum() < 2:
                continue
            routes.append(((u, v, w), graph.cache(u).vectors(val_rows[u][have]),
                           graph.cache(w).vectors(graph.cache(w).rows(ids_u[have]))))
    starts = sorted({w[0] for w in walks})
    xs = {n: tensor(graph.cache(n).vectors(train_rows[n])) for n in starts}
    xv = {n: graph.cache(n).vectors(val_rows[n]) for n in starts}
    n_steps = steps_per_epoch or max(1, max(d["x"].shape[0] for d in edata.values()) // batch_size)

    def validate(nets):
        for net in nets.values():
            net.eval()
        with torch.no_grad():
            r1, cos = [], []
            for (a, b), d in edata.items():
                m = paired_retrieval(nets[a, b](tensor(d["xv"])).cpu().numpy(), d["yv"], d["labv"])
                r1.append(m["R@1"])
                cos.append(m["cos"])
            c1, closs = [], []
            for w in walks:
                x0 = tensor(xv[w[0]])
                z = x0
                for u, v in zip(w[:-1], w[1:]):
                    z = nets[u, v](z)
                m = paired_retrieval(z.cpu().numpy(), xv[w[0]])
                c1.append(m["R@1"])
                closs.append(1.0 - m["cos"])
            h1 = []
            for (u, v, w), x, y in routes:
                m = paired_retrieval(nets[v, w](nets[u, v](tensor(x))).cpu().numpy(), y)
                h1.append(m["R@1"])
        figs = {"edge_val_R@1": float(np.mean(r1)), "edge_val_cos": float(np.mean(cos)),
                "cycle_val_R@1": float(np.mean(c1)), "cycle_val_loss": float(np.mean(closs))}
        parts = [figs["edge_val_R@1"], figs["cycle_val_R@1"]]
        if h1:
            figs["route_val_R@1"] = float(np.mean(h1))
            parts.append(figs["route_val_R@1"])
        figs["val_key"] = float(np.mean(parts))
        return (figs["val_key"], figs["edge_val_cos"] - figs["cycle_val_loss"]), figs

    runs = []
    with torch.random.fork_rng(devices=[]):
        for w in ws:
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            Ts = {ab: copy.deepcopy(graph.translator(*ab)) for ab in edges}
            nets = {ab: T.net_.to(dev) for ab, T in Ts.items()}
            losses = {ab: make_loss(T.loss, temperature=(T.fit_report_ or {}).get("temperature")
                                    or T.temperature).to(dev) for ab, T in Ts.items()}
            params = [p for net in nets.values() for p in net.parameters()]
            params += [p for lf in losses.values() for p in lf.parameters()]
            opt = torch.optim.AdamW(params, lr=lr,
                                    weight_decay=float(Ts[edges[0]].weight_decay))
            key0, figs0 = validate(nets)
            best = (key0, 0, {ab: copy.deepcopy(n.state_dict()) for ab, n in nets.items()})
            curve, bad_epochs, epoch = [figs0], 0, 0
            for epoch in range(1, epochs + 1):
                for net in nets.values():
                    net.train()
                for _ in range(n_steps):
                    loss = 0.0
                    for ab, d in edata.items():
                        i = torch.randint(0, d["x"].shape[0], (batch_size,), generator=gen).to(dev)
                        loss = loss + losses[ab](nets[ab](d["x"][i]), d["y"][i], d["lab"][i])
                    loss = loss / len(edata)
                    if w > 0:
                        chosen = walks
                        if cycles_per_step is not None and cycles_per_step < len(walks):
                            pick = torch.randperm(len(walks), generator=gen)[:cycles_per_step]
                            chosen = [walks[int(p)] for p in pick]
                        cyc = 0.0
                        for walk in chosen:
                            xb = xs[walk[0]]
                            i = torch.randint(0, xb.shape[0], (batch_size,), generator=gen).to(dev)
                            x0 = xb[i]
                            z = x0
                            for u, v in zip(walk[:-1], walk[1:]):
                                z = nets[u, v](z)
                            cyc = cyc + (1 - F.cosine_similarity(z, x0, dim=-1)).mean()
                        loss = loss + w * cyc / len(chosen)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                key, figs = validate(nets)
                curve.append(figs)
                if key > best[0]:
                    best = (key, epoch, {ab: copy.deepcopy(n.state_dict())
                                         for ab, n in nets.items()})
                    bad_epochs = 0
                else:
                    bad_epochs += 1
                    if bad_epochs >= patience:
                        break
            for ab, net in nets.items():
                net.load_state_dict(best[2][ab])
                net.cpu().eval()
            runs.append({"weight": w, "key": best[0], "best_epoch": best[1],
                         "epochs_run": epoch, "curve": curve, "translators": Ts})
    win = max(runs, key=lambda r: r["key"])
    summary = {"method": "cycle", "cycle_weight": win["weight"], "best_epoch": win["best_epoch"],
               "epochs_run": win["epochs_run"], "max_length": int(max_length),
               "n_cycle_walks": len(walks), "steps_per_epoch": int(n_steps),
               "val_key": list(win["key"]),
               "weights": {str(r["weight"]): {"val_key": list(r["key"]),
                                               "best_epoch": r["best_epoch"],
                                               "curve": r["curve"]} for r in runs}}
    out = {}
    for ab, T in win["translators"].items():
        T.fit_report_ = {**(T.fit_report_ or {}), "sync": summary}
        out[ab] = T
    return _replace_edges(graph, linked, out)
