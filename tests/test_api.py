"""The Python API: what a service or a script calls instead of running the commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

import neardup
from neardup.cli import search as search_cli

from .conftest import PROJECT_ROOT
from .imagegen import make_tree, save, textured
from .test_evaluation import build


@pytest.fixture()
def library(in_tmp: Path) -> Path:
    """Six distinct photos, a resized copy of the first, and an exact copy of the second."""
    make_tree("photos", 6)
    save(textured(0).resize((101, 67)), "photos/copy_of_0.jpg", quality=90)
    (in_tmp / "photos" / "again").mkdir()
    (in_tmp / "photos" / "again" / "image_0001.jpg").write_bytes(
        (in_tmp / "photos" / "cat1" / "image_0001.jpg").read_bytes())
    summary = neardup.index_folder(in_tmp / "photos", in_tmp / "photos.shelve", jobs=1)
    assert (summary.indexed, summary.failed, summary.total) == (8, 0, 8)
    return in_tmp


def test_search_by_path_bytes_and_pil_image(library: Path) -> None:
    query = library / "photos" / "cat0" / "image_0000.jpg"
    with neardup.open_store(library / "photos.shelve") as store:
        assert len(store) == 8
        assert store.dataset == str(library / "photos")
        by_path = store.search(query)
        assert [(f.relpath, f.distance) for f in by_path][0] == ("cat0/image_0000.jpg", 0)
        assert "copy_of_0.jpg" in [f.relpath for f in by_path]
        assert by_path[0].path == str(query)
        assert store.search(query.read_bytes()) == by_path  # decoded the same way as the file
        with Image.open(query) as picture:
            from_pil = store.search(picture)
        assert {f.relpath for f in from_pil} == {f.relpath for f in by_path}
        assert store.search(str(query), max_distance=0)[0].distance == 0


def test_mirror_and_low_information(library: Path) -> None:
    flipped = ImageOps.mirror(textured(3))
    with neardup.open_store(library / "photos.shelve") as store:
        assert store.search(flipped) == []
        assert [(f.relpath, f.mirrored) for f in store.search(flipped, mirror=True)] == [
            ("cat1/image_0003.jpg", True)]
        # Not asked of a hash-only store without mirror=True; the image itself is not mirrored.
        assert [found.mirrored for found in store.search(textured(3))] == [None]
        assert [found.mirrored for found in store.search(textured(3), mirror=True)] == [False]
        blank = Image.new("RGB", (64, 64), "white")
        assert store.search(blank, max_distance=64) == []  # blank matches nothing by default


def test_groups_have_relative_paths_and_distances(library: Path) -> None:
    with neardup.open_store(library / "photos.shelve") as store:
        groups = store.groups()
    by_members = {frozenset(g.relpaths): g for g in groups}
    exact = by_members[frozenset({"again/image_0001.jpg", "cat1/image_0001.jpg"})]
    resized = by_members[frozenset({"cat0/image_0000.jpg", "copy_of_0.jpg"})]
    assert len(groups) == 2
    assert exact.distances == (0, 0) and exact.distinct_hashes == 1 and exact.max_distance == 0
    assert resized.distances[0] == 0 and resized.distances[1] == resized.max_distance <= 4
    assert {Path(p).relative_to(library / "photos").as_posix() for p in resized.paths} == {
        "cat0/image_0000.jpg", "copy_of_0.jpg"}


def test_evaluate(tmp_path: Path) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    with neardup.open_store(tmp_path / "db.shelve") as store:
        evaluation = store.evaluate(tmp_path / "data" / "manifest.csv")
    assert evaluation.recommended == 0 and evaluation.copies == 3


def test_errors_are_the_documented_ones(library: Path) -> None:
    with neardup.open_store(library / "photos.shelve") as store:
        with pytest.raises(neardup.ImageError) as bad:
            store.search(b"not an image at all")
        assert bad.value.path == "upload" and "not an image" in bad.value.reason
        with pytest.raises(neardup.ImageError, match="empty file"):
            store.search(b"")
        with pytest.raises(neardup.ImageError, match="file not found"):
            store.search(library / "missing.jpg")
        with pytest.raises(ValueError, match="outside 0..64"):
            store.search(b"x", max_distance=65)
    with pytest.raises(neardup.StoreError, match="no such store"):
        neardup.open_store(library / "nothing.shelve")
    with pytest.raises(neardup.StoreError):  # another recipe than the store's
        neardup.index_folder(library / "photos", library / "photos.shelve", algorithm="phash")


def test_a_pil_image_in_any_mode_is_searched_or_refused_as_an_image_error(
        library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: a CIELab image raised ValueError from a conversion to gray."""
    from neardup.core import hashing

    lab = textured(0).convert("LAB")
    with neardup.open_store(library / "photos.shelve") as store:
        # Its gray levels differ from the RGB photo's by rounding: a bit at most.
        assert {f.relpath: f.distance for f in store.search(lab)}["cat0/image_0000.jpg"] <= 1
        monkeypatch.setattr(hashing, "COLOUR_MODES", hashing.COLOUR_MODES - {"LAB"})
        with pytest.raises(neardup.ImageError) as refused:
            store.search(lab)
        assert str(refused.value) == "image: unsupported colour mode LAB"
    neardup.index_folder(library / "photos", library / "exact.shelve", exact=True, jobs=1)
    with neardup.open_store(library / "exact.shelve") as store:
        with pytest.raises(neardup.ImageError) as refused:
            store.search(textured(0).convert("La"))
        assert refused.value.reason == ("unsupported colour mode La with --exact (plain ImageHash"
                                        " cannot read it)")


