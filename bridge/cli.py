"""The ``bridge`` command line.

    bridge cache build --encoder e5 --text captions.de.gz --out embeddings_cache/de.e5
    bridge graph build graphs/m30k.toml
    bridge graph show graphs/m30k
    bridge route graphs/m30k text:de@e5 text:en@minilm --k 3
    bridge route graphs/m30k text:de@e5 text:en@minilm --weight val_R@1
    bridge calibrate graphs/m30k
    bridge route graphs/m30k text:de@e5 text:en@minilm --gallery 10000
    bridge eval graphs/m30k text:de@e5 text:en@minilm
    bridge eval graphs/m30k text:de@e5 text:en@minilm --json r.json --csv r.csv --markdown r.md
    bridge eval graphs/m30k text:de@e5 --fuse text:en@e5,text:en@minilm
    bridge eval graphs/m30k --walk text:de@e5,text:en@minilm,text:de@e5
    bridge plot graph graphs/m30k --out graph.png
    bridge demo --out bridge-report

Every command has ``--help``. A bad argument, spec or input file prints one line
(``bridge: error: ...``) naming the bad value and exits 2, before anything is loaded,
trained or written; only :class:`~bridge.errors.BridgeError` is reported that way, so an
internal bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

from . import __version__
from .errors import BridgeError, CorruptFile, InvalidParameter, UnknownNode
from .files import dumps_json

__all__ = ["main", "build_parser"]

#: upper bounds of the integer options (beyond them a value is a typo, not a request)
MAX_ROUTES = 1000
MAX_CANDIDATES = 1_000_000


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``bridge: error: ...``."""

    def error(self, message):
        sub = self.prog[len("bridge"):].strip()
        hint = f" (see 'bridge {sub + ' ' if sub else ''}--help')"
        print(f"bridge: error: {message}{hint}", file=sys.stderr)
        raise SystemExit(2)


class _CacheOption(NamedTuple):
    """How ``bridge cache build`` reads one option (a ``--manifest`` table reads it the same way)."""

    flag: bool  # true/false, no value
    type: object  # the argparse type (None: a string)
    choices: tuple | None
    default: object


def _int_range(low: int, high: int | None = None):
    """An argparse type: an integer literal in ``[low, high]``."""
    what = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def parse(s: str) -> int:
        try:
            v = int(s, 10)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if v < low or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    parse.__name__ = what
    return parse


