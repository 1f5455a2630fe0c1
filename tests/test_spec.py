"""Graph specs: pair-table edges, split-prefix errors, partial saves and graph settings."""

import numpy as np
import pytest

from bridge.cli import main
from bridge.errors import NoPairs
from bridge.graph import ModalityGraph, load_graph
from bridge.spec import EdgeFailed, SpecError, build_graph_from_spec, load_spec
from bridge.store import Cache, save_cache
from conftest import random_orthogonal, unit

N_DIGITS, CLIPS = 10, 24


def _audio_and_words(tmp_path):
    """A word node (one row per digit) and an audio node (CLIPS noisy clips per digit)."""
    rng = np.random.default_rng(0)
    d = 8
    words = unit(rng.standard_normal((N_DIGITS, d)))
    R = random_orthogonal(d, rng)
    digit = np.repeat(np.arange(N_DIGITS), CLIPS)
    clips = unit(words[digit] @ R + 0.05 * rng.standard_normal((digit.size, d)))
    clip_ids = [f"clip{i}" for i in range(digit.size)]
    save_cache(tmp_path / "caches" / "words", Cache(ids=[f"w{k}" for k in range(N_DIGITS)], emb=words))
    save_cache(tmp_path / "caches" / "audio", Cache(ids=clip_ids, emb=clips))
    lines = ["clip,word"] + [f"{c},w{k}" for c, k in zip(clip_ids, digit)]
    (tmp_path / "digits.csv").write_text("\n".join(lines) + "\n")
    return clip_ids, digit


CLASS_SPEC = """
[graph]
seed = 0
out = "graphs/g"
{graph_extra}

[[nodes]]
name = "audio@fsdd"
cache = "caches/audio"

[[nodes]]
name = "text:en@words"
cache = "caches/words"

[[edges]]
src = "audio@fsdd"
dst = "text:en@words"
translator = "linear"
pairs = "{pairs}"
"""


def _class_spec(tmp_path, pairs="digits.csv", graph_extra="warn_val = 10"):
    p = tmp_path / "g.toml"
    p.write_text(CLASS_SPEC.format(pairs=pairs, graph_extra=graph_extra))
    return p


def test_class_level_pair_table_edge_is_trained_and_saved(tmp_path, capsys):
    clip_ids, digit = _audio_and_words(tmp_path)
    assert main(["graph", "build", str(_class_spec(tmp_path))]) == 0
    g = load_graph(tmp_path / "graphs" / "g", allow_external=True)
    assert set(g.edges) == {("audio@fsdd", "text:en@words"), ("text:en@words", "audio@fsdd")}
    P, _ = g.edge_pairs("audio@fsdd", "text:en@words")  # the header line is not a pair
    assert len(P) == len(clip_ids)
    a_ids = g.cache("audio@fsdd").ids[P.a_rows]
    b_ids = g.cache("text:en@words").ids[P.b_rows]
    expected = {c: f"w{k}" for c, k in zip(clip_ids, digit)}
    assert all(expected[a] == b for a, b in zip(a_ids, b_ids))
    # the clips of one digit word are grouped by clip, so one word appears in several splits
    m = g.edge("audio@fsdd", "text:en@words")["metrics"]
    assert m["val_R@1"] > 0.9


def test_pair_table_not_found_or_unparsable_fails_at_load(tmp_path):
    _audio_and_words(tmp_path)
    with pytest.raises(SpecError, match=r"pair table 'nope.csv' not found"):
        load_spec(_class_spec(tmp_path, pairs="nope.csv"))
    (tmp_path / "one.csv").write_text("clip0\nclip1\n")
    with pytest.raises(SpecError, match=r"edges\[0\]: pair table .*one.csv' does not parse: "
                                        r".*expected two columns"):
        load_spec(_class_spec(tmp_path, pairs="one.csv"))


