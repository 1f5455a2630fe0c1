"""ImageBind (text, image and audio in one 1024-d space).

The real model comes from Meta's ``imagebind`` package
(``pip install git+https://github.com/facebookresearch/ImageBind``; the ``imagebind`` name
on PyPI is an empty placeholder) and a checkpoint file on disk (``imagebind_huge.pth``).
The checkpoint is read with ``torch.load(weights_only=True)`` (or as ``.safetensors``), so
no code in it is ever run.

The model object and the input transform can also be injected, which is how the tests
run this adapter on a tiny module: ``model`` is any callable taking
``{modality_key: tensor}`` and returning ``{modality_key: (n, d) tensor}`` (ImageBind's
own calling convention, keys ``"text"``, ``"vision"``, ``"audio"``), and ``transform`` is
a callable ``(items, modality_key, device) -> tensor``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ..errors import CorruptFile, InvalidParameter
from .base import MultiModalEncoder, l2_normalize, torch_threads

__all__ = ["ImageBindEncoder", "load_state_dict"]

#: our modality name -> ImageBind's ``ModalityType`` key
MODALITY_KEYS = {"text": "text", "image": "vision", "audio": "audio"}

_IMAGEBIND_PACKAGE = "imagebind (github.com/facebookresearch/ImageBind)"


def load_state_dict(path: str | os.PathLike) -> dict:
    """Tensors of a checkpoint file, never unpickling code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A ``{"model": ...}`` or ``{"state_dict": ...}``
    wrapper is unwrapped.
    """
    import torch

    path = os.fspath(path)
    if not os.path.exists(path):
        raise CorruptFile(f"checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for pickled objects, RuntimeError for junk
        raise CorruptFile(
            f"cannot read checkpoint {path} as plain tensors (weights_only=True): {e}"
        ) from e
    for key in ("model", "state_dict", "module"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise CorruptFile(f"checkpoint {path} holds a {type(state).__name__}, expected a state dict")
    return dict(state)


class ImageBindEncoder(MultiModalEncoder):
    """One side (``"text"``, ``"image"`` or ``"audio"``) of an ImageBind model.

    ``ImageBindEncoder(checkpoint="imagebind_huge.pth", modality="image")`` builds
    ``imagebind_huge`` from the ``imagebind`` package and loads the checkpoint into it;
    ``ImageBindEncoder(model=my_module, transform=my_transform)`` uses injected objects
    (a ``checkpoint`` given with an injected model is loaded into it). Default transforms
    are ImageBind's own ``load_and_transform_{text,vision,audio}_data``.
    """

    name = "imagebind"
    modality = "text"
    modalities = ("text", "image", "audio")
    extra = "imagebind"
    requires = (("imagebind", _IMAGEBIND_PACKAGE), ("torch", "torch"))
    default_batch_size = 16
    model_id = "imagebind_huge"

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        modality: str = "text",
        model=None,
        transform=None,
        device: str = "cpu",
        dim: int | None = None,
        num_threads: int | None = None,
        strict: bool = True,
    ):
        self.modality = self._check_modality(modality)
        self.device = device
        self.num_threads = num_threads
        if model is None:
            builder = self._import("imagebind.models.imagebind_model")
            if checkpoint is None:
                raise InvalidParameter(
                    "ImageBindEncoder needs checkpoint=<path to imagebind_huge.pth>: weights "
                    "are never downloaded by bridge"
                )
            model = builder.imagebind_huge(pretrained=False)
            dim = dim or 1024
        else:
            self.model_id = type(model).__name__
        if checkpoint is not None:
            model.load_state_dict(load_state_dict(checkpoint), strict=strict)
            self.model_id = f"{self.model_id} ({os.path.basename(os.fspath(checkpoint))})"
        self.model = model.to(device).eval() if hasattr(model, "eval") else model
        self.transform = transform
        self.dim = dim

    @property
    def key(self) -> str:
        """ImageBind's name for this side (``"text"``, ``"vision"``, ``"audio"``)."""
        return MODALITY_KEYS[self.modality]

    def preprocess(self, batch):
        """Model input tensor for one batch of raw items."""
        if self.transform is not None:
            return self.transform(list(batch), self.key, self.device)
        data = self._import("imagebind.data")
        items = [os.fspath(x) if isinstance(x, os.PathLike) else x for x in batch]
        if self.modality == "text":
            return data.load_and_transform_text([str(t) for t in items], self.device)
        if self.modality == "image":
            return data.load_and_transform_vision_data(items, self.device)
        return data.load_and_transform_audio_data(items, self.device)

    def encode_inputs(self, inputs) -> np.ndarray:
        """Embed an already transformed input tensor of this side."""
        import torch

        with torch_threads(self.num_threads), torch.inference_mode():
            out = self.model({self.key: inputs.to(self.device) if hasattr(inputs, "to") else inputs})
        if isinstance(out, Mapping):
            out = out[self.key]
        return l2_normalize(out, name=f"{self.name} output")

    def _encode_batch(self, batch) -> np.ndarray:
        return self.encode_inputs(self.preprocess(batch))
