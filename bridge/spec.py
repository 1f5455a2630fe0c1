"""Graph specs: TOML files that declare nodes, their caches and the edges to train.

.. code-block:: toml

    [graph]
    seed = 0
    fractions = [0.8, 0.1, 0.1]      # train / val / test, by group
    out = "graphs/m30k"              # where `bridge graph build` saves (optional)
    # splits = "prefix"              # the graph's split rule for edges and evaluation

    [[nodes]]
    name = "text:en@minilm"
    cache = "embeddings_cache/m30k/en.minilm"   # relative to the spec file

    [[nodes]]
    name = "text:de@e5"
    cache = "embeddings_cache/m30k/de.e5"

    [[edges]]
    src = "text:de@e5"
    dst = "text:en@minilm"
    translator = "mlp"               # linear | procrustes | mlp | relative
    loss = "infonce+mse"             # mlp only
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
typo does not silently fall back to a default.
"""

from __future__ import annotations

from pathlib import Path

from .errors import BridgeError, CorruptFile

__all__ = ["load_spec", "build_graph_from_spec", "SpecError"]

GRAPH_KEYS = {"seed", "fractions", "out", "name", "splits"}
NODE_KEYS = {"name", "cache", "prefixes", "modality", "language", "encoder"}
EDGE_KEYS = {"src", "dst", "translator", "loss", "directions", "pairs", "params",
             "cycle_weight", "post", "splits"}


class SpecError(BridgeError, ValueError):
    """A graph spec that does not follow the documented schema."""


def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib


def load_spec(path) -> dict:
    """Parse and validate a graph spec; returns a dict with absolute paths."""
    path = Path(path)
    if not path.exists():
        raise CorruptFile(f"graph spec not found: {path}")
    try:
        spec = _toml().loads(path.read_text())
    except Exception as e:  # tomllib.TOMLDecodeError
        raise SpecError(f"{path} is not valid TOML: {e}") from e
    base = path.resolve().parent
    g = spec.get("graph", {})
    _check_keys(g, GRAPH_KEYS, f"{path} [graph]")
    nodes = spec.get("nodes", [])
    if not nodes:
        raise SpecError(f"{path}: no [[nodes]] declared; expected at least one")
    for i, n in enumerate(nodes):
        _check_keys(n, NODE_KEYS, f"{path} nodes[{i}]")
        if "name" not in n:
            raise SpecError(f"{path} nodes[{i}]: missing 'name'")
        if "cache" not in n:
            raise SpecError(f"{path} node {n['name']!r}: missing 'cache' (a path to embeddings)")
        files = n["cache"] if isinstance(n["cache"], list) else [n["cache"]]
        n["cache"] = [str((base / f).resolve()) for f in files]
        if len(files) > 1 and len(n.get("prefixes", [])) != len(files):
            raise SpecError(f"{path} node {n['name']!r}: {len(files)} cache files need as many "
                            f"'prefixes' (e.g. [\"train\", \"val\", \"test\"])")
    names = {n["name"] for n in nodes}
    for i, e in enumerate(spec.get("edges", [])):
        _check_keys(e, EDGE_KEYS, f"{path} edges[{i}]")
        for k in ("src", "dst"):
            if k not in e:
                raise SpecError(f"{path} edges[{i}]: missing {k!r}")
            if e[k] not in names:
                raise SpecError(
                    f"{path} edges[{i}]: {k} {e[k]!r} is not a declared node; declared: {sorted(names)}"
                )
        if "pairs" in e:
            e["pairs"] = str((base / e["pairs"]).resolve())
    if "out" in g:
        g["out"] = str((base / g["out"]).resolve())
    spec["graph"] = g
    spec.setdefault("edges", [])
    return spec


def _check_keys(d: dict, allowed: set, where: str):
    bad = sorted(set(d) - allowed)
    if bad:
        raise SpecError(f"{where}: unknown key {bad[0]!r}; expected one of {sorted(allowed)}")


def build_graph_from_spec(spec: dict, progress: bool = False, log=print):
    """Build a :class:`~bridge.graph.ModalityGraph` from a parsed spec, training its edges."""
    from .graph import ModalityGraph
    from .store import concat_caches, load_cache

    g = spec["graph"]
    graph = ModalityGraph(fractions=tuple(g.get("fractions", (0.8, 0.1, 0.1))), seed=g.get("seed", 0),
                          splits=g.get("splits"))
    for n in spec["nodes"]:
        parts = [load_cache(f) for f in n["cache"]]
        cache = parts[0] if len(parts) == 1 and "prefixes" not in n else concat_caches(parts, n["prefixes"])
        graph.add_node(n["name"], cache, modality=n.get("modality"), language=n.get("language"),
                       encoder=n.get("encoder"))
        log(f"node {n['name']}: {len(cache)} rows, dim {cache.dim}")
    for e in spec["edges"]:
        params = dict(e.get("params", {}))
        if progress and e.get("translator", "mlp") == "mlp":
            params.setdefault("progress", True)
        reports = graph.connect(e["src"], e["dst"], translator=e.get("translator", "mlp"),
                                loss=e.get("loss"), directions=e.get("directions", "both"),
                                pairs=e.get("pairs"), cycle_weight=e.get("cycle_weight", 0.0),
                                post=e.get("post"), splits=e.get("splits"), **params)
        for (s, d), m in reports.items():
            log(f"edge {s} -> {d}: val R@1 {m.get('val_R@1', float('nan')):.3f}, "
                f"test R@1 {m.get('test_R@1', float('nan')):.3f}, cost {graph.edge(s, d)['cost']:.3f}")
    return graph
