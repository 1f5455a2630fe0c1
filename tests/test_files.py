"""Files that cannot hurt: paths stay inside saved folders, nothing foreign is replaced,
loads validate every field."""

import json
import os
import shutil

import numpy as np
import pytest

from bridge import ModalityGraph, load_graph
from bridge.errors import (
    BridgeError,
    CorruptFile,
    DimensionMismatch,
    ExternalReference,
    FolderExists,
)
from bridge.encoders.build import build_cache
from bridge.store import Cache, load_cache, save_cache
from bridge.translators import load_translator, make_translator
from conftest import random_orthogonal, unit


def spaces(n=60, d=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"s{i}" for i in range(n)]
    A = unit(rng.standard_normal((n, d))).astype(np.float32)
    B = unit(A @ random_orthogonal(d, rng)).astype(np.float32)
    return (Cache(ids=ids, emb=A, meta={"name": "a", "encoder": "enc-a"}),
            Cache(ids=ids, emb=B, meta={"name": "b", "encoder": "enc-b"}))


def small_graph(a=None, b=None):
    if a is None:
        a, b = spaces()
    g = ModalityGraph(min_val=1, warn_val=0)
    g.add_node("text:en@a", a)
    g.add_node("text:de@b", b)
    T = make_translator("procrustes").fit(a.vectors(), b.vectors())
    g.add_edge("text:en@a", "text:de@b", T, {"val_R@1": 0.9})
    return g


@pytest.fixture
def saved(tmp_path):
    g = small_graph()
    g.save(tmp_path / "g")
    return tmp_path / "g"


def edit_manifest(path, fn):
    mp = path / "manifest.json"
    m = json.loads(mp.read_text())
    m = fn(m)
    mp.write_text(json.dumps(m))


def thesis_folder(path):
    path.mkdir(parents=True)
    (path / "thesis.txt").write_text("four years of work")
    return path


# ---------------------------------------------------------------------------
# paths stay inside the graph folder


@pytest.mark.parametrize("bad", ["../../x", "../outside", "/etc", "edges/../../x"])
def test_edge_dir_outside_the_folder_is_refused(saved, bad):
    def fn(m):
        m["edges"][0]["dir"] = bad
        return m
    edit_manifest(saved, fn)
    with pytest.raises(CorruptFile, match=r"manifest.json: edges\[0\]\.dir"):
        load_graph(saved)


@pytest.mark.parametrize("bad", ["../../x.safetensors", "/tmp/x.safetensors"])
def test_stored_cache_outside_the_folder_is_refused(saved, bad):
    def fn(m):
        m["nodes"][1]["cache"] = {"stored": bad}
        return m
    edit_manifest(saved, fn)
    with pytest.raises(CorruptFile, match=r"nodes\[1\]\.cache\.stored"):
        load_graph(saved)
    assert load_graph(saved, load_caches=False).nodes  # caches are not read then


