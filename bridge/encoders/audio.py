"""Audio encoders whose weights ship inside a PyPI package, so they run offline.

- :class:`AisfxEncoder`: the ``aisfx`` sound-effects CNN (512-d), with the exact recipe of
  the shared FSDD embeddings (44.1 kHz, peak-normalised, zero-padded to 2.5 s, log-mel,
  blocks of 100 frames with hop 0.5, max over blocks).
- :class:`ResemblyzerEncoder`: the ``resemblyzer`` speaker encoder (256-d),
  ``VoiceEncoder.embed_utterance(preprocess_wav(x))``.

Items are file paths, 1-D float waveforms already at the encoder's sample rate, or
``(waveform, sample_rate)`` tuples (resampled).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from ..errors import CorruptFile, InvalidParameter
from .base import Encoder, import_optional, torch_threads

__all__ = ["AisfxEncoder", "ResemblyzerEncoder", "load_audio"]


def load_audio(item, sr: int, what: str = "audio loading") -> np.ndarray:
    """One mono float32 waveform at ``sr`` Hz from a path, an array or ``(array, sr)``."""
    if isinstance(item, tuple) and len(item) == 2:
        wav, source_sr = item
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim > 1:
            wav = wav.mean(axis=0) if wav.shape[0] < wav.shape[-1] else wav.mean(axis=1)
        if int(source_sr) != int(sr):
            librosa = import_optional("librosa", what, "audio", "librosa")
            wav = librosa.resample(wav, orig_sr=int(source_sr), target_sr=int(sr))
        return np.ascontiguousarray(wav, dtype=np.float32)
    if isinstance(item, (str, os.PathLike)):
        librosa = import_optional("librosa", what, "audio", "librosa")
        if not os.path.exists(item):
            raise CorruptFile(f"audio file not found: {item}")
        try:
            wav, _ = librosa.load(str(item), sr=sr, mono=True)
        except Exception as e:  # soundfile/audioread raise many kinds
            raise CorruptFile(f"cannot read audio file {item}: {e}") from e
        return np.ascontiguousarray(wav, dtype=np.float32)
    wav = np.asarray(item, dtype=np.float32)
    if wav.ndim != 1:
        raise InvalidParameter(
            f"expected a 1-D waveform at {sr} Hz, got shape {wav.shape}; pass (waveform, "
            "sample_rate) tuples or file paths otherwise"
        )
    return wav


class AisfxEncoder(Encoder):
    """The ``aisfx`` sound-effects CNN (X-Sequential-CE, ISMIR 2020), 512-d.

    Only the checkpoint inside the installed ``aisfx`` package is ever loaded (it is a
    pickle, so it is read with ``weights_only=False``); there is no way to point this
    adapter at another file.
    """

    name = "aisfx"
    modality = "audio"
    dim = 512
    extra = "audio"
    requires = (("aisfx", "aisfx"), ("librosa", "librosa"), ("torch", "torch"))
    default_batch_size = 16
    model_id = "aisfx 0.1.2 X-Sequential-CE"

    sample_rate = 44100
    min_seconds = 2.5
    block_frames = 100
    block_hop = 0.5

    def __init__(self, device: str = "cpu", num_threads: int | None = None):
        self._import("librosa")
        inference = self._import("aisfx.inference")
        import torch

        self.device = device
        self.num_threads = num_threads
        path = inference.get_path_modelWeights()  # the package's own file, never a user's
        weights, ds_dict = torch.load(path, map_location="cpu", weights_only=False)
        self.model = inference.load_bestModel(weights, ds_dict, device)
        self._inference = inference

    def spectrogram(self, item) -> np.ndarray:
        """The normalised (frames, 96) log-mel spectrogram the CNN reads."""
        import librosa
        from aisfx.preprocessing import spectrogram_normalize

        y = load_audio(item, self.sample_rate, "the aisfx encoder")
        peak = float(np.max(np.abs(y))) if y.size else 0.0
        if peak > 0:
            y = y / peak
        n = int(self.min_seconds * self.sample_rate)
        if y.shape[0] < n:
            y = np.pad(y, (0, n - y.shape[0]))
        S = librosa.feature.melspectrogram(
            y=y, sr=self.sample_rate, n_mels=96, norm=1.0, fmin=0, fmax=22050, htk=True,
            power=2.0, hop_length=1024, win_length=2048, n_fft=2048,
        )
        return spectrogram_normalize(np.log10(S * 10000 + 1).T, "original")

    def _blocks(self, spec: np.ndarray) -> np.ndarray:
        from aisfx.preprocessing import blocking, compute_hopSize

        hop = compute_hopSize(self.block_frames, self.block_hop, spec)
        return blocking(spec, block_size=self.block_frames, hop_size=hop, drop_partial_block=False)

    def _encode_batch(self, batch) -> np.ndarray:
        import torch

        blocks = [self._blocks(self.spectrogram(item)) for item in batch]
        counts = [b.shape[0] for b in blocks]
        data = torch.as_tensor(np.concatenate(blocks, axis=0), dtype=torch.float32)
        with torch_threads(self.num_threads), torch.no_grad():
            emb = self.model.get_embedding(data.to(self.device)).cpu().numpy()
        out, start = [], 0
        for c in counts:  # max over a clip's blocks
            out.append(emb[start : start + c].max(axis=0))
            start += c
        return np.stack(out)


class ResemblyzerEncoder(Encoder):
    """The ``resemblyzer`` speaker encoder (GE2E LSTM), 256-d utterance embeddings."""

    name = "resemblyzer"
    modality = "audio"
    dim = 256
    extra = "audio"
    requires = (
        ("resemblyzer", "resemblyzer"),
        ("webrtcvad", "webrtcvad-wheels"),
        ("librosa", "librosa"),
        ("torch", "torch"),
    )
    default_batch_size = 32
    model_id = "resemblyzer 0.1.4 VoiceEncoder"
    sample_rate = 16000

    def __init__(self, device: str = "cpu", num_threads: int | None = None):
        self._import("webrtcvad")
        self._import("librosa")
        with warnings.catch_warnings():  # it imports the deprecated scipy.ndimage.morphology
            warnings.simplefilter("ignore", DeprecationWarning)
            resemblyzer = self._import("resemblyzer")
        self._preprocess = resemblyzer.preprocess_wav
        self.num_threads = num_threads
        self.model = resemblyzer.VoiceEncoder(device, verbose=False)

    def _encode_batch(self, batch) -> np.ndarray:
        out = []
        with torch_threads(self.num_threads):
            for item in batch:
                if isinstance(item, (str, os.PathLike)):
                    if not os.path.exists(item):
                        raise CorruptFile(f"audio file not found: {item}")
                    wav = self._preprocess(item)
                elif isinstance(item, tuple) and len(item) == 2:
                    wav = self._preprocess(np.asarray(item[0], dtype=np.float32), source_sr=int(item[1]))
                else:
                    wav = self._preprocess(np.asarray(item, dtype=np.float32))
                out.append(self.model.embed_utterance(wav))
        return np.stack(out)
