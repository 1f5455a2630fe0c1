"""Caches from Parquet, Arrow IPC / Feather files and Hugging Face datasets folders."""

import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.feather as feather  # noqa: E402
import pyarrow.ipc as ipc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bridge import load_cache  # noqa: E402
from bridge.errors import (  # noqa: E402
    CorruptFile,
    EmptyData,
    InvalidEmbeddings,
    InvalidParameter,
)


def source(n=7, d=5, dtype=np.float32, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)
    ids = [f"clip{i:02d}" for i in range(n)]
    groups = [f"spk{i % 3}" for i in range(n)]
    return x, ids, groups


def fixed_table(x, ids, groups=None, emb="embedding", id_="id"):
    cols = {emb: pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
            id_: pa.array(ids, pa.string())}
    if groups is not None:
        cols["speaker"] = pa.array(groups)
    return pa.table(cols)


def list_table(rows, ids):
    return pa.table({"embedding": pa.array([list(map(float, r)) for r in rows],
                                           type=pa.list_(pa.float32())),
                     "id": pa.array(ids)})


def write_arrow(path, table, stream=False, max_chunksize=None):
    with pa.OSFile(str(path), "wb") as sink:
        opener = ipc.new_stream if stream else ipc.new_file
        with opener(sink, table.schema) as w:
            w.write_table(table, max_chunksize=max_chunksize)


def test_parquet_values_ids_and_groups_equal_the_source(tmp_path):
    x, ids, groups = source()
    pq.write_table(fixed_table(x, ids, groups), tmp_path / "a.parquet")
    c = load_cache(tmp_path / "a.parquet", groups_column="speaker", modality="audio")
    np.testing.assert_array_equal(c.emb, x)
    assert c.emb.dtype == np.float32
    assert list(c.ids) == ids and list(c.groups) == groups
    assert c.meta == {"modality": "audio", "name": "a", "table": {
        "format": "parquet", "embedding_column": "embedding", "id_column": "id",
        "groups_column": "speaker"}}
    # a list column of equal lengths reads the same; so do integer ids (as strings)
    t = list_table(x, ids).set_column(1, "id", pa.array(range(7)))
    pq.write_table(t, tmp_path / "b.parquet", row_group_size=3)  # several chunks
    c = load_cache(str(tmp_path / "b.parquet"))
    np.testing.assert_array_equal(c.emb, x)
    assert list(c.ids) == [str(i) for i in range(7)] and c.groups is None


@pytest.mark.parametrize("stream", [False, True])
def test_arrow_ipc_is_memory_mapped_without_a_copy(tmp_path, stream):
    x, ids, _ = source(n=2000, d=16, dtype=np.float16)
    write_arrow(tmp_path / "a.arrow", fixed_table(x, ids), stream=stream)
    before = pa.total_allocated_bytes()
    c = load_cache(tmp_path / "a.arrow")
    mapped = pa.total_allocated_bytes() - before
    np.testing.assert_array_equal(c.emb, x)
    assert c.emb.dtype == np.float16 and list(c.ids) == ids
    # the array is a read-only view of the mapped file: no buffer of its size was allocated
    assert mapped < x.nbytes // 4
    assert not c.emb.flags.owndata and not c.emb.flags.writeable
    # read into memory instead: the buffers come from Arrow's allocator
    before = pa.total_allocated_bytes()
    c2 = load_cache(tmp_path / "a.arrow", mmap=False)
    assert pa.total_allocated_bytes() - before >= x.nbytes
    np.testing.assert_array_equal(c2.emb, x)
    del c, c2


def test_feather_and_record_batches(tmp_path):
    x, ids, groups = source(n=10)
    t = fixed_table(x, ids, groups)
    feather.write_feather(t, tmp_path / "u.feather", compression="uncompressed")
    feather.write_feather(t, tmp_path / "z.feather")  # lz4: decompressed into memory
    for name in ("u.feather", "z.feather"):
        c = load_cache(tmp_path / name, groups_column="speaker")
        np.testing.assert_array_equal(c.emb, x)
        assert list(c.ids) == ids and list(c.groups) == groups
    # several record batches (an empty one among them) gather into one array, rows in order
    write_arrow(tmp_path / "b.ipc", t, max_chunksize=3)
    c = load_cache(tmp_path / "b.ipc")
    np.testing.assert_array_equal(c.emb, x)
    assert list(c.ids) == ids
    lists = list_table(x, ids)
    empty = pa.RecordBatch.from_pylist([], schema=lists.schema)
    write_arrow(tmp_path / "e.arrow", pa.Table.from_batches([empty] + lists.to_batches(4)))
    c = load_cache(tmp_path / "e.arrow")
    np.testing.assert_array_equal(c.emb, x)


