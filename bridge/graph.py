"""The modality graph: embedding spaces as nodes, trained translators as edges.

Built on :class:`networkx.DiGraph`. Node attributes: ``cache`` (a
:class:`~bridge.store.Cache` or None), ``modality``, ``language``, ``encoder``, ``dim``.
Edge attributes: ``translator`` (fitted), ``metrics`` (held-out figures: ``val_R@1``
and its lower confidence bound ``val_R@1_lcb``, ``val_cos``, ``test_R@1``,
``test_R@1_lcb``, ``test_cos`` and the pair counts ``n_train``, ``n_val``, ``n_test``),
``cost`` (planner cost from the lower bound of the validation R@1, see
:func:`bridge.planner.edge_cost`), ``split`` (how pairs were split: the rule, its counts and,
for a rule given as a dict, its ``groups``) and ``pair_table`` (for an edge trained from a pair
table: ``{"table": PairTable, "groups": "src" | "dst"}``, the table's rows that matched both
caches, oriented src -> dst, and which side's groups split the pairs; None otherwise). R@1 is
counted by :func:`bridge.metrics.paired_retrieval`: ties count against the query.

Node names follow ``modality[:language]@encoder`` (``text:de@e5``, ``audio@aisfx``); the
parts fill the node attributes unless they are given explicitly.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Sequence
from pathlib import Path

import networkx as nx
import numpy as np

from .errors import (
    BridgeError,
    CorruptFile,
    DimensionMismatch,
    DuplicateNode,
    EmptyData,
    InvalidParameter,
    NoPairs,
    NoRoute,
    SmallSampleWarning,
    UnknownNode,
)
from .chunks import release_rows
from .retrieval import l2_normalize
from .params import check_bool
from .planner import Route, edge_cost, k_best_routes, route_cost, wilson_lower_bound
from .store import (
    Cache,
    Pairs,
    PairTable,
    as_pair_table,
    check_embeddings,
    load_cache,
    pair_by_ids,
    pair_table,
    split_groups,
)

__all__ = ["ModalityGraph", "load_graph", "parse_node_name", "edge_kind", "MIN_TRAIN", "MIN_VAL",
           "WARN_VAL"]

#: an edge is refused with fewer training pairs than this (graph setting ``min_train``)
MIN_TRAIN = 2
#: an edge is refused with fewer validation pairs than this (graph setting ``min_val``)
MIN_VAL = 5
#: an edge scored on fewer validation pairs than this warns (graph setting ``warn_val``)
WARN_VAL = 30


def _as_int(name: str, value, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lowest:
        raise InvalidParameter(f"{name} must be an integer >= {lowest}, got {value!r}")
    return int(value)


def _check_rule(splits):
    """``splits`` if it is a valid split rule: None, ``"prefix"`` or a dict of disjoint groups."""
    if splits is None or (isinstance(splits, str) and splits == "prefix"):
        return splits
    if not isinstance(splits, dict):
        raise InvalidParameter(f"splits must be None, 'prefix' or a dict "
                               f"{{'train': groups, 'val': groups, 'test': groups}}, got {splits!r}")
    unknown = sorted(map(str, set(splits) - {"train", "val", "test"}))
    if unknown:
        raise InvalidParameter(f"splits: unknown keys {unknown}; expected 'train', 'val', 'test'")
    sets = {}
    for key, groups in splits.items():
        if isinstance(groups, (str, bytes)) or not hasattr(groups, "__iter__"):
            raise InvalidParameter(f"splits[{key!r}] must be a list of group names, got {groups!r}")
        sets[key] = set(map(str, groups))
    keys = sorted(sets)
    for i, k1 in enumerate(keys):
        for k2 in keys[i + 1:]:
            both = sorted(sets[k1] & sets[k2])
            if both:
                raise InvalidParameter(f"splits: {len(both)} groups are in both {k1!r} and {k2!r} "
                                       f"(first: {both[:3]}); a group may be in one split only")
    return splits


def parse_node_name(name: str) -> dict:
    """``"text:de@e5"`` -> ``{"modality": "text", "language": "de", "encoder": "e5"}``."""
    if not isinstance(name, str) or not name:
        raise InvalidParameter(f"node name must be a non-empty string, got {name!r}")
    space, _, encoder = name.partition("@")
    modality, _, language = space.partition(":")
    return {"modality": modality or None, "language": language or None, "encoder": encoder or None}


def pair_components(pairs: Pairs) -> np.ndarray:
    """Label each pair by its connected component in the bipartite pair graph.

    Pairs that share a row on either side share a label: the five captions of one image,
    the clips of one class. Training treats rows of one label as positives of each other.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ua, ia = np.unique(pairs.a_rows, return_inverse=True)
    ub, ib = np.unique(pairs.b_rows, return_inverse=True)
    n = ua.shape[0] + ub.shape[0]
    m = coo_matrix((np.ones(len(pairs)), (ia, ua.shape[0] + ib)), shape=(n, n))
    _, comp = connected_components(m, directed=False)
    return comp[ia]


