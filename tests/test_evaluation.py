"""--evaluate on a dataset whose answers are known by construction."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from neardup.cli import index as index_cli
from neardup.cli import search as search_cli
from neardup.core.hashing import Recipe, hash_file
from neardup.core.store import Store
from neardup.errors import DatasetError
from neardup.evaluation.report import report_stem
from neardup.evaluation.scoring import (
    MAX_THRESHOLD,
    comparison_table,
    evaluate_manifest,
    format_evaluation,
)
from neardup.sources.dataset import MANIFEST_COLUMNS, MAX_MANIFEST_LINE, read_manifest

from .imagegen import textured


def build(root: Path, planted_duplicate: bool) -> None:
    """Two sampled originals with lossless copies (exact distances), two unrelated photos, and
    optionally an exact duplicate of B outside its group: a false match by construction."""
    a, b = textured(21, (160, 120)), textured(22, (160, 120))
    files = {
        "haystack/A.png": a, "haystack/B.png": b,
        "haystack/C.png": textured(23, (160, 120)), "haystack/D.png": textured(24, (160, 120)),
        "copies/A_same.png": a, "copies/A_mirror.png": ImageOps.mirror(a), "copies/B_same.png": b,
    }
    if planted_duplicate:
        files["haystack/B_duplicate.png"] = b
    for name, picture in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        picture.save(root / name)
    rows = [
        ("haystack/A.png", "original", "g1", "src/A.png", ""),
        ("haystack/B.png", "original", "g2", "src/B.png", ""),
        ("haystack/C.png", "", "", "src/C.png", ""),
        ("haystack/D.png", "", "", "src/D.png", ""),
        ("copies/A_same.png", "copy", "g1", "haystack/A.png", "jpeg jpeg_quality=90"),
        ("copies/A_mirror.png", "copy", "g1", "haystack/A.png", "flip mirror jpeg_quality=90"),
        ("copies/B_same.png", "copy", "g2", "haystack/B.png", "resize factor=1 jpeg_quality=90"),
    ]
    if planted_duplicate:
        rows.append(("haystack/B_duplicate.png", "", "", "src/B_duplicate.png", ""))
    with open(root / "manifest.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    assert index_cli.main(["-d", str(root), "-s", str(root.parent / "db.shelve"), "-q",
                           "-j", "1"]) == 0
    # Preconditions of "known by construction": the mirror copy and the unrelated photos are far.
    recipe = Recipe()
    h = {name: hash_file(str(root / name), recipe) for name in files}
    for far in ("copies/A_mirror.png", "haystack/C.png", "haystack/D.png", "haystack/B.png"):
        assert h["haystack/A.png"].distance(h[far]) > MAX_THRESHOLD
    for far in ("haystack/C.png", "haystack/D.png"):
        assert h["haystack/B.png"].distance(h[far]) > MAX_THRESHOLD


def evaluate(tmp: Path, mirror: bool = False):  # type: ignore[no-untyped-def]
    with Store.open_for_reading(str(tmp / "db.shelve")) as store, store.snapshot():
        return evaluate_manifest(store, str(tmp / "data" / "manifest.csv"), mirror=mirror)


def test_recall_per_edit_precision_and_the_recommendation(tmp_path: Path) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    result = evaluate(tmp_path)
    assert result.kinds == ["flip", "jpeg", "resize"]
    for row in result.rows:  # the same at every threshold: distances are 0 or over 16
        assert row.recall == {"flip": 0.0, "jpeg": 1.0, "resize": 1.0, "all": 2 / 3}
        assert row.false_matches == 0 and row.precision == 1.0
    assert result.recommended == 0  # the smallest threshold reaching the best recall


def test_one_sample_is_counted_in_the_singular(tmp_path: Path) -> None:
    """A review: "1 queries" heading the table of a one-sample evaluation."""
    build(tmp_path / "data", planted_duplicate=False)
    manifest = tmp_path / "data" / "manifest.csv"
    kept = [line for line in manifest.read_text().splitlines() if ",g1," not in line]
    manifest.write_text("\n".join(kept) + "\n")
    text = format_evaluation(evaluate(tmp_path), 4)
    assert "; 1 query, 1 copy" in text.splitlines()[0], text.splitlines()[0]


def test_a_manifest_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """A review: a manifest saved from Excel or LibreOffice (UTF-8 with a byte-order mark) was
    "not a manifest (missing file)": the mark read as part of the first column's name."""
    build(tmp_path / "data", planted_duplicate=False)
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    result = evaluate(tmp_path)
    assert result.copies == 3 and result.recommended == 0


