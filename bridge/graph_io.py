"""Saving and loading a :class:`~bridge.graph.ModalityGraph`.

A saved graph is a folder: ``manifest.json`` (nodes, edges, metrics, cache references,
the graph's settings and the package version) and ``edges/NNN/{config.json,
model.safetensors}`` per edge (plus ``pairs.json``, its pair table, for an edge trained
from one); caches held only in memory are copied to ``caches/NNN.safetensors``; a
calibrated graph (:meth:`~bridge.graph.ModalityGraph.calibrate`) also holds
``calibration.json``, its route model, read back whenever the file is there. A reference to a
Parquet/Arrow/Feather file or a ``datasets`` folder also stores its ``format`` and the
``columns`` it was read from (``{"embedding_column": "vec", "id_column": "clip",
"groups_column": "speaker"}``), and loading reads those columns again. Nothing is
ever unpickled.

:func:`load_graph` validates the whole manifest before it builds anything: every field
has the type it must have, every edge folder and stored cache lies inside the graph folder
(symbolic links that point out of it count as leaving it), and a reference to a cache
outside the folder is followed only with ``allow_external=True``. Anything else raises
:class:`~bridge.errors.CorruptFile` naming the file and the field
(``manifest.json: edges[3].dir``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .errors import BridgeError, CorruptFile, ExternalReference
from .files import atomic_dir, dumps_json, read_json, recover, resolve_inside, write_json

__all__ = ["save_graph", "load_graph", "save_calibration", "FORMAT", "FORMAT_VERSION",
           "CALIBRATION_FILE"]

FORMAT = "modality-bridge-graph"
FORMAT_VERSION = 1

_SPLIT_KEYS = ("train", "val", "test")

PAIRS_FORMAT = "modality-bridge-pairs"

#: the route model of a calibrated graph, beside ``manifest.json``
CALIBRATION_FILE = "calibration.json"


def _node_attrs(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "cache"}


def _settings(graph) -> dict:
    settings = getattr(graph, "settings", None)
    if callable(settings):
        return dict(settings())
    return {"fractions": list(graph.fractions), "seed": graph.seed, "splits": graph.splits}


def save_graph(graph, path, caches: str = "auto", overwrite: bool = False) -> Path:
    """Write ``graph`` to folder ``path`` atomically.

    ``manifest.json`` lists nodes, edges, metrics, cache references, the graph's settings
    and the package version; every edge is a folder ``edges/NNN`` with ``config.json``
    and ``model.safetensors``. ``caches``: ``"auto"`` references caches read from a file
    (by absolute path: loading follows such a reference only with
    ``allow_external=True``; a table read with its own column names keeps them, see
    :func:`bridge.formats.table_reference`) and copies in-memory ones into ``caches/``; ``"copy"``
    copies all (the folder is then self-contained); ``"reference"`` copies none. The
    folder is swapped in atomically (see :class:`bridge.files.atomic_dir`): at every
    instant ``path`` holds the previous graph or the new one. A folder that is not a
    saved graph is never replaced unless ``overwrite=True``.
    """
    from . import __version__
    from .errors import InvalidParameter
    from .formats import table_reference
    from .store import save_cache

    if caches not in ("auto", "copy", "reference"):
        raise InvalidParameter(
            f"parameter 'caches' must be 'auto', 'copy' or 'reference', got {caches!r}")
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
                    table = table_reference(c)
                    if table is not None:  # read the same columns again at load
                        ref.update(table)
            nodes.append({"name": n, **_node_attrs(d), "cache": ref})
        edges = []
        for i, (u, v, d) in enumerate(G.edges(data=True)):
            rel = f"edges/{i:03d}"
            d["translator"].save(tmp / rel)
            entry = {"src": u, "dst": v, "dir": rel, "kind": d["kind"], "cost": d["cost"],
                     "metrics": d["metrics"], "split": d.get("split", {})}
            if d.get("pair_table") is not None:
                entry["pairs"] = f"{rel}/pairs.json"
                write_json(tmp / entry["pairs"], _pairs_json(d["pair_table"]))
            edges.append(entry)
        settings = _settings(graph)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                    "bridge_version": __version__, "fractions": list(graph.fractions),
                    "seed": graph.seed, "splits": graph.splits, "settings": settings,
                    "nodes": nodes, "edges": edges}
        (tmp / "manifest.json").write_text(dumps_json(manifest))
        cal = getattr(graph, "calibration", None)
        if cal is not None:
            (tmp / CALIBRATION_FILE).write_text(dumps_json(cal.to_json()))
    return path


def save_calibration(graph, path) -> Path:
    """Write ``graph``'s calibration into the saved graph folder ``path`` (atomically, as
    ``calibration.json``), beside a graph saved before it was calibrated. The folder must
    hold a saved graph with the same nodes."""
    from .errors import InvalidParameter

    path = Path(path)
    cal = getattr(graph, "calibration", None)
    if cal is None:
        raise InvalidParameter("the graph is not calibrated: call graph.calibrate() first")
    m = read_json(path / "manifest.json", "graph manifest")
    names = {nd.get("name") for nd in m.get("nodes", []) if isinstance(nd, dict)} \
        if isinstance(m, dict) and isinstance(m.get("nodes"), list) else set()
    missing = sorted(set(graph.nodes) - names)
    if missing:
        raise InvalidParameter(f"{path} does not hold this graph: node {missing[0]!r} is not "
                               "among its nodes")
    return write_json(path / CALIBRATION_FILE, cal.to_json())


def _pairs_json(info: dict) -> dict:
    """The stored form of an edge's pair table (``edges/NNN/pairs.json``)."""
    T = info["table"]
    return {"format": PAIRS_FORMAT, "groups_from": info["groups"], "a_ids": T.a_ids.tolist(),
            "b_ids": T.b_ids.tolist(),
            "groups": None if T.groups is None else T.groups.tolist()}


