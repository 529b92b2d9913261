"""gather.py -> index.py -> search.py on real CALTECH-101 photos, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neardup.sources.dataset import read_manifest

from .conftest import PROJECT_ROOT

# A few whole categories (about 300 photos, grayscale ones among them), linked, never copied.
SUBSET = ("accordion", "brain", "car_side", "dalmatian", "emu", "wild_cat")


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PROJECT_ROOT / script), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def subset(caltech_root: Path, in_tmp: Path) -> Path:
    root = in_tmp / "caltech-subset"
    for category in SUBSET:
        os.makedirs(root / category)
        for photo in sorted((caltech_root / category).iterdir()):
            os.symlink(photo, root / category / photo.name)
    return root


def test_every_copy_of_every_sample_is_found(subset: Path) -> None:
    gathered = run("gather.py", "--source", str(subset), "--output", "images", "--seed", "3", "-q")
    assert gathered.returncode == 0, gathered.stderr
    rows = read_manifest("images/manifest.csv")
    photos = sum(1 for category in SUBSET for _ in (subset / category).iterdir())
    assert len([row for row in rows if row.file.startswith("haystack/")]) == photos
    originals = {row.group: row.file for row in rows if row.role == "original"}
    copies = [row for row in rows if row.role == "copy"]
    assert len(originals) == 17 and len(copies) >= 17

    indexed = run("index.py", "--dataset", "images", "--shelve", "db.shelve", "-q")
    assert indexed.returncode == 0, indexed.stderr
    assert indexed.stderr == ""
    assert f"{photos + len(copies)} images in the store" in indexed.stdout

    queries = [arg for group in sorted(originals) for arg in ("-q", f"images/{originals[group]}")]
    searched = run("search.py", "--shelve", "db.shelve", "--json", *queries)
    assert searched.returncode == 0, searched.stderr
    results = {record["query"]: record for record in json.loads(searched.stdout)}
    for group, original in originals.items():
        found = {match["relpath"]: match["distance"] for match in results[f"images/{original}"]["matches"]}
        assert found[original] == 0
        for copy in (row for row in copies if row.group == group):
            assert copy.file in found, f"{copy.file} ({copy.edit}) not found from {original}"
            assert found[copy.file] <= 4

    # Re-indexing the same folder changes nothing and lists nothing twice.
    again = run("index.py", "--dataset", "images", "--shelve", "db.shelve", "-q")
    assert f"indexed 0, unchanged {photos + len(copies)}, removed 0" in again.stdout

    evaluated = run("search.py", "--shelve", "db.shelve", "--evaluate", "images/manifest.csv",
                    "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    (report,) = json.loads(evaluated.stdout)
    assert report["copies"] == len(copies)
    assert report["thresholds"][4]["recall"]["all"] == 1.0