@pytest.mark.parametrize(("change", "message"), [
    (lambda lines: lines + ["haystack/C.png,original,g1,src/C.png,"],
     "group g1 has two originals, haystack/A.png and haystack/C.png"),
    (lambda lines: [line.replace("B_same.png,copy,g2,haystack/B.png",
                                 "B_same.png,copy,g2,haystack/A.png") for line in lines],
     "copy copies/B_same.png names haystack/A.png as its source, but the original of its group"
     " g2 is haystack/B.png"),
    (lambda lines: lines + [lines[-1]], "copy copies/B_same.png is listed twice"),
    (lambda lines: [line for line in lines if ",copy," not in line],
     "names no copies, so there is no recall to measure"),
    (lambda lines: lines + ["haystack/A.png,copy,g1,haystack/A.png,jpeg"],
     "copy haystack/A.png is also the original of group g1"),
    (lambda lines: lines + ["haystack/B.png,copy,g1,haystack/A.png,jpeg"],
     "copy haystack/B.png is also the original of group g2"),
    (lambda lines: lines + ["haystack/A.png,original,g3,src/A.png,"],
     "haystack/A.png is the original of two groups, g1 and g3"),
])
def test_a_manifest_that_contradicts_itself_is_refused(
        tmp_path: Path, change: Callable[[list[str]], list[str]], message: str) -> None:
    """A review: a group's second original silently replaced the first (a copy of the first was
    then scored a miss), a copy listed twice counted twice, and no copies scored "0/0"."""
    build(tmp_path / "data", planted_duplicate=False)
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_text("\n".join(change(manifest.read_text().splitlines())) + "\n")
    with pytest.raises(DatasetError, match=re.escape(message)):
        evaluate(tmp_path)


def test_a_source_is_compared_as_the_store_names_it(tmp_path: Path) -> None:
    """A review: a copy whose source was written ./haystack/A.png was refused as naming another
    original than its group's haystack/A.png."""
    build(tmp_path / "data", planted_duplicate=False)
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_text(manifest.read_text().replace(",g1,haystack/A.png,", ",g1,./haystack/A.png,"))
    assert evaluate(tmp_path).copies == 3


