#!/usr/bin/env python
"""Bridges that hold on new languages and new domains.

The Multi30K language bridge of ``language_bridge.py`` (edge ``text:en@e5 ->
text:en@minilm`` trained on English pairs only; German, French and Czech queries reach the
English MiniLM gallery through ``text:X@e5 -> text:en@e5 -> text:en@minilm``) under every
combination of

- **translator kind**: ridge (alpha on val), centred Procrustes, the MLP that starts from
  least squares, and ``translator="auto"`` (the kind tied on val R@1 with the best cosine);
- **node centring** off / on (``connect(..., node_center=True)`` on the identity edges and
  on the trained edge: each node's rows lose their own node's mean);
- **scoring**: cosine, CSLS (k=10) and QB-Norm (dynamic inverted softmax, beta=20), each
  with a query bank of the route's own rows translated along it (val rows when scoring
  test, train rows when scoring val; never the evaluated queries).

Everything runs through the public API: ``connect``, ``evaluate_route`` and
``fused_evaluation`` (native route ``[X@e5, en@e5]`` + bridged route, z-score sum).

Selection (never on test)
-------------------------
- **leave one language out**: for each of de/fr/cs, the setting (kind x centring x scoring)
  with the best mean val R@1 on the *other two* languages is the one reported on that
  language's test split: a choice that has to carry to a language it did not see;
- **one setting for all**: the best mean val R@1 over de/fr/cs, applied unchanged to the
  out-of-domain set.

Out-of-domain check (never tuned on)
------------------------------------
``scripts/build_ood.py`` builds it from the gettext catalogues Django ships (UI strings in
13 languages, ru uk el ar zh_Hans ja ko he de fr cs es tr, short and long): nodes
``text:X@e5`` and ``text:en@e5``/``text:en@minilm`` of that set, the Multi30K-trained edge
moved onto the new English nodes (a node-centred edge takes the new nodes' own unlabelled
means, :meth:`CentredTranslator.recentred`; nothing is refitted), queries the test strings
of each language against the English test strings in MiniLM; banks from the set's val
strings (used unlabelled, for scoring only).

Recovery = R@1 / plain native R@1 (e5 cross-lingual retrieval, cosine, no centring), per
language, then averaged; the like-for-like ratio divides by native e5 under the same
centring and scoring.

Command (about 20 minutes on 2 CPU cores; MLPs 3 seeds for the chosen settings)::

    .venv/bin/python scripts/build_ood.py          # once: the out-of-domain caches
    .venv/bin/python benchmarks/robust_bridge.py
    .venv/bin/python benchmarks/robust_bridge.py --quick   # 1 seed, short MLPs
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from itertools import product  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import language_bridge as L  # noqa: E402

from bridge import ModalityGraph  # noqa: E402
from bridge.evaluate import evaluate_route, fused_evaluation  # noqa: E402
from bridge.store import load_cache  # noqa: E402
from bridge.translators import CentredTranslator, make_translator  # noqa: E402

LANGS, SRC, DST, E5 = L.LANGS, L.SRC, L.DST, L.E5
SCORINGS = {"cosine": None, "csls": "csls:k=10", "qbnorm": "qbnorm:beta=20,k=1"}
CENTRING = {"plain": False, "centred": True}
MLP_LS = dict(init="lstsq", loss="infonce+0.1*mse", epochs=10, lr=1e-4)
KINDS = ("ridge", "procrustes", "mlp_lstsq", "auto")
SEEDED = ("mlp_lstsq", "auto")
OOD_DIR = Path(__file__).resolve().parents[1] / "embeddings_cache" / "ood"


def kind_spec(kind: str, seed: int, quick: bool, alpha: float | None) -> dict:
    if kind == "ridge":
        return dict(L.CLOSED["ridge"])
    if kind == "procrustes":
        return dict(L.CLOSED["procrustes"])
    mlp = {"kind": "mlp", **L.MLP_BASE, **MLP_LS, "seed": seed}
    if quick:
        mlp["epochs"] = 2
    if alpha is not None:
        mlp["alpha"] = alpha
    if kind == "mlp_lstsq":
        return {"translator": "mlp", **{k: v for k, v in mlp.items() if k != "kind"}}
    ridge = {"kind": "linear", "alpha": "auto"}
    return {"translator": "auto", "candidates": [ridge, {"kind": "procrustes", "center": True,
                                                         "scale": True}, mlp]}


# ---------------------------------------------------------------------------
# scoring one graph


def route_r1(g, src, dst, scoring, split) -> tuple[float, float]:
    bank = "train" if split == "val" else "val"
    t0 = time.perf_counter()
    m = evaluate_route(g, src, dst, ks=(1,), split=split, scoring=scoring, bank=bank)
    return m["R@1"], time.perf_counter() - t0


def fused_r1(g, lang, scoring, split, method="zscore") -> float:
    x = E5[lang]
    r = fused_evaluation(g, x, routes=[[x, SRC], [x, SRC, DST]], method=method, ks=(1,),
                         split=split, scoring=scoring, bank="train" if split == "val" else "val",
                         val_weights=method == "weighted")
    return r["fused"]["R@1"], r.get("weights")


def score_graph(g, fused: bool = True) -> dict:
    """Per scoring and language: val/test R@1 of the bridged route (and fused z-score), the
    scoring's time per evaluation."""
    out = {}
    for name, sc in SCORINGS.items():
        row = {"val": {}, "test": {}, "fused_val": {}, "fused_test": {}, "seconds": 0.0}
        for lang in LANGS:
            for split in ("val", "test"):
                r, t = route_r1(g, E5[lang], DST, sc, split)
                row[split][lang] = r
                row["seconds"] += t / (2 * len(LANGS))
                if fused:
                    row[f"fused_{split}"][lang] = fused_r1(g, lang, sc, split)[0]
        out[name] = row
    return out


