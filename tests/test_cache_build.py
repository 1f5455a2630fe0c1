"""`bridge cache build`: groups, sampling, encoder options, manifests and Ctrl-C resume."""

import hashlib

import numpy as np
import pytest

import bridge.encoders as encoders
from bridge.cli import main
from conftest import run_cli
from bridge.encoders import Encoder
from bridge.encoders.build import BuildInterrupted, build_cache, groups_from_pattern, sample_rows
from bridge.errors import InvalidParameter
from bridge.store import load_cache, split_groups

SPEAKERS = ("jackson", "theo", "nicolas")


def _row(s: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little")
    v = np.random.default_rng(seed).normal(size=dim)
    return v / np.linalg.norm(v)


class FakeText(Encoder):
    """Hash embeddings of strings; records its constructor arguments and encode calls;
    raises KeyboardInterrupt on call number ``interrupt_on`` (class-wide)."""

    name = "fake-text"
    modality = "text"
    dim = 5
    built: list = []
    calls: list = []
    interrupt_on: int | None = None

    def __init__(self, model=None, device="cpu"):
        type(self).built.append({"model": model, "device": device})

    def encode(self, items, batch_size=None, progress=False):
        type(self).calls.append((list(items), batch_size))
        if len(type(self).calls) == type(self).interrupt_on:
            raise KeyboardInterrupt
        return super().encode(items, batch_size=batch_size, progress=progress)

    def _encode_batch(self, batch):
        return np.stack([_row(str(s).rsplit("/", 1)[-1], self.dim) for s in batch])


class FakeAudio(FakeText):
    name = "fake-audio"
    modality = "audio"


class FakeNoOptions(FakeText):
    name = "fake-plain"

    def __init__(self):
        type(self).built.append({})


@pytest.fixture(autouse=True)
def fakes(monkeypatch):
    for cls in (FakeText, FakeAudio, FakeNoOptions):
        monkeypatch.setitem(encoders._REGISTRY, cls.name, cls)
    FakeText.built, FakeText.calls, FakeText.interrupt_on = [], [], None
    yield


run = run_cli


def one_line_error(rc, err, *fragments):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bridge: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture
def clips(tmp_path):
    """An FSDD-like folder: digit_speaker_take.wav, 3 speakers x 2 digits x 2 takes."""
    d = tmp_path / "recordings"
    d.mkdir()
    for digit in (0, 1):
        for sp in SPEAKERS:
            for take in (0, 1):
                (d / f"{digit}_{sp}_{take}.wav").write_bytes(b"")
    return d


@pytest.fixture
def lines(tmp_path):
    p = tmp_path / "lines.txt"
    p.write_text("".join(f"line {i}\n" for i in range(10)))
    return p


# ---------------------------------------------------------------------------
# groups


def test_groups_pattern_gives_the_speaker_of_each_clip(clips, tmp_path, capsys):
    out = tmp_path / "fsdd.cache"
    rc, stdout, err = run(["cache", "build", "--encoder", "fake-audio", "--audio-dir", clips,
                           "--groups-pattern", r"_(\w+)_\d+$", "--out", out], capsys)
    assert rc == 0, err
    c = load_cache(out)
    assert list(c.ids) == sorted(f"{d}_{s}_{t}" for d in (0, 1) for s in SPEAKERS for t in (0, 1))
    assert list(c.groups) == [i.split("_")[1] for i in c.ids]
    # rows of one speaker stay in one split
    parts = split_groups(c.groups, seed=0)
    for rows in parts.values():
        for sp in set(c.groups[rows]):
            assert set(np.flatnonzero(c.groups == sp)) <= set(rows)
    np.testing.assert_allclose(c.emb[0], _row("0_jackson_0.wav", 5), atol=1e-3)
    assert f"wrote {out}: 12 rows, dim 5" in stdout


def test_groups_pattern_errors_name_the_id_or_the_pattern(clips, tmp_path, capsys):
    (clips / "noise.wav").write_bytes(b"")
    out = tmp_path / "o"
    rc, _, err = run(["cache", "build", "--encoder", "fake-audio", "--audio-dir", clips,
                      "--groups-pattern", r"_(\w+)_\d+$", "--out", out], capsys)
    one_line_error(rc, err, "--groups-pattern", "does not match the id 'noise'")
    rc, _, err = run(["cache", "build", "--encoder", "fake-audio", "--audio-dir", clips,
                      "--groups-pattern", r"_\w+_\d+$", "--out", out], capsys)
    one_line_error(rc, err, "0 capture groups", "exactly one")
    rc, _, err = run(["cache", "build", "--encoder", "fake-audio", "--audio-dir", clips,
                      "--groups-pattern", "(", "--out", out], capsys)
    one_line_error(rc, err, "not a valid regular expression")
    assert not out.exists() and FakeText.calls == []


def test_groups_from_pattern_reference():
    assert groups_from_pattern(["3_jackson_12", "0_theo_1"], r"_(\w+)_\d+$") == ["jackson", "theo"]
    with pytest.raises(InvalidParameter, match="'x_y'"):
        groups_from_pattern(["3_jackson_12", "x_y"], r"_(\w+)_\d+$")


def test_groups_column_from_csv(tmp_path, capsys):
    csv = tmp_path / "items.csv"
    csv.write_text("id,text,speaker\na,one,s1\nb,two,s2\nc,three,s1\n")
    out = tmp_path / "c"
    rc, _, err = run(["cache", "build", "--encoder", "fake-text", "--csv", csv, "--id-column", "id",
                      "--item-column", "text", "--groups", "speaker", "--out", out], capsys)
    assert rc == 0, err
    c = load_cache(out)
    assert list(c.ids) == ["a", "b", "c"] and list(c.groups) == ["s1", "s2", "s1"]
    np.testing.assert_allclose(c.emb[2], _row("three", 5), atol=1e-3)
    rc, _, err = run(["cache", "build", "--encoder", "fake-text", "--csv", csv, "--id-column", "id",
                      "--item-column", "text", "--groups", "nope", "--out", tmp_path / "d"], capsys)
    one_line_error(rc, err, "no column 'nope'")
    rc, _, err = run(["cache", "build", "--encoder", "fake-text", "--text", csv, "--groups", "speaker",
                      "--out", tmp_path / "d"], capsys)
    one_line_error(rc, err, "--groups names a CSV column and needs --csv")


# ---------------------------------------------------------------------------
# sampling


def test_sample_rows_reference():
    np.testing.assert_array_equal(sample_rows(10, 3, how="even"), [0, 3, 6])
    np.testing.assert_array_equal(sample_rows(10, 4, seed=7),
                                  np.sort(np.random.default_rng(7).choice(10, 4, replace=False)))
    np.testing.assert_array_equal(sample_rows(3, 5), [0, 1, 2])
    with pytest.raises(InvalidParameter, match="'how'"):
        sample_rows(10, 3, how="first")


def test_sample_spreads_across_the_sorted_input(clips, lines, tmp_path, capsys):
    out = tmp_path / "even"
    assert run(["cache", "build", "--encoder", "fake-text", "--text", lines, "--sample", "3",
                "--sample-mode", "even", "--out", out], capsys)[0] == 0
    c = load_cache(out)
    assert list(c.ids) == ["0", "3", "6"]
    np.testing.assert_allclose(c.emb[1], _row("line 3", 5), atol=1e-3)

    want = np.sort(np.random.default_rng(5).choice(12, 4, replace=False))
    files = sorted(p.stem for p in clips.iterdir())
    for name in ("r1", "r2"):  # the same seed gives the same rows
        rc, _, err = run(["cache", "build", "--encoder", "fake-audio", "--audio-dir", clips,
                          "--sample", "4", "--seed", "5", "--groups-pattern", r"_(\w+)_\d+$",
                          "--out", tmp_path / name], capsys)
        assert rc == 0, err
        c = load_cache(tmp_path / name)
        assert list(c.ids) == [files[i] for i in want]
        assert list(c.groups) == [files[i].split("_")[1] for i in want]
    rc, _, err = run(["cache", "build", "--encoder", "fake-text", "--text", lines, "--sample", "3",
                      "--limit", "3", "--out", tmp_path / "x"], capsys)
    one_line_error(rc, err, "--limit", "--sample")
    rc, _, err = run(["cache", "build", "--encoder", "fake-text", "--text", lines, "--sample", "0",
                      "--out", tmp_path / "x"], capsys)
    assert rc == 2 and "--sample" in err


# ---------------------------------------------------------------------------
# encoder options


def test_model_device_and_batch_size_reach_the_encoder(lines, tmp_path, capsys):
    rc, _, err = run(["cache", "build", "--encoder", "fake-text", "--text", lines, "--model",
                      "models/mini", "--device", "meta", "--batch-size", "4", "--chunk-size", "6",
                      "--out", tmp_path / "c"], capsys)
    assert rc == 0, err
    assert FakeText.built == [{"model": "models/mini", "device": "meta"}]
    assert [(len(items), bs) for items, bs in FakeText.calls] == [(6, 4), (4, 4)]


@pytest.mark.parametrize("argv, fragments", [
    (["--encoder", "fake-plain", "--model", "m"], ("encoder 'fake-plain' does not take --model",
                                                   "neither --model nor --device")),
    (["--encoder", "fake-plain", "--device", "cuda"], ("does not take --device",)),
    (["--encoder", "e5", "--model", "m"], ("encoder 'e5' does not take --model",)),
    (["--encoder", "sentence-transformers"], ("encoder 'sentence-transformers' needs --model",)),
])
def test_encoder_options_refused_by_name(lines, tmp_path, argv, fragments, capsys):
    rc, _, err = run(["cache", "build", "--text", lines, "--out", tmp_path / "o", *argv], capsys)
    one_line_error(rc, err, *fragments)
    assert not (tmp_path / "o").exists()


def test_batch_size_is_validated(lines, tmp_path, capsys):
    rc, _, err = run(["cache", "build", "--encoder", "fake-text", "--text", lines, "--batch-size",
                      "0", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "--batch-size" in err and FakeText.built == []


def test_missing_encoder_or_input(lines, tmp_path, capsys):
    one_line_error(*run(["cache", "build", "--text", lines, "--out", tmp_path / "o"], capsys)[::2],
                   "--encoder is required")
    one_line_error(*run(["cache", "build", "--encoder", "fake-text", "--out", tmp_path / "o"],
                        capsys)[::2], "one of --text, --audio-dir, --image-dir, --csv or --manifest")


# ---------------------------------------------------------------------------
# manifests


def test_manifest_builds_every_cache(clips, lines, tmp_path, capsys):
    m = tmp_path / "inputs.toml"
    m.write_text(f"""
[[cache]]
encoder = "fake-text"
text = "{lines}"
out = "{tmp_path / 'words'}"
sample = 4
sample-mode = "even"
batch_size = 2
meta = {{ language = "en" }}

[[cache]]
encoder = "fake-audio"
audio-dir = "{clips}"
groups-pattern = '_(\\w+)_\\d+$'
out = "{tmp_path / 'clips'}"
""")
    rc, stdout, err = run(["cache", "build", "--manifest", m], capsys)
    assert rc == 0, err
    w, c = load_cache(tmp_path / "words"), load_cache(tmp_path / "clips")
    assert list(w.ids) == ["0", "2", "5", "7"] and w.meta["language"] == "en"
    assert len(c) == 12 and set(c.groups) == set(SPEAKERS)
    assert FakeText.calls[0][1] == 2
    assert stdout.count("wrote ") == 2


@pytest.mark.parametrize("table, fragments", [
    ('encoder = "fake-text"\ntext = "{root}/missing.txt"\nout = "{root}/b"', ("#2", "missing.txt")),
    ('encoder = "fake-text"\ntext = "{lines}"\nout = "{root}/b"\ncolour = 1', ("#2", "unknown key 'colour'")),
    ('encoder = "fake-text"\ntext = "{lines}"\nout = "{root}/b"\nsample = 0', ("#2", "sample")),
    ('encoder = "fake-text"\ntext = "{lines}"\nout = "{root}/a"', ("#2", "also the out of [[cache]] #1")),
    ('encoder = "fake-text"\ntext = "{lines}"\ncsv = "{lines}"\nout = "{root}/b"', ("#2", "one input")),
    ('encoder = "fake-plain"\ntext = "{lines}"\nout = "{root}/b"\nmodel = "m"', ("#2", "does not take --model")),
])
def test_manifest_is_checked_before_any_encoding(lines, tmp_path, table, fragments, capsys):
    m = tmp_path / "inputs.toml"
    good = f'[[cache]]\nencoder = "fake-text"\ntext = "{lines}"\nout = "{tmp_path / "a"}"\n'
    m.write_text(good + "\n[[cache]]\n" + table.format(root=tmp_path, lines=lines) + "\n")
    rc, _, err = run(["cache", "build", "--manifest", m], capsys)
    one_line_error(rc, err, "--manifest [[cache]]", *fragments)
    assert FakeText.calls == [] and not (tmp_path / "a").exists()


def test_manifest_paths_are_relative_to_its_folder(tmp_path, capsys):
    d = tmp_path / "project"
    d.mkdir()
    (d / "words.txt").write_text("un\ndeux\n")
    (d / "inputs.toml").write_text('[[cache]]\nencoder = "fake-text"\ntext = "words.txt"\n'
                                   'out = "caches/words"\n')
    rc, _, err = run(["cache", "build", "--manifest", d / "inputs.toml"], capsys)
    assert rc == 0, err
    c = load_cache(d / "caches" / "words")
    np.testing.assert_allclose(c.emb[1], _row("deux", 5), atol=1e-3)


def test_manifest_refuses_options_on_the_command_line(lines, tmp_path, capsys):
    m = tmp_path / "inputs.toml"
    m.write_text(f'[[cache]]\nencoder = "fake-text"\ntext = "{lines}"\nout = "{tmp_path / "a"}"\n')
    one_line_error(*run(["cache", "build", "--manifest", m, "--encoder", "e5"], capsys)[::2],
                   "put --encoder in the [[cache]] tables")
    m.write_text("[other]\nx = 1\n")
    one_line_error(*run(["cache", "build", "--manifest", m], capsys)[::2], "unknown top-level keys")
    m.write_text("[[cache]\n")
    one_line_error(*run(["cache", "build", "--manifest", m], capsys)[::2], "not valid TOML")


# ---------------------------------------------------------------------------
# Ctrl-C


def test_ctrl_c_stops_with_one_line_and_resumes(lines, tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["cache", "build", "--encoder", "fake-text", "--text", lines, "--chunk-size", "4",
            "--out", out]
    FakeText.interrupt_on = 2
    rc, _, err = run(argv, capsys)
    assert rc == 130
    # the progress bar's lines, then the one line that says what happened
    assert "Traceback" not in err
    assert [ln for ln in err.strip().splitlines() if ln.startswith("bridge:")] == [
        "bridge: interrupted after 4 of 10 rows; run the same command to resume"]
    assert err.strip().splitlines()[-1].startswith("bridge: interrupted")
    assert sorted(p.name for p in (out / "parts").glob("part-*.npy")) == ["part-000000.npy"]
    assert not (out / "embeddings.npy").exists()

    FakeText.calls, FakeText.interrupt_on = [], None
    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    assert [items for items, _ in FakeText.calls] == [[f"line {i}" for i in range(4, 8)],
                                                      ["line 8", "line 9"]]
    c = load_cache(out)
    assert list(c.ids) == [str(i) for i in range(10)] and not (out / "parts").exists()
    np.testing.assert_allclose(np.asarray(c.emb, dtype=np.float32),
                               np.stack([_row(f"line {i}", 5) for i in range(10)]), atol=1e-3)


def test_build_cache_raises_build_interrupted(tmp_path):
    FakeText.interrupt_on = 3
    items = [f"s{i}" for i in range(7)]
    with pytest.raises(BuildInterrupted) as e:
        build_cache(FakeText(), items, items, tmp_path / "c", chunk_size=2, progress=False)
    assert (e.value.rows_done, e.value.rows_total) == (4, 7)
    assert isinstance(e.value, KeyboardInterrupt)
    assert str(e.value) == "interrupted after 4 of 7 rows; run the same command to resume"
