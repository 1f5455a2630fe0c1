#!/usr/bin/env python
"""M2M language bridge on Multi30K: ``text@e5 -> text:en@minilm``, trained on English only.

Setting
-------
A translator from multilingual-e5-small space into English MiniLM (all-MiniLM-L6-v2) space
is fitted on English pairs only: ``train.en.e5 -> train.en.minilm`` (29,000 Multi30K
captions). Queries are the German, French and Czech captions of ``test_2016_flickr``
embedded by e5 and translated; the gallery is the 1,000 English test captions in MiniLM
space, and query i's answer is gallery row i. The translator never sees a foreign
*training* pair: any cross-lingual ability comes from e5's shared space, carried across.

Methods (side by side, per language and their mean)
---------------------------------------------------
- ``floor``: MiniLM applied directly to the foreign text (``test.{lang}.minilm ->
  test.en.minilm``), an English-only encoder used out of its language;
- ``native``: e5's own cross-lingual retrieval (``test.{lang}.e5 -> test.en.e5``), the
  reference of every recovery ratio (bridged metric / native metric, same direction);
- ``ridge``: ridge least squares (``make_translator("linear")``, alpha chosen on val);
- ``procrustes``: orthogonal Procrustes, centred and scaled;
- ``procrustes_uncentred``: the same without centring or scaling (shows the collapse);
- ``relative``: relative representations over the 29,000 anchor pairs (ASIF-style; its
  ``k`` and ``power`` chosen on val by the translator's ``"auto"`` search);
- ``mlp_infonce``, ``mlp_infonce_mse``: MLPs from a random start (no linear path),
  InfoNCE and InfoNCE + w*MSE;
- ``mlp_lstsq``: a residual MLP whose linear path starts at the val-chosen ridge solution
  (output layer at zero, so training starts exactly at least squares);
- fused routes (``bridge.fusion``): the native e5 route and the best bridged route (best
  single translator on val) fused by z-score sum, by RRF, and by per-route weights fitted
  on val (``fit_route_weights`` on the stacked de/fr/cs val queries, applied to test);
  plus three routes (native + ridge + best MLP), equal z-score and learned weights.

Every method is also scored in the reverse direction (``b->a``: English MiniLM queries
retrieving the translated foreign captions; for native, English e5 -> foreign e5); the
learned fusion weights are the forward ones, applied unchanged to the reverse direction.
Metrics come from ``bridge.retrieval`` (exact flat search): R@1/5/10, MRR, median rank.
Recovery = bridged / native per language; the "mean" column averages the per-language
values (of metrics and of recovery ratios).

Selection protocol (val only, never test)
-----------------------------------------
All choices use the ``val`` split: foreign val captions ``val.{de,fr,cs}.e5`` translated
and retrieved among ``val.en.minilm`` (1,014 rows), scored by the mean over de/fr/cs of
val R@1; one setting for all languages.

- ridge alpha: grid ``RIDGE_ALPHAS`` (ties go to the larger alpha);
- MLPs: early stopping (best epoch restored) on R@1 of the concatenated foreign val
  captions against ``val.en.minilm`` (``labels_val`` marks the three copies of each English
  caption as the same target); each variant's grid (``MLP_GRIDS``: loss weights, lr,
  epochs) is searched with seed 0, the winner is then trained with every seed;
- best MLP and best single translator: highest mean val R@1 (mean over seeds);
- fusion weights: ``fit_route_weights`` on val (simplex grid, step 0.1).

MLPs are reported as mean ± std (population std) over seeds (MLP initialisation and batch
order); closed-form methods do not depend on the seed. The training-size curve refits
ridge (alpha re-chosen on val at each size), Procrustes and the best MLP on 1k, 3k, 10k and
29k English pairs (a random subset per seed; MLP epochs scaled by 29,000 / n, at most
``CURVE_MAX_EPOCHS``, so that small sets get about as many optimiser steps).

Outputs: ``benchmarks/results/language_bridge.json`` (every number, the val grids and the
chosen settings), ``language_bridge_r1.png`` (test R@1 per method and language) and
``language_bridge_size_curve.png``; ``--quick`` writes ``language_bridge_quick.*``.

Command (full run, 3 seeds: about 15 minutes on 2 shared CPU cores, 1 torch thread)::

    .venv/bin/python benchmarks/language_bridge.py

    .venv/bin/python benchmarks/language_bridge.py --quick          # ~2 minutes, 1 seed
    .venv/bin/python benchmarks/language_bridge.py --seeds 5        # seeds 0..4
    .venv/bin/python benchmarks/language_bridge.py --seeds 3,4      # these seeds

The data are read in place from ``../shared/embeddings/multi30k`` (or ``$BRIDGE_SHARED``).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

from bridge.fusion import fit_route_weights, fused_metrics  # noqa: E402
from bridge.retrieval import bidirectional_metrics, recovery_ratio  # noqa: E402
from bridge.translators import make_translator  # noqa: E402

LANGS = ("de", "fr", "cs")
KS = (1, 5, 10)
METRICS = ("R@1", "R@5", "R@10", "MRR", "median_rank")
RECOVERY_KEYS = ("R@1", "R@5", "R@10", "MRR")

RIDGE_ALPHAS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)

# Shared MLP settings; each variant's grid below overrides some of them.
MLP_BASE = dict(width=512, depth=2, residual=True, dropout=0.1, layer_norm=True,
                batch_size=512, lr=1e-3, weight_decay=1e-2, temperature=0.05, patience=5)
MLP_GRIDS = {
    # random initialisation, no linear path
    "mlp_infonce": [dict(init=None, loss="infonce", epochs=12, width=w) for w in (512, 1024)],
    "mlp_infonce_mse": [dict(init=None, loss=f"infonce+{w}*mse", epochs=12, width=1024)
                        for w in (0.1, 1.0)],
    # linear path from the val-chosen ridge solution (+ residual network)
    "mlp_lstsq": [dict(init="lstsq", loss=loss, epochs=10, lr=lr)
                  for loss in ("infonce", "infonce+0.1*mse", "infonce+1.0*mse")
                  for lr in (1e-3, 1e-4)],
}
QUICK_GRIDS = {
    "mlp_infonce": [dict(init=None, loss="infonce", epochs=4)],
    "mlp_infonce_mse": [dict(init=None, loss="infonce+0.1*mse", epochs=4)],
    "mlp_lstsq": [dict(init="lstsq", loss="infonce", epochs=4)],
}
FUSION_LABELS = {"zscore": "z-score sum", "rrf": "RRF", "weighted": "learned weights"}
FUSED_PREFIXES = ("z(", "rrf(", "learned(")

SIZES = (1000, 3000, 10000, 29000)
QUICK_SIZES = (1000, 3000, 29000)
CURVE_MAX_EPOCHS = 60

LABELS = {
    "floor": "floor: MiniLM on foreign text",
    "native": "native e5 (reference)",
    "ridge": "ridge least squares",
    "procrustes": "Procrustes centred+scaled",
    "procrustes_uncentred": "Procrustes uncentred",
    "relative": "relative / ASIF",
    "mlp_infonce": "MLP InfoNCE (random init)",
    "mlp_infonce_mse": "MLP InfoNCE+MSE (random init)",
    "mlp_lstsq": "MLP from least squares (+residual)",
}


# ---------------------------------------------------------------------------
# data


def load_data(n_train: int | None = None) -> dict:
    """Float32 arrays: train English pairs, and per split the e5/MiniLM views."""
    d = {"X": C.load_m30k("train", "en", "e5"), "Y": C.load_m30k("train", "en", "minilm")}
    if n_train is not None:
        d["X"], d["Y"] = d["X"][:n_train], d["Y"][:n_train]
    for split in ("val", "test"):
        s = {"en_e5": C.load_m30k(split, "en", "e5"), "en_minilm": C.load_m30k(split, "en", "minilm")}
        for lang in LANGS:
            s[f"{lang}_e5"] = C.load_m30k(split, lang, "e5")
            s[f"{lang}_minilm"] = C.load_m30k(split, lang, "minilm")
        d[split] = s
    v = d["val"]
    n_val = v["en_minilm"].shape[0]
    # early-stopping set: every foreign val caption against the English MiniLM captions
    d["es_X"] = np.concatenate([v[f"{lang}_e5"] for lang in LANGS])
    d["es_Y"] = np.tile(v["en_minilm"], (len(LANGS), 1))
    d["es_labels"] = np.tile(np.arange(n_val), len(LANGS))
    return d


# ---------------------------------------------------------------------------
# scoring


def _keep(m: dict) -> dict:
    return {k: m[k] for k in METRICS}


def _with_mean(per_lang: dict) -> dict:
    """Add ``"mean"``: the mean over LANGS of every numeric leaf."""
    def avg(parts):
        if isinstance(parts[0], dict):
            return {k: avg([p[k] for p in parts]) for k in parts[0]}
        return float(np.mean(parts))

    return {**per_lang, "mean": avg([per_lang[lang] for lang in LANGS])}


def score_pairs(a: dict, b: dict, native: dict) -> dict:
    """Both directions per language for query views ``a[lang]`` and gallery ``b[lang]``,
    with recovery against the native figures."""
    out = {}
    for lang in LANGS:
        m = bidirectional_metrics(a[lang], b[lang], ks=KS)
        fwd, rev = _keep(m["a->b"]), _keep(m["b->a"])
        out[lang] = {"a->b": fwd, "b->a": rev,
                     "recovery": recovery_ratio(fwd, native[lang]["a->b"], RECOVERY_KEYS),
                     "recovery_b->a": recovery_ratio(rev, native[lang]["b->a"], RECOVERY_KEYS)}
    return _with_mean(out)


def translated(T, split: dict) -> dict:
    return {lang: T.transform(split[f"{lang}_e5"]) for lang in LANGS}


def score_translator(T, d: dict, native: dict) -> dict:
    t = d["test"]
    return score_pairs(translated(T, t), {lang: t["en_minilm"] for lang in LANGS}, native)


def val_r1(T, d: dict) -> dict:
    """Val R@1 of foreign e5 -> English MiniLM per language, and their mean."""
    v = d["val"]
    out = {}
    for lang in LANGS:
        m = bidirectional_metrics(T.transform(v[f"{lang}_e5"]), v["en_minilm"], ks=(1,))
        out[lang] = m["a->b"]["R@1"]
    out["mean"] = float(np.mean([out[lang] for lang in LANGS]))
    return out


# ---------------------------------------------------------------------------
# translators


def fit_ridge(X, Y, d: dict):
    """Ridge with alpha chosen by mean val R@1 (ties: larger alpha)."""
    grid, best = {}, None
    for a in RIDGE_ALPHAS:
        T = make_translator("linear", alpha=a).fit(X, Y)
        r = val_r1(T, d)
        grid[str(a)] = r
        if best is None or r["mean"] >= best[0]:
            best = (r["mean"], a, T)
    return best[2], {"alpha": best[1], "val_grid": grid}


def fit_mlp(cfg: dict, X, Y, d: dict, seed: int, alpha: float, device: str):
    params = {**MLP_BASE, **cfg}
    if params.get("init") == "lstsq":
        params["alpha"] = alpha
    C.set_seed(seed)
    T = make_translator("mlp", seed=seed, device=device, **params)
    T.fit(X, Y, d["es_X"], d["es_Y"], labels_val=d["es_labels"])
    rep = T.fit_report_
    fit = {"best_epoch": rep["best_epoch"], "epochs_run": rep["epochs_run"],
           "early_stopping_val_R@1": rep["best_val_r1"], "final_temperature": rep["temperature"],
           "seconds": round(rep["seconds"], 1)}
    return T, params, fit


# ---------------------------------------------------------------------------
# fusion


def route_views(d: dict, split: str, route: str, models: dict) -> tuple[dict, dict]:
    """Per language: query view and gallery view of a route (``native`` = e5 itself)."""
    s = d[split]
    if route == "native":
        return ({lang: s[f"{lang}_e5"] for lang in LANGS}, {lang: s["en_e5"] for lang in LANGS})
    return translated(models[route], s), {lang: s["en_minilm"] for lang in LANGS}


def run_fusion(d: dict, routes: list[str], models: dict, method: str, native: dict,
               weights=None) -> dict:
    """Fused test metrics per language, both directions (``weights`` for ``weighted``)."""
    views = [route_views(d, "test", r, models) for r in routes]
    out = {}
    for lang in LANGS:
        Q = [q[lang] for q, _ in views]
        G = [g[lang] for _, g in views]
        fwd = _keep(fused_metrics(Q, G, method=method, weights=weights, ks=KS))
        rev = _keep(fused_metrics(G, Q, method=method, weights=weights, ks=KS))
        out[lang] = {"a->b": fwd, "b->a": rev,
                     "recovery": recovery_ratio(fwd, native[lang]["a->b"], RECOVERY_KEYS),
                     "recovery_b->a": recovery_ratio(rev, native[lang]["b->a"], RECOVERY_KEYS)}
    return _with_mean(out)


def learn_weights(d: dict, routes: list[str], models: dict) -> list[float]:
    """Route weights on val: the de/fr/cs val queries stacked against the val gallery."""
    views = [route_views(d, "val", r, models) for r in routes]
    Q = [np.concatenate([q[lang] for lang in LANGS]) for q, _ in views]
    G = [g[LANGS[0]] for _, g in views]
    n = G[0].shape[0]
    w = fit_route_weights(Q, G, relevant=np.tile(np.arange(n), len(LANGS)), step=0.1)
    return [float(x) for x in w]


# ---------------------------------------------------------------------------
# the run


def run(args) -> dict:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    seeds = args.seeds
    grids = QUICK_GRIDS if args.quick else MLP_GRIDS
    sizes = QUICK_SIZES if args.quick else SIZES
    d = load_data()
    X, Y = d["X"], d["Y"]
    t = d["test"]
    out_json = args.prefix.with_suffix(".json")

    result = {
        "benchmark": "language_bridge",
        "setting": {
            "edge": "text@e5 -> text:en@minilm",
            "train": f"train.en.e5 -> train.en.minilm ({X.shape[0]} English pairs only)",
            "queries": "test_2016_flickr.{de,fr,cs}.e5, translated (1,000 per language)",
            "gallery": "test_2016_flickr.en.minilm (1,000); query i's answer is row i",
            "val": "val.{de,fr,cs}.e5 -> val.en.minilm (1,014 per language)",
            "data_dir": str(C.m30k_path("val", "en", "e5").parent),
        },
        "protocol": {
            "selection": "every hyper-parameter chosen on val by mean val R@1 over de/fr/cs "
                         "(one setting for all languages); test is only reported",
            "mlp_grid": "each MLP variant's grid searched with seed 0; the winner is trained "
                        "with every seed",
            "early_stopping": "MLPs keep the epoch with the best R@1 of the concatenated "
                              "foreign val captions (val.{de,fr,cs}.e5) against val.en.minilm "
                              f"(epoch 0 included; patience {MLP_BASE['patience']})",
            "best_mlp / best_single": "highest mean val R@1 (mean over seeds)",
            "fusion": "routes 'native' (test.{lang}.e5 vs test.en.e5) and bridged routes "
                      "(translated test.{lang}.e5 vs test.en.minilm); 'weighted' uses "
                      "fit_route_weights on the stacked de/fr/cs val queries (step 0.1); "
                      "the reverse direction reuses the forward weights",
            "directions": "a->b: foreign query -> English gallery (headline); b->a: English "
                          "query -> foreign captions (translated, or e5 for native, MiniLM "
                          "for the floor)",
            "recovery": "method metric / native e5 metric, same language and direction; the "
                        "'mean' entry is the mean of the per-language values",
            "seeds": "mean and population std over seeds; seeds drive MLP initialisation, "
                     "batch order and the size-curve subsets; closed-form methods are "
                     "seed-independent (n=1)",
            "metrics": "bridge.retrieval.bidirectional_metrics / bridge.fusion.fused_metrics, "
                       "exact, pessimistic ties",
        },
        "config": {"quick": args.quick, "seeds": seeds, "device": args.device,
                   "torch_threads": args.threads, "ridge_alphas": list(RIDGE_ALPHAS),
                   "mlp_base": MLP_BASE, "mlp_grids": grids, "sizes": list(sizes),
                   "curve_max_epochs": CURVE_MAX_EPOCHS},
        "labels": dict(LABELS),
    }

    def save():
        result["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
        C.write_result(out_json, result, started=started)

    # -- references ---------------------------------------------------------------
    t0 = time.perf_counter()
    native_views = route_views(d, "test", "native", {})
    native = {}
    for lang in LANGS:
        m = bidirectional_metrics(native_views[0][lang], native_views[1][lang], ks=KS)
        native[lang] = {"a->b": _keep(m["a->b"]), "b->a": _keep(m["b->a"])}
    per_seed: dict[str, list[dict]] = {}
    per_seed["native"] = [score_pairs(*native_views, native)]
    per_seed["floor"] = [score_pairs({lang: t[f"{lang}_minilm"] for lang in LANGS},
                                     {lang: t["en_minilm"] for lang in LANGS}, native)]
    v = d["val"]
    native_val = {lang: bidirectional_metrics(v[f"{lang}_e5"], v["en_e5"], ks=(1,))["a->b"]["R@1"]
                  for lang in LANGS}
    native_val["mean"] = float(np.mean(list(native_val.values())))
    val_scores: dict[str, list[dict]] = {"native": [native_val]}

    # -- closed-form translators ------------------------------------------------------
    selection: dict = {}
    ridge, selection["ridge"] = fit_ridge(X, Y, d)
    alpha = selection["ridge"]["alpha"]
    closed = {
        "ridge": ridge,
        "procrustes": make_translator("procrustes", center=True, scale=True).fit(X, Y),
        "procrustes_uncentred": make_translator("procrustes", center=False, scale=False).fit(X, Y),
        "relative": make_translator("relative", k="auto", power="auto").fit(
            X, Y, d["es_X"], d["es_Y"], labels_val=d["es_labels"]),
    }
    selection["relative"] = {"k": closed["relative"].k_, "power": closed["relative"].power_,
                             "n_anchors": int(X.shape[0]),
                             "searched": "k in (16, 64, 256) x power in (1, 4, 8, 16), by "
                                         "R@1 of the concatenated foreign val captions"}
    selection["procrustes"] = {"scale": closed["procrustes"].s_}
    method_params = {"ridge": {"kind": "linear", "alpha": alpha},
                     "procrustes": {"kind": "procrustes", "center": True, "scale": True},
                     "procrustes_uncentred": {"kind": "procrustes", "center": False, "scale": False},
                     "relative": {"kind": "relative", "k": closed["relative"].k_,
                                  "power": closed["relative"].power_}}
    for name, T in closed.items():
        per_seed[name] = [score_translator(T, d, native)]
        val_scores[name] = [val_r1(T, d)]
    timings["closed_form"] = time.perf_counter() - t0
    print(f"[closed form] ridge alpha={alpha}, relative k={closed['relative'].k_} "
          f"power={closed['relative'].power_} ({timings['closed_form']:.0f}s)", flush=True)
    for name in closed:
        print(f"  {name:22s} val R@1 {val_scores[name][0]['mean']:.4f}  "
              f"test R@1 {per_seed[name][0]['mean']['a->b']['R@1']:.4f}", flush=True)

    # -- MLP grids on val (seed 0) ----------------------------------------------------------
    t0 = time.perf_counter()
    mlp_models: dict[str, dict[int, object]] = {}
    mlp_fit: dict[str, list] = {}
    selection["mlp"] = {}
    chosen_cfg = {}
    for variant, grid in grids.items():
        rows, best = [], None
        for cfg in grid:
            T, params, fit = fit_mlp(cfg, X, Y, d, seeds[0], alpha, args.device)
            r = val_r1(T, d)
            rows.append({"config": cfg, "val_R@1": r, "fit": fit})
            print(f"[grid] {variant} {cfg}: val R@1 {r['mean']:.4f} "
                  f"({' '.join(f'{r[lang]:.3f}' for lang in LANGS)}) epoch "
                  f"{fit['best_epoch']}/{fit['epochs_run']} {fit['seconds']:.0f}s", flush=True)
            if best is None or r["mean"] > best[0]:
                best = (r["mean"], cfg, T, params, fit, r)
        _, cfg, T, params, fit, r = best
        chosen_cfg[variant] = cfg
        selection["mlp"][variant] = {"grid_seed": seeds[0], "grid": rows, "chosen": params}
        method_params[variant] = {"kind": "mlp", **params}
        mlp_models[variant] = {seeds[0]: T}
        mlp_fit[variant] = [{"seed": seeds[0], **fit}]
        per_seed[variant] = [score_translator(T, d, native)]
        val_scores[variant] = [r]
    timings["mlp_grid"] = time.perf_counter() - t0

    # -- the chosen MLPs with the other seeds -------------------------------------------------
    t0 = time.perf_counter()
    for seed in seeds[1:]:
        for variant, cfg in chosen_cfg.items():
            T, _, fit = fit_mlp(cfg, X, Y, d, seed, alpha, args.device)
            mlp_models[variant][seed] = T
            mlp_fit[variant].append({"seed": seed, **fit})
            per_seed[variant].append(score_translator(T, d, native))
            val_scores[variant].append(val_r1(T, d))
            print(f"[seed {seed}] {variant}: val R@1 {val_scores[variant][-1]['mean']:.4f} "
                  f"epoch {fit['best_epoch']}/{fit['epochs_run']} {fit['seconds']:.0f}s", flush=True)
    timings["mlp_seeds"] = time.perf_counter() - t0

    def mean_val(name):
        return float(np.mean([r["mean"] for r in val_scores[name]]))

    best_mlp = max(grids, key=mean_val)
    translators = ["ridge", "procrustes", "procrustes_uncentred", "relative", *grids]
    best_single = max(translators, key=mean_val)
    selection["best_mlp"] = best_mlp
    selection["best_single_translator"] = best_single
    selection["val_mean_R@1"] = {name: C.mean_std([r["mean"] for r in rs])
                                 for name, rs in val_scores.items()}
    result["selection"] = selection
    print(f"[select] best MLP on val: {best_mlp}; best single translator on val: {best_single}",
          flush=True)

    # -- fusion ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    fusions = {
        f"z(native+{best_single})": (["native", best_single], "zscore", None),
        f"rrf(native+{best_single})": (["native", best_single], "rrf", None),
        f"learned(native+{best_single})": (["native", best_single], "weighted", "val"),
        f"z(native+ridge+{best_mlp})": (["native", "ridge", best_mlp], "zscore", None),
        f"learned(native+ridge+{best_mlp})": (["native", "ridge", best_mlp], "weighted", "val"),
    }
    if best_single != "ridge":
        fusions["z(native+ridge)"] = (["native", "ridge"], "zscore", None)
    fusion_info = {name: {"routes": routes, "method": method, "weights": [] if w else None}
                   for name, (routes, method, w) in fusions.items()}
    for seed in seeds:
        models = {**closed, **{vname: mlp_models[vname][seed] for vname in grids}}
        for name, (routes, method, w) in fusions.items():
            if all(r in closed or r == "native" for r in routes) and seed != seeds[0]:
                continue  # seed-independent routes: computed once
            weights = None
            if w == "val":
                weights = learn_weights(d, routes, models)
                fusion_info[name]["weights"].append(dict(zip(routes, weights)))
            per_seed.setdefault(name, []).append(run_fusion(d, routes, models, method, native,
                                                            weights))
            result["labels"][name] = f"fused, {FUSION_LABELS[method]}: {' + '.join(routes)}"
        print(f"[fusion] seed {seed} done", flush=True)
    result["fusion"] = fusion_info
    timings["fusion"] = time.perf_counter() - t0

    # -- aggregate ------------------------------------------------------------------------
    methods = {}
    for name, runs in per_seed.items():
        methods[name] = {"label": result["labels"].get(name, name),
                         "params": method_params.get(name),
                         "n_seeds": len(runs),
                         "val_R@1": C.aggregate(val_scores[name]) if name in val_scores else None,
                         "fit": mlp_fit.get(name),
                         "test": C.aggregate(runs)}
    result["methods"] = methods
    result["targets"] = check_targets(methods, best_single, best_mlp, list(fusions))
    save()
    print_tables(result)

    # -- training-size curve ----------------------------------------------------------------
    t0 = time.perf_counter()
    result["size_curve"] = size_curve(d, sizes, seeds, best_mlp, chosen_cfg[best_mlp],
                                      mlp_models[best_mlp], native, args.device)
    timings["size_curve"] = time.perf_counter() - t0

    # -- figures --------------------------------------------------------------------------
    figs = {"r1_bars": args.prefix.with_name(args.prefix.name + "_r1.png"),
            "size_curve": args.prefix.with_name(args.prefix.name + "_size_curve.png")}
    plot_bars(result, figs["r1_bars"])
    plot_curve(result, figs["size_curve"])
    result["figures"] = {k: p.name for k, p in figs.items()}
    save()
    return result


def size_curve(d, sizes, seeds, best_mlp, mlp_cfg, full_models, native, device) -> dict:
    X, Y = d["X"], d["Y"]
    N = X.shape[0]
    sizes = [n for n in sizes if n <= N]
    names = ["ridge", "procrustes", best_mlp]
    out = {"sizes": sizes, "methods": {m: {} for m in names}, "ridge_alpha": {},
           "mlp_epochs": {}, "mlp_config": mlp_cfg,
           "note": f"random subset of the {N} English train pairs per seed (the full set at "
                   f"{N}); ridge alpha re-chosen on val at each size; the MLP ({best_mlp}) "
                   f"keeps its val-chosen settings, its least-squares start (if any) uses that "
                   f"size's ridge alpha, epochs scaled by {N}/n (at most {CURVE_MAX_EPOCHS}); "
                   f"at {N} the main run's models are reused"}
    for n in sizes:
        runs = {m: [] for m in names}
        alphas = []
        epochs = mlp_cfg["epochs"]
        if n < N:
            epochs = int(min(CURVE_MAX_EPOCHS, math.ceil(epochs * N / n)))
        for seed in seeds:
            if n >= N:
                idx = np.arange(N)
            else:
                idx = np.sort(np.random.default_rng(1000 + seed).choice(N, n, replace=False))
            Xs, Ys = X[idx], Y[idx]
            ridge, info = fit_ridge(Xs, Ys, d)
            alphas.append(info["alpha"])
            runs["ridge"].append(score_translator(ridge, d, native))
            proc = make_translator("procrustes", center=True, scale=True).fit(Xs, Ys)
            runs["procrustes"].append(score_translator(proc, d, native))
            if n >= N:
                M = full_models[seed]
            else:
                M, _, _ = fit_mlp({**mlp_cfg, "epochs": epochs}, Xs, Ys, d, seed, info["alpha"], device)
            runs[best_mlp].append(score_translator(M, d, native))
            if n >= N:
                # closed forms are deterministic on the full set: one run is enough
                break
        if n >= N:
            runs[best_mlp] = [score_translator(full_models[s], d, native) for s in seeds]
        for m in names:
            out["methods"][m][str(n)] = C.aggregate(runs[m])
        out["ridge_alpha"][str(n)] = alphas
        out["mlp_epochs"][str(n)] = epochs
        print(f"[curve] n={n}: " + "  ".join(
            f"{m} {out['methods'][m][str(n)]['mean']['a->b']['R@1']['mean']:.4f}" for m in names),
            flush=True)
    return out


# ---------------------------------------------------------------------------
# targets and printing


def check_targets(methods: dict, best_single: str, best_mlp: str, fused: list[str]) -> dict:
    def r1(name, lang="mean"):
        return methods[name]["test"][lang]["a->b"]["R@1"]["mean"]

    def rec(name):
        return methods[name]["test"]["mean"]["recovery"]["R@1"]["mean"]

    out = {"note": "checked on test after every choice was made on val; nothing tuned to meet them",
           "best_single_translator (val-chosen)": best_single,
           "best_single_mean_R@1_recovery": rec(best_single),
           "best_single_recovery_>=_0.97": rec(best_single) >= 0.97,
           "best_single_recovery_>=_0.99": rec(best_single) >= 0.99}
    mlps = [m for m in methods if m.startswith("mlp_")]
    out["mlp_mean_R@1"] = {m: r1(m) for m in mlps}
    out["ridge_mean_R@1"] = r1("ridge")
    out["procrustes_mean_R@1"] = r1("procrustes")
    out["best_mlp (val-chosen)"] = best_mlp
    out["best_mlp_beats_ridge_and_procrustes_R@1"] = bool(
        r1(best_mlp) > r1("ridge") and r1(best_mlp) > r1("procrustes"))
    out["mlp_lstsq_vs_ridge_R@1_per_language"] = {
        lang: {"mlp_lstsq": r1("mlp_lstsq", lang), "ridge": r1("ridge", lang),
               "per_seed": methods["mlp_lstsq"]["test"][lang]["a->b"]["R@1"]["values"]}
        for lang in LANGS}
    out["mlp_lstsq_>=_ridge_every_language (seed mean)"] = all(
        r1("mlp_lstsq", lang) >= r1("ridge", lang) for lang in LANGS)
    out["mlp_lstsq_>=_ridge_every_language_and_seed"] = all(
        min(methods["mlp_lstsq"]["test"][lang]["a->b"]["R@1"]["values"]) >= r1("ridge", lang)
        for lang in LANGS)
    out["fused_mean_R@1_recovery"] = {f: rec(f) for f in fused}
    val_chosen = f"learned(native+{best_single})"
    out["fused_val_chosen"] = val_chosen
    out["fused_val_chosen_recovery_>=_1.05"] = rec(val_chosen) >= 1.05
    out["any_fused_recovery_>=_1.05"] = any(rec(f) >= 1.05 for f in fused)
    return out


def _fmt(stat: dict, scale: float = 100.0, nd: int = 1) -> str:
    if stat["n"] > 1:
        return f"{scale * stat['mean']:.{nd}f}±{scale * stat['std']:.{nd}f}"
    return f"{scale * stat['mean']:.{nd}f}"


def print_tables(result: dict) -> None:
    methods = result["methods"]
    print("\nTest R@1 (%), foreign query -> English MiniLM gallery (test_2016_flickr), "
          "mean±std over seeds; recovery = / native e5")
    rows = []
    for name, m in methods.items():
        te = m["test"]
        rows.append([name] + [_fmt(te[lang]["a->b"]["R@1"]) for lang in (*LANGS, "mean")]
                    + [_fmt(te["mean"]["recovery"]["R@1"], 1, 3),
                       _fmt(te["mean"]["b->a"]["R@1"]), _fmt(te["mean"]["recovery_b->a"]["R@1"], 1, 3)])
    print(C.format_table(rows, ["method", "de", "fr", "cs", "mean", "recov", "rev R@1", "rev recov"]))
    for lang in (*LANGS, "mean"):
        print(f"\n[{lang}] test, foreign -> English (%, recovery as a ratio)")
        rows = []
        for name, m in methods.items():
            te = m["test"][lang]
            rows.append([name] + [_fmt(te["a->b"][k]) for k in ("R@1", "R@5", "R@10", "MRR")]
                        + [_fmt(te["recovery"][k], 1, 3) for k in ("R@1", "R@5", "R@10")])
        print(C.format_table(rows, ["method", "R@1", "R@5", "R@10", "MRR", "rec R@1",
                                    "rec R@5", "rec R@10"]))
    print("\nFusion weights (fitted on val):")
    for name, f in result["fusion"].items():
        if f["weights"]:
            print(f"  {name}: {f['weights']}")
    print("\nTargets:")
    for k, v in result["targets"].items():
        print(f"  {k}: {v}")


# ---------------------------------------------------------------------------
# figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(result: dict, path: Path) -> None:
    from bridge.plots import save_figure

    plt = _plt()
    methods = result["methods"]
    names = list(methods)
    panels = (*LANGS, "mean")
    fig, axes = plt.subplots(1, 4, figsize=(16, 0.36 * len(names) + 1.8), sharey=True)
    y = np.arange(len(names))
    for ax, lang in zip(axes, panels):
        mu = np.array([100 * methods[n]["test"][lang]["a->b"]["R@1"]["mean"] for n in names])
        sd = np.array([100 * methods[n]["test"][lang]["a->b"]["R@1"]["std"] for n in names])
        colours = ["tab:grey" if n in ("floor", "native") else
                   "tab:green" if n.startswith(FUSED_PREFIXES) else
                   "tab:orange" if n.startswith("mlp_") else "tab:blue" for n in names]
        ax.barh(y, mu, xerr=sd, color=colours, capsize=2)
        nat = 100 * methods["native"]["test"][lang]["a->b"]["R@1"]["mean"]
        ax.axvline(nat, ls="--", color="black", lw=0.8)
        for yi, m in zip(y, mu):
            ax.text(m + 1.0, yi, f"{m:.1f}", va="center", fontsize=7)
        ax.set_xlim(0, 105)
        ax.set_title(f"{lang} -> en" if lang != "mean" else "mean de/fr/cs")
        ax.set_xlabel("test R@1 (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("text@e5 -> text:en@minilm, trained on English pairs only: Multi30K "
                 "test_2016_flickr R@1 (dashed: native e5; bars: grey reference, blue closed "
                 "form, orange MLP ± std, green fused)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_curve(result: dict, path: Path) -> None:
    from bridge.plots import save_figure

    plt = _plt()
    curve = result["size_curve"]
    native = result["methods"]["native"]["test"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, lang in zip(axes, (*LANGS, "mean")):
        for m, runs in curve["methods"].items():
            ns = [int(n) for n in runs]
            mu = [100 * runs[str(n)][lang]["a->b"]["R@1"]["mean"] for n in ns]
            sd = [100 * runs[str(n)][lang]["a->b"]["R@1"]["std"] for n in ns]
            ax.errorbar(ns, mu, yerr=sd, marker="o", capsize=3, label=LABELS.get(m, m))
        nat = 100 * native[lang]["a->b"]["R@1"]["mean"]
        ax.axhline(nat, ls="--", color="grey", label=f"native e5 ({nat:.1f})")
        ax.set_xscale("log")
        ax.set_xticks(curve["sizes"])
        ax.set_xticklabels([f"{n / 1000:g}k" for n in curve["sizes"]])
        ax.minorticks_off()
        ax.set_xlabel("English training pairs")
        ax.set_title(f"{lang} -> en" if lang != "mean" else "mean de/fr/cs")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test R@1 (%)")
    axes[-1].legend(loc="lower right", fontsize=7)
    fig.suptitle("Language bridge vs number of English training pairs (mean ± std over seeds)",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------


def _seeds(s: str) -> list[int]:
    """``"3"`` -> seeds 0, 1, 2; ``"4,7"`` -> seeds 4 and 7."""
    if "," in s:
        return [int(x) for x in s.split(",") if x.strip()]
    n = int(s)
    if n < 1:
        raise argparse.ArgumentTypeError("--seeds needs at least one seed")
    return list(range(n))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 seed, one short MLP setting per variant, sizes 1k/3k/29k "
                        "(about 2 minutes); writes language_bridge_quick.*")
    p.add_argument("--seeds", type=_seeds, default=None,
                   help="a count N (seeds 0..N-1) or a comma-separated list (default 3; "
                        "--quick: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu", help="torch device for the MLPs (default cpu)")
    p.add_argument("--prefix", type=Path, default=None,
                   help="output path prefix (default benchmarks/results/language_bridge[_quick])")
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    if args.prefix is None:
        args.prefix = C.results_dir() / ("language_bridge_quick" if args.quick else "language_bridge")
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = run(args)
    print(f"\nwrote {args.prefix.with_suffix('.json')} and figures {result['figures']} "
          f"({time.perf_counter() - started:.0f}s)")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