def _csv(s: str) -> list[str]:
    out = [p.strip() for p in s.split(",") if p.strip()]
    if not out:
        raise argparse.ArgumentTypeError(f"expected comma-separated node names, got {s!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
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
    options: dict = {}  # dest -> how a manifest table's value of that option is read

    def opt(container, flag, **kw):
        container.add_argument(flag, **kw)
        options[flag.lstrip("-").replace("-", "_")] = _CacheOption(
            flag=kw.get("action") == "store_true", type=kw.get("type"), choices=kw.get("choices"),
            default=kw.get("default", False if kw.get("action") == "store_true" else None))

    opt(pb, "--encoder",
                    help="encoder name (e5, minilm, sentence-transformers, aisfx, resemblyzer, "
                         "clip, clap, imagebind); required unless --manifest")
    src = pb.add_mutually_exclusive_group()
    opt(src, "--text", help="text file (optionally .gz), one row per line")
    opt(src, "--audio-dir", help="folder of audio files (sorted by name)")
    opt(src, "--image-dir", help="folder of image files (sorted by name)")
    opt(src, "--csv", help="CSV with an id column and an item column")
    opt(src, "--manifest",
                     help="TOML file with one [[cache]] table per cache to build; its keys are "
                          "these options without '--' (encoder, text, out, sample, ...; meta is "
                          "a table), paths relative to the manifest's folder; every table is "
                          "checked before any encoding starts")
    opt(pb, "--id-column", default="id", help="CSV id column (with --csv)")
    opt(pb, "--item-column", default=None, help="CSV item column (with --csv)")
    opt(pb, "--ids", help="file with one id per row (default: row numbers or file stems)")
    opt(pb, "--limit", type=_int_range(1), default=None, help="encode only the first N rows")
    opt(pb, "--sample", type=_int_range(1), default=None, metavar="N",
                    help="encode N rows spread across the whole (sorted) input instead of the "
                         "first N: drawn at random with --seed, or every n/N-th row with "
                         "--sample-mode even; kept in input order")
    opt(pb, "--sample-mode", choices=("random", "even"), default="random",
                    help="how --sample picks rows (default: random)")
    opt(pb, "--seed", type=int, default=0, help="seed of --sample random (default 0)")
    opt(pb, "--groups", default=None, metavar="COLUMN",
                    help="CSV column holding each row's group (with --csv), stored as the "
                         "cache's groups for leave-one-group-out splits")
    opt(pb, "--groups-pattern", default=None, metavar="REGEX",
                    help="regular expression with one capture group, searched in each id (the "
                         "file stem for --audio-dir/--image-dir), e.g. '_(\\w+)_\\d+$' gives "
                         "the speaker 'jackson' of the FSDD clip 3_jackson_12")
    opt(pb, "--model", default=None,
                    help="model folder or name (sentence-transformers, clip, clap)")
    opt(pb, "--device", default=None,
                    help="torch device, e.g. cpu or cuda (encoders that take one)")
    opt(pb, "--batch-size", type=_int_range(1), default=None,
                    help="items per forward pass (default: the encoder's own)")
    opt(pb, "--chunk-size", type=_int_range(1), default=256, help="rows per resumable chunk")
    opt(pb, "--out", help="cache folder to write; required unless --manifest")
    opt(pb, "--overwrite", action="store_true",
                    help="replace --out even when it holds something else than a cache of the "
                         "same encoder (its contents are deleted)")
    opt(pb, "--meta", action="append", default=[], metavar="KEY=VALUE",
                    help="metadata to store (modality=text, language=de, ...)")
    pb.set_defaults(cache_options=options)

    # graph
    pg = sub.add_parser("graph", help="build or inspect graphs")
    gsub = pg.add_subparsers(dest="graph_command", metavar="ACTION")
    gsub.required = True
    pgb = gsub.add_parser("build", help="build a graph from a TOML spec and train its edges",
                          description="Read a graph spec (see bridge.spec), load the caches, "
                                      "train every declared edge in order and save the graph. If an "
                                      "edge fails, the edges trained before it are saved to the "
                                      "out folder and the command exits 2 naming the failed edge.")
    pgb.add_argument("spec", help="graph spec (.toml)")
    pgb.add_argument("--out", help="where to save (default: the spec's [graph] out, else graphs/<spec name>)")
    pgb.add_argument("--overwrite", action="store_true",
                     help="replace --out even when it is not a saved graph (its contents are deleted)")
    pgs = gsub.add_parser("show", help="print a saved graph's nodes, edges and metrics")
    pgs.add_argument("graph", help="saved graph folder")
    pgs.add_argument("--json", action="store_true", help="print JSON")
    pgs.add_argument("--allow-external", action="store_true",
                    help="read caches that the graph references outside its folder "
                         "(written for caches read in place); refused by default")

    # route
    pr = sub.add_parser("route", help="plan the cheapest route(s) between two nodes")
    pr.add_argument("graph", help="saved graph folder")
    pr.add_argument("src")
    pr.add_argument("dst")
    pr.add_argument("--k", type=_int_range(1, MAX_ROUTES), default=1,
                    help="number of routes, cheapest first")
    pr.add_argument("--weight", default="cost", metavar="WEIGHT",
                    help="what a route is ranked by: 'cost' (default: the planner's edge cost, "
                         "-ln of the val R@1 lower bound plus a per-hop charge, summed over the "
                         "route), 'hops' (fewest edges), or an edge metric such as val_R@1, "
                         "val_R@1_lcb, test_R@1 or val_cos, maximised as the product of its "
                         "values over the route's hops (each edge weighs -ln max(value, 0.001))")
    pr.add_argument("--gallery", type=_int_range(2), default=None, metavar="N",
                    help="on a calibrated graph: predict R@1 among N gallery rows (default: the "
                         "pair's test gallery)")
    pr.add_argument("--allow-external", action="store_true",
                    help="read caches that the graph references outside its folder "
                         "(written for caches read in place); refused by default")

    # calibrate
    pc = sub.add_parser("calibrate", help="fit the route model of a saved graph on its "
                                          "validation routes",
                        description="Scores validation routes of a saved graph (every ordered "
                                    "node pair with val pairs: the K cheapest routes up to "
                                    "--max-hops, and every edge) and fits the model that "
                                    "predicts a route's R@1 (bridge.calibration); writes it to "
                                    "GRAPH/calibration.json. From then on `bridge route` "
                                    "prints each route's predicted R@1 and picks the best.")
    pc.add_argument("graph", help="saved graph folder")
    pc.add_argument("--k", type=_int_range(1, MAX_ROUTES), default=3,
                    help="validation routes per node pair (default 3)")
    pc.add_argument("--max-hops", type=_int_range(1, 64), default=4,
                    help="longest validation route (default 4 hops)")
    pc.add_argument("--allow-external", action="store_true",
                    help="read caches that the graph references outside its folder "
                         "(written for caches read in place); refused by default")

    # eval
    pe = sub.add_parser("eval", help="evaluate routes on held-out pairs",
                        description="Retrieval through the planned route from SRC to DST on the "
                                    "test pairs (the pair table of an edge between them, else "
                                    "shared ids, else the pairs composed along the route: a clip "
                                    "-> its English word -> the German word of the same id); "
                                    "--fuse retrieves through one route per gallery "
                                    "node and fuses the scores; --walk scores a closed walk "
                                    "(reconstruction loss, cycle R@1, per-hop figures).")
    pe.add_argument("graph", help="saved graph folder")
    pe.add_argument("src", nargs="?")
    pe.add_argument("dst", nargs="?")
    pe.add_argument("--k", type=_int_range(1, MAX_ROUTES), default=1,
                    help="average the outputs of the k cheapest routes (with --fuse: fuse the "
                         "k cheapest routes to each gallery node)")
    pe.add_argument("--candidates", type=_int_range(1, MAX_CANDIDATES), default=None,
                    help="with --fuse: per-route Faiss search of this many candidates, then "
                         "exact re-scoring of their union (default: score every gallery row)")
    pe.add_argument("--fuse", type=_csv, help="comma-separated gallery nodes holding the same items")
    pe.add_argument("--method", default=None, choices=["zscore", "rrf", "weighted"],
                    help="with --fuse: score fusion (default zscore; weighted: per-route weights fitted on validation pairs)")
    pe.add_argument("--walk", type=_csv, help="comma-separated closed walk A,B,...,A")
    pe.add_argument("--scoring", type=_scoring, default=None,
                    help="hubness-aware scoring: cosine (default), csls, qbnorm, or with options "
                         "such as csls:k=5 or qbnorm:beta=30,k=1 (needs a query bank, --bank)")
    pe.add_argument("--bank", choices=["train", "val"], default="val",
                    help="with --scoring: the query bank, the route's own source rows of this "
                         "split translated along it (never the test queries; default val)")
    pe.add_argument("--json", help="also write the figures to this JSON file")
    pe.add_argument("--csv", help="also write the figures as a CSV table to this file")
    pe.add_argument("--markdown", help="also write the figures as a Markdown table to this file")
    pe.add_argument("--allow-external", action="store_true",
                    help="read caches that the graph references outside its folder "
                         "(written for caches read in place); refused by default")

    # plot
    pp = sub.add_parser("plot", help="write PNG plots of a saved graph")
    pp.add_argument("kind", choices=["graph", "heatmap", "projection", "gap", "hops"])
    pp.add_argument("graph", help="saved graph folder")
    pp.add_argument("--nodes", type=_csv, help="nodes to include (projection, gap, heatmap)")
    pp.add_argument("--into", help="projection/gap: translate every node into this node's space first")
    pp.add_argument("--start", help="hops: the node the closed walks start from")
    pp.add_argument("--out", required=True, help="PNG file to write")
    pp.add_argument("--allow-external", action="store_true",
                    help="read caches that the graph references outside its folder "
                         "(written for caches read in place); refused by default")

    # demo
    pd = sub.add_parser("demo", help="build the demo graph on the shipped dataset and write a report",
                        description="Builds a graph over the shipped demo data (text in four "
                                    "languages, speech, digit images), plans routes, runs the "
                                    "reconstruction, retrieval and gap benchmarks and writes a "
                                    "report folder (JSON, PNG plots, index.html).")
    pd.add_argument("--out", default="bridge-report", help="report folder (default: bridge-report)")
    pd.add_argument("--seed", type=_int_range(0, 2**32 - 1), default=0)
    pd.add_argument("--quick", action="store_true", help="fewer training epochs (a smoke run)")
    pd.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args, parser)
    except BridgeError as e:
        msg = " ".join(str(e).split())  # one line, whatever the message holds
        print(f"bridge: error: {msg}", file=sys.stderr)
        return 2


