"""Time verified search with one checkout's neardup on a store (bench/features.py runs it once for
this checkout and once for --baseline, on the same store and queries, so both are comparable).

    python bench/_time_search.py CHECKOUT STORE DATASET QUERIES.json   # prints one JSON line

Not bench/_setup: the checkout given, not this one, must be the neardup imported.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    checkout, store_path, dataset, queries_file = sys.argv[1:5]
    sys.path.insert(0, checkout)
    from neardup.core.hashing import hash_file
    from neardup.core.search import HashIndex
    from neardup.core.store import Store
    from neardup.features.extract import read_frame
    from neardup.features.search import VerifiedSearch

    with open(queries_file) as stream:
        queries = json.load(stream)
    times, found = [], 0
    with Store.open_for_reading(store_path) as store, store.snapshot():
        images = store.image_count()
        started = time.perf_counter()
        search = VerifiedSearch.for_store(store, HashIndex.from_store(store))
        assert search is not None, "a store without features"
        build = time.perf_counter() - started
        for query, original in queries:
            query_hash = hash_file(f"{dataset}/{query}", store.recipe)
            frame = read_frame(f"{dataset}/{query}")
            started = time.perf_counter()
            matches = search.search([query_hash], frame, 4)
            times.append((time.perf_counter() - started) * 1000)
            found += any(match.path == original for match in matches)
    print(json.dumps({"images": images, "times": times, "found": found, "build": build}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
