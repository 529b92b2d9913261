#!/usr/bin/env python3
"""Checking uploads: a long-running checker against one search.py process per upload.

    python bench/checker_speed.py [--dataset DIR] [--uploads 800]

The store holds all of CALTECH-101; the uploads are CALTECH photos. Rows, in one run:
  process per upload   `search.py -s db -q photo.jpg --json`, a new Python process each time
  --stdin              one process; a path in, a JSON line out, one at a time
  HTTP, 1 client       POST /search with the bytes, one at a time on a keep-alive connection
  HTTP, 8 clients      8 concurrent keep-alive clients (loopback only; bounded in count and time)
Uploads per second, and the latency each upload saw (p50, p99). Ratios against the first row.
"""

from __future__ import annotations

import argparse
import http.client
import os
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _setup import DEFAULT_DATASET, ROOT, require_dataset  # noqa: E402, F401  (sets the path)

from neardup.core.discovery import FoundFile, walk_images  # noqa: E402
from neardup.core.hashing import Recipe  # noqa: E402
from neardup.core.indexing import index_folder  # noqa: E402

SEARCH = [sys.executable, str(ROOT / "search.py")]
TIME_LIMIT = 120.0  # seconds per row, whatever the count


def summary(name: str, latencies: list[float], seconds: float) -> tuple[str, float, float, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return name, len(latencies) / seconds, statistics.median(ordered) * 1000, p99 * 1000


def process_per_upload(store: str, paths: list[str]) -> tuple[str, float, float, float]:
    latencies = []
    started = time.perf_counter()
    for path in paths:
        begun = time.perf_counter()
        subprocess.run(SEARCH + ["-s", store, "-q", path, "--json"], capture_output=True, check=False)
        latencies.append(time.perf_counter() - begun)
    return summary("process per upload", latencies, time.perf_counter() - started)


def stdin_checker(store: str, paths: list[str]) -> tuple[str, float, float, float]:
    with subprocess.Popen(SEARCH + ["-s", store, "--stdin"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as checker:
        assert checker.stdin and checker.stdout
        checker.stdin.write(paths[0] + "\n")  # let it load the store before the clock starts
        checker.stdin.flush()
        checker.stdout.readline()
        latencies = []
        started = time.perf_counter()
        for path in paths:
            begun = time.perf_counter()
            checker.stdin.write(path + "\n")
            checker.stdin.flush()
            ready, _, _ = select.select([checker.stdout], [], [], 30)
            if not ready:
                raise SystemExit("the --stdin checker stopped answering")
            checker.stdout.readline()
            latencies.append(time.perf_counter() - begun)
            if time.perf_counter() - started > TIME_LIMIT:
                break
        seconds = time.perf_counter() - started
        checker.stdin.close()
    return summary("--stdin", latencies, seconds)


def http_clients(port: int, uploads: list[bytes], clients: int) -> tuple[str, float, float, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + TIME_LIMIT

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for body in uploads[offset::clients]:
            begun = time.perf_counter()
            connection.request("POST", "/search", body=body)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"HTTP {response.status}")
            mine.append(time.perf_counter() - begun)
            if time.perf_counter() > deadline:
                break
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    name = f"HTTP, {clients} client{'s' if clients > 1 else ''}"
    return summary(name, latencies, time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--uploads", type=int, default=800)
    parser.add_argument("--processes", type=int, default=20, help="uploads for the slow row")
    args = parser.parse_args()
    if not require_dataset(args.dataset, "checker_speed.py"):
        return 2
    photos = [entry.path for entry in walk_images(args.dataset) if isinstance(entry, FoundFile)]
    paths = [os.path.abspath(path) for path in photos[:: max(1, len(photos) // args.uploads)]]
    paths = paths[: args.uploads]
    bodies = [Path(path).read_bytes() for path in paths]

    with tempfile.TemporaryDirectory() as workdir:
        store = os.path.join(workdir, "db.shelve")
        index_folder(args.dataset, store, Recipe())
        rows = [process_per_upload(store, paths[: args.processes]), stdin_checker(store, paths)]
        with subprocess.Popen(SEARCH + ["-s", store, "--serve", "127.0.0.1:0"],
                              stderr=subprocess.PIPE, text=True) as server:
            assert server.stderr
            port = int(server.stderr.readline().rsplit(":", 1)[1])
            http_clients(port, bodies[:20], 1)  # warm: the store and index are loaded lazily
            rows.append(http_clients(port, bodies, 1))
            rows.append(http_clients(port, bodies, 8))
            server.terminate()

    baseline = rows[0][1]
    print(f"{len(paths)} uploads of CALTECH-101 photos against a store of all {len(photos):,};"
          f" {os.cpu_count()} cores")
    print("| | uploads/s | vs process per upload | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, rate, p50, p99 in rows:
        print(f"| {name} | {rate:,.0f} | {rate / baseline:,.1f}x | {p50:.2f} | {p99:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