def native_scores(base_graphs: dict) -> dict:
    out = {}
    for centring, g in base_graphs.items():
        for name, sc in SCORINGS.items():
            out[f"{centring}/{name}"] = {split: {lang: route_r1(g, E5[lang], SRC, sc, split)[0]
                                                 for lang in LANGS} for split in ("val", "test")}
    return out


# ---------------------------------------------------------------------------
# out-of-domain graph


def ood_available() -> bool:
    return (OOD_DIR / "strings.json").exists() and (OOD_DIR / "en.minilm").exists()


def ood_base(node_center: bool) -> tuple[ModalityGraph, list[str]]:
    info = json.loads((OOD_DIR / "strings.json").read_text())
    langs = [x for x in info["languages"] if (OOD_DIR / f"{x}.e5").exists()]
    g = ModalityGraph(splits="prefix")
    g.add_node(SRC, load_cache(OOD_DIR / "en.e5"))
    g.add_node(DST, load_cache(OOD_DIR / "en.minilm"))
    for lang in langs:
        g.add_node(f"text:{lang}@e5", load_cache(OOD_DIR / f"{lang}.e5"))
        # the set's own val rows are too few to train anything: identity edges by hand
        x = g.cache(SRC).vectors(np.arange(2))
        T = make_translator("identity")
        if node_center:
            T = CentredTranslator(T, in_mean=g.node_stats(f"text:{lang}@e5")["mean"],
                                  out_mean=g.node_stats(SRC)["mean"])
        g.add_edge(f"text:{lang}@e5", SRC, T.fit(x, x))
        if (OOD_DIR / f"{lang}.minilm").exists():
            g.add_node(f"text:{lang}@minilm", load_cache(OOD_DIR / f"{lang}.minilm"))
            y = g.cache(DST).vectors(np.arange(2))
            g.add_edge(f"text:{lang}@minilm", DST, make_translator("identity").fit(y, y))
    return g, langs


def ood_scores(edge, node_center: bool, scorings=SCORINGS, fused: bool = False) -> dict:
    """Test R@1 per OOD language of the Multi30K-trained edge moved onto the OOD nodes."""
    g, langs = ood_base(node_center)
    T = edge
    if isinstance(T, CentredTranslator):
        T = T.recentred(g.node_stats(SRC)["mean"], g.node_stats(DST)["mean"])
    g.add_edge(SRC, DST, T)
    out = {}
    for name, sc in scorings.items():
        row = {"test": {}, "native": {}, "fused": {},
               # English strings through the edge alone: the domain shift without a language
               "english": evaluate_route(g, SRC, DST, ks=(1,), scoring=sc, bank="val")["R@1"]}
        for lang in langs:
            x = f"text:{lang}@e5"
            row["test"][lang] = evaluate_route(g, x, DST, ks=(1,), scoring=sc, bank="val")["R@1"]
            row["native"][lang] = evaluate_route(g, x, SRC, ks=(1,), scoring=sc, bank="val")["R@1"]
            if fused:
                row["fused"][lang] = fused_evaluation(
                    g, x, routes=[[x, SRC], [x, SRC, DST]], ks=(1,), scoring=sc,
                    bank="val")["fused"]["R@1"]
        out[name] = row
    return out


