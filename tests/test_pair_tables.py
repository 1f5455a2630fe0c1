"""Pair tables travel with the graph: an edge trained from a many-to-many pair table keeps
its table and split in the saved graph, so evaluation after load_graph needs no argument."""

import json
import re
import warnings

import numpy as np
import pytest

from bridge.cli import main
from bridge.errors import CorruptFile, NoPairs
from bridge.evaluate import evaluate_route, held_out, r1_matrix
from bridge.graph import ModalityGraph, load_graph
from bridge.store import Cache, PairTable, load_cache, save_cache, split_groups

CLIPS, WORDS = "audio@clap", "text:en@e5"
N_SPEAKERS, N_CLIPS = 40, 480


def _data(seed=0):
    """Audio-like clips (ids clip_i, groups speaker_s, ten digit classes) and ten digit
    words (ids w0..w9), with the class-level pair table (clip_i, w<digit of clip i>)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, 16))
    digits = np.arange(N_CLIPS) % 10
    speakers = (np.arange(N_CLIPS) // 10) % N_SPEAKERS
    clips = centres[digits] + 0.3 * rng.normal(size=(N_SPEAKERS, 16))[speakers] \
        + 0.2 * rng.normal(size=(N_CLIPS, 16))
    words = centres @ rng.normal(size=(16, 8))
    a = Cache.from_arrays(clips.astype(np.float32), ids=[f"clip_{i}" for i in range(N_CLIPS)],
                          groups=[f"speaker_{s}" for s in speakers])
    b = Cache.from_arrays(words.astype(np.float32), ids=[f"w{d}" for d in range(10)])
    table = PairTable([f"clip_{i}" for i in range(N_CLIPS)], [f"w{d}" for d in digits])
    return a, b, table, digits, speakers


def _graph(a, b, **kw):
    g = ModalityGraph(**kw)
    g.add_node(CLIPS, a)
    g.add_node(WORDS, b)
    return g


def _connect(g, table, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small val splits warn; not what is tested here
        return g.connect(CLIPS, WORDS, translator="linear", pairs=table, **kw)


def _figures(m):
    return {k: m[k] for k in ("R@1", "R@5", "MRR", "n_queries", "n_gallery")}


@pytest.fixture
def trained():
    a, b, table, digits, speakers = _data()
    g = _graph(a, b)
    _connect(g, table)
    return g, table, digits, speakers


def test_held_out_uses_the_edge_table_and_its_speaker_split(trained):
    g, table, digits, speakers = trained
    h = held_out(g, CLIPS, WORDS)
    # reference: the test speakers of the graph's hash split, every clip of theirs a query
    groups = np.array([f"speaker_{s}" for s in speakers])
    test = split_groups(groups, g.fractions, g.seed)["test"]
    assert np.array_equal(h.q_rows, np.sort(test))
    assert h.one_to_one
    words = g.cache(WORDS).ids[h.g_rows]
    assert [words[r[0]] for r in h.relevant] == [f"w{d}" for d in digits[h.q_rows]]
    # the same as passing the table explicitly
    e = held_out(g, CLIPS, WORDS, pairs=table)
    assert np.array_equal(e.q_rows, h.q_rows) and np.array_equal(e.g_rows, h.g_rows)
    # the reverse direction: each word query has every test clip of its digit relevant
    r = held_out(g, WORDS, CLIPS)
    clips = r.g_rows
    for q, rel in zip(r.q_rows, r.relevant):
        assert set(clips[rel]) == set(test[digits[test] == q])


def test_figures_survive_save_and_load(trained, tmp_path):
    g, table, _, _ = trained
    before = {(s, d): _figures(evaluate_route(g, s, d)) for s, d in ((CLIPS, WORDS), (WORDS, CLIPS))}
    names, M = r1_matrix(g)
    assert before[(CLIPS, WORDS)]["R@1"] > 0.8
    g.save(tmp_path / "g")
    stored = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert [e.get("pairs") for e in stored["edges"]] == ["edges/000/pairs.json", "edges/001/pairs.json"]
    h = load_graph(tmp_path / "g")
    after = {(s, d): _figures(evaluate_route(h, s, d)) for s, d in ((CLIPS, WORDS), (WORDS, CLIPS))}
    assert after == before
    names2, M2 = r1_matrix(h)
    assert names2 == names
    np.testing.assert_array_equal(M2, M)
    assert not np.isnan(M[0, 1]) and not np.isnan(M[1, 0])
    T = h.edge(CLIPS, WORDS)["pair_table"]["table"]
    assert T.pairs() == table.pairs()
    assert h.edge(WORDS, CLIPS)["pair_table"]["table"].pairs() == table.reversed().pairs()


def test_a_table_with_unmatched_rows_keeps_the_rows_that_pair(tmp_path):
    a, b, table, _, _ = _data()
    extra = PairTable(list(table.a_ids) + ["clip_missing", "clip_1"],
                      list(table.b_ids) + ["w1", "w_missing"])
    g = _graph(a, b)
    _connect(g, extra.pairs())  # a list of (id, id) tuples
    assert g.edge(CLIPS, WORDS)["pair_table"]["table"].pairs() == table.pairs()
    before = _figures(evaluate_route(g, CLIPS, WORDS))
    g.save(tmp_path / "g")
    assert _figures(evaluate_route(load_graph(tmp_path / "g"), CLIPS, WORDS)) == before


def test_a_split_given_as_groups_travels_with_the_edge(tmp_path):
    a, b, table, _, speakers = _data()
    names = [f"speaker_{s}" for s in range(N_SPEAKERS)]
    rule = {"train": names[:30], "val": names[30:35], "test": names[35:]}
    g = _graph(a, b)
    _connect(g, table, splits=rule)
    want = np.flatnonzero(speakers >= 35)
    assert np.array_equal(held_out(g, CLIPS, WORDS).q_rows, want)
    before = _figures(evaluate_route(g, CLIPS, WORDS))
    g.save(tmp_path / "g")
    h = load_graph(tmp_path / "g")
    assert h.edge(CLIPS, WORDS)["split"]["groups"] == rule
    assert np.array_equal(held_out(h, CLIPS, WORDS).q_rows, want)
    assert _figures(evaluate_route(h, CLIPS, WORDS)) == before


def test_a_forward_edge_scores_the_reverse_pair_through_its_table(tmp_path):
    a, b, table, _, _ = _data()
    g = _graph(a, b)
    _connect(g, table, directions="forward")
    h = held_out(g, WORDS, CLIPS)
    f = held_out(g, CLIPS, WORDS)
    assert set(h.g_rows) == set(f.q_rows)
    g.save(tmp_path / "g")
    r = held_out(load_graph(tmp_path / "g"), WORDS, CLIPS)
    assert np.array_equal(r.q_rows, h.q_rows) and np.array_equal(r.g_rows, h.g_rows)


def test_retraining_without_a_table_drops_the_stored_one():
    a, b, table, _, _ = _data()
    g = _graph(a, b)
    _connect(g, table)
    P = g.pairs(CLIPS, WORDS, table)
    _connect(g, P)  # row pairs: nothing to store by id
    assert g.edge(CLIPS, WORDS)["pair_table"] is None
    with pytest.raises(NoPairs, match="pass pairs="):
        held_out(g, CLIPS, WORDS)
    assert held_out(g, CLIPS, WORDS, pairs=P).q_rows.size > 0


def test_cli_eval_and_heatmap_score_the_saved_graph(tmp_path, capsys):
    a, b, table, _, _ = _data()
    save_cache(tmp_path / "clips", a)
    save_cache(tmp_path / "words", b)
    g = _graph(load_cache(tmp_path / "clips"), load_cache(tmp_path / "words"))
    _connect(g, table)
    want = evaluate_route(g, CLIPS, WORDS)
    g.save(tmp_path / "g")
    capsys.readouterr()
    out_json = tmp_path / "e.json"
    assert main(["eval", str(tmp_path / "g"), CLIPS, WORDS, "--allow-external",
                 "--json", str(out_json)]) == 0
    assert f"R@1 {want['R@1']:.4f}" in capsys.readouterr().out
    got = json.loads(out_json.read_text())["route"]
    assert got["R@1"] == want["R@1"] and got["n_queries"] == want["n_queries"]
    png = tmp_path / "h.png"
    assert main(["plot", "heatmap", str(tmp_path / "g"), "--allow-external", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------
# a stored table is validated at load


@pytest.fixture
def saved(trained, tmp_path):
    g = trained[0]
    g.save(tmp_path / "g")
    return tmp_path / "g"


def _edit_pairs(folder, fn):
    p = folder / "edges" / "000" / "pairs.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def _edit_manifest(folder, fn):
    p = folder / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["a_ids"].__setitem__(3, 7), "a_ids[3]"),
    (lambda d: d.__setitem__("b_ids", d["b_ids"][:-1]), "b_ids"),
    (lambda d: d.__setitem__("a_ids", "clip_0"), "a_ids"),
    (lambda d: d.__setitem__("groups", [1] * len(d["a_ids"])), "groups[0]"),
    (lambda d: d.__setitem__("groups_from", "left"), "groups_from"),
    (lambda d: d.__setitem__("format", "other"), "format"),
    (lambda d: d.__setitem__("extra", 1), "extra"),
    (lambda d: (d.__setitem__("a_ids", []), d.__setitem__("b_ids", [])), "a_ids"),
])
def test_a_mutated_table_is_refused(saved, edit, field):
    _edit_pairs(saved, edit)
    with pytest.raises(CorruptFile, match=r"pairs\.json: " + re.escape(field) + ":"):
        load_graph(saved)


def test_unknown_ids_are_refused(saved):
    _edit_pairs(saved, lambda d: d["b_ids"].__setitem__(5, "w42"))
    with pytest.raises(CorruptFile, match=r"b_ids\[5\]: id 'w42' is not an id of node 'text:en@e5'"):
        load_graph(saved)
    # without caches there is nothing to check the ids against: the graph loads
    assert load_graph(saved, load_caches=False).edge(CLIPS, WORDS)["pair_table"] is not None


@pytest.mark.parametrize("ref", ["../outside.json", "/etc/passwd", "", 3])
def test_a_table_path_outside_the_folder_is_refused(saved, ref):
    (saved.parent / "outside.json").write_text((saved / "edges" / "000" / "pairs.json").read_text())
    _edit_manifest(saved, lambda m: m["edges"][0].__setitem__("pairs", ref))
    with pytest.raises(CorruptFile, match=r"edges\[0\]\.pairs"):
        load_graph(saved)


def test_a_missing_table_or_bad_split_groups_are_refused(saved):
    (saved / "edges" / "001" / "pairs.json").unlink()
    with pytest.raises(CorruptFile, match=r"edges\[1\]\.pairs: stored pair table .* is missing"):
        load_graph(saved)


def test_bad_split_groups_in_the_manifest_are_refused(saved):
    _edit_manifest(saved, lambda m: m["edges"][0]["split"].__setitem__("groups", {"tset": ["a"]}))
    with pytest.raises(CorruptFile, match=r"edges\[0\]\.split\.groups\.tset: unknown split"):
        load_graph(saved)


def test_a_graph_saved_without_tables_asks_for_one(saved):
    # a manifest from before tables were stored: its edges pair by shared ids, which these
    # nodes lack, so evaluation names what to pass
    _edit_manifest(saved, lambda m: [e.pop("pairs") for e in m["edges"]])
    with pytest.raises(NoPairs, match=r"no edge between 'audio@clap' and 'text:en@e5' stores a pair table"):
        evaluate_route(load_graph(saved), CLIPS, WORDS)


def test_r1_matrix_takes_a_table_for_the_reverse_pair(trained):
    g, table, _, _ = trained
    _, M = r1_matrix(g)
    # a PairTable given for (a, b) also scores (b, a), reversed; the same figures as stored
    _, E = r1_matrix(g, pair_tables={(CLIPS, WORDS): table})
    np.testing.assert_array_equal(E, M)
    _, L = r1_matrix(g, pair_tables={(CLIPS, WORDS): table.pairs()})
    np.testing.assert_array_equal(L, M)


def test_explicit_pairs_are_split_by_the_edge_rule():
    a, b, table, _, speakers = _data()
    names = [f"speaker_{s}" for s in range(N_SPEAKERS)]
    g = _graph(a, b)
    _connect(g, table, splits={"train": names[:30], "val": names[30:35], "test": names[35:]})
    h = held_out(g, CLIPS, WORDS, pairs=table)
    assert np.array_equal(h.q_rows, np.flatnonzero(speakers >= 35))