def test_pair_table_id_missing_from_a_cache_is_named_before_training(tmp_path, monkeypatch):
    _audio_and_words(tmp_path)
    (tmp_path / "bad.csv").write_text("clip0,w0\nclip1,w1\nclip2,w9\nclip999,w3\nclip4,w7\n")
    spec = load_spec(_class_spec(tmp_path, pairs="bad.csv"))  # the file itself parses

    def no_training(*a, **k):
        raise AssertionError("an edge was trained before the spec's pairs were checked")

    monkeypatch.setattr(ModalityGraph, "connect", no_training)
    with pytest.raises(SpecError, match=r"row 4: id 'clip999' is not an id of node 'audio@fsdd'"):
        build_graph_from_spec(spec, log=lambda *a: None)
    (tmp_path / "bad.csv").write_text("clip0,w0\nclip1,w10\n")
    with pytest.raises(SpecError, match=r"row 2: id 'w10' is not an id of node 'text:en@words'"):
        build_graph_from_spec(load_spec(_class_spec(tmp_path, pairs="bad.csv")), log=lambda *a: None)


def _shared_id_caches(tmp_path, ids, n_nodes=3):
    rng = np.random.default_rng(1)
    d = 8
    x = unit(rng.standard_normal((len(ids), d)))
    for k in range(n_nodes):
        save_cache(tmp_path / "caches" / f"n{k}", Cache(ids=ids, emb=x))
        x = unit(x @ random_orthogonal(d, rng) + 0.02 * rng.standard_normal(x.shape))


def _chain_spec(tmp_path, graph_extra="warn_val = 10", n_nodes=3):
    nodes = "".join(f'\n[[nodes]]\nname = "text:en@n{k}"\ncache = "caches/n{k}"\n'
                    for k in range(n_nodes))
    edges = "".join(f'\n[[edges]]\nsrc = "text:en@n{k}"\ndst = "text:en@n{k + 1}"\n'
                    f'translator = "procrustes"\n' for k in range(n_nodes - 1))
    p = tmp_path / "chain.toml"
    p.write_text(f'[graph]\nseed = 0\nout = "graphs/chain"\n{graph_extra}\n{nodes}{edges}')
    return p


