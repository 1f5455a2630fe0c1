"""The user's path end to end: table caches with their own column names in a saved graph,
`bridge cache build` manifests and Ctrl-C while an encoder loads, spec error messages, and
an audio node reachable from every text node of a spec."""

import json
from pathlib import Path

import numpy as np
import pytest

import bridge.encoders as encoders
from bridge.cli import main
from bridge.errors import CorruptFile, NoPairs
from bridge.graph import ModalityGraph, load_graph
from bridge.store import Cache, load_cache, save_cache
from conftest import random_orthogonal, unit, run_cli

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


run = run_cli


# ---------------------------------------------------------------------------
# a Parquet cache with its own column names, referenced by a saved graph

SPEAKERS = ("jackson", "theo", "nicolas", "yweweler")


def _parquet(path: Path, x: np.ndarray, ids, groups):
    table = pa.table({"vec": pa.array(list(x.astype(np.float32)), type=pa.list_(pa.float32(), x.shape[1])),
                      "clip": pa.array(ids), "speaker": pa.array(groups)})
    pq.write_table(table, str(path))


@pytest.fixture
def table_graph(tmp_path):
    """A graph whose audio node was read from a Parquet file with columns vec/clip/speaker."""
    rng = np.random.default_rng(0)
    n, d = 120, 6
    x = unit(rng.standard_normal((n, d)))
    ids = [f"c{i:03d}" for i in range(n)]
    groups = [SPEAKERS[i % len(SPEAKERS)] for i in range(n)]
    _parquet(tmp_path / "clips.parquet", x, ids, groups)
    audio = load_cache(tmp_path / "clips.parquet", embedding_column="vec", id_column="clip",
                       groups_column="speaker")
    text = Cache(ids=ids, emb=unit(x @ random_orthogonal(d, rng)))
    g = ModalityGraph(warn_val=0)
    g.add_node("audio@fsdd", audio)
    g.add_node("text:en@e5", text)
    g.connect("audio@fsdd", "text:en@e5", translator="procrustes")
    return g, audio, tmp_path


@pytest.mark.parametrize("caches", ["reference", "auto"])
def test_table_cache_with_own_columns_reloads_from_its_reference(table_graph, caches):
    g, audio, tmp_path = table_graph
    g.save(tmp_path / "g", caches=caches)
    m = json.loads((tmp_path / "g" / "manifest.json").read_text())
    ref = m["nodes"][0]["cache"]
    assert ref == {"path": str((tmp_path / "clips.parquet").resolve()), "format": "parquet",
                   "columns": {"embedding_column": "vec", "id_column": "clip",
                               "groups_column": "speaker"}}
    h = load_graph(tmp_path / "g", allow_external=True)
    c = h.cache("audio@fsdd")
    assert list(c.ids) == list(audio.ids)
    assert list(c.groups) == [SPEAKERS[i % len(SPEAKERS)] for i in range(len(c))]
    np.testing.assert_array_equal(c.emb, audio.emb)
    # the reloaded graph scores its edge on the same test rows as before
    assert h.edge("audio@fsdd", "text:en@e5")["metrics"] == g.edge("audio@fsdd", "text:en@e5")["metrics"]


def _edit_ref(path: Path, fn):
    mp = path / "manifest.json"
    m = json.loads(mp.read_text())
    fn(m["nodes"][0]["cache"])
    mp.write_text(json.dumps(m))


