"""A long-running checker: the store opened once, every upload answered against the latest commit.

Each answer is computed inside one read snapshot of the store. If anything wrote the store since
the last answer (index.py, a Python 3.13 `shelve`, the sqlite3 shell: its generation moved), the
search index first follows the keys the store logged as changed, in that same snapshot: a few
hundred keys per index.py batch, a few milliseconds at 10^6 hashes. So new images are found by the very next
answer, without a restart, and no answer mixes two states of the store.

A commit never stalls answers: when the keys followed beside the index grow past DELTA_MAX, or the
log no longer reaches back to the index (index.py prunes it after caching a new state), a thread
builds a new index from its own connection while answers go on from the current one, and the next
answer takes the new index and follows the few changes made meanwhile. Until then, an image
added in the gap may be missed for that moment (a second or so at 10^6 hashes); one deleted never
is, since every bucket is read live. Hashing, the expensive part, runs outside the lock, so
threads hash uploads in parallel (Pillow releases the GIL while decoding and resizing).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..core import cache
from ..core.hashing import DEFAULT_MAX_PIXELS, Hash, hash_bytes, hash_file, is_low_information
from ..core.results import QueryResult, to_record
from ..core.search import DEFAULT_MAX_DISTANCE, DELTA_MAX, HashIndex, find_matches
from ..core.store import Store
from ..errors import ImageError, NeardupError


class Checker:
    def __init__(
        self,
        store_path: str,
        *,
        max_distance: int = DEFAULT_MAX_DISTANCE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        include_low_information: bool = False,
        warn: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.store_path = store_path
        self._warn = warn
        self._store = Store.open_for_reading(store_path, shared_between_threads=True, report=warn)
        self.max_distance = max_distance
        self.max_pixels = max_pixels
        self.include_low_information = include_low_information
        self._lock = threading.Lock()
        try:
            with self._store.snapshot():
                self._index = HashIndex.from_store(self._store)
                self._data_version = self._store.data_version()
            # /health has a connection of its own, so it never waits for an answer in progress.
            self._health_store = Store.open_for_reading(store_path, shared_between_threads=True,
                                                        quick_check=False, for_queries=False)
        except BaseException:
            self._store.close()
            raise
        self._health_lock = threading.Lock()
        self._pending: HashIndex | None = None  # built in the background, taken by an answer
        self._rebuilding: threading.Thread | None = None
        self._rebuild_error: BaseException | None = None
        self._closed = False

    def close(self) -> None:
        self._closed = True
        thread = self._rebuilding
        if thread is not None:
            thread.join(timeout=60)
        self._health_store.close()
        self._store.close()

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def generation(self) -> int:
        """The store state the last answer was computed from."""
        return self._index.generation

    def check_file(self, path: str, max_distance: int | None = None) -> dict[str, Any]:
        try:
            query = hash_file(path, self._store.recipe, self.max_pixels)
        except ImageError as error:
            return {"query": path, "error": error.reason}
        return self._answer(path, query, max_distance)

    def check_upload(
        self, data: bytes, name: str = "upload", max_distance: int | None = None
    ) -> dict[str, Any]:
        try:
            query = hash_bytes(data, self._store.recipe, self.max_pixels, name)
        except ImageError as error:
            return {"query": name, "error": error.reason}
        return self._answer(name, query, max_distance)

    def health(self) -> dict[str, Any]:
        """O(1): counters the store's triggers keep and its generation, read in one snapshot on a
        connection of its own (an answer in progress does not hold it up)."""
        store = self._health_store
        with self._health_lock, store.snapshot():
            hashes, images = store.counts()
            return {"status": "ok", "hashes": hashes, "images": images,
                    "generation": store.generation()}

    def _answer(self, name: str, query: Hash, max_distance: int | None) -> dict[str, Any]:
        radius = self.max_distance if max_distance is None else max_distance
        result = QueryResult(name, query.hex(), is_low_information(query))
        with self._lock, self._store.snapshot():
            index = self._current_index()
            result.matches = find_matches(self._store, query, radius, index,
                                          include_low_information=self.include_low_information)
            return to_record(result, self._store.dataset_root, self._warn)

    # -- keeping the index current (called with the lock held, inside a snapshot) -------------

    def _current_index(self) -> HashIndex:
        store = self._store
        if self._rebuild_error is not None:
            error, self._rebuild_error = self._rebuild_error, None
            if isinstance(error, NeardupError):
                raise error
            self._warn(f"rebuilding the search index failed ({type(error).__name__}: {error});"
                       " answering from the one in memory")
        if self._pending is not None:
            self._index, self._pending = self._pending, None
        index = self._index
        if not store.tracking:
            # A format 1 store (written by an older neardup, not upgraded yet): no change log, so
            # any commit by another connection means a full rebuild, done here.
            version = store.data_version()
            if version != self._data_version:
                self._index = index = HashIndex.from_store(store)
                self._data_version = version
            return index
        if store.generation() == index.generation and index.schema == store.schema_version():
            return index
        if index.can_follow(store) and store.generation() - index.generation <= DELTA_MAX:
            index = index.follow(store)
            if index.extra.shape[0] > DELTA_MAX:
                self._rebuild_in_background()
        elif store.hash_count() < cache.CACHE_MIN_HASHES:
            index = HashIndex.from_store(store)  # small: quicker than a thread
        else:
            self._rebuild_in_background()
        self._index = index
        return index

    def _rebuild_in_background(self) -> None:
        if self._rebuilding is not None or self._closed:
            return
        thread = threading.Thread(target=self._rebuild, name="neardup-index-rebuild", daemon=True)
        self._rebuilding = thread
        thread.start()

    def _rebuild(self) -> None:
        try:
            with Store.open_for_reading(self.store_path, quick_check=False,
                                        report=self._warn) as store, store.snapshot():
                # A fresh base (or a cache entry of this very state), saved for everyone else.
                index = HashIndex.from_store(store, max_delta=0)
            with self._lock:
                self._pending = index
        except BaseException as error:  # noqa: BLE001 - reported by the next answer
            self._rebuild_error = error
        finally:
            self._rebuilding = None
