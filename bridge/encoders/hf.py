"""CLIP (text and image) and CLAP (text and audio) through ``transformers``.

Both load a model and its processor from a local folder or a hub name
(``from_pretrained``), or take already-built objects. ``processor`` may be a full
processor, just its tokenizer / image processor / feature extractor, or any callable
``f(raw_items) -> dict of tensors`` for inputs no stock processor handles, and
:meth:`HFDualEncoder.encode_inputs` embeds inputs that are already tokenised or
preprocessed. Output rows are the model's own ``get_*_features``, L2-normalised.

No weights ship on PyPI for these models; the test suite runs the adapters on tiny
randomly initialised models it builds itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ..errors import InvalidParameter
from .audio import load_audio
from .base import MultiModalEncoder, l2_normalize, move_to, torch_threads

__all__ = ["CLIPEncoder", "CLAPEncoder"]


def _features(out):
    """A ``get_*_features`` result as a tensor (transformers 4 returns one; 5 an output)."""
    if hasattr(out, "dim"):
        return out
    for key in ("pooler_output", "text_embeds", "image_embeds", "audio_embeds"):
        value = getattr(out, key, None)
        if value is not None:
            return value
    return out[0]


class HFDualEncoder(MultiModalEncoder):
    """Shared loading and batching of the ``transformers`` dual encoders."""

    extra = "hf"
    requires = (("transformers", "transformers"), ("torch", "torch"))
    model_class = ""
    processor_class = ""
    default_model = ""

    def __init__(
        self,
        model=None,
        modality: str = "text",
        processor=None,
        device: str = "cpu",
        num_threads: int | None = None,
        local_files_only: bool | None = None,
    ):
        transformers = self._import("transformers")
        self.modality = self._check_modality(modality)
        self.device = device
        self.num_threads = num_threads
        model = model if model is not None else self.default_model
        source = None
        if isinstance(model, (str, os.PathLike)):
            source = str(model)
            kw = {} if local_files_only is None else {"local_files_only": local_files_only}
            model = getattr(transformers, self.model_class).from_pretrained(source, **kw)
            if processor is None:
                processor = getattr(transformers, self.processor_class).from_pretrained(source, **kw)
        self.model = model.to(device).eval()
        self.processor = processor
        self.model_id = source or getattr(model.config, "_name_or_path", None) or self.model_class
        self.dim = int(model.config.projection_dim)

    # -- preprocessing ------------------------------------------------------------------

    def _text_max_length(self) -> int | None:
        tok = getattr(self.processor, "tokenizer", self.processor)
        limit = getattr(tok, "model_max_length", None)
        if limit and limit < 100_000:
            return int(limit)
        cfg = self.model.config.text_config
        return int(cfg.max_position_embeddings) - self._position_offset

    _position_offset = 0

    def preprocess(self, batch) -> dict:
        """The model inputs (tensors) for one batch of raw items of this side."""
        if self.processor is None:
            raise InvalidParameter(
                f"{self.name}: no processor; pass processor=... (a transformers processor or "
                "a callable returning model inputs) or use encode_inputs() with tensors"
            )
        if not hasattr(self.processor, "model_input_names"):  # not a transformers object
            return dict(self.processor(list(batch)))  # a user's callable gets raw items
        if self.modality == "text":
            tokenizer = getattr(self.processor, "tokenizer", self.processor)
            return dict(
                tokenizer(
                    [str(t) for t in batch], padding=True, truncation=True,
                    max_length=self._text_max_length(), return_tensors="pt",
                )
            )
        return self._preprocess_media(list(batch))

    def _preprocess_media(self, batch) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- encoding -----------------------------------------------------------------------

    def _features_of(self, inputs: Mapping):
        raise NotImplementedError  # pragma: no cover - abstract

    def encode_inputs(self, inputs: Mapping) -> np.ndarray:
        """Embed inputs already tokenised / preprocessed (a dict of tensors)."""
        import torch

        with torch_threads(self.num_threads), torch.inference_mode():
            feats = _features(self._features_of(move_to(inputs, self.device)))
        return l2_normalize(feats, name=f"{self.name} output")

    def _encode_batch(self, batch) -> np.ndarray:
        return self.encode_inputs(self.preprocess(batch))


class CLIPEncoder(HFDualEncoder):
    """A CLIP model (``CLIPModel``) with its ``CLIPProcessor``; ``modality`` is
    ``"text"`` or ``"image"``. Images are paths, PIL images or HxWx3 uint8 arrays."""

    name = "clip"
    modality = "text"
    modalities = ("text", "image")
    model_class = "CLIPModel"
    processor_class = "CLIPProcessor"
    default_model = "openai/clip-vit-base-patch32"
    default_batch_size = 32

    def _preprocess_media(self, batch) -> dict:
        images = [_load_image(item) for item in batch]
        image_processor = getattr(self.processor, "image_processor", self.processor)
        return dict(image_processor(images=images, return_tensors="pt"))

    def _features_of(self, inputs):
        if self.modality == "text":
            return self.model.get_text_features(**inputs)
        return self.model.get_image_features(**inputs)


def _load_image(item):
    from PIL import Image

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, (str, os.PathLike)):
        from ..errors import CorruptFile

        try:
            with Image.open(item) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise CorruptFile(f"cannot read image {item}: {e}") from e
    arr = np.asarray(item)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


class CLAPEncoder(HFDualEncoder):
    """A CLAP model (``ClapModel``) with its ``ClapProcessor``; ``modality`` is
    ``"text"`` or ``"audio"``. Audio items are paths, 1-D waveforms at the feature
    extractor's sampling rate, or ``(waveform, sample_rate)`` tuples.

    Clips longer than the extractor's ``max_length_s`` are cropped at random by the
    stock CLAP feature extractor ("rand_trunc"/"fusion"), so their embeddings vary from
    run to run; shorter clips are deterministic.
    """

    name = "clap"
    modality = "text"
    modalities = ("text", "audio")
    model_class = "ClapModel"
    processor_class = "ClapProcessor"
    default_model = "laion/clap-htsat-unfused"
    default_batch_size = 16
    _position_offset = 2  # RoBERTa positions start after the padding index

    def _preprocess_media(self, batch) -> dict:
        fe = getattr(self.processor, "feature_extractor", self.processor)
        sr = int(fe.sampling_rate)
        wavs = [load_audio(item, sr, "the clap encoder") for item in batch]
        return dict(fe(wavs, sampling_rate=sr, return_tensors="pt"))

    def _features_of(self, inputs):
        if self.modality == "text":
            return self.model.get_text_features(**inputs)
        return self.model.get_audio_features(**inputs)