def _dispatch(args, parser) -> int:
    if args.command == "cache":
        return _cache_build(args)
    if args.command == "graph":
        return _graph_build(args) if args.graph_command == "build" else _graph_show(args)
    if args.command == "route":
        return _route(args)
    if args.command == "calibrate":
        return _calibrate(args)
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
    from .encoders.build import BuildInterrupted

    jobs = _manifest_jobs(args) if args.manifest else [_cache_job(args)]
    for i, job in enumerate(jobs):
        try:
            _run_cache_job(job)
        except (BuildInterrupted, _LoadInterrupted) as e:
            left = f" ({len(jobs) - i - 1} more caches of the manifest not started)" if i < len(jobs) - 1 else ""
            print(f"bridge: {e}{left}", file=sys.stderr)
            return 130
    return 0


def _cache_job(args, where: str = "") -> dict:
    """Everything one cache build needs, read and checked before any encoding starts
    (``where`` prefixes the errors: the manifest table they come from)."""
    from .encoders.build import (groups_from_pattern, list_audio_files, list_image_files,
                                 read_csv_column, read_csv_items, read_lines, sample_rows)

    try:
        for opt in ("encoder", "out"):
            if not getattr(args, opt):
                raise InvalidParameter(f"--{opt} is required (or pass --manifest)")
        if not (args.text or args.audio_dir or args.image_dir or args.csv):
            raise InvalidParameter("one of --text, --audio-dir, --image-dir, --csv or --manifest "
                                   "is required")
        if args.limit and args.sample:
            raise InvalidParameter("--limit takes the first N rows and --sample N rows across the "
                                   "input; pass one of them")
        if args.groups and not args.csv:
            raise InvalidParameter("--groups names a CSV column and needs --csv; use "
                                   "--groups-pattern for file names or ids")
        if args.groups and args.groups_pattern:
            raise InvalidParameter("pass one of --groups and --groups-pattern")
        meta = {}
        for kv in args.meta:
            k, sep, v = kv.partition("=")
            if not sep or not k.strip():
                raise InvalidParameter(f"--meta expects KEY=VALUE, got {kv!r}")
            meta[k.strip()] = v
        enc_kwargs = {**_encoder_for_source(args), **_encoder_options(args)}
        _check_input_path(args)
        groups = None
        if args.text:
            items = read_lines(args.text, limit=args.limit)
            ids = [str(i) for i in range(len(items))]
        elif args.audio_dir or args.image_dir:
            files = list_audio_files(args.audio_dir) if args.audio_dir else list_image_files(args.image_dir)
            files = files[: args.limit] if args.limit else files
            if not files:
                raise CorruptFile(f"no {'audio' if args.audio_dir else 'image'} files found in "
                                  f"{args.audio_dir or args.image_dir}")
            items = [str(f) for f in files]
            ids = [Path(f).stem for f in files]
        else:
            ids, items = read_csv_items(args.csv, args.id_column, args.item_column)
            if args.groups:
                groups = read_csv_column(args.csv, args.groups)
            ids, items = ids[: args.limit or None], items[: args.limit or None]
            groups = groups[: args.limit or None] if groups is not None else None
        if args.ids:
            ids = _read_text(args.ids, "--ids").splitlines()[: len(items)]
            if len(ids) != len(items):
                raise InvalidParameter(
                    f"--ids has {len(ids)} ids for {len(items)} rows; expected one id per row")
        if not items:
            raise CorruptFile(f"no rows to encode in {args.text or args.csv}")
        if args.sample:
            keep = sample_rows(len(items), args.sample, seed=args.seed, how=args.sample_mode)
            items, ids = [items[i] for i in keep], [ids[i] for i in keep]
            groups = [groups[i] for i in keep] if groups is not None else None
        if args.groups_pattern:
            try:
                groups = groups_from_pattern(ids, args.groups_pattern)
            except InvalidParameter as e:
                e.args = (f"--groups-pattern: {e.args[0]}",)
                raise
        from .files import check_replace

        check_replace(args.out, ("cache", "cache-build"), args.overwrite)
    except BridgeError as e:
        if where:
            e.args = (f"{where}: {e.args[0]}",) + tuple(e.args[1:])
        raise
    return {"encoder": args.encoder, "kwargs": enc_kwargs, "items": items, "ids": ids,
            "groups": groups, "meta": meta, "out": args.out, "chunk_size": args.chunk_size,
            "batch_size": args.batch_size, "overwrite": args.overwrite}


