"""Contact sheets say what they leave out, tell same-named files apart, and are not drawn empty."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageChops

from neardup.cli import index as index_cli
from neardup.cli import search as search_cli
from neardup.evaluation import montage
from neardup.evaluation.montage import (
    CAPTION,
    GAP,
    HEADER,
    LINE,
    MAX_ROWS,
    TILE,
    Row,
    Tile,
    contact_sheet,
)
from neardup.evaluation.report import report_stem

from .imagegen import save, textured
from .test_evaluation import build


def tiles(folder: Path, count: int, start: int = 0) -> list[Tile]:
    return [Tile(save(textured(start + n), str(folder / f"img{n}.png")), f"distance {n}")
            for n in range(count)]


def test_rows_beyond_the_limit_are_counted_in_the_image_and_the_result(tmp_path: Path) -> None:
    rows = [Row(tile, []) for tile in tiles(tmp_path, MAX_ROWS + 6)]
    sheet = contact_sheet(rows, "groups", what="groups")
    assert (sheet.rows_shown, sheet.rows_total, sheet.rows_left_out) == (MAX_ROWS, MAX_ROWS + 6, 6)
    assert sheet.notes == [f"{MAX_ROWS} of {MAX_ROWS + 6} groups shown; 6 left out"]
    assert sheet.image.height == HEADER + MAX_ROWS * (TILE + CAPTION + GAP) + GAP
    notice = np.asarray(sheet.image.crop((0, 30, sheet.image.width, HEADER - 4)).convert("RGB"))
    red = ((notice[..., 0] > 150) & (notice[..., 1] < 120)).sum()  # the warning line, in red
    assert red > 20


def test_matches_beyond_a_row_get_their_own_tile_not_a_caption_over_another(tmp_path: Path) -> None:
    first, *others = tiles(tmp_path, 13)
    sheet = contact_sheet([Row(first, others)], "one query")
    assert sheet.tiles_left_out == 5  # 8 columns of matches: 7 drawn, the 8th says "+5 more"
    assert sheet.notes == ["5 images beyond 8 a row left out"]
    last = GAP + 8 * (TILE + GAP)
    box = sheet.image.crop((last + 2, HEADER + 2, last + TILE - 2, HEADER + TILE - 2))
    assert box.convert("L").getextrema()[0] < 100  # text on it
    assert sheet.image.getpixel((last + 4, HEADER + 4)) == (235, 235, 235)  # its own grey tile
    under = sheet.image.crop((last, HEADER + TILE, last + TILE, HEADER + TILE + CAPTION))
    assert under.convert("L").getextrema() == (255, 255)  # nothing drawn in a caption's place


def test_captions_tell_same_named_files_in_two_folders_apart(tmp_path: Path) -> None:
    picture = textured(1)
    a = save(picture, str(tmp_path / "Faces" / "image_0324.png"))
    b = save(picture, str(tmp_path / "Faces_easy" / "image_0324.png"))
    sheet = contact_sheet([Row(Tile(a, "first"), [Tile(b, "first")])], "x").image
    captions = [sheet.crop((left, HEADER + TILE, left + TILE, HEADER + TILE + CAPTION))
                for left in (GAP, GAP + TILE + GAP)]
    assert ImageChops.difference(captions[0], captions[1]).getbbox() is not None
    assert Tile(a, "").shown_path == "Faces/image_0324.png"


@pytest.mark.parametrize("names", [("café.png", "cafè.png"), ("Müller.png", "Möller.png"),
                                   ("写真.png", "写眞.png")])
def test_names_the_font_cannot_draw_are_told_apart(tmp_path: Path, names: tuple[str, str]) -> None:
    """Pillow's built-in font draws é, è, ü, ö and CJK as one empty box: two such names looked
    alike on the sheet. Characters it cannot draw are escaped, as the pages show them."""
    picture = textured(1)
    a, b = (save(picture, str(tmp_path / "photos" / name)) for name in names)
    sheet = contact_sheet([Row(Tile(a, "first"), [Tile(b, "first")])], "x").image
    captions = [sheet.crop((left, HEADER + TILE, left + TILE, HEADER + TILE + CAPTION))
                for left in (GAP, GAP + TILE + GAP)]
    assert ImageChops.difference(captions[0], captions[1]).getbbox() is not None


def test_nothing_to_draw_is_a_line_not_an_empty_sheet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    # With --mirror every copy is found and nothing else matches: no misses to draw.
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv", "--mirror",
                            "--report", "report"]) == 0
    err = capsys.readouterr().err
    stem = report_stem("db.shelve")
    assert not os.path.exists(f"report/{stem}-misses.png")
    assert (f"search.py: report/{stem}-misses.png: not written: every copy found and"
            " nothing else at --max-distance 4\n") in err
    assert os.path.exists(f"report/{stem}.html")

    os.makedirs("lonely")
    save(textured(50), "lonely/one.png")
    assert index_cli.main(["-d", "lonely", "-s", "lonely.shelve", "-q", "-j", "1"]) == 0
    capsys.readouterr()
    assert search_cli.main(["-s", "lonely.shelve", "--groups", "--montage", "g.png"]) == 1
    assert capsys.readouterr().err == (
        "search.py: g.png: not written: no group of near-duplicates within 4 bits\n")
    assert not os.path.exists("g.png")


def test_the_command_says_on_stderr_what_the_sheet_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for n in range(3):  # three groups of two exact copies each
        for copy in ("a", "b"):
            save(textured(60 + n), f"lib/g{n}/{copy}.png")
    assert index_cli.main(["-d", "lib", "-s", "lib.shelve", "-q", "-j", "1"]) == 0
    capsys.readouterr()
    monkeypatch.setattr("neardup.evaluation.montage.MAX_ROWS", 2)
    assert search_cli.main(["-s", "lib.shelve", "--groups", "--montage", "g.png"]) == 0
    assert capsys.readouterr().err == (
        "search.py: wrote g.png (2 of 3 groups shown; 1 left out (--html PAGE shows them all))\n")
    with Image.open("g.png") as sheet:
        assert sheet.height == HEADER + 2 * (TILE + CAPTION + LINE + GAP) + GAP  # a line kept/marked


def test_names_with_line_breaks_are_drawn_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pillow refuses to measure text of several lines: a name holding a newline stopped
    --montage, and with it the --html page and the matches of the same run."""
    picture = textured(1)
    images = tmp_path / "images"
    save(picture, str(images / "one\nline.png"))
    save(picture, str(images / "two\tcopy.png"))
    monkeypatch.chdir(tmp_path)
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert search_cli.main(["-s", "db.shelve", "--groups", "--html", "g.html", "--montage",
                            "g.png"]) == 0
    assert Path("g.html").exists() and Path("g.png").exists()
    assert search_cli.main(["-s", "db.shelve", "-q", "images/one\nline.png", "--montage",
                            "q.png"]) == 0
    assert "two\\tcopy.png" in capsys.readouterr().out and Path("q.png").exists()


