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
is, since every bucket is read live. Decoding, the expensive part, runs outside the lock, so
threads decode uploads in parallel: in worker processes for search.py --stdin and --serve
(decoding.py: an upload that crashes a decoder or loops in one fails alone), in this process for
the Python API unless it asks for workers.

Before each answer the store file on disk is compared with the one held open (device and inode,
size, mtime and ctime): a store deleted, replaced by a rebuilt one, or rewritten in place (a backup
copied over it) is opened again, or reported as unavailable until it can be, never answered from
silently. A damaged bucket fails only the query that reads it; the checker goes on and `health()`
says it is degraded until the bucket reads clean again.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core import cache
from ..core.hashing import (
    DEFAULT_MAX_PIXELS,
    WHOLE_FILE_BYTES,
    Hash,
    Recipe,
    describe_failure,
    is_low_information,
    open_regular_file,
)
from ..core.identity import (
    RECIPE_RETRIES,
    file_state,
    identity_and_state,
    open_with_identity,
)
from ..core.results import QueryResult, to_record
from ..core.search import (
    DEFAULT_MAX_DISTANCE,
    DELTA_MAX,
    HashIndex,
    find_matches,
    merge_matches,
)
from ..core.store import OPENED_AS, Store
from ..errors import ImageError, NeardupError, StoreError, command
from .decoding import DecoderUnavailable, InProcess, InWorkers, OnHeader
from .limits import DecodeBudget, DecodeBusy, DecodeTooLarge, Reservation, cost_bound

# A regular file larger than this is not read by --stdin (the pixel limit would refuse it anyway).
MAX_FILE_BYTES = 1024 * 1024 * 1024
# How many damage reports /health keeps (the newest).
KEPT_PROBLEMS = 5


class StoreUnavailable(NeardupError):
    """The store was deleted or replaced and the file now at its path cannot be opened."""


class StoreReadFailed(NeardupError):
    """Reading the store for one query failed (a corrupt bucket); other queries go on."""


class _FrameNeeded(Exception):
    """The store gained local features after the query was decoded without its frame."""


class _StoreChanged(Exception):
    """What the store was opened as changed before its snapshot began: open it again, ask again."""


class _HashNeeded(Exception):
    """The store at the path now holds hashes of another recipe than the query was hashed with
    (the file was replaced by a store built with another algorithm or hash size)."""


@dataclass(frozen=True, slots=True)
class _Hashed:
    query: Hash
    flipped: Hash | None  # with --mirror
    recipe: Recipe  # the store's recipe they were made with


