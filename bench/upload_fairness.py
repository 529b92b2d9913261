#!/usr/bin/env python3
"""A light client beside heavy ones: how long its uploads wait for the decode threads.

    python bench/upload_fairness.py [--dataset DIR] [--seconds 15] [--rounds 3] [--baseline REV]

Four client addresses (127.0.0.2 to .5, two connections each) re-send a 7000 x 7000 gray PNG
(about 50 KB, under the pixel limit, about half a second to decode) as fast as they are answered;
a fifth (127.0.0.9) sends a CALTECH-101 photo every 0.5 s. The store holds the first 300 photos
of the dataset. Rows, per round: the light client's answers and their times (median, longest),
and the heavy addresses' answers in the same time. With --baseline, that revision (exported from
git, its own store made by its own index.py) is measured in the same run, rounds alternating.
Loopback addresses other than 127.0.0.1 need Linux.
"""

from __future__ import annotations

import argparse
import http.client
import io
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from _setup import DEFAULT_DATASET, ROOT, index_completely, require_dataset  # noqa: F401
from checker_speed import export_baseline  # noqa: E402
from PIL import Image  # noqa: E402

HEAVY = [f"127.0.0.{n}" for n in (2, 3, 4, 5)]
LIGHT = "127.0.0.9"
PHOTOS = 300


class From(http.client.HTTPConnection):
    def __init__(self, port: int, address: str) -> None:
        super().__init__("127.0.0.1", port, timeout=120, source_address=(address, 0))


def post(port: int, address: str, body: bytes) -> int:
    connection = From(port, address)
    try:
        connection.request("POST", "/search", body=body)
        answer = connection.getresponse()
        answer.read()
        return answer.status
    finally:
        connection.close()


def serve(search: list[str], store: str, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(search + ["-s", store, "--serve", f"127.0.0.1:{port}"],
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit("upload_fairness.py: the server did not start")


def one_round(search: list[str], store: str, port: int, heavy_body: bytes, light_body: bytes,
              seconds: float) -> tuple[list[float], int, int]:
    """The light client's answer times, its tries, and the heavy addresses' answers."""
    server = serve(search, store, port)
    stop = threading.Event()
    heavy_answers = [0]

    def flood(address: str) -> None:
        while not stop.is_set():
            try:
                if post(port, address, heavy_body) == 200:
                    heavy_answers[0] += 1
                else:
                    time.sleep(0.05)  # a 503 or 429: as a client honouring Retry-After would
            except OSError:
                time.sleep(0.05)

    threads = [threading.Thread(target=flood, args=(address,), daemon=True)
               for address in HEAVY for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)  # the flood under way
        times, tries = [], 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            tries += 1
            if post(port, LIGHT, light_body) == 200:
                times.append(time.monotonic() - started)
            time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
        server.terminate()
        server.wait(60)
    return times, tries, heavy_answers[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="CALTECH-101 folder")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="a git revision to measure beside")
    args = parser.parse_args()
    if not require_dataset(args.dataset, "upload_fairness.py"):
        return 2
    photos = sorted(os.path.join(folder, name) for folder, _, names in os.walk(args.dataset)
                    for name in names if name.lower().endswith(".jpg"))[:PHOTOS]
    picture = io.BytesIO()
    Image.fromarray(np.full((7000, 7000), 128, np.uint8)).save(picture, "PNG")
    heavy_body = picture.getvalue()
    with open(photos[0], "rb") as stream:
        light_body = stream.read()
    with tempfile.TemporaryDirectory() as workdir:
        images = os.path.join(workdir, "images")
        os.makedirs(images)
        for number, photo in enumerate(photos):
            try:
                os.link(photo, os.path.join(images, f"{number:04d}.jpg"))
            except OSError:  # another file system
                os.symlink(photo, os.path.join(images, f"{number:04d}.jpg"))
        store = os.path.join(workdir, "db.shelve")
        index_completely(["index.py", "-d", images, "-s", store], "upload_fairness.py",
                         cwd=str(ROOT))
        versions = [("this checkout", [sys.executable, str(ROOT / "search.py")], store)]
        if args.baseline:
            old_search, old_store = export_baseline(args.baseline, workdir, images)
            versions.append((args.baseline, old_search, old_store))
        print(f"A light client (a CALTECH photo every 0.5 s) beside four addresses re-sending a"
              f" 7000 x 7000 PNG, {args.seconds:g} s a round")
        print("| version | round | light answers | light median s | light longest s |"
              " heavy answers |")
        print("|---|---:|---:|---:|---:|---:|")
        ports = itertools.count(18900)
        for round_number, (name, search, used_store) in itertools.product(
                range(1, args.rounds + 1), versions):
            times, tries, heavy = one_round(search, used_store, next(ports), heavy_body,
                                            light_body, args.seconds)
            median = f"{statistics.median(times):.2f}" if times else "-"
            longest = f"{max(times):.2f}" if times else "-"
            print(f"| {name} | {round_number} | {len(times)} of {tries} | {median} | {longest} |"
                  f" {heavy} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