def test_a_full_disk_leaves_the_earlier_page_and_sheet_whole(tmp_path: Path) -> None:
    """Written in place, a page cut short by a full disk replaced the complete one of an earlier
    run (its script cut off, its box of names to delete half there), and a sheet was 0 bytes."""
    import resource
    import signal
    import subprocess
    import sys

    from .conftest import PROJECT_ROOT

    for number in range(12):
        picture = textured(number)
        save(picture, str(tmp_path / "images" / "a" / f"{number}.png"))
        save(picture, str(tmp_path / "images" / "b" / f"{number}.png"))
    command = [sys.executable, str(PROJECT_ROOT / "search.py"), "-s", "db.shelve", "--groups",
               "--html", "g.html", "--montage", "g.png"]
    assert index_cli.main(["-d", str(tmp_path / "images"), "-s", str(tmp_path / "db.shelve"),
                           "-q", "-j", "1"]) == 0
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)
    page, sheet = (tmp_path / "g.html").read_bytes(), (tmp_path / "g.png").read_bytes()
    limit = 48 * 1024  # room for SQLite's shared-memory file, not for the page
    assert len(page) > limit

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    for written, what in ((command, "g.png: cannot write the contact sheet (File too large)"),
                          (command[:-2], "g.html: cannot write the page (File too large)")):
        failed = subprocess.run(written, cwd=tmp_path, capture_output=True, text=True,
                                preexec_fn=small_disk)
        assert failed.returncode == 2
        assert failed.stderr.strip().endswith(what), failed.stderr
        assert (tmp_path / "g.html").read_bytes() == page  # the earlier ones, whole
        assert (tmp_path / "g.png").read_bytes() == sheet
        assert not list(tmp_path.glob("*.partial"))


def test_counts_of_one_are_said_in_the_singular(tmp_path: Path) -> None:
    """A review: "all 1 queries shown"."""
    first, *others = tiles(tmp_path, 5)
    sheet = contact_sheet([Row(first, others[:1])], "one query", what="queries with matches")
    assert sheet.line == "the one query with matches shown"
    sheet = contact_sheet([Row(first, others[:1]), Row(others[2], others[3:4])], "two",
                          what="queries with matches")
    assert sheet.line == "all 2 queries with matches shown"


