#!/usr/bin/env python3
"""The upload checker under abuse: does it stay up, small and quiet while hostile clients hit it?

    python bench/abuse.py [--dataset DIR] [--seconds 30]

A store of all of CALTECH-101, then `search.py --serve` with its default limits, on 127.0.0.1
only. For --seconds, all at once (every count fixed, every client stops by itself):
  500 idle connections  opened and left silent (reopened when the server closes them)
  20 slowloris clients  request headers one byte a second, never finished
  8 bomb uploaders      16-bit 10000 x 10000 PNGs (about 200 KB each, 2 GB decoded), one after
                        another on each of 8 connections
  --heavy N uploaders   (0 by default) 8-bit RGB 7000 x 7000 PNGs: within the pixel limit, so
                        really decoded, each estimated at 483 MB; the decode memory budget decides
                        how many at once
  --flood N addresses   (0 by default) each with 4 connections re-sending 8-bit gray 7000 x 7000
                        PNGs of zeros: 47 KB to send, 0.45 s to decode, within every limit
  2 normal clients      CALTECH photos, one at a time; each answer must name the photo itself
  1 health prober       GET /health every 50 ms; its latency is measured
Then SIGTERM with all those connections still open. Against the goals:
  /health p99 < 100 ms, peak RSS (VmHWM, the server's and its decoding workers' summed) < 1.5
  GB, every normal upload answered correctly, no traceback in the server's log, exit 0 within 5 s
  of SIGTERM.
Exits 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from multiprocessing.queues import Queue
from pathlib import Path

from _setup import DEFAULT_DATASET, ROOT, index_whole, require_dataset  # noqa: E402  (sets the path)

from neardup.core.discovery import FoundFile, walk_images  # noqa: E402
from neardup.core.hashing import Recipe  # noqa: E402

SEARCH = [sys.executable, str(ROOT / "search.py")]
HOST = "127.0.0.1"  # loopback only, always
IDLE, SLOWLORIS, BOMBS, NORMAL = 500, 20, 8, 2


def png(width: int, height: int, bit_depth: int, colour_type: int, channels: int) -> bytes:
    """A PNG of zeros, compressed row by row so the decoded size is never held in memory here."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\0" * (1 + width * channels * bit_depth // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.health: list[float] = []
        self.wrong: list[str] = []
        self.held: list[socket.socket] = []  # connections left open for SIGTERM to meet

    def add(self, name: str) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + 1


def post(connection: http.client.HTTPConnection, body: bytes) -> tuple[int, dict]:
    connection.request("POST", "/search", body=body)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def uploader(port: int, bodies: list[tuple[str, bytes]], until: float, tally: Tally,
             kind: str, check: bool, source: str) -> None:
    """Uploads one after another on a keep-alive connection, reconnecting when it is closed."""
    connection = http.client.HTTPConnection(HOST, port, timeout=60, source_address=(source, 0))
    position = 0
    while time.monotonic() < until:
        name, body = bodies[position % len(bodies)]
        position += 1
        try:
            status, answer = post(connection, body)
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            connection = http.client.HTTPConnection(HOST, port, timeout=60,
                                                    source_address=(source, 0))
            if check:  # a normal client's upload must be answered, whatever else is going on
                with tally.lock:
                    tally.wrong.append(f"{name}: {type(error).__name__}: {error}")
            continue
        tally.add(f"{kind} {status}")
        if check and (status != 200 or not any(
                match["relpath"] == name and match["distance"] == 0
                for match in answer["matches"])):
            with tally.lock:
                tally.wrong.append(f"{name}: {status} {answer}")
    connection.close()


def idle_holder(port: int, until: float, tally: Tally) -> None:
    """IDLE silent connections, each reopened as soon as the server closes it."""
    sockets: list[socket.socket] = []

    def fill() -> None:
        while len(sockets) < IDLE:
            try:
                # From four addresses: one may hold a quarter of the server's connections.
                source = f"127.0.1.{1 + len(sockets) % 4}"
                sockets.append(socket.create_connection((HOST, port), timeout=10,
                                                        source_address=(source, 0)))
            except OSError:
                tally.add("idle connect failed")
                return

    fill()
    while time.monotonic() < until:
        readable, _, _ = select.select(sockets, [], [], 0.5)
        for closed in readable:
            try:
                closed.recv(4096)
            except OSError:
                pass
            closed.close()
            sockets.remove(closed)
            tally.add("idle closed by server")
        fill()
    for held in sockets:  # left open until SIGTERM: the server must not wait for them
        tally.held.append(held)


def slowloris(port: int, until: float, tally: Tally) -> None:
    """SLOWLORIS connections sending a header byte each per second, forever unfinished."""
    request = b"POST /search HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 10_000
    clients: list[tuple[socket.socket, int]] = []
    while time.monotonic() < until:
        while len(clients) < SLOWLORIS:
            try:
                clients.append((socket.create_connection((HOST, port), timeout=10,
                                                         source_address=("127.0.2.1", 0)), 0))
            except OSError:
                tally.add("slowloris connect failed")
                break
        still = []
        for client, sent in clients:
            try:
                client.sendall(request[sent:sent + 1])
                still.append((client, sent + 1))
            except OSError:
                client.close()
                tally.add("slowloris closed by server")
        clients = still
        time.sleep(1)
    for client, _ in clients:
        tally.held.append(client)


def health_prober(port: int, seconds: float, results: Queue) -> None:
    """In a process of its own, so the attackers' threads here cannot delay its clock."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    connection = http.client.HTTPConnection(HOST, port, timeout=30,
                                            source_address=("127.0.6.1", 0))
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        begun = time.perf_counter()
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            outcome = f"health {response.status}"
            latencies.append(time.perf_counter() - begun)
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection(HOST, port, timeout=30,
                                            source_address=("127.0.6.1", 0))
            outcome = "health failed"
        statuses[outcome] = statuses.get(outcome, 0) + 1
        time.sleep(0.05)
    connection.close()
    results.put((latencies, statuses))


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had, in bytes; 0 once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def descendants(pid: int) -> list[int]:
    """Every process started by `pid`, and by those, now running (the checker's decoding worker
    processes, under the fork server that starts them)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def peak_rss_with_workers(pid: int) -> int:
    """The server's peak resident memory plus each of its worker processes' own peak: an upper
    bound of what they held together (each peak may come at another moment). Queries are
    decoded in the workers, so the server's own peak no longer counts the decoded pictures."""
    return peak_rss(pid) + sum(peak_rss(child) for child in descendants(pid))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the abuse lasts")
    parser.add_argument("--heavy", type=int, default=0, choices=range(0, 9),
                        help="clients uploading large images that are really decoded (default 0)")
    parser.add_argument("--flood", type=int, default=0, choices=range(0, 9),
                        help="addresses each re-sending 4 small PNGs slow to decode at once"
                             " (default 0)")
    parser.add_argument("--store", help="a store of the dataset to reuse (built there if missing);"
                        " by default one is built in a temporary folder")
    args = parser.parse_args()
    if not require_dataset(args.dataset, "abuse.py"):
        return 2
    photos = [entry for entry in walk_images(args.dataset) if isinstance(entry, FoundFile)]
    sample = photos[:: max(1, len(photos) // 200)][:200]
    normal = [(os.path.relpath(entry.path, args.dataset), Path(entry.path).read_bytes())
              for entry in sample]
    bomb = png(10_000, 10_000, 16, 0, 1)
    heavy = png(7_000, 7_000, 8, 2, 3)
    gray = png(7_000, 7_000, 8, 0, 1)

    with tempfile.TemporaryDirectory() as workdir:
        store = args.store or os.path.join(workdir, "db.shelve")
        if not os.path.exists(store):
            index_whole(args.dataset, store, Recipe(), "abuse.py")
        log_path = os.path.join(workdir, "server.log")
        with open(log_path, "wb") as log:
            server = subprocess.Popen(SEARCH + ["-s", store, "--serve", f"{HOST}:0"],
                                      stdout=subprocess.DEVNULL, stderr=log)
        while "serving on" not in Path(log_path).read_text():
            if server.poll() is not None:
                print(Path(log_path).read_text(), file=sys.stderr)
                return 2
            time.sleep(0.05)
        port = int(Path(log_path).read_text().splitlines()[0].rsplit(":", 1)[1])
        # The store and index load lazily: one answer first, so the clock measures the abuse.
        warm = http.client.HTTPConnection(HOST, port, timeout=60)
        post(warm, normal[0][1])
        warm.close()

        tally = Tally()
        spawn = multiprocessing.get_context("spawn")
        health_results: Queue = spawn.Queue()
        prober = spawn.Process(target=health_prober, args=(port, args.seconds, health_results))
        prober.start()
        until = time.monotonic() + args.seconds
        threads = [threading.Thread(target=idle_holder, args=(port, until, tally)),
                   threading.Thread(target=slowloris, args=(port, until, tally))]
        # Each client from an address of its own, as distinct clients are (one address may
        # hold only a share of the server's connections and uploads).
        threads += [threading.Thread(target=uploader,
                                     args=(port, [("bomb", bomb)], until, tally, "bomb", False,
                                           f"127.0.3.{n + 1}"))
                    for n in range(BOMBS)]
        threads += [threading.Thread(target=uploader,
                                     args=(port, [("heavy", heavy)], until, tally, "heavy", False,
                                           f"127.0.4.{n + 1}"))
                    for n in range(args.heavy)]
        threads += [threading.Thread(target=uploader,
                                     args=(port, [("flood", gray)], until, tally, "flood", False,
                                           f"127.0.6.{n // 4 + 1}"))
                    for n in range(4 * args.flood)]
        threads += [threading.Thread(target=uploader,
                                     args=(port, normal[n::NORMAL], until, tally, "normal", True,
                                           f"127.0.5.{n + 1}"))
                    for n in range(NORMAL)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.seconds + 120)
        tally.health, statuses = health_results.get(timeout=120)
        prober.join(timeout=30)
        for outcome, count in statuses.items():
            tally.counts[outcome] = count

        rss = peak_rss_with_workers(server.pid)
        held = len(tally.held)
        stopping = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            exit_status = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            exit_status = server.wait()
        stop_seconds = time.monotonic() - stopping
        for connection in tally.held:
            connection.close()
        log_text = Path(log_path).read_text(errors="replace")

    latencies = sorted(tally.health)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies \
        else float("inf")
    tracebacks = log_text.count("Traceback")
    normal_answered = tally.counts.get("normal 200", 0)
    goals = [
        ("/health p99", f"{p99:.1f} ms ({len(latencies)} probes)", "< 100 ms", p99 < 100),
        ("peak RSS, server and workers", f"{rss / 2**30:.2f} GB", "< 1.5 GB", rss < 1.5 * 2**30),
        ("normal uploads answered correctly",
         f"{normal_answered} of {normal_answered + len(tally.wrong)}", "all",
         not tally.wrong and normal_answered > 0),
        ("tracebacks in the log", str(tracebacks), "0", tracebacks == 0),
        ("SIGTERM to exit", f"{stop_seconds:.2f} s, status {exit_status},"
                            f" {held} connections open", "< 5 s, 0",
         stop_seconds < 5 and exit_status == 0),
    ]
    print(f"{args.seconds:g} s of abuse: {IDLE} idle connections, {SLOWLORIS} slowloris, {BOMBS}"
          f" bomb uploaders ({len(bomb):,}-byte 16-bit 10000 x 10000 PNG), {args.heavy} heavy uploaders"
          f" ({len(heavy):,}-byte RGB 7000 x 7000 PNG), {args.flood} flooding addresses x 4"
          f" ({len(gray):,}-byte gray 7000 x 7000 PNG), {NORMAL} normal clients; {os.cpu_count()}"
          " cores")
    print("| | measured | goal | met |")
    print("|---|---:|---:|:---:|")
    for name, measured, goal, met in goals:
        print(f"| {name} | {measured} | {goal} | {'yes' if met else 'NO'} |")
    print("answers:", ", ".join(f"{name}: {count}" for name, count in sorted(tally.counts.items())))
    print(f"server log: {len(log_text.splitlines())} lines")
    for wrong in tally.wrong[:5]:
        print("wrong:", wrong)
    return 0 if all(met for *_, met in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
