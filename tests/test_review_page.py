"""The HTML review pages, opened in a real headless Chromium: every thumbnail loads, nothing blank.

Chromium is Debian's `chromium` package (scripts/test.sh installs it when apt is usable); without
it these tests are skipped with that reason. The page is loaded from a file:// URL, as a person
opens it; a copy with a probe script appended reports, after the load event, what the browser
made of every <img> and of the review form, into the DOM that --dump-dom prints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from neardup.cli import index as index_cli
from neardup.cli import search as search_cli

from .test_evaluation import build

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROBE = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const report = {
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    height: document.body.scrollHeight,
    text: document.body.innerText.length,
    elements_in_captions: document.querySelectorAll('figcaption i, figcaption b').length,
  };
  const button = document.getElementById('all-but-first');
  if (button) {
    button.click();
    report.marked = document.getElementById('marked').value;
  }
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: install Debian's chromium package (scripts/test.sh"
                    " does it when apt-get is usable) to test the review pages in a browser")
    return CHROMIUM


def browser(chromium: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
         *arguments], capture_output=True, text=True, timeout=120)


def load_in_browser(chromium: str, page: Path) -> dict:
    probe = page.with_name(page.stem + "-probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                     encoding="utf-8")
    done = browser(chromium, page.parent / "profile", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page did not finish loading: {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def assert_not_blank(chromium: str, page: Path) -> None:
    shot = page.with_suffix(".png")
    browser(chromium, page.parent / "profile", "--window-size=1000,900",
            f"--screenshot={shot}", page.as_uri())
    with Image.open(shot) as picture:
        histogram = picture.convert("L").histogram()
    assert sum(histogram[:200]) > 0.05 * sum(histogram), "the page looks blank"


def test_groups_page_loads_every_thumbnail(
    chromium: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(tmp_path / "data", planted_duplicate=True)
    # A name a stranger chose, with markup in it, in the same group as B.
    shutil.copy(tmp_path / "data" / "haystack" / "B.png", tmp_path / "data" / "<b onclick=x>B & co.png")
    os.makedirs(tmp_path / "data" / "sub")
    shutil.copy(tmp_path / "data" / "haystack" / "A.png", tmp_path / "data" / "sub" / "A.png")
    monkeypatch.chdir(tmp_path)
    assert index_cli.main(["-d", "data", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert search_cli.main(["-s", "db.shelve", "--groups", "--html", "review.html"]) == 0
    page = tmp_path / "review.html"
    html = page.read_text(encoding="utf-8")
    assert str(tmp_path / "data") in html  # the dataset folder is named once, at the top
    assert "haystack/B_duplicate.png" in html and "sub/A.png" in html  # paths relative to it
    assert "<b onclick" not in html and "&lt;b onclick=x&gt;B &amp; co.png" in html
    assert "http://" not in html and "https://" not in html  # self-contained

    report = load_in_browser(chromium, page)
    assert report["images"] == 7  # 4 in B's group, 3 in A's
    assert report["loaded"] == report["images"]
    assert report["text"] > 200 and report["height"] > 400
    assert report["elements_in_captions"] == 0
    # Each group's first image is kept: "<b onclick=x>B & co.png" sorts first, then copies/A_same.
    assert sorted(report["marked"].splitlines()) == [
        "copies/B_same.png", "haystack/A.png", "haystack/B.png", "haystack/B_duplicate.png",
        "sub/A.png"]
    assert_not_blank(chromium, page)


def test_names_that_cannot_be_listed_are_shown_escaped_and_left_out_of_the_list(
    chromium: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Copies of B under names that, one per line in the list of paths to delete, would read as
    # two paths (one of them another file's: "haystack/A.png") or as a stand-in for bytes.
    build(tmp_path / "data", planted_duplicate=True)
    data = tmp_path / "data"
    odd = {"line break": "x\nhaystack/A.png", "not UTF-8": os.fsdecode(b"B\xff.png"),
           "direction override": "B\u202egnp.exe.png", "backslash": "B\\n.png"}
    os.makedirs(data / "x\nhaystack")  # a folder whose name holds a line break
    for name in odd.values():
        shutil.copy(data / "haystack" / "B.png", os.fsencode(data / name))
    monkeypatch.chdir(tmp_path)
    assert index_cli.main(["-d", "data", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert search_cli.main(["-s", "db.shelve", "--groups", "--html", "review.html"]) == 0
    page = tmp_path / "review.html"
    html = page.read_text(encoding="utf-8")  # valid UTF-8 whatever the names
    for shown in ("x\\nhaystack/A.png", "B\\xff.png", "B\\u202egnp.exe.png", "B\\\\n.png"):
        assert shown in html, shown
    assert html.count("delete it by hand") == 3  # the backslash is an ordinary name

    report = load_in_browser(chromium, page)
    assert report["loaded"] == report["images"] == 9  # 7 in B's group, 2 in A's
    assert html.count('class="mark"') == 6  # the backslash name has its tick box
    marked = report["marked"].splitlines()
    # Every image but each group's first ("B\\n.png" sorts first in B's), none of the odd names.
    assert sorted(marked) == ["copies/B_same.png", "haystack/A.png", "haystack/B.png",
                              "haystack/B_duplicate.png"]


def test_evaluation_page_loads_every_thumbnail(
    chromium: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(tmp_path / "data", planted_duplicate=True)
    monkeypatch.chdir(tmp_path)
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv", "--report",
                            "report"]) == 0
    page = tmp_path / "report" / "evaluation-db-shelve.html"
    html = page.read_text(encoding="utf-8")
    assert "missed: flip mirror jpeg_quality=90 (not returned by search within 16 bits)" in html
    assert "other match, distance 0" in html and "haystack/B_duplicate.png" in html
    report = load_in_browser(chromium, page)
    assert report["images"] == 4  # g1 and its missed mirror copy, g2 and its planted duplicate
    assert report["loaded"] == 4
    assert_not_blank(chromium, page)


def test_an_unreadable_image_is_a_note_not_a_broken_picture(
    chromium: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(tmp_path / "data", planted_duplicate=True)
    monkeypatch.chdir(tmp_path)
    Path("data/haystack/B_duplicate.png").write_bytes(b"gone bad")  # stored, now unreadable
    assert search_cli.main(["-s", "db.shelve", "--groups", "--html", "review.html"]) == 0
    html = Path("review.html").read_text(encoding="utf-8")
    assert "not an image" in html
    report = load_in_browser(chromium, tmp_path / "review.html")
    assert report["images"] == 4 and report["loaded"] == 4


def test_the_kept_image_is_the_largest_and_a_changed_file_is_never_listed(
    chromium: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'Mark all but the first' kept each group's most connected image, which may be a small or
    recompressed copy, and ticked the original; and a file replaced after indexing was shown in
    its old group (with its new picture) and ticked too."""
    from .imagegen import textured

    picture = textured(3).resize((400, 300))
    data = tmp_path / "data"
    data.mkdir()
    picture.save(data / "a_copy_q60.jpg", quality=60)
    picture.save(data / "b_original.png")
    picture.resize((200, 150)).save(data / "c_half.jpg", quality=90)
    picture.save(data / "d_replaced.jpg", quality=90)
    # A second group whose largest picture is cut short after indexing, and a third whose
    # every file changes: neither may be the one kept.
    other = textured(5).resize((400, 300))
    other.save(data / "e_large.jpg", quality=95)
    other.resize((300, 225)).save(data / "f_medium.jpg", quality=90)
    alone = textured(7).resize((300, 200))
    alone.save(data / "g_one.jpg", quality=90)
    alone.save(data / "h_two.jpg", quality=80)
    monkeypatch.chdir(tmp_path)
    assert index_cli.main(["-d", "data", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    textured(9).resize((1600, 1200)).save(data / "d_replaced.jpg", quality=90)  # larger, another
    whole = (data / "e_large.jpg").read_bytes()
    (data / "e_large.jpg").write_bytes(whole[:len(whole) // 4])  # same header, cut short
    os.utime(data / "e_large.jpg", ns=(0, os.stat(data / "f_medium.jpg").st_mtime_ns))
    for name in ("g_one.jpg", "h_two.jpg"):
        textured(11).save(data / name, quality=90)
    assert search_cli.main(["-s", "db.shelve", "--groups", "--html", "review.html"]) == 0
    html = (tmp_path / "review.html").read_text(encoding="utf-8")
    assert "400 x 300" in html and "(kept: the most pixels)" in html
    assert "none is kept and none marked by the button" in html
    report = load_in_browser(chromium, tmp_path / "review.html")
    assert sorted(report["marked"].splitlines()) == ["a_copy_q60.jpg", "c_half.jpg"]
