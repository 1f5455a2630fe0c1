"""Translators: the edges of the graph. One estimator contract (see :mod:`.base`)."""

from .base import Translator, load_translator, make_translator, TRANSLATORS
from .linear import LinearTranslator
from .procrustes import ProcrustesTranslator
from .relative import RelativeTranslator
from .mlp import MLPTranslator
from .posthoc import PostHocTranslator
from .identity import IdentityTranslator
from .centred import CentredTranslator
from .auto import AutoTranslator

__all__ = [
    "Translator",
    "LinearTranslator",
    "ProcrustesTranslator",
    "RelativeTranslator",
    "MLPTranslator",
    "PostHocTranslator",
    "IdentityTranslator",
    "CentredTranslator",
    "AutoTranslator",
    "load_translator",
    "make_translator",
    "TRANSLATORS",
]
