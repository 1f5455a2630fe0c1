"""The ``bridge`` command line.

    bridge cache build --encoder e5 --text captions.de.gz --out embeddings_cache/de.e5
    bridge graph build graphs/m30k.toml
    bridge graph show graphs/m30k
    bridge route graphs/m30k text:de@e5 text:en@minilm --k 3
    bridge eval graphs/m30k text:de@e5 text:en@minilm
    bridge eval graphs/m30k text:de@e5 --fuse text:en@e5,text:en@minilm
    bridge eval graphs/m30k --walk text:de@e5,text:en@minilm,text:de@e5
    bridge plot graph graphs/m30k --out graph.png
    bridge demo --out bridge-report

Every command has ``--help``. Errors print one line naming the bad value and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import BridgeError
from .files import dumps_json

__all__ = ["main", "build_parser"]


def _csv(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bridge",
        description="Connect embedding spaces of pretrained encoders through a graph of translators.",
    )
    p.add_argument("--version", action="version", version=f"modality-bridge {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # cache
    pc = sub.add_parser("cache", help="build embedding caches from raw files")
    csub = pc.add_subparsers(dest="cache_command", metavar="ACTION")
    csub.required = True
    pb = csub.add_parser("build", help="encode raw rows into a cache, in resumable chunks",
                         description="Encode text lines, audio files or images into a cache "
                                     "folder. Finished chunks are kept: rerunning after an "
                                     "interruption encodes only what is left.")
    pb.add_argument("--encoder", required=True,
                    help="encoder name (e5, minilm, aisfx, resemblyzer, clip, clap, imagebind)")
    src = pb.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="text file (optionally .gz), one row per line")
    src.add_argument("--audio-dir", help="folder of audio files (sorted by name)")
    src.add_argument("--image-dir", help="folder of image files (sorted by name)")
    src.add_argument("--csv", help="CSV with an id column and an item column")
    pb.add_argument("--id-column", default="id", help="CSV id column (with --csv)")
    pb.add_argument("--item-column", default=None, help="CSV item column (with --csv)")
    pb.add_argument("--ids", help="file with one id per row (default: row numbers or file stems)")
    pb.add_argument("--limit", type=int, default=None, help="encode only the first N rows")
    pb.add_argument("--chunk-size", type=int, default=256, help="rows per resumable chunk")
    pb.add_argument("--out", required=True, help="cache folder to write")
    pb.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                    help="metadata to store (modality=text, language=de, ...)")

    # graph
    pg = sub.add_parser("graph", help="build or inspect graphs")
    gsub = pg.add_subparsers(dest="graph_command", metavar="ACTION")
    gsub.required = True
    pgb = gsub.add_parser("build", help="build a graph from a TOML spec and train its edges",
                          description="Read a graph spec (see bridge.spec), load the caches, "
                                      "train every declared edge and save the graph.")
    pgb.add_argument("spec", help="graph spec (.toml)")
    pgb.add_argument("--out", help="where to save (default: the spec's [graph] out, else graphs/<spec name>)")
    pgs = gsub.add_parser("show", help="print a saved graph's nodes, edges and metrics")
    pgs.add_argument("graph", help="saved graph folder")
    pgs.add_argument("--json", action="store_true", help="print JSON")

    # route
    pr = sub.add_parser("route", help="plan the cheapest route(s) between two nodes")
    pr.add_argument("graph", help="saved graph folder")
    pr.add_argument("src")
    pr.add_argument("dst")
    pr.add_argument("--k", type=int, default=1, help="number of routes, cheapest first")
    pr.add_argument("--weight", default="cost", help="edge attribute to minimise (default: cost)")

    # eval
    pe = sub.add_parser("eval", help="evaluate routes on held-out pairs",
                        description="Retrieval through the planned route from SRC to DST on the "
                                    "test pairs; --fuse retrieves through one route per gallery "
                                    "node and fuses the scores; --walk scores a closed walk "
                                    "(reconstruction loss, cycle R@1, per-hop figures).")
    pe.add_argument("graph", help="saved graph folder")
    pe.add_argument("src", nargs="?")
    pe.add_argument("dst", nargs="?")
    pe.add_argument("--k", type=int, default=1,
                    help="average the outputs of the k cheapest routes (with --fuse: fuse the "
                         "k cheapest routes to each gallery node)")
    pe.add_argument("--candidates", type=int, default=None,
                    help="with --fuse: per-route Faiss search of this many candidates, then "
                         "exact re-scoring of their union (default: score every gallery row)")
    pe.add_argument("--fuse", type=_csv, help="comma-separated gallery nodes holding the same items")
    pe.add_argument("--method", default="zscore", choices=["zscore", "rrf", "weighted"],
                    help="score fusion (weighted: per-route weights fitted on validation pairs)")
    pe.add_argument("--walk", type=_csv, help="comma-separated closed walk A,B,...,A")
    pe.add_argument("--json", help="also write the figures to this JSON file")

    # plot
    pp = sub.add_parser("plot", help="write PNG plots of a saved graph")
    pp.add_argument("kind", choices=["graph", "heatmap", "projection", "gap", "hops"])
    pp.add_argument("graph", help="saved graph folder")
    pp.add_argument("--nodes", type=_csv, help="nodes to include (projection, gap, heatmap)")
    pp.add_argument("--into", help="projection/gap: translate every node into this node's space first")
    pp.add_argument("--start", help="hops: the node the closed walks start from")
    pp.add_argument("--out", required=True, help="PNG file to write")

    # demo
    pd = sub.add_parser("demo", help="build the demo graph on the shipped dataset and write a report",
                        description="Builds a graph over the shipped demo data (text in four "
                                    "languages, speech, digit images), plans routes, runs the "
                                    "reconstruction, retrieval and gap benchmarks and writes a "
                                    "report folder (JSON, PNG plots, index.html).")
    pd.add_argument("--out", default="bridge-report", help="report folder (default: bridge-report)")
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--quick", action="store_true", help="fewer training epochs (a smoke run)")
    pd.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args, parser)
    except BridgeError as e:
        print(f"bridge: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"bridge: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args, parser) -> int:
    if args.command == "cache":
        return _cache_build(args)
    if args.command == "graph":
        return _graph_build(args) if args.graph_command == "build" else _graph_show(args)
    if args.command == "route":
        return _route(args)
    if args.command == "eval":
        return _eval(args, parser)
    if args.command == "plot":
        return _plot(args)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, seed=args.seed, quick=args.quick, plots=not args.no_plots)
        return 0
    parser.error(f"unknown command {args.command!r}")
    return 2


def _cache_build(args) -> int:
    from .encoders import get_encoder
    from .encoders.build import build_cache, list_audio_files, list_image_files, read_csv_items, read_lines

    meta = {}
    for kv in args.meta:
        if "=" not in kv:
            raise ValueError(f"--meta expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        meta[k] = v
    if args.text:
        items = read_lines(args.text, limit=args.limit)
        ids = [str(i) for i in range(len(items))]
    elif args.audio_dir or args.image_dir:
        files = list_audio_files(args.audio_dir) if args.audio_dir else list_image_files(args.image_dir)
        files = files[: args.limit] if args.limit else files
        if not files:
            raise ValueError(f"no audio or image files found in {args.audio_dir or args.image_dir}")
        items = [str(f) for f in files]
        ids = [Path(f).stem for f in files]
    else:
        ids, items = read_csv_items(args.csv, args.id_column, args.item_column)
        ids, items = ids[: args.limit or None], items[: args.limit or None]
    if args.ids:
        ids = Path(args.ids).read_text().splitlines()[: len(items)]
        if len(ids) != len(items):
            raise ValueError(f"--ids has {len(ids)} ids for {len(items)} rows; expected one id per row")
    enc = get_encoder(args.encoder)
    meta.setdefault("encoder", args.encoder)
    meta.setdefault("modality", enc.modality)
    cache = build_cache(enc, items, ids, args.out, chunk_size=args.chunk_size, meta=meta, progress=True)
    print(f"wrote {args.out}: {len(cache)} rows, dim {cache.dim}")
    return 0


def _graph_build(args) -> int:
    from .spec import build_graph_from_spec, load_spec

    spec = load_spec(args.spec)
    out = args.out or spec["graph"].get("out") or str(Path("graphs") / Path(args.spec).stem)
    graph = build_graph_from_spec(spec, progress=True)
    graph.save(out)
    print(f"saved graph with {len(graph.nodes)} nodes and {len(graph.edges)} edges to {out}")
    return 0


def _load(path):
    from .graph import load_graph

    return load_graph(path)


def _graph_show(args) -> int:
    g = _load(args.graph)
    s = g.summary()
    if args.json:
        print(dumps_json(s), end="")
        return 0
    print(f"{len(s['nodes'])} nodes:")
    for n in s["nodes"]:
        print(f"  {n['name']:<28} modality={n.get('modality')} language={n.get('language')} "
              f"encoder={n.get('encoder')} dim={n['dim']}")
    print(f"{len(s['edges'])} edges:")
    for e in s["edges"]:
        m = e["metrics"]
        print(f"  {e['src']} -> {e['dst']}  [{e['kind']}]  cost {e['cost']:.3f}  "
              f"val R@1 {m.get('val_R@1', float('nan')):.3f}  test R@1 {m.get('test_R@1', float('nan')):.3f}")
    return 0


def _route(args) -> int:
    g = _load(args.graph)
    routes = g.route(args.src, args.dst, k=args.k, weight=args.weight)
    for i, r in enumerate(routes if isinstance(routes, list) else [routes], 1):
        print(f"{i}. {r}")
    return 0


def _print_metrics(title, m):
    keys = [k for k in ("R@1", "R@5", "R@10", "MRR", "median_rank", "mAP") if k in m]
    print(title)
    print("  " + "  ".join(f"{k} {m[k]:.4f}" for k in keys if m[k] is not None))


def _eval(args, parser) -> int:
    from .evaluate import evaluate_route, fused_evaluation

    g = _load(args.graph)
    result = {}
    if args.walk:
        rep = g.walk(args.walk)
        rep.pop("loss_per_sample", None)
        result["walk"] = rep
        print(f"walk {' -> '.join(args.walk)} on {rep['n']} test rows")
        if "loss_mean" in rep:
            print(f"  reconstruction loss 1-cos: mean {rep['loss_mean']:.4f}, median "
                  f"{rep['loss_median']:.4f}; cycle R@1 {rep['cycle_R@1']:.4f}")
        for h in rep["hops"]:
            if "R@1" in h:
                print(f"  hop {h['src']} -> {h['dst']}: cos {h['cos']:.4f}, R@1 {h['R@1']:.4f}")
    elif args.fuse:
        if not args.src:
            parser.error("eval --fuse needs SRC")
        r = fused_evaluation(g, args.src, args.fuse, k=args.k, method=args.method,
                             val_weights=args.method == "weighted",
                             candidates=args.candidates)
        result["fused"] = r
        for name, m in r["single"].items():
            _print_metrics(f"route {name}", m)
        _print_metrics(f"fused ({args.method})", r["fused"])
    else:
        if not (args.src and args.dst):
            parser.error("eval needs SRC and DST (or --walk, or SRC with --fuse)")
        m = evaluate_route(g, args.src, args.dst, k=args.k)
        result["route"] = m
        for r in m["routes"]:
            print("route " + " -> ".join(r["nodes"]) + f"  (cost {r['cost']:.4f})")
        _print_metrics(f"{m['n_queries']} test queries, gallery {m['n_gallery']}", m)
    if args.json:
        from .files import write_json

        write_json(args.json, result)
    return 0


def _plot(args) -> int:
    from . import plots
    from .evaluate import r1_matrix

    g = _load(args.graph)
    nodes = args.nodes or g.nodes
    if args.kind == "graph":
        ax = plots.plot_graph(_quality_graph(g), weight="r1")
    elif args.kind == "heatmap":
        names, M = r1_matrix(g, nodes)
        ax = plots.plot_r1_heatmap(names, M)
    elif args.kind in ("projection", "gap"):
        named = _views(g, nodes, args.into)
        if args.kind == "projection":
            ax = plots.plot_projection(named, pairs=_line_pairs(named))
        else:
            from .gap import gap_table

            ax = plots.plot_gap_bars(gap_table(named))
    else:
        if not args.start:
            raise ValueError("plot hops needs --start NODE")
        from .demo import closed_walks

        walks = closed_walks(g, args.start, nodes=args.nodes)
        reps = [g.walk(w) for w in walks]
        ax = plots.plot_hops([len(w) - 1 for w in walks], [r["loss_per_sample"] for r in reps])
    plots.save_figure(ax, args.out)
    print(f"wrote {args.out}")
    return 0


def _quality_graph(g):
    import networkx as nx

    H = nx.DiGraph()
    for n, d in g.G.nodes(data=True):
        H.add_node(n, modality=d.get("modality"))
    for u, v, d in g.G.edges(data=True):
        H.add_edge(u, v, r1=d["metrics"].get("test_R@1", d["metrics"].get("val_R@1")))
    return H


def _views(g, nodes, into=None, max_rows=400):
    """Test rows shared by every node (by id), optionally translated into one node's space."""
    import numpy as np

    common = None
    for n in nodes:
        ids = set(g.cache(n).ids[g.test_rows(n)])
        common = ids if common is None else common & ids
    common = sorted(common or [])[:max_rows]
    if not common:
        raise ValueError(f"nodes {nodes} share no test ids")
    out = {}
    for n in nodes:
        c = g.cache(n)
        x = c.vectors(c.rows(common))
        out[n if into is None or n == into else f"{n} -> {into}"] = (
            x if into is None or n == into else g.translate(x, (n, into)))
    return out


def _line_pairs(named):
    names = list(named)
    return [(names[0], b) for b in names[1:]]


if __name__ == "__main__":
    sys.exit(main())