def save_to_disk_layout(folder, tables):
    """The folder ``datasets.Dataset.save_to_disk`` writes: stream-format shards + state.json."""
    folder.mkdir()
    names = [f"data-{k:05d}-of-{len(tables):05d}.arrow" for k in range(len(tables))]
    for name, t in zip(names, tables):
        write_arrow(folder / name, t, stream=True, max_chunksize=4)
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": n} for n in names], "_fingerprint": "0" * 16,
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
        "_output_all_columns": False, "_split": "train"}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))


def test_datasets_folder_reads_its_shards_in_order(tmp_path):
    x, ids, groups = source(n=11)
    t = fixed_table(x, ids, groups, emb="embeddings", id_="path")
    save_to_disk_layout(tmp_path / "ds", [t.slice(0, 6), t.slice(6)])
    c = load_cache(tmp_path / "ds", embedding_column="embeddings", id_column="path",
                   groups_column="speaker")
    np.testing.assert_array_equal(c.emb, x)
    assert list(c.ids) == ids and list(c.groups) == groups and c.meta["name"] == "ds"
    # one shard of one record batch: a view of the mapped file
    save_to_disk_layout(tmp_path / "one", [fixed_table(x, ids)])
    write_arrow(tmp_path / "one" / "data-00000-of-00001.arrow", fixed_table(x, ids), stream=True)
    c = load_cache(tmp_path / "one")
    np.testing.assert_array_equal(c.emb, x)
    assert not c.emb.flags.owndata and not c.emb.flags.writeable
    # id_column=None numbers the rows
    assert list(load_cache(tmp_path / "one", id_column=None).ids) == [str(i) for i in range(11)]


def test_datasets_folder_errors(tmp_path):
    x, ids, _ = source()
    save_to_disk_layout(tmp_path / "ds", [fixed_table(x, ids)])
    (tmp_path / "ds" / "state.json").write_text(json.dumps(
        {"_data_files": [{"filename": "../evil.arrow"}]}))
    with pytest.raises(CorruptFile, match="_data_files.*inside the folder"):
        load_cache(tmp_path / "ds")
    (tmp_path / "ds" / "state.json").write_text(json.dumps(
        {"_data_files": [{"filename": "data-00009-of-00010.arrow"}]}))
    with pytest.raises(CorruptFile, match="data-00009-of-00010.arrow not found"):
        load_cache(tmp_path / "ds")
    # a DatasetDict folder: the error names a split to load
    dd = tmp_path / "dd"
    dd.mkdir()
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    save_to_disk_layout(dd / "train", [fixed_table(x, ids)])
    with pytest.raises(CorruptFile, match=r"DatasetDict \(splits \['train'\]\).*dd/train"):
        load_cache(dd)
    np.testing.assert_array_equal(load_cache(dd / "train").emb, x)


def test_missing_columns_name_the_column_and_list_the_present_ones(tmp_path):
    x, ids, _ = source()
    t = fixed_table(x, ids, emb="vec")
    pq.write_table(t, tmp_path / "a.parquet")
    write_arrow(tmp_path / "a.arrow", t)
    for f in ("a.parquet", "a.arrow"):
        with pytest.raises(CorruptFile, match=r"no column 'embedding'.*\['vec', 'id'\]"):
            load_cache(tmp_path / f)
        with pytest.raises(CorruptFile, match=r"no column 'speaker'.*\['vec', 'id'\]"):
            load_cache(tmp_path / f, embedding_column="vec", groups_column="speaker")
        with pytest.raises(CorruptFile, match=r"no column 'key'"):
            load_cache(tmp_path / f, embedding_column="vec", id_column="key")
    # wrong column types
    with pytest.raises(CorruptFile, match="column 'id': has type string; expected a fixed"):
        load_cache(tmp_path / "a.parquet", embedding_column="id")
    pq.write_table(pa.table({"embedding": [[1.0], [2.0]], "id": [[1], [2]]}),
                   tmp_path / "b.parquet")
    with pytest.raises(CorruptFile, match="column 'id': has type list"):
        load_cache(tmp_path / "b.parquet")
    pq.write_table(pa.table({"embedding": [["a"], ["b"]], "id": ["x", "y"]}),
                   tmp_path / "c.parquet")
    with pytest.raises(CorruptFile, match="lists of string; expected lists of numbers"):
        load_cache(tmp_path / "c.parquet")


