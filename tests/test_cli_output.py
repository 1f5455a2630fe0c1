"""What the CLI prints and exports: route lists, weights, tables, walks, progress lines."""

import ast
import csv
import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

import bridge
from bridge.cli import main
from bridge.graph import ModalityGraph
from bridge.store import Cache
from bridge.translators import ProcrustesTranslator
from conftest import random_orthogonal, unit

A, B, C, D, E = "text:en@a", "text:de@b", "text:fr@c", "image@d", "audio@e"


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
    """Four nodes on shared ids with edges a-b, b-d, a-c, c-d, a-d (both ways), and a fifth
    node ``e`` whose ids no other node has, joined to ``a`` by a hand-fitted edge."""
    rng = np.random.default_rng(0)
    n, d = 320, 8
    ids = [f"s{i}" for i in range(n)]
    base = unit(rng.standard_normal((n, d)))
    g = ModalityGraph(seed=0)
    X = {}
    for name, noise in ((A, 0.0), (B, 0.3), (C, 0.5), (D, 0.8)):
        X[name] = unit(base @ random_orthogonal(d, rng) + noise * rng.standard_normal((n, d)))
        g.add_modality(name, Cache(ids=ids, emb=X[name]))
    for a, b in ((A, B), (B, D), (A, C), (C, D), (A, D)):
        g.connect(a, b, translator="procrustes")
    Xe = unit(X[A] @ random_orthogonal(d, rng))
    g.add_modality(E, Cache(ids=[f"e{i}" for i in range(n)], emb=Xe))
    g.add_edge(A, E, ProcrustesTranslator().fit(X[A], Xe), {"val_R@1": 1.0})
    g.add_edge(E, A, ProcrustesTranslator().fit(Xe, X[A]), {"val_R@1": 1.0})
    out = tmp_path_factory.mktemp("g") / "g"
    g.save(out)
    return out


