"""modality-bridge: connect the embedding spaces of pretrained encoders through a graph.

Importing ``bridge`` only defines names; heavy modules (torch, faiss, matplotlib) load on
first use of the attribute that needs them.
"""

__version__ = "0.1.0"

_LAZY = {
    "ModalityGraph": "graph",
    "load_graph": "graph",
    "parse_node_name": "graph",
    "Route": "planner",
    "synchronize": "sync",
    "Cache": "store",
    "Pairs": "store",
    "load_cache": "store",
    "save_cache": "store",
    "pair_by_ids": "store",
    "pair_table": "store",
    "split_groups": "store",
    "LinearTranslator": "translators",
    "ProcrustesTranslator": "translators",
    "MLPTranslator": "translators",
    "RelativeTranslator": "translators",
    "PostHocTranslator": "translators",
    "IdentityTranslator": "translators",
    "load_translator": "translators",
    "make_translator": "translators",
    "reconstruction_loss": "metrics",
    "paired_retrieval": "metrics",
}

#: every module and package of ``bridge``, importable as an attribute (``bridge.plots``)
_SUBMODULES = {"borrow", "calibration", "chunks", "cli", "datasets", "demo", "distributed", "encoders",
               "errors", "evaluate", "files", "formats", "fusion", "gap", "graph", "graph_io",
               "hubness", "losses", "metrics", "params", "planner", "plots", "retrieval",
               "sharded", "spec", "store", "suggest", "sync", "training", "translators"}

from .errors import *  # noqa: E402,F401,F403  (light: no imports beyond the stdlib)
from .errors import __all__ as _errors_all  # noqa: E402

__all__ = sorted(set(_LAZY) | set(_errors_all) | {"__version__"})


def __getattr__(name):
    import importlib

    if name in _LAZY:
        mod = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(mod, name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'bridge' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