class ModalityGraph:
    """Embedding spaces linked by trained translators; plans and runs multi-hop routes.

    Parameters
    ----------
    fractions : (train, val, test) fractions used to split paired groups of every edge.
    seed : seed of the group split and of training.
    splits : the graph's split rule, used by every edge and every evaluation that is not
        given another: ``None`` (seeded hash of the group, with ``fractions``),
        ``"prefix"`` (the group's ``train:``/``val:``/``test:`` prefix) or
        ``{"train": groups, "val": groups, "test": groups}``.
    min_train, min_val : the fewest training and validation pairs an edge may be trained
        and scored on; :meth:`connect` refuses a split with fewer (:class:`NoPairs`).
        Defaults: 2 and 5.
    warn_val : below this many validation pairs (default 30) :meth:`connect` warns with
        :class:`~bridge.errors.SmallSampleWarning`: the edge's R@1 is then a rough
        figure, which its cost already discounts (see :func:`bridge.planner.edge_cost`).

    Every setting is in :meth:`settings`; :meth:`copy` carries them all.
    """

    def __init__(self, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                 splits: str | dict | None = None, min_train: int = MIN_TRAIN,
                 min_val: int = MIN_VAL, warn_val: int = WARN_VAL):
        self.G = nx.DiGraph()
        try:
            fr = tuple(float(f) for f in fractions)
        except (TypeError, ValueError):
            fr = None
        if (fr is None or len(fr) != 3 or not all(math.isfinite(f) and f >= 0 for f in fr)
                or abs(sum(fr) - 1.0) > 1e-5):
            raise InvalidParameter(f"fractions must be three non-negative numbers summing to 1 "
                                   f"(train, val, test), got {fractions!r}")
        self.fractions = fr
        self.seed = _as_int("seed", seed, 0)
        self.splits = _check_rule(splits)
        self.min_train = _as_int("min_train", min_train, 1)
        self.min_val = _as_int("min_val", min_val, 1)
        self.warn_val = _as_int("warn_val", warn_val, 0)
        self._stats: dict[str, dict] = {}  # node name -> node_stats(), computed on demand
        #: the fitted route model (:meth:`calibrate`), None while uncalibrated
        self.calibration = None

    def settings(self) -> dict:
        """Every setting of the graph, as the keyword arguments of :class:`ModalityGraph`
        (JSON-ready: ``ModalityGraph(**g.settings())`` rebuilds an empty graph like ``g``)."""
        return {"fractions": list(self.fractions), "seed": self.seed, "splits": self.splits,
                "min_train": self.min_train, "min_val": self.min_val, "warn_val": self.warn_val}

    def copy(self) -> "ModalityGraph":
        """A graph with the same settings and a shallow copy of the nodes and edges.

        The copy's structure is its own (adding or removing nodes and edges leaves this
        graph alone); translators and caches are shared, not copied.
        """
        s = self.settings()
        s["splits"] = copy.deepcopy(s["splits"])
        g = ModalityGraph(**s)
        g.G = self.G.copy()
        g._stats = dict(self._stats)
        g.calibration = self.calibration
        return g

    # ------------------------------------------------------------------ nodes
    def __contains__(self, name) -> bool:
        return name in self.G

    def __len__(self) -> int:
        return self.G.number_of_nodes()

    @property
    def nodes(self) -> list[str]:
        return list(self.G.nodes)

    @property
    def edges(self) -> list[tuple[str, str]]:
        return list(self.G.edges)

    def node(self, name: str) -> dict:
        self._check_node(name)
        return self.G.nodes[name]

    def cache(self, name: str) -> Cache:
        c = self.node(name).get("cache")
        if c is None:
            raise BridgeError(f"node {name!r} holds no embeddings (its cache was not loaded)")
        return c

    def _check_node(self, *names):
        for n in names:
            if n not in self.G:
                raise UnknownNode(n, self.G.nodes)

    def add_node(self, name: str, cache: Cache | str | Path | np.ndarray | None = None,
                 dim: int | None = None, **attrs) -> None:
        """Add a node without training anything (``add_modality`` without ``link_to``)."""
        if name in self.G:
            raise DuplicateNode(f"node {name!r} is already in the graph; remove it first or pick another name")
        cache = _as_cache(cache, name)
        if cache is not None:
            if dim is not None and dim != cache.dim:
                raise DimensionMismatch(f"node {name!r}: dim={dim} given but its cache has dimension {cache.dim}")
            dim = cache.dim
        if dim is None:
            raise InvalidParameter(f"node {name!r}: give a cache or its dimension (dim), got neither")
        info = parse_node_name(name)
        if cache is not None:
            for k in ("modality", "language", "encoder"):
                if cache.meta.get(k) is not None and info.get(k) is None:
                    info[k] = cache.meta[k]
        info.update({k: v for k, v in attrs.items() if v is not None})
        self.G.add_node(name, cache=cache, dim=int(dim), **info)
        self._stats.pop(name, None)

    def node_stats(self, name: str) -> dict:
        """Statistics of a node's own rows, from its whole cache (no labels needed):
        ``mean`` (float32 vector), ``mean_norm`` (mean L2 norm of the rows) and ``n``.

        Read once, in chunks (a memory-mapped cache is streamed), and kept until the node
        is replaced. ``connect(..., node_center=True)`` centres edges by these means.
        """
        from .chunks import column_stats

        self._check_node(name)
        if name not in self._stats:
            self._stats[name] = column_stats(self.cache(name).emb, name=f"node {name!r}")
        return self._stats[name]

    def add_modality(self, name: str, cache, link_to: str | Sequence[str] | None = None,
                     translator="mlp", loss: str | None = None, directions: str = "both",
                     pairs=None, splits: dict | None = None, cycle_weight: float = 0.0,
                     modality: str | None = None, language: str | None = None,
                     encoder: str | None = None, **fit_options) -> dict:
        """Add a node and, when ``link_to`` names one node (or several), train its edges.

        Every edge is trained and scored before the node enters the graph: if anything
        fails, the graph is unchanged. Returns ``{(src, dst): metrics}`` for new edges.
        Other arguments are those of :meth:`connect`.
        """
        if name in self.G:
            raise DuplicateNode(f"node {name!r} is already in the graph; remove it first or pick another name")
        targets = [] if link_to is None else [link_to] if isinstance(link_to, str) else list(link_to)
        self._check_node(*targets)
        staged = self.copy()  # every setting; translators and caches are shared, not copied
        staged.add_node(name, cache, modality=modality, language=language, encoder=encoder)
        reports = {}
        for t in targets:
            reports.update(staged.connect(name, t, translator=translator, loss=loss,
                                          directions=directions, pairs=pairs, splits=splits,
                                          cycle_weight=cycle_weight, **fit_options))
        self.G = staged.G
        self._stats.update(staged._stats)
        return reports

    def remove_node(self, name: str) -> None:
        self._check_node(name)
        self.G.remove_node(name)
        self._stats.pop(name, None)

    # ------------------------------------------------------------------ edges
    def pairs(self, a: str, b: str, pairs=None) -> Pairs:
        """Paired rows of nodes ``a`` and ``b``: by shared ids, or through ``pairs``
        (a :class:`Pairs`, a list of ``(id_a, id_b)`` or a path to a CSV/TSV table)."""
        ca, cb = self.cache(a), self.cache(b)
        if pairs is None:
            return pair_by_ids(ca, cb)
        if isinstance(pairs, Pairs):
            return pairs
        return pair_table(ca, cb, pairs)

    def split(self, pairs: Pairs, splits: dict | None = None) -> dict[str, np.ndarray]:
        """Train/val/test indices into ``pairs``: by group (see :func:`split_groups`),
        from ``splits = {"train": groups, "val": groups, "test": groups}``, or with
        ``splits="prefix"`` from the group's prefix (``"train:12"`` is a train group; see
        :func:`bridge.store.concat_caches`). ``splits=None`` applies the graph's rule."""
        return self._split_groups(pairs.groups, self.splits if splits is None else _check_rule(splits))

    def _split_groups(self, groups: np.ndarray, splits) -> dict[str, np.ndarray]:
        if splits is None:
            return split_groups(groups, self.fractions, self.seed)
        if splits == "prefix":
            names = ("train", "val", "test")
            code = {k: i for i, k in enumerate(names)}  # one small int a group, no new strings
            pre = np.fromiter((code.get(str(g).partition(":")[0], len(names)) for g in groups),
                              np.int8, len(groups))
            return {k: np.flatnonzero(pre == i) for i, k in enumerate(names)}
        out = {}
        for key in ("train", "val", "test"):
            wanted = set(map(str, splits.get(key, ())))
            out[key] = np.flatnonzero(np.isin(groups, list(wanted)))
        return out

    def connect(self, a: str, b: str, translator="mlp", loss: str | None = None,
                directions: str = "both", pairs=None, splits: dict | None = None,
                cycle_weight: float = 0.0, post: str | None = None, node_center: bool = False,
                prior=None, prior_weight="auto", prior_rows: int | None = None,
                prior_mode: str = "start", **fit_options) -> dict:
        """Train translator edge(s) between existing nodes ``a`` and ``b``.

        ``translator`` is a kind (``"linear"``, ``"procrustes"``, ``"mlp"``,
        ``"relative"``, ``"identity"``, or ``"auto"``: fit several kinds and keep the one
        that validation favours on R@1 and cosine, see
        :class:`~bridge.translators.AutoTranslator`) or an unfitted
        :class:`~bridge.translators.Translator` to clone;
        ``loss`` and ``fit_options`` go to it (``loss`` only for ``"mlp"``).
        ``directions`` is ``"both"``, ``"forward"`` (a -> b) or ``"backward"`` (b -> a).
        With ``directions="both"``, an MLP and ``cycle_weight > 0``, both directions are
        trained together with a cycle-consistency term
        (:meth:`~bridge.translators.MLPTranslator.fit_pair`). ``post`` adds post-hoc alignment
        fitted on the training pairs after training (``"center"``, ``"procrustes"`` or
        ``"center+procrustes"``, see :class:`~bridge.translators.PostHocTranslator`).
        ``node_center=True`` trains and applies each edge between its nodes' own means
        (:meth:`node_stats`; :class:`~bridge.translators.CentredTranslator`): the source
        node's mean is removed before the translator and the target node's added after
        it, so rows of another node reaching the edge through centred identity edges
        arrive centred by their own node's mean.

        ``prior="route"`` (or a route: a :class:`~bridge.planner.Route` or list of nodes)
        trains a weak edge with the graph's help (:mod:`bridge.borrow`): the source node's
        training rows translated along the cheapest other route between the two nodes join
        the real pairs as pseudo pairs, weighted ``prior_weight`` times the real pairs
        (``"auto"``: picked on validation R@1 from :data:`bridge.borrow.PRIOR_WEIGHTS`, 0
        included); ``prior_rows`` caps the rows translated (default
        :data:`bridge.borrow.PRIOR_ROWS`). Ridge and Procrustes edges are fitted on the
        weighted pairs; an MLP starts its linear path from that fit and trains on the real
        pairs (``prior_mode="start"``) or on the real pairs plus the pseudo pairs
        (``"mix"``). Each direction borrows from its own route.

        Pairs are split by ``splits`` or else the graph's rule. A split with fewer than
        ``min_train`` training or ``min_val`` validation pairs (graph settings, 2 and 5 by
        default) is refused with :class:`NoPairs` naming the counts and the rule, before
        anything is trained; fewer than ``warn_val`` (30) validation pairs warns with
        :class:`~bridge.errors.SmallSampleWarning`. Returns ``{(src, dst): metrics}``.
        """
        from .translators import CentredTranslator, make_translator
        from .translators.posthoc import PostHocTranslator, parse_post

        post_steps = parse_post(post)
        node_center = check_bool("node_center", node_center)
        self._check_node(a, b)
        if directions not in ("both", "forward", "backward"):
            raise InvalidParameter(f"directions must be 'both', 'forward' or 'backward', got {directions!r}")
        if not (isinstance(cycle_weight, numbers.Real) and math.isfinite(cycle_weight)
                and cycle_weight >= 0):
            raise InvalidParameter(f"cycle_weight must be a finite number >= 0, got {cycle_weight!r}")
        table = None if pairs is None or isinstance(pairs, Pairs) else as_pair_table(pairs)
        P = self.pairs(a, b, pairs if table is None else table)
        idx = self.split(P, splits)
        self.check_split_sizes(a, b, P, idx, self.splits if splits is None else splits)
        if table is not None:
            table = _matched_rows(table, self.cache(a), self.cache(b))
        labels = pair_components(P)
        ca, cb = self.cache(a), self.cache(b)
        params = dict(fit_options)
        if loss is not None:
            params["loss"] = loss
        todo = [(a, b, P)] if directions != "backward" else []
        if directions in ("both", "backward"):
            todo.append((b, a, P.reversed()))
        rule = self.splits if splits is None else splits
        split_info = {"fractions": list(self.fractions), "seed": self.seed,
                      "rule": rule if isinstance(rule, str) else ("groups" if rule else "hash"),
                      **{f"n_{k}": int(v.size) for k, v in idx.items()}}
        if isinstance(rule, dict):
            split_info["groups"] = {k: [str(g) for g in v] for k, v in rule.items()}
        from .training import progress_desc

        fitted = {}
        kind = translator if isinstance(translator, str) else getattr(translator, "kind", None)
        if node_center and directions == "both" and cycle_weight > 0:
            raise InvalidParameter(f"node_center=True cannot be combined with cycle_weight="
                                   f"{cycle_weight!r} (both directions trained together); train "
                                   "the directions separately or leave node_center=False")
        borrow = {}
        if prior is not None:
            from .borrow import PRIOR_ROWS, check_prior, prior_route, prior_rows as held_rows

            prior_rows = PRIOR_ROWS if prior_rows is None else prior_rows
            check_prior(prior, prior_weight, prior_rows, prior_mode, kind)
            if cycle_weight > 0 or node_center:
                raise InvalidParameter("prior= cannot be combined with cycle_weight > 0 or "
                                       "node_center=True")
            held = np.concatenate([idx["val"], idx["test"]])
            for src, dst, Q in todo:  # every route and row set checked before any training
                given = prior
                if not isinstance(prior, str) and (src, dst) != (a, b):
                    given = tuple(reversed(prior.nodes if isinstance(prior, Route) else prior))
                r = prior_route(self, src, dst, given)
                rows = held_rows(self, src, Q.a_rows[held], prior_rows, self.seed)
                borrow[(src, dst)] = (r, rows)
        if directions == "both" and cycle_weight > 0:
            if kind != "mlp":
                raise InvalidParameter(f"cycle_weight={cycle_weight!r} needs translator='mlp' (both "
                                       f"directions trained together), got translator={kind!r}")
            tr, va = idx["train"], idx["val"]
            with progress_desc(f"{a} <-> {b}"):
                fwd, bwd = make_translator(translator, **params).fit_pair(
                    ca.vectors(P.a_rows[tr]), cb.vectors(P.b_rows[tr]),
                    ca.vectors(P.a_rows[va]), cb.vectors(P.b_rows[va]),
                    labels=labels[tr], labels_val=labels[va], cycle_weight=cycle_weight)
            fitted = {(a, b): (fwd, P), (b, a): (bwd, P.reversed())}
        else:
            for src, dst, Q in todo:
                cs, cd = self.cache(src), self.cache(dst)
                T = make_translator(translator, **params)
                if node_center:
                    T = CentredTranslator(T, in_mean=self.node_stats(src)["mean"],
                                          out_mean=self.node_stats(dst)["mean"])
                tr, va = idx["train"], idx["val"]
                # kinds fitted from streamed moments read the training rows block by block
                train_rows = _lazy_rows if T.streams else _rows
                if (src, dst) in borrow:
                    from .borrow import fit_with_prior

                    r, rows = borrow[(src, dst)]
                    Xu = cs.vectors(rows)
                    with progress_desc(f"{src} -> {dst}"):
                        T, _ = fit_with_prior(
                            T, cs.vectors(Q.a_rows[tr]), cd.vectors(Q.b_rows[tr]),
                            cs.vectors(Q.a_rows[va]), cd.vectors(Q.b_rows[va]),
                            labels[tr], labels[va], Xu, self.translate(Xu, r),
                            weight=prior_weight, mode=prior_mode, seed=self.seed)
                    T.fit_report_["prior"]["route"] = list(r.nodes)
                    fitted[(src, dst)] = (T, Q)
                    continue
                with progress_desc(f"{src} -> {dst}"):  # names the training progress bar
                    T.fit(train_rows(cs, Q.a_rows[tr]), train_rows(cd, Q.b_rows[tr]),
                          cs.vectors(Q.a_rows[va]), cd.vectors(Q.b_rows[va]),
                          labels=labels[tr], labels_val=labels[va])
                fitted[(src, dst)] = (T, Q)
        if post_steps:
            tr = idx["train"]
            for key, (T, Q) in fitted.items():
                cs, cd = self.cache(key[0]), self.cache(key[1])
                W = PostHocTranslator(T, "+".join(post_steps))
                W.fit(cs.vectors(Q.a_rows[tr]), cd.vectors(Q.b_rows[tr]))
                fitted[key] = (W, Q)
        reports = {}
        for (src, dst), (T, Q) in fitted.items():
            metrics = self._edge_metrics(T, Q, idx, labels, src, dst)
            stored = None if table is None else (
                {"table": table, "groups": "src"} if (src, dst) == (a, b)
                else {"table": table.reversed(), "groups": "dst"})
            self._put_edge(src, dst, T, metrics, dict(split_info), stored)
            reports[(src, dst)] = metrics
        return reports

    def check_split_sizes(self, a, b, P: Pairs, idx, rule) -> None:
        """Refuse a split too small to train or score an edge ``a -> b``; warn when val is small.

        ``idx`` is :meth:`split`'s result for ``P`` under ``rule``. Fewer than ``min_train``
        training or ``min_val`` validation pairs raise :class:`NoPairs` naming the counts and
        the rule; fewer than ``warn_val`` validation pairs warn with
        :class:`~bridge.errors.SmallSampleWarning`. :meth:`connect` calls it before training.
        """
        counts = {k: int(v.size) for k, v in idx.items()}
        shown = ", ".join(f"{k} {v}" for k, v in counts.items())
        rule_name = (f"{rule!r}" if isinstance(rule, str) else "a dict of groups" if rule
                     else f"hash split with fractions {list(self.fractions)}, seed {self.seed}")
        where = (f"edge {a!r} -> {b!r}: {len(P)} pairs in {len(np.unique(P.groups))} groups "
                 f"split by {rule_name} into {shown}")
        if rule == "prefix" and (counts["train"] < self.min_train or counts["val"] < self.min_val):
            bare = [str(g) for g in P.groups if str(g).split(":", 1)[0] not in ("train", "val", "test")]
            if bare:  # the real cause: rows without a split prefix belong to no split
                raise NoPairs(f"edge {a!r} -> {b!r}: ids of node {a!r} have no train:/val:/test: "
                              f"prefix (first id: {bare[0]!r}); build the cache with "
                              "concat_caches or use splits = {train/val/test: groups} (or no rule: "
                              "the hash split)")
        for key, least in (("train", self.min_train), ("val", self.min_val)):
            if counts[key] == 0:
                raise NoPairs(f"{where}; the {key} split holds no pairs; more paired groups "
                              "are needed")
            if counts[key] < least:
                raise NoPairs(f"{where}; the {key} split holds {counts[key]} pairs, fewer than "
                              f"the graph's min_{key}={least}; give more paired groups (or "
                              f"lower min_{key})")
        if counts["val"] < self.warn_val:
            warnings.warn(f"{where}; its val R@1 is measured on only {counts['val']} pairs "
                          f"(fewer than warn_val={self.warn_val}): a rough figure, which the "
                          "edge's cost discounts", SmallSampleWarning, stacklevel=3)

    def _edge_metrics(self, T, Q: Pairs, idx, labels, src, dst) -> dict:
        return held_out_metrics(T, self.cache(src), self.cache(dst), Q.a_rows, Q.b_rows, idx,
                                labels)

    def add_edge(self, a: str, b: str, translator, metrics: dict | None = None) -> None:
        """Put an already fitted translator on edge ``a -> b``."""
        self._check_node(a, b)
        translator.check_fitted()
        for node, dim, side in ((a, translator.in_dim_, "input"), (b, translator.out_dim_, "output")):
            if self.G.nodes[node]["dim"] != dim:
                raise DimensionMismatch(
                    f"translator {side} dimension {dim} does not match node {node!r} "
                    f"(dimension {self.G.nodes[node]['dim']})"
                )
        self._put_edge(a, b, translator, dict(metrics or {}), {})

    def _put_edge(self, a, b, T, metrics, split_info, pair_info=None):
        self.G.add_edge(a, b, translator=T, metrics=metrics, cost=edge_cost(metrics),
                        kind=edge_kind(T), split=split_info, pair_table=pair_info)

    def split_rule(self, a: str, b: str):
        """The split rule the edge ``a -> b`` (else ``b -> a``) was trained with: ``"prefix"``,
        a dict of groups, or None (the graph's rule, also when no edge joins them)."""
        self._check_node(a, b)
        for u, v in ((a, b), (b, a)):
            if self.G.has_edge(u, v):
                return _edge_rule(self.G.edges[u, v])
        return None

    def edge_pairs(self, a: str, b: str) -> tuple[Pairs, "str | dict | None"]:
        """The pairs of ``a`` and ``b`` and the split rule, as an edge between them was
        trained: the pair table stored on edge ``a -> b`` (else on ``b -> a``, reversed) and
        that edge's rule; without a stored table, the shared ids and the rule of an edge
        between them (``None``: the graph's rule). Raises :class:`NoPairs` when the nodes
        share no ids and no edge between them stores a pair table."""
        self._check_node(a, b)
        direct = [(u, v) for u, v in ((a, b), (b, a)) if self.G.has_edge(u, v)]
        for u, v in direct:
            d = self.G.edges[u, v]
            info = d.get("pair_table")
            if info is None:
                continue
            T = info["table"]
            if info["groups"] == "src":
                P = pair_table(self.cache(u), self.cache(v), T)
            else:
                P = pair_table(self.cache(v), self.cache(u), T.reversed()).reversed()
            return (P if (u, v) == (a, b) else P.reversed()), _edge_rule(d)
        rule = self.split_rule(a, b)
        try:
            P = pair_by_ids(self.cache(a), self.cache(b))
        except NoPairs as e:
            composed = None if direct else self.composed_pairs(a, b)
            if composed is not None:
                return composed
            raise NoPairs(f"{e}: no edge between {a!r} and {b!r} stores a pair table (edges "
                          "trained with connect(..., pairs=table) keep theirs), and no route "
                          f"joins them; pass pairs= (a PairTable or a list of ({a!r} id, "
                          f"{b!r} id) pairs)") from e
        return P, rule

    def composed_pairs(self, a: str, b: str) -> tuple[Pairs, "str | dict | None"] | None:
        """Pairs of ``a`` and ``b`` chained along the cheapest route's hops, for nodes that
        share no ids and no pair table: a clip paired (by its edge's table) with the English
        word of its digit, that word paired (by id) with the German word, gives the clip and
        the German word. Groups and split rule are those of the first hop that stores a pair
        table (else the first hop), so a composed test pair is a test pair of that edge.
        None when no route joins the nodes or nothing chains through. The route is the
        cheapest by edge cost whether or not the graph is calibrated, so the held-out pairs
        of two nodes do not depend on the route model."""
        try:
            nodes = k_best_routes(self.G, a, b, k=1)[0].nodes
        except NoRoute:
            return None
        hops = [self.edge_pairs(u, v) for u, v in zip(nodes, nodes[1:])]
        tabled = [i for i, (u, v) in enumerate(zip(nodes, nodes[1:]))
                  if any(self.G.has_edge(x, y) and self.G.edges[x, y].get("pair_table") is not None
                         for x, y in ((u, v), (v, u)))]
        keep = tabled[0] if tabled else 0
        first = hops[0][0]
        rows, at, group = np.arange(len(first)), first.b_rows, first.groups
        for i, (P, _) in enumerate(hops[1:], 1):
            # every composed pair so far, joined with every pair of this hop leaving its row
            order = np.argsort(P.a_rows, kind="stable")
            lo = np.searchsorted(P.a_rows[order], at, "left")
            n = np.searchsorted(P.a_rows[order], at, "right") - lo
            left = np.repeat(np.arange(at.size), n)
            right = order[np.repeat(lo, n) + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)]
            rows, at = rows[left], P.b_rows[right]
            group = P.groups[right] if i == keep else group[left]
        src_rows = first.a_rows[rows]
        if src_rows.size == 0:
            return None
        _, first_of = np.unique(np.stack([src_rows, at]), axis=1, return_index=True)
        first_of = np.sort(first_of)
        return (Pairs(src_rows[first_of], at[first_of], np.asarray(group)[first_of]),
                hops[keep][1])

    def edge(self, a: str, b: str) -> dict:
        self._check_node(a, b)
        if not self.G.has_edge(a, b):
            raise BridgeError(f"no edge {a!r} -> {b!r}; edges from {a!r}: {sorted(self.G.successors(a))}")
        return self.G.edges[a, b]

    def translator(self, a: str, b: str):
        return self.edge(a, b)["translator"]

    # ------------------------------------------------------------------ routes
    def calibrate(self, k: int = 3, max_hops: int = 4, **options):
        """Fit the route model on this graph's validation routes and keep it
        (:func:`bridge.calibration.calibrate`; ``options``: ``features``, ``lambdas``,
        ``nodes``, ``shift_rows``, ``log``). From then on :meth:`route` predicts every
        route's R@1 and, with the default ``weight="cost"``, picks the route predicted
        best. The calibration is saved with the graph. Returns the
        :class:`~bridge.calibration.Calibration`."""
        from .calibration import calibrate

        self.calibration = calibrate(self, k=k, max_hops=max_hops, **options)
        return self.calibration

    def uncalibrate(self) -> None:
        """Drop the route model: the planner goes back to the edge costs."""
        self.calibration = None

    def synchronize(self, method: str = "universe", **options) -> "ModalityGraph":
        """A new graph whose edges agree around cycles (:func:`bridge.sync.synchronize`);
        this graph is left as it is."""
        from .sync import synchronize

        return synchronize(self, method, **options)

    def suggest(self, routes=None, **options) -> list:
        """Where new paired data would help the ``routes`` a user cares about most: node
        pairs for a new direct edge, or existing edges for more pairs, ranked by the gain
        in predicted R@1 (:func:`bridge.suggest.suggest`)."""
        from .suggest import suggest

        return suggest(self, routes, **options)

    def route(self, src: str, dst: str, k: int = 1, weight="cost", gallery: int | None = None):
        """The best route (``k=1``), or a list of the ``k`` best, best first.

        Uncalibrated, the best route is the cheapest by ``weight`` (an edge attribute
        name, default the edge ``cost``, or a function ``f(u, v, data)``), and routes say
        ``calibrated=False``. Calibrated (:meth:`calibrate`), every route carries its
        predicted R@1 and standard deviation for ``gallery`` rows (default: the pair's
        test gallery, see :meth:`bridge.calibration.Calibration.default_gallery`), and
        with ``weight="cost"`` routes are ranked by predicted R@1, their cost being
        ``-ln`` of it; another ``weight`` still ranks by that weight.
        """
        from .calibration import check_gallery

        gallery = check_gallery(gallery)
        cal = self.calibration
        if cal is not None and isinstance(weight, str) and weight == "cost":
            self._check_node(src, dst)
            routes = cal.plan(self, src, dst, k=k, gallery=gallery)
        else:
            routes = k_best_routes(self.G, src, dst, k=k, weight=weight)
            if cal is not None:
                routes = [cal.annotate(self, r, gallery) for r in routes]
        return routes[0] if k == 1 else routes

    def all_routes(self, sources=None, weight="cost") -> dict:
        """The best route of every reachable ordered node pair, ``{(src, dst): Route}``
        (uncalibrated: :func:`bridge.planner.all_best_routes`, one Dijkstra per source
        node; calibrated with ``weight="cost"``: :meth:`route` for every pair)."""
        from .planner import all_best_routes

        if self.calibration is None or not (isinstance(weight, str) and weight == "cost"):
            out = all_best_routes(self.G, sources, weight)
            if self.calibration is not None:
                out = {p: self.calibration.annotate(self, r) for p, r in out.items()}
            return out
        srcs = list(self.G.nodes) if sources is None else list(sources)
        self._check_node(*srcs)
        out = {}
        for s in srcs:
            for d in nx.descendants(self.G, s):
                out[(s, d)] = self.route(s, d)
        return out

    def as_route(self, route) -> Route:
        """``route`` as a :class:`Route`: a Route as it is; a list of nodes joined by edges,
        with its cost; ``(src, dst)`` with no edge between them, the cheapest planned route.
        Raises :class:`~bridge.errors.UnknownNode` for a node not in the graph."""
        if isinstance(route, Route):
            return route
        nodes = tuple(route)
        self._check_node(*nodes)
        if len(nodes) == 2 and not self.G.has_edge(*nodes) and nodes[0] != nodes[1]:
            return self.route(*nodes)
        cost, costs = route_cost(self.G, nodes)
        r = Route(nodes, cost, costs)
        if self.calibration is not None:
            r = self.calibration.annotate(self, r, as_cost=True)
        return r

    def translate(self, x, route, k: int = 1, combine: str = "mean", out=None,
                  chunk_size: int | None = None) -> np.ndarray:
        """Translate rows ``x`` along ``route``, a block of rows at a time.

        ``route`` is a :class:`Route`, a list of nodes, or ``(src, dst)`` (the planner picks
        the cheapest route). With ``k > 1`` and ``(src, dst)``, the ``k`` cheapest routes are
        run and their L2-normalised outputs averaged (``combine="mean"``) or averaged with
        weights ``exp(-cost)`` (``combine="weighted"``).

        ``x`` may be a memory map larger than memory: its shape and width are checked first
        without reading it, then ``chunk_size`` rows at a time (default
        :data:`bridge.chunks.TRANSLATE_CHUNK`) are checked for NaN/inf, cast to float32,
        run through every hop and written to ``out[s:e]``, so working memory does not grow
        with the number of rows. ``out`` (optional) is a writable float array of shape
        ``(n, dst_dim)``, e.g. ``np.lib.format.open_memmap(path, "w+", np.float32,
        (n, dst_dim))`` to keep the result on disk; it is returned. When a block fails its
        check the rows before it are already written to ``out``.
        """
        from .chunks import TRANSLATE_CHUNK, check_chunk_size, check_finite_rows, check_header
        from .chunks import read_rows

        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidParameter(f"parameter 'k' must be a positive integer (routes to "
                                   f"average), got {k!r}")
        if combine not in ("mean", "weighted"):
            raise InvalidParameter(f"parameter 'combine' must be 'mean' or 'weighted', got "
                                   f"{combine!r}")
        chunk = check_chunk_size(TRANSLATE_CHUNK if chunk_size is None else chunk_size)
        if k > 1:
            nodes = route.nodes if isinstance(route, Route) else tuple(route)
            routes = self.route(nodes[0], nodes[-1], k=k)
            routes = routes if isinstance(routes, list) else [routes]
            if combine == "mean":
                w = np.ones(len(routes))
            else:
                w = np.exp(-np.array([r.cost for r in routes], dtype=np.float64))
            w = (w / w.sum()).astype(np.float32)
        else:
            routes, w = [self.as_route(route)], None
        src, dst = routes[0].src, routes[0].nodes[-1]
        x = check_header(x, "x", dim=self.G.nodes[src]["dim"])
        n, d_out = int(x.shape[0]), int(self.G.nodes[dst]["dim"])
        if out is None:
            out = np.empty((n, d_out), dtype=np.float32)
        elif not isinstance(out, np.ndarray) or out.shape != (n, d_out) \
                or out.dtype not in (np.float16, np.float32, np.float64) \
                or not out.flags.writeable:
            raise InvalidParameter(
                f"parameter 'out' must be a writable float16/float32/float64 array of shape "
                f"({n}, {d_out}) (rows of x, dimension of {dst!r}); got "
                f"{type(out).__name__} of shape {getattr(out, 'shape', None)}, dtype "
                f"{getattr(out, 'dtype', None)}"
                + ("" if getattr(getattr(out, "flags", None), "writeable", True)
                   else ", read-only"))
        f16_max = float(np.finfo(np.float16).max)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            raw = read_rows(x, slice(s, e))
            xc = raw.astype(np.float32, copy=False)
            # float16 and float32 keep NaN/inf through the cast (checked in float32, fast);
            # a float64 value too large for float32 is refused as it is
            check_finite_rows(raw if raw.dtype.itemsize > 4 else xc, "x", s)
            del raw
            if w is None:
                y = self._run_route(xc, routes[0])
            else:
                y = None
                for wi, r in zip(w, routes):
                    part = l2_normalize(self._run_route(xc, r), check=False)
                    part *= wi
                    y = part if y is None else y.__iadd__(part)
            if out.dtype == np.float16 and np.abs(y).max() > f16_max:
                raise InvalidParameter(
                    f"parameter 'out' is float16 but rows {s}..{e - 1} translate to values "
                    f"up to {float(np.abs(y).max()):.6g}, over the float16 limit "
                    f"{f16_max:.0f}; pass a float32 'out'")
            out[s:e] = y
            release_rows(out, s, e)  # written pages of a memory-mapped out leave the RSS
        return out

    def _run_route(self, x32: np.ndarray, r: Route) -> np.ndarray:
        """Float32 rows run through every hop of route ``r``."""
        y = x32
        for u, v in r.edges:
            y = self.G.edges[u, v]["translator"].transform(y)
        return np.asarray(y, dtype=np.float32)

    # ------------------------------------------------------------------ evaluation
    def test_rows(self, name: str) -> np.ndarray:
        """Rows of a node whose group falls in the test split (the graph's split rule)."""
        return self.split_rows(name)["test"]

    def split_rows(self, name: str, splits=None) -> dict[str, np.ndarray]:
        """``{"train", "val", "test"}`` -> rows of node ``name`` whose group falls in that
        split (by ``splits``, default the graph's rule; see :meth:`split`)."""
        rule = self.splits if splits is None else _check_rule(splits)
        return self._split_groups(self.cache(name).group_of_rows(), rule)

    def walk(self, nodes: Sequence[str], rows=None) -> dict:
        """Run rows of ``nodes[0]`` along the walk ``nodes`` and score every step.

        ``rows`` defaults to the test rows of the first node. Returns the per-sample
        reconstruction loss ``1 - cos(x, x_end)`` with mean and median (when the walk is
        closed), the cycle R@1 (the end point retrieves its own start among all rows
        used), and for every hop whose true target rows are known (shared ids), that
        hop's own mean cosine and R@1 against the true embeddings.
        """
        from .metrics import paired_retrieval, reconstruction_loss

        nodes = list(nodes)
        if len(nodes) < 2:
            raise InvalidParameter(f"a walk needs at least two nodes, got {nodes}")
        self._check_node(*nodes)
        for u, v in zip(nodes[:-1], nodes[1:]):
            if not self.G.has_edge(u, v):
                raise BridgeError(f"walk step {u!r} -> {v!r} has no edge; use route() to plan one")
        c0 = self.cache(nodes[0])
        rows = self.test_rows(nodes[0]) if rows is None else _check_rows(rows, len(c0), nodes[0])
        if rows.size == 0:
            raise EmptyData(f"walk from {nodes[0]!r}: no rows to run (its test split is empty)")
        ids = c0.ids[rows]
        x0 = c0.vectors(rows)
        out = x0
        hops = []
        for u, v in zip(nodes[:-1], nodes[1:]):
            out = self.G.edges[u, v]["translator"].transform(out)
            hop = {"src": u, "dst": v}
            cv = self.G.nodes[v].get("cache")
            if cv is not None:
                idx = cv.index()
                have = np.array([k in idx for k in ids])
                if have.any():
                    true = cv.vectors(cv.rows(ids[have]))
                    m = paired_retrieval(out[have], true, ids[have])
                    hop.update({"R@1": m["R@1"], "cos": m["cos"], "n": int(have.sum())})
            hops.append(hop)
        report = {"nodes": nodes, "n": int(len(rows)), "hops": hops}
        if nodes[0] == nodes[-1]:
            rec = reconstruction_loss(x0, out)
            m = paired_retrieval(out, x0, ids)
            report.update({"loss_per_sample": rec["per_sample"], "loss_mean": rec["mean"],
                           "loss_median": rec["median"], "cycle_R@1": m["R@1"]})
        return report

    def reconstruction(self, walk: Sequence[str], x=None) -> dict:
        """``1 - cos(x, x_reconstructed)`` per sample around the closed walk ``walk``.

        ``x`` defaults to the test rows of ``walk[0]``. Returns ``per_sample``, ``mean``,
        ``median``.
        """
        from .metrics import reconstruction_loss

        walk = list(walk)
        if len(walk) < 2 or walk[0] != walk[-1]:
            raise InvalidParameter(f"a reconstruction walk must start and end at the same node, got {walk}")
        if x is None:
            x = self.cache(walk[0]).vectors(self.test_rows(walk[0]))
        x = check_embeddings(x, "x", dim=self.G.nodes[walk[0]]["dim"])
        return reconstruction_loss(x, self.translate(x, walk))

    def summary(self) -> dict:
        """Nodes with their attributes and edges with their metrics and costs (JSON-ready);
        on a calibrated graph also ``calibration`` (its fitted figures)."""
        out = {
            "nodes": [{"name": n, **_node_attrs(d)} for n, d in self.G.nodes(data=True)],
            "edges": [{"src": u, "dst": v, "kind": d["kind"], "cost": d["cost"],
                       "metrics": d["metrics"]} for u, v, d in self.G.edges(data=True)],
        }
        if self.calibration is not None:
            out["calibration"] = self.calibration.summary()
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path, caches: str = "auto", overwrite: bool = False) -> Path:
        """Write the graph to folder ``path`` atomically (see :func:`bridge.graph_io.save_graph`)."""
        from .graph_io import save_graph

        return save_graph(self, path, caches=caches, overwrite=overwrite)