def ood_floor() -> dict:
    g, langs = ood_base(False)
    return {lang: evaluate_route(g, f"text:{lang}@minilm", DST, ks=(1,))["R@1"]
            for lang in langs if f"text:{lang}@minilm" in g}


# ---------------------------------------------------------------------------
# selection


def mean(d: dict, langs) -> float:
    return float(np.mean([d[lang] for lang in langs]))


def lolo(table: dict, key_val: str, key_test: str) -> dict:
    """Leave one language out: per language, the setting best on the other languages' val."""
    out = {}
    for held in LANGS:
        others = [x for x in LANGS if x != held]
        best = max(table, key=lambda s: mean(table[s][key_val], others))
        out[held] = {"setting": best, "test_R@1": table[best][key_test][held],
                     "val_R@1_others": mean(table[best][key_val], others)}
    return out


# ---------------------------------------------------------------------------


def run(args) -> dict:
    started = time.perf_counter()
    seeds = [0] if args.quick else [0, 1, 2]
    out_json = C.results_dir() / ("robust_bridge_quick.json" if args.quick else "robust_bridge.json")
    bases = {c: L.base_graph(0, node_center=flag) for c, flag in CENTRING.items()}
    native = native_scores(bases)
    plain = native["plain/cosine"]["test"]
    print("[native] " + "  ".join(f"{k}: {mean(v['test'], LANGS):.4f}" for k, v in native.items()),
          flush=True)

    # -- the grid with seed 0 ---------------------------------------------------------------
    graphs, table, fits = {}, {}, {}
    alpha = None
    for kind in KINDS:
        for centring, flag in CENTRING.items():
            spec = kind_spec(kind, seeds[0], args.quick, alpha)
            g = bases[centring].copy()
            t0 = time.perf_counter()
            g.connect(SRC, DST, directions="forward", node_center=flag, **spec)
            fit_s = time.perf_counter() - t0
            info = L.edge_info(g)
            if kind == "ridge" and centring == "plain":
                alpha = info.get("alpha")
            graphs[(kind, centring, seeds[0])] = g
            fits[f"{kind}/{centring}"] = {"fit_seconds": round(fit_s, 1),
                                          "kind_shown": g.edge(SRC, DST)["kind"], **info}
            for scoring, row in score_graph(g).items():
                table[f"{kind}/{centring}/{scoring}"] = row
            print(f"[grid] {kind}/{centring} ({fit_s:.0f}s, {g.edge(SRC, DST)['kind']}): " + "  ".join(
                f"{s} val {mean(table[f'{kind}/{centring}/{s}']['val'], LANGS):.4f} test "
                f"{mean(table[f'{kind}/{centring}/{s}']['test'], LANGS):.4f} fused "
                f"{mean(table[f'{kind}/{centring}/{s}']['fused_test'], LANGS):.4f}"
                for s in SCORINGS), flush=True)
    selection = {
        "single_lolo": lolo(table, "val", "test"),
        "fused_lolo": lolo(table, "fused_val", "fused_test"),
        "single_global": max(table, key=lambda s: mean(table[s]["val"], LANGS)),
        "fused_global": max(table, key=lambda s: mean(table[s]["fused_val"], LANGS)),
    }
    print(f"[select] {json.dumps(selection, indent=1)}", flush=True)

    # -- more seeds for chosen seeded settings -------------------------------------------------
    chosen = {selection["single_global"], selection["fused_global"],
              *[v["setting"] for v in selection["single_lolo"].values()],
              *[v["setting"] for v in selection["fused_lolo"].values()]}
    per_seed = {s: [table[s]] for s in chosen}
    for kind, centring in sorted({tuple(s.split("/")[:2]) for s in chosen}):
        if kind not in SEEDED:
            continue
        for seed in seeds[1:]:
            g = bases[centring].copy()
            g.connect(SRC, DST, directions="forward", node_center=CENTRING[centring],
                      **kind_spec(kind, seed, args.quick, alpha))
            graphs[(kind, centring, seed)] = g
            rows = score_graph(g)
            for s in chosen:
                k2, c2, sc = s.split("/")
                if (k2, c2) == (kind, centring):
                    per_seed[s].append(rows[sc])
            print(f"[seed {seed}] {kind}/{centring} scored", flush=True)

    # -- weighted fusion for the fused choice (val-fitted weights) -----------------------------
    kind, centring, sc = selection["fused_global"].split("/")
    weighted = {"setting": selection["fused_global"], "test": [], "weights": []}
    for seed in seeds:
        g = graphs.get((kind, centring, seed))
        if g is None:
            continue
        vals = {lang: fused_r1(g, lang, SCORINGS[sc], "test", "weighted") for lang in LANGS}
        weighted["test"].append({lang: v[0] for lang, v in vals.items()})
        weighted["weights"].append({lang: v[1] for lang, v in vals.items()})

    # -- out of domain ------------------------------------------------------------------------
    ood = None
    if ood_available():
        ood = {"floor": ood_floor(), "settings": {}}
        for kind in KINDS:
            for centring, flag in CENTRING.items():
                g = graphs[(kind, centring, seeds[0])]
                fused = f"{kind}/{centring}" in {"/".join(selection["fused_global"].split("/")[:2])}
                rows = ood_scores(g.translator(SRC, DST), flag, fused=fused)
                for s, row in rows.items():
                    ood["settings"][f"{kind}/{centring}/{s}"] = row
        ood_plain = ood["settings"]["ridge/plain/cosine"]["native"]
        ood["langs"] = list(ood_plain)
        print("[ood] " + "  ".join(f"{s}: {mean(r['test'], ood['langs']) / mean(ood_plain, ood['langs']):.3f}"
                                   for s, r in ood["settings"].items()), flush=True)
    else:
        print(f"[ood] no out-of-domain caches in {OOD_DIR}: run scripts/build_ood.py first", flush=True)

    # -- multi-hop ------------------------------------------------------------------------------
    hops = multihop(bases, alpha)

    result = summarise(table, per_seed, selection, weighted, native, plain, fits, ood, hops)
    result["config"] = {"quick": args.quick, "seeds": seeds, "scorings": SCORINGS,
                        "kinds": {k: kind_spec(k, 0, args.quick, alpha) for k in KINDS},
                        "ridge_alpha": alpha}
    C.write_result(out_json, result, started=started)
    print_tables(result)
    print(f"\nwrote {out_json} ({time.perf_counter() - started:.0f}s)")
    return result


