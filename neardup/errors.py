"""Errors a user can cause. Each carries a one-line message that the CLI prints as is."""

from __future__ import annotations


class NeardupError(Exception):
    """Base of every error the command-line tools report without a traceback."""


class StoreError(NeardupError):
    """The store cannot be opened, read or written, or was built with another recipe."""


class DatasetError(NeardupError):
    """The source data set cannot be found, downloaded, verified or extracted."""


class ImageError(NeardupError):
    """One image cannot be hashed. Indexing reports it and goes on with the others."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def install_hint(extra: str) -> str:
    """How to install one of neardup's optional extras (pyproject.toml), the same words in every
    message: neardup is installed from its source, not from a package index."""
    return (f"pip install '.[{extra}]' in the neardup checkout (or pip install -r"
            f" requirements-{extra}.txt)")