class _LoadInterrupted(KeyboardInterrupt):
    """Ctrl-C while an encoder's model loads, before any row is encoded."""


def _run_cache_job(job: dict) -> None:
    from .encoders import get_encoder
    from .encoders.build import build_cache

    try:
        enc = get_encoder(job["encoder"], **job["kwargs"])
    except KeyboardInterrupt:  # before build_cache: no folder or part exists yet
        raise _LoadInterrupted(f"interrupted while loading encoder {job['encoder']!r}; "
                               f"nothing was written to {job['out']}") from None
    meta = job["meta"]
    meta.setdefault("encoder", job["encoder"])
    meta.setdefault("modality", enc.modality)
    cache = build_cache(enc, job["items"], job["ids"], job["out"], chunk_size=job["chunk_size"],
                        groups=job["groups"], meta=meta, progress=True,
                        batch_size=job["batch_size"], overwrite=job["overwrite"])
    print(f"wrote {job['out']}: {len(cache)} rows, dim {cache.dim}")


def _encoder_options(args) -> dict:
    """``--model`` / ``--device`` as constructor arguments of the chosen encoder; an
    encoder that takes no such argument is refused, naming the option."""
    import inspect

    from .encoders import encoder_class

    params = inspect.signature(encoder_class(args.encoder).__init__).parameters
    out = {}
    for opt, key in (("--model", "model"), ("--device", "device")):
        value = getattr(args, key)
        if value is None:
            if key in params and params[key].default is inspect.Parameter.empty:
                raise InvalidParameter(f"encoder {args.encoder!r} needs {opt} (a local folder "
                                       "or a model name)")
            continue
        if key not in params:
            takes = [o for o, k in (("--model", "model"), ("--device", "device")) if k in params]
            raise InvalidParameter(
                f"encoder {args.encoder!r} does not take {opt} (got {value!r}); it takes "
                f"{', '.join(takes) if takes else 'neither --model nor --device'}")
        out[key] = value
    return out


