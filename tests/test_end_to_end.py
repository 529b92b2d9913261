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


# What gather.py says when the archive cannot be downloaded (no network).
NO_NETWORK = ("gather.py: error: cannot download https://example.invalid/caltech-101.zip (Name or"
              " service not known); check the network, or pass --source with a local copy of the"
              " data set (a folder, .zip or .tar.gz)")


def demo_project(root: Path) -> Path:
    """scripts/run-demo.sh in a project of stubs: the running Python stands for the installed
    .venv, and gather.py records its arguments and fails as it does without the network."""
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "run-demo.sh").write_text(
        (PROJECT_ROOT / "scripts" / "run-demo.sh").read_text())
    (root / "scripts" / "setup-venv.sh").write_text(f"PY={sys.executable}\n")
    (root / "gather.py").write_text(
        "import sys\nopen('gathered', 'w').write(repr(sys.argv[1:]))\n"
        f"print({NO_NETWORK!r}, file=sys.stderr)\nsys.exit(2)\n")
    for script in ("index.py", "search.py"):
        (root / script).write_text("raise SystemExit('not to be reached')\n")
    (root / "demo").mkdir()
    (root / "demo" / "db.shelve").write_text("the earlier demo's store")
    return root


def run_demo(project: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("NEARDUP_CALTECH101", "NEARDUP_DEMO_DIR")}
    return subprocess.run(["bash", str(project / "scripts" / "run-demo.sh")], cwd=cwd,
                          env={**environment, **env}, capture_output=True, text=True, timeout=60)


def test_run_demo_without_the_data_says_how_to_name_a_copy(in_tmp: Path) -> None:
    """A review: without ../shared and without the network, run-demo.sh ended on gather.py's
    "pass --source", which run-demo.sh does not take, never naming NEARDUP_CALTECH101; and it
    had deleted the earlier demo's store first."""
    project = demo_project(in_tmp / "neardup")
    ran = run_demo(project, in_tmp)
    assert ran.returncode == 2
    assert eval((project / "gathered").read_text()) == [  # noqa: S307 - the stub's own repr
        "--output", "demo/images", "--seed", "1", "--force"]
    said = ran.stderr.splitlines()
    assert said[-2:] == [NO_NETWORK, "run-demo.sh: to use a copy of CALTECH-101 instead of the"
                         " download, set NEARDUP_CALTECH101 to its 101_ObjectCategories folder"
                         " and run again"], ran.stderr
    assert (project / "demo" / "db.shelve").read_text() == "the earlier demo's store"


def test_run_demo_refuses_a_caltech_variable_that_names_no_folder(in_tmp: Path) -> None:
    """A review: a mistyped NEARDUP_CALTECH101 was taken for "not set": a 130 MB download."""
    project = demo_project(in_tmp / "neardup")
    ran = run_demo(project, in_tmp, NEARDUP_CALTECH101=str(in_tmp / "101_ObjectCategorie"))
    assert (ran.returncode, ran.stdout, ran.stderr) == (2, "", (
        f"run-demo.sh: NEARDUP_CALTECH101: {in_tmp / '101_ObjectCategorie'} is not a folder; set"
        " it to CALTECH-101's 101_ObjectCategories folder, or unset it to download the data"
        " set\n"))
    assert not (project / "gathered").exists()
    assert (project / "demo" / "db.shelve").read_text() == "the earlier demo's store"


def test_run_demo_takes_a_relative_caltech_folder_from_where_it_was_started(in_tmp: Path) -> None:
    """The script works from the project folder: a relative NEARDUP_CALTECH101 is the one seen
    from where it was started, and gather.py's failure on it is gather.py's own line."""
    project = demo_project(in_tmp / "neardup")
    (in_tmp / "photos").mkdir()
    ran = run_demo(project, in_tmp, NEARDUP_CALTECH101="photos")
    assert ran.returncode == 2
    assert eval((project / "gathered").read_text())[-2:] == [  # noqa: S307 - the stub's repr
        "--source", str(in_tmp / "photos")]
    assert ran.stderr.splitlines()[-1] == NO_NETWORK
