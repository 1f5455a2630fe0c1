"""Translators: the edges of the graph. One estimator contract (see :mod:`.base`)."""

from .base import Translator, load_translator, make_translator, TRANSLATORS
from .linear import LinearTranslator
from .procrustes import ProcrustesTranslator
from .relative import RelativeTranslator
from .mlp import MLPTranslator

__all__ = [
    "Translator",
    "LinearTranslator",
    "ProcrustesTranslator",
    "RelativeTranslator",
    "MLPTranslator",
    "load_translator",
    "make_translator",
    "TRANSLATORS",
]
