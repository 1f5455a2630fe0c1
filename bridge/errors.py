"""One exception hierarchy for the whole package.

Every error names the bad value and what was expected, so a user can fix the call
without reading the source.
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "UnknownNode",
    "DuplicateNode",
    "DimensionMismatch",
    "InvalidEmbeddings",
    "EmptyData",
    "NoPairs",
    "NotFittedError",
    "CorruptFile",
    "NoRoute",
    "MissingExtra",
    "InvalidParameter",
    "FolderExists",
    "FolderLocked",
    "ExternalReference",
    "SmallSampleWarning",
]


class BridgeError(Exception):
    """Base class of every error raised by ``bridge``."""


class UnknownNode(BridgeError, KeyError):
    """A node name that is not in the graph."""

    def __init__(self, name, known=()):
        known = sorted(known)
        shown = ", ".join(map(repr, known[:20])) + (" ..." if len(known) > 20 else "")
        super().__init__(f"unknown node {name!r}; known nodes: {shown or '(none)'}")
        self.name = name

    def __str__(self):  # KeyError would quote the message
        return self.args[0]


class DuplicateNode(BridgeError, ValueError):
    """A node name that is already in the graph."""


class DimensionMismatch(BridgeError, ValueError):
    """Arrays whose dimension does not match what a node or translator expects."""


class InvalidEmbeddings(BridgeError, ValueError):
    """Embeddings holding NaN or inf values, or of the wrong rank or dtype."""


class EmptyData(BridgeError, ValueError):
    """An array or cache with no rows."""


class NoPairs(BridgeError, ValueError):
    """Two nodes that share no paired rows."""


class NotFittedError(BridgeError, RuntimeError):
    """A translator used before ``fit``."""


class CorruptFile(BridgeError, OSError):
    """A missing, truncated or malformed file."""


class NoRoute(BridgeError):
    """No path joins two nodes of the graph."""


class InvalidParameter(BridgeError, ValueError, TypeError):
    """A hyper-parameter or argument outside its valid range or of the wrong type.

    The message names the parameter, the value given and what was expected. Like
    scikit-learn's ``InvalidParameterError`` it is both a ``ValueError`` and a
    ``TypeError``, so code that caught either before still catches it.
    """


class FolderExists(BridgeError, FileExistsError):
    """A folder that holds something else than what is being written there."""


class FolderLocked(BridgeError):
    """A folder that another process is writing at the same time."""


class ExternalReference(BridgeError, PermissionError):
    """A saved file that refers to a file outside its folder, read only when the caller
    allows it explicitly (``allow_external=True``, CLI ``--allow-external``)."""


class SmallSampleWarning(UserWarning):
    """A figure measured on so few held-out rows that it says little."""


class MissingExtra(BridgeError, ImportError):
    """An optional dependency that is not installed; the message names the extra."""

    def __init__(self, what: str, extra: str, package: str | None = None):
        pkg = f" ({package})" if package else ""
        super().__init__(
            f"{what} needs the optional dependency{pkg}: "
            f"pip install 'modality-bridge[{extra}]'"
        )
        self.extra = extra