def test_a_pil_image_without_pixels_is_an_image_error(library: Path) -> None:
    """A review: a 0 x 0 PIL image raised IndexError from the resampling, where a 0 x 0 file is
    an ImageError."""
    with neardup.open_store(library / "photos.shelve") as store:
        for size in ((0, 0), (0, 7), (7, 0)):
            for call in (store.search, store.hash):
                with pytest.raises(neardup.ImageError) as refused:
                    call(Image.new("RGB", size))
                assert str(refused.value) == f"image: has no pixels ({size[0]} x {size[1]})"


def test_a_store_sees_what_is_indexed_after_it_was_opened(library: Path) -> None:
    with neardup.open_store(library / "photos.shelve") as store:
        new = textured(99)
        assert store.search(new) == []
        save(new, str(library / "photos" / "new.png"))
        neardup.index_folder(library / "photos", library / "photos.shelve", jobs=1)
        assert [f.relpath for f in store.search(new)] == ["new.png"]


def test_a_store_follows_its_file_replaced_deleted_or_copied_over(library: Path) -> None:
    """A hostile review: a script holding open_store() went on answering from the old file after
    the README's rebuild (index.py -s new.shelve && mv new.shelve db.shelve), and after rm;
    the checker behind --stdin and --serve reopened. Now the API does too, after a chdir as
    well, and a store that is gone is a StoreError (one line), never an answer."""
    import shutil

    query = library / "photos" / "cat0" / "image_0000.jpg"
    shutil.copytree(library / "photos", library / "fewer")
    shutil.rmtree(library / "fewer" / "cat0")
    os.remove(library / "fewer" / "copy_of_0.jpg")
    neardup.index_folder(library / "fewer", library / "fewer.shelve", jobs=1)
    shutil.copy(library / "photos.shelve", library / "backup.shelve")
    with neardup.open_store("photos.shelve") as store:
        assert {f.relpath for f in store.search(query)} == {"cat0/image_0000.jpg", "copy_of_0.jpg"}
        assert len(store) == 8
        os.replace(library / "fewer.shelve", library / "photos.shelve")  # the rebuild moved over
        assert store.search(query) == [] and len(store) == 4
        os.chdir(library / "photos")
        shutil.copy(library / "backup.shelve", library / "photos.shelve")  # copied over in place
        assert {f.relpath for f in store.search(query)} == {"cat0/image_0000.jpg", "copy_of_0.jpg"}
        os.remove(library / "photos.shelve")
        with pytest.raises(neardup.StoreError, match="photos.shelve: the store file was replaced,"
                           " deleted or rewritten since it was opened, and cannot be opened"
                           " again"):
            store.search(query)
        with pytest.raises(neardup.StoreError):
            len(store)