def test_another_datasets_manifest_is_said_to_be_one(tmp_path: Path) -> None:
    """A review: "haystack/x.jpg is not under the store's dataset" left the person to work out
    that the manifest was another folder's."""
    build(tmp_path / "data", planted_duplicate=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.csv").write_bytes((tmp_path / "data" / "manifest.csv").read_bytes())
    with Store.open_for_reading(str(tmp_path / "db.shelve")) as store, store.snapshot():
        with pytest.raises(DatasetError) as refused:
            evaluate_manifest(store, str(other / "manifest.csv"))
    assert f"describes the files of {other}, and the store indexes {tmp_path / 'data'}" in str(
        refused.value)


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_a_manifest_line_of_the_longest_length_is_read(tmp_path: Path, ending: str) -> None:
    """The limit counts a line's characters, not its line break (a review: off by one, and a
    CRLF line counted one more than the same line with LF)."""
    build(tmp_path / "data", planted_duplicate=False)
    manifest = tmp_path / "data" / "manifest.csv"
    lines = manifest.read_text().splitlines()
    filler = "haystack/C.png,,,src/C.png,"
    lines.append(filler + "x" * (MAX_MANIFEST_LINE - len(filler)))
    manifest.write_bytes(ending.join(lines).encode() + ending.encode())
    with pytest.raises(DatasetError, match="field larger than field limit"):
        evaluate(tmp_path)  # the csv module's own limit on one field, but read
    lines[-1] = filler + "x" * (MAX_MANIFEST_LINE - len(filler) + 1)
    manifest.write_bytes(ending.join(lines).encode() + ending.encode())
    with pytest.raises(DatasetError, match=f"line {len(lines)} is over"):
        evaluate(tmp_path)


def test_a_manifest_without_line_breaks_is_refused_without_reading_it_whole(
        tmp_path: Path) -> None:
    """A review: /dev/zero (or a file of NUL bytes a crash left) as the manifest was read into
    memory at 1 GB/s until killed: the csv module's field limit applies to a line read whole."""
    build(tmp_path / "data", planted_duplicate=False)
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_bytes(b"\0" * (MAX_MANIFEST_LINE + 10))
    with pytest.raises(DatasetError, match="line 1 is over 1,048,576 characters long"):
        evaluate(tmp_path)
    if os.path.exists("/dev/zero"):
        with pytest.raises(DatasetError, match="line 1 is over"):
            read_manifest("/dev/zero")


def test_names_in_the_list_of_misses_stay_on_their_line(tmp_path: Path) -> None:
    """A review: a manifest's names and edits went to the terminal raw (an escape sequence in
    the edit column reached it; a line break split an entry)."""
    build(tmp_path / "data", planted_duplicate=False)
    manifest = tmp_path / "data" / "manifest.csv"
    with open(manifest, newline="") as stream:
        rows = list(csv.reader(stream))
    with open(manifest, "w", newline="") as stream:
        csv.writer(stream).writerows(
            [[field.replace("flip mirror jpeg_quality=90", "flip \x1b]0;title\x07 and\nmore")
              for field in row] for row in rows])
    text = format_evaluation(evaluate(tmp_path), 4)
    missed = [line for line in text.splitlines() if "missed" in line]
    assert missed == ["  missed  g1 copies/A_mirror.png (flip \\x1b]0;title\\x07 and\\nmore;"
                      " not returned by search within 16 bits)"], missed
    assert "\x1b" not in text


def test_copies_removed_from_the_store_are_missed(tmp_path: Path) -> None:
    """Evaluation counts what search returns, not what re-hashing the copy on disk would give."""
    build(tmp_path / "data", planted_duplicate=False)
    store_path = str(tmp_path / "db.shelve")
    with Store.open_for_reading(store_path) as store:
        recipe, root = store.recipe, store.dataset_root
    with Store.open_for_writing(store_path, recipe, root, {}) as store:
        store.apply([], ["copies/A_same.png", "copies/B_same.png"])  # still on disk, not stored
    result = evaluate(tmp_path)
    for row in result.rows:
        assert row.found == 0 and row.recall["all"] == 0.0
    assert all(copy.distance is None for group in result.groups for copy in group.copies)
    text = format_evaluation(result, 4)
    assert "at --max-distance 4: 0/3 copies found" in text
    assert "2 copies in the manifest are not in the store: counted as missed" in text
    assert ("missed  g2 copies/B_same.png (resize factor=1 jpeg_quality=90; not in the store)"
            in text)
    assert ("missed  g1 copies/A_mirror.png (flip mirror jpeg_quality=90; not returned by search"
            " within 16 bits)") in text  # stored, its hash too far


def test_a_planted_false_match_lowers_precision_below_the_target(tmp_path: Path) -> None:
    build(tmp_path / "data", planted_duplicate=True)
    result = evaluate(tmp_path)
    for row in result.rows:
        assert row.false_matches == 1 and row.found == 2
        assert row.precision == pytest.approx(2 / 3)
    assert result.recommended is None
    assert "no threshold keeps precision at 0.999; the highest is 0.6667" in format_evaluation(
        result, 4)
    (group_b,) = [group for group in result.groups if group.group == "g2"]
    assert group_b.others == {"haystack/B_duplicate.png": 0}


def test_stores_compared_side_by_side_stay_in_columns(tmp_path: Path) -> None:
    build(tmp_path / "data", planted_duplicate=True)
    lowest = evaluate(tmp_path)  # no threshold reaches the target: a long label
    build(tmp_path / "clean" / "data", planted_duplicate=False)
    recommended = evaluate(tmp_path / "clean")
    header, *rows = comparison_table([lowest, recommended]).splitlines()
    assert "(best precision 0.6667)" in rows[0]
    column = header.index(" t ") + 1
    assert [row[column] for row in rows] == ["0", "0"]  # each row's threshold under the t


def test_mirror_finds_the_flipped_copy(tmp_path: Path) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    result = evaluate(tmp_path, mirror=True)
    assert result.rows[0].recall["flip"] == 1.0 and result.rows[0].recall["all"] == 1.0


def test_the_command_prints_writes_and_compares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    assert index_cli.main(["-d", "data", "-s", "phash.shelve", "-q", "-j", "1",
                           "--algorithm", "phash"]) == 0
    code = search_cli.main(["-s", "db.shelve", "-s", "phash.shelve", "--evaluate",
                            "data/manifest.csv", "--report", "report"])
    captured = capsys.readouterr()
    assert code == 0
    assert "recommended threshold: 0" in captured.out
    assert ("missed  g1 copies/A_mirror.png (flip mirror jpeg_quality=90; not returned by search"
            in captured.out)
    assert "dhash-8" in captured.out and "phash-8" in captured.out
    assert "recall at each store's recommended threshold" in captured.out

    for stem in (report_stem("db.shelve"), report_stem("phash.shelve")):
        data = json.loads(Path(f"report/{stem}.json").read_text())
        assert data["recommended_threshold"] == 0 and len(data["thresholds"]) == MAX_THRESHOLD + 1
        with open(f"report/{stem}.csv", newline="") as stream:
            assert len(list(csv.DictReader(stream))) == (MAX_THRESHOLD + 1) * 4  # 3 kinds + all
        with Image.open(f"report/{stem}.png") as chart:
            assert chart.size == (1000, 600)
            assert len(chart.getcolors(1_000_000) or []) > 5  # something was drawn
        assert f"wrote report/{stem}.png" in captured.err


def test_search_with_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    assert search_cli.main(["-s", "db.shelve", "-q", "data/haystack/A.png"]) == 0
    assert "A_mirror" not in capsys.readouterr().out
    assert search_cli.main(["-s", "db.shelve", "-q", "data/haystack/A.png", "--mirror"]) == 0
    assert "0\tdata/copies/A_mirror.png" in capsys.readouterr().out.splitlines()


def test_the_csv_counts_the_copies_found_of_each_edit_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv",
                            "--report", "report"]) == 0
    with open(f"report/{report_stem('db.shelve')}.csv", newline="") as stream:
        at_zero = {row["edit"]: row for row in csv.DictReader(stream) if row["threshold"] == "0"}
    assert {edit: (row["found"], row["copies"]) for edit, row in at_zero.items()} == {
        "flip": ("0", "1"), "jpeg": ("1", "1"), "resize": ("1", "1"), "all": ("2", "3")}
    assert {row["search"] for row in at_zero.values()} == {"hash"}


