"""Optional encoder adapters: raw text, audio or images in, normalised embeddings out.

>>> from bridge.encoders import get_encoder, available_encoders
>>> available_encoders()                       # {'e5': True, 'clip': False, ...}
>>> enc = get_encoder("e5")                     # multilingual-e5-small, "query: " prefix
>>> x = enc.encode(["Ein Hund läuft."])         # (1, 384) float32, unit rows
>>> clip_img = get_encoder("clip", model="path/to/clip", modality="image")
>>> clip_txt = clip_img.with_modality("text")   # the same loaded model, other side

Every adapter imports its heavy dependencies (torch, transformers, librosa, the model
package) only when it is built; importing this package imports none of them. A missing
dependency raises :class:`~bridge.errors.MissingExtra` naming the extra to install:
``e5``, ``minilm``, ``audio`` (aisfx, resemblyzer), ``hf`` (clip, clap), ``imagebind``.

To encode a large input set into a cache, resumably: :func:`bridge.encoders.build.build_cache`.
"""

from __future__ import annotations

import importlib

from ..errors import BridgeError, InvalidParameter
from .base import Encoder, MultiModalEncoder, l2_normalize, module_available

__all__ = [
    "Encoder",
    "MultiModalEncoder",
    "UnknownEncoder",
    "get_encoder",
    "available_encoders",
    "encoder_class",
    "register_encoder",
    "l2_normalize",
    "module_available",
    "build_cache",
]


class UnknownEncoder(BridgeError, ValueError):
    """An encoder name that is not registered."""


#: name -> "module:Class" (modules are imported on first use)
_REGISTRY: dict[str, str | type] = {
    "e5": "bridge.encoders.text:E5Encoder",
    "minilm": "bridge.encoders.text:MiniLMEncoder",
    "sentence-transformers": "bridge.encoders.text:SentenceTransformerEncoder",
    "aisfx": "bridge.encoders.audio:AisfxEncoder",
    "resemblyzer": "bridge.encoders.audio:ResemblyzerEncoder",
    "clip": "bridge.encoders.hf:CLIPEncoder",
    "clap": "bridge.encoders.hf:CLAPEncoder",
    "imagebind": "bridge.encoders.imagebind:ImageBindEncoder",
}


def register_encoder(name: str, cls: type | str, overwrite: bool = False) -> None:
    """Make ``get_encoder(name)`` build ``cls`` (an :class:`Encoder` subclass or a
    ``"module:Class"`` string)."""
    if name in _REGISTRY and not overwrite:
        raise InvalidParameter(f"encoder {name!r} is already registered; pass overwrite=True")
    _REGISTRY[name] = cls


def encoder_class(name: str) -> type:
    """The adapter class registered as ``name``."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UnknownEncoder(
            f"unknown encoder {name!r}; registered encoders: {sorted(_REGISTRY)}"
        ) from None
    if isinstance(target, str):
        module, _, cls = target.partition(":")
        target = getattr(importlib.import_module(module), cls)
    return target


def get_encoder(name: str, **kwargs) -> Encoder:
    """Build the encoder registered as ``name``; ``kwargs`` go to its constructor.

    Raises :class:`UnknownEncoder` for an unregistered name and
    :class:`~bridge.errors.MissingExtra` when its dependencies are not installed.
    """
    return encoder_class(name)(**kwargs)


def available_encoders() -> dict[str, bool]:
    """Every registered encoder name, mapped to whether its dependencies are installed
    (checked without importing them)."""
    return {name: encoder_class(name).available() for name in sorted(_REGISTRY)}


def __getattr__(name):  # lazy: build_cache pulls in nothing heavy, but keep imports minimal
    if name == "build_cache":
        from .build import build_cache

        return build_cache
    if name in ("E5Encoder", "MiniLMEncoder", "SentenceTransformerEncoder"):
        return getattr(importlib.import_module(".text", __name__), name)
    if name in ("AisfxEncoder", "ResemblyzerEncoder"):
        return getattr(importlib.import_module(".audio", __name__), name)
    if name in ("CLIPEncoder", "CLAPEncoder"):
        return getattr(importlib.import_module(".hf", __name__), name)
    if name == "ImageBindEncoder":
        return getattr(importlib.import_module(".imagebind", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
