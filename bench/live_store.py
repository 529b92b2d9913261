#!/usr/bin/env python3
"""A store of 10^6 hashes written while it is searched: by index.py's writer and behind its back.

    python bench/live_store.py [--hashes 1000000] [--seconds 90] [--dataset DIR]

Setup: a store of --hashes hashes (random, plus 200 CALTECH-101 photos under photos/), written
through Store.apply, index.py's own write path, and cached as index.py leaves it.

1. A running checker (`search.py --serve`) answers one keep-alive client as fast as it can while a
   writer commits 500 new hashes every 2 s (index.py's batch: Store.apply in one transaction),
   and Python 3.13's `shelve` writes behind its back now and then. Each commit also holds the hash
   of a photo the store did not have: the client asks for it until the answer names it, which
   measures how soon a commit is seen. Latency of every answer and of GET /health.
2. First-query cost of a one-shot `search.py -q` (a whole process) on the same store, after
   writes behind index.py's back: a 3.13 shelve write, a sqlite3 write, a write of more keys than
   a search follows (so the arrays are built again), and with no cache at all.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pickle
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _setup import DEFAULT_DATASET, ROOT  # noqa: E402  (sets the path)

from neardup.core.discovery import FoundFile, walk_images  # noqa: E402
from neardup.core.hashing import Recipe, hash_file  # noqa: E402
from neardup.core.indexing import settle_caches  # noqa: E402
from neardup.core.search import DELTA_MAX  # noqa: E402
from neardup.core.store import IndexedFile, Store  # noqa: E402

SEARCH = [sys.executable, str(ROOT / "search.py")]
PY313 = "/root/.pyenv/versions/3.13.0/bin/python3.13"
BATCH = 500
BATCH_SECONDS = 2.0

WRITER = """
import json, random, sys, time
sys.path.insert(0, {root!r})
from neardup.core.hashing import Recipe
from neardup.core.store import IndexedFile, Store
markers = json.loads(sys.argv[1])
rng = random.Random(11)
with Store.open_for_writing({store!r}, Recipe(), {dataset!r}, {{}}) as store:
    print("ready", flush=True)
    for number, (name, key) in enumerate(markers):
        time.sleep({pause})
        batch = [IndexedFile(f"live/{{number}}/{{n}}.jpg", 1, 1, format(rng.getrandbits(64), "016x"))
                 for n in range({batch} - 1)]
        batch.append(IndexedFile(f"fresh/{{name}}", 1, 1, key))
        store.apply(batch, [])
        print(json.dumps([name, time.monotonic()]), flush=True)
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def photos(dataset: str, count: int) -> list[str]:
    if os.path.isdir(dataset):
        found = [entry.path for entry in walk_images(dataset) if isinstance(entry, FoundFile)]
        return found[:: max(1, len(found) // count)][:count]
    import numpy as np
    from PIL import Image  # no CALTECH-101: generated pictures

    folder = tempfile.mkdtemp(prefix="live-photos-")
    made = []
    for number in range(count):
        rng = np.random.default_rng(number)
        pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((320, 240), Image.Resampling.BICUBIC)
        made.append(os.path.join(folder, f"{number}.jpg"))
        image.save(made[-1], quality=90)
    return made


def build_store(path: str, dataset: str, hashes: int, stored: list[tuple[str, str]]) -> float:
    started = time.perf_counter()
    rng = random.Random(1)
    with Store.open_for_writing(path, Recipe(), dataset, {}) as store:
        store.apply([IndexedFile(f"photos/{name}", 1, 1, key) for name, key in stored], [])
        for start in range(0, hashes - len(stored), 100_000):
            count = min(100_000, hashes - len(stored) - start)
            store.apply([IndexedFile(f"filler/{start + n}.jpg", 1, 1,
                                     format(rng.getrandbits(64), "016x")) for n in range(count)],
                        [])
        settle_caches(store, store.generation())
    return time.perf_counter() - started


def shelve_313(path: str, code: str) -> float:
    script = f"import shelve\nwith shelve.open({path!r}, 'w') as db:\n    {code}\n"
    started = time.perf_counter()
    subprocess.run([PY313, "-c", script], check=True, capture_output=True)
    return time.perf_counter() - started


def one_shot(store: str, photo: str) -> tuple[float, bool, str]:
    started = time.perf_counter()
    done = subprocess.run(SEARCH + ["-s", store, "-q", photo, "-m", "4", "--json"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    matches = json.loads(done.stdout)[0]["matches"] if done.returncode in (0, 1) else []
    return seconds, done.returncode in (0, 1), ",".join(m["relpath"] for m in matches)


def live_run(store: str, dataset: str, uploads: list[bytes], markers: list[tuple[str, str]],
             marker_bodies: dict[str, bytes], foreign: list[tuple[str, str, bytes]],
             seconds: float) -> None:
    server = subprocess.Popen(SEARCH + ["-s", store, "--serve", "127.0.0.1:0"],
                              stderr=subprocess.PIPE, text=True)
    assert server.stderr
    port = int(server.stderr.readline().rsplit(":", 1)[1])
    commits = int(seconds / BATCH_SECONDS)
    code = WRITER.format(root=str(ROOT), store=store, dataset=dataset, pause=BATCH_SECONDS,
                         batch=BATCH)
    writer = subprocess.Popen([sys.executable, "-c", code, json.dumps(markers[:commits])],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout
    writer.stdout.readline()  # "ready": it holds the writer lock

    committed: list[tuple[str, float]] = []
    stop = threading.Event()

    def read_commits() -> None:
        assert writer.stdout
        for line in writer.stdout:
            name, when = json.loads(line)
            committed.append((name, when))
        stop.set()

    def shelve_writes() -> None:  # behind index.py's back, in the middle of the run
        for number, (name, key, _body) in enumerate(foreign):
            if stop.wait(seconds / (len(foreign) + 1)):
                return
            shelve_313(store, f"db[{key!r}] = ['foreign/{name}']")
            committed.append((f"foreign:{name}", time.monotonic()))
            del number

    health: list[float] = []

    def health_probe() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop.is_set():
            begun = time.perf_counter()
            connection.request("GET", "/health")
            connection.getresponse().read()
            health.append(time.perf_counter() - begun)
            time.sleep(0.05)
        connection.close()

    threads = [threading.Thread(target=read_commits), threading.Thread(target=health_probe)]
    if os.path.exists(PY313):
        threads.append(threading.Thread(target=shelve_writes))
    for thread in threads:
        thread.start()

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def ask(body: bytes, radius: int = 4) -> tuple[float, set[str]]:
        begun = time.perf_counter()
        connection.request("POST", f"/search?max_distance={radius}", body=body)
        response = connection.getresponse()
        answer = json.loads(response.read())
        return time.perf_counter() - begun, {m["relpath"] for m in answer.get("matches", [])}

    for body in uploads[:20]:
        ask(body)
    latencies: list[float] = []
    seen_after: list[float] = []
    checked = 0
    bodies = {name: body for name, _key, body in foreign} | marker_bodies
    number = 0
    while not stop.is_set():
        took, _found = ask(uploads[number % len(uploads)])
        latencies.append(took)
        number += 1
        while checked < len(committed):  # a new commit: ask for its photo until it is named
            name, when = committed[checked]
            path = f"foreign/{name[8:]}" if name.startswith("foreign:") else f"fresh/{name}"
            body = bodies[name[8:] if name.startswith("foreign:") else name]
            for _attempt in range(10_000):
                took, found = ask(body, 0)
                latencies.append(took)
                if path in found:
                    seen_after.append(time.monotonic() - when)
                    break
            checked += 1
    writer.wait()
    for thread in threads:
        thread.join()
    connection.close()
    server.terminate()
    server.wait()
    rebuilt = len([name for name in os.listdir(store + ".cache") if name.endswith(".json")])

    print(f"\n1. A running checker (search.py --serve, one keep-alive client) while a writer"
          f" commits {BATCH} hashes every {BATCH_SECONDS:.0f} s ({len(markers[:commits])} commits,"
          f" {len(markers[:commits]) * BATCH:,} hashes) and Python 3.13's shelve writes"
          f" {len(foreign) if os.path.exists(PY313) else 0} times behind its back:")
    print("| | count | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    print(f"| POST /search | {len(latencies):,} | {statistics.median(latencies) * 1000:.2f} |"
          f" {percentile(latencies, 0.99) * 1000:.2f} | {max(latencies) * 1000:.2f} |")
    print(f"| GET /health | {len(health):,} | {statistics.median(health) * 1000:.2f} |"
          f" {percentile(health, 0.99) * 1000:.2f} | {max(health) * 1000:.2f} |")
    print(f"| commit -> first answer naming it, s | {len(seen_after)} |"
          f" {statistics.median(seen_after):.3f} | {percentile(seen_after, 0.99):.3f} |"
          f" {max(seen_after):.3f} |")
    slow = sum(1 for took in latencies if took > 0.020)
    slower = sum(1 for took in latencies if took > 0.050)
    print(f"(answers over 20 ms: {slow}, over 50 ms: {slower}; cache entries beside the store"
          f" afterwards: {rebuilt}; the checker rebuilds its index in a thread once more than"
          f" {DELTA_MAX:,} keys were added since its base)")


def first_queries(store: str, photo: str, foreign: tuple[str, str]) -> None:
    name, key = foreign
    rows = []
    seconds, ok, _ = one_shot(store, photo)
    rows.append(("nothing changed since index.py", seconds, ok, True))
    if os.path.exists(PY313):
        shelve_313(store, f"db[{key!r}] = ['foreign/{name}']")
        seconds, ok, found = one_shot(store, photo)
        rows.append(("after a 3.13 shelve write of its hash", seconds, ok, f"foreign/{name}" in found))
    connection = sqlite3.connect(store)
    with connection:
        connection.execute("REPLACE INTO Dict (key, value) VALUES (?, ?)",
                           (key.encode(), pickle.dumps([f"sqlite/{name}"])))
    seconds, ok, found = one_shot(store, photo)
    rows.append(("after a sqlite3 write of its hash", seconds, ok, f"sqlite/{name}" in found))
    seconds, ok, found = one_shot(store, photo)
    rows.append(("the same again (the delta read again)", seconds, ok, f"sqlite/{name}" in found))
    rng = random.Random(5)
    with connection:
        connection.executemany("INSERT OR IGNORE INTO Dict (key, value) VALUES (?, ?)",
                               ((format(rng.getrandbits(64), "016x").encode(),
                                 pickle.dumps(["bulk.jpg"])) for _ in range(2 * DELTA_MAX)))
    connection.close()
    seconds, ok, found = one_shot(store, photo)
    rows.append((f"after {2 * DELTA_MAX:,} keys written by sqlite3 (arrays built and cached)",
                 seconds, ok, f"sqlite/{name}" in found))
    seconds, ok, found = one_shot(store, photo)
    rows.append(("the same again (the new cache entry)", seconds, ok, f"sqlite/{name}" in found))
    for leftover in os.listdir(store + ".cache"):
        os.remove(os.path.join(store + ".cache", leftover))
    seconds, ok, found = one_shot(store, photo)
    rows.append(("no cache at all (arrays built and cached)", seconds, ok,
                 f"sqlite/{name}" in found))
    print("\n2. First-query cost: one `search.py -q photo -m 4` process, start to exit:")
    print("| store state | seconds | answered | the new entry found |")
    print("|---|---:|---|---|")
    for label, took, ok, found_it in rows:
        print(f"| {label} | {took:.2f} | {'yes' if ok else 'NO'} | {'yes' if found_it else 'NO'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hashes", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    args = parser.parse_args()
    pictures = photos(args.dataset, 400)
    hashed = [(f"{number}-{os.path.basename(path)}", hash_file(path, Recipe()).hex(), path)
              for number, path in enumerate(pictures)]
    stored = [(name, key) for name, key, _ in hashed[:200]]
    stored_keys = {key for _name, key in stored}
    unseen = [(name, key, path) for name, key, path in hashed[200:] if key not in stored_keys]
    markers = [(name, key) for name, key, _ in unseen[:-6]]
    marker_bodies = {name: Path(path).read_bytes() for name, _key, path in unseen[:-6]}
    foreign = [(name, key, Path(path).read_bytes()) for name, key, path in unseen[-6:-1]]
    uploads = [Path(path).read_bytes() for _name, _key, path in hashed[:200]]
    print(f"{args.hashes:,} hashes; {os.cpu_count()} cores; Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as workdir:
        store = os.path.join(workdir, "db.shelve")
        dataset = os.path.join(workdir, "images")
        built = build_store(store, dataset, args.hashes, stored)
        print(f"store built through Store.apply and cached in {built:.1f} s")
        live_run(store, dataset, uploads, markers, marker_bodies, foreign, args.seconds)
        last_name, last_key, last_path = unseen[-1]
        first_queries(store, last_path, (last_name, last_key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
