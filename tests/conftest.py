from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
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


@pytest.fixture(scope="session", autouse=True)
def temporary_files_kept_with_the_tests(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """TMPDIR inside pytest's own temporary folder for the whole run, for this process and every
    child: a process the tests kill with SIGKILL leaves its multiprocessing folder (pymp-...,
    the fork server's socket) behind, 25 to 50 of them per run, and pytest removes its folders
    of older runs, /tmp's are kept for ever."""
    folder = tmp_path_factory.mktemp("tmp", numbered=False)
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    yield
    if before is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before
    tempfile.tempdir = None


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
