"""Exceptions that users of wbc_edge are expected to catch."""

from __future__ import annotations


class WbcEdgeError(Exception):
    """Base class: something the user can fix (a path, an argument, an install)."""


class MissingDependencyError(WbcEdgeError, ImportError):
    """An optional library is needed; the message says how to install it."""

    def __init__(self, what: str, install: str, cause: BaseException | None = None):
        detail = f" ({cause})" if cause else ""
        super().__init__(f"{what} is not available{detail}. Install it with: {install}")
        self.install = install


class ModelMismatchError(WbcEdgeError):
    """A model artifact does not match its metadata, or the machine it is loaded on."""


class MetadataError(WbcEdgeError):
    """Model metadata is missing, unreadable or inconsistent."""


def require(module: str, what: str, install: str):
    """Imports ``module`` or raises MissingDependencyError with the install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(what, install, error) from error