def _manifest_jobs(args) -> list[dict]:
    """One job per ``[[cache]]`` table of ``--manifest``, all checked before any runs."""
    import argparse

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    others = [o for o, v in (("--encoder", args.encoder), ("--out", args.out), ("--ids", args.ids),
                             ("--limit", args.limit), ("--sample", args.sample),
                             ("--groups", args.groups), ("--groups-pattern", args.groups_pattern),
                             ("--model", args.model), ("--device", args.device),
                             ("--batch-size", args.batch_size)) if v is not None]
    if others or args.meta:
        raise InvalidParameter(f"--manifest: put {', '.join(others) or '--meta'} in the [[cache]] "
                               "tables, not on the command line")
    text = _read_text(args.manifest, "--manifest")
    try:
        doc = tomllib.loads(text)
    except ValueError as e:
        raise CorruptFile(f"--manifest: {args.manifest} is not valid TOML ({e})") from None
    tables = doc.get("cache")
    extra = sorted(set(doc) - {"cache"})
    if extra:
        raise InvalidParameter(f"--manifest: unknown top-level keys {extra}; expected [[cache]] tables")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise InvalidParameter(f"--manifest: {args.manifest} needs at least one [[cache]] table")
    actions = {d: o for d, o in args.cache_options.items() if d != "manifest"}
    jobs, outs = [], {}
    for i, table in enumerate(tables, 1):
        where = f"--manifest [[cache]] #{i}"
        ns = argparse.Namespace(**{d: a.default for d, a in actions.items()}, manifest=None)
        ns.meta = []
        ns.overwrite = args.overwrite
        for key, value in table.items():
            dest = key.replace("-", "_")
            if dest not in actions:
                raise InvalidParameter(f"{where}: unknown key {key!r}; expected one of "
                                       f"{sorted(k.replace('_', '-') for k in actions)}")
            act = actions[dest]
            if dest == "meta":
                if not isinstance(value, dict):
                    raise InvalidParameter(f"{where}: meta must be a table of KEY = VALUE, got {value!r}")
                ns.meta = [f"{k}={v}" for k, v in value.items()]
                continue
            if act.flag:
                if not isinstance(value, bool):
                    raise InvalidParameter(f"{where}: {key} must be true or false, got {value!r}")
            elif isinstance(value, (dict, list, bool)):
                raise InvalidParameter(f"{where}: {key} must be a string or a number, got {value!r}")
            elif act.type is not None:
                try:
                    value = act.type(str(value))
                except (argparse.ArgumentTypeError, ValueError) as e:
                    raise InvalidParameter(f"{where}: {key}: {e}") from None
            else:
                value = str(value)
            if act.choices is not None and value not in act.choices:
                raise InvalidParameter(f"{where}: {key} must be one of {list(act.choices)}, got {value!r}")
            setattr(ns, dest, value)
        base = Path(args.manifest).resolve().parent  # paths are relative to the manifest
        for dest in ("text", "audio_dir", "image_dir", "csv", "ids", "out", "model"):
            v = getattr(ns, dest)
            if v and not Path(v).is_absolute() and (dest != "model" or (base / v).exists()):
                setattr(ns, dest, str(base / v))
        srcs = [o for o in ("text", "audio_dir", "image_dir", "csv") if getattr(ns, o)]
        if len(srcs) > 1:
            raise InvalidParameter(f"{where}: pass one input of text, audio-dir, image-dir, csv; "
                                   f"got {', '.join(s.replace('_', '-') for s in srcs)}")
        job = _cache_job(ns, where)
        key = str(Path(job["out"]).resolve())
        if key in outs:
            raise InvalidParameter(f"{where}: out {job['out']!r} is also the out of [[cache]] #{outs[key]}")
        outs[key] = i
        jobs.append(job)
    return jobs


def _source_modality(args) -> str | None:
    """The modality the input option implies (``--csv`` implies none)."""
    if args.text:
        return "text"
    if args.audio_dir:
        return "audio"
    if args.image_dir:
        return "image"
    return None


def _encoder_for_source(args) -> dict:
    """Keyword arguments that build the encoder's side matching the input; refuses an
    input the encoder has no side for (``--image-dir`` with a text encoder)."""
    from .encoders import MultiModalEncoder, encoder_class

    cls = encoder_class(args.encoder)  # UnknownEncoder names the registered ones
    want = _source_modality(args)
    multi = issubclass(cls, MultiModalEncoder)
    sides = tuple(cls.modalities) if multi else (cls.modality,)
    if want is None:
        return {}
    if want not in sides:
        opt = {"text": "--text", "audio": "--audio-dir", "image": "--image-dir"}[want]
        raise InvalidParameter(
            f"{opt} gives {want} input but encoder {args.encoder!r} encodes "
            f"{' and '.join(sides)} only; choose an encoder with {'an' if want[0] in 'aeiou' else 'a'} "
            f"{want} side")
    return {"modality": want} if multi else {}


def _check_input_path(args) -> None:
    for opt, path, folder in (("--text", args.text, False), ("--csv", args.csv, False),
                              ("--ids", args.ids, False), ("--audio-dir", args.audio_dir, True),
                              ("--image-dir", args.image_dir, True)):
        if path is None:
            continue
        p = Path(path)
        if not p.exists():
            raise CorruptFile(f"{opt}: {'folder' if folder else 'file'} not found: {p}")
        if folder and not p.is_dir():
            raise CorruptFile(f"{opt}: expected a folder, got the file {p}")
        if not folder and p.is_dir():
            raise CorruptFile(f"{opt}: expected a file, got the folder {p}")


