"""A long-running checker: the store opened once, every upload answered against the latest commit.

Each answer is computed inside one read snapshot of the store: if index.py has committed since the
last answer (the store's generation moved), the search index is reloaded from that same snapshot
first. So new images are found without a restart, and no answer mixes two states of the store.
Hashing, the expensive part, runs outside the lock, so threads hash uploads in parallel (Pillow
releases the GIL while decoding and resizing).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..core.hashing import DEFAULT_MAX_PIXELS, Hash, hash_bytes, hash_file, is_low_information
from ..core.results import QueryResult, to_record
from ..core.search import DEFAULT_MAX_DISTANCE, HashIndex, find_matches
from ..core.store import Store
from ..errors import ImageError


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
        self._store = Store.open_for_reading(store_path, shared_between_threads=True)
        self.max_distance = max_distance
        self.max_pixels = max_pixels
        self.include_low_information = include_low_information
        self._warn = warn
        self._lock = threading.Lock()
        self._index: HashIndex | None = None
        self._generation = -1
        # A store with local features answers verified matches (neardup.features); the optional
        # libraries are checked now, so a missing one is one line at start, not an error per query.
        self._features = None
        if self._store.feature_recipe() is not None:
            from ..features import require
            from ..features.search import CheckerFeatures

            require()
            self._features = CheckerFeatures()

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def check_file(self, path: str, max_distance: int | None = None) -> dict[str, Any]:
        try:
            query = hash_file(path, self._store.recipe, self.max_pixels)
            frame = (None if self._features is None
                     else self._features.frame_of(path, self.max_pixels))
        except ImageError as error:
            return {"query": path, "error": error.reason}
        return self._answer(path, query, max_distance, frame)

    def check_upload(
        self, data: bytes, name: str = "upload", max_distance: int | None = None
    ) -> dict[str, Any]:
        try:
            query = hash_bytes(data, self._store.recipe, self.max_pixels, name)
            frame = (None if self._features is None
                     else self._features.frame_of(name, self.max_pixels, data))
        except ImageError as error:
            return {"query": name, "error": error.reason}
        return self._answer(name, query, max_distance, frame)

    def health(self) -> dict[str, Any]:
        with self._lock, self._store.snapshot():
            return {"status": "ok", "hashes": self._store.hash_count(),
                    "images": self._store.image_count(), "generation": self._store.generation()}

    def _answer(self, name: str, query: Hash, max_distance: int | None,
                frame: Any = None) -> dict[str, Any]:
        radius = self.max_distance if max_distance is None else max_distance
        result = QueryResult(name, query.hex(), is_low_information(query))
        with self._lock, self._store.snapshot():
            generation = self._store.generation()
            if generation != self._generation:
                self._index = HashIndex.from_store(self._store)
                self._generation = generation
            if self._features is not None and frame is not None:
                result.matches = self._features.answer(
                    self._store, generation, self._index, query, frame, radius,
                    self.include_low_information)
            else:
                result.matches = find_matches(self._store, query, radius, self._index,
                                              include_low_information=self.include_low_information)
            return to_record(result, self._store.dataset_root, self._warn)