def test_prefix_graph_with_bare_ids_names_the_real_cause(tmp_path, capsys):
    _shared_id_caches(tmp_path, [f"s{i}" for i in range(60)])
    assert main(["graph", "build", str(_chain_spec(tmp_path, 'splits = "prefix"'))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "ids of node 'text:en@n0' have no train:/val:/test: prefix (first id: 's0')" in err
    assert "concat_caches" in err and "more paired groups" not in err
    assert not (tmp_path / "graphs" / "chain").exists()  # refused before any edge trained


def test_connect_on_prefix_graph_with_bare_ids_names_the_real_cause():
    rng = np.random.default_rng(2)
    x = unit(rng.standard_normal((40, 6)))
    ids = [f"train:{i}" for i in range(20)] + [f"row{i}" for i in range(20)]
    g = ModalityGraph(splits="prefix")
    g.add_node("text:en@a", Cache(ids=ids, emb=x))
    g.add_node("text:en@b", Cache(ids=ids, emb=x))
    with pytest.raises(NoPairs, match=r"no train:/val:/test: prefix \(first id: 'row0'\)"):
        g.connect("text:en@a", "text:en@b", translator="procrustes")
    # prefixed ids with an empty val split keep the size message
    g2 = ModalityGraph(splits="prefix")
    g2.add_node("text:en@a", Cache(ids=ids[:20], emb=x[:20]))
    g2.add_node("text:en@b", Cache(ids=ids[:20], emb=x[:20]))
    with pytest.raises(NoPairs, match=r"the val split holds no pairs"):
        g2.connect("text:en@a", "text:en@b", translator="procrustes")


def _fail_edge(monkeypatch, failing_src):
    real = ModalityGraph.connect

    def connect(self, a, b, *args, **kw):
        if a == failing_src:
            raise NoPairs(f"simulated failure of {a!r}")
        return real(self, a, b, *args, **kw)

    monkeypatch.setattr(ModalityGraph, "connect", connect)


def test_failing_edge_keeps_the_edges_trained_before_it(tmp_path, capsys, monkeypatch):
    _shared_id_caches(tmp_path, [f"s{i}" for i in range(200)], n_nodes=4)
    spec = _chain_spec(tmp_path, n_nodes=4)
    _fail_edge(monkeypatch, "text:en@n2")
    assert main(["graph", "build", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("bridge: error: edges[2] 'text:en@n2' -> 'text:en@n3' failed: "
                          "simulated failure")
    assert "saved the graph of the 2 edge(s) trained before it (4 directed)" in err
    g = load_graph(tmp_path / "graphs" / "chain", allow_external=True)
    assert sorted(g.edges) == sorted([("text:en@n0", "text:en@n1"), ("text:en@n1", "text:en@n0"),
                                      ("text:en@n1", "text:en@n2"), ("text:en@n2", "text:en@n1")])
    assert len(g.nodes) == 4


def test_failing_first_edge_saves_nothing(tmp_path, capsys, monkeypatch):
    _shared_id_caches(tmp_path, [f"s{i}" for i in range(200)])
    _fail_edge(monkeypatch, "text:en@n0")
    assert main(["graph", "build", str(_chain_spec(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "edges[0] 'text:en@n0' -> 'text:en@n1' failed" in err and "nothing saved" in err
    assert not (tmp_path / "graphs" / "chain").exists()


def test_edge_failed_carries_the_partial_graph(tmp_path, monkeypatch):
    _shared_id_caches(tmp_path, [f"s{i}" for i in range(200)])
    _fail_edge(monkeypatch, "text:en@n1")
    with pytest.raises(EdgeFailed) as info:
        build_graph_from_spec(load_spec(_chain_spec(tmp_path)), log=lambda *a: None)
    e = info.value
    assert (e.index, e.trained) == (1, 1) and isinstance(e.cause, NoPairs)
    assert len(e.graph.edges) == 2


def test_graph_settings_from_spec(tmp_path):
    _shared_id_caches(tmp_path, [f"s{i}" for i in range(200)])
    extra = "min_train = 3\nmin_val = 4\nwarn_val = 7"  # val holds 26 pairs: no warning
    g = build_graph_from_spec(load_spec(_chain_spec(tmp_path, extra)), log=lambda *a: None)
    s = g.settings()
    assert (s["min_train"], s["min_val"], s["warn_val"]) == (3, 4, 7)
    assert main(["graph", "build", str(_chain_spec(tmp_path, extra))]) == 0
    s = load_graph(tmp_path / "graphs" / "chain", allow_external=True).settings()
    assert (s["min_train"], s["min_val"], s["warn_val"]) == (3, 4, 7)


def test_graph_min_val_refuses_small_splits_before_training(tmp_path, monkeypatch):
    _shared_id_caches(tmp_path, [f"s{i}" for i in range(200)])
    monkeypatch.setattr(ModalityGraph, "connect",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    spec = load_spec(_chain_spec(tmp_path, "min_val = 500"))
    with pytest.raises(NoPairs, match=r"edges\[0\] .*fewer than the graph's min_val=500"):
        build_graph_from_spec(spec, log=lambda *a: None)


@pytest.mark.parametrize("line, message", [
    ("min_val = 0", r"'min_val' must be an integer >= 1, got 0"),
    ("min_train = true", r"'min_train' must be an integer >= 1, got True"),
    ("warn_val = -1", r"'warn_val' must be an integer >= 0, got -1"),
    ("warn_val = 2.5", r"'warn_val' must be an integer >= 0, got 2.5"),
    ("min_vals = 3", r"unknown key 'min_vals'"),
])
def test_bad_graph_settings_are_spec_errors(tmp_path, line, message):
    _shared_id_caches(tmp_path, [f"s{i}" for i in range(20)])
    with pytest.raises(SpecError, match=message):
        load_spec(_chain_spec(tmp_path, line))
