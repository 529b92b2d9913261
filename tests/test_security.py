"""Untrusted input that must never run code or reach outside its folder.

Stores from someone else (planted pickles, escaping paths), and archives from anyone (escaping
members, links, devices, bombs). The download's checksum-before-unpacking is in test_sources.py.
"""

from __future__ import annotations

import io
import os
import pickle
import sqlite3
import stat
import tarfile
import zipfile
from contextlib import closing
from pathlib import Path

import pytest

from neardup.cli import search as search_cli
from neardup.core.search import resolve_stored_path
from neardup.core.store import Store, safe_loads
from neardup.errors import DatasetError
from neardup.sources.archives import Limits, extract

from .test_store import H1, open_store


class TestUntrustedValues:
    def plant(self, tmp_path: Path, value: bytes) -> None:
        open_store(tmp_path).close()
        with closing(sqlite3.connect(tmp_path / "db.shelve")) as connection, connection:
            connection.execute("INSERT INTO Dict (key, value) VALUES (?, ?)", (H1.encode(), value))

    def test_a_pickle_that_would_run_a_command_is_refused(self, tmp_path: Path) -> None:
        witness = tmp_path / "pwned"

        class Exploit:
            def __reduce__(self):
                return (os.system, (f"touch {witness}",))

        self.plant(tmp_path, pickle.dumps(Exploit()))
        lines: list[str] = []
        with Store.open_for_reading(str(tmp_path / "db.shelve"), report=lines.append) as store:
            assert store.bucket(H1) == []  # skipped, with a line
        assert len(lines) == 1 and "refused to load global" in lines[0] and "skipped" in lines[0]
        assert not witness.exists()

    def test_a_value_that_is_not_a_list_of_paths_is_skipped(self, tmp_path: Path) -> None:
        self.plant(tmp_path, pickle.dumps({"not": "a list"}))
        lines: list[str] = []
        with Store.open_for_reading(str(tmp_path / "db.shelve"), report=lines.append) as store:
            assert store.bucket(H1) == []
            assert store.bucket(H1) == []
        assert lines == [f"{tmp_path / 'db.shelve'}: bucket {H1}: expected a list of paths,"
                         " found dict; skipped"]  # once, however often it is read

    def test_plain_data_still_loads(self) -> None:
        assert safe_loads(pickle.dumps(["a", "b"], protocol=4)) == ["a", "b"]


class TestStoredPathsStayInsideTheDataset:
    @pytest.mark.parametrize(
        "relpath", ["../etc/passwd", "/etc/passwd", "a/../../b", "", "a//b", "./a", "a\0b"]
    )
    def test_escaping_paths_are_refused(self, relpath: str) -> None:
        assert resolve_stored_path("/data", relpath) is None

    @pytest.mark.parametrize("relpath", ["cat/x y.jpg", "a\\..\\b", "back\\slash.jpg",
                                         "new\nline.jpg", os.fsdecode(b"caf\xe9.jpg")])
    def test_ordinary_paths_join(self, relpath: str) -> None:
        # A backslash is an ordinary character in a POSIX name: "a\..\b" is one file in /data.
        assert resolve_stored_path("/data", relpath) == os.path.join("/data", *relpath.split("/"))


def test_a_planted_escaping_path_is_not_shown(
    indexed: Path, capsys: pytest.CaptureFixture
) -> None:
    with Store.open_for_reading("db.shelve") as store:
        key = next(iter(store.shelf.keys()))
    with closing(sqlite3.connect("db.shelve")) as connection, connection:
        connection.execute("UPDATE Dict SET value = ? WHERE key = ?",
                           (pickle.dumps(["../../etc/passwd"]), key.encode()))
    search_cli.main(["-s", "db.shelve", "-q", "images", "-m", "64"])
    captured = capsys.readouterr()
    assert "etc/passwd" not in captured.out
    assert "points outside the dataset" in captured.err


def zip_with(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def tar_with(add: callable) -> bytes:  # type: ignore[valid-type]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        add(bundle)
    return buffer.getvalue()


def tar_member(bundle: tarfile.TarFile, name: str, data: bytes = b"x", **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    bundle.addfile(info, io.BytesIO(data) if info.isfile() else None)


class TestHostileArchives:
    @pytest.mark.parametrize(
        ("suffix", "content", "reason"),
        [
            ("zip", lambda: zip_with({"ok.txt": b"1", "../escape.txt": b"2"}), "escape"),
            ("zip", lambda: zip_with({"/abs/escape.txt": b"2"}), "absolute"),
            ("zip", lambda: zip_with({"ok.txt": b"1"}, symlink="link"), "a link"),
            ("tar.gz", lambda: tar_with(lambda b: tar_member(b, "../escape.txt")), "escape"),
            ("tar.gz", lambda: tar_with(lambda b: tar_member(b, "/abs.txt")), "absolute"),
            ("tar.gz", lambda: tar_with(lambda b: tar_member(
                b, "link", type=tarfile.SYMTYPE, linkname="/etc/passwd")), "a link"),
            ("tar.gz", lambda: tar_with(lambda b: tar_member(
                b, "hard", type=tarfile.LNKTYPE, linkname="../x")), "a link"),
            ("tar.gz", lambda: tar_with(lambda b: tar_member(
                b, "dev", type=tarfile.CHRTYPE)), "special file"),
        ],
        ids=["zip-dotdot", "zip-absolute", "zip-symlink", "tar-dotdot", "tar-absolute",
             "tar-symlink", "tar-hardlink", "tar-device"],
    )
    def test_escaping_members_are_refused_and_nothing_is_written(
        self, tmp_path: Path, suffix: str, content: callable, reason: str  # type: ignore[valid-type]
    ) -> None:
        archive = tmp_path / f"evil.{suffix}"
        archive.write_bytes(content())
        target = tmp_path / "deep" / "target"
        with pytest.raises(DatasetError, match=reason):
            extract(str(archive), str(target))
        assert not target.exists()
        assert sorted(os.listdir(tmp_path / "deep")) == []
        assert not (tmp_path / "escape.txt").exists()

    def test_a_zip_bomb_is_stopped_by_the_size_bound(self, tmp_path: Path) -> None:
        archive = tmp_path / "bomb.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            bundle.writestr("zeros.bin", b"\0" * 5_000_000)  # compresses to a few KB
        assert archive.stat().st_size < 20_000
        with pytest.raises(DatasetError, match="unpacks to more than"):
            extract(str(archive), str(tmp_path / "out"), Limits(max_bytes=1_000_000))
        assert not (tmp_path / "out").exists()

    def test_too_many_members_are_refused(self, tmp_path: Path) -> None:
        archive = tmp_path / "many.zip"
        archive.write_bytes(zip_with({f"f{n}.txt": b"" for n in range(50)}))
        with pytest.raises(DatasetError, match="more than 20 members"):
            extract(str(archive), str(tmp_path / "out"), Limits(max_members=20))

    def test_a_damaged_archive_is_a_clear_error(self, tmp_path: Path) -> None:
        archive = tmp_path / "broken.zip"
        archive.write_bytes(b"PK\x03\x04 this is not really a zip")
        with pytest.raises(DatasetError, match="not a valid zip"):
            extract(str(archive), str(tmp_path / "out"))