def multihop(bases: dict, alpha) -> dict:
    """2-, 3- and 4-hop routes through closed-form edges both ways between en@e5 and
    en@minilm, under each centring and scoring (mean over de/fr/cs of test R@1)."""
    routes = {2: lambda x: [x, SRC, DST], 3: lambda x: [x, SRC, DST, SRC],
              4: lambda x: [x, SRC, DST, SRC, DST]}
    out = {}
    for kind in ("ridge", "procrustes"):
        for centring, flag in CENTRING.items():
            g = bases[centring].copy()
            g.connect(SRC, DST, directions="both", node_center=flag, **kind_spec(kind, 0, True, alpha))
            for name, sc in SCORINGS.items():
                row = {}
                for n, make in routes.items():
                    end = make(E5["de"])[-1]
                    row[str(n)] = mean({lang: evaluate_route(g, E5[lang], end, route=make(E5[lang]),
                                                             ks=(1,), scoring=sc, bank="val")["R@1"]
                                        for lang in LANGS}, LANGS)
                out[f"{kind}/{centring}/{name}"] = row
            print(f"[hops] {kind}/{centring}: " + "  ".join(
                f"{s} " + "/".join(f"{out[f'{kind}/{centring}/{s}'][str(n)]:.3f}" for n in routes)
                for s in SCORINGS), flush=True)
    return out