def _read_text(path, opt: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CorruptFile(f"{opt}: file not found: {path}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise CorruptFile(f"{opt}: cannot read {path} as UTF-8 text ({e})") from None


def _check_out_file(path, opt: str) -> None:
    """An output file whose folder exists (checked before any work is done)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise InvalidParameter(f"{opt}: expected a file name, got the folder {p}")
    if not p.parent.is_dir() and str(p.parent) not in ("", "."):
        raise InvalidParameter(f"{opt}: folder {p.parent} does not exist; create it first")


def _check_nodes(g, names, opt: str) -> None:
    for n in names:
        if n not in g.nodes:
            e = UnknownNode(n, g.nodes)
            e.args = (f"{opt}: {e.args[0]}",)
            raise e


def _graph_build(args) -> int:
    from .spec import EdgeFailed, build_graph_from_spec, load_spec

    spec = load_spec(args.spec)
    out = args.out or spec["graph"].get("out") or str(Path("graphs") / Path(args.spec).stem)
    from .files import check_replace

    check_replace(out, "graph", getattr(args, "overwrite", False))  # before anything trains
    try:
        graph = build_graph_from_spec(spec, progress=True)
    except EdgeFailed as e:  # keep the edges trained before the failing one
        if e.trained == 0:
            print(f"bridge: error: {e}; no edge was trained before it, nothing saved",
                  file=sys.stderr)
            return 2
        e.graph.save(out, overwrite=args.overwrite)
        print(f"bridge: error: {e}; saved the graph of the {e.trained} edge(s) trained before it "
              f"({len(e.graph.edges)} directed) to {out}", file=sys.stderr)
        return 2
    graph.save(out, overwrite=args.overwrite)
    print(f"saved graph with {len(graph.nodes)} nodes and {len(graph.edges)} edges to {out}")
    return 0


def _load(path, args, load_caches: bool = True):
    from .graph import load_graph

    return load_graph(path, load_caches=load_caches,
                      allow_external=getattr(args, "allow_external", False))


def _fmt(v, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` places, missing values as ``-``."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.{digits}f}"
    return str(v)


def text_table(headers, rows) -> list[str]:
    """Lines of a plain text table: columns padded to their widest cell, numbers right-aligned."""
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and bool(rows)
               for i in range(len(headers))]

    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(vals, widths, numeric)).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells]


def _graph_show(args) -> int:
    g = _load(args.graph, args, load_caches=False)
    s = g.summary()
    if args.json:
        print(dumps_json(s), end="")
        return 0
    print(f"{len(s['nodes'])} nodes:")
    rows = [[n["name"], n.get("modality"), n.get("language"), n.get("encoder"), n["dim"]]
            for n in s["nodes"]]
    for line in text_table(["node", "modality", "language", "encoder", "dim"], rows):
        print("  " + line)
    print(f"{len(s['edges'])} edges:")
    rows = []
    for e in s["edges"]:
        m = e["metrics"]
        rows.append([e["src"], e["dst"], e["kind"], e["cost"], m.get("n_train"), m.get("n_val"),
                     m.get("n_test"), m.get("val_R@1"), m.get("val_R@1_lcb"), m.get("test_R@1")])
    for line in text_table(["src", "dst", "kind", "cost", "n_train", "n_val", "n_test",
                            "val_R@1", "val_R@1_lcb", "test_R@1"], rows):
        print("  " + line)
    if rows:
        print("  (val_R@1_lcb: one-sided 95% lower bound of val R@1 at its n_val; "
              "cost = -ln(max(lcb, 0.001)) + hop cost)")
    return 0


#: ``--weight`` choices that are not edge metrics
ROUTE_WEIGHTS = ("cost", "hops")


def _route(args) -> int:
    g = _load(args.graph, args, load_caches=False)
    _check_nodes(g, [args.src, args.dst], "route")
    weight = _route_weight(g, args.weight)
    routes = g.route(args.src, args.dst, k=args.k, weight=weight, gallery=args.gallery)
    routes = routes if isinstance(routes, list) else [routes]
    for i, r in enumerate(routes, 1):
        path = " -> ".join(r.nodes)
        hops = f"{r.hops} hop{'s' if r.hops != 1 else ''}"
        pred = ""
        if r.predicted_r1 is not None:
            lo, hi = r.interval
            pred = (f", predicted R@1 {r.predicted_r1:.3f} ± {r.predicted_sd:.3f} "
                    f"[{lo:.3f}, {hi:.3f}] at gallery {r.gallery}")
            if r.stale_edges:
                pred += f"; not calibrated: {', '.join(r.stale_edges)}"
        if args.weight == "cost":
            print(f"{i}. {path}  (cost {r.cost:.4f}, {hops}{pred})")
        elif args.weight == "hops":
            print(f"{i}. {path}  ({hops}, cost {_planner_cost(g, r):.4f}{pred})")
        else:
            import math

            print(f"{i}. {path}  ({args.weight} product {math.exp(-r.cost):.4f}, {hops}, "
                  f"cost {_planner_cost(g, r):.4f}{pred})")
    if g.calibration is not None and args.weight == "cost":
        print("(calibrated: ranked by predicted R@1, cost = -ln predicted R@1; ± one sd, "
              "[95% interval])")
    elif args.gallery is not None:
        print(f"(the graph is not calibrated: no R@1 prediction; run `bridge calibrate "
              f"{args.graph}`)")
    if len(routes) < args.k:
        print(f"only {len(routes)} route{'s' if len(routes) != 1 else ''} from {args.src} "
              f"to {args.dst} (asked for --k {args.k})")
    return 0


def _calibrate(args) -> int:
    from .graph_io import save_calibration

    g = _load(args.graph, args)
    cal = g.calibrate(k=args.k, max_hops=args.max_hops)
    path = save_calibration(g, args.graph)
    s = cal.summary()
    print(f"calibrated on {s['n_routes']} validation routes ({s['n_multi_hop']} with more "
          f"than one hop); weights: " + ", ".join(f"{k} {v:.4f}" for k, v in s["weights"].items())
          + f"; gallery exponent {s['gamma']:.3f}")
    if s["cv_mae"] is not None:
        print(f"cross-validated error of multi-hop routes (grouped by node pair): MAE "
              f"{s['cv_mae']:.4f}, RMSE {s['cv_rmse']:.4f}")
    else:
        print("too few node pairs with multi-hop routes to cross-validate: the weights stay "
              "near the edge-cost planner's")
    print(f"wrote {path}")
    return 0


def _planner_cost(g, r) -> float:
    return sum(g.G.edges[u, v]["cost"] for u, v in r.edges)


def _edge_metric_names(g) -> list[str]:
    """Numeric metrics that every edge of ``g`` has."""
    common = None
    for _, _, d in g.G.edges(data=True):
        names = {k for k, x in d["metrics"].items()
                 if isinstance(x, (int, float)) and not isinstance(x, bool)}
        common = names if common is None else common & names
    return sorted(common or ())


def _route_weight(g, weight: str):
    """The planner weight ``--weight`` names: ``"cost"``, a function counting hops, or
    ``-ln max(metric, 0.001)`` of an edge metric (so routes maximise the metric's product)."""
    import math

    if weight == "cost":
        return "cost"
    if weight == "hops":
        return lambda u, v, d: 1.0
    metrics = _edge_metric_names(g)
    if weight not in metrics or weight.startswith("n_"):
        choices = list(ROUTE_WEIGHTS) + [m for m in metrics if not m.startswith("n_")]
        raise InvalidParameter(f"--weight {weight!r} is not a route weight of this graph; "
                               f"expected one of {', '.join(choices)}")

    def fn(u, v, d):
        x = float(d["metrics"][weight])
        return -math.log(max(x, 0.001)) if math.isfinite(x) else -math.log(0.001)

    return fn


def _check_eval_args(args, parser) -> None:
    """Combinations of eval options that cannot be meant, refused before loading anything."""
    if args.walk and args.fuse:
        raise InvalidParameter("--walk and --fuse exclude each other")
    if args.walk:
        if args.src or args.dst:
            raise InvalidParameter("eval --walk takes no SRC or DST (the walk names its nodes)")
        w = args.walk
        if len(w) < 3 or w[0] != w[-1]:
            raise InvalidParameter(f"--walk: expected a closed walk A,B,...,A of at least two "
                                   f"hops, got {','.join(w)!r}")
    if args.fuse and args.dst:
        raise InvalidParameter("eval --fuse takes SRC only; the gallery nodes come from --fuse")
    if args.fuse and not args.src:
        raise InvalidParameter("eval --fuse needs SRC")
    if not args.walk and not args.fuse and not (args.src and args.dst):
        raise InvalidParameter("eval needs SRC and DST (or --walk, or SRC with --fuse)")
    if not args.fuse:
        for opt, val in (("--candidates", args.candidates), ("--method", args.method)):
            if val is not None:
                raise InvalidParameter(f"{opt} {val} applies to --fuse only")
    for opt, path in (("--json", args.json), ("--csv", args.csv), ("--markdown", args.markdown)):
        _check_out_file(path, opt)


def _print_metrics(title, m):
    keys = [k for k in ("R@1", "R@5", "R@10", "MRR", "median_rank", "mAP") if k in m]
    print(title)
    print("  " + "  ".join(f"{k} {m[k]:.4f}" for k in keys if m[k] is not None))


def _scoring(text: str):
    """``--scoring`` parsed by :func:`bridge.hubness.parse_scoring` (argparse names the flag)."""
    from .hubness import parse_scoring

    try:
        return parse_scoring(text)
    except BridgeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _eval(args, parser) -> int:
    from .evaluate import evaluate_route, fused_evaluation

    _check_eval_args(args, parser)
    g = _load(args.graph, args)
    _check_nodes(g, [n for n in (args.src, args.dst) if n] + list(args.walk or [])
                 + list(args.fuse or []), "eval")
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
                print(f"  hop {h['src']} -> {h['dst']}: cos {h['cos']:.4f}, R@1 {h['R@1']:.4f} "
                      f"on {h['n']} rows")
            else:
                print(f"  hop {h['src']} -> {h['dst']}: no true targets known (no test id of "
                      f"{args.walk[0]} is a row of {h['dst']}), not scored")
    elif args.fuse:
        if not args.src:
            parser.error("eval --fuse needs SRC")
        method = args.method or "zscore"
        r = fused_evaluation(g, args.src, args.fuse, k=args.k, method=method,
                             val_weights=method == "weighted",
                             candidates=args.candidates, scoring=args.scoring, bank=args.bank)
        result["fused"] = r
        for name, m in r["single"].items():
            _print_metrics(f"route {name}", m)
        _print_metrics(f"fused ({method})", r["fused"])
        if r.get("weights") is not None:
            print("fitted route weights (on val pairs):")
            for name, w in zip(r["single"], r["weights"]):
                print(f"  {w:.3f}  {name}")
    else:
        if not (args.src and args.dst):
            parser.error("eval needs SRC and DST (or --walk, or SRC with --fuse)")
        m = evaluate_route(g, args.src, args.dst, k=args.k, scoring=args.scoring, bank=args.bank)
        result["route"] = m
        if m.get("scoring"):
            print(f"scoring {m['scoring']}, query bank: {m['n_bank']} {m['bank']} rows "
                  "translated along the route")
        for r in m["routes"]:
            print("route " + " -> ".join(r["nodes"]) + f"  (cost {r['cost']:.4f})")
        _print_metrics(f"{m['n_queries']} test queries, gallery {m['n_gallery']}", m)
    if args.json:
        from .files import write_json

        write_json(args.json, result)
    if args.csv or args.markdown:
        from .files import atomic_write_bytes

        headers, rows = figure_rows(result)
        if args.csv:
            atomic_write_bytes(args.csv, csv_table(headers, rows).encode("utf-8"))
        if args.markdown:
            atomic_write_bytes(args.markdown, markdown_table(headers, rows).encode("utf-8"))
    return 0


#: the figures of ``bridge eval`` in the order its tables show them
FIGURES = ("n", "R@1", "R@5", "R@10", "MRR", "median_rank", "mAP", "cos",
           "loss_mean", "loss_median", "cycle_R@1", "weight", "cost")


def figure_rows(result: dict) -> tuple[list[str], list[list]]:
    """The figures of a ``bridge eval`` result as one table: a row per route, fused score,
    walk or hop, a column per figure any row has (missing cells are ``None``)."""
    rows = []
    if "route" in result:
        m = result["route"]
        name = " | ".join(" -> ".join(r["nodes"]) for r in m["routes"])
        rows.append(("route", name, {**m, "n": m.get("n_queries"),
                                     "cost": sum(r["cost"] for r in m["routes"]) / len(m["routes"])}))
    if "fused" in result:
        r = result["fused"]
        weights = r.get("weights") or [None] * len(r["single"])
        for (name, m), w, rt in zip(r["single"].items(), weights, r["routes"]):
            rows.append(("route", name, {**m, "weight": w, "cost": rt["cost"]}))
        rows.append((f"fused ({r['method']})", " + ".join(r["single"]), r["fused"]))
    if "walk" in result:
        w = result["walk"]
        rows.append(("walk", " -> ".join(w["nodes"]), w))
        for h in w["hops"]:
            rows.append(("hop", f"{h['src']} -> {h['dst']}", h))
    cols = [k for k in FIGURES if any(_is_figure(m.get(k)) for _, _, m in rows)]
    table = [[kind, name] + [m.get(k) if _is_figure(m.get(k)) else None for k in cols]
             for kind, name, m in rows]
    return ["what", "name"] + cols, table


def _is_figure(v) -> bool:
    import numbers

    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def csv_table(headers, rows) -> str:
    """``rows`` as CSV text (full precision; missing cells empty)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    for r in rows:
        w.writerow(["" if v is None else repr(float(v)) if isinstance(v, float) else v for v in r])
    return buf.getvalue()


def markdown_table(headers, rows, digits: int = 4) -> str:
    """``rows`` as a Markdown table (floats to ``digits`` places; missing cells ``-``)."""
    def cell(v):
        return _fmt(v, digits).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---" if i < 2 else "---:" for i in range(len(headers))) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(args) -> int:
    from . import plots
    from .evaluate import r1_matrix

    if args.nodes and args.kind == "graph":
        raise InvalidParameter("--nodes applies to plot heatmap, projection, gap and hops, "
                               "not to plot graph (which draws every node)")
    if args.into and args.kind not in ("projection", "gap"):
        raise InvalidParameter(f"--into applies to plot projection and gap, not to plot {args.kind}")
    if args.start and args.kind != "hops":
        raise InvalidParameter(f"--start applies to plot hops, not to plot {args.kind}")
    if args.kind == "hops" and not args.start:
        raise InvalidParameter("plot hops needs --start NODE")
    _check_out_file(args.out, "--out")
    g = _load(args.graph, args, load_caches=args.kind != "graph")
    _check_nodes(g, list(args.nodes or []) + [n for n in (args.into, args.start) if n], "plot")
    nodes = args.nodes or g.nodes
    if args.kind == "graph":
        from .demo import quality_graph

        ax = plots.plot_graph(quality_graph(g), weight="r1")
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
        from .demo import closed_walks

        walks = closed_walks(g, args.start, nodes=args.nodes)
        reps = [g.walk(w) for w in walks]
        ax = plots.plot_hops([len(w) - 1 for w in walks], [r["loss_per_sample"] for r in reps])
    plots.save_figure(ax, args.out)
    print(f"wrote {args.out}")
    return 0


def _views(g, nodes, into=None, max_rows=400):
    """Test rows shared by every node (by id), optionally translated into one node's space."""
    import numpy as np

    common = None
    for n in nodes:
        ids = set(g.cache(n).ids[g.test_rows(n)])
        common = ids if common is None else common & ids
    common = sorted(common or [])[:max_rows]
    if not common:
        from .errors import NoPairs

        raise NoPairs(f"nodes {nodes} share no test ids; choose nodes with common test rows")
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