def test_ragged_null_and_nan_rows_are_named(tmp_path):
    rows = [[0.0, 1.0, 2.0]] * 4 + [[1.0, 2.0]] + [[3.0, 4.0, 5.0]]
    pq.write_table(list_table(rows, list("abcdef")), tmp_path / "r.parquet")
    with pytest.raises(InvalidEmbeddings, match="row 4 has 2 values, row 0 has 3"):
        load_cache(tmp_path / "r.parquet")
    # the row is counted across record batches
    write_arrow(tmp_path / "r.arrow", list_table(rows, list("abcdef")), max_chunksize=2)
    with pytest.raises(InvalidEmbeddings, match="r.arrow: column 'embedding': row 4 has 2"):
        load_cache(tmp_path / "r.arrow")
    t = pa.table({"embedding": pa.array([[1.0, 2.0], None, [3.0, 4.0]],
                                        type=pa.list_(pa.float32(), 2)), "id": ["a", "b", "c"]})
    pq.write_table(t, tmp_path / "n.parquet")
    with pytest.raises(InvalidEmbeddings, match="row 1 is null"):
        load_cache(tmp_path / "n.parquet")
    t = pa.table({"embedding": pa.array([[1.0, 2.0], [3.0, None], [3.0, 4.0]],
                                        type=pa.list_(pa.float32(), 2)), "id": ["a", "b", "c"]})
    pq.write_table(t, tmp_path / "v.parquet")
    with pytest.raises(InvalidEmbeddings, match="row 1 holds a null value"):
        load_cache(tmp_path / "v.parquet")
    x, ids, _ = source()
    x[3, 2] = np.nan
    x[5, 0] = np.inf
    write_arrow(tmp_path / "nan.arrow", fixed_table(x, ids))
    with pytest.raises(InvalidEmbeddings, match=r"nan.arrow: column 'embedding'.*rows 3, 5"):
        load_cache(tmp_path / "nan.arrow")
    t = pa.table({"embedding": pa.array([[1.0], [2.0]], type=pa.list_(pa.float32(), 1)),
                  "id": ["a", None]})
    pq.write_table(t, tmp_path / "i.parquet")
    with pytest.raises(CorruptFile, match="column 'id': row 1 is null"):
        load_cache(tmp_path / "i.parquet")
    pq.write_table(fixed_table(x[:0], []), tmp_path / "e.parquet")
    with pytest.raises(EmptyData, match="no rows"):
        load_cache(tmp_path / "e.parquet")


def test_unknown_suffix_and_bad_files_keep_the_old_errors(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(CorruptFile, match=r"unknown cache format '.csv'.*\.parquet, \.arrow"):
        load_cache(tmp_path / "a.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "bad.arrow").write_bytes(b"\x00" * 64)
    for f in ("bad.parquet", "bad.arrow"):
        with pytest.raises(CorruptFile, match="cannot read cache"):
            load_cache(tmp_path / f)
    with pytest.raises(CorruptFile, match="not found"):
        load_cache(tmp_path / "nope.parquet")
    # column names apply to tables only; a folder cache still needs embeddings.npy
    np.save(tmp_path / "a.npy", np.ones((2, 3), np.float32))
    with pytest.raises(InvalidParameter, match="apply to Parquet"):
        load_cache(tmp_path / "a.npy", embedding_column="vec")
    assert load_cache(tmp_path / "a.npy").emb.shape == (2, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorruptFile, match="has no embeddings.npy"):
        load_cache(tmp_path / "empty")
    with pytest.raises(InvalidParameter, match="'id_column': expected a column name"):
        load_cache(tmp_path / "bad.parquet", id_column=3)


class FakeDataset:
    """The part of ``datasets.Dataset`` that load_cache uses, formatted as numpy."""

    def __init__(self, columns):
        self.columns = columns
        self.column_names = list(columns)
        self.formatted = None

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def with_format(self, type=None, columns=None):
        assert type == "numpy"
        out = FakeDataset({k: self.columns[k] for k in columns})
        out.formatted = type
        return out

    def __getitem__(self, key):
        assert self.formatted == "numpy" and isinstance(key, slice)
        out = {}
        for k, v in self.columns.items():
            rows = [np.asarray(r) for r in v[key]]
            same = len({r.shape for r in rows}) == 1
            out[k] = np.stack(rows) if same and rows[0].ndim else (
                np.asarray(rows) if same else np.array(rows, dtype=object))
        return out


def test_in_memory_dataset_through_numpy_format():
    x, ids, groups = source()
    ds = FakeDataset({"embedding": list(x), "id": ids, "speaker": groups, "text": ids})
    c = load_cache(ds, groups_column="speaker", modality="audio")
    np.testing.assert_array_equal(c.emb, x)
    assert list(c.ids) == ids and list(c.groups) == groups
    assert c.meta == {"modality": "audio", "name": "dataset"}
    with pytest.raises(CorruptFile, match=r"no column 'vec'.*\['embedding', 'id', 'speaker'"):
        load_cache(ds, embedding_column="vec")
    ragged = FakeDataset({"embedding": [x[0], x[1], x[2, :3]], "id": ids[:3]})
    with pytest.raises(InvalidEmbeddings, match=r"row 2 has shape \(3,\), row 0 has \(5,\)"):
        load_cache(ragged)
