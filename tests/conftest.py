from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from neardup.cli import index as index_cli

from .imagegen import make_tree, save, textured

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_CALTECH = PROJECT_ROOT.parent / "shared" / "caltech101" / "101_ObjectCategories"


def sigint_as_in_a_terminal() -> None:
    """preexec_fn of a child process a test sends SIGINT: SIGINT at its default, as in a terminal,
    even when the suite itself runs as a background job of a shell, which ignores SIGINT and
    passes that on to every child (Python then installs no KeyboardInterrupt handler, the
    signal is lost, and the child runs on)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finished(process: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """process.communicate(timeout), the process killed if it has not ended by then, so that a
    test fails instead of waiting for ever where the Popen block closes."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise


@pytest.fixture(scope="session")
def caltech_root() -> Path:
    """The real CALTECH-101 images: $NEARDUP_CALTECH101, else ../shared/caltech101/..."""
    root = Path(os.environ.get("NEARDUP_CALTECH101", DEFAULT_CALTECH))
    if not (root / "Faces").is_dir():
        pytest.skip(
            f"CALTECH-101 not found at {root}: set NEARDUP_CALTECH101 to its 101_ObjectCategories"
            " folder to run the tests on real photos"
        )
    return root


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test from inside its own temporary folder, as a user would from a terminal."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def indexed(in_tmp: Path) -> Path:
    """A small dataset, indexed: 6 distinct images plus a resized copy of the first."""
    make_tree(str(in_tmp / "images"), 6)
    first = textured(0)
    save(first.resize((101, 67)), str(in_tmp / "images" / "copy.jpg"), quality=90)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    return in_tmp
