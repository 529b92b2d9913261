"""Where images come from: archives from anyone, and the CALTECH-101 download (from 127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from neardup.cli import gather as gather_cli
from neardup.sources.dataset import read_manifest

from .imagegen import make_tree


def caltech_like_zip(tmp: Path) -> bytes:
    """A small archive laid out like the official one: a zip holding 101_ObjectCategories.tar.gz."""
    make_tree(str(tmp / "101_ObjectCategories"), 12, folders=3)
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as bundle:
        bundle.add(tmp / "101_ObjectCategories", arcname="101_ObjectCategories")
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as bundle:
        bundle.writestr("caltech-101/101_ObjectCategories.tar.gz", inner.getvalue())
        bundle.writestr("caltech-101/Annotations.tar", b"not needed")
        bundle.writestr("caltech-101/show_annotation.m", b"% matlab")
    return outer.getvalue()


class ArchiveServer:
    """Serves one file on 127.0.0.1 with Range support; can drop the first response half way."""

    def __init__(self, payload: bytes, drop_first: bool = False) -> None:
        self.payload = payload
        self.drop_first = drop_first
        self.requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
                server.requests.append(self.headers.get("Range"))
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(payload) - 1}/{len(payload)}")
                else:
                    self.send_response(200)
                body = payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop_first and len(server.requests) == 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/caltech-101.zip?download=1"

    def __enter__(self) -> ArchiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def payload(in_tmp: Path) -> bytes:
    return caltech_like_zip(in_tmp / "build")


def gather_download(url: str, md5: str, *extra: str) -> int:
    return gather_cli.main(["--output", "out", "--cache-dir", "cache", "--url", url, "--md5", md5,
                            "--samples", "2", "--seed", "1", "-q", *extra])


class TestDownload:
    def test_downloads_verifies_unpacks_and_gathers(self, payload: bytes) -> None:
        md5 = hashlib.md5(payload).hexdigest()
        with ArchiveServer(payload) as server:
            assert gather_download(server.url, md5) == 0
        assert Path("cache/caltech-101.zip").read_bytes() == payload
        rows = read_manifest("out/manifest.csv")
        assert len([row for row in rows if row.file.startswith("haystack/")]) == 12
        assert all("101_ObjectCategories" in row.source for row in rows if row.role != "copy")

        # A second run reuses the verified archive and its unpacked copy: no request at all.
        with ArchiveServer(payload) as server:
            assert gather_download(server.url, md5, "--force") == 0
            assert server.requests == []

    def test_an_interrupted_download_resumes(self, payload: bytes) -> None:
        md5 = hashlib.md5(payload).hexdigest()
        with ArchiveServer(payload, drop_first=True) as server:
            assert gather_download(server.url, md5) == 0
            assert server.requests[0] is None
            assert server.requests[1] is not None and server.requests[1].startswith("bytes=")
            assert int(server.requests[1].removeprefix("bytes=").rstrip("-")) > 0
        assert Path("cache/caltech-101.zip").read_bytes() == payload
        assert not Path("cache/caltech-101.zip.part").exists()

    def test_a_wrong_checksum_is_refused_before_extraction(
        self, payload: bytes, capsys: pytest.CaptureFixture
    ) -> None:
        with ArchiveServer(payload) as server:
            assert gather_download(server.url, "0" * 32) == 2
            assert len(server.requests) == 3  # a clean retry each time, then it gives up
        assert "does not match MD5" in capsys.readouterr().err
        assert not Path("cache/unpacked").exists() and not Path("out").exists()
        assert not Path("cache/caltech-101.zip").exists()

    def test_offline_is_a_clear_error(self, in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        assert gather_download(f"http://127.0.0.1:{port}/x.zip", "0" * 32) == 2
        err = capsys.readouterr().err
        assert err.startswith("gather.py: error: cannot download") and "--source" in err
        assert len(err.splitlines()) == 1


class TestLocalSources:
    @pytest.mark.parametrize("kind", ["zip", "tar.gz"])
    def test_an_archive_of_a_folder(self, in_tmp: Path, kind: str) -> None:
        make_tree("pictures/photos", 6)
        if kind == "zip":
            with zipfile.ZipFile("photos.zip", "w") as bundle:
                for path in Path("pictures").rglob("*.jpg"):
                    bundle.write(path, path.relative_to("pictures"))
        else:
            with tarfile.open("photos.tar.gz", "w:gz") as bundle:
                bundle.add("pictures/photos", arcname="photos")
        name = f"photos.{kind}"
        assert gather_cli.main(["--source", name, "-o", "out", "--cache-dir", "cache",
                                "--samples", "1", "--seed", "1", "-q"]) == 0
        assert len([r for r in read_manifest("out/manifest.csv") if r.role != "copy"]) == 6

    def test_the_official_layout_from_a_local_zip(self, payload: bytes) -> None:
        Path("caltech-101.zip").write_bytes(payload)
        assert gather_cli.main(["--source", "caltech-101.zip", "-o", "out", "--cache-dir",
                                "cache", "--samples", "2", "--seed", "1", "-q"]) == 0
        assert len([r for r in read_manifest("out/manifest.csv") if r.role != "copy"]) == 12


def test_a_source_of_links_to_folders_says_they_are_not_followed(
        in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
    make_tree("real", 6, folders=2)
    Path("links").mkdir()
    for folder in sorted(Path("real").iterdir()):
        (Path("links") / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    assert gather_cli.main(["--source", "links", "-o", "out", "--seed", "1", "--samples", "1",
                            "-q"]) == 2
    error = capsys.readouterr().err.strip()
    names = ", ".join(sorted(folder.name for folder in Path("real").iterdir()))
    assert error == ("gather.py: error: links: holds no images (it holds links to folders, which"
                     f" are not followed: {names})")
