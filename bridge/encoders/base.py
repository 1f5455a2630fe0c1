"""The common interface of every encoder adapter, and the helpers they share.

An adapter wraps one pretrained encoder behind :class:`Encoder`: ``name``, ``modality``
(``"text"``, ``"audio"`` or ``"image"``), ``dim`` and ``encode(items) -> (n, dim)`` float32
with L2-normalised rows. Heavy dependencies (torch, transformers, librosa, the model
packages) are imported inside the adapter, never when :mod:`bridge.encoders` is imported;
when one is missing the adapter raises :class:`~bridge.errors.MissingExtra`, naming the
extra to install.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import BridgeError, InvalidEmbeddings, InvalidParameter, MissingExtra

__all__ = ["Encoder", "MultiModalEncoder", "l2_normalize", "module_available"]

MODALITIES = ("text", "audio", "image")


def module_available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken spec
        return False


def import_optional(module: str, what: str, extra: str, package: str | None = None):
    """Import ``module`` or raise :class:`MissingExtra` naming ``extra`` and ``package``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(what, extra=extra, package=package or module.split(".")[0]) from e


def l2_normalize(x, name: str = "encoder output") -> np.ndarray:
    """Rows of ``x`` as float32 with unit L2 norm (all-zero rows stay zero)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InvalidEmbeddings(f"{name}: expected a 2-D array (rows, dim), got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise InvalidEmbeddings(f"{name}: rows {bad[:10].tolist()} hold NaN or inf values")
    from ..retrieval import l2_normalize as unit_rows

    return unit_rows(x, check=False)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with ``torch.set_num_threads(n)``, restoring the old value after.

    On a busy machine, small recurrent or convolutional models can run far slower with
    several intra-op threads than with one; adapters expose this as ``num_threads``.
    """
    if not n:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def as_item_list(items) -> Sequence:
    """Validate the ``items`` argument of :meth:`Encoder.encode` and return a sequence."""
    if isinstance(items, (str, bytes, os.PathLike)):
        raise TypeError(
            f"encode() takes a list of items, got a single {type(items).__name__} "
            f"({str(items)[:40]!r}); wrap it in a list: encode([item])"
        )
    if isinstance(items, np.ndarray):
        return items
    if isinstance(items, Sequence):
        return items
    return list(items)


class Encoder:
    """Base class of the encoder adapters.

    Subclasses set the class attributes, load their model in ``__init__`` and implement
    :meth:`_encode_batch`, which returns an ``(len(batch), dim)`` array (not necessarily
    normalised). :meth:`encode` batches, shows progress and normalises.
    """

    #: short registry name of the encoder (``"e5"``, ``"clip"``...)
    name: str = "encoder"
    #: ``"text"``, ``"audio"`` or ``"image"``
    modality: str = "text"
    #: embedding dimension (``None`` until known for injected models)
    dim: int | None = None
    #: the ``modality-bridge[...]`` extra that installs the dependencies
    extra: str | None = None
    #: ``(import name, pip package)`` for every optional dependency
    requires: tuple[tuple[str, str], ...] = ()
    #: items per forward pass when ``encode`` gets no ``batch_size``
    default_batch_size: int = 32
    #: a human-readable model id stored in cache metadata
    model_id: str | None = None

    # -- availability -------------------------------------------------------------------

    @classmethod
    def available(cls) -> bool:
        """Whether every optional dependency of this adapter is installed."""
        return all(module_available(mod) for mod, _ in cls.requires)

    @classmethod
    def _import(cls, module: str):
        """Import one of the adapter's dependencies, or raise :class:`MissingExtra`."""
        package = dict(cls.requires).get(module.split(".")[0], module.split(".")[0])
        return import_optional(module, f"the {cls.name} encoder", cls.extra or cls.name, package)

    # -- encoding -----------------------------------------------------------------------

    def encode(self, items, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Embed ``items`` (strings for text; file paths or arrays for audio and images).

        Returns an ``(len(items), dim)`` float32 array whose rows have unit L2 norm.
        """
        items = as_item_list(items)
        n = len(items)
        bs = self.default_batch_size if batch_size is None else int(batch_size)
        if bs < 1:
            raise InvalidParameter(f"batch_size must be a positive integer, got {batch_size}")
        if n == 0:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc=f"{self.name} ({self.modality})", unit=self.modality)
        out = []
        try:
            for start in range(0, n, bs):
                batch = items[start : start + bs]
                emb = l2_normalize(self._encode_batch(batch), name=f"{self.name} output")
                if emb.shape[0] != len(batch):
                    raise BridgeError(
                        f"{self.name} returned {emb.shape[0]} rows for a batch of {len(batch)}"
                    )
                out.append(emb)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        x = np.concatenate(out, axis=0)
        if self.dim is None:
            self.dim = int(x.shape[1])
        elif x.shape[1] != self.dim:
            raise BridgeError(f"{self.name} returned dimension {x.shape[1]}, expected {self.dim}")
        return x

    def _encode_batch(self, batch) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        """Metadata that :func:`~bridge.encoders.build.build_cache` writes into a cache."""
        d = {"encoder": self.name, "modality": self.modality, "dim": self.dim}
        if self.model_id:
            d["model"] = self.model_id
        return d

    def __repr__(self) -> str:
        model = f", model={self.model_id!r}" if self.model_id else ""
        return f"{type(self).__name__}(modality={self.modality!r}, dim={self.dim}{model})"


class MultiModalEncoder(Encoder):
    """An encoder with several sides (text and image, text and audio) in one space.

    One loaded model serves every side: :meth:`with_modality` returns a view on the same
    model that encodes another modality.
    """

    modalities: tuple[str, ...] = ("text",)

    def _check_modality(self, modality: str) -> str:
        if modality not in self.modalities:
            raise InvalidParameter(
                f"{self.name} has no {modality!r} side; choose one of {list(self.modalities)}"
            )
        return modality

    def with_modality(self, modality: str) -> "MultiModalEncoder":
        """The same model, encoding ``modality`` instead."""
        other = copy.copy(self)
        other.modality = self._check_modality(modality)
        return other


def move_to(inputs: Mapping, device) -> dict:
    """Tensors of a processor's output moved to ``device`` (other values kept)."""
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in dict(inputs).items()}