def groups_sheet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *options: str
                 ) -> montage.Sheet:
    """Index tmp_path/data, run search.py --groups --montage g.png (and `options`) there, and
    return the contact sheet it drew."""
    monkeypatch.chdir(tmp_path)
    assert index_cli.main(["-d", "data", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    sheets: list[montage.Sheet] = []

    def drawn(*args: object, **kwargs: object) -> montage.Sheet:
        sheets.append(contact_sheet(*args, **kwargs))  # type: ignore[arg-type]
        return sheets[-1]

    monkeypatch.setattr(montage, "contact_sheet", drawn)  # as search.py draws it
    assert search_cli.main(["-s", "db.shelve", "--groups", "--montage", "g.png", *options]) == 0
    (sheet,) = sheets
    return sheet


def test_a_groups_sheet_says_what_the_groups_page_keeps_and_marks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contact sheet of --groups showed the groups without what the --html page's button
    keeps and marks in each: a person looking at the sheet could not tell which image stays.
    Under each tile the sheet now says the page's own decision (keeping.py), in its words."""
    import re
    import shutil
    from html import unescape

    from .test_review_page import originals_first

    data = tmp_path / "data"
    picture = textured(3).resize((400, 300))
    save(picture, str(data / "b_original.png"))
    shutil.copy(data / "b_original.png", data / "b_twin.png")  # the same bytes: marked
    alike = textured(7).resize((300, 200))
    alike.save(data / "g_one.jpg", quality=90)  # alike, not identical: left to the person
    alike.save(data / "h_two.jpg", quality=80)
    originals_first(data, "b_original.png")
    sheet = groups_sheet(tmp_path, monkeypatch, "--html", "g.html")
    page = Path("g.html").read_text(encoding="utf-8")
    on_page = {unescape(path): unescape(why) for path, why in re.findall(
        r'<span class="path">([^<]*)</span>.*?<span class="size">[^<(]*\(([^<]*)\)</span>', page)}
    assert on_page["b_twin.png"].startswith("marked") and on_page["b_original.png"] == "kept"
    assert {path: words for row in sheet.statuses for path, words in row} == on_page
    assert len(on_page) == 4
    # Drawn under each tile: what is kept in green, what is marked in red, the rest in grey.
    row_height = TILE + CAPTION + LINE + GAP
    for number, row in enumerate(sheet.statuses):
        for column, (path, words) in enumerate(row):
            left, top = GAP + column * (TILE + GAP), HEADER + number * row_height
            line = np.asarray(sheet.image.crop((left, top + TILE + CAPTION, left + TILE,
                                                top + TILE + CAPTION + LINE)))
            red, green = line[..., 0].astype(int), line[..., 1].astype(int)
            inked = (line.min(axis=2) < 200).sum()
            if words == "kept":
                assert (green - red > 60).sum() > 10, path
            elif words.startswith("marked"):
                assert (red - green > 60).sum() > 10, path
            else:
                assert inked > 10 and (abs(red - green) > 30).sum() == 0, path


def test_files_marked_beyond_the_row_are_said_on_its_more_tile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: the file a group's page marked was among the "+2 more not shown", and the sheet
    showed that group with "kept" and nothing marked. The "+N more" tile now says how many of
    them the page marks."""
    import shutil

    from .test_review_page import originals_first

    data = tmp_path / "data"
    save(textured(3).resize((400, 300)), str(data / "a_original.png"))
    for number in range(11):  # the same bytes: every one but the kept file marked
        shutil.copy(data / "a_original.png", data / f"b_twin{number:02d}.png")
    originals_first(data, "a_original.png")
    sheet = groups_sheet(tmp_path, monkeypatch)
    shown = len(sheet.statuses[0])
    assert shown == montage.MAX_PER_ROW and sheet.tiles_left_out == 12 - shown
    marked_shown = sum(words.startswith("marked") for _, words in sheet.statuses[0])
    assert sheet.marked_not_shown == [11 - marked_shown] and marked_shown < 11
    # Said in red on the "+N more" tile.
    left = GAP + montage.MAX_PER_ROW * (TILE + GAP)
    tile = np.asarray(sheet.image.crop((left, HEADER, left + TILE, HEADER + TILE)))
    red, green = tile[..., 0].astype(int), tile[..., 1].astype(int)
    assert (red - green > 60).sum() > 10


def test_the_kept_image_beyond_the_row_is_said_on_its_more_tile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: the image a group's page keeps was among the "+N more not shown", and the
    sheet showed that group's copies marked with nothing kept in view. The "+N more" tile now
    says the one kept is among them ("the one kept too")."""
    import shutil

    from .test_review_page import originals_first

    data = tmp_path / "data"
    save(textured(3).resize((400, 300)), str(data / "z_original.png"))
    for number in range(11):  # the same bytes, newer: marked, the oldest kept
        shutil.copy(data / "z_original.png", data / f"a_twin{number:02d}.png")
    originals_first(data, "z_original.png")
    sheet = groups_sheet(tmp_path, monkeypatch)
    shown = [path for path, _ in sheet.statuses[0]]
    assert "z_original.png" not in shown and len(shown) == montage.MAX_PER_ROW
    assert sheet.kept_not_shown == [True]
    # Said in green on the "+N more" tile.
    left = GAP + montage.MAX_PER_ROW * (TILE + GAP)
    tile = np.asarray(sheet.image.crop((left, HEADER, left + TILE, HEADER + TILE)))
    red, green = tile[..., 0].astype(int), tile[..., 1].astype(int)
    assert (green - red > 60).sum() > 10
