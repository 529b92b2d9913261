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
