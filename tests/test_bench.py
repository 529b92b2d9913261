"""The benchmark scripts measure the whole dataset they are given, or stop and say why."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from neardup.sources.dataset import MANIFEST_COLUMNS

from .conftest import PROJECT_ROOT
from .imagegen import textured

BENCH = PROJECT_ROOT / "bench"


def load_bench(name: str) -> ModuleType:
    """bench/<name>.py as a module (it imports bench/_setup.py beside it)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def gathered_with_a_broken_photo(root: Path) -> None:
    """A gather.py output in small: three photos in haystack/, one copy, and a .jpg in haystack/
    that is no image (index.py fails it, and still exits 0: the store holds the others)."""
    for number, name in enumerate(("A", "B", "C")):
        (root / "haystack").mkdir(parents=True, exist_ok=True)
        textured(40 + number, (160, 120)).save(root / "haystack" / f"{name}.png")
    (root / "copies").mkdir()
    textured(40, (160, 120)).save(root / "copies" / "A_same.png")
    (root / "haystack" / "broken.jpg").write_bytes(b"not a picture at all" * 50)
    with open(root / "manifest.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows([
            ("haystack/A.png", "original", "g1", "src/A.png", ""),
            ("haystack/B.png", "", "", "src/B.png", ""),
            ("haystack/C.png", "", "", "src/C.png", ""),
            ("haystack/broken.jpg", "", "", "src/broken.jpg", ""),
            ("copies/A_same.png", "copy", "g1", "haystack/A.png", "resize factor=1"),
        ])


