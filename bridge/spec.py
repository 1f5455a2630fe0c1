"""Graph specs: TOML files that declare nodes, their caches and the edges to train.

.. code-block:: toml

    [graph]
    seed = 0
    fractions = [0.8, 0.1, 0.1]      # train / val / test, by group
    out = "graphs/m30k"              # where `bridge graph build` saves (optional)
    # splits = "prefix"              # the graph's split rule for edges and evaluation
    # min_train = 2                  # refuse an edge with fewer training pairs
    # min_val = 5                    # ... or fewer validation pairs
    # warn_val = 30                  # warn when an edge is scored on fewer val pairs

    [[nodes]]
    name = "text:en@minilm"
    cache = "embeddings_cache/m30k/en.minilm"   # relative to the spec file

    [[nodes]]
    name = "text:de@e5"
    cache = "embeddings_cache/m30k/de.e5"

    [[edges]]
    src = "text:de@e5"
    dst = "text:en@minilm"
    translator = "mlp"               # linear | procrustes | mlp | relative | identity | auto
    loss = "infonce+mse"             # mlp only
    # node_center = true             # centre by the nodes' own means (CentredTranslator)
    directions = "both"              # both | forward | backward
    # pairs = "pairs/de-en.csv"      # explicit pair table (default: shared ids)
    # splits = "prefix"              # keep predefined splits (see below)
    [edges.params]
    epochs = 30

A node's ``cache`` may be a list of files with as many ``prefixes`` (one cache per
predefined split: ``cache = ["train.npy", "val.npy", "test.npy"]``, ``prefixes =
["train", "val", "test"]``); ids become ``"train:0"``... and an edge with
``splits = "prefix"`` trains on train rows, stops early on val rows and reports on test rows.
Set ``splits = "prefix"`` under ``[graph]`` to make it the rule of every edge and of every
evaluation (``bridge eval`` then scores the test rows only).

Paths are resolved relative to the spec file's folder. Unknown keys are errors, so a
typo does not silently fall back to a default. A spec is validated completely before
anything is loaded: sections, keys and value types, node references, translator kinds and
their parameters (each translator's constraint table), split rules and that every cache
and pair file exists; after the caches load, every edge's pairs and splits are checked
before the first edge trains.

An edge's ``pairs`` table (a two-column CSV/TSV of ``id_in_src,id_in_dst``, one pair a
line, an optional header line) links nodes whose ids differ, many to many: a word node to
a caption node, or an audio node to a word node at class level (each clip id to the id of
its digit word). The file must parse when the spec is read; once the caches load, every id
in it must exist in its node's cache (the first missing id is named). Pairs are grouped
by the ``src`` side (its cache's groups, else its ids), so every clip of one group lands
in one split.

An edge with ``translator = "identity"`` joins two nodes of one embedding space (one
multilingual encoder: ``text:de@e5`` and ``text:en@e5`` holding the same words under the same
ids); nothing is trained, the edge is scored like any other. With such edges an audio node
linked to ``text:en@e5`` by a pair table is reachable from ``text:de@e5`` through English,
and ``bridge eval`` scores audio -> ``text:de@e5`` with the pairs composed along the route.
A node of ten digit words splits into very few validation pairs: lower ``min_val`` under
``[graph]`` for it.

``bridge graph build`` trains the edges in order. When an edge fails (a
:class:`~bridge.errors.BridgeError` while training it), the edges trained before it are
saved to the out folder all the same and the command exits 2 naming the failed edge (see
:class:`EdgeFailed`).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from .errors import BridgeError, CorruptFile, InvalidParameter

__all__ = ["load_spec", "validate_spec", "build_graph_from_spec", "SpecError", "EdgeFailed"]

TOP_KEYS = {"graph", "nodes", "edges"}
GRAPH_KEYS = {"seed", "fractions", "out", "name", "splits", "min_train", "min_val", "warn_val"}
#: graph size settings and the smallest value each accepts
SIZE_KEYS = {"min_train": 1, "min_val": 1, "warn_val": 0}
NODE_KEYS = {"name", "cache", "prefixes", "modality", "language", "encoder"}
EDGE_KEYS = {"src", "dst", "translator", "loss", "directions", "pairs", "params",
             "cycle_weight", "post", "splits", "node_center"}
DIRECTIONS = ("both", "forward", "backward")
#: translator kinds a spec can declare (``posthoc`` wraps another edge: use ``post``)
SPEC_TRANSLATORS = ("linear", "procrustes", "mlp", "relative", "identity", "auto")


class SpecError(BridgeError, ValueError):
    """A graph spec that does not follow the documented schema."""


class EdgeFailed(BridgeError):
    """Training edge ``index`` of a spec failed; ``graph`` holds the edges trained before it.

    ``cause`` is the :class:`~bridge.errors.BridgeError` the edge raised and ``trained``
    the number of spec edges trained before it.
    """

    def __init__(self, message: str, graph, index: int, trained: int, cause: BridgeError):
        super().__init__(message)
        self.graph, self.index, self.trained, self.cause = graph, index, trained, cause


def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib


def load_spec(path, check_files: bool = True) -> dict:
    """Parse and validate a graph spec completely; returns a dict with absolute paths.

    Everything is checked before anything is loaded or trained: sections and keys, the
    type of every value, node references, translator kinds and their parameters (through
    each translator's constraint table), split rules, and (with ``check_files``) that
    every cache and pair file exists. Any problem raises :class:`SpecError` naming the
    file, the entry and the bad value.
    """
    path = Path(path)
    if not path.exists():
        raise CorruptFile(f"graph spec not found: {path}")
    if path.is_dir():
        raise CorruptFile(f"graph spec {path} is a folder; expected a .toml file")
    try:
        spec = _toml().loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SpecError(f"{path} is not UTF-8 text: {e}") from e
    except Exception as e:  # tomllib.TOMLDecodeError
        raise SpecError(f"{path} is not valid TOML: {' '.join(str(e).split())}") from e
    return validate_spec(spec, path.resolve().parent, str(path), check_files=check_files)


def validate_spec(spec: dict, base: Path, where: str = "spec", check_files: bool = True) -> dict:
    """Check a parsed spec (see :func:`load_spec`); relative paths resolve against ``base``."""
    base = Path(base)
    _check_keys(spec, TOP_KEYS, f"{where}: top level (sections)")
    g = spec.get("graph", {})
    _expect(isinstance(g, dict), f"{where}: [graph] must be a table, got {g!r}")
    _check_keys(g, GRAPH_KEYS, f"{where} [graph]")
    _check_graph(g, f"{where} [graph]", base)
    nodes = spec.get("nodes", [])
    _expect(isinstance(nodes, list) and all(isinstance(n, dict) for n in nodes),
            f"{where}: nodes must be an array of tables ([[nodes]]), got {nodes!r:.80}")
    _expect(bool(nodes), f"{where}: no [[nodes]] declared; expected at least one")
    names: list[str] = []
    for i, n in enumerate(nodes):
        at = f"{where} nodes[{i}]"
        _check_keys(n, NODE_KEYS, at)
        _expect("name" in n, f"{at}: missing 'name'")
        _expect(isinstance(n["name"], str) and n["name"].strip() != "",
                f"{at}: 'name' must be a non-empty string, got {n['name']!r}")
        at = f"{where} node {n['name']!r}"
        _expect(n["name"] not in names, f"{at}: declared twice; node names must be unique")
        names.append(n["name"])
        _check_node(n, at, base, check_files)
    edges = spec.get("edges", [])
    _expect(isinstance(edges, list) and all(isinstance(e, dict) for e in edges),
            f"{where}: edges must be an array of tables ([[edges]]), got {edges!r:.80}")
    for i, e in enumerate(edges):
        _check_edge(e, f"{where} edges[{i}]", set(names), base, check_files)
    spec["graph"] = g
    spec["nodes"] = nodes
    spec["edges"] = edges
    return spec


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def _check_keys(d: dict, allowed: set, where: str):
    bad = sorted(set(d) - allowed)
    if bad:
        raise SpecError(f"{where}: unknown key {bad[0]!r}; expected one of {sorted(allowed)}")


def _is_str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _check_splits(v, at: str) -> None:
    if v is None or v == "prefix":
        return
    if isinstance(v, dict):
        bad = sorted(set(v) - {"train", "val", "test"})
        _expect(not bad, f"{at}: splits table has unknown key {bad[0] if bad else ''!r}; "
                         "expected 'train', 'val' and 'test'")
        for k, groups in v.items():
            _expect(_is_str_list(groups), f"{at}: splits.{k} must be a list of group names, "
                                          f"got {groups!r:.80}")
        _expect(bool(v.get("train")), f"{at}: splits.train must name at least one group")
        return
    raise SpecError(f"{at}: 'splits' must be \"prefix\" or a table of train/val/test group "
                    f"lists, got {v!r}")


def _check_graph(g: dict, at: str, base: Path) -> None:
    from .store import check_fractions

    for k, least in SIZE_KEYS.items():
        if k in g:
            v = g[k]
            _expect(isinstance(v, int) and not isinstance(v, bool) and v >= least,
                    f"{at}: {k!r} must be an integer >= {least}, got {v!r}")
    if "seed" in g:
        s = g["seed"]
        _expect(isinstance(s, int) and not isinstance(s, bool) and s >= 0,
                f"{at}: 'seed' must be a non-negative integer, got {s!r}")
    if "fractions" in g:
        try:
            check_fractions(g["fractions"])
        except InvalidParameter as e:
            raise SpecError(f"{at}: {e}") from None
        g["fractions"] = [float(f) for f in g["fractions"]]
    for k in ("out", "name"):
        if k in g:
            _expect(isinstance(g[k], str) and g[k].strip() != "",
                    f"{at}: {k!r} must be a non-empty string, got {g[k]!r}")
    _check_splits(g.get("splits"), at)
    if "out" in g:
        g["out"] = str((base / g["out"]).resolve())


def _check_node(n: dict, at: str, base: Path, check_files: bool) -> None:
    _expect("cache" in n, f"{at}: missing 'cache' (a path to embeddings)")
    c = n["cache"]
    files = c if isinstance(c, list) else [c]
    _expect(bool(files) and all(isinstance(f, str) and f.strip() for f in files),
            f"{at}: 'cache' must be a path or a non-empty list of paths, got {c!r}")
    for k in ("modality", "language", "encoder"):
        if k in n:
            _expect(isinstance(n[k], str), f"{at}: {k!r} must be a string, got {n[k]!r}")
    if "prefixes" in n:
        pr = n["prefixes"]
        _expect(_is_str_list(pr) and all(pr), f"{at}: 'prefixes' must be a list of non-empty "
                                               f"strings, got {pr!r}")
        _expect(len(set(pr)) == len(pr), f"{at}: 'prefixes' must be distinct, got {pr!r}")
        _expect(len(pr) == len(files), f"{at}: {len(files)} cache file(s) need as many "
                                       f"'prefixes', got {len(pr)}")
    elif len(files) > 1:
        raise SpecError(f"{at}: {len(files)} cache files need as many 'prefixes' "
                        f"(e.g. [\"train\", \"val\", \"test\"])")
    resolved = [(base / f).resolve() for f in files]
    if check_files:
        for f, r in zip(files, resolved):
            _expect(r.exists(), f"{at}: cache {f!r} not found (looked for {r})")
    n["cache"] = [str(r) for r in resolved]


def _check_edge(e: dict, at: str, names: set, base: Path, check_files: bool) -> None:
    from .translators import TRANSLATORS
    from .translators.posthoc import parse_post

    _check_keys(e, EDGE_KEYS, at)
    for k in ("src", "dst"):
        _expect(k in e, f"{at}: missing {k!r}")
        _expect(isinstance(e[k], str), f"{at}: {k} must be a node name (string), got {e[k]!r}")
        _expect(e[k] in names, f"{at}: {k} {e[k]!r} is not a declared node; declared: "
                               f"{sorted(names)}")
    _expect(e["src"] != e["dst"], f"{at}: src and dst are both {e['src']!r}; an edge joins "
                                  "two different nodes")
    kind = e.get("translator", "mlp")
    _expect(isinstance(kind, str) and kind in SPEC_TRANSLATORS,
            f"{at}: unknown translator {kind!r}; expected one of {list(SPEC_TRANSLATORS)}")
    d = e.get("directions", "both")
    _expect(isinstance(d, str) and d in DIRECTIONS,
            f"{at}: 'directions' must be one of {list(DIRECTIONS)}, got {d!r}")
    params = e.get("params", {})
    _expect(isinstance(params, dict), f"{at}: 'params' must be a table ([edges.params]), "
                                      f"got {params!r}")
    params = dict(params)
    if "loss" in e:
        _expect(kind == "mlp", f"{at}: 'loss' applies to translator 'mlp' only, not {kind!r}")
        _expect("loss" not in params, f"{at}: 'loss' given both as a key and in [edges.params]")
        params["loss"] = e["loss"]
    try:
        TRANSLATORS[kind].validate_param_values(params)
    except InvalidParameter as ex:
        raise SpecError(f"{at}: {ex}") from None
    cw = e.get("cycle_weight", 0.0)
    _expect(isinstance(cw, (int, float)) and not isinstance(cw, bool) and math.isfinite(cw)
            and cw >= 0, f"{at}: 'cycle_weight' must be a finite number >= 0, got {cw!r}")
    if cw > 0:
        _expect(kind == "mlp" and d == "both",
                f"{at}: cycle_weight {cw!r} needs translator 'mlp' and directions 'both' "
                f"(both directions trained together), got {kind!r} and {d!r}")
    nc = e.get("node_center", False)
    _expect(isinstance(nc, bool), f"{at}: 'node_center' must be true or false, got {nc!r}")
    _expect(not (nc and cw > 0), f"{at}: node_center cannot be combined with cycle_weight "
                                 f"{cw!r} (both directions trained together)")
    if "post" in e:
        try:
            parse_post(e["post"])
        except InvalidParameter as ex:
            raise SpecError(f"{at}: 'post': {ex}") from None
    _check_splits(e.get("splits"), at)
    if "pairs" in e:
        p = e["pairs"]
        _expect(isinstance(p, str) and p.strip() != "",
                f"{at}: 'pairs' must be a path to a CSV/TSV pair table, got {p!r}")
        r = (base / p).resolve()
        if check_files:
            _expect(r.is_file(), f"{at}: pair table {p!r} not found (looked for {r})")
            _read_table(r, at)
        e["pairs"] = str(r)


def _read_table(path, at: str):
    """The :class:`~bridge.store.PairTable` in ``path``; a file that does not parse is a SpecError."""
    from .store import PairTable

    try:
        table = PairTable.read(path)
    except BridgeError as ex:
        raise SpecError(f"{at}: pair table {str(path)!r} does not parse: {ex}") from None
    _expect(len(table) > 0, f"{at}: pair table {str(path)!r} holds no pairs")
    return table


def build_graph_from_spec(spec: dict, progress: bool = False, log=print):
    """Build a :class:`~bridge.graph.ModalityGraph` from a parsed spec, training its edges.

    The spec is validated again (see :func:`validate_spec`), every cache is loaded, and
    every edge's pairs and split are checked (shared ids, non-empty train and val splits,
    equal dimensions for identity edges) before the first edge trains.
    """
    from .graph import ModalityGraph
    from .store import concat_caches, load_cache

    spec = validate_spec(spec, Path.cwd(), where="spec")
    g = spec["graph"]
    graph = ModalityGraph(fractions=tuple(g.get("fractions", (0.8, 0.1, 0.1))), seed=g.get("seed", 0),
                          splits=g.get("splits"), **{k: g[k] for k in SIZE_KEYS if k in g})
    for n in spec["nodes"]:
        parts = [load_cache(f) for f in n["cache"]]
        cache = parts[0] if len(parts) == 1 and "prefixes" not in n else concat_caches(parts, n["prefixes"])
        graph.add_node(n["name"], cache, modality=n.get("modality"), language=n.get("language"),
                       encoder=n.get("encoder"))
        log(f"node {n['name']}: {len(cache)} rows, dim {cache.dim}")
    _precheck_edges(graph, spec["edges"])
    for i, e in enumerate(spec["edges"]):
        params = dict(e.get("params", {}))
        if progress and e.get("translator", "mlp") == "mlp":
            params.setdefault("progress", True)
        try:
            reports = graph.connect(e["src"], e["dst"], translator=e.get("translator", "mlp"),
                                    loss=e.get("loss"), directions=e.get("directions", "both"),
                                    pairs=e.get("pairs"), cycle_weight=e.get("cycle_weight", 0.0),
                                    post=e.get("post"), splits=e.get("splits"),
                                    node_center=e.get("node_center", False), **params)
        except BridgeError as ex:
            cause = _cause(ex, e["src"], e["dst"])
            raise EdgeFailed(f"edges[{i}] {e['src']!r} -> {e['dst']!r} failed: {cause}",
                             graph, i, i, ex) from ex
        for (s, d), m in reports.items():
            log(f"edge {s} -> {d}: val R@1 {m.get('val_R@1', float('nan')):.3f}, "
                f"test R@1 {m.get('test_R@1', float('nan')):.3f}, cost {graph.edge(s, d)['cost']:.3f}")
    return graph


def _precheck_edges(graph, edges) -> None:
    """The data-dependent checks of every edge, before any edge trains."""
    from .errors import DimensionMismatch, NoPairs

    for i, e in enumerate(edges):
        a, b = e["src"], e["dst"]
        at = f"edges[{i}] {a!r} -> {b!r}"
        try:
            if e.get("pairs") is not None:
                _check_table_ids(_read_table(e["pairs"], at), graph, a, b, e["pairs"], at)
            P = graph.pairs(a, b, e.get("pairs"))
            idx = graph.split(P, e.get("splits"))
            rule = graph.splits if e.get("splits") is None else e["splits"]
            with warnings.catch_warnings():  # connect() warns about small splits itself
                warnings.simplefilter("ignore")
                graph.check_split_sizes(a, b, P, idx, rule)  # the graph's own minimum sizes
        except NoPairs as ex:
            raise type(ex)(f"{at}: {_cause(ex, a, b)}") from None
        if e.get("translator", "mlp") == "identity":
            da, db = graph.node(a)["dim"], graph.node(b)["dim"]
            if da != db:
                raise DimensionMismatch(f"edges[{i}] {a!r} -> {b!r}: an identity edge needs one "
                                        f"space on both sides; got dimensions {da} and {db}")


def _cause(ex: BridgeError, a: str, b: str) -> str:
    """``ex``'s message on one line, without the ``edge 'a' -> 'b': `` it may start with
    (the spec's own prefix names the edge already)."""
    msg = " ".join(str(ex).split())
    named = f"edge {a!r} -> {b!r}: "
    return msg[len(named):] if msg.startswith(named) else msg


def _check_table_ids(table, graph, a: str, b: str, path: str, at: str) -> None:
    """Every id of a pair table in its node's cache; a first line of two unknown ids is a header."""
    ida, idb = set(graph.cache(a).ids.tolist()), set(graph.cache(b).ids.tolist())
    start = 1 if table.a_ids[0] not in ida and table.b_ids[0] not in idb else 0
    for n in range(start, len(table)):
        for node, known, key in ((a, ida, table.a_ids[n]), (b, idb, table.b_ids[n])):
            if key not in known:
                raise SpecError(f"{at}: pair table {path!r} row {n + 1}: id {str(key)!r} is not "
                                f"an id of node {node!r} (first ids there: "
                                f"{sorted(known)[:3]})")
    _expect(len(table) > start, f"{at}: pair table {path!r} holds only a header line")
