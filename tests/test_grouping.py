"""search.py --groups and --montage."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import pytest
from PIL import Image

from neardup.cli import index as index_cli
from neardup.cli import search as search_cli
from neardup.core.grouping import clique_groups, near_duplicate_groups
from neardup.core.hashing import Hash, Recipe
from neardup.core.store import IndexedFile, Store
from neardup.evaluation.report import report_stem

from .test_evaluation import build


def synthetic_store(path: str) -> None:
    a = 0x0123_4567_89AB_CDEF
    b = a ^ 0b111  # 3 bits from a
    c = b ^ (0b111 << 8)  # 3 bits from b, 6 from a: a chain
    far = a ^ ((1 << 40) - 1)
    entries = {"a.jpg": a, "a2.jpg": a, "b.jpg": b, "c.jpg": c, "far.jpg": far,
               "blank1.jpg": 0, "blank2.jpg": 1}
    with Store.open_for_writing(path, Recipe(), "/d", {}) as store:
        store.apply([IndexedFile(name, 1, 1, Hash(value, 64).hex())
                     for name, value in entries.items()], [])


def groups_at(path: str, distance: int, **options: bool) -> list[tuple[str, ...]]:
    with Store.open_for_reading(path) as store:
        return [tuple(sorted(group.paths))
                for group in near_duplicate_groups(store, distance, **options)]


def test_groups_never_chain_and_leave_blanks_out(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    synthetic_store(path)
    assert groups_at(path, 0) == [("a.jpg", "a2.jpg")]
    # a~b (3 bits) and b~c (3 bits), but a-c is 6: a chain must not put a and c together.
    assert groups_at(path, 3) == [("a.jpg", "a2.jpg", "b.jpg")]
    assert groups_at(path, 6) == [("a.jpg", "a2.jpg", "b.jpg", "c.jpg")]  # now every pair is near
    assert groups_at(path, 2) == [("a.jpg", "a2.jpg")]
    assert groups_at(path, 3, include_low_information=True) == [
        ("a.jpg", "a2.jpg", "b.jpg"), ("blank1.jpg", "blank2.jpg")]


def test_every_pair_in_a_group_is_within_the_threshold(tmp_path: Path) -> None:
    """Random hashes in dense clusters: each group is a clique at the threshold, and shows it."""
    rng = random.Random(11)
    centres = [rng.getrandbits(64) for _ in range(5)]
    values = {f"{i:03d}.jpg": centre ^ sum(1 << bit for bit in rng.sample(range(64), rng.randint(0, 5)))
              for i, centre in enumerate(centres * 12)}
    path = str(tmp_path / "s")
    with Store.open_for_writing(path, Recipe(), "/d", {}) as store:
        store.apply([IndexedFile(name, 1, 1, Hash(value, 64).hex())
                     for name, value in values.items()], [])
    with Store.open_for_reading(path) as store:
        groups = near_duplicate_groups(store, 4)
    seen: set[str] = set()
    for group in groups:
        assert not seen & set(group.paths)  # an image is in one group at most
        seen |= set(group.paths)
        hashes = [Hash(values[name], 64) for name in group.paths]
        widest = max(a.distance(b) for a in hashes for b in hashes)
        assert widest <= 4 and group.max_distance == widest
        assert list(group.distances) == [hashes[0].distance(h) for h in hashes]
    assert len(seen) > 30  # the clusters were found, not just left out


def test_a_copy_stays_with_its_original_not_with_a_look_alike() -> None:
    """A review's case (verified links, distance = -inliers): a portrait's mirrored and rotated
    copies also verify, weakly, against a look-alike (another frame of the sitting) and its own
    copies, which the original does not match. Grown from the best-connected image, the
    look-alike's group took both copies and left the original alone; taken closest link first,
    the copies stay with their original."""
    strong, weak = -60, -12
    pairs = {("portrait", "mirrored"): strong, ("portrait", "rotated"): strong - 5,
             ("mirrored", "rotated"): strong - 10,
             ("frame", "frame-a"): -40, ("frame", "frame-b"): -40, ("frame-a", "frame-b"): -38,
             ("frame", "other-1"): -20, ("frame", "other-2"): -20}
    for look_alike in ("frame", "frame-a", "frame-b"):
        pairs[("mirrored", look_alike)] = pairs[("rotated", look_alike)] = weak
    links: dict[str, dict[str, int]] = {}
    for (one, other), distance in pairs.items():
        links.setdefault(one, {})[other] = links.setdefault(other, {})[one] = distance
    groups = sorted(sorted(members) for members in clique_groups(links))
    assert ["mirrored", "portrait", "rotated"] in groups
    assert ["frame", "frame-a", "frame-b"] in groups
    for members in groups:  # every set a clique, every node in one set
        assert all(b in links[a] for a in members for b in members if a != b)
    assert sorted(node for members in groups for node in members) == sorted(links)


def test_each_group_starts_with_the_member_nearest_the_others() -> None:
    links = {"a": {"b": 1, "c": 2}, "b": {"a": 1, "c": 1}, "c": {"a": 2, "b": 1}}
    assert clique_groups(links) == [["b", "a", "c"]]


def test_groups_found_all_at_once_are_the_groups_found_hash_by_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store large enough for the multi-index (its thresholds lowered: 22,000 hashes took 21 s):
    # --groups takes every pair at once from it (MultiIndex.pairs_within); the same groups as
    # searching around each hash in turn.
    from neardup.core import multiindex
    from neardup.core import search as search_module

    monkeypatch.setattr(search_module, "MULTI_INDEX_MIN_HASHES", 2_000)
    monkeypatch.setattr(multiindex, "HASHES_PER_PROBE", 1)  # and taken at each radius below
    rng = random.Random(12)
    centres = [rng.getrandbits(64) for _ in range(150)]
    values = {f"{i:05d}.jpg": rng.choice(centres)
              ^ sum(1 << bit for bit in rng.sample(range(64), rng.randint(0, 6)))
              for i in range(search_module.MULTI_INDEX_MIN_HASHES + 1_000)}
    path = str(tmp_path / "s")
    with Store.open_for_writing(path, Recipe(), "/d", {}) as store:
        store.apply([IndexedFile(name, 1, 1, Hash(value, 64).hex())
                     for name, value in values.items()], [])
    taken: list[int] = []
    pairs_within = search_module.HashIndex.pairs_within

    def counted(self: search_module.HashIndex, radius: int) -> object:
        found = pairs_within(self, radius)
        if found is not None:
            taken.append(radius)
        return found

    for distance in (0, 3, 5):
        with Store.open_for_reading(path) as store, monkeypatch.context() as patched:
            patched.setattr(search_module.HashIndex, "pairs_within", counted)
            at_once = near_duplicate_groups(store, distance)
        with monkeypatch.context() as patched:
            patched.setattr(search_module.HashIndex, "pairs_within", lambda self, radius: None)
            with Store.open_for_reading(path) as store:
                one_by_one = near_duplicate_groups(store, distance)
        assert at_once == one_by_one, distance
        assert len(at_once) > 50
    assert taken == [3, 5]  # every pair taken at once, as it is to be tested (0: the buckets)


def test_groups_command_text_json_and_montage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    build(tmp_path / "data", planted_duplicate=True)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()  # what building the store printed
    assert search_cli.main(["-s", "db.shelve", "--groups", "--montage", "groups.png"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "# group 1: 3 images, 1 distinct hash, every pair within 0 bits"
    # A review: "every pair within 1 bits".
    assert search_cli.main(["-s", "db.shelve", "--groups", "--max-distance", "1", "--html",
                            "groups.html"]) == 0
    capsys.readouterr()
    page = Path("groups.html").read_text()
    assert "2 groups, 5 images; in each group every pair of images is within 1 bit (hash" in page
    assert "0\tdata/haystack/B_duplicate.png" in out and "data/copies/A_same.png" in out
    with Image.open("groups.png") as sheet:
        assert sheet.width > 3 * 160 and sheet.height > 2 * 160  # two rows, three tiles wide

    assert search_cli.main(["-s", "db.shelve", "--groups", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert [sorted(g["relpaths"]) for g in groups] == [
        ["copies/B_same.png", "haystack/B.png", "haystack/B_duplicate.png"],
        ["copies/A_same.png", "haystack/A.png"]]
    assert groups[0]["distances"] == [0, 0, 0] and groups[0]["max_distance"] == 0
    # Each image's stored hash, so that a person can check every pair (a review).
    assert search_cli.main(["-s", "db.shelve", "--groups", "--json", "-m", "1"]) == 0
    for group in json.loads(capsys.readouterr().out):
        hashes = [int(value, 16) for value in group["hashes"]]
        assert len(hashes) == len(group["relpaths"]) == len(group["distances"])
        assert group["distances"] == [(hashes[0] ^ other).bit_count() for other in hashes]
        assert max((a ^ b).bit_count() for a in hashes for b in hashes) == group["max_distance"]


def test_groups_say_which_files_changed_since_they_were_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A review: text and JSON listed a replaced and a deleted file as before, silently (only the
    page said so); people script their clean-up from those."""
    build(tmp_path / "data", planted_duplicate=True)
    monkeypatch.chdir(tmp_path)
    os.remove("data/copies/A_same.png")
    Image.new("RGB", (160, 120), "red").save("data/haystack/B_duplicate.png")  # another picture
    capsys.readouterr()
    for extra in ([], ["--json"]):
        assert search_cli.main(["-s", "db.shelve", "--groups", *extra]) == 0
        captured = capsys.readouterr()
        assert captured.err.splitlines() == [
            f"search.py: data/{name}: changed or gone since it was indexed; run index.py before"
            " deleting anything from its group"
            for name in ("copies/A_same.png", "haystack/B_duplicate.png")]
    assert [group["changed"] for group in json.loads(captured.out)] == [
        ["haystack/B_duplicate.png"], ["copies/A_same.png"]]


