"""Every bad command-line value exits 2 with one line on stderr, before anything is done."""

import subprocess
import sys

import numpy as np
import pytest

import bridge.graph
import bridge.store
from bridge.cli import main
from bridge.graph import ModalityGraph
from bridge.store import Cache, save_cache
from conftest import random_orthogonal, unit, run_cli

A, B, C = "text:en@a", "text:de@b", "image@c"


run = run_cli


def assert_one_line_error(rc, err, *fragments):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bridge: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three small caches on disk and a saved, self-contained graph over them."""
    root = tmp_path_factory.mktemp("cli_errors")
    rng = np.random.default_rng(0)
    n, d = 400, 8
    ids = [f"s{i}" for i in range(n)]
    X = unit(rng.standard_normal((n, d)))
    Y = unit(X @ random_orthogonal(d, rng) + 0.02 * rng.standard_normal((n, d)))
    Z = unit(Y @ random_orthogonal(d, rng) + 0.02 * rng.standard_normal((n, d)))
    caches = {}
    for name, x in (("a", X), ("b", Y), ("c", Z)):
        caches[name] = Cache(ids=ids, emb=x)
        save_cache(root / "caches" / name, caches[name])
    save_cache(root / "caches" / "other", Cache(ids=[f"o{i}" for i in range(n)], emb=X))
    save_cache(root / "caches" / "few", Cache(ids=ids[:8], emb=X[:8]))
    g = ModalityGraph()
    g.add_node(A, caches["a"])
    g.add_node(B, caches["b"])
    g.add_node(C, caches["c"])
    g.connect(A, B, translator="linear")
    g.connect(B, C, translator="linear")
    g.save(root / "graph", caches="copy")
    (root / "lines.txt").write_text("a dog\na cat\n")
    (root / "images").mkdir()
    return root


# ---------------------------------------------------------------------------
# option values (argparse): nothing is loaded, the graph path need not even exist


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "G", A, "--fuse", B, "--candidates", "0"], "'0'"),
    (["eval", "G", A, "--fuse", B, "--candidates", "-5"], "'-5'"),
    (["eval", "G", A, "--fuse", B, "--candidates", "1e8"], "'1e8'"),
    (["eval", "G", A, "--fuse", B, "--candidates", "100000000"], "'100000000'"),
    (["eval", "G", A, B, "--k", "0"], "--k"),
    (["eval", "G", A, B, "--k", "two"], "'two'"),
    (["route", "G", A, B, "--k", "0"], "'0'"),
    (["route", "G", A, B, "--k", "1.5"], "'1.5'"),
    (["eval", "G", A, "--fuse", ","], "','"),
    (["eval", "G", A, B, "--method", "max"], "'max'"),
    (["cache", "build", "--encoder", "e5", "--text", "x.txt", "--out", "o", "--chunk-size", "0"],
     "--chunk-size"),
    (["cache", "build", "--encoder", "e5", "--text", "x.txt", "--out", "o", "--limit", "-1"],
     "--limit"),
    (["demo", "--seed", "-1"], "'-1'"),
    (["plot", "sideways", "G", "--out", "x.png"], "'sideways'"),
])
def test_bad_option_values(argv, fragment, capsys):
    rc, out, err = run(argv, capsys)
    assert_one_line_error(rc, err, fragment, "expected" if "expected" in err else "")


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "NOGRAPH", "--walk", f"{A},{B}"], "closed walk"),
    (["eval", "NOGRAPH", "--walk", f"{A},{B},{C}"], "closed walk"),
    (["eval", "NOGRAPH", "--walk", f"{A},{A}"], "closed walk"),
    (["eval", "NOGRAPH", A, "--walk", f"{A},{B},{A}"], "takes no SRC"),
    (["eval", "NOGRAPH", A, "--walk", f"{A},{B},{A}", "--fuse", B], "exclude"),
    (["eval", "NOGRAPH", A, B, "--candidates", "5"], "--candidates 5 applies to --fuse only"),
    (["eval", "NOGRAPH", A, B, "--method", "rrf"], "--method rrf applies to --fuse only"),
    (["eval", "NOGRAPH", "--fuse", B], "needs SRC"),
    (["eval", "NOGRAPH", A], "needs SRC and DST"),
    (["eval", "NOGRAPH", A, B, "--json", "/nonexistent-folder/e.json"], "/nonexistent-folder"),
    (["plot", "graph", "NOGRAPH", "--nodes", A, "--out", "x.png"], "--nodes"),
    (["plot", "heatmap", "NOGRAPH", "--into", A, "--out", "x.png"], "--into"),
    (["plot", "gap", "NOGRAPH", "--start", A, "--out", "x.png"], "--start"),
    (["plot", "hops", "NOGRAPH", "--out", "x.png"], "--start NODE"),
    (["plot", "graph", "NOGRAPH", "--out", "/nonexistent-folder/g.png"], "/nonexistent-folder"),
])
def test_bad_combinations_refused_before_loading(argv, fragment, capsys):
    # "NOGRAPH" does not exist: the error comes before any attempt to load it
    rc, out, err = run(argv, capsys)
    assert_one_line_error(rc, err, fragment)
    assert "NOGRAPH" not in err


# ---------------------------------------------------------------------------
# node names against a saved graph


@pytest.mark.parametrize("argv, fragment", [
    (["route", "{g}", A, "nowhere"], "'nowhere'"),
    (["route", "{g}", "text:xx@a", B], "'text:xx@a'"),
    (["eval", "{g}", A, "nowhere"], "'nowhere'"),
    (["eval", "{g}", A, "--fuse", f"{C},nowhere"], "'nowhere'"),
    (["eval", "{g}", "--walk", f"{A},nowhere,{A}"], "'nowhere'"),
    (["plot", "heatmap", "{g}", "--nodes", f"{A},nowhere", "--out", "{tmp}/h.png"], "'nowhere'"),
    (["plot", "projection", "{g}", "--into", "nowhere", "--out", "{tmp}/p.png"], "'nowhere'"),
    (["plot", "hops", "{g}", "--start", "nowhere", "--out", "{tmp}/p.png"], "'nowhere'"),
    (["route", "{g}", A, C, "--weight", "speed"], "'speed'"),
])
def test_unknown_nodes_and_attributes(data, tmp_path, argv, fragment, capsys):
    argv = [a.format(g=data / "graph", tmp=tmp_path) for a in argv]
    rc, out, err = run(argv, capsys)
    assert_one_line_error(rc, err, fragment)
    assert not list(tmp_path.iterdir())  # no plot written


def test_valid_commands_still_work(data, tmp_path, capsys):
    g = data / "graph"
    assert main(["route", str(g), A, C, "--k", "2"]) == 0
    assert "text:en@a -> text:de@b -> image@c" in capsys.readouterr().out
    assert main(["eval", str(g), A, "--fuse", f"{B},{C}", "--candidates", "5000"]) == 0
    assert main(["eval", str(g), "--walk", f"{A},{B},{A}"]) == 0
    assert main(["plot", "graph", str(g), "--out", str(tmp_path / "g.png")]) == 0


# ---------------------------------------------------------------------------
# cache build


@pytest.mark.parametrize("argv, fragment", [
    (["--encoder", "e5", "--image-dir", "{root}/images"], "encoder 'e5' encodes text only"),
    (["--encoder", "e5", "--audio-dir", "{root}/images"], "--audio-dir gives audio input"),
    (["--encoder", "aisfx", "--text", "{root}/lines.txt"], "encoder 'aisfx' encodes audio only"),
    (["--encoder", "clip", "--audio-dir", "{root}/images"], "text and image only"),
    (["--encoder", "nope", "--text", "{root}/lines.txt"], "unknown encoder 'nope'"),
    (["--encoder", "e5", "--text", "{root}/missing.txt"], "missing.txt"),
    (["--encoder", "e5", "--text", "{root}/images"], "expected a file"),
    (["--encoder", "aisfx", "--audio-dir", "{root}/lines.txt"], "expected a folder"),
    (["--encoder", "aisfx", "--audio-dir", "{root}/nodir"], "nodir"),
    (["--encoder", "e5", "--csv", "{root}/missing.csv"], "missing.csv"),
    (["--encoder", "e5", "--text", "{root}/lines.txt", "--ids", "{root}/ids.txt"], "ids.txt"),
    (["--encoder", "e5", "--text", "{root}/lines.txt", "--meta", "language"], "'language'"),
    (["--encoder", "e5", "--text", "{root}/lines.txt", "--meta", "=x"], "'=x'"),
])
def test_cache_build_refuses(data, tmp_path, argv, fragment, capsys):
    out = tmp_path / "out.cache"
    argv = ["cache", "build"] + [a.format(root=data) for a in argv] + ["--out", str(out)]
    rc, _, err = run(argv, capsys)
    assert_one_line_error(rc, err, fragment)
    assert not out.exists()


# ---------------------------------------------------------------------------
# graph specs: validated completely before any cache loads or any edge trains

GOOD = """
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

