"""Errors a user can cause. Each carries a one-line message that the CLI prints as is."""

from __future__ import annotations

import os
import sys


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

    def __reduce__(self) -> tuple[type[ImageError], tuple[str, str]]:
        # Sent back whole from a worker process (pickled): Exception's own pickling passes the
        # one formatted message, which this __init__ cannot take.
        return type(self), (self.path, self.reason)


def install_hint(extra: str) -> str:
    """How to install one of neardup's optional extras (pyproject.toml), the same words in every
    message. Where neardup is installed (a wheel, a checkout installed with pip), the extra's own
    packages and minimum versions, read from the installed metadata: that works with or without
    the checkout at hand. Otherwise (the scripts run from a checkout with requirements.txt
    installed by hand) the checkout's requirements file."""
    import importlib.metadata  # only when a message needs it: importing neardup stays light

    try:
        requirements = importlib.metadata.requires("neardup") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    marker = f'extra == "{extra}"'
    wanted = [requirement.split(";")[0].strip() for requirement in requirements
              if marker in requirement.split(";", 1)[-1]]
    if wanted:
        return "pip install " + " ".join(f"'{requirement}'" for requirement in wanted)
    return f"pip install -r requirements-{extra}.txt (in the neardup checkout)"


def command(script: str) -> str:
    """How a message names one of the three programs (`index.py`): as this process was started.
    Run as a console command of a pip install (neardup-search), the others are named the same
    way (neardup-index); run as a script or with python -m, by their scripts."""
    started = sys.argv[0] if sys.argv and sys.argv[0] else ""
    typed = os.path.basename(started)
    if typed.startswith("neardup-"):
        return "neardup-" + script.removesuffix(".py")
    folder = os.path.dirname(os.path.abspath(started)) if started else ""
    if (os.path.basename(folder) == "cli" and os.path.basename(os.path.dirname(folder)) == "neardup"
            and typed.endswith(".py")):
        # python -m neardup.cli.search: an installed package has no search.py to name.
        return "python -m neardup.cli." + script.removesuffix(".py")
    return script


def looks_unset(path: str) -> bool:
    """An empty path, or blanks where nothing has that name: what an unset shell variable gives
    (-s "$STORE"). SQLite took an empty store path as its temporary database, and an empty
    dataset the current folder; a folder really named " " is still a folder (a review)."""
    return not path.strip() and not (path and os.path.lexists(path))