@pytest.mark.parametrize("edit, field, fragment", [
    (lambda r: r["columns"].update(id_column=3), r"nodes\[0\]\.cache\.columns\.id_column",
     "expected a column name .* or null, got int 3"),
    (lambda r: r["columns"].update(embedding_column=None),
     r"nodes\[0\]\.cache\.columns\.embedding_column", "got null"),
    (lambda r: r["columns"].pop("groups_column"), r"nodes\[0\]\.cache\.columns\.groups_column",
     "missing"),
    (lambda r: r["columns"].update(colour="red"), r"nodes\[0\]\.cache\.columns\.colour",
     "unknown field"),
    (lambda r: r.update(columns=["vec"]), r"nodes\[0\]\.cache\.columns", "expected an object"),
    (lambda r: r.update(format="csv"), r"nodes\[0\]\.cache\.format", "expected one of"),
    (lambda r: r.update(format="arrow"), r"nodes\[0\]\.cache\.format", "names a 'parquet' table"),
    (lambda r: r.pop("format"), r"nodes\[0\]\.cache\.format", "missing"),
    (lambda r: r.update(extra=1), r"nodes\[0\]\.cache\.extra", "unknown field"),
])
def test_table_reference_is_validated_strictly(table_graph, edit, field, fragment):
    g, _, tmp_path = table_graph
    g.save(tmp_path / "g", caches="reference")
    _edit_ref(tmp_path / "g", edit)
    with pytest.raises(CorruptFile, match=field + ": .*" + fragment):
        load_graph(tmp_path / "g", allow_external=True)


def test_stale_table_columns_are_named_at_load(table_graph):
    g, audio, tmp_path = table_graph
    g.save(tmp_path / "g", caches="reference")
    x = np.asarray(audio.emb)
    pq.write_table(pa.table({"embedding": pa.array(list(x), type=pa.list_(pa.float32(), x.shape[1])),
                             "id": pa.array(list(audio.ids))}), str(tmp_path / "clips.parquet"))
    with pytest.raises(CorruptFile, match=r"no column 'vec'"):
        load_graph(tmp_path / "g", allow_external=True)


def test_a_folder_cache_reference_has_no_table_fields(tmp_path):
    rng = np.random.default_rng(1)
    x = unit(rng.standard_normal((40, 4)))
    save_cache(tmp_path / "a", Cache(ids=[str(i) for i in range(40)], emb=x))
    g = ModalityGraph()
    g.add_node("text:en@a", load_cache(tmp_path / "a"))
    g.save(tmp_path / "g", caches="reference")
    ref = json.loads((tmp_path / "g" / "manifest.json").read_text())["nodes"][0]["cache"]
    assert set(ref) == {"path"}
    assert len(load_graph(tmp_path / "g", allow_external=True).cache("text:en@a")) == 40


# ---------------------------------------------------------------------------
# bridge cache build: manifests read with the command's own option table, Ctrl-C at load


class Words(encoders.Encoder):
    name = "fake-words"
    modality = "text"
    dim = 3

    def __init__(self, model=None, device="cpu"):
        pass

    def _encode_batch(self, batch):
        return np.stack([np.array([len(str(s)), 1.0, 0.5]) for s in batch])


@pytest.fixture
def words(monkeypatch, tmp_path):
    monkeypatch.setitem(encoders._REGISTRY, Words.name, Words)
    p = tmp_path / "words.txt"
    p.write_text("one\ntwo\nthree\nfour\n")
    return p


def test_manifest_reads_types_choices_and_flags_like_the_command_line(words, tmp_path, capsys):
    m = tmp_path / "inputs.toml"
    m.write_text(f'[[cache]]\nencoder = "fake-words"\ntext = "{words}"\nout = "{tmp_path / "w"}"\n'
                 'sample = 2\nsample-mode = "even"\nchunk_size = 1\noverwrite = true\n')
    rc, out, err = run(["cache", "build", "--manifest", m], capsys)
    assert rc == 0, err
    assert list(load_cache(tmp_path / "w").ids) == ["0", "2"]
    for bad, fragment in (('sample-mode = "odd"', "sample-mode must be one of ['random', 'even']"),
                          ("overwrite = 1", "overwrite must be true or false"),
                          ("chunk-size = 0", "chunk-size: expected an integer >= 1"),
                          ("cache_options = 1", "unknown key 'cache_options'"),
                          ("help = true", "unknown key 'help'")):
        m.write_text(f'[[cache]]\nencoder = "fake-words"\ntext = "{words}"\n'
                     f'out = "{tmp_path / "v"}"\n{bad}\n')
        rc, _, err = run(["cache", "build", "--manifest", m], capsys)
        assert rc == 2 and fragment in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()