def _summary(graph_dir, capsys):
    assert main(["graph", "show", str(graph_dir), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    return {(e["src"], e["dst"]): e for e in s["edges"]}


def test_route_k3_prints_three_routes_with_cost_and_hops(graph_dir, capsys):
    edges = _summary(graph_dir, capsys)
    assert main(["route", str(graph_dir), A, D, "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    costs = []
    for i, line in enumerate(lines, 1):
        assert line.startswith(f"{i}. ")
        path, _, tail = line[3:].partition("  (")
        nodes = path.split(" -> ")
        assert nodes[0] == A and nodes[-1] == D
        want = sum(edges[(u, v)]["cost"] for u, v in zip(nodes[:-1], nodes[1:]))
        hops = len(nodes) - 1
        assert tail == f"cost {want:.4f}, {hops} hop{'s' if hops != 1 else ''})"
        costs.append(want)
    assert costs == sorted(costs)
    # the three simple routes a -> d: direct, via b, via c
    assert {line[3:].split("  (")[0] for line in lines} == {
        f"{A} -> {D}", f"{A} -> {B} -> {D}", f"{A} -> {C} -> {D}"}


def test_route_says_when_fewer_routes_exist(graph_dir, capsys):
    assert main(["route", str(graph_dir), A, E, "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"1. {A} -> {E}  (cost ")  # e hangs off a only
    assert lines[1] == f"only 1 route from {A} to {E} (asked for --k 3)"


def test_weight_hops_and_metric(graph_dir, capsys):
    edges = _summary(graph_dir, capsys)
    assert main(["route", str(graph_dir), B, C, "--weight", "hops", "--k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("  (")[1].split(",")[0] for ln in lines] == ["2 hops", "2 hops"]
    assert main(["route", str(graph_dir), A, D, "--weight", "val_R@1", "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    prods = []
    for line in lines:
        nodes = line[3:].split("  (")[0].split(" -> ")
        want = math.prod(max(edges[(u, v)]["metrics"]["val_R@1"], 0.001)
                         for u, v in zip(nodes[:-1], nodes[1:]))
        assert f"(val_R@1 product {want:.4f}, " in line
        prods.append(want)
    assert prods == sorted(prods, reverse=True)  # best product first
    assert len(set(prods)) == 3 and max(prods) < 1


@pytest.mark.parametrize("weight", ["R@1", "n_val", "kind"])
def test_unknown_weight_is_one_line_naming_choices(graph_dir, capsys, weight):
    assert main(["route", str(graph_dir), A, D, "--weight", weight]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"bridge: error: --weight {weight!r} is not a route weight")
    assert "cost, hops, val_R@1" in err[0]  # val_R@1 is the only metric every edge has
    assert "n_val" not in err[0].split("expected")[1]


def test_route_help_lists_weights(capsys):
    with pytest.raises(SystemExit):
        main(["route", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for w in ("'cost'", "'hops'", "val_R@1_lcb", "product"):
        assert w in out


def test_graph_show_aligned_table_with_split_sizes(graph_dir, capsys):
    edges = _summary(graph_dir, capsys)
    assert main(["graph", "show", str(graph_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    head = out.index(f"{len(edges)} edges:") + 1
    table = out[head:head + 2 + len(edges)]
    cols = ["src", "dst", "kind", "cost", "n_train", "n_val", "n_test", "val_R@1",
            "val_R@1_lcb", "test_R@1"]
    assert table[0].split() == cols
    # every column ends at the same position on every line (right-aligned numbers)
    ends = [table[0].index(c) + len(c) for c in cols[3:]]
    for line in table[1:]:
        for e in ends:
            assert line[e - 1] != " " and (e == len(line) or line[e] == " ")
    for line in table[2:]:
        f = line.split()
        m = edges[(f[0], f[1])]["metrics"]
        if (f[0], f[1]) in ((A, E), (E, A)):
            assert f[4:7] == ["-", "-", "-"]
            continue
        assert [int(x) for x in f[4:7]] == [m["n_train"], m["n_val"], m["n_test"]]
        assert float(f[7]) == pytest.approx(m["val_R@1"], abs=5e-4)
        assert float(f[8]) == pytest.approx(m["val_R@1_lcb"], abs=5e-4)
        assert m["val_R@1_lcb"] < m["val_R@1"]


def test_node_table_aligned(graph_dir, capsys):
    assert main(["graph", "show", str(graph_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    nodes = out[1:1 + 2 + 5]
    assert nodes[0].split() == ["node", "modality", "language", "encoder", "dim"]
    pos = nodes[0].index("modality")
    assert all(line[pos - 2:pos] == "  " and line[pos] != " " for line in nodes[2:])


def test_eval_exports_csv_and_markdown(graph_dir, tmp_path, capsys):
    j, c, m = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.md"
    assert main(["eval", str(graph_dir), A, D, "--json", str(j), "--csv", str(c),
                 "--markdown", str(m)]) == 0
    res = json.loads(j.read_text())["route"]
    rows = list(csv.DictReader(c.open()))
    assert len(rows) == 1
    assert rows[0]["what"] == "route" and rows[0]["name"] == " -> ".join(res["routes"][0]["nodes"])
    for k in ("R@1", "R@5", "R@10", "MRR"):
        assert float(rows[0][k]) == res[k]
    assert int(rows[0]["n"]) == res["n_queries"]
    md = m.read_text().splitlines()
    assert md[0] == "| " + " | ".join(rows[0].keys()) + " |"
    assert set(md[1].replace("|", "").split()) <= {"---", "---:"}
    assert len(md) == 3 and f"| {res['R@1']:.4f} |" in md[2]
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temporary file, then renamed


def test_eval_export_refuses_missing_folder(graph_dir, tmp_path, capsys):
    bad = tmp_path / "nope" / "r.csv"
    assert main(["eval", str(graph_dir), A, D, "--csv", str(bad)]) == 2
    assert "--csv: folder" in capsys.readouterr().err
    assert not bad.parent.exists()


def test_fused_eval_prints_fitted_weights(graph_dir, tmp_path, capsys):
    j, c = tmp_path / "f.json", tmp_path / "f.csv"
    assert main(["eval", str(graph_dir), A, "--fuse", f"{B},{D}", "--method", "weighted",
                 "--json", str(j), "--csv", str(c)]) == 0
    out = capsys.readouterr().out.splitlines()
    r = json.loads(j.read_text())["fused"]
    assert len(r["weights"]) == 2 and sum(r["weights"]) == pytest.approx(1.0)
    i = out.index("fitted route weights (on val pairs):")
    for line, (name, w) in zip(out[i + 1:i + 3], zip(r["single"], r["weights"])):
        assert line == f"  {w:.3f}  {name}"
    rows = list(csv.DictReader(c.open()))
    assert [float(x["weight"]) for x in rows[:2]] == r["weights"]
    assert rows[2]["what"] == "fused (weighted)" and float(rows[2]["R@1"]) == r["fused"]["R@1"]
    # unweighted fusion fits nothing and prints no weights
    assert main(["eval", str(graph_dir), A, "--fuse", f"{B},{D}"]) == 0
    assert "fitted route weights" not in capsys.readouterr().out


def test_walk_names_hops_without_known_targets(graph_dir, tmp_path, capsys):
    md = tmp_path / "w.md"
    assert main(["eval", str(graph_dir), "--walk", f"{A},{E},{A}", "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert f"hop {A} -> {E}: no true targets known" in out
    line = next(ln for ln in out.splitlines() if ln.startswith(f"  hop {E} -> {A}:"))
    assert "R@1 1.0000" in line  # the two hand-fitted rotations undo each other exactly
    table = md.read_text().splitlines()
    assert len(table) == 2 + 3  # the walk and its two hops
    assert table[3].startswith(f"| hop | {A} -> {E} | ") and " - |" in table[3]


def test_progress_names_edge_and_stop_reason(capsys):
    rng = np.random.default_rng(0)
    n, d = 320, 6
    ids = [f"s{i}" for i in range(n)]
    x = unit(rng.standard_normal((n, d)))
    g = ModalityGraph(seed=0)
    g.add_modality(A, Cache(ids=ids, emb=x))
    g.add_modality(B, Cache(ids=ids, emb=unit(x @ random_orthogonal(d, rng))))
    g.connect(A, B, translator="mlp", directions="forward", epochs=2, progress=True)
    err = capsys.readouterr().err
    assert f"{A} -> {B}" in err.split("\n")[0] or f"{A} -> {B}:" in err
    last = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()][-1]
    assert last.startswith(f"{A} -> {B}: stopped at max epochs 2 (best val epoch ")


def test_stop_reason_words():
    from bridge.training import stop_reason

    assert stop_reason(True, 12, 100, 4, True) == (
        "early stop at epoch 12 of 100 (val R@1 no better since epoch 4; weights of epoch 4 kept)")
    assert stop_reason(False, 5, 5, 3, True) == "stopped at max epochs 5 (best val epoch 3 kept)"
    assert stop_reason(False, 5, 5, 5, False) == "stopped at max epochs 5 (no val rows: last epoch kept)"


def test_train_desc_argument_and_default(capsys):
    import torch

    from bridge.training import progress_desc, train

    rng = np.random.default_rng(0)
    X = torch.tensor(unit(rng.standard_normal((64, 4))), dtype=torch.float32)
    net = torch.nn.Linear(4, 4)
    train(net, X, X, epochs=1, progress=True, desc="my edge")
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("my edge: stopped at max epochs 1")
    with progress_desc("outer"):
        train(net, X, X, epochs=1, progress=True)
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("outer: ")
    train(net, X, X, epochs=1, progress=True)
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("training: ")


def test_every_lazy_name_and_submodule_imports():
    for name, mod in bridge._LAZY.items():
        assert getattr(bridge, name) is getattr(importlib.import_module(f"bridge.{mod}"), name)
    for name in bridge._SUBMODULES:
        assert getattr(bridge, name) is importlib.import_module(f"bridge.{name}")
    pkg = Path(bridge.__file__).parent
    on_disk = {p.stem for p in pkg.glob("*.py") if not p.stem.startswith("__")}
    on_disk |= {p.parent.name for p in pkg.glob("*/__init__.py")}
    assert bridge._SUBMODULES == on_disk
    with pytest.raises(AttributeError, match="'bench'"):
        bridge.bench  # noqa: B018


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.module:
                names.add("." * node.level + node.module)
            else:  # from . import x
                names.update("." * node.level + a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_cli_demo_import_cycle():
    pkg = Path(bridge.__file__).parent
    demo = _imports(pkg / "demo.py")
    assert not {".cli", "bridge.cli"} & demo  # the demo never reaches into the CLI
    from bridge.demo import quality_graph

    assert callable(quality_graph)
