#!/usr/bin/env python3
"""Checking uploads: a long-running checker against one search.py process per upload.

    python bench/checker_speed.py [--dataset DIR] [--uploads 800] [--baseline REV]

The store holds all of CALTECH-101; the uploads are CALTECH photos. Rows, in one run:
  process per upload   `search.py -s db -q photo.jpg --json`, a new Python process each time
  --stdin              one process; a path in, a JSON line out, one at a time
  HTTP, 1 client       POST /search with the bytes, one at a time on a keep-alive connection
  HTTP, 8 clients      8 concurrent keep-alive clients (loopback only; bounded in count and time)
Uploads per second, and the latency each upload saw (p50, p99). Ratios against the first row.
With --baseline (by default the last commit served by the standard library's http.server), that
revision is exported from git into a temporary folder, indexes the dataset into a store of its own
(its store format is older than ours), and its server is measured in the same run, alternating
with ours; the last rows give ours as a share of its throughput.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _setup import (  # noqa: E402, F401  (sets the path)
    DEFAULT_DATASET,
    ROOT,
    index_completely,
    index_whole,
    require_dataset,
)

from neardup.core.discovery import FoundFile, walk_images  # noqa: E402
from neardup.core.hashing import Recipe  # noqa: E402

SEARCH = [sys.executable, str(ROOT / "search.py")]
# The checker as served by http.server's ThreadingHTTPServer, before uvicorn.
HTTP_SERVER_BASELINE = "4253421"
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
        # Each client from its own loopback address, as distinct clients are: one address may
        # hold only a quarter of the checker's uploads in flight.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                                source_address=(f"127.0.0.{offset + 2}", 0))
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
    parser.add_argument("--baseline", default=HTTP_SERVER_BASELINE,
                        help="git revision whose HTTP server is measured beside ours ('' for none)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per HTTP row")
    args = parser.parse_args()
    if not require_dataset(args.dataset, "checker_speed.py"):
        return 2
    photos = [entry.path for entry in walk_images(args.dataset) if isinstance(entry, FoundFile)]
    paths = [os.path.abspath(path) for path in photos[:: max(1, len(photos) // args.uploads)]]
    paths = paths[: args.uploads]
    bodies = [Path(path).read_bytes() for path in paths]

    with tempfile.TemporaryDirectory() as workdir:
        store = os.path.join(workdir, "db.shelve")
        index_whole(args.dataset, store, Recipe(), "checker_speed.py")
        rows = [process_per_upload(store, paths[: args.processes]), stdin_checker(store, paths)]
        old_search, old_store = None, ""
        if args.baseline:
            old_search, old_store = export_baseline(args.baseline, workdir, args.dataset)
        ours: dict[int, list[tuple[str, float, float, float]]] = {1: [], 8: []}
        theirs: dict[int, list[tuple[str, float, float, float]]] = {1: [], 8: []}
        # Alternating, so both servers meet the same background load on a shared machine.
        for _ in range(args.rounds):
            for clients in (1, 8):
                with serving(SEARCH, store, bodies[:20]) as port:
                    ours[clients].append(http_clients(port, bodies, clients))
                if old_search is not None:
                    with serving(old_search, old_store, bodies[:20]) as port:
                        theirs[clients].append(http_clients(port, bodies, clients))
        for clients in (1, 8):
            rows.append(best(ours[clients]))
        if old_search is not None:
            for clients in (1, 8):
                name, *figures = best(theirs[clients])
                rows.append((f"{name}, http.server ({args.baseline})", *figures))

    baseline = rows[0][1]
    print(f"{len(paths)} uploads of CALTECH-101 photos against a store of all {len(photos):,};"
          f" {os.cpu_count()} cores; HTTP rows: the best of {args.rounds} rounds")
    print("| | uploads/s | vs process per upload | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, rate, p50, p99 in rows:
        print(f"| {name} | {rate:,.0f} | {rate / baseline:,.1f}x | {p50:.2f} | {p99:.2f} |")
    if args.baseline:
        for clients in (1, 8):
            mine, old = best(ours[clients])[1], best(theirs[clients])[1]
            print(f"uvicorn against http.server, {clients} client{'s' if clients > 1 else ''}:"
                  f" {mine / old:.0%} of its throughput")
    return 0


def best(rows: list[tuple[str, float, float, float]]) -> tuple[str, float, float, float]:
    """The round with the highest throughput: the one least disturbed by other work."""
    return max(rows, key=lambda row: row[1])


@contextmanager
def serving(search: list[str], store: str, warm: list[bytes]) -> Iterator[int]:
    """A --serve checker on a free loopback port, warmed, stopped afterwards."""
    with subprocess.Popen(search + ["-s", store, "--serve", "127.0.0.1:0"],
                          stderr=subprocess.PIPE, text=True) as server:
        assert server.stderr
        port = int(server.stderr.readline().rsplit(":", 1)[1])
        try:
            http_clients(port, warm, 1)  # the store and index are loaded lazily
            yield port
        finally:
            server.terminate()
            server.wait(timeout=30)


def export_baseline(revision: str, workdir: str, dataset: str) -> tuple[list[str], str]:
    """The project at `revision`, exported from git (no checkout): its search.py command and a
    store of `dataset` made by its own index.py (an older revision cannot read our store)."""
    target = os.path.join(workdir, "baseline")
    os.makedirs(target)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    store = os.path.join(workdir, "baseline.shelve")
    # Run from the export, so its own neardup package is the one imported.
    index_completely(["index.py", "-d", os.path.abspath(dataset), "-s", store],
                     "checker_speed.py", cwd=target)
    return [sys.executable, os.path.join(target, "search.py")], store


if __name__ == "__main__":
    raise SystemExit(main())