[[nodes]]
name = "text:xx@o"
cache = "caches/other"

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
"""


@pytest.fixture
def spy(monkeypatch):
    """Record every cache load and every edge trained."""
    calls = {"load": [], "connect": []}
    real_load, real_connect = bridge.store.load_cache, ModalityGraph.connect

    def load(path, *a, **k):
        calls["load"].append(str(path))
        return real_load(path, *a, **k)

    def connect(self, a, b, *args, **kw):
        calls["connect"].append((a, b))
        return real_connect(self, a, b, *args, **kw)

    monkeypatch.setattr(bridge.store, "load_cache", load)
    monkeypatch.setattr(bridge.graph.ModalityGraph, "connect", connect)
    return calls


def build(data, text, capsys, name="s.toml"):
    spec = data / name
    spec.write_text(text)
    try:
        return run(["graph", "build", spec, "--out", data / "built" / name], capsys)
    finally:
        spec.unlink()


LAST_EDGE = '\n[[edges]]\nsrc = "text:en@a"\ndst = "image@c"\ntranslator = "mlp"\n'


@pytest.mark.parametrize("extra, fragment", [
    ("\n[[edge]]\nsrc = 'a'\n", "unknown key 'edge'"),
    (LAST_EDGE + "[edges.params]\nwidht = 32\n", "no parameter 'widht'"),
    (LAST_EDGE + "[edges.params]\nepochs = 30.0\n", "'epochs' must be an integer"),
    (LAST_EDGE + "[edges.params]\nlr = -0.001\n", "'lr'"),
    (LAST_EDGE + "[edges.params]\ndropout = 1.5\n", "'dropout'"),
    (LAST_EDGE + "[edges.params]\nbatch_size = 0\n", "'batch_size'"),
    (LAST_EDGE + 'loss = "l1"\n', "unknown loss 'l1'"),
    (LAST_EDGE + 'post = "rotate"\n', "'rotate'"),
    (LAST_EDGE + 'directions = "sideways"\n', "'sideways'"),
    (LAST_EDGE + 'colour = "red"\n', "unknown key 'colour'"),
    (LAST_EDGE + 'pairs = "pairs/none.csv"\n', "none.csv"),
    (LAST_EDGE + "params = 5\n", "'params' must be a table"),
    (LAST_EDGE + 'splits = "random"\n', "'random'"),
    ('\n[[edges]]\nsrc = "text:en@a"\ndst = "image@c"\ntranslator = "cubic"\n', "'cubic'"),
    ('\n[[edges]]\nsrc = "text:en@a"\ndst = "image@c"\ntranslator = "linear"\nloss = "mse"\n',
     "'loss' applies to translator 'mlp' only"),
    ('\n[[edges]]\nsrc = "text:en@a"\ndst = "image@c"\ntranslator = "linear"\n'
     '[edges.params]\nalpha = "big"\n', "'alpha'"),
    ('\n[[edges]]\nsrc = "text:en@a"\ndst = "image@c"\ntranslator = "linear"\n'
     "cycle_weight = 0.5\n", "cycle_weight"),
    ('\n[[edges]]\nsrc = "text:en@a"\ndst = "text:en@a"\ntranslator = "linear"\n',
     "src and dst are both"),
    ('\n[[edges]]\nsrc = "text:en@a"\ndst = "nowhere"\n', "'nowhere' is not a declared node"),
    ('\n[[edges]]\nsrc = 3\ndst = "image@c"\n', "node name (string), got 3"),
    ('\n[[nodes]]\nname = "text:en@a"\ncache = "caches/a"\n', "declared twice"),
    ('\n[[nodes]]\nname = 3\ncache = "caches/a"\n', "'name' must be a non-empty string, got 3"),
    ('\n[[nodes]]\nname = "n@x"\ncache = "caches/missing"\n', "cache 'caches/missing' not found"),
    ('\n[[nodes]]\nname = "n@x"\ncache = 5\n', "'cache' must be a path"),
    ('\n[[nodes]]\nname = "n@x"\ncache = ["caches/a", "caches/b"]\n', "need as many 'prefixes'"),
    ('\n[[nodes]]\nname = "n@x"\ncache = ["caches/a", "caches/b"]\nprefixes = ["t", "t"]\n',
     "distinct"),
    ('\n[[nodes]]\nname = "n@x"\ncache = "caches/a"\nmodality = 1\n', "'modality' must be a string"),
])
def test_bad_spec_fails_before_any_cache_loads(data, spy, extra, fragment, capsys):
    rc, _, err = build(data, GOOD + extra, capsys)
    assert_one_line_error(rc, err, fragment, "s.toml")
    assert spy["load"] == [] and spy["connect"] == []
    assert not (data / "built").exists()


@pytest.mark.parametrize("graph_section, fragment", [
    ('seed = "zero"', "'seed' must be a non-negative integer, got 'zero'"),
    ("seed = -1", "got -1"),
    ("fractions = [0.5, 0.5]", "'fractions'"),
    ('fractions = [0.8, 0.1, "x"]', "'fractions'"),
    ("fractions = [0.8, 0.1, 0.3]", "summing to 1"),
    ('splits = "random"', "'random'"),
    ("splits = { train = [\"a\"], holdout = [\"b\"] }", "'holdout'"),
    ('name = 3', "'name' must be a non-empty string"),
    ("colour = 1", "unknown key 'colour'"),
])
def test_bad_graph_section(data, spy, graph_section, fragment, capsys):
    rc, _, err = build(data, GOOD.replace("seed = 0", graph_section), capsys)
    assert_one_line_error(rc, err, fragment)
    assert spy["load"] == [] and spy["connect"] == []


def test_spec_that_is_not_toml_or_missing(data, capsys):
    rc, _, err = build(data, "[graph\nseed = 0\n", capsys)
    assert_one_line_error(rc, err, "not valid TOML")
    rc, _, err = run(["graph", "build", data / "missing.toml"], capsys)
    assert_one_line_error(rc, err, "missing.toml")


def test_data_problem_in_last_edge_fails_before_the_first_edge_trains(data, spy, capsys):
    # the last edge joins caches that share no ids: found after loading, before training
    text = GOOD + '\n[[edges]]\nsrc = "text:en@a"\ndst = "text:xx@o"\ntranslator = "linear"\n'
    rc, _, err = build(data, text, capsys)
    assert_one_line_error(rc, err, "share no ids")
    assert len(spy["load"]) == 4 and spy["connect"] == []
    assert not (data / "built").exists()


def test_too_small_split_in_last_edge_fails_before_the_first_edge_trains(data, spy, capsys):
    text = (GOOD + '\n[[nodes]]\nname = "text:yy@few"\ncache = "caches/few"\n'
            '\n[[edges]]\nsrc = "text:en@a"\ndst = "text:yy@few"\ntranslator = "linear"\n')
    rc, _, err = build(data, text, capsys)
    assert_one_line_error(rc, err, "min_val")
    assert spy["connect"] == []
    assert not (data / "built").exists()


def test_good_spec_builds(data, spy, capsys):
    rc, out, err = build(data, GOOD, capsys)
    assert rc == 0, err
    assert spy["connect"] == [(A, B), (B, C)]
    assert (data / "built" / "s.toml" / "manifest.json").exists()


# ---------------------------------------------------------------------------
# internal bugs are not reported as user errors


@pytest.mark.parametrize("exc", [ValueError("bug"), KeyError("bug"), FileNotFoundError("bug"),
                                 TypeError("bug")])
def test_internal_errors_are_not_swallowed(monkeypatch, exc):
    import bridge.cli

    def broken(args):
        raise exc

    monkeypatch.setattr(bridge.cli, "_route", broken)
    with pytest.raises(type(exc)):
        main(["route", "G", "a", "b"])


def test_no_traceback_in_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bridge", "eval", str(tmp_path), "a", "--fuse", "b",
                        "--candidates", "-5"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "bridge: error: argument --candidates: expected an integer from 1 to 1000000, got '-5' "
        "(see 'bridge eval --help')"]


def test_occupied_out_folder_refused_before_training(data, spy, tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    spec = tmp_path / "s.toml"
    spec.write_text(GOOD.replace('"caches/', f'"{data}/caches/'))
    rc, _, err = run(["graph", "build", spec, "--out", out], capsys)
    assert_one_line_error(rc, err, "thesis", "--overwrite")
    assert spy["load"] == [] and spy["connect"] == []
    assert (out / "thesis.txt").read_text() == "years of work"
