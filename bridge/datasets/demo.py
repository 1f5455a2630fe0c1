"""The small real dataset shipped inside the package for ``bridge demo``.

It holds, in ``bridge/data/demo/`` (built by ``scripts/build_demo_data.py``, about 9 MB):

- ``text:{en,de,fr,es}@e5`` and ``text:en@minilm``: the same ~1,950 items (numbers 0..399
  as words, CLDR territory and language names, emoji names) in four languages, one shared
  id per item (``num:17``, ``terr:DE``, ``lang:de``, ``emoji:1F600``), so text nodes pair
  by id;
- ``audio:en@aisfx`` (numbers 0..199 x 3 eSpeak NG voices) and ``audio:de@aisfx``
  (0..199 x 2), ids ``num:<n>``: they pair with the text nodes by id;
- ``image@pixels``: scikit-learn's 1,797 8x8 digits as raw standardised pixels (64-d, no
  encoder), id ``digit:<d>`` (the class), group ``img:<i>`` (the image); they pair with
  ``num:0 .. num:9`` through the class-level pair tables.

Every cache is a float16 ``.safetensors`` file with L2-normalised rows; ``manifest.json``
lists nodes, pair tables, package versions and sanity figures; ``texts.json`` holds the
string behind every row of the text and audio nodes.

>>> from bridge.datasets.demo import load_demo
>>> demo = load_demo()
>>> en = demo["caches"]["text:en@e5"]
>>> pairs = demo["pair_tables"][("image@pixels", "text:en@e5")]   # [("digit:0", "num:0"), ...]
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["demo_path", "demo_manifest", "demo_texts", "load_demo", "DEMO_NODES"]

#: node names of the shipped demo, in manifest order
DEMO_NODES = (
    "text:en@e5",
    "text:de@e5",
    "text:fr@e5",
    "text:es@e5",
    "text:en@minilm",
    "audio:en@aisfx",
    "audio:de@aisfx",
    "image@pixels",
)


def demo_path() -> Path:
    """The folder holding the shipped demo data (``bridge/data/demo``)."""
    return Path(__file__).resolve().parent.parent / "data" / "demo"


def _check_present(root: Path) -> Path:
    from ..errors import CorruptFile

    if not (root / "manifest.json").exists():
        raise CorruptFile(
            f"demo data not found in {root} (no manifest.json); rebuild it with "
            "`python scripts/build_demo_data.py` from a source checkout"
        )
    return root


def demo_manifest(path: str | Path | None = None) -> dict:
    """The demo's ``manifest.json`` as a dict."""
    root = _check_present(Path(path) if path is not None else demo_path())
    return json.loads((root / "manifest.json").read_text(encoding="utf-8"))


def demo_texts(path: str | Path | None = None) -> dict[str, list[str]]:
    """``{node: [string behind each row]}`` for the text and audio nodes."""
    root = _check_present(Path(path) if path is not None else demo_path())
    return json.loads((root / "texts.json").read_text(encoding="utf-8"))


def load_demo(path: str | Path | None = None, nodes=None) -> dict:
    """Load the shipped demo.

    Returns ``{"caches": {node: Cache}, "pair_tables": {(a, b): [(id_a, id_b), ...]},
    "manifest": dict}``. ``nodes`` (names) restricts which caches are read; an unknown
    name raises :class:`bridge.errors.UnknownNode` listing the valid ones.
    """
    from ..errors import UnknownNode
    from ..store import load_cache

    root = _check_present(Path(path) if path is not None else demo_path())
    manifest = demo_manifest(root)
    entries = {e["name"]: e for e in manifest["nodes"]}
    if nodes is None:
        wanted = list(entries)
    else:
        wanted = [nodes] if isinstance(nodes, str) else list(nodes)
        bad = [n for n in wanted if n not in entries]
        if bad:
            raise UnknownNode(
                f"unknown demo node(s) {bad}; valid choices: {sorted(entries)}"
            )
    caches = {}
    for name in wanted:
        e = entries[name]
        caches[name] = load_cache(root / e["file"], name=name)
    pair_tables = {}
    for key, rows in manifest.get("pair_tables", {}).items():
        a, b = key.split("|", 1)
        if a in caches and b in caches:
            pair_tables[(a, b)] = [(str(x), str(y)) for x, y in rows]
    return {"caches": caches, "pair_tables": pair_tables, "manifest": manifest}