def held_out_metrics(T, src: Cache, dst: Cache, src_rows, dst_rows, idx, labels) -> dict:
    """The held-out metrics an edge records (:meth:`ModalityGraph.connect`): for the val
    and test parts of ``idx`` (indices into the pairs ``src_rows[i] -> dst_rows[i]``), R@1
    of ``T``'s translations, its Wilson lower bound, cosine and the number of pairs, plus
    ``n_train``."""
    from .metrics import paired_retrieval

    out = {"n_train": int(idx["train"].size)}
    for key in ("val", "test"):
        rows = idx[key]
        if rows.size == 0:
            continue
        m = paired_retrieval(T.transform(src.vectors(src_rows[rows])),
                             dst.vectors(dst_rows[rows]), labels[rows])
        out[f"{key}_R@1"] = m["R@1"]
        out[f"{key}_R@1_lcb"] = wilson_lower_bound(m["R@1"], rows.size)
        out[f"{key}_cos"] = m["cos"]
        out[f"n_{key}"] = int(rows.size)
    return out


def _check_rows(rows, n: int, node: str) -> np.ndarray:
    """``rows`` as a non-empty 1-D int array of row numbers of a node with ``n`` rows."""
    r = np.asarray(rows)
    if r.size == 0:
        raise EmptyData(f"rows of {node!r}: no row numbers given (shape {r.shape})")
    if r.ndim != 1:
        raise InvalidParameter(f"rows of {node!r} must be a 1-D list of row numbers, got shape {r.shape}")
    if r.dtype == bool or not np.issubdtype(r.dtype, np.integer):
        raise InvalidParameter(f"rows of {node!r} must be integer row numbers, got dtype {r.dtype}")
    bad = r[(r < 0) | (r >= n)]
    if bad.size:
        raise InvalidParameter(f"rows of {node!r}: row {int(bad[0])} is outside 0..{n - 1}")
    return r.astype(np.int64, copy=False)