# ---------------------------------------------------------------------------
# validation of a manifest


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type(v) -> str:
    return "null" if v is None else type(v).__name__


def _show(v) -> str:
    """``v`` as an error message shows it: its JSON type and (shortened) value."""
    if v is None:
        return "null"
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


class _Check:
    """Raises :class:`CorruptFile` naming ``manifest.json: <field>``."""

    def __init__(self, mpath: Path):
        self.mpath = mpath

    def fail(self, field: str, msg: str):
        raise CorruptFile(f"{self.mpath}: {field}: {msg}")

    def dict(self, v, field):
        if not isinstance(v, dict):
            self.fail(field, f"expected an object, got {_show(v)}")
        return v

    def list(self, v, field):
        if not isinstance(v, list):
            self.fail(field, f"expected a list, got {_show(v)}")
        return v

    def str(self, v, field, empty=False):
        if not isinstance(v, str) or (not empty and not v):
            self.fail(field, f"expected a non-empty string, got {_show(v)}")
        return v

    def pos_int(self, v, field):
        if not _is_int(v) or v < 1:
            self.fail(field, f"expected a positive integer, got {_show(v)}")
        return v

    def int(self, v, field):
        if not _is_int(v):
            self.fail(field, f"expected an integer, got {_show(v)}")
        return v

    def number_or_null(self, v, field):
        if v is not None and not _is_num(v):
            self.fail(field, f"expected a number or null, got {_show(v)}")
        return v


def _check_fractions(c: _Check, v, field):
    if (not isinstance(v, list) or len(v) != 3 or not all(_is_num(f) for f in v)
            or not all(math.isfinite(f) and f >= 0 for f in v) or abs(sum(v) - 1.0) > 1e-5):
        c.fail(field, f"expected three non-negative numbers summing to 1, got {v!r:.60}")
    return tuple(float(f) for f in v)


def _check_splits(c: _Check, v, field):
    if v is None or v == "prefix":
        return v
    if not isinstance(v, dict):
        c.fail(field, f"expected null, 'prefix' or an object of group lists, got {_show(v)}")
    for k, groups in v.items():
        if k not in _SPLIT_KEYS:
            c.fail(f"{field}.{k}", f"unknown split {k!r}; expected one of {list(_SPLIT_KEYS)}")
        if not isinstance(groups, list) or not all(isinstance(g, (str, int)) and not isinstance(g, bool)
                                                   for g in groups):
            c.fail(f"{field}.{k}", f"expected a list of group names, got {_show(groups)}")
    return v


