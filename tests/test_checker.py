"""search.py --stdin and --serve, driven for real: a pipe, and an HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from neardup.cli import index as index_cli

from .conftest import PROJECT_ROOT
from .imagegen import make_tree, save, textured

SEARCH = [sys.executable, str(PROJECT_ROOT / "search.py"), "-s", "db.shelve"]


def index_images() -> None:
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0


def read_line(stream, timeout: float = 30) -> str:  # type: ignore[no-untyped-def]
    """One line from a child's pipe, or fail instead of hanging if it never comes."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no answer within the time limit (not flushed?)"
    return stream.readline()


@pytest.fixture()
def store(in_tmp: Path) -> Path:
    make_tree("images", 6)
    index_images()
    return in_tmp


class TestStdin:
    def test_answers_each_line_at_once_and_sees_new_commits(self, store: Path) -> None:
        with subprocess.Popen(SEARCH + ["--stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as checker:
            assert checker.stdin and checker.stdout
            checker.stdin.write("images/cat0/image_0000.jpg\n")
            checker.stdin.flush()
            answer = json.loads(read_line(checker.stdout))
            assert answer["query"] == "images/cat0/image_0000.jpg"
            assert [m["relpath"] for m in answer["matches"]] == ["cat0/image_0000.jpg"]

            checker.stdin.write("images/missing.jpg\n\n")  # a bad path, and a blank line ignored
            checker.stdin.flush()
            assert json.loads(read_line(checker.stdout)) == {
                "query": "images/missing.jpg", "error": "file not found (deleted or a broken link?)"}

            # index.py commits new images while the checker runs; no restart needed.
            save(textured(77), "images/new/arrived.jpg", quality=92)
            index_images()
            checker.stdin.write("images/new/arrived.jpg\n")
            checker.stdin.flush()
            answer = json.loads(read_line(checker.stdout))
            assert answer["matches"][0]["relpath"] == "new/arrived.jpg"

            checker.stdin.close()
            assert checker.wait(timeout=30) == 0
            assert checker.stderr and checker.stderr.read() == ""


@pytest.fixture()
def server(store: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    command = SEARCH + ["--serve", "127.0.0.1:0", "--max-upload-bytes", "200000"]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as process:
        assert process.stderr
        line = read_line(process.stderr)
        assert line.startswith("search.py: serving on http://127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        try:
            yield port, process
        finally:
            if process.poll() is None:
                process.kill()


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


class TestHttp:
    def test_health_search_and_errors(self, server: tuple[int, subprocess.Popen]) -> None:
        port, _ = server
        status, health = request(port, "GET", "/health")
        assert status == 200 and health["status"] == "ok" and health["images"] == 6

        photo = Path("images/cat1/image_0001.jpg").read_bytes()
        status, answer = request(port, "POST", "/search", photo)
        assert status == 200
        assert answer["matches"][0] == {**answer["matches"][0], "relpath": "cat1/image_0001.jpg",
                                        "distance": 0}

        status, answer = request(port, "POST", "/search?max_distance=0", photo)
        assert status == 200 and len(answer["matches"]) == 1

        status, answer = request(port, "POST", "/search", b"this is not a picture")
        assert status == 400 and answer["error"].startswith("not an image")
        status, answer = request(port, "POST", "/search", b"")
        assert status == 400 and answer["error"] == "empty file"
        status, answer = request(port, "POST", "/search", photo[: len(photo) // 2])
        assert status == 400 and answer["error"] == "truncated image"
        status, answer = request(port, "POST", "/search?max_distance=lots", photo)
        assert status == 400 and "max_distance" in answer["error"]
        status, _ = request(port, "GET", "/elsewhere")
        assert status == 404

    def test_an_oversize_body_is_refused_before_it_is_read(
        self, server: tuple[int, subprocess.Popen]
    ) -> None:
        port, _ = server
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            raw.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
            chunks = []
            while chunk := raw.recv(65536):  # the server closes the connection after replying
                chunks.append(chunk)
            reply = b"".join(chunks).decode()
        assert reply.startswith("HTTP/1.1 413")
        assert "over the limit of 200,000" in reply
        status, _ = request(port, "GET", "/health")  # and the server is still there
        assert status == 200

    def test_concurrent_clients_each_get_their_own_answer(
        self, server: tuple[int, subprocess.Popen]
    ) -> None:
        port, _ = server
        photos = {str(p.relative_to("images")): p.read_bytes() for p in Path("images").rglob("*.jpg")}
        failures: list[str] = []

        def client(offset: int) -> None:
            names = sorted(photos)
            for step in range(12):
                name = names[(offset + step) % len(names)]
                status, answer = request(port, "POST", "/search", photos[name])
                if status != 200 or answer["matches"][0]["relpath"] != name:
                    failures.append(f"{name}: {status} {answer}")

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert failures == []

    def test_new_commits_are_seen_and_sigterm_stops_cleanly(
        self, server: tuple[int, subprocess.Popen]
    ) -> None:
        port, process = server
        save(textured(88), "images/new/arrived.jpg", quality=92)
        index_images()
        status, answer = request(port, "POST", "/search",
                                 Path("images/new/arrived.jpg").read_bytes())
        assert status == 200 and answer["matches"][0]["relpath"] == "new/arrived.jpg"
        assert request(port, "GET", "/health")[1]["images"] == 7

        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stderr and "Traceback" not in process.stderr.read()

    def test_a_port_in_use_is_one_line(self, store: Path) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = subprocess.run(SEARCH + ["--serve", f"127.0.0.1:{port}"], capture_output=True,
                                    text=True, timeout=30)
        assert result.returncode == 2
        assert result.stderr.startswith(f"search.py: error: cannot serve on 127.0.0.1:{port}:")
        assert len(result.stderr.splitlines()) == 1
