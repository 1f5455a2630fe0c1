"""Saving and loading a :class:`~bridge.graph.ModalityGraph`.

A saved graph is a folder: ``manifest.json`` (nodes, edges, metrics, cache references,
the split rule and the package version) and ``edges/NNN/{config.json,model.safetensors}``
per edge; caches held only in memory are copied to ``caches/NNN.safetensors``. Nothing is
ever unpickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CorruptFile
from .files import atomic_dir, dumps_json, read_json
from .store import load_cache, save_cache

__all__ = ["save_graph", "load_graph", "FORMAT", "FORMAT_VERSION"]

FORMAT = "modality-bridge-graph"
FORMAT_VERSION = 1


def _node_attrs(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "cache"}


def save_graph(graph, path, caches: str = "auto", overwrite: bool = False) -> Path:
    """Write ``graph`` to folder ``path`` atomically.

    ``manifest.json`` lists nodes, edges, metrics, cache references and the package
    version; every edge is a folder ``edges/NNN`` with ``config.json`` and
    ``model.safetensors``. ``caches``: ``"auto"`` references caches read from a file
    and copies in-memory ones into ``caches/``; ``"copy"`` copies all; ``"reference"``
    copies none. If writing fails, the previous graph at ``path`` is left intact. A folder
    that is not a saved graph is never replaced unless ``overwrite=True``.
    """
    from . import __version__

    if caches not in ("auto", "copy", "reference"):
        raise ValueError(f"caches must be 'auto', 'copy' or 'reference', got {caches!r}")
    path = Path(path)
    G = graph.G
    with atomic_dir(path, kind="graph", overwrite=overwrite) as tmp:
        nodes = []
        for i, (n, d) in enumerate(G.nodes(data=True)):
            c = d.get("cache")
            ref = None
            if c is not None:
                copy = caches == "copy" or (caches == "auto" and c.path is None)
                if copy:
                    rel = f"caches/{i:03d}.safetensors"
                    save_cache(tmp / rel, c, dtype=c.emb.dtype if c.emb.dtype == np.float16 else "float32")
                    ref = {"stored": rel}
                else:
                    ref = {"path": str(Path(c.path).resolve()) if c.path else None}
            nodes.append({"name": n, **_node_attrs(d), "cache": ref})
        edges = []
        for i, (u, v, d) in enumerate(G.edges(data=True)):
            rel = f"edges/{i:03d}"
            d["translator"].save(tmp / rel)
            edges.append({"src": u, "dst": v, "dir": rel, "kind": d["kind"], "cost": d["cost"],
                          "metrics": d["metrics"], "split": d.get("split", {})})
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                    "bridge_version": __version__, "fractions": list(graph.fractions),
                    "seed": graph.seed, "splits": graph.splits, "nodes": nodes, "edges": edges}
        (tmp / "manifest.json").write_text(dumps_json(manifest))
    return path


def load_graph(path, load_caches: bool = True):
    """Read a graph written by :func:`save_graph`. Never unpickles anything.

    Caches referenced by path are loaded when the file still exists; otherwise the node
    is kept without embeddings (it can still translate).
    """
    from .graph import ModalityGraph
    from .translators import load_translator

    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise CorruptFile(f"not a saved graph: {mpath} is missing")
    m = read_json(mpath, "graph manifest")
    if m.get("format") != FORMAT:
        raise CorruptFile(f"{mpath}: format {m.get('format')!r}, expected {FORMAT!r}")
    g = ModalityGraph(tuple(m.get("fractions", (0.8, 0.1, 0.1))), m.get("seed", 0),
                      m.get("splits"))
    try:
        for nd in m["nodes"]:
            nd = dict(nd)
            name, ref = nd.pop("name"), nd.pop("cache", None)
            cache = None
            if load_caches and ref:
                if ref.get("stored"):
                    cache = load_cache(path / ref["stored"])
                elif ref.get("path") and Path(ref["path"]).exists():
                    cache = load_cache(ref["path"])
            dim = nd.pop("dim")
            g.add_node(name, cache, dim=dim, **nd)
        for ed in m["edges"]:
            T = load_translator(path / ed["dir"])
            g.add_edge(ed["src"], ed["dst"], T, ed.get("metrics", {}))
            g.G.edges[ed["src"], ed["dst"]]["split"] = ed.get("split", {})
    except KeyError as e:
        raise CorruptFile(f"{mpath}: missing field {e}") from e
    return g