def _check_settings(c: _Check, m: dict) -> dict:
    """The keyword arguments of :class:`ModalityGraph` stored in the manifest."""
    fv = m.get("format_version")
    if not _is_int(fv):
        c.fail("format_version", f"expected an integer, got {_show(fv)}")
    if fv < 1 or fv > FORMAT_VERSION:
        c.fail("format_version", f"version {fv} is not one this package reads (1 to "
                                 f"{FORMAT_VERSION}); a newer modality-bridge wrote it?")
    s = {}
    if "fractions" in m:
        s["fractions"] = _check_fractions(c, m["fractions"], "fractions")
    if "seed" in m:
        s["seed"] = c.int(m["seed"], "seed")
    if "splits" in m:
        s["splits"] = _check_splits(c, m["splits"], "splits")
    if "settings" in m:
        st = c.dict(m["settings"], "settings")
        for k, v in st.items():
            f = f"settings.{k}"
            if k == "fractions":
                v = _check_fractions(c, v, f)
            elif k == "splits":
                v = _check_splits(c, v, f)
            elif k == "seed":
                c.int(v, f)
            elif k.startswith(("min_", "warn_", "max_")):
                if not _is_num(v):
                    c.fail(f, f"expected a number, got {_show(v)}")
            s[k] = v
    return s


def _check_node(c: _Check, nd, i: int) -> dict:
    f = f"nodes[{i}]"
    c.dict(nd, f)
    c.str(nd.get("name"), f"{f}.name")
    if "dim" not in nd:
        c.fail(f"{f}.dim", "missing; expected the node's dimension (a positive integer)")
    c.pos_int(nd["dim"], f"{f}.dim")
    ref = nd.get("cache")
    if ref is not None:
        c.dict(ref, f"{f}.cache")
        keys = set(ref) & {"stored", "path"}
        if len(keys) != 1:
            c.fail(f"{f}.cache", f"expected one of 'stored' or 'path', got keys {sorted(ref)}")
        key = keys.pop()
        v = ref[key]
        if v is not None:
            c.str(v, f"{f}.cache.{key}")
        elif key == "stored":
            c.fail(f"{f}.cache.stored", "expected a path inside the graph folder, got null")
        _check_table_ref(c, ref, f"{f}.cache")
    for k in ("modality", "language", "encoder"):
        if nd.get(k) is not None and not isinstance(nd[k], str):
            c.fail(f"{f}.{k}", f"expected a string or null, got {_show(nd[k])}")
    return nd


def _check_table_ref(c: _Check, ref: dict, f: str) -> None:
    """The ``format`` and ``columns`` of a reference to a Parquet/Arrow/datasets cache."""
    from .formats import COLUMN_KEYS, TABLE_FORMATS, table_format

    unknown = sorted(set(ref) - {"stored", "path", "format", "columns"})
    if unknown:
        c.fail(f"{f}.{unknown[0]}", "unknown field; expected stored or path (and, for a "
                                    "table, format and columns)")
    if not ({"format", "columns"} & set(ref)):
        return
    if "path" not in ref or ref["path"] is None:
        c.fail(f"{f}.format" if "format" in ref else f"{f}.columns",
               "format and columns describe a referenced table; expected them with a path")
    if set(ref) & {"format", "columns"} != {"format", "columns"}:
        missing = "format" if "format" not in ref else "columns"
        c.fail(f"{f}.{missing}", "missing; a table reference holds both format and columns")
    fmt = ref["format"]
    if not isinstance(fmt, str) or fmt not in TABLE_FORMATS:
        c.fail(f"{f}.format", f"expected one of {list(TABLE_FORMATS)}, got {_show(fmt)}")
    if table_format(Path(ref["path"])) != fmt:
        c.fail(f"{f}.format", f"{fmt!r}, but the path {ref['path']!r} names a "
                              f"{table_format(Path(ref['path']))!r} table")
    cols = c.dict(ref["columns"], f"{f}.columns")
    unknown = sorted(set(cols) - set(COLUMN_KEYS))
    if unknown:
        c.fail(f"{f}.columns.{unknown[0]}", f"unknown field; expected {list(COLUMN_KEYS)}")
    for k in COLUMN_KEYS:
        if k not in cols:
            c.fail(f"{f}.columns.{k}", "missing; expected a column name"
                                       + (" or null" if k != "embedding_column" else ""))
        v = cols[k]
        if k == "embedding_column" or v is not None:
            if not isinstance(v, str) or not v:
                c.fail(f"{f}.columns.{k}", "expected a column name (a non-empty string)"
                                           f"{'' if k == 'embedding_column' else ' or null'}, "
                                           f"got {_show(v)}")