def test_a_file_rewritten_in_place_with_its_size_and_mtime_is_said_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A review: a grouped file rewritten in place with another picture of the same byte size,
    its mtime put back (`touch -r`), was grouped by its old hash without a word (index.py reads
    it again: its ctime moved). A file whose ctime alone moved (a hard link made to it) is
    hashed again, found the same, and not said."""
    build(tmp_path / "data", planted_duplicate=True)
    monkeypatch.chdir(tmp_path)
    target = Path("data/haystack/B_duplicate.png")
    before = os.stat(target)
    with Image.open(target) as picture:
        size, mode = picture.size, picture.mode
    rewritten = io.BytesIO()
    Image.new(mode, size, "red").save(rewritten, "PNG")
    data = rewritten.getvalue()
    assert len(data) <= before.st_size
    with open(target, "r+b") as stream:  # in place: the same inode
        stream.write(data + b"\0" * (before.st_size - len(data)))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.link("data/copies/A_same.png", "A_same_link.png")  # its ctime moves, its picture stays
    capsys.readouterr()
    assert search_cli.main(["-s", "db.shelve", "--groups", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "search.py: data/haystack/B_duplicate.png: changed or gone since it was indexed; run"
        " index.py before deleting anything from its group"]
    assert [group["changed"] for group in json.loads(captured.out)] == [
        ["haystack/B_duplicate.png"], []]


def test_a_file_over_the_pixel_limit_whose_ctime_moved_is_not_said_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A second review: after `chmod -R`, a grouped image index.py had read under a larger
    --max-pixels was hashed again under search.py's limit, refused, and said "changed or gone"
    (with no option to give --groups a larger limit). Refused for a limit, it cannot be read to
    tell, and is not said; a file damaged in place is."""
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    picture = Image.effect_noise((300, 200), 60).convert("RGB")
    for name in ("big_a.png", "big_b.png"):
        picture.save(f"data/{name}")
    assert index_cli.main(["-d", "data", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    monkeypatch.setattr(search_cli, "DEFAULT_MAX_PIXELS", 1000)  # search.py's limit, lower
    for name in ("big_a.png", "big_b.png"):
        os.chmod(f"data/{name}", 0o600)  # the ctime moves, nothing else
    capsys.readouterr()
    assert search_cli.main(["-s", "db.shelve", "--groups", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert [group["changed"] for group in json.loads(captured.out)] == [[]]
    before = os.stat("data/big_b.png")
    data = Path("data/big_b.png").read_bytes()
    Path("data/big_b.png").write_bytes(data[:100] + bytes(len(data) - 100))  # damaged in place
    os.utime("data/big_b.png", ns=(before.st_atime_ns, before.st_mtime_ns))
    monkeypatch.setattr(search_cli, "DEFAULT_MAX_PIXELS", 10**8)
    assert search_cli.main(["-s", "db.shelve", "--groups", "--json"]) == 0
    assert [group["changed"] for group in json.loads(capsys.readouterr().out)] == [
        ["big_b.png"]]


def test_a_weakly_verified_group_is_said_and_nothing_in_it_marked(tmp_path: Path) -> None:
    """Different photographs taken alike pass verification with few inliers: the page says so,
    and the button marks no image verified with fewer than 20 inliers."""
    from neardup.evaluation.html import Item, groups_page

    items = []
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (64, 48), colour).save(tmp_path / name)
        items.append(Item(name, str(tmp_path / name), "first" if name == "a.png" else "matched"))
    weak = groups_page([items], store="db.shelve", dataset="data", recipe="dhash",
                       max_distance=4, verified=True, fewest_inliers=[12],
                       pair_inliers=[{("a.png", "b.png"): 12}])
    assert "weakly verified (a pair with only 12 inliers" in weak
    assert 'data-keep="0"' not in weak
    strong = groups_page([items], store="db.shelve", dataset="data", recipe="dhash",
                         max_distance=4, verified=True, fewest_inliers=[40],
                         pair_inliers=[{("a.png", "b.png"): 40}])
    assert "weakly verified" not in strong


def test_query_montage_survives_a_vanished_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    os.remove("data/copies/A_same.png")  # still in the store, gone from disk
    assert search_cli.main(["-s", "db.shelve", "-q", "data/haystack/A.png", "-q",
                            "data/haystack/B.png", "--montage", "sheet.png"]) == 0
    assert "wrote sheet.png" in capsys.readouterr().err
    with Image.open("sheet.png") as sheet:
        assert sheet.size[1] > 2 * 160


def test_evaluation_report_draws_the_misses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    build(tmp_path / "data", planted_duplicate=True)
    monkeypatch.chdir(tmp_path)
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv",
                            "--report", "report"]) == 0
    with Image.open(f"report/{report_stem('db.shelve')}-misses.png") as sheet:
        assert sheet.height > 2 * 160  # g1's missed mirror copy, g2's planted duplicate


def test_groups_beyond_a_quarter_of_the_bits_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A review: --groups -m 24 on 9,226 images took 32 s and 1 GB, -m 32 was still running
    after 240 s at 6.8 GB, and -m 64 was accepted: past a quarter of the bits nearly every pair
    of photos matches. Refused in one line (the API raises ValueError), up to it answered."""
    path = str(tmp_path / "s")
    synthetic_store(path)
    assert search_cli.main(["-s", path, "--groups", "-m", "17"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (  # after a line: its folder /d is gone
        "search.py: error: --groups at 17 bits of 64: past a quarter of the bits (16) nearly"
        " every pair of photos is within reach, and the groups take minutes and gigabytes;"
        " use a smaller --max-distance")
    from neardup.api import open_store

    with open_store(path) as store, pytest.raises(ValueError, match="past a quarter"):
        store.groups(64)
    assert search_cli.main(["-s", path, "--groups", "-m", "16"]) == 0