def test_cli_reads_no_private_argparse_attribute():
    import ast

    import bridge.cli as cli

    tree = ast.parse(Path(cli.__file__).read_text())
    private = sorted({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                      and n.attr.startswith("_") and not n.attr.startswith("__")})
    assert private == [], private


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_the_encoder_loads_prints_one_line(words, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(encoders, "get_encoder", _interrupt)
    out = tmp_path / "w"
    rc, stdout, err = run(["cache", "build", "--encoder", "fake-words", "--text", words,
                           "--out", out], capsys)
    assert rc == 130
    assert err.strip().splitlines() == [
        f"bridge: interrupted while loading encoder 'fake-words'; nothing was written to {out}"]
    assert not out.exists() and stdout == ""


def test_ctrl_c_while_an_encoder_of_a_manifest_loads(words, tmp_path, capsys, monkeypatch):
    real = encoders.get_encoder
    calls = []

    def second_interrupts(name, **kw):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(name, **kw)

    monkeypatch.setattr(encoders, "get_encoder", second_interrupts)
    m = tmp_path / "inputs.toml"
    m.write_text("".join(f'[[cache]]\nencoder = "fake-words"\ntext = "{words}"\n'
                         f'out = "{tmp_path / name}"\n\n' for name in ("a", "b", "c")))
    rc, stdout, err = run(["cache", "build", "--manifest", m], capsys)
    assert rc == 130 and "Traceback" not in err
    # the first cache's progress bar, then the one line that says what happened
    assert [ln for ln in err.strip().splitlines() if "bridge:" in ln] == [
        f"bridge: interrupted while loading encoder 'fake-words'; nothing was written to "
        f"{tmp_path / 'b'} (1 more caches of the manifest not started)"]
    assert err.strip().splitlines()[-1].startswith("bridge: interrupted")
    assert len(load_cache(tmp_path / "a")) == 4
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------
# spec errors name the edge once


def _bare_id_caches(tmp_path, n=3):
    rng = np.random.default_rng(1)
    x = unit(rng.standard_normal((60, 8)))
    ids = [f"s{i}" for i in range(60)]
    for k in range(n):
        save_cache(tmp_path / "caches" / f"n{k}", Cache(ids=ids, emb=x))
        x = unit(x @ random_orthogonal(8, rng))
    nodes = "".join(f'\n[[nodes]]\nname = "text:en@n{k}"\ncache = "caches/n{k}"\n' for k in range(n))
    edges = "".join(f'\n[[edges]]\nsrc = "text:en@n{k}"\ndst = "text:en@n{k + 1}"\n'
                    'translator = "procrustes"\n' for k in range(n - 1))
    p = tmp_path / "s.toml"
    p.write_text(f'[graph]\nsplits = "prefix"\nout = "graphs/g"\n{nodes}{edges}')
    return p


def test_bare_ids_error_names_the_edge_once_in_graph_build(tmp_path, capsys):
    rc, _, err = run(["graph", "build", _bare_id_caches(tmp_path)], capsys)
    assert rc == 2
    assert err.strip() == (
        "bridge: error: edges[0] 'text:en@n0' -> 'text:en@n1': ids of node 'text:en@n0' have "
        "no train:/val:/test: prefix (first id: 's0'); build the cache with concat_caches or "
        "use splits = {train/val/test: groups} (or no rule: the hash split)")


def test_size_error_names_the_edge_once_in_graph_build(tmp_path, capsys):
    spec = _bare_id_caches(tmp_path)
    spec.write_text(spec.read_text().replace('splits = "prefix"', "min_val = 50"))
    rc, _, err = run(["graph", "build", spec], capsys)
    assert rc == 2
    assert err.count("text:en@n1") == 1 and err.count("edge") == 1, err
    assert err.startswith("bridge: error: edges[0] 'text:en@n0' -> 'text:en@n1': 60 pairs in 60 groups")


def test_bare_ids_error_names_the_edge_once_in_connect():
    x = unit(np.random.default_rng(2).standard_normal((40, 6)))
    ids = [f"train:{i}" for i in range(20)] + [f"row{i}" for i in range(20)]
    g = ModalityGraph(splits="prefix")
    g.add_node("text:en@a", Cache(ids=ids, emb=x))
    g.add_node("text:en@b", Cache(ids=ids, emb=x))
    with pytest.raises(NoPairs) as e:
        g.connect("text:en@a", "text:en@b", translator="procrustes")
    assert str(e.value).startswith("edge 'text:en@a' -> 'text:en@b': ids of node 'text:en@a' "
                                   "have no train:/val:/test: prefix (first id: 'row0')")
    assert str(e.value).count("'text:en@b'") == 1


# ---------------------------------------------------------------------------
# an audio node reachable from every text node of a spec

N_DIGITS, CLIPS = 10, 24
TEXT = ("text:en@e5", "text:de@e5", "text:fr@e5")

AUDIO_SPEC = """
[graph]
seed = 0
out = "graphs/digits"
min_val = 1          # ten words: the identity edges are scored on one or two of them

[[nodes]]
name = "audio@fsdd"
cache = "caches/audio"

[[nodes]]
name = "text:en@e5"
cache = "caches/en"

[[nodes]]
name = "text:de@e5"
cache = "caches/de"

[[nodes]]
name = "text:fr@e5"
cache = "caches/fr"

[[edges]]            # clip ids -> word ids, one row per clip
src = "audio@fsdd"
dst = "text:en@e5"
translator = "linear"
pairs = "digits.csv"

[[edges]]            # same encoder, same space: nothing to train
src = "text:de@e5"
dst = "text:en@e5"
translator = "identity"

[[edges]]
src = "text:fr@e5"
dst = "text:en@e5"
translator = "identity"
"""


@pytest.fixture
def digits_graph(tmp_path, capsys):
    rng = np.random.default_rng(0)
    d = 8
    words = unit(rng.standard_normal((N_DIGITS, d)))
    digit = np.repeat(np.arange(N_DIGITS), CLIPS)
    clips = unit(words[digit] @ random_orthogonal(d, rng) + 0.05 * rng.standard_normal((digit.size, d)))
    clip_ids = [f"{k}_s{i % 4}_{i}" for i, k in enumerate(digit)]
    word_ids = [f"digit:{k}" for k in range(N_DIGITS)]
    save_cache(tmp_path / "caches" / "audio", Cache(ids=clip_ids, emb=clips))
    save_cache(tmp_path / "caches" / "en", Cache(ids=word_ids, emb=words))
    for lang in ("de", "fr"):  # one multilingual encoder: a word's translations lie close
        near = unit(words + 0.05 * rng.standard_normal(words.shape))
        save_cache(tmp_path / "caches" / lang, Cache(ids=word_ids, emb=near))
    (tmp_path / "digits.csv").write_text(
        "clip,word\n" + "".join(f"{c},digit:{k}\n" for c, k in zip(clip_ids, digit)))
    (tmp_path / "digits.toml").write_text(AUDIO_SPEC)
    rc, _, err = run(["graph", "build", tmp_path / "digits.toml"], capsys)
    assert rc == 0, err
    return tmp_path / "graphs" / "digits"


def test_audio_is_reachable_from_every_text_node(digits_graph, capsys):
    g = load_graph(digits_graph, allow_external=True)
    assert g.edge("text:de@e5", "text:en@e5")["kind"] == "identity"
    for text in TEXT:
        for a, b in ((text, "audio@fsdd"), ("audio@fsdd", text)):
            rc, out, err = run(["route", digits_graph, a, b], capsys)
            assert rc == 0, err
            hops = ([a, b] if "text:en@e5" in (a, b) else
                    [a, "text:en@e5", b])
            assert out.splitlines()[0].startswith("1. " + " -> ".join(hops) + "  (cost "), out


@pytest.mark.parametrize("src, dst, queries", [
    ("audio@fsdd", "text:de@e5", "clips"), ("text:fr@e5", "audio@fsdd", "words"),
    ("audio@fsdd", "text:en@e5", "clips")])
def test_eval_routes_through_english_with_no_extra_arguments(digits_graph, capsys, tmp_path,
                                                             src, dst, queries):
    rc, out, err = run(["eval", digits_graph, src, dst, "--allow-external", "--json",
                        tmp_path / "r.json"], capsys)
    assert rc == 0, err
    r = json.loads((tmp_path / "r.json").read_text())["route"]
    assert [n for n in r["routes"][0]["nodes"]] == (
        [src, dst] if "text:en@e5" in (src, dst) else [src, "text:en@e5", dst])
    # the test clips of the audio edge's split, against the ten words (or the reverse)
    g = load_graph(digits_graph, allow_external=True)
    P, rule = g.edge_pairs("audio@fsdd", "text:en@e5")
    test_clips = np.unique(P.a_rows[g.split(P, rule)["test"]]).size
    n_clips = r["n_queries"] if queries == "clips" else r["n_gallery"]
    assert n_clips == test_clips > 0
    assert r["R@1"] == 1.0  # the synthetic clips lie close to their rotated digit word


@pytest.mark.parametrize("suffix", [".arrow", ".feather"])
def test_arrow_and_feather_caches_keep_their_columns_in_a_saved_graph(tmp_path, suffix):
    import pyarrow.feather as feather

    x = unit(np.random.default_rng(3).standard_normal((30, 4))).astype(np.float32)
    table = pa.table({"clip_vec": pa.array(list(x), type=pa.list_(pa.float32(), 4)),
                      "key": pa.array([f"k{i}" for i in range(30)])})
    p = tmp_path / f"t{suffix}"
    if suffix == ".arrow":
        with pa.ipc.new_file(str(p), table.schema) as w:
            w.write_table(table)
    else:
        feather.write_feather(table, str(p), compression="uncompressed")
    g = ModalityGraph()
    g.add_node("audio@x", load_cache(p, embedding_column="clip_vec", id_column="key"))
    g.save(tmp_path / "g")  # auto: the file is referenced
    ref = json.loads((tmp_path / "g" / "manifest.json").read_text())["nodes"][0]["cache"]
    assert ref["format"] == suffix[1:] and ref["columns"] == {
        "embedding_column": "clip_vec", "id_column": "key", "groups_column": None}
    c = load_graph(tmp_path / "g", allow_external=True).cache("audio@x")
    assert list(c.ids) == [f"k{i}" for i in range(30)] and c.groups is None
    np.testing.assert_array_equal(c.emb, x)


def test_evaluate_route_and_the_r1_grid_compose_pairs_along_the_route(digits_graph):
    from bridge.evaluate import evaluate_route, held_out, r1_matrix

    g = load_graph(digits_graph, allow_external=True)
    P, rule = g.edge_pairs("audio@fsdd", "text:de@e5")
    # every composed pair is a clip with the German word of its own digit (same word id)
    en, _ = g.edge_pairs("audio@fsdd", "text:en@e5")
    want = {(int(a), str(g.cache("text:en@e5").ids[b])) for a, b in zip(en.a_rows, en.b_rows)}
    got = {(int(a), str(g.cache("text:de@e5").ids[b])) for a, b in zip(P.a_rows, P.b_rows)}
    assert got == want
    assert rule == g.split_rule("audio@fsdd", "text:en@e5")
    h = held_out(g, "audio@fsdd", "text:de@e5")
    h_en = held_out(g, "audio@fsdd", "text:en@e5")
    np.testing.assert_array_equal(h.q_rows, h_en.q_rows)  # the audio edge's own test clips
    m = evaluate_route(g, "audio@fsdd", "text:de@e5", ks=(1,))
    assert m["routes"][0]["nodes"] == ["audio@fsdd", "text:en@e5", "text:de@e5"]
    assert m["R@1"] == 1.0
    names, M = r1_matrix(g, ["audio@fsdd", "text:de@e5"])
    off = M[~np.eye(2, dtype=bool)]
    assert not np.isnan(off).any() and (off > 0).all()