def _rows(cache: Cache, rows) -> np.ndarray:
    return cache.vectors(rows)


def _lazy_rows(cache: Cache, rows):
    from .chunks import RowView

    return RowView(cache.emb, rows)


def edge_kind(T) -> str:
    """The kind an edge shows: ``"mlp"``, ``"mlp+center"`` (post-hoc steps after a ``+``),
    ``"linear@centred"`` (node-centred), ``"auto:procrustes"`` (chosen by
    ``translator="auto"``), or a combination."""
    if T.kind == "posthoc":
        return f"{edge_kind(getattr(T, 'base_', T.base))}+{T.steps}"
    if T.kind == "centred":
        return f"{edge_kind(getattr(T, 'base_', T.base))}@centred"
    if T.kind == "auto":
        return f"auto:{edge_kind(T.best_)}"
    return T.kind


def _node_attrs(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "cache"}


def _matched_rows(table: PairTable, a: Cache, b: Cache) -> PairTable:
    """The rows of ``table`` whose ids are ids of both caches (the rows that pair)."""
    keep = np.isin(table.a_ids, a.ids.astype(str)) & np.isin(table.b_ids, b.ids.astype(str))
    if keep.all():
        return table
    return PairTable(table.a_ids[keep], table.b_ids[keep],
                     None if table.groups is None else table.groups[keep])


def _edge_rule(d: dict):
    """The split rule an edge was trained with (None: the graph's rule)."""
    split = d.get("split") or {}
    if split.get("rule") == "prefix":
        return "prefix"
    if isinstance(split.get("groups"), dict):
        return split["groups"]
    return None


def _as_cache(cache, name) -> Cache | None:
    if cache is None or isinstance(cache, Cache):
        return cache
    if isinstance(cache, (str, Path)):
        return load_cache(cache)
    return Cache.from_arrays(check_embeddings(cache, name), meta={"name": name})


def load_graph(path, load_caches: bool = True, **kw) -> ModalityGraph:
    """Read a graph written by :meth:`ModalityGraph.save` (see :func:`bridge.graph_io.load_graph`)."""
    from .graph_io import load_graph as _load

    return _load(path, load_caches=load_caches, **kw)