def _check_edge(c: _Check, ed, i: int, names: set) -> dict:
    f = f"edges[{i}]"
    c.dict(ed, f)
    for k in ("src", "dst"):
        c.str(ed.get(k), f"{f}.{k}")
        if ed[k] not in names:
            c.fail(f"{f}.{k}", f"node {ed[k]!r} is not among the manifest's nodes")
    c.str(ed.get("dir"), f"{f}.dir")
    if "kind" in ed:
        c.str(ed["kind"], f"{f}.kind")
    if "cost" in ed:
        c.number_or_null(ed["cost"], f"{f}.cost")
    metrics = ed.get("metrics", {})
    c.dict(metrics, f"{f}.metrics")
    for k, v in metrics.items():
        if v is not None and not isinstance(v, (int, float, str, list, dict)):
            c.fail(f"{f}.metrics.{k}", f"unexpected value {v!r:.40}")
        if isinstance(v, bool) or (k.startswith(("val_", "test_")) and not _is_num(v) and v is not None):
            c.fail(f"{f}.metrics.{k}", f"expected a number or null, got {_show(v)}")
    split = c.dict(ed.get("split", {}), f"{f}.split")
    if "rule" in split:
        c.str(split["rule"], f"{f}.split.rule")
    if "groups" in split:
        if not isinstance(split["groups"], dict):
            c.fail(f"{f}.split.groups", f"expected an object of group lists, got {_show(split['groups'])}")
        _check_splits(c, split["groups"], f"{f}.split.groups")
    if "pairs" in ed:
        c.str(ed["pairs"], f"{f}.pairs")
    return ed


def _id_list(c: _Check, v, field: str, n: int | None = None) -> list:
    if not isinstance(v, list):
        c.fail(field, f"expected a list of id strings, got {_show(v)}")
    bad = next((i for i, x in enumerate(v) if not isinstance(x, str)), None)
    if bad is not None:
        c.fail(f"{field}[{bad}]", f"expected an id string, got {_show(v[bad])}")
    if n is not None and len(v) != n:
        c.fail(field, f"expected {n} entries (one per pair), got {len(v)}")
    return v


def _read_pairs(p: Path, field: str) -> dict:
    """An edge's stored pair table, validated (:class:`CorruptFile` names file and field)."""
    from .store import PairTable

    if not p.is_file():
        raise CorruptFile(f"{field}: stored pair table {p} is missing")
    d = read_json(p, "pair table")
    c = _Check(p)
    if not isinstance(d, dict):
        raise CorruptFile(f"{p}: expected a JSON object, got {_type(d)}")
    if d.get("format") != PAIRS_FORMAT:
        c.fail("format", f"{d.get('format')!r}, expected {PAIRS_FORMAT!r}")
    unknown = sorted(set(d) - {"format", "groups_from", "a_ids", "b_ids", "groups"})
    if unknown:
        c.fail(unknown[0], "unknown field; expected format, groups_from, a_ids, b_ids, groups")
    if d.get("groups_from") not in ("src", "dst"):
        c.fail("groups_from", f"expected 'src' or 'dst', got {_show(d.get('groups_from'))}")
    a = _id_list(c, d.get("a_ids"), "a_ids")
    if not a:
        c.fail("a_ids", "expected at least one pair, got an empty table")
    b = _id_list(c, d.get("b_ids"), "b_ids", len(a))
    groups = d.get("groups")
    if groups is not None:
        _id_list(c, groups, "groups", len(a))
    return {"table": PairTable(a, b, groups), "groups": d["groups_from"]}


