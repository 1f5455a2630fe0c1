import json

import numpy as np
import pytest

from bridge.errors import CorruptFile, DimensionMismatch, EmptyData, InvalidEmbeddings, NoPairs
from bridge.store import Cache, load_cache, pair_by_ids, pair_table, save_cache, split_groups


def make_cache(n=20, d=8, seed=0, ids=None, groups=None):
    rng = np.random.default_rng(seed)
    return Cache(ids=ids if ids is not None else [f"id{i}" for i in range(n)],
                 emb=rng.standard_normal((n, d)).astype(np.float32), meta={"modality": "text"},
                 groups=groups)


@pytest.mark.parametrize("suffix", ["", ".npz", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    c = make_cache(groups=[f"g{i // 2}" for i in range(20)])
    p = save_cache(tmp_path / f"c{suffix}", c, dtype="float32")
    back = load_cache(p)
    np.testing.assert_array_equal(back.vectors(), c.vectors())
    assert list(back.ids) == list(c.ids)
    assert list(back.groups) == list(c.groups)
    if suffix != ".npz":
        assert back.meta["modality"] == "text"


def test_npy_memory_mapped_with_ids_file(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float16)
    np.save(tmp_path / "a.npy", x)
    (tmp_path / "a.ids.txt").write_text("\n".join("abcde"))
    c = load_cache(tmp_path / "a.npy")
    assert isinstance(c.emb, np.memmap)
    assert list(c.ids) == list("abcde")
    # without an ids file the ids are row numbers
    np.save(tmp_path / "b.npy", x)
    assert list(load_cache(tmp_path / "b.npy").ids) == ["0", "1", "2", "3", "4"]


def test_bad_inputs_are_named(tmp_path):
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(InvalidEmbeddings, match="rows 2"):
        Cache(ids=list("abcd"), emb=x)
    with pytest.raises(EmptyData):
        Cache(ids=[], emb=np.zeros((0, 3)))
    with pytest.raises(DimensionMismatch, match="3 ids"):
        Cache(ids=list("abc"), emb=np.ones((4, 3)))
    with pytest.raises(CorruptFile, match="not found"):
        load_cache(tmp_path / "nope.npy")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(CorruptFile):
        load_cache(tmp_path / "bad.npy")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CorruptFile):
        load_cache(tmp_path / "bad.safetensors")


def test_interrupted_save_keeps_previous(tmp_path, monkeypatch):
    c = make_cache()
    save_cache(tmp_path / "c", c)
    import bridge.store as store

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "write_json", boom)
    with pytest.raises(RuntimeError):
        save_cache(tmp_path / "c", make_cache(seed=1))
    back = load_cache(tmp_path / "c")
    np.testing.assert_allclose(back.vectors(), c.vectors(), atol=1e-2)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_pairs_by_ids_and_table():
    a = make_cache(ids=["x", "y", "z"], n=3)
    b = make_cache(ids=["z", "x", "x", "w"], n=4)
    p = pair_by_ids(a, b)
    assert sorted(zip(p.a_rows.tolist(), p.b_rows.tolist())) == [(0, 1), (0, 2), (2, 0)]
    # class-level table: one class id to every row of that id
    t = pair_table(a, b, [("x", "x"), ("y", "w"), ("q", "w")])
    assert sorted(zip(t.a_rows.tolist(), t.b_rows.tolist())) == [(0, 1), (0, 2), (1, 3)]
    with pytest.raises(NoPairs, match="share no ids"):
        pair_by_ids(a, make_cache(ids=["p", "q"], n=2))
    with pytest.raises(NoPairs):
        pair_table(a, b, [("q", "r")])


def test_pair_table_file(tmp_path):
    a = make_cache(ids=["x", "y"], n=2)
    b = make_cache(ids=["1", "2"], n=2)
    (tmp_path / "t.csv").write_text("a,b\nx,2\ny,1\n")
    t = pair_table(a, b, tmp_path / "t.csv")
    assert sorted(zip(t.a_rows.tolist(), t.b_rows.tolist())) == [(0, 1), (1, 0)]


def test_split_by_group_is_deterministic_and_disjoint():
    groups = np.repeat([f"img{i}" for i in range(200)], 5)
    s1 = split_groups(groups, seed=3)
    s2 = split_groups(groups, seed=3)
    for k in s1:
        np.testing.assert_array_equal(s1[k], s2[k])
    sets = {k: set(groups[v]) for k, v in s1.items()}
    assert not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sum(len(v) for v in s1.values()) == len(groups)
    assert 0.6 < len(s1["train"]) / len(groups) < 0.95
    # a group keeps its split in any other set of groups (edges agree on held-out groups)
    sub = groups[::5][:50]
    s3 = split_groups(sub, seed=3)
    for k in s3:
        assert set(sub[s3[k]]) <= sets[k]
    assert split_groups(groups, seed=4)["test"].tolist() != s1["test"].tolist()


def test_split_small_group_counts_keep_val_and_test():
    s = split_groups([str(i) for i in range(3)], seed=0)
    assert all(v.size == 1 for v in s.values())
