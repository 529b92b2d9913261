from __future__ import annotations

import os
from pathlib import Path

import pytest

from neardup.cli import index as index_cli

from .imagegen import make_tree, save, textured

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CALTECH = PROJECT_ROOT.parent / "shared" / "caltech101" / "101_ObjectCategories"


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