def test_stores_of_one_recipe_compared_are_named_by_their_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    assert index_cli.main(["-d", "data", "-s", "again.shelve", "-q", "-j", "1"]) == 0
    capsys.readouterr()
    assert search_cli.main(["-s", "db.shelve", "-s", "again.shelve", "--evaluate",
                            "data/manifest.csv"]) == 0
    table = capsys.readouterr().out.split("or else at its most precise one:\n")[1]
    header, first, second = table.splitlines()
    assert first.startswith("db.shelve: dhash-8") and second.startswith("again.shelve: dhash-8")


def test_reports_of_stores_named_alike_in_two_folders_do_not_overwrite_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """a/db.shelve and b/db.shelve were both reported as evaluation-db-shelve.*: in one run or
    two, into the same folder, the second store's files replaced the first's."""
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    Path("a").mkdir()
    Path("b").mkdir()
    assert index_cli.main(["-d", "data", "-s", "a/db.shelve", "-q", "-j", "1"]) == 0
    assert index_cli.main(["-d", "data", "-s", "b/db.shelve", "-q", "-j", "1",
                           "--algorithm", "phash"]) == 0
    capsys.readouterr()

    def written() -> dict[str, str]:
        """Each report's JSON file -> the store it names."""
        return {path.name: json.loads(path.read_text())["store"]
                for path in Path("report").glob("*.json")}

    for stores in (["-s", "a/db.shelve", "-s", "b/db.shelve"], ["-s", "a/db.shelve"]):
        assert search_cli.main([*stores, "--evaluate", "data/manifest.csv", "--report",
                                "report"]) == 0
        assert sorted(written().values()) == ["a/db.shelve", "b/db.shelve"]
    # Named readably after the store, and the same whichever way the store's path is written.
    names = sorted(written())
    assert all(name.startswith("evaluation-db-shelve-") for name in names)
    assert search_cli.main(["-s", "./b/../b/db.shelve", "--evaluate", "data/manifest.csv",
                            "--report", "report"]) == 0
    assert sorted(written()) == names
    err = capsys.readouterr().err
    for name in names:
        stem = name.removesuffix(".json")
        assert f"wrote report/{stem}.png" in err
        assert Path(f"report/{stem}.html").is_file() and Path(f"report/{stem}.csv").is_file()