def test_one_store_shared_by_threads_follows_its_file_replaced_meanwhile(library: Path) -> None:
    """A review: threads sharing one ImageStore (a web application's workers) failed with
    SQLite's "objects created in a thread can only be used in that same thread" once one of
    them had opened a replaced store again. Every answer is one of the two stores', none is an
    error, and once a replace is done the next answer is from the new file."""
    import shutil
    import threading

    query = library / "photos" / "cat0" / "image_0000.jpg"
    shutil.copytree(library / "photos", library / "fewer")
    shutil.rmtree(library / "fewer" / "cat0")
    neardup.index_folder(library / "fewer", library / "fewer.shelve", jobs=1)
    shutil.copy(library / "photos.shelve", library / "all.shelve")
    both = {frozenset({"cat0/image_0000.jpg", "copy_of_0.jpg"}), frozenset({"copy_of_0.jpg"})}
    seen: list[frozenset[str]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def searching() -> None:
        while not stop.is_set():
            try:
                seen.append(frozenset(f.relpath for f in store.search(query)))
            except BaseException as error:  # noqa: BLE001 - any of them is the failure
                failures.append(error)
                return

    with neardup.open_store("photos.shelve") as store:
        threads = [threading.Thread(target=searching) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            for turn in range(40):
                source = "fewer.shelve" if turn % 2 == 0 else "all.shelve"
                shutil.copy(library / source, library / "next.shelve")
                os.replace(library / "next.shelve", library / "photos.shelve")
                assert frozenset(f.relpath for f in store.search(query)) == (
                    {"copy_of_0.jpg"} if source == "fewer.shelve"
                    else {"cat0/image_0000.jpg", "copy_of_0.jpg"})
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
    assert failures == [] and seen and set(seen) <= both


@pytest.mark.parametrize("other", ["256 bits", "phash", "features", "hash only"])
def test_a_store_replaced_by_another_recipe_while_the_query_is_hashed_answers_its_way(
        library: Path, monkeypatch: pytest.MonkeyPatch, other: str) -> None:
    """A hostile review: search() hashed the query with the old store's recipe and looked it up
    in the store that replaced it meanwhile: a ValueError against 256-bit hashes, a wrong empty
    answer against pHash, an AssertionError from a store with features replaced by a hash-only
    one, unverified answers the other way. The query is hashed again the new store's way."""
    import shutil

    if other in ("features", "hash only"):
        pytest.importorskip("cv2", reason="local features need the features extra (OpenCV)")
    options = {"256 bits": {"hash_size": 16}, "phash": {"algorithm": "phash"},
               "features": {"features": True}, "hash only": {}}[other]
    neardup.index_folder(library / "photos", library / "other.shelve", jobs=1, **options)
    if other == "hash only":  # the one open has features, the one coming does not
        neardup.index_folder(library / "photos", library / "features.shelve", jobs=1,
                             features=True)
        shutil.copy(library / "features.shelve", library / "photos.shelve")
    query = library / "photos" / "cat0" / "image_0000.jpg"
    with neardup.open_store(library / "photos.shelve") as store:
        hashes = store._hashes
        replaced = []

        def hashing_while_replaced(*args: object, **kwargs: object) -> object:
            hashed = hashes(*args, **kwargs)  # type: ignore[arg-type]
            if not replaced:  # once, between hashing the query and searching
                replaced.append(True)
                os.replace(library / "other.shelve", library / "photos.shelve")
            return hashed

        monkeypatch.setattr(store, "_hashes", hashing_while_replaced)
        found = store.search(query)
        assert replaced
        assert [(f.relpath, f.distance) for f in found][0] == ("cat0/image_0000.jpg", 0)
        assert {f.relpath for f in found} >= {"cat0/image_0000.jpg", "copy_of_0.jpg"}
        assert (found[0].verified is True) == (other == "features")


def test_a_bucket_written_with_the_triggers_dropped_and_made_again_is_found(
        library: Path) -> None:
    """A hostile review: another program dropped the change log's triggers, wrote a bucket and
    made the triggers again between two calls: the generation had not moved, so an open store
    kept its search index, and searches within a distance missed the bucket for good."""
    import pickle
    import sqlite3
    from contextlib import closing

    picture = save(textured(500), "photos/extra/foreign.jpg", quality=92)
    with neardup.open_store(library / "photos.shelve") as store:
        key = store.hash(picture)
        assert store.search(picture) == []
        with closing(sqlite3.connect(library / "photos.shelve")) as database, database:
            triggers = database.execute("SELECT name, sql FROM sqlite_master WHERE type ="
                                        " 'trigger' AND tbl_name = 'Dict'").fetchall()
            for name, _sql in triggers:
                database.execute(f"DROP TRIGGER {name}")
            database.execute("INSERT INTO Dict (key, value) VALUES (?, ?)",
                             (key.encode(), pickle.dumps(["extra/foreign.jpg"])))
            for _name, sql in triggers:
                database.execute(sql)
        assert [(f.relpath, f.distance) for f in store.search(picture)] == [
            ("extra/foreign.jpg", 0)]


def test_groups_name_files_in_the_folder_of_the_store_grouped(
        library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile review: groups() resolved its paths after reading the store, under the folder
    of a store that had replaced it meanwhile."""
    import shutil
    import sqlite3
    from contextlib import closing

    import neardup.api as api_module

    shutil.copy(library / "photos.shelve", library / "elsewhere.shelve")
    with closing(sqlite3.connect(library / "elsewhere.shelve")) as database, database:
        database.execute("UPDATE neardup_meta SET value = ? WHERE name = 'dataset_root'",
                         (str(library / "elsewhere"),))
    grouping = api_module.near_duplicate_groups

    def grouping_while_replaced(*args: object, **kwargs: object) -> object:
        groups = grouping(*args, **kwargs)  # type: ignore[arg-type]
        os.replace(library / "elsewhere.shelve", library / "photos.shelve")
        return groups

    monkeypatch.setattr(api_module, "near_duplicate_groups", grouping_while_replaced)
    with neardup.open_store(library / "photos.shelve") as store:
        groups = store.groups()
    assert groups and all(path.startswith(str(library / "photos") + os.sep)
                          for group in groups for path in group.paths)


def test_a_closed_store_says_so(library: Path) -> None:
    """Used after close() (or its with block), a store raised SQLite's "cannot operate on a
    closed database" as if the store could not be read."""
    store = neardup.open_store(library / "photos.shelve")
    store.close()
    store.close()  # twice is harmless
    for call in (lambda: store.search(library / "photos" / "cat0" / "image_0000.jpg"),
                 lambda: len(store), lambda: store.groups(), lambda: store.dataset):
        with pytest.raises(neardup.StoreError, match=r"photos.shelve: this store was closed"
                           r" \(close\(\) or the end of its with block\); open it again"):
            call()


def test_the_groups_command_uses_the_api(
    library: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert search_cli.main(["-s", "photos.shelve", "--groups"]) == 0
    out = capsys.readouterr().out
    assert "photos/again/image_0001.jpg" in out and "photos/copy_of_0.jpg" in out


def test_import_is_light_and_typed() -> None:
    probe = subprocess.run([sys.executable, "-c", "import sys, neardup;"
                            " print('PIL' in sys.modules, 'numpy' in sys.modules)"],
                           capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert probe.stdout.split() == ["False", "False"]
    assert (PROJECT_ROOT / "neardup" / "py.typed").exists()


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_a_script_without_a_main_guard_indexes_with_worker_processes(in_tmp: Path,
                                                                     how: str) -> None:
    """multiprocessing re-runs the caller's script in each worker; ours must not need it."""
    make_tree(str(in_tmp / "photos"), 6)
    script = ("import neardup\n"
              "summary = neardup.index_folder('photos', 'db.shelve', jobs=2)\n"
              "print(summary.total)\n")
    Path("unguarded.py").write_text(script)
    env = {"PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "unguarded.py"] if how == "script" else [sys.executable, "-"]
    result = subprocess.run(command, input=script if how == "stdin" else None,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "6"
    assert "Traceback" not in result.stderr


def test_search_takes_an_open_file_and_checks_the_distance_type(in_tmp: Path) -> None:
    import io

    make_tree(str(in_tmp / "photos"), 4)
    neardup.index_folder("photos", "db.shelve", jobs=1)
    query = in_tmp / "photos" / "cat0" / "image_0000.jpg"
    with neardup.open_store("db.shelve") as store:
        by_path = store.search(query)
        with open(query, "rb") as opened:
            assert store.search(opened) == by_path
        assert store.search(io.BytesIO(query.read_bytes())) == by_path
        for wrong in ("4", 4.5, True):
            with pytest.raises(TypeError, match="max_distance must be a whole number"):
                store.search(query, max_distance=wrong)  # type: ignore[arg-type]


def test_every_public_annotation_resolves() -> None:
    """A review: typing.get_type_hints() raised NameError on index_folder (a quoted name inside
    the Hasher alias) and on ImageStore.evaluate (a name imported for type checkers only), which
    breaks the tools built on it (sphinx-autodoc-typehints, typeguard, pydantic)."""
    import inspect
    import typing

    import neardup

    checked = [neardup.index_folder, neardup.open_store]
    checked += [member for name, member in inspect.getmembers(neardup.ImageStore)
                if callable(member) and not name.startswith("_")]
    checked += [neardup.Found, neardup.DuplicateGroup]
    for function in checked:
        typing.get_type_hints(function)  # raises on a name that does not resolve