def summarise(table, per_seed, selection, weighted, native, plain, fits, ood, hops) -> dict:
    def rec(d):  # per-language recovery against plain native, then the mean
        return float(np.mean([d[lang] / plain[lang] for lang in LANGS]))

    ablation = {}
    for s, row in table.items():
        kind, centring, sc = s.split("/")
        nat = native[f"{centring}/{sc}"]["test"]
        ablation[s] = {"test_R@1": mean(row["test"], LANGS), "recovery": rec(row["test"]),
                       "like_for_like": float(np.mean([row["test"][x] / nat[x] for x in LANGS])),
                       "fused_recovery": rec(row["fused_test"]), "val_R@1": mean(row["val"], LANGS),
                       "scoring_seconds": row["seconds"],
                       "fit_seconds": fits[f"{kind}/{centring}"]["fit_seconds"],
                       "per_language": row["test"]}
        if ood is not None:
            o = ood["settings"][s]
            op = ood["settings"]["ridge/plain/cosine"]["native"]
            ablation[s]["ood_recovery"] = float(np.mean([o["test"][x] / op[x] for x in ood["langs"]]))
            ablation[s]["ood_per_language"] = {x: o["test"][x] / op[x] for x in ood["langs"]}
    seeds = {s: {"recovery": C.mean_std([rec(r["test"]) for r in rows]),
                 "fused_recovery": C.mean_std([rec(r["fused_test"]) for r in rows]),
                 "n_seeds": len(rows)} for s, rows in per_seed.items()}
    lolo_single = {x: v["test_R@1"] / plain[x] for x, v in selection["single_lolo"].items()}
    lolo_fused = {x: v["test_R@1"] / plain[x] for x, v in selection["fused_lolo"].items()}
    out = {
        "benchmark": "robust_bridge",
        "protocol": {
            "selection": "settings (kind x centring x scoring) chosen on Multi30K val only: "
                         "leave-one-language-out per test language, and one global setting "
                         "(mean val over de/fr/cs) applied unchanged out of domain",
            "banks": "scoring test: the route's val source rows; scoring val: its train "
                     "source rows; out of domain: the set's val strings",
            "recovery": "R@1 / plain native e5 R@1 (cosine, no centring), per language, mean",
        },
        "native": {k: {"test": mean(v["test"], LANGS), "per_language": v["test"]}
                   for k, v in native.items()},
        "selection": selection,
        "headline": {
            "single_lolo_recovery_per_language": lolo_single,
            "single_lolo_recovery": float(np.mean(list(lolo_single.values()))),
            "fused_lolo_recovery_per_language": lolo_fused,
            "fused_lolo_recovery": float(np.mean(list(lolo_fused.values()))),
            "single_global": selection["single_global"],
            "single_global_over_seeds": seeds[selection["single_global"]],
            "fused_global": selection["fused_global"],
            "fused_global_over_seeds": seeds[selection["fused_global"]],
            "weighted_fused_recovery": C.mean_std([rec(r) for r in weighted["test"]]),
            "weighted_fused_weights": weighted["weights"],
        },
        "seeds": seeds,
        "ablation": ablation,
        "fits": fits,
        "multihop": hops,
    }
    if ood is not None:
        g = ablation[selection["single_global"]]
        f = ood["settings"][selection["fused_global"]]
        op = ood["settings"]["ridge/plain/cosine"]["native"]
        out["ood"] = {
            "languages": ood["langs"],
            "floor_recovery": float(np.mean([ood["floor"][x] / op[x] for x in ood["floor"]])),
            "plain_native_R@1": op,
            "single_global_recovery": g["ood_recovery"],
            "single_global_per_language": g["ood_per_language"],
            "fused_global_recovery": float(np.mean([f["fused"][x] / op[x] for x in ood["langs"]]))
            if f["fused"] else None,
            "fused_global_per_language": {x: f["fused"][x] / op[x] for x in ood["langs"]}
            if f["fused"] else None,
            "gap_single_in_minus_out": g["recovery"] - g["ood_recovery"],
            "english_through_edge_R@1": {s: ood["settings"][s]["english"]
                                         for s in ood["settings"]},
            "baseline_ridge_plain_cosine": {"in_domain": ablation["ridge/plain/cosine"]["recovery"],
                                            "ood": ablation["ridge/plain/cosine"]["ood_recovery"]},
            "raw": ood["settings"],
        }
    return out


def print_tables(result: dict) -> None:
    ab = result["ablation"]
    rows = [[s, f"{v['test_R@1'] * 100:.1f}", f"{v['recovery']:.3f}", f"{v['like_for_like']:.3f}",
             f"{v['fused_recovery']:.3f}", f"{v.get('ood_recovery', float('nan')):.3f}",
             f"{v['fit_seconds']:.0f}", f"{v['scoring_seconds']:.2f}"] for s, v in ab.items()]
    print("\nAblation (seed 0): Multi30K test mean over de/fr/cs; recovery vs plain native e5")
    print(C.format_table(rows, ["kind/centring/scoring", "R@1", "recovery", "like-for-like",
                                "fused rec.", "OOD rec.", "fit s", "score s"]))
    h = result["headline"]
    print("\nHeadline:")
    for k, v in h.items():
        print(f"  {k}: {v}")
    if "ood" in result:
        print("\nOut of domain:")
        for k, v in result["ood"].items():
            if k != "raw":
                print(f"  {k}: {v}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, 2-epoch MLPs")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    return run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