def test_copies_deleted_from_disk_are_missed_and_said_to_be_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "copies" / "B_same.png").unlink()
    assert index_cli.main(["-d", "data", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    capsys.readouterr()
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv"]) == 0
    out = capsys.readouterr().out
    assert "at --max-distance 4: 1/3 copies found" in out  # still counted as missed
    assert "1 copy in the manifest is not on disk or in the store: counted as missed" in out
    assert ("missed  g2 copies/B_same.png (resize factor=1 jpeg_quality=90; not on disk or in the"
            " store)") in out
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv", "--json"]) == 0
    (group,) = [g for g in json.loads(capsys.readouterr().out)[0]["groups"] if g["group"] == "g2"]
    assert group["copies"] == [{"path": "copies/B_same.png", "edit": "resize factor=1"
                                " jpeg_quality=90", "distance": None,
                                "missing": "not on disk or in the store"}]
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv",
                            "--html", "page.html"]) == 0
    page = Path("page.html").read_text(encoding="utf-8")
    assert "1 copy in the manifest is not on disk or in the store: counted as missed." in page
    assert "(not on disk or in the store)" in page
    with Store.open_for_writing("db.shelve", Recipe(), str(tmp_path / "data"), {}) as store:
        store.apply([], ["copies/A_same.png"])  # on disk, taken out of the store
    assert ("2 copies in the manifest are not in the store (1 of them not on disk either):"
            " counted as missed") in format_evaluation(evaluate(tmp_path), 4)


def test_a_store_lacking_some_of_the_haystack_says_precision_counts_only_what_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # The other match (B's planted duplicate) was never indexed, as when index.py failed it: the
    # store gives precision 1.0 where the whole haystack gives 2/3, and must say why.
    build(tmp_path / "data", planted_duplicate=True)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv"]) == 0
    assert "haystack" not in capsys.readouterr().err  # a complete store: nothing to say
    with Store.open_for_writing("db.shelve", Recipe(), str(tmp_path / "data"), {}) as store:
        store.apply([], ["haystack/B_duplicate.png", "haystack/C.png"])
    (tmp_path / "data" / "haystack" / "C.png").unlink()
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv"]) == 0
    captured = capsys.readouterr()
    assert "at --max-distance 4: 2/3 copies found, 0 other matches" in captured.out
    warned = [line for line in captured.err.splitlines() if "haystack" in line]
    assert warned == ["search.py: db.shelve: 2 of the manifest's 5 haystack images are not in the"
                      " store (1 of them not on disk either): precision counts only the other"
                      " matches among the 3 it holds"]
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)[0]
    assert (data["haystack_images"], data["haystack_not_in_store"]) == (5, 2)
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv",
                            "--html", "page.html"]) == 0
    page = Path("page.html").read_text(encoding="utf-8")
    assert ("2 of the manifest&#x27;s 5 haystack images are not in the store (1 of them not on"
            " disk either): precision counts only the other matches among the 3 it holds.") in page


def test_files_changed_since_the_store_indexed_them_are_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A review: gather.py --force with another seed over an indexed dataset, not indexed again,
    and --evaluate scored the store's old pictures against the new manifest: 0 % recall at every
    threshold and threshold 0 recommended, silently. Files whose size, mtime or inode are no
    longer those the store recorded (or that are gone) are counted in one line on stderr (and on
    the page, and in the JSON), which says to run index.py; a copy missed is listed as changed."""
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv"]) == 0
    assert "changed" not in capsys.readouterr().err  # an up-to-date store: nothing to say
    textured(31, (200, 150)).save("data/copies/A_mirror.png")  # another picture, same name
    textured(32, (200, 150)).save("data/haystack/C.png")
    Path("data/haystack/D.png").unlink()
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "search.py: db.shelve: 3 of the manifest's 7 files changed or are gone since the store"
        " indexed them (1 copy, 2 haystack images): scored as the store holds them, not as they"
        " are now; run index.py, then evaluate again"]
    assert ("missed  g1 copies/A_mirror.png (flip mirror jpeg_quality=90; changed on disk since"
            " it was indexed)") in captured.out
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)[0]
    assert (data["files_changed_since_indexed"], data["copies_changed_since_indexed"]) == (3, 1)
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv",
                            "--html", "page.html"]) == 0
    page = Path("page.html").read_text(encoding="utf-8")
    assert "3 of the manifest&#x27;s 7 files changed or are gone since the store indexed" in page
    assert index_cli.main(["-d", "data", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    capsys.readouterr()
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv"]) == 0
    assert "changed" not in capsys.readouterr().err