def _check_pair_ids(p: Path, info: dict, g, src: str, dst: str) -> None:
    """Every id of a stored pair table is an id of its node's cache (when loaded)."""
    T = info["table"]
    for field, ids, node in (("a_ids", T.a_ids, src), ("b_ids", T.b_ids, dst)):
        cache = g.G.nodes[node].get("cache")
        if cache is None:
            continue
        bad = np.flatnonzero(~np.isin(ids, cache.ids.astype(str)))
        if bad.size:
            raise CorruptFile(f"{p}: {field}[{int(bad[0])}]: id {str(ids[bad[0]])!r} is not an "
                              f"id of node {node!r} ({bad.size} unknown ids)")


def _check_tree_inside(root: Path, sub: Path, field: str) -> None:
    """Every entry under ``sub`` (a resolved path inside ``root``) stays inside ``root``:
    a symbolic link that points out of the graph folder is refused."""
    if not sub.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(sub):
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            resolve_inside(root, rel, f"{field} ({rel})")


def load_graph(path, load_caches: bool = True, allow_external: bool = False):
    """Read a graph written by :func:`save_graph`. Never unpickles anything.

    The manifest is validated completely first (:class:`CorruptFile` names the file and
    the field). Edge folders and stored caches must lie inside ``path``. A cache
    referenced by an absolute path outside the folder (``nodes[i].cache.path``, written
    for caches read in place) is read only when ``allow_external=True`` (CLI:
    ``--allow-external``); otherwise :class:`~bridge.errors.ExternalReference` names it.
    With ``allow_external=True`` a referenced file that no longer exists leaves the
    node without embeddings (it can still translate). ``load_caches=False`` reads no
    cache at all.
    """
    path = Path(path)
    recover(path)
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise CorruptFile(f"not a saved graph: {mpath} is missing")
    # A save swaps a whole new folder in; a load that overlaps one may read files of two
    # versions, or of a folder being deleted. The folder's inode tells: read again.
    for attempt in range(5):
        before = _folder_id(path)
        try:
            g = _load_once(path, load_caches, allow_external)
        except CorruptFile:
            if attempt < 4 and _folder_id(path) != before:
                continue
            raise
        if _folder_id(path) == before:
            return g
    return g