class Checker:
    def __init__(
        self,
        store_path: str,
        *,
        max_distance: int = DEFAULT_MAX_DISTANCE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        include_low_information: bool = False,
        mirror: bool = False,
        max_matches: int | None = None,
        full_paths: bool = True,
        decode_budget: DecodeBudget | None = None,
        decoders: InProcess | InWorkers | None = None,
        warn: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.store_path = store_path
        self.max_distance = max_distance
        self.max_pixels = max_pixels
        self.include_low_information = include_low_information
        self.mirror = mirror
        self.max_matches = max_matches
        self.full_paths = full_paths
        # Without a budget (--stdin, the API) decodes are not bounded; one code path either way.
        self.decode_budget = decode_budget or DecodeBudget(capacity=2**62)
        # Where queries are decoded: search.py --stdin and --serve decode in worker processes
        # (decoding.py: a decoder's crash ends a worker, not the checker); the API, by default,
        # in this process.
        self._decoders = decoders or InProcess()
        self._warn = warn
        self._lock = threading.Lock()
        # What /health reports as "degraded", newest last: a damaged bucket (keyed by its hash,
        # dropped once it reads clean again) or the store failing an answer (until reopened).
        self._problems: dict[str, str] = {}
        # The feature index's builder thread reports too: its own lock (the answers' is held
        # while a store reports, and is not reentrant).
        self._problems_lock = threading.Lock()
        self._checked_repairs_at = -1  # the generation at which repaired buckets were looked for
        self._store, self._identity = open_with_identity(store_path, self._store_problem)
        self._state = self._state_now()  # the file's size, mtime and ctime when opened
        # Moves whenever the file answered from is replaced or rewritten: an index built in the
        # background for an earlier one is then dropped.
        self._epoch = 0
        self._index: HashIndex | None = None
        self._data_version = -1
        self._pending: HashIndex | None = None  # built in the background, taken by an answer
        self._rebuilding: threading.Thread | None = None
        self._rebuild_error: BaseException | None = None
        self._closed = False
        self._unavailable: str | None = None
        # The counts /health reports while an answer holds the lock (see health()).
        with self._store.snapshot():
            self._seen: dict[str, Any] = seen_in(self._store)
        # The dataset folder's state as last said: search.py says it once at start; a folder
        # moved or deleted while the checker runs was not said at all (a review).
        self._dataset_said = (self._store.dataset_root, self._store.dataset_gone())
        # A store with local features answers verified matches (neardup.features); the optional
        # libraries are checked now, so a missing one is one line at start, not an error per query.
        self._features: Any = None
        self._features_refused: str | None = None  # why a store that gained them cannot verify
        if self._store.has_features():
            from ..features import require
            from ..features.search import CheckerFeatures

            require()
            self._features = CheckerFeatures(store_path, self._store_problem, self._lock)
        # An unfinished index.py --features leaves images without features, answered by their
        # hash alone: said once in the log (now, at start, or when first seen), and in /health.
        self._lacking_for: tuple[str, int, str] | None = None  # the state it was counted for
        self._lacking = 0
        self._lacking_said = False
        if self._features is not None:
            with self._store.snapshot():
                self._images_without_features(self._store)

    def start_decoding(self, count: int) -> None:
        """Start `count` decoding worker processes now, if queries are decoded in workers (a
        server, before it takes uploads: one per decoding thread)."""
        if isinstance(self._decoders, InWorkers):
            self._decoders.start(count)

    @property
    def verifies(self) -> bool:
        """Whether answers verify matches with local features (each costs milliseconds)."""
        return self._features is not None

    def close(self) -> None:
        self._closed = True
        thread = self._rebuilding
        if thread is not None:
            thread.join(timeout=60)
        # An answer still running (a decode thread the server stopped waiting for) finishes
        # first; one coming after is told the checker stopped. Closed under it, the connection
        # failed with "Cannot operate on a closed database", logged as a damaged store.
        with self._lock:
            self._store.close()
        self._decoders.close()

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- queries ---------------------------------------------------------------------------------

    def check_file(self, path: str, max_distance: int | None = None) -> dict[str, Any]:
        """A file named by the caller (--stdin): every failure is an error record, never raised."""
        try:
            data = read_regular_file(path)
            hashes = self._hash(data, path)
            frame = self._frame(data, path)
            return self._answer(path, hashes, max_distance, frame,
                                lambda: self._frame(data, path), lambda: self._hash(data, path))
        except ImageError as error:
            return {"query": path, "error": error.reason}
        except (StoreUnavailable, StoreReadFailed, DecoderUnavailable) as error:
            return {"query": path, "error": str(error)}
        finally:
            self._decoders.release()

    def check_upload(
        self, data: bytes, name: str = "upload", max_distance: int | None = None
    ) -> dict[str, Any]:
        """An upload's record; a bad image is an error record (the client's fault).

        Raises DecodeTooLarge and DecodeBusy (limits.py) when decode memory refuses it, and
        StoreUnavailable or StoreReadFailed when the store cannot answer, and DecoderUnavailable
        when no worker process could be started to decode it: the server's fault.
        """
        try:
            hashes = self._hash(data, name)
            frame = self._frame(data, name)
        except (DecodeTooLarge, DecodeBusy):
            raise  # answered with their own status, or elsewhere
        except ImageError as error:
            return {"query": name, "error": error.reason}
        finally:
            self._decoders.release()
        try:
            return self._answer(name, hashes, max_distance, frame, lambda: self._frame(data, name),
                                lambda: self._hash(data, name))
        except (DecodeTooLarge, DecodeBusy):
            raise
        except ImageError as error:  # decoded again for features the store gained meanwhile
            return {"query": name, "error": error.reason}

    def _hash(self, data: bytes | None, name: str) -> _Hashed:
        """The image's hash, and its mirror image's with --mirror, from one decode (of the file
        `name` when `data` is None), with the recipe of the store as it is now."""
        if data is not None and not data:
            raise ImageError(name, "empty file")
        recipe = self._store.recipe
        with self.decode_budget.reservation() as reservation:
            # On a store with features the mirror image's hash proposes candidates too
            # (verified like any other): mirrored copies are found without --mirror.
            # With features its frame is decoded next: the worker keeps the bytes for it.
            query, flipped = self._decoders.hash(
                name, data, recipe, self.max_pixels, self.mirror or self._features is not None,
                on_header=_reserving(reservation, name, data), keep=self._features is not None)
            return _Hashed(query, flipped, recipe)

    def _frame(self, data: bytes | None, name: str) -> Any:
        """The picture as local features see it (stores with features only; None otherwise),
        decoded outside the lock and within the same decode budget as the hash (from the file
        `name` when `data` is None)."""
        if self._features is None:
            return None
        with self.decode_budget.reservation() as reservation:
            return self._decoders.frame(name, data, self.max_pixels,
                                        on_header=_reserving(reservation, name, data))

    def _answer(
        self, name: str, hashes: _Hashed, max_distance: int | None, frame: Any,
        frame_again: Callable[[], Any], hash_again: Callable[[], _Hashed],
    ) -> dict[str, Any]:
        """The record of one decoded query. A store that gained local features since the query
        was decoded (index.py --features finished meanwhile) needs its frame too:
        `frame_again` decodes it, outside the lock, and the query is answered again. A store
        replaced meanwhile by one of another recipe needs the query hashed its way:
        `hash_again`, also outside the lock."""
        hash_only = False
        for _attempt in range(RECIPE_RETRIES):
            try:
                return self._answer_once(name, hashes, max_distance, frame, hash_only)
            except _FrameNeeded:
                frame, hash_only = frame_again(), True
            except _HashNeeded:
                hashes = hash_again()
            except _StoreChanged:
                pass  # the next attempt opens the store again (_current_store)
        raise StoreUnavailable("the store kept changing its recipe while this query was answered")

    def _answer_once(
        self, name: str, hashes: _Hashed, max_distance: int | None, frame: Any,
        hash_only: bool = False,
    ) -> dict[str, Any]:
        query, flipped = hashes.query, hashes.flipped
        radius = self.max_distance if max_distance is None else max_distance
        result = QueryResult(name, query.hex(), is_low_information(query),
                             undecided_hex=query.undecided_hex())
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the checker is stopping")
            store = self._current_store()
            if store.recipe != hashes.recipe:
                # Hashed before the store was seen replaced: a 64-bit query against 256-bit
                # hashes failed every such first query, and one of another algorithm and the
                # same size was answered from the new store without error, wrongly.
                raise _HashNeeded
            try:
                with store.snapshot():
                    if store.meta_changed():  # since the look at the file: see meta_changed
                        raise _StoreChanged
                    self._follow_features(store)
                    if self._features is not None and frame is None and not hash_only:
                        raise _FrameNeeded
                    self._forget_repaired(store)
                    self._watch_dataset(store)
                    index = self._current_index(store)
                    if self._features is not None and frame is not None:
                        self._images_without_features(store)
                        looks = [query] + ([flipped] if flipped is not None else [])
                        matches = self._features.answer(
                            store, store.generation(), index, looks, frame, radius,
                            self.include_low_information)
                    else:
                        matches = find_matches(
                            store, query, radius, index,
                            include_low_information=self.include_low_information)
                    if flipped is not None and frame is None and self.mirror:
                        matches = merge_matches(matches, find_matches(
                            store, flipped, radius, index,
                            include_low_information=self.include_low_information))
                    truncated = self.max_matches is not None and len(matches) > self.max_matches
                    result.matches = matches[: self.max_matches] if truncated else matches
                    record = to_record(result, store.dataset_root, self._warn)
                    if store.tracking:  # counted by triggers: O(1), so kept fresh for /health
                        self._seen = seen_in(store)
                        if self._features is not None and self._lacking:
                            self._seen["images_without_features"] = self._lacking
            except (StoreError, sqlite3.DatabaseError) as error:
                reason = f"store damaged: {without_path(str(error), store.path)}"
                with self._problems_lock:
                    self._note_problem(reason, reason)
                self._warn(f"{name}: store damaged: {error}")  # the operator's line: all of it
                raise StoreReadFailed(reason) from error
        if not self.full_paths:
            for match in record["matches"]:
                del match["path"]
        record["truncated"] = truncated
        return record

    # -- keeping the index current (called with the lock held, inside a snapshot) -------------

    def _current_index(self, store: Store) -> HashIndex:
        if self._index is None:  # at start, or after the store file was replaced
            self._index = HashIndex.from_store(store)
            self._data_version = store.data_version()
        if self._rebuild_error is not None:
            error, self._rebuild_error = self._rebuild_error, None
            if isinstance(error, NeardupError):
                raise error
            self._warn(f"rebuilding the search index failed ({type(error).__name__}: {error});"
                       " answering from the one in memory")
        if self._pending is not None:
            self._index, self._pending = self._pending, None
        index = self._index
        if not store.refresh_tracking():
            # A format 1 store (written by an older neardup, not upgraded yet), or one whose
            # triggers another program dropped: no change log, so any commit by another
            # connection means a full rebuild, done here.
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

    def _follow_features(self, store: Store) -> None:
        """Verify answers when the store keeps local features, and only then, whatever it kept
        at start (called under the lock, in a snapshot: one lookup per answer). A checker
        started on a hash-only store kept answering by the hash alone after index.py --features
        had finished on it (a review); the feature index is loaded by the next answer, as at
        start."""
        keeps = store.has_features()
        if keeps == (self._features is not None):
            return
        if not keeps:
            self._features = None
            self._warn(f"{self.store_path}: the store keeps no local features any more: answers"
                       " are by hash alone")
            return
        from ..features import require
        from ..features.search import CheckerFeatures

        try:
            require()
        except NeardupError as error:  # the libraries are not here: said once, and in /health
            if self._features_refused is None:
                self._features_refused = (f"the store keeps local features now, and they cannot"
                                          f" be used ({error}): answers are by hash alone,"
                                          " unverified; restart the checker with them installed")
                self._warn(f"{self.store_path}: {self._features_refused}")
                with self._problems_lock:
                    self._note_problem("features", self._features_refused)
            return
        self._features = CheckerFeatures(self.store_path, self._store_problem, self._lock)
        self._warn(f"{self.store_path}: the store keeps local features now: answers are verified"
                   " matches")

    def _watch_dataset(self, store: Store) -> None:
        """Say once in the log when the store's dataset folder goes (the paths answered are then
        not on disk) or comes back; a look at one folder, about a microsecond an answer."""
        gone = store.dataset_gone()
        root, said = self._dataset_said
        if root == store.dataset_root and (gone is None) == (said is None):
            return
        self._dataset_said = (store.dataset_root, gone)
        if gone is not None:
            self._warn(gone)
        elif root == store.dataset_root:
            self._warn(f"{self.store_path}: its dataset folder {root} is back")

    def _images_without_features(self, store: Store) -> int:
        """How many stored images have no features yet, counted again when the store or its
        features moved; said in the log once while there are any (called in a snapshot)."""
        state = (store.store_id, store.generation(), store.feature_token())
        if state != self._lacking_for:
            from ..features.search import lacking_features

            self._lacking, line = lacking_features(store)
            self._lacking_for = state
            if line is None:
                self._lacking_said = False  # finished: said again if it ever happens again
            elif not self._lacking_said:
                self._warn(line)
                self._lacking_said = True
        return self._lacking

    def _rebuild_in_background(self) -> None:
        if self._rebuilding is not None or self._closed:
            return
        thread = threading.Thread(target=self._rebuild, name="neardup-index-rebuild", daemon=True)
        self._rebuilding = thread
        thread.start()

    def _rebuild(self) -> None:
        epoch = self._epoch
        try:
            store = Store.open_for_reading(self.store_path, quick_check=False,
                                           report=self._warn)
            try:
                with store.snapshot():
                    if store.store_id != self._store.store_id:
                        return  # the file was replaced meanwhile: the next answer reopens it
                    # A fresh base (or a cache entry of this very state), saved for everyone else.
                    index = HashIndex.from_store(store, max_delta=0)
            finally:
                with self._lock:  # never during an answer: its close drops the process's lock
                    store.close()  # on the -shm for a moment (core.sharedmemory takes it again)
            with self._lock:
                if epoch == self._epoch:  # not for a file answered from before it was rewritten
                    self._pending = index
        except BaseException as error:  # noqa: BLE001 - reported by the next answer
            self._rebuild_error = error
        finally:
            self._rebuilding = None

    def _store_problem(self, line: str) -> None:
        """What the store reports while answering (a damaged bucket, skipped): logged once, and
        kept for /health, which then says "degraded" until the bucket reads clean again."""
        shown = without_path(line, self.store_path)
        bucket = re.match(r"bucket ([0-9a-f]+):", shown)
        key = bucket.group(1) if bucket else shown
        with self._problems_lock:
            known = self._problems.get(key) == shown  # said already, through another connection
            self._note_problem(key, shown)
        if not known:
            self._warn(line)

    def _note_problem(self, key: str, reason: str) -> None:
        """(Called with _problems_lock held.)"""
        self._problems.pop(key, None)  # the newest last
        self._problems[key] = reason
        while len(self._problems) > KEPT_PROBLEMS:
            del self._problems[next(iter(self._problems))]

    def _forget_repaired(self, store: Store) -> None:
        """Buckets reported damaged that read clean now are no longer problems (a review:
        /health said "degraded" for ever after the bucket was written right again), and one
        damaged again another way is said again with its new reason. Looked at once per
        generation, inside the answer's snapshot, while any is reported."""
        generation = store.generation()
        if not self._problems or generation == self._checked_repairs_at:
            return
        self._checked_repairs_at = generation
        with self._problems_lock:
            buckets = [key for key in self._problems if re.fullmatch(r"[0-9a-f]+", key)]
        for key in buckets:
            problem = store.bucket_problem_now(key)
            reason = None if problem is None else f"bucket {key}: {problem}"
            with self._problems_lock:
                if reason is None:
                    self._problems.pop(key, None)
                elif self._problems.get(key) != reason:  # damaged again, another way
                    self._note_problem(key, reason)
                    self._warn(f"{self.store_path}: {reason}; skipped")

    # -- the store's identity --------------------------------------------------------------------

    def _current_store(self) -> Store:
        """The open store, reopened first if the file at its path is no longer the one held open,
        or was rewritten in place.

        Called under the lock. One stat per answer: a few microseconds. SQLite notices another
        connection's commits through the WAL's index, not a file rewritten under it: a backup
        copied back over the store (`cp`), or the file cut to nothing, went on being answered
        from the pages it had read (a review). So the file's size, mtime and ctime are compared
        too, and when they moved the store is opened again: a checkpoint (index.py moving its
        commits into the file after more of them) keeps the search index, which then follows
        the log as for any commit (_reopen_rewritten says when it is loaded again).
        """
        identity, state = identity_and_state(self.store_path)
        if identity == self._identity:  # the same file, perhaps rewritten (or unreadable since)
            if (state == self._state and self._unavailable is None
                    and not self._store.shared_memory_lost):
                if not self._store.meta_changed():
                    return self._store
                old = self._store
                store = self._reopen_rewritten(state)
                if store.store_id == old.store_id:  # else said as other contents
                    changed = [name for name in OPENED_AS
                               if store.meta.get(name) != old.meta.get(name)]
                    self._warn(f"{self.store_path}: another program changed what the store"
                               f" records of itself ({', '.join(changed) or 'neardup_meta'});"
                               " reopened it")
                return store
            return self._reopen_rewritten(state)
        # Closed before the new file is opened: a connection to each, open at once, share the
        # -shm path, and the old one's close would drop the new one's lock (core.sharedmemory).
        self._store.close()
        store, identity = self._open_again("the store was deleted or replaced and cannot be"
                                           " reopened")
        self._replace_store(store, identity, state)
        self._warn(f"{self.store_path}: the store was replaced; reopened it")
        return store

    def _open_again(self, failure: str) -> tuple[Store, tuple[int, int]]:
        """The store at the path opened anew, or StoreUnavailable (said once) with `failure`."""
        try:
            return open_with_identity(self.store_path, self._store_problem)
        except StoreError as error:
            reason = f"{failure} ({without_path(str(error), self.store_path)})"
            if reason != self._unavailable:
                self._warn(f"{self.store_path}: {reason}")
            self._unavailable = reason
            raise StoreUnavailable(reason) from error

    def _reopen_rewritten(self, state: tuple[int, int, int] | None) -> Store:
        """_current_store() for a file whose contents moved under the same identity (`state`:
        its size, mtime and ctime as seen before opening it): index.py moving its commits into
        the file (a checkpoint, at the end of every run and as the -wal grows), or another
        program writing another store, or another state of this one, over it.

        Another store, or an earlier generation of this one, keeps nothing (one log line). A
        later generation keeps the search index, which follows the log as for any commit (or,
        where index.py pruned the log past it, is built again by a thread). At the generation
        the index is at, the index is loaded again (from the cache index.py leaves for the
        state it wrote, checked against the store as at start, or built: milliseconds below
        cache.CACHE_MIN_HASHES): a checkpoint and a backup restored and indexed back to that
        very generation cannot be told apart by the log, which index.py prunes (a review found
        such a store answered from the replaced one's index).

        Also where this process lost its lock on the -shm (core.sharedmemory): the connection
        is closed first, as any opened beside it would share its node, lock lost."""
        self._store.close()
        store, identity = self._open_again("the store's file was rewritten and cannot be read")
        index = self._index
        other = store.store_id != self._store.store_id or (
            index is not None and index.tracked and store.tracking
            and store.generation() < index.generation)
        later = (not other and index is not None and index.tracked and store.tracking
                 and store.generation() > index.generation)
        self._store, self._identity, self._state = store, identity, state
        if self._unavailable is not None:
            self._unavailable = None
            self._warn(f"{self.store_path}: the store's file can be read again; reopened it")
        if not later:
            self._index, self._pending = None, None
            self._epoch += 1
        self._checked_repairs_at = -1
        if other:  # not a later state of the store answered from: what it said no longer holds
            with self._problems_lock:
                self._problems = {}
            self._warn(f"{self.store_path}: the store's file was rewritten with other contents"
                       f" ({command('index.py')} --rebuild, or a backup copied over it); reloaded it")
        return store

    def _replace_store(self, store: Store, identity: tuple[int, int],
                       state: tuple[int, int, int] | None) -> None:
        self._store, self._identity, self._state = store, identity, state
        self._index, self._pending = None, None  # of the old contents
        self._epoch += 1
        self._checked_repairs_at = -1
        self._unavailable = None
        with self._problems_lock:
            self._problems = {}  # the damage was in the old file

    def _state_now(self) -> tuple[int, int, int] | None:
        try:
            return file_state(os.stat(self.store_path))
        except OSError:
            return None

    def health(self) -> dict[str, Any]:
        """"ok", "degraded" (some query met a damaged store) or "unavailable" (no store to read).

        Never waits behind an answer: a review found /health waiting up to 2.8 s for the lock
        held by answers verifying matches with local features. While an answer holds the lock,
        the report is the state as that answer or the one before it found it (the answer looks
        at the store file itself, and reopens or reports it)."""
        if not self._lock.acquire(blocking=False):
            return self._health_seen(self._seen)
        try:
            return self._health_locked()
        finally:
            self._lock.release()

    def _health_seen(self, seen: dict[str, Any]) -> dict[str, Any]:
        """health() from what the last answer or report saw, without the lock."""
        if self._closed:
            return {"status": "unavailable", "error": "the checker is stopping"}
        unavailable = self._unavailable
        if unavailable is not None:
            return {"status": "unavailable", "error": unavailable}
        with self._problems_lock:
            problems = list(self._problems.values())
        report: dict[str, Any] = {"status": "degraded" if problems else "ok", **seen}
        if problems:
            report["problems"] = problems
        return report

    def _health_locked(self) -> dict[str, Any]:
        if self._closed:
            return {"status": "unavailable", "error": "the checker is stopping"}
        try:
            store = self._current_store()
        except StoreUnavailable as error:
            return {"status": "unavailable", "error": str(error)}
        try:
            with store.snapshot():
                self._follow_features(store)
                self._forget_repaired(store)
                self._watch_dataset(store)
                self._seen = seen_in(store)
                if self._features is not None and self._images_without_features(store):
                    # Answered by their hash alone, unverified: an unfinished upgrade.
                    self._seen["images_without_features"] = self._lacking
                with self._problems_lock:
                    problems = list(self._problems.values())
                report: dict[str, Any] = {
                    "status": "degraded" if problems else "ok", **self._seen}
        except (StoreError, sqlite3.DatabaseError) as error:
            return {"status": "unavailable",
                    "error": f"cannot read the store ({without_path(str(error), store.path)})"}
        if problems:
            report["problems"] = problems
        return report


def _reserving(reservation: Reservation, name: str, data: bytes | None) -> OnHeader | None:
    """How a query's decode memory is reserved before it is decoded: at once when its bytes
    bound it (a small plain JPEG), else once the decoder has read its header and knows its
    reduced size (on_header)."""
    bound = cost_bound(data)
    if bound is None:
        return lambda header: reservation.take(name, header.cost)
    reservation.take(name, bound)
    return None


def seen_in(store: Store) -> dict[str, Any]:
    """What /health reports of a store (read within a snapshot)."""
    hashes, images = store.counts()  # O(1) where the store's triggers keep them
    # No number while another program has dropped the triggers that count the changes: it said
    # 0, as if the store had never changed (a review).
    counted = store.refresh_tracking() or store.format == "1"
    return {"hashes": hashes, "images": images,
            "generation": store.generation() if counted else None}


def without_path(message: str, path: str) -> str:
    """A store error as clients are told it: without the server's path (in front, or anywhere
    in it: a damaged store's message names the file in the command to check it) and without
    what the operator should do about it (after the first "; "), which the log keeps."""
    prefix = f"{path}: "
    message = message[len(prefix):] if message.startswith(prefix) else message
    message = message.split("; ", 1)[0]
    for named in {path, os.path.abspath(path)}:
        message = message.replace(named, "the store")
    return message


def read_regular_file(path: str) -> bytes | None:
    """A file's bytes, or None for one over WHOLE_FILE_BYTES, which is read as it is decoded
    (held whole, a sparse gigabyte took a gigabyte of memory); at most MAX_FILE_BYTES; FIFOs and
    devices refused without blocking."""
    try:
        with open_regular_file(path) as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise ImageError(path, f"refused: {size:,} bytes is over the limit of"
                                       f" {MAX_FILE_BYTES:,}")
            return None if size > WHOLE_FILE_BYTES else stream.read()
    except OSError as error:
        raise ImageError(path, describe_failure(path, error)) from error