def test_symlinks_that_leave_the_folder_are_refused(saved, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(saved / "edges" / "000", outside)
    # an edge folder that is a link out of the graph folder
    shutil.rmtree(saved / "edges" / "000")
    os.symlink(outside, saved / "edges" / "000")
    with pytest.raises(CorruptFile, match=r"edges\[0\]\.dir.*leaves"):
        load_graph(saved)
    # a file inside the edge folder that is a link out of it
    os.unlink(saved / "edges" / "000")
    shutil.copytree(outside, saved / "edges" / "000")
    os.unlink(saved / "edges" / "000" / "config.json")
    os.symlink(outside / "config.json", saved / "edges" / "000" / "config.json")
    with pytest.raises(CorruptFile, match=r"edges\[0\]\.dir.*config.json"):
        load_graph(saved)
    # a stored cache that is a link out of the folder
    shutil.copy(outside / "config.json", tmp_path / "c.json")
    os.unlink(saved / "edges" / "000" / "config.json")
    shutil.copy(tmp_path / "c.json", saved / "edges" / "000" / "config.json")
    stored = saved / "caches" / "000.safetensors"
    shutil.move(stored, tmp_path / "moved.safetensors")
    os.symlink(tmp_path / "moved.safetensors", stored)
    with pytest.raises(CorruptFile, match=r"nodes\[0\]\.cache\.stored.*leaves"):
        load_graph(saved)
    # links that stay inside are fine
    os.unlink(stored)
    shutil.move(tmp_path / "moved.safetensors", saved / "caches" / "real.safetensors")
    os.symlink("real.safetensors", stored)
    assert len(load_graph(saved).nodes) == 2


def test_external_cache_needs_allow_external(tmp_path):
    a, b = spaces()
    save_cache(tmp_path / "caches" / "a", a, dtype="float32")
    a_file = load_cache(tmp_path / "caches" / "a")
    g = small_graph(a_file, b)
    g.save(tmp_path / "g")
    m = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert m["nodes"][0]["cache"] == {"path": str((tmp_path / "caches" / "a").resolve())}
    with pytest.raises(ExternalReference, match=r"nodes\[0\]\.cache\.path.*caches/a.*allow_external=True"):
        load_graph(tmp_path / "g")
    g2 = load_graph(tmp_path / "g", allow_external=True)
    np.testing.assert_array_equal(g2.cache("text:en@a").vectors(), a.vectors())
    # without caches nothing outside is read, and nothing needs allowing
    g3 = load_graph(tmp_path / "g", load_caches=False)
    assert g3.node("text:en@a")["cache"] is None and g3.edges == g2.edges
    # a hostile manifest pointing at any file is refused the same way
    edit_manifest(tmp_path / "g", lambda m: {**m, "nodes": [{**m["nodes"][0], "cache": {"path": "/etc/passwd"}}, m["nodes"][1]]})
    with pytest.raises(ExternalReference, match="/etc/passwd"):
        load_graph(tmp_path / "g")
    # copied caches make a self-contained folder
    g.save(tmp_path / "g", caches="copy")
    assert load_graph(tmp_path / "g").cache("text:en@a").dim == a.dim


def test_cli_allow_external(tmp_path, capsys):
    from bridge.cli import main

    a, b = spaces(n=200)
    save_cache(tmp_path / "a", a, dtype="float32")
    save_cache(tmp_path / "b", b, dtype="float32")
    g = small_graph(load_cache(tmp_path / "a"), load_cache(tmp_path / "b"))
    g.save(tmp_path / "g")
    capsys.readouterr()
    assert main(["graph", "show", str(tmp_path / "g")]) == 0  # reads no cache
    assert main(["route", str(tmp_path / "g"), "text:en@a", "text:de@b"]) == 0
    assert main(["eval", str(tmp_path / "g"), "text:en@a", "text:de@b"]) == 2
    err = capsys.readouterr().err
    assert "--allow-external" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", str(tmp_path / "g"), "text:en@a", "text:de@b", "--allow-external"]) == 0


# ---------------------------------------------------------------------------
# nothing foreign is replaced


def test_graph_save_refuses_a_foreign_folder(tmp_path):
    g = small_graph()
    target = thesis_folder(tmp_path / "g")
    with pytest.raises(FolderExists, match="overwrite=True") as e:
        g.save(target)
    assert len(str(e.value).splitlines()) == 1
    assert (target / "thesis.txt").read_text() == "four years of work"
    g.save(tmp_path / "g2")
    g.save(tmp_path / "g2")  # a graph replaces a graph
    g.save(target, overwrite=True)
    assert not (target / "thesis.txt").exists() and load_graph(target).edges


def test_translator_save_refuses_a_foreign_folder(tmp_path):
    a, b = spaces()
    T = make_translator("linear").fit(a.vectors(), b.vectors())
    target = thesis_folder(tmp_path / "t")
    with pytest.raises(FolderExists, match="thesis|other files"):
        T.save(target)
    assert (target / "thesis.txt").exists()
    T.save(tmp_path / "t2")
    T.save(tmp_path / "t2")
    np.testing.assert_array_equal(load_translator(tmp_path / "t2").W_, T.W_)
    T.save(target, overwrite=True)
    assert not (target / "thesis.txt").exists()
    with pytest.raises(FolderExists):  # nor a graph folder
        T.save(small_graph().save(tmp_path / "g"))


def test_save_cache_refuses_foreign_folders_and_other_encoders(tmp_path):
    a, b = spaces()
    target = thesis_folder(tmp_path / "c")
    with pytest.raises(FolderExists):
        save_cache(target, a)
    assert (target / "thesis.txt").exists()
    save_cache(tmp_path / "ok", a)
    save_cache(tmp_path / "ok", a.subset(np.arange(10)))  # same encoder: replaced
    assert len(load_cache(tmp_path / "ok")) == 10
    with pytest.raises(FolderExists, match="enc-a.*enc-b"):
        save_cache(tmp_path / "ok", b)
    assert load_cache(tmp_path / "ok").meta["encoder"] == "enc-a"
    save_cache(tmp_path / "ok", b, overwrite=True)
    assert load_cache(tmp_path / "ok").meta["encoder"] == "enc-b"
    save_cache(tmp_path / "x.safetensors", a)
    with pytest.raises(FolderExists, match="enc-a"):
        save_cache(tmp_path / "x.safetensors", b)
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(FolderExists):
        save_cache(tmp_path / "d.npz", a)


class FakeEncoder:
    def __init__(self, name="fake", dim=3, model="m1", fail_at=None):
        self.name, self.dim, self.model, self.modality = name, dim, model, "text"
        self.fail_at, self.calls = fail_at, 0

    def describe(self):
        return {"encoder": self.name, "model": self.model, "modality": "text", "dim": self.dim}

    def encode(self, items, batch_size=None, progress=False):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise KeyboardInterrupt
        return np.array([[len(s) + k for k in range(self.dim)] for s in items], np.float32)


def test_build_cache_refuses_foreign_folders_and_other_encoders(tmp_path):
    items = [f"item {i}" for i in range(6)]
    ids = [str(i) for i in range(6)]
    target = thesis_folder(tmp_path / "c")
    with pytest.raises(FolderExists, match="overwrite"):
        build_cache(FakeEncoder(), items, ids, target, progress=False)
    assert sorted(os.listdir(target)) == ["thesis.txt"]  # not even parts/ was made
    c = build_cache(FakeEncoder(), items, ids, tmp_path / "ok", chunk_size=2, progress=False)
    assert len(c) == 6
    # the same encoder may rebuild its cache (other ids); another may not replace it
    c = build_cache(FakeEncoder(), items[:4], ids[:4], tmp_path / "ok", chunk_size=2, progress=False)
    assert len(c) == 4
    with pytest.raises(FolderExists, match="'fake'.*'other'"):
        build_cache(FakeEncoder("other"), items, ids, tmp_path / "ok", progress=False)
    assert load_cache(tmp_path / "ok").meta["encoder"] == "fake"
    c = build_cache(FakeEncoder("other"), items, ids, tmp_path / "ok", progress=False, overwrite=True)
    assert c.meta["encoder"] == "other"
    c = build_cache(FakeEncoder(), items, ids, target, progress=False, overwrite=True)
    assert len(c) == 6 and not (target / "thesis.txt").exists()


def test_resumed_build_checks_encoder_and_widths(tmp_path):
    items = [f"item {i}" for i in range(6)]
    ids = [str(i) for i in range(6)]
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        build_cache(FakeEncoder(fail_at=2), items, ids, out, chunk_size=2, progress=False)
    parts = sorted(os.listdir(out / "parts"))
    assert parts == ["manifest.json", "part-000000.npy"]
    before = {p: (out / "parts" / p).read_bytes() for p in parts}
    # another encoder: refused, the parts are kept
    with pytest.raises(FolderExists, match="'fake'.*'other'"):
        build_cache(FakeEncoder("other"), items, ids, out, chunk_size=2, progress=False)
    # the same encoder name with another width: refused before the new part is written
    with pytest.raises(DimensionMismatch, match=r"width 5.*part-000001.npy.*width 3"):
        build_cache(FakeEncoder(dim=5), items, ids, out, chunk_size=2, progress=False)
    assert {p: (out / "parts" / p).read_bytes() for p in sorted(os.listdir(out / "parts"))} == before
    # finished parts of different widths (a damaged build) are named
    np.save(out / "parts" / "part-000001.npy", np.ones((2, 4), np.float32))
    with pytest.raises(DimensionMismatch, match=r"part-000001.npy has width 4.*width 3"):
        build_cache(FakeEncoder(), items, ids, out, chunk_size=2, progress=False)
    (out / "parts" / "part-000001.npy").unlink()
    enc = FakeEncoder()
    c = build_cache(enc, items, ids, out, chunk_size=2, progress=False)
    assert enc.calls == 2 and c.dim == 3 and len(c) == 6


def test_cli_overwrite_flags(tmp_path, capsys):
    from bridge.cli import build_parser, main

    a, b = spaces(n=200)
    save_cache(tmp_path / "a", a, dtype="float32")
    save_cache(tmp_path / "b", b, dtype="float32")
    (tmp_path / "g.toml").write_text(f"""
[[nodes]]
name = "text:en@a"
cache = "{tmp_path / 'a'}"

[[nodes]]
name = "text:de@b"
cache = "{tmp_path / 'b'}"

[[edges]]
src = "text:en@a"
dst = "text:de@b"
translator = "procrustes"
""")
    out = thesis_folder(tmp_path / "out")
    assert main(["graph", "build", str(tmp_path / "g.toml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "thesis.txt").exists()
    assert main(["graph", "build", str(tmp_path / "g.toml"), "--out", str(out), "--overwrite"]) == 0
    assert load_graph(out, load_caches=False).edges
    args = build_parser().parse_args(["cache", "build", "--encoder", "e5", "--text", "x",
                                      "--out", "o", "--overwrite"])
    assert args.overwrite is True


# ---------------------------------------------------------------------------
# manifest validation


def _set(path, value):
    def fn(m):
        obj = m
        for k in path[:-1]:
            obj = obj[k]
        if value is _DEL:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
        return m
    return fn


_DEL = object()

MANIFEST_CASES = [
    (lambda m: [m], "expected a JSON object"),
    (lambda m: None, "expected a JSON object"),
    (_set(["format_version"], 2), "format_version"),
    (_set(["format_version"], "1"), "format_version"),
    (_set(["format_version"], _DEL), "format_version"),
    (_set(["nodes"], {"a": 1}), "nodes: expected a list"),
    (_set(["nodes"], None), "nodes: expected a list"),
    (_set(["nodes", 0], "text:en@a"), r"nodes\[0\]: expected an object"),
    (_set(["nodes", 0, "name"], _DEL), r"nodes\[0\]\.name"),
    (_set(["nodes", 0, "name"], 7), r"nodes\[0\]\.name"),
    (_set(["nodes", 0, "dim"], 0), r"nodes\[0\]\.dim"),
    (_set(["nodes", 0, "dim"], "6"), r"nodes\[0\]\.dim"),
    (_set(["nodes", 0, "dim"], 6.5), r"nodes\[0\]\.dim"),
    (_set(["nodes", 0, "dim"], True), r"nodes\[0\]\.dim"),
    (_set(["nodes", 0, "dim"], 7), r"nodes\[0\].*dim"),
    (_set(["nodes", 0, "cache"], "caches/000.safetensors"), r"nodes\[0\]\.cache"),
    (_set(["nodes", 0, "cache"], {"stored": 3}), r"nodes\[0\]\.cache\.stored"),
    (_set(["nodes", 0, "modality"], ["text"]), r"nodes\[0\]\.modality"),
    (_set(["nodes", 1, "name"], "text:en@a"), "more than once"),
    (_set(["edges"], "edges/000"), "edges: expected a list"),
    (_set(["edges", 0, "src"], "nowhere"), r"edges\[0\]\.src"),
    (_set(["edges", 0, "dst"], _DEL), r"edges\[0\]\.dst"),
    (_set(["edges", 0, "dir"], None), r"edges\[0\]\.dir"),
    (_set(["edges", 0, "cost"], "cheap"), r"edges\[0\]\.cost"),
    (_set(["edges", 0, "metrics"], [0.9]), r"edges\[0\]\.metrics"),
    (_set(["edges", 0, "metrics"], {"val_R@1": "high"}), r"edges\[0\]\.metrics\.val_R@1"),
    (_set(["edges", 0, "split"], "hash"), r"edges\[0\]\.split"),
    (_set(["edges", 0, "kind"], "mlp"), r"edges\[0\]\.kind"),
    (lambda m: {**m, "edges": m["edges"] * 2}, "more than once"),
    (_set(["fractions"], [0.5, 0.5]), "fractions"),
    (_set(["fractions"], ["0.8", 0.1, 0.1]), "fractions"),
    (_set(["fractions"], None), "fractions"),
    (_set(["settings", "fractions"], [1, 1, 1]), "settings.fractions"),
    (_set(["seed"], "zero"), "seed"),
    (_set(["splits"], 3), "splits"),
    (_set(["splits"], {"train": "abc"}), r"splits\.train"),
    (_set(["splits"], {"holdout": []}), r"splits\.holdout"),
    (_set(["settings"], [1]), "settings"),
    (_set(["settings", "min_val"], "5"), "settings.min_val"),
    (_set(["settings", "min_val"], -3), "settings"),
    (_set(["settings", "future_knob"], 1), "settings.future_knob"),
    (_set(["format"], "something-else"), "format"),
]


@pytest.mark.parametrize("mutate,field", MANIFEST_CASES, ids=[c[1] for c in MANIFEST_CASES])
def test_mutated_manifest_raises_corrupt_file_naming_the_field(saved, mutate, field):
    edit_manifest(saved, mutate)
    with pytest.raises(CorruptFile, match=field) as e:
        load_graph(saved)
    assert "manifest.json" in str(e.value)


def test_settings_round_trip(tmp_path):
    g = small_graph()
    g.save(tmp_path / "g")
    g2 = load_graph(tmp_path / "g")
    assert g2.settings() == g.settings() and g.settings()["min_val"] == 1


# ---------------------------------------------------------------------------
# translator files


def _fit(kind, d_in=5, d_out=4, **params):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, d_in)).astype(np.float32)
    Y = (X @ rng.standard_normal((d_in, d_out))).astype(np.float32)
    if kind == "identity":
        Y = X
    if kind == "posthoc":
        from bridge.translators.posthoc import PostHocTranslator

        base = make_translator("linear").fit(X, Y)
        return PostHocTranslator(base, steps="center+procrustes").fit(X, Y), X
    if kind == "mlp":
        params = {"width": 8, "depth": 2, "epochs": 1, "batch_size": 16, **params}
    return make_translator(kind, **params).fit(X, Y), X


KINDS = ["linear", "procrustes", "mlp", "relative", "identity", "posthoc"]


@pytest.mark.parametrize("kind", KINDS)
def test_translator_round_trip_every_kind(tmp_path, kind):
    T, X = _fit(kind)
    T.save(tmp_path / "t")
    T2 = load_translator(tmp_path / "t")
    np.testing.assert_allclose(T2.transform(X), T.transform(X), rtol=1e-5, atol=1e-5)


def _rewrite_weights(path, fn):
    from safetensors.numpy import load_file, save_file

    w = load_file(str(path / "model.safetensors"))
    w = fn(w)
    save_file(w, str(path / "model.safetensors"))


def _bad_shape(name):
    def fn(w):
        t = w[name]
        w[name] = np.zeros(tuple(s + 1 for s in t.shape), t.dtype) if t.ndim else t
        return w
    return fn


SHAPE_CASES = [
    ("linear", "W"), ("linear", "b"), ("procrustes", "R"), ("procrustes", "mx"),
    ("procrustes", "s"), ("mlp", "head.weight"), ("mlp", "skip.bias"),
    ("relative", "anchors_y"), ("relative", "k"), ("identity", "dim"),
    ("posthoc", "base.W"), ("posthoc", "shift"), ("posthoc", "R"),
]


@pytest.mark.parametrize("kind,name", SHAPE_CASES, ids=[f"{k}-{n}" for k, n in SHAPE_CASES])
def test_weights_that_disagree_with_config_raise_at_load(tmp_path, kind, name):
    T, _ = _fit(kind)
    T.save(tmp_path / "t")
    _rewrite_weights(tmp_path / "t", _bad_shape(name))
    with pytest.raises(CorruptFile, match=rf"model.safetensors.*{name.replace('.', '[.]')}"):
        load_translator(tmp_path / "t")


@pytest.mark.parametrize("kind", KINDS)
def test_missing_extra_and_nonfinite_weights_raise_at_load(tmp_path, kind):
    T, _ = _fit(kind)
    T.save(tmp_path / "t")
    first = sorted(T._get_state())[0]

    def drop(w):
        del w[first]
        return w
    _rewrite_weights(tmp_path / "t", drop)
    with pytest.raises(CorruptFile, match="missing"):
        load_translator(tmp_path / "t")
    T.save(tmp_path / "t")
    _rewrite_weights(tmp_path / "t", lambda w: {**w, "stowaway": np.zeros(3, np.float32)})
    with pytest.raises(CorruptFile, match="stowaway"):
        load_translator(tmp_path / "t")
    floats = [k for k, v in T._get_state().items() if np.asarray(v).dtype.kind == "f"]
    if floats:
        T.save(tmp_path / "t")

        def poison(w):
            w[floats[0]] = w[floats[0]].copy()
            w[floats[0]].reshape(-1)[0] = np.nan
            return w
        _rewrite_weights(tmp_path / "t", poison)
        with pytest.raises(CorruptFile, match="NaN"):
            load_translator(tmp_path / "t")


CONFIG_CASES = [
    (lambda c: [c], "expected a JSON object"),
    (lambda c: {**c, "kind": "quantum"}, "kind"),
    (lambda c: {**c, "kind": 3}, "kind"),
    (lambda c: {**c, "in_dim": "5"}, "in_dim"),
    (lambda c: {**c, "out_dim": 0}, "out_dim"),
    (lambda c: {**c, "in_dim": 6}, "in_dim|W"),
    (lambda c: {**c, "params": [1]}, "params"),
    (lambda c: {**c, "params": {"alpha": "lots"}}, "params"),
    (lambda c: {**c, "params": {"no_such": 1}}, "params"),
    (lambda c: {**c, "fit_report": 3}, "fit_report"),
    (lambda c: {**c, "extra": "x"}, "extra"),
]


@pytest.mark.parametrize("mutate,field", CONFIG_CASES, ids=[c[1] for c in CONFIG_CASES])
def test_mutated_translator_config_raises_corrupt_file(tmp_path, mutate, field):
    T, _ = _fit("linear")
    T.save(tmp_path / "t")
    cp = tmp_path / "t" / "config.json"
    cp.write_text(json.dumps(mutate(json.loads(cp.read_text()))))
    with pytest.raises(CorruptFile, match=field) as e:
        load_translator(tmp_path / "t")
    assert "config.json" in str(e.value) or "model.safetensors" in str(e.value)


def test_mutated_mlp_and_posthoc_configs(tmp_path):
    T, _ = _fit("mlp")
    T.save(tmp_path / "t")
    cp = tmp_path / "t" / "config.json"
    c = json.loads(cp.read_text())
    cp.write_text(json.dumps({**c, "params": {**c["params"], "width": 16}}))
    with pytest.raises(CorruptFile, match="model.safetensors"):
        load_translator(tmp_path / "t")
    cp.write_text(json.dumps({**c, "params": {**c["params"], "width": -1}}))
    with pytest.raises(CorruptFile, match="params.*width"):
        load_translator(tmp_path / "t")
    P, _ = _fit("posthoc")
    P.save(tmp_path / "p")
    cp = tmp_path / "p" / "config.json"
    c = json.loads(cp.read_text())
    cp.write_text(json.dumps({**c, "extra": {}}))
    with pytest.raises(CorruptFile, match="extra.base"):
        load_translator(tmp_path / "p")
    c["extra"]["base"]["kind"] = "nope"
    cp.write_text(json.dumps(c))
    with pytest.raises(CorruptFile, match="extra.base: kind"):
        load_translator(tmp_path / "p")


def test_graph_with_bad_edge_weights_fails_at_load_not_translate(saved):
    _rewrite_weights(saved / "edges" / "000", _bad_shape("R"))
    with pytest.raises(CorruptFile, match=r"edges/000/model.safetensors.*'R'"):
        load_graph(saved)


# ---------------------------------------------------------------------------
# cache files


def test_cache_files_whose_ids_disagree_with_rows(tmp_path):
    a, _ = spaces(n=6)
    save_cache(tmp_path / "c", a)
    (tmp_path / "c" / "ids.json").write_text(json.dumps(["x"] * 5))
    with pytest.raises(CorruptFile, match="ids.json: ids: 5 ids for 6"):
        load_cache(tmp_path / "c")
    (tmp_path / "c" / "ids.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(CorruptFile, match="ids.json: ids: expected a list"):
        load_cache(tmp_path / "c")
    (tmp_path / "c" / "ids.json").write_text(json.dumps([["a"]] * 6))
    with pytest.raises(CorruptFile, match="ids.json: ids: entry 0"):
        load_cache(tmp_path / "c")
    (tmp_path / "c" / "ids.json").write_text(json.dumps([str(i) for i in range(6)]))
    (tmp_path / "c" / "meta.json").write_text("[1, 2]")
    with pytest.raises(CorruptFile, match="meta.json: meta"):
        load_cache(tmp_path / "c")
    (tmp_path / "c" / "meta.json").write_text("{}")
    (tmp_path / "c" / "groups.json").write_text(json.dumps(["g"] * 7))
    with pytest.raises(CorruptFile, match="groups.json: groups: 7 groups for 6"):
        load_cache(tmp_path / "c")
    np.save(tmp_path / "x.npy", np.ones((4, 3), np.float32))
    (tmp_path / "x.ids.txt").write_text("a\nb\nc\n")
    with pytest.raises(CorruptFile, match="x.ids.txt: ids: 3 ids for 4"):
        load_cache(tmp_path / "x.npy")
    np.save(tmp_path / "y.npy", np.ones((4,), np.float32))
    with pytest.raises(CorruptFile, match="y.npy: embeddings have shape"):
        load_cache(tmp_path / "y.npy")
    bad = np.ones((4, 3), np.float32)
    bad[1, 1] = np.inf
    np.save(tmp_path / "z.npy", bad)
    with pytest.raises(CorruptFile, match="z.npy.*NaN or inf"):
        load_cache(tmp_path / "z.npy")


def test_safetensors_cache_header_is_validated(tmp_path):
    from safetensors.numpy import save_file

    x = np.ones((3, 2), np.float32)
    save_file({"embeddings": x}, str(tmp_path / "a.safetensors"), metadata={"ids": '["a", "b"]'})
    with pytest.raises(CorruptFile, match="2 ids for 3"):
        load_cache(tmp_path / "a.safetensors")
    save_file({"embeddings": x}, str(tmp_path / "b.safetensors"), metadata={"ids": "[not json"})
    with pytest.raises(CorruptFile, match="'ids' is not valid JSON"):
        load_cache(tmp_path / "b.safetensors")
    save_file({"embeddings": x}, str(tmp_path / "c.safetensors"), metadata={"meta": "[1]"})
    with pytest.raises(CorruptFile, match="meta: expected an object"):
        load_cache(tmp_path / "c.safetensors")
    save_file({"other": x}, str(tmp_path / "d.safetensors"))
    with pytest.raises(CorruptFile, match="'embeddings'"):
        load_cache(tmp_path / "d.safetensors")


def test_every_load_error_is_a_bridge_error(saved):
    """A few damaged manifests of other shapes: never a raw TypeError/KeyError."""
    for mutate in (lambda m: {**m, "nodes": [None]}, lambda m: {**m, "edges": [[]]},
                   lambda m: {**m, "nodes": [{"name": "x", "dim": 2, "cache": {"path": 5}}]},
                   lambda m: {**m, "edges": [{**m["edges"][0], "src": None}]}):
        m0 = json.loads((saved / "manifest.json").read_text())
        edit_manifest(saved, mutate)
        with pytest.raises(BridgeError):
            load_graph(saved)
        (saved / "manifest.json").write_text(json.dumps(m0))
    assert load_graph(saved).edges