def _folder_id(path: Path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _load_once(path: Path, load_caches: bool, allow_external: bool):
    from .graph import ModalityGraph
    from .store import load_cache
    from .translators import load_translator

    mpath = path / "manifest.json"
    if not mpath.exists():
        raise CorruptFile(f"not a saved graph: {mpath} is missing")
    root = path.resolve()
    resolve_inside(root, "manifest.json", f"{mpath}")
    m = read_json(mpath, "graph manifest")
    c = _Check(mpath)
    if not isinstance(m, dict):
        raise CorruptFile(f"{mpath}: expected a JSON object, got {_type(m)}")
    if m.get("format") != FORMAT:
        raise CorruptFile(f"{mpath}: format {m.get('format')!r}, expected {FORMAT!r}")
    settings = _check_settings(c, m)
    nodes = [_check_node(c, nd, i) for i, nd in enumerate(c.list(m.get("nodes"), "nodes"))]
    names = [nd["name"] for nd in nodes]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        c.fail("nodes", f"node {dup!r} appears more than once")
    edges = [_check_edge(c, ed, i, set(names)) for i, ed in enumerate(c.list(m.get("edges"), "edges"))]
    pairs = [(ed["src"], ed["dst"]) for ed in edges]
    if len(set(pairs)) != len(pairs):
        dup = next(p for p in pairs if pairs.count(p) > 1)
        c.fail("edges", f"edge {dup[0]!r} -> {dup[1]!r} appears more than once")

    # every path, before anything is read
    edge_dirs = []
    for i, ed in enumerate(edges):
        f = f"{mpath.name}: edges[{i}].dir"
        d = resolve_inside(root, ed["dir"], f)
        _check_tree_inside(root, d, f)
        edge_dirs.append(d)
    pair_files: list[dict | None] = []
    for i, ed in enumerate(edges):
        info = None
        if "pairs" in ed:
            f = f"{mpath.name}: edges[{i}].pairs"
            p = resolve_inside(root, ed["pairs"], f)
            _check_tree_inside(root, p, f)
            info = {"path": p, **_read_pairs(p, f)}
        pair_files.append(info)
    cache_paths: list[Path | None] = []
    for i, nd in enumerate(nodes):
        ref = nd.get("cache") or {}
        p = None
        if load_caches and ref.get("stored") is not None:
            f = f"{mpath.name}: nodes[{i}].cache.stored"
            p = resolve_inside(root, ref["stored"], f)
            _check_tree_inside(root, p, f)
            if not p.exists():
                raise CorruptFile(f"{f}: stored cache {p} is missing")
        elif load_caches and ref.get("path") is not None:
            p = _external(root, ref["path"], f"{mpath.name}: nodes[{i}].cache.path",
                          allow_external)
        cache_paths.append(p)

    import inspect

    known = set(inspect.signature(ModalityGraph.__init__).parameters) - {"self"}
    unknown = sorted(set(settings) - known)
    if unknown:
        c.fail(f"settings.{unknown[0]}", f"unknown setting; this package knows {sorted(known)}")
    try:
        g = ModalityGraph(**settings)
    except BridgeError as e:
        raise CorruptFile(f"{mpath}: settings: {e}") from e
    for i, (nd, cp) in enumerate(zip(nodes, cache_paths)):
        nd = dict(nd)
        name = nd.pop("name")
        nd.pop("cache", None)
        dim = nd.pop("dim")
        columns = (nodes[i].get("cache") or {}).get("columns") or {}
        cache = load_cache(cp, **columns) if cp is not None and cp.exists() else None
        try:
            g.add_node(name, cache, dim=dim, **nd)
        except CorruptFile:
            raise
        except BridgeError as e:
            raise CorruptFile(f"{mpath}: nodes[{i}]: {e}") from e
    for i, (ed, d) in enumerate(zip(edges, edge_dirs)):
        T = load_translator(d)
        try:
            g.add_edge(ed["src"], ed["dst"], T, ed.get("metrics", {}))
        except CorruptFile:
            raise
        except BridgeError as e:
            raise CorruptFile(f"{mpath}: edges[{i}]: {e}") from e
        kind = g.G.edges[ed["src"], ed["dst"]]["kind"]
        if "kind" in ed and ed["kind"] != kind:
            c.fail(f"edges[{i}].kind", f"{ed['kind']!r}, but {d / 'config.json'} holds a {kind!r} translator")
        g.G.edges[ed["src"], ed["dst"]]["split"] = ed.get("split", {})
        info = pair_files[i]
        if info is not None:
            _check_pair_ids(info["path"], info, g, ed["src"], ed["dst"])
            g.G.edges[ed["src"], ed["dst"]]["pair_table"] = {"table": info["table"],
                                                             "groups": info["groups"]}
    g.calibration = _read_calibration(root, names)
    return g


def _read_calibration(root: Path, names):
    """The validated ``calibration.json`` of a graph folder, or None when there is none."""
    from .calibration import Calibration

    p = root / CALIBRATION_FILE
    if not (p.exists() or p.is_symlink()):
        return None
    p = resolve_inside(root, CALIBRATION_FILE, f"{CALIBRATION_FILE}")
    return Calibration.from_json(read_json(p, "graph calibration"), where=str(p), nodes=names)


def _external(root: Path, ref: str, field: str, allow: bool) -> Path:
    """The path of a cache referenced outside the graph folder, when allowed."""
    p = Path(ref)
    full = (root / p).resolve() if not p.is_absolute() else p.resolve()
    if full == root or root in full.parents:
        return full
    if not allow:
        raise ExternalReference(
            f"{field}: the graph reads the cache {ref!r} outside its folder {root}; pass "
            "allow_external=True (CLI: --allow-external) to read it, or save the graph "
            "with caches='copy' to make it self-contained")
    return Path(ref) if p.is_absolute() else full