def test_upload_direction_stops_when_index_py_fails_a_file(in_tmp: Path) -> None:
    pytest.importorskip("cv2")  # the bench indexes with --features
    gathered_with_a_broken_photo(Path("data"))
    done = subprocess.run([sys.executable, str(BENCH / "upload_direction.py"), "--dataset", "data",
                           "--workdir", "work"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
    assert done.returncode == 1
    assert "| all |" not in done.stdout  # no recall measured on a part of the haystack
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("upload_direction.py: index.py did not index every image (exit 0;")
    assert "failed 1, skipped 0" in line and "data/haystack/broken.jpg" in line

    # The file taken away, the same --workdir: its stores are brought up to date and measured.
    Path("data/haystack/broken.jpg").unlink()
    done = subprocess.run([sys.executable, str(BENCH / "upload_direction.py"), "--dataset", "data",
                           "--workdir", "work"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
    assert done.returncode == 0, done.stderr
    assert "| all | 100.0% | 100.0% |" in done.stdout


def test_a_bench_indexing_in_process_stops_when_a_file_fails(in_tmp: Path) -> None:
    gathered_with_a_broken_photo(Path("data"))
    search_speed = load_bench("search_speed")
    with pytest.raises(SystemExit) as stopped:
        search_speed.caltech_hashes("data")
    message = str(stopped.value.code)
    assert message.startswith("search_speed.py: data was not indexed whole (indexed 4,")
    assert "failed 1" in message and "haystack/broken.jpg" in message


def test_gray_copies_says_which_dataset_is_missing(in_tmp: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH / "gray_copies.py"), "--dataset", "absent"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "gray_copies.py: absent: no such folder (set NEARDUP_CALTECH101)\n"


@pytest.mark.skipif(not (PROJECT_ROOT / ".git").exists(), reason="needs the project's git clone")
def test_index_commits_times_each_commit_and_names_one_it_cannot_check_out(in_tmp: Path) -> None:
    for number in range(6):
        (in_tmp / "photos").mkdir(exist_ok=True)
        textured(60 + number, (160, 120)).save(in_tmp / "photos" / f"{number}.png")
    command = [sys.executable, str(BENCH / "index_commits.py"), "--dataset", "photos",
               "--rounds", "2", "-j", "1"]
    done = subprocess.run([*command, "HEAD", "HEAD~1"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].startswith("index.py -j 1 on 6 images, 2 rounds")
    assert rows[1].split()[0] == "HEAD" and "x1.000 speed" in rows[1]
    assert rows[2].split()[0] == "HEAD~1"
    refused = subprocess.run([*command, "HEAD", "no-such-commit"], capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 1
    assert refused.stderr.startswith("index_commits.py: no-such-commit: cannot check it out:")
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    # No worktree is left behind in either case.
    listed = subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "list"],
                            capture_output=True, text=True, check=True).stdout
    assert "index-commits-" not in listed


def test_lossless_copies_compares_each_jpeg_with_a_png_of_its_pixels(in_tmp: Path) -> None:
    # Two JPEGs from the first reduced scale up and one below it (left out): plain ImageHash puts
    # a lossless copy at 0 bits, every time, and each row counts the two pairs.
    Path("data").mkdir()
    for name, size in (("a", (220, 160)), ("b", (300, 200)), ("small", (120, 100))):
        textured(50 + len(name), size).save(f"data/{name}.jpg", quality=90)
    done = subprocess.run([sys.executable, str(BENCH / "lossless_copies.py"), "--dataset", "data"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2 JPEGs of 144 pixels or more on their shorter side from data")
    rows = {line.split(" | ")[0].strip("| "): line for line in done.stdout.splitlines()
            if line.startswith("| ") and "%" in line}
    assert set(rows) == {"--exact (plain ImageHash)", "v6", "v6, as search.py counts", "default",
                         "default, as search.py counts"}
    assert rows["--exact (plain ImageHash)"].count("100.0% (2)") == 5
    for line in rows.values():
        assert line.split(" | ")[-2] == "100.0% (2)"  # within 4 bits, every recipe


def test_copies_as_queries_counts_each_copy_against_its_original(in_tmp: Path) -> None:
    # A gather.py folder in small: one original, a byte copy (0 bits under every hash) and a copy
    # of another picture (far under every hash): within 4 bits, one of the two copies each time.
    root = Path("data")
    (root / "haystack").mkdir(parents=True)
    (root / "copies").mkdir()
    textured(60, (220, 160)).save(root / "haystack" / "A.jpg", quality=90)
    (root / "copies" / "A_same.jpg").write_bytes((root / "haystack" / "A.jpg").read_bytes())
    textured(61, (220, 160)).save(root / "copies" / "A_other.jpg", quality=90)
    with open(root / "manifest.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows([("haystack/A.jpg", "original", "g1", "src/A.jpg", ""),
                          ("copies/A_same.jpg", "copy", "g1", "haystack/A.jpg", "jpeg"),
                          ("copies/A_other.jpg", "copy", "g1", "haystack/A.jpg", "jpeg")])
    done = subprocess.run([sys.executable, str(BENCH / "copies_as_queries.py"), "data"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("data: 2 copies as queries")
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row[0].strip("| ") for row in rows] == ["default", "v6", "--exact (plain ImageHash)"]
    for row in rows:
        assert row[1] == "1" and row[5] == "1"  # at 0 and within 4 bits: the byte copy alone
    missing = subprocess.run([sys.executable, str(BENCH / "copies_as_queries.py"), "absent"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr == ("copies_as_queries.py: absent: no manifest.csv"
                              " (run gather.py first)\n")


def test_rerendered_reads_a_copy_at_the_stored_keypoints_and_says_when_it_is_blurred(
        in_tmp: Path) -> None:
    # A re-encoded copy gives the stored keypoints' bits back almost whole and is as sharp as
    # its original; a blurred one is not as sharp, which is why its bits are not read.
    import numpy as np
    from PIL import ImageFilter

    from neardup.features.extract import sharpness

    rerendered = load_bench("rerendered")
    picture = textured(70, (300, 220))
    picture.save("original.png")
    picture.save("copy.jpg", quality=85)
    copy = rerendered.one_way("copy.jpg", "original.png")
    assert copy["verified"] and copy["rerendered_bits"] <= 2
    assert abs(copy["sharpness_ratio"] - 1) < 0.1
    gray = picture.convert("L")
    blurred = gray.filter(ImageFilter.GaussianBlur(1))
    assert sharpness(np.asarray(blurred)) < 0.8 * sharpness(np.asarray(gray))
    missing = subprocess.run([sys.executable, str(BENCH / "rerendered.py"), "--dataset", "absent"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr == "rerendered.py: absent: no manifest.csv (run gather.py first)\n"
