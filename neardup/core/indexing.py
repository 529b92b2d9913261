"""Indexing a folder: find images, hash the new and changed ones in parallel, commit in batches.

Hashing runs in worker processes; only this process writes, one transaction per batch, so a crash
or Ctrl-C loses at most the batch in flight and a re-run picks up where the last commit left off.

What a run may decide on its own, and what it may not:
- A file is unchanged when its size, mtime, inode and ctime are those recorded. A file recorded
  within RACY_NS of the moment it was looked at is hashed again by the next run, as git does with
  "racily clean" entries: a rewrite inside the same timestamp tick could keep all four.
- Entries are removed only for files that are really gone: a folder that cannot be listed, or a
  file that cannot be stat'ed, keeps its entries. A run that would remove more than half of the
  store's images (a dataset folder on a disk that failed to mount looks exactly like that) is
  refused before anything is written, unless --allow-mass-removal says so; an empty dataset folder
  never empties a store.
- Entries other programs wrote that are not (hash, list of paths) are reported, every run, until
  fixed; search skips them.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import imagehash
import numpy as np
import PIL
from tqdm import tqdm

from .. import __version__
from ..errors import DatasetError, ImageError, NeardupError, command
from . import cache
from .discovery import FoundFile, Skipped, walk_images
from .hashing import DEFAULT_MAX_PIXELS, Hash, Recipe, hash_file, is_low_information
from .names import shown_path
from .processes import (
    STATUS_LOST,
    TERMINATE_WAIT_SECONDS,
    ForkServerUnreachable,
    answer_each_sent,
    as_worker,
    check_timeout,
    death_reason,
    end_process,
    ended_by,
    kill_for_sure,
    not_started,
    start_worker,
    starting_workers,
    thread_refused,
    thread_refused_text,
    watch,
    worker_context,
    workers_import_ours,
)
from .search import HashIndex
from .store import (
    CHECKPOINT_FULL,
    CHECKPOINT_HELD,
    CHECKPOINT_IO,
    RACY,
    RACY_NS,
    FileState,
    IndexedFile,
    Store,
    check_recipe_and_folder,
    check_store_path,
    describe_key,
    key_text,
)

# Images per committed transaction. Each commit waits for the disk (synchronous = FULL): at 500,
# index.py -j 1 committed 8 times a second on small photos, 2 % of its time on this machine's SSD
# (CALTECH-101: 2.18 s against 2.14 s at 2,000) and more on a slow disk. BATCH_SECONDS bounds
# what a crash can cost either way.
DEFAULT_BATCH_SIZE = 2000
# A batch is also committed after this many seconds, so a slow disk still commits often.
BATCH_SECONDS = 2.0
# How long a worker may take over one file before it fails (index.py --file-timeout): a decoder
# caught in a loop held a run for ever, and every later run at the same file. Generous: a
# picture of noise at the default --max-pixels (100 megapixels, a PNG or a progressive JPEG)
# took 2.7 to 5.6 s, local features included.
DEFAULT_FILE_SECONDS = 600.0

# A run that adds at least this many images, and half the store, compacts the file afterwards.
COMPACT_MIN_IMAGES = 10_000

# The most worker processes a run starts: this many per core, and never fewer than the floor. More
# cannot hash faster (the work is CPU-bound), and each costs about 50 MB: a review's `-j 100000`
# would have started one process per file of CALTECH-101, 9,145 of them.
MAX_WORKERS_PER_CORE = 8
MAX_WORKERS_FLOOR = 32


def max_workers() -> int:
    """The most worker processes (or local Dask workers) this machine is given."""
    return max(MAX_WORKERS_FLOOR, MAX_WORKERS_PER_CORE * (os.cpu_count() or 1))


def check_worker_count(count: int, option: str = "jobs") -> None:
    """Refuse, in one line, a worker count this machine cannot use (see max_workers)."""
    if count < 0:
        raise NeardupError(f"{option} {count} is negative")
    if count > max_workers():
        raise NeardupError(f"{option} {count} is more workers than this machine can use: at most"
                           f" {max_workers()} on its {os.cpu_count() or 1} cores")

Reporter = Callable[[str], None]


# Files hashed from which the summary line gives a rate.
RATE_FROM = 50


@dataclass(frozen=True, slots=True)
class HashOutcome:
    """What a worker made of one file: a hash, or the reason there is none."""

    file: FoundFile
    hash_hex: str | None
    error: str | None
    features: bytes | None = None  # local features, when the store keeps them
    # The file could not be reached where it was hashed: "missing" (not found there) or "denied"
    # (permission denied), or its process "died" or "timed out" on it, as opposed to read and
    # found wanting ("": says something of its content). An unreached file still the one
    # indexed (FileState.same_file) keeps its entry.
    unreached: str = ""
    # Only its ctime moved while it was read (a hard link made to it, a chmod, xattrs set): the
    # hash stands, but is recorded racy, so the next run hashes the file again (see _hash_one).
    racy: bool = False


@dataclass(slots=True)
class IndexSummary:
    indexed: int = 0  # hashed and stored in this run (new, or changed)
    # Stored before without local features, the hash the same, stored with them now (a hash-only
    # store given --features): neither indexed anew nor unchanged.
    features_added: int = 0
    unchanged: int = 0  # already stored as they are (some hashed again to be sure: same hash)
    removed: int = 0  # stored before, gone (or no longer readable) now
    failed: int = 0  # candidates that could not be hashed
    skipped: int = 0  # entries that could not even be looked at (broken links, unreadable folders)
    low_information: int = 0  # indexed in this run with a blank/smooth hash (see is_low_information)
    total: int = 0  # images in the store after the run
    seconds: float = 0.0  # the whole run
    hashed: int = 0  # files hashed in this run (new, changed, or hashed again to be sure)
    # Of those, files stored before that were hashed again to be sure (changed within RACY_NS of
    # the run that indexed them, or replaced keeping size and mtime): most come back unchanged.
    rehashed: int = 0
    hashing_seconds: float = 0.0  # from the first file given to it to its last outcome stored
    bad_entries: int = 0  # store entries written by others that are not (hash, list of paths)
    refused_removal: int = 0  # entries this run would have removed, had it not been refused
    refusal: str = ""  # why the run wrote nothing
    kept: int = 0  # stored images that could not be reached this run: their entries stay
    missing_there: int = 0  # files the hashing side did not find, though this side sees them
    # Of `removed`, stored images still there but read and found no image now (damaged in place):
    # "removed" alone read as files deleted (a review).
    unreadable_now: int = 0

    def line(self) -> str:
        if self.refusal:
            return (f"nothing written: {self.refusal}; {_images(self.total)} in the store"
                    f" (found {self.unchanged + self.indexed}, skipped {self.skipped})")
        # The rate is the hashing's own: over the whole run, one new photo among 9,000 unchanged
        # read as "3 images/s" (the walk and the checks are most of such a run).
        # A rate over a few files is mostly the workers' start (a review read "1 hashed, 6
        # images/s" as a slowdown): given from RATE_FROM files on.
        again = f" ({self.rehashed:,} again, to be sure)" if self.rehashed else ""
        rate = (f", {self.hashed / self.hashing_seconds:,.0f} images/s"
                if self.hashed >= RATE_FROM and self.hashing_seconds > 0 else "")
        speed = f"{self.hashed:,} hashed{again}{rate}; " if self.hashed else ""
        unreadable = f" ({self.unreadable_now} no longer readable)" if self.unreadable_now else ""
        return (
            f"indexed {self.indexed},"
            + (f" features added {self.features_added}," if self.features_added else "")
            + f" unchanged {self.unchanged}, removed {self.removed}{unreadable},"
            f" failed {self.failed}, skipped {self.skipped}"
            + (f", {self.low_information} low-information" if self.low_information else "")
            + (f", {self.bad_entries} bad store entries" if self.bad_entries else "")
            + (f", {self.kept} kept as they were (could not be read)" if self.kept else "")
            + f"; {_images(self.total)} in the store"
            f" ({speed}{self.seconds:,.1f} s in all)"
        )

    def written(self) -> int:
        """Images this run stored something for: indexed anew, or given their features."""
        return self.indexed + self.features_added


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def library_versions() -> dict[str, str]:
    return {
        "neardup": __version__,
        "Pillow": PIL.__version__,
        "ImageHash": imagehash.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# Hashes a list of files and yields the outcomes in groups; each group is committed as one
# transaction. Local: groups by size and time from a process pool. On a cluster: one per partition.
Hasher = Callable[[list[FoundFile], Recipe, int], Iterator[list[HashOutcome]]]


def index_folder(
    dataset: str,
    store_path: str,
    recipe: Recipe,
    *,
    jobs: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    report: Reporter = lambda line: None,
    hasher: Hasher | None = None,
    allow_mass_removal: bool = False,
    features: bool = False,
    moved_from: str | None = None,
    file_seconds: float = DEFAULT_FILE_SECONDS,
) -> IndexSummary:
    """Bring the store up to date with the images under `dataset`. `jobs=0` uses every core.

    `hasher` replaces the local process pool (neardup.scale.cluster hashes on a Dask cluster); whoever
    hashes, only this process writes, and files committed by an earlier, interrupted run are
    unchanged now and not hashed again. `features`: also store local features (the hasher must
    compute them: local_hasher(..., features=True), cluster_hasher(..., features=True)).
    `moved_from`: a store indexing that folder is re-pointed to `dataset` (moved or copied
    there), once the run is not refused. `file_seconds`: a file the local workers take longer
    to hash fails (a decoder caught in a loop), and the run goes on.
    """
    started = time.perf_counter()
    looked_at_ns = time.time_ns()  # every stat below is taken after this moment
    check_worker_count(jobs)
    check_timeout(file_seconds)
    if recipe.bits % 8:
        # A store keeps each hash as whole bytes (its files table, the search arrays): 6 x 6 = 36
        # bits, nine hex digits, ended in a traceback and left an empty store behind (a review).
        raise NeardupError(f"a store keeps each hash as whole bytes, so its hash size must be a"
                           f" multiple of 4 ({recipe.describe()} is {recipe.bits} bits)")
    root = os.path.abspath(dataset)
    if not os.path.isdir(root):
        raise DatasetError(f"{dataset}: not a folder")
    for folder in (root, os.path.abspath(moved_from) if moved_from else ""):
        try:
            folder.encode("utf-8")
        except UnicodeEncodeError:
            # Names inside it may be any bytes (stored escaped), but the folder's own path is
            # the store's record of what it indexes, kept as text.
            raise DatasetError(f"{shown_path(dataset if folder == root else moved_from)}: the"
                               f" folder's path is not UTF-8 ({shown_path(folder)}), and a store"
                               " keeps it as text: rename the folder, or index it through a"
                               " symlink whose path is UTF-8") from None

    def shown(path: str) -> str:
        """A file's path as the user named its folder (`images/x.jpg` for -d images)."""
        inside = os.path.relpath(path, root)
        return path if inside.startswith(os.pardir) else os.path.join(dataset, inside)

    check_store_path(store_path, writing=True)  # a device, FIFO or missing folder: before anything
    _refuse_before_the_walk(store_path, recipe, root,
                            os.path.abspath(moved_from) if moved_from else None, features)
    if features:
        from ..features import require

        require()  # one line naming what to install, before anything is written
    summary = IndexSummary()
    found: list[FoundFile] = []
    kept_prefixes: list[str] = []  # what could not be looked at keeps its entries
    own = _own_files(root, store_path)
    for entry in walk_images(root):
        if own(entry.relpath if isinstance(entry, FoundFile)
               else os.path.relpath(entry.path, root).replace(os.sep, "/")):
            continue  # the store itself, kept inside the dataset (`-s photos/dupes`)
        if isinstance(entry, Skipped):
            if entry.relpath == "":  # the dataset folder itself: the run can do nothing
                raise DatasetError(f"{dataset}: {entry.reason}; the store is as it was")
            summary.skipped += 1
            report(f"{shown(entry.path)}: {entry.reason}")
            if entry.relpath is not None:
                kept_prefixes.append(entry.relpath)
        else:
            found.append(entry)
    if not found and not kept_prefixes and not os.path.exists(store_path):
        summary.seconds = time.perf_counter() - started
        return summary  # nothing to index, and no empty store left behind
    local = hasher is None  # made below, once the store names a file known to hash

    with Store.open_for_writing(store_path, recipe, root, library_versions(), report=report,
                                moved_from=os.path.abspath(moved_from) if moved_from
                                else None) as store:
        if store.recipe != recipe:  # the same hash made by an older neardup: keep to its recipe
            if not recipe.exact:
                report(f"{store_path}: built with {store.recipe.describe()}: new images are"
                       f" hashed with v{store.recipe.preprocess_version} too (another --shelve"
                       f" would use v{recipe.preprocess_version})")
            recipe = store.recipe
        _put_right(store, report)
        stored = store.file_states()
        present = {item.relpath for item in found}
        gone = [relpath for relpath in stored
                if relpath not in present and not _under_any(relpath, kept_prefixes)]
        refusal = _removal_refusal(len(gone), len(stored), bool(found), dataset,
                                   allow_mass_removal)
        if refusal:
            summary.refusal = refusal
            summary.refused_removal = len(gone)
            summary.total = len(stored)
            summary.unchanged = len(found)
            summary.seconds = time.perf_counter() - started
            return summary
        if store.dataset_root != root:  # --moved-from, and not refused: it indexes root now
            store.move_dataset(root)
        lacking = _prepare_features(store, store_path, features, report)

        start_generation = store.generation()
        cache.forget_other_histories(store)
        # What other programs wrote since the last run, as the change log lists it, and what
        # changed in the file behind SQLite's back, found by comparing every bucket with the
        # table of files. Where those two disagree neither is trusted: the images concerned are
        # hashed again, and their buckets mended from what that gives (after hashing, below).
        relisted = _relist_lost_images(store, report)
        out_of_step, doubtful = store.buckets_out_of_step(stored)
        bad = _check_foreign_entries(store, out_of_step)
        if doubtful:
            report(f"{store.path}: {_images(len(doubtful))} listed under one hash and recorded"
                   " under another, or not listed at all (the store file was changed behind"
                   " index.py); hashed again")
        edited = _indexed_under_edited_buckets(store, stored) - doubtful
        if edited:
            report(f"{store.path}: {_images(len(edited))} indexed under hashes other programs"
                   " changed since the last run; hashed again")
            doubtful |= edited

        todo: list[FoundFile] = []
        # A file hashed before and unchanged since: what tells a broken decoder from bad files.
        known_good: FoundFile | None = None
        rechecks: dict[str, str] = {}  # relpath -> stored hash, hashed again to be sure
        refreshed: list[IndexedFile] = []  # unchanged, recorded with what stat says now
        for item in found:
            state = stored.get(item.relpath)
            verdict = _compare(state, item)
            if item.relpath in doubtful and verdict in ("unchanged", "record", "recheck"):
                assert state is not None
                rechecks[item.relpath] = state.hash_hex
                todo.append(item)
            elif item.relpath in lacking and verdict in ("unchanged", "record", "recheck"):
                # Hashed again for the local features it lacks; the same hash then counts it as
                # given features (neither "indexed" nor "unchanged"), racily recorded or not.
                assert state is not None
                rechecks[item.relpath] = state.hash_hex
                todo.append(item)
            elif verdict == "unchanged":
                summary.unchanged += 1
                known_good = known_good or item
            elif verdict == "record":
                assert state is not None
                summary.unchanged += 1
                refreshed.append(_record(item, state.hash_hex, looked_at_ns))
            elif verdict == "recheck":
                assert state is not None
                rechecks[item.relpath] = state.hash_hex
                todo.append(item)
            else:
                todo.append(item)

        store.apply(refreshed, gone, keep_features=True)  # unchanged: their features stand
        summary.removed += len(gone)
        written: set[str] = set(relisted)  # hashes this run changed, not someone else

        if local:
            hasher = local_hasher(jobs, batch_size, features=features, report=report,
                                  file_seconds=file_seconds, known_good=known_good)
        assert hasher is not None
        bar = tqdm(total=len(todo), unit="img", disable=not progress, dynamic_ncols=True)
        vanished: set[str] = set()  # folders found gone during the run, said once each
        hashing_started = time.perf_counter()
        try:
            for outcomes in hasher(todo, recipe, max_pixels):
                batch: list[IndexedFile] = []
                failed_before: list[str] = []
                for outcome in outcomes:
                    relpath = outcome.file.relpath
                    if outcome.hash_hex is None:
                        summary.failed += 1
                        if outcome.unreached == "missing" and os.path.exists(outcome.file.path):
                            # A Dask worker that does not see the folder misses every file: a
                            # few are named, and the caller says how many in one line.
                            summary.missing_there += 1
                            if summary.missing_there <= MISSING_THERE_SHOWN:
                                report(f"{shown(outcome.file.path)}: a Dask worker did not find"
                                       f" it, though it is here (up to {MISSING_THERE_SHOWN} such"
                                       " files are named)")
                        elif outcome.unreached == "missing" and (
                                gone := _vanished_folder(root, outcome.file)) is not None:
                            # A folder deleted or moved during the run: said once for it, not
                            # once per file (a review: 711 lines for one folder).
                            if gone not in vanished:
                                vanished.add(gone)
                                report(f"{shown(gone)}: this folder was deleted or moved during"
                                       " the run; its files are not found (said once for the"
                                       " folder, counted as failed)")
                        else:
                            report(f"{shown(outcome.file.path)}: {outcome.error}")
                        state = stored.get(relpath)
                        if state is None:
                            continue
                        if outcome.unreached and state.same_file(
                                outcome.file.size, outcome.file.mtime_ns, outcome.file.inode):
                            # Not read (a worker that does not see the folder, a chmod, a file
                            # deleted meanwhile), and its size, mtime and inode are those indexed:
                            # the entry stays (the next run removes it if the file is gone).
                            summary.kept += 1
                        else:  # read and not an image now, or changed and unreadable: stale
                            failed_before.append(relpath)
                            written.add(state.hash_hex)
                        continue
                    batch.append(_record(outcome.file, outcome.hash_hex, looked_at_ns,
                                         outcome.features, outcome.racy))
                    summary.hashed += 1
                    summary.rehashed += relpath in rechecks and relpath not in lacking
                    if rechecks.get(relpath) == outcome.hash_hex:
                        if relpath in lacking:
                            summary.features_added += 1
                        else:
                            summary.unchanged += 1  # hashed again to be sure: the same picture
                        continue
                    written.add(outcome.hash_hex)
                    if relpath in stored:
                        written.add(stored[relpath].hash_hex)
                    summary.indexed += 1
                    if is_low_information(Hash.from_hex(outcome.hash_hex, recipe.bits)):
                        summary.low_information += 1
                store.apply(batch, failed_before)
                summary.removed += len(failed_before)
                summary.unreadable_now += len(failed_before)
                bar.update(len(outcomes))
        finally:
            bar.close()
            summary.hashing_seconds = time.perf_counter() - hashing_started
        written.update(_mend_out_of_step(store, report, out_of_step))
        summary.total = store.image_count()
        if summary.total == 0 and store.created:
            store.discard()  # nothing could be indexed into a store this run made: leave nothing
            summary.seconds = time.perf_counter() - started
            return summary
        if summary.written() >= COMPACT_MIN_IMAGES and summary.written() * 2 >= summary.total:
            store.compact()  # this run at least doubled the store: worth one rewrite
        # Entries changed by other programs while this run wrote, before their log is pruned.
        end_generation = store.generation()
        late = [key for key in store.changed_raw_keys(start_generation, end_generation)
                if key_text(key) not in written]
        bad = store.check_entries(list(dict.fromkeys([*bad, *late])))  # as they are now
        for key, problem in list(bad.items())[:BAD_ENTRIES_NAMED]:
            report(f"{store.path}: store entry {describe_key(key)}: {problem}; search skips it"
                   " (fix it, or delete it)")
        if len(bad) > BAD_ENTRIES_NAMED:  # a recipe edited by hand made every key one (a review)
            report(f"{store.path}: {len(bad) - BAD_ENTRIES_NAMED:,} more bad store entries")
        summary.bad_entries = len(bad)
        store.record_bad_entries(bad)
        settle_caches(store, end_generation)
        if features:
            from ..features.index import FeatureIndex

            # Cached now, so the first search does not pay; on a run that changed nothing this
            # reads the cached index back and checks it (its CRC: 0.2 s at 10^5 images).
            with store.snapshot():
                FeatureIndex.from_store(store)
        if (left := store.checkpoint()) is not None:
            report(checkpoint_line(store.path, *left))
    summary.seconds = time.perf_counter() - started
    return summary


def _vanished_folder(root: str, file: FoundFile) -> str | None:
    """The outermost folder under the dataset `root` holding `file` that no longer exists, named
    as the file is; None when the file's own folder is still there (the file alone is gone)."""
    parts = file.relpath.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        if not os.path.isdir(os.path.join(root, *parts[:depth])):
            folder = "/".join(parts[:depth])
            prefix = file.path[: len(file.path) - len(file.relpath)]
            return prefix + folder if file.path.endswith(file.relpath) else os.path.join(
                root, folder)
    return None


def checkpoint_line(path: str, why: str, sqlite_says: str) -> str:
    """The one line for commits Store.checkpoint() left in the -wal, naming why."""
    again = command("index.py")
    start = f"{path}-wal still holds this run's last commits"
    if why == CHECKPOINT_HELD:
        return (f"{start} (a search held an older view of the store): copy {path} with its -wal,"
                f" or run {again} again once searches are done, before copying it alone")
    until = f"(until then copy {path} only with its -wal)"
    if why == CHECKPOINT_FULL:
        return (f"{start}: the disk is full, so they could not be moved into {path} (SQLite:"
                f" {sqlite_says}); they are safe in the -wal: free some space and run {again}"
                f" again {until}")
    if why == CHECKPOINT_IO:
        return (f"{start}: a disk I/O error stopped moving them into {path} (SQLite:"
                f" {sqlite_says}); they are safe in the -wal: check the disk (is it full?) and"
                f" run {again} again {until}")
    return (f"{start}: moving them into {path} failed (SQLite: {sqlite_says}); they are safe in"
            f" the -wal: run {again} again {until}")


# The files a store keeps beside itself: SQLite's, the writer's lock (storefile.WriterLock) and
# the search arrays' folder (cache.cache_folder; its files are passed over by their prefix).
_STORE_COMPANIONS = ("", "-wal", "-shm", "-journal", ".lock", ".cache")


def _own_files(root: str, store_path: str) -> Callable[[str], bool]:
    """Whether a path found under `root` (relative, '/'-separated) is one of the store's own
    files. A store named without an extension inside the dataset (`-d photos -s photos/dupes`)
    was found by the next run as an image and failed as "not an image" (a review), and so were
    its -wal, -shm and cache entries. Both the path as given and as resolved are compared: the
    walk names files under the dataset as given, and the store may be named through a link."""
    names: set[str] = set()
    for base, store in ((os.path.abspath(root), os.path.abspath(store_path)),
                        (os.path.realpath(root), os.path.realpath(store_path))):
        inside = os.path.relpath(store, base)
        if inside != os.pardir and not inside.startswith(os.pardir + os.sep):
            names.add(inside.replace(os.sep, "/"))
    if not names:
        return lambda relpath: False
    own = {name + suffix for name in names for suffix in _STORE_COMPANIONS}
    caches = tuple(f"{name}.cache/" for name in names)
    return lambda relpath: relpath in own or relpath.startswith(caches)


def settle_caches(store: Store, generation: int) -> None:
    """The writer's last step: cache the store's search arrays for this generation, so that the
    first search after a large index does not pay for them (about 1 s at 10^6 hashes), then delete
    older cache entries and the change log they make unnecessary."""
    if store.tracking and store.hash_count() >= cache.CACHE_MIN_HASHES:
        with store.snapshot():
            if store.generation() != generation:
                generation = store.generation()  # another program wrote meanwhile
            HashIndex.from_store(store, max_delta=0)
    cache.prune(store, keep=generation)
    if store.tracking:
        store.prune_changes(generation)


def _put_right(store: Store, report: Reporter) -> None:
    """What other programs wrote into the tables index.py keeps, in a form its lookups miss
    (a path as text, a hash of another length) or counted wrong, put right before it reads
    them (reviews: each ended commands in a TypeError, or made the summary say 0 images)."""
    paths, forgotten = store.normalise_rows()
    if paths:
        report(f"{store.path}: {paths:,} path{'' if paths == 1 else 's'} stored as text by another"
               " program; written back as bytes")
    if forgotten:
        report(f"{store.path}: {_images(forgotten)} recorded with a hash that is not a"
               f" {store.recipe.bits}-bit one (written by another program); hashed again")
    said = store.recount()
    if said is not None:
        hashes, images = ("nothing" if value is None else str(value)[:20] for value in said)
        report(f"{store.path}: its counters said {images} images and {hashes} hashes (changed by"
               " another program); counted again")


def _check_foreign_entries(store: Store, out_of_step: list[object]) -> dict[object, str]:
    """Entries other programs wrote since this store was last indexed, those found bad before,
    and those out of step with the table of files, looked at again: raw key -> what is wrong
    (reported at the end of the run)."""
    if not store.tracking:
        return store.check_entries(out_of_step)
    if not store.entries_checked():
        return store.check_entries(None)  # upgraded from format 1: look at every entry once
    keys = store.changed_raw_keys(store.changes_since()) + store.known_bad_entries() + out_of_step
    return store.check_entries(list(dict.fromkeys(keys)))


def _relist_lost_images(store: Store, report: Reporter) -> list[str]:
    """Buckets other programs changed since the last run that lost images indexed under them (a
    `del db[hash]`, as the message about a bad entry invites): those images are listed again,
    or they would stay out of every answer while the summary counted them. Returns the hashes."""
    if not store.tracking:
        return []
    changed = [key_text(key) for key in store.changed_raw_keys(store.changes_since())]
    return _relist(store, report, changed)


def _indexed_under_edited_buckets(store: Store, stored: dict[str, FileState]) -> set[str]:
    """The images the table of files records under a hash whose bucket another program changed
    since the last run. Both tables can be changed to agree (two images' hashes swapped in one,
    their buckets in the other: a review), and then nothing compares wrong: each image was
    answered for the other for good. Hashing them again settles it; the change log says which
    (neardup's own writes, from a run that was killed, left out: those are not hashed twice)."""
    if not store.tracking:
        return set()
    edited = {key_text(key) for key in store.others_changed_keys()}
    if not edited:
        return set()
    return {relpath for relpath, state in stored.items() if state.hash_hex in edited}


def _mend_out_of_step(store: Store, report: Reporter, out_of_step: list[object]) -> list[str]:
    """The buckets found out of step with the table of files, once their images have been hashed
    again (the table then holds what the files say): brought back to it. Returns the hashes."""
    return _relist(store, report, [key_text(key) for key in out_of_step])


# Bad store entries named in one run's report; the summary line counts them all.
BAD_ENTRIES_NAMED = 20
# Buckets mended in one run that are each named; past that, one line counts the rest (a script
# that rewrote 10^4 buckets must not bury the run's other messages).
BUCKETS_NAMED = 10


def _relist(store: Store, report: Reporter, hashes: list[str]) -> list[str]:
    relisted = store.relist_indexed(hash_hex for hash_hex in dict.fromkeys(hashes) if hash_hex)
    mended = [(hash_hex, again, out) for hash_hex, (again, out) in relisted.items() if again or out]
    for hash_hex, again, out in mended[:BUCKETS_NAMED]:
        if again and out:  # one line for a bucket both emptied of its own and given another's
            report(f"{store.path}: bucket {hash_hex} had lost {_images(again)} indexed under that"
                   f" hash and listed {_images(out)} indexed under another (changed by another"
                   " program, or the file damaged); each is listed under its own hash again")
        elif again:
            report(f"{store.path}: bucket {hash_hex} had lost {_images(again)} indexed under that"
                   " hash (deleted or rewritten by another program, or the file damaged); listed"
                   " again")
        else:
            own = "it is listed under its own" if out == 1 else "they are listed under their own"
            report(f"{store.path}: bucket {hash_hex} listed {_images(out)} indexed under another"
                   f" hash (moved there by another program, or the file damaged); {own} again")
    if len(mended) > BUCKETS_NAMED:
        report(f"{store.path}: {len(mended) - BUCKETS_NAMED:,} more buckets mended likewise")
    return list(relisted)


def _under_any(relpath: str, prefixes: list[str]) -> bool:
    return any(prefix == "" or relpath == prefix or relpath.startswith(prefix + "/")
               for prefix in prefixes)


def _removal_refusal(gone: int, stored: int, found_any: bool, dataset: str,
                     allowed: bool) -> str:
    """Why removing `gone` of `stored` images is refused, or "" when it may go ahead."""
    if not gone:
        return ""
    if not found_any:
        return (f"{dataset} holds no images at all, and the store lists {stored}; an empty"
                " folder (a disk that failed to mount looks the same) never empties a store:"
                " delete the store to start again")
    if allowed:
        return ""
    if gone == stored or gone * 2 > stored:
        return (f"this run would remove {gone} of the store's {stored} images, whose files are"
                f" gone from {dataset} (more than half); check that the folder is the right one"
                " and mounted, or run again with --allow-mass-removal")
    return ""


def _compare(state: FileState | None, item: FoundFile) -> str:
    """new | changed | recheck (hash again: its stat cannot vouch for it) | record (unchanged,
    stat recorded now) | unchanged."""
    if state is None:
        return "new"
    if (state.size, state.mtime_ns) != (item.size, item.mtime_ns):
        return "changed"
    if state.inode == 0 and state.ctime_ns == 0:
        return "record"  # from a format 1 store: size and mtime were all it had
    if state.ctime_ns == RACY or (state.inode, state.ctime_ns) != (item.inode, item.ctime_ns):
        return "recheck"  # replaced (touch -r), rewritten in the same tick, or racily recorded
    return "unchanged"


def _record(item: FoundFile, hash_hex: str, looked_at_ns: int,
            features: bytes | None = None, racy: bool = False) -> IndexedFile:
    """What to store for a file hashed now; racily clean files (and those `racy` says were
    touched while read) are marked to be hashed again."""
    racy = racy or max(item.mtime_ns, item.ctime_ns) >= looked_at_ns - RACY_NS
    return IndexedFile(item.relpath, item.size, item.mtime_ns, hash_hex, item.inode,
                       RACY if racy else item.ctime_ns, features)


def _refuse_before_the_walk(store_path: str, recipe: Recipe, root: str, moved_from: str | None,
                            features: bool) -> None:
    """What an existing store's record alone refuses (another recipe or dataset folder, a run
    without --features on a store with them), said before the folder is walked: `-d /` printed
    8,709 lines of files it could not read, then the refusal (a review). Anything wrong with the
    file itself is left to the writer, which says it as before."""
    if not os.path.isfile(store_path) or os.path.getsize(store_path) == 0:
        return
    try:
        with Store.open_for_reading(store_path, quick_check=False, for_queries=False) as store:
            stored, recorded, with_features = (store.recipe, store.dataset_root,
                                               store.has_features())
    except NeardupError:
        return
    check_recipe_and_folder(store_path, stored, recorded, recipe, root, moved_from)
    if with_features and not features:
        raise NeardupError(_features_kept(store_path))


def _features_kept(store_path: str) -> str:
    return (f"{store_path}: keeps local features of every image; run {command('index.py')} with"
            " --features to keep them complete")


def _prepare_features(store: Store, store_path: str, features: bool,
                      report: Callable[[str], None]) -> set[str]:
    """Record the feature recipe (or refuse a mismatch); the stored files that still lack them,
    or whose record is damaged: said, and extracted again (each run said the record was skipped
    and counted the file unchanged, so only a new store mended it: a review)."""
    if not features:
        if store.has_features():
            raise NeardupError(_features_kept(store_path))
        return set()
    from ..features import extract

    recipe = extract.FeatureRecipe()
    store.enable_features(recipe.to_dict(), extract.FeatureRecipe.describe_recorded)
    if orphans := store.drop_orphan_features():
        # Written by hand: each run said they were extracted again, and searches skipped them.
        report(f"{store_path}: {orphans} feature record{'s' if orphans > 1 else ''} of no"
               " indexed file removed")
    unlike = store.feature_records_unlike(extract.FEATURE_VERSION, extract.RECORD_FIXED_BYTES,
                                          extract.RECORD_POINT_BYTES)
    damaged = {path: problem for path, data in unlike.items()
               if (problem := extract.record_problem(data[:extract.HEADER_BYTES], len(data)))}
    if damaged:
        first = min(damaged)
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        report(f"{store_path}: features of {shown_path(first)}: {damaged[first]}{more};"
               " extracted again")
    return store.paths_without_features() | set(damaged)


class WorkerDied(NeardupError):
    """A worker process ended without a word: the pool cannot go on."""


def local_hasher(jobs: int, batch_size: int, *, features: bool = False,
                 report: Callable[[str], None] = lambda line: None,
                 file_seconds: float = DEFAULT_FILE_SECONDS,
                 known_good: FoundFile | None = None) -> Hasher:
    """Hash in a local process pool; a group ends at batch_size files or BATCH_SECONDS.
    `report` hears when a worker process dies (its files are hashed again, each alone);
    `known_good`, a file hashed before, tells a broken decoder from files that crash it."""

    def hash_locally(
        files: list[FoundFile], recipe: Recipe, max_pixels: int
    ) -> Iterator[list[HashOutcome]]:
        return hash_in_groups(files, recipe, jobs=jobs, max_pixels=max_pixels, features=features,
                              group_size=batch_size, group_seconds=BATCH_SECONDS, report=report,
                              file_seconds=file_seconds, known_good=known_good)

    return hash_locally


def hash_files(
    files: Sequence[FoundFile], recipe: Recipe, *, jobs: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS, features: bool = False,
) -> Iterator[HashOutcome]:
    """Hash files (and extract features), in worker processes when jobs != 1; outcomes come in
    completion order."""
    for group in hash_in_groups(files, recipe, jobs=jobs, max_pixels=max_pixels,
                                features=features):
        yield from group


# Chunks sent to the pool ahead of those being hashed, per worker: enough that no worker waits for
# its next files, few enough that a million files are not held as futures at once.
CHUNKS_AHEAD_PER_WORKER = 2
# How long stopping the workers waits for the executor's own thread to end (it ends once the
# workers are gone and the results' pipe is closed: milliseconds).
STOP_WAIT_SECONDS = 10.0
# Files in a row whose one-at-a-time process died on them before the run stops (see
# _PoolHashing._hash_alone).
DEATHS_IN_A_ROW = 8
# How often, while no chunk comes back, the workers are looked at for one that died unseen.
LOOK_FOR_DEATHS_SECONDS = 1.0
# How long the executor's thread is given to end a broken pool before the workers still running
# are killed from here (see _settle_broken_pool): milliseconds once it has seen the death, but
# without limit while a worker that ignores SIGTERM (stopped, SIGSTOP) holds it. Waited for 10 s
# instead, such a worker kept index.py silent for 12 s after the death (a review; 2 s before).
EXECUTOR_GRACE_SECONDS = 1.0
# Why a pool is given up when its own thread could not start a thread it needs.
POOL_THREAD_ENDED = "the worker pool's own thread ended (a limit on processes and threads reached?)"
# How long a submission to the pool may wait for the pool's lock before the pool's workers that
# still run are killed (see _PoolHashing._submit), and how often that is looked at.
SUBMIT_STUCK_SECONDS = 1.0
SUBMIT_WATCH_SECONDS = 0.25
# The most files one task hashes. A task per file halved the throughput on small photos (a task's
# round trip through the pool costs about as much as hashing one); a chunk's outcomes come back
# together, so the files sent with a slow one wait for it (16 did as well as 64).
MAX_CHUNK = 16


def hash_in_groups(
    files: Sequence[FoundFile], recipe: Recipe, *, jobs: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS, features: bool = False,
    group_size: int = 1, group_seconds: float | None = None,
    report: Callable[[str], None] = lambda line: None,
    file_seconds: float = DEFAULT_FILE_SECONDS, known_good: FoundFile | None = None,
) -> Iterator[list[HashOutcome]]:
    """Hash files (and extract features), in worker processes when jobs != 1; outcomes come in
    completion order, in groups of at most group_size. A group also ends group_seconds after the
    last one, whether a file completes then or not: a worker busy on one slow file holds back
    nothing the others hashed. A worker process that dies costs the run only the file that
    killed it (`report` hears once per death), and so does one that takes longer than
    `file_seconds` to hash a file (with jobs == 1 there is no such limit). After
    DEATHS_IN_A_ROW such deaths in a row, `known_good` (a file hashed before) is hashed alone
    too: if it dies as well, the run stops (a broken decoder, not bad files)."""
    check_worker_count(jobs)
    if jobs == 1 or not files:
        # In this process. With jobs == 0 a single file, or a machine of one core, still gets a
        # worker process: only there can a file that crashes its decoder or loops in it fail
        # alone (a run of one new CALTECH photo: 0.41 s for index.py against 0.24 s with -j 1).
        remaining = iter(files)

        def next_file_hashed(_timeout: float | None) -> list[HashOutcome] | None:
            item = next(remaining, None)
            return None if item is None else [_hash_one(item, recipe, max_pixels, features)]

        yield from _in_groups(next_file_hashed, group_size, group_seconds)
        return
    workers = min(jobs if jobs > 0 else (os.cpu_count() or 1), len(files))
    hashing = _PoolHashing(files, (recipe, max_pixels, features), workers, report, file_seconds,
                           known_good)
    try:
        yield from _in_groups(hashing.next_hashed, group_size, group_seconds)
    finally:
        hashing.stop()


class _PoolHashing:
    """Files hashed in chunks by a pool of worker processes.

    A worker that dies (the kernel's out-of-memory killer, a crash in an image decoder) breaks
    the pool, and the pool cannot say which file it was hashing: every file sent and not
    answered is then hashed again by a process of its own, one at a time, before a new pool
    takes the rest. A file that kills that process too fails, with the signal that ended it, and
    the run goes on (as on a Dask cluster, neardup.scale.cluster). Alone, a file that ran out of
    memory beside the others' may also pass. Before, the run stopped at the first death, and
    every later run at the same file, so a folder holding one could never be indexed.
    """

    def __init__(self, files: Sequence[FoundFile], settings: tuple[Recipe, int, bool],
                 workers: int, report: Callable[[str], None], file_seconds: float,
                 known_good: FoundFile | None = None) -> None:
        self._context = worker_context()
        self._settings = settings
        self._workers = workers
        self._report = report
        self._said: set[str] = set()  # the reasons a pool was given up for, said already
        # Workers killed by _end_if_broken, kept themselves: by id() alone, a later worker given
        # a freed one's id would have its own death left unsaid (a review).
        self._killed_here: list[Any] = []
        self._watch: _SubmissionWatch | None = None  # started at the first submission
        self._chunk = max(1, min(MAX_CHUNK, len(files) // (workers * 8)))
        self._unsent = iter(files)
        self._running: dict[concurrent.futures.Future[list[HashOutcome]], list[FoundFile]] = {}
        self._suspects: list[FoundFile] = []  # sent to a pool that broke, not answered
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._error: BaseException | None = None  # a worker's own exception, raised next
        self._alone: _OneAtATime | None = None  # hashes the suspects, one at a time
        self._processes: list[Any] = []  # the pool's worker processes, once started
        self._file_seconds = file_seconds
        self._answered_at = time.monotonic()  # when a chunk last came back (or the pool started)
        self._deaths_in_a_row = 0  # suspects whose one-at-a-time process died on them, in a row
        self._known_good = known_good

    def start(self) -> None:
        # concurrent.futures rather than multiprocessing.Pool: a worker killed breaks the pool
        # and says so, where Pool replaced the worker and waited for the lost files' results
        # for ever, holding the store's lock. The pool's queues start multiprocessing's
        # resource tracker, a process of its own, as `python -c` in the current folder: started
        # as the workers are (see workers_import_ours).
        self._answered_at = time.monotonic()
        with workers_import_ours():
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self._workers, mp_context=self._context, initializer=_init_worker,
                initargs=self._settings)
        with starting_workers():
            # Each submission starts a worker until all have started: at least `workers` here.
            self._send()

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._pool is not None:
            _stop_workers(self._pool)
            self._pool = None
        if self._alone is not None:
            self._alone.stop(at_once=True)
            self._alone = None

    def _send(self) -> None:
        assert self._pool is not None
        for _ in range(self._workers * CHUNKS_AHEAD_PER_WORKER - len(self._running)):
            items = list(itertools.islice(self._unsent, self._chunk))
            if not items:
                return
            try:
                self._running[self._submit(items)] = items
            except concurrent.futures.process.BrokenProcessPool:
                # Taken from the files, never sent: hashed with the suspects, not lost (a test
                # found a chunk's files missing from the summary).
                self._suspects += items
                raise
            except (OSError, EOFError, RuntimeError) as error:
                # The submission starts a worker, and the fork server was killed meanwhile
                # (ConnectionRefusedError, EOFError "unexpected EOF"), or the executor's thread
                # could not start (RuntimeError, under a limit on processes and threads): index.py
                # ended with that traceback. The files go alone, as from a broken pool; a new
                # pool follows.
                if isinstance(error, RuntimeError) and not thread_refused(error):
                    raise
                self._suspects += items
                raise _StartFailed(not_started(error)) from None
        if len(self._processes) < self._workers:
            # The executor's own record of its workers (it forgets them when one dies), kept to
            # say how the one that died ended. Each is started by a submission.
            self._processes = list((getattr(self._pool, "_processes", None) or {}).values())
            for process in self._processes:
                watch(process)

    def _submit(self, items: list[FoundFile]) -> concurrent.futures.Future[list[HashOutcome]]:
        """Submit a chunk to the pool, which waits for the pool's lock. On Python 3.13 the
        executor's thread holds that lock while it ends a broken pool, waiting for every worker
        to end: one stopped (SIGSTOP), which holds the SIGTERM it was sent, made that wait, and
        the submission, last for ever, and index.py hung beside a worker's death (1 run in about
        25 under load). The watch kills the workers still running of a pool already broken
        when a submission has waited that long; the submission then fails as broken, and the
        broken pool is settled as usual."""
        assert self._pool is not None
        if self._watch is None:
            self._watch = _SubmissionWatch(self._end_if_broken)
        with self._watch.submitting(self._pool, list(self._processes)):
            return self._pool.submit(_hash_in_worker, items)

    def _end_if_broken(self, pool: concurrent.futures.ProcessPoolExecutor,
                       workers: list[Any]) -> None:
        """Kill the workers still running of a pool that is broken (its executor's thread, which
        marks it so first, is then waiting for them to end), reading no exit status. They are
        not counted among the deaths (the one that broke the pool is named by its signal)."""
        if getattr(pool, "_broken", False):
            self._killed_here += _signal_running(workers, signal.SIGKILL)

    def next_hashed(self, timeout: float | None) -> list[HashOutcome] | None:
        """Outcomes of the files done within `timeout` (perhaps none); None once all are."""
        if self._error is not None:
            raise self._error  # after the outcomes beside it were taken, on the last call
        if self._suspects:
            return [self._hash_alone(self._suspects.pop(0))]
        try:
            if self._pool is None:
                self.start()  # at first, or once a broken pool's files are settled
            else:
                self._send()
        except concurrent.futures.process.BrokenProcessPool:
            return self._settle_broken_pool()
        except _StartFailed as error:
            return self._settle_broken_pool(str(error))
        if not self._running:
            return None
        # No chunk back for file_seconds: each file still out is given file_seconds alone.
        # (A chunk of slow files can take longer than that in all: they then pass alone.)
        stuck_in = self._answered_at + self._file_seconds - time.monotonic()
        wait = min(stuck_in, LOOK_FOR_DEATHS_SECONDS, stuck_in if timeout is None else timeout)
        done, _ = concurrent.futures.wait(self._running, max(0.0, wait),
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        if done:
            self._answered_at = time.monotonic()
        elif time.monotonic() - self._answered_at >= self._file_seconds:
            return self._settle_broken_pool(
                f"no chunk of files has come back from the workers for {self._file_seconds:g} s")
        elif _any_ended(self._processes):
            # A worker killed while it wrote its results leaves half a message, and the
            # executor's thread waits for the rest instead of seeing the death: the run stalled
            # until the timeout (a review). Workers never end on their own during a run.
            return self._settle_broken_pool(unseen=True)
        elif not _executor_thread_running(self._pool) and not any(
                future.done() for future in self._running):  # (a broken pool's are)
            # It ends only with the pool, having failed what was left; one that died of an
            # error (it could not start the thread that feeds the workers, under a limit on
            # threads) left every file unanswered: the run stalled until the timeout.
            return self._settle_broken_pool(POOL_THREAD_ENDED)
        outcomes: list[HashOutcome] = []
        broken = False
        for future in done:
            error = future.exception()
            if error is None:
                outcomes += future.result()
                del self._running[future]
            elif isinstance(error, concurrent.futures.process.BrokenProcessPool):
                broken = True
            elif self._error is None:
                self._error = error  # a bug of ours in a worker: raised as it is, next call
        if broken:
            outcomes += self._settle_broken_pool()
        return outcomes

    def _settle_broken_pool(self, stuck: str = "", unseen: bool = False) -> list[HashOutcome]:
        """Once a worker has died (`unseen`: by the executor), or none has answered for too long
        (`stuck` says so): the outcomes that came back before, and every other file sent to the
        pool made a suspect, to be hashed alone."""
        assert self._pool is not None
        # The workers that ended before the pool is stopped here: the one that died, perhaps
        # others (not those this process kills as it stops the pool, with SIGKILL when SIGTERM
        # does not end them).
        died = [process for process in self._processes
                if _has_ended(process)
                and not any(process is killed for killed in self._killed_here)]
        if not stuck and not died and _thread_refused_in(self._running):
            # Python 3.13's executor breaks the pool itself when its thread cannot start the one
            # that feeds the workers (3.11's thread dies instead: see next_hashed). No worker
            # died: it said "a worker process died while hashing".
            stuck = POOL_THREAD_ENDED
        if not stuck:
            # A dead worker's exit status comes once, through its fork server's pipe: read by two
            # threads at once, the second read finds the pipe empty and sets the status to 255
            # over the first's. The executor's thread reads it as it ends the broken pool, and
            # this one did too while stopping the pool: a run in CI said "a worker process died"
            # without its SIGKILL. The executor's thread is let finish first (once broken, it
            # fails every future left and ends); one that has not seen the death (`unseen`), or
            # waits for a stopped worker, is given a moment.
            executor_thread = getattr(self._pool, "_executor_manager_thread", None)
            if _started(executor_thread):
                executor_thread.join(EXECUTOR_GRACE_SECONDS)
                if executor_thread.is_alive() and not unseen:
                    # Still waiting for a worker that does not end on SIGTERM (stopped), or slow
                    # (a loaded machine): the workers still running are killed, so that it ends,
                    # and waited for (reading the statuses beside it lost the signal under load).
                    _signal_running(self._processes, signal.SIGKILL)
                    executor_thread.join(STOP_WAIT_SECONDS)
            concurrent.futures.wait(self._running, 0 if unseen else STOP_WAIT_SECONDS)
        self.stop()
        # The signal that ended the worker, where one did: the executor then ends the others
        # (SIGTERM, or an exit status of their own).
        ended = {code for process in died if (code := process.exitcode) is not None
                 and code < 0 and code != -signal.SIGTERM}
        self._processes = []
        outcomes: list[HashOutcome] = []
        for future, items in self._running.items():
            # Stopping the pool cancels what it had not started: exception() would raise.
            if future.done() and not future.cancelled() and future.exception() is None:
                outcomes += future.result()
            else:
                self._suspects += items
        self._running.clear()
        how = f" ({ended_by(ended.pop())})" if len(ended) == 1 else ""
        # Every status lost: the fork server ended (killed from outside), which the executor
        # takes for its workers' deaths; said as a worker's death, it sent a person looking
        # for a file that killed nothing (review r24: 31 of 40 runs with the fork server killed).
        lost = bool(died) and all(process.exitcode == STATUS_LOST for process in died)
        count = len(self._suspects)
        files = (f"the {count} file{'' if count == 1 else 's'} given to the workers and not"
                 f" answered {'is' if count == 1 else 'are'} hashed again")
        what = (f"{stuck}; {files}, one at a time, each given {self._file_seconds:g} s" if stuck
                else f"the fork server that starts the worker processes ended (killed?), and"
                f" their exit statuses with it; {files}, each alone" if lost
                else f"a worker process died while hashing{how}; {files}, each alone, to find the"
                " one that killed it")
        if not stuck or stuck not in self._said:
            # A pool that cannot start (a limit on processes, reached again by each new pool)
            # is said once, not once a chunk: a review's run printed the same line 8 times.
            self._report(what)
        self._said.add(stuck)
        return outcomes

    def _hash_alone(self, item: FoundFile, retried: bool = False) -> HashOutcome:
        """One file hashed with no other in flight: its outcome, or why its process died.

        Such a file keeps its stored entry, if it is still the file indexed (`unreached`): a
        kill may pass (memory wanted by others), and a run where every process died (a broken
        decoder) removed every entry it looked at again (a review: 300 of 300)."""
        if self._alone is None:
            try:
                self._alone = _OneAtATime(self._context, self._settings)
            except WorkerDied:  # killed as it started, perhaps: once more before giving up
                self._alone = _OneAtATime(self._context, self._settings)
        outcome = self._alone.hash(item, self._file_seconds)
        if outcome is not None and outcome is not _TOO_LONG:
            self._deaths_in_a_row = 0
            if not self._suspects:
                self._alone.stop()
                self._alone = None
            return outcome  # type: ignore[return-value]
        exitcode = self._alone.stop(at_once=outcome is _TOO_LONG)
        self._alone = None
        if outcome is _TOO_LONG:
            return HashOutcome(item, None, f"took more than {self._file_seconds:g} s to hash (a"
                               " decoder caught in a loop?); --file-timeout sets the limit",
                               unreached="timed out")
        if exitcode == STATUS_LOST and not retried:
            # Ended together with the fork server (both killed from outside: an operator's kill
            # of the process group), so its status never came: nothing says the file did it.
            # It failed as "ended with exit status 255" (a review); a new process tries it once,
            # as the checker does with an upload.
            return self._hash_alone(item, retried=True)
        self._deaths_in_a_row += 1
        if self._deaths_in_a_row % DEATHS_IN_A_ROW == 0:
            self._check_known_good(item, exitcode)
        return HashOutcome(item, None, death_reason(exitcode), unreached="died")

    def _check_known_good(self, item: FoundFile, exitcode: int | None) -> None:
        """After many deaths in a row: bad files, or a decoder that crashes on every image (a
        broken install, a machine that kills every process)? A file hashed fine before says.
        A stop on the count alone blocked a folder for good: failed files are hashed again by
        every run, one after the other, and eight of them made every run stop (a review)."""
        if self._known_good is None:
            return  # nothing to tell them apart: each file fails alone, at a process start each
        probe = _OneAtATime(self._context, self._settings)
        outcome = probe.hash(self._known_good, self._file_seconds)
        probe.stop(at_once=outcome is None or outcome is _TOO_LONG)
        if outcome is not None and outcome is not _TOO_LONG:
            return  # the files, then (or the file changed since: it says nothing)
        raise WorkerDied(
            f"{self._deaths_in_a_row} files in a row killed the process hashing them (the last,"
            f" {item.relpath}: {ended_by(exitcode)}), and so did {self._known_good.relpath},"
            " hashed before: the image decoders are broken here, not the files (does Pillow"
            " decode an image in a fresh Python?); what was hashed before is written, and the"
            " entries of those files are kept")


class _StartFailed(Exception):
    """A pool's submission could not start its worker process (see _PoolHashing._send)."""


class _SubmissionWatch:
    """One thread for a run that looks, every SUBMIT_WATCH_SECONDS, at the submission under way
    and calls `on_stuck(pool, workers)` while one has waited SUBMIT_STUCK_SECONDS or more. A
    timer started for each submission did the same at about 190 µs each (a thread's start),
    where marking one costs well under one. When the system refuses the thread (a limit on
    processes and threads), submissions go unwatched."""

    def __init__(self, on_stuck: Callable[[concurrent.futures.ProcessPoolExecutor, list[Any]],
                                          None]) -> None:
        self._on_stuck = on_stuck
        # (since, pool, workers) while a submission waits: set and read whole, so no lock.
        self._under_way: tuple[float, concurrent.futures.ProcessPoolExecutor,
                               list[Any]] | None = None
        self._stopped = threading.Event()
        thread = threading.Thread(target=self._watch, name="neardup-submission-watch",
                                  daemon=True)
        try:
            thread.start()
        except RuntimeError as error:
            if not thread_refused(error):
                raise

    @contextlib.contextmanager
    def submitting(self, pool: concurrent.futures.ProcessPoolExecutor,
                   workers: list[Any]) -> Iterator[None]:
        self._under_way = (time.monotonic(), pool, workers)
        try:
            yield
        finally:
            self._under_way = None

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(SUBMIT_WATCH_SECONDS):
            under_way = self._under_way
            if under_way is not None and time.monotonic() - under_way[0] >= SUBMIT_STUCK_SECONDS:
                self._on_stuck(under_way[1], under_way[2])


_TOO_LONG = object()  # what _OneAtATime.hash says of a file still hashing after its seconds


class _OneAtATime:
    """A worker process that hashes the files sent to it one at a time, each only once the last
    is answered: when it dies, the file it was sent last is the one that killed it. (A process
    per file took 90 to 155 ms each to start and import neardup: 64 suspects, those of two
    workers, cost 6 to 10 s; with 16 workers they would be 512.)"""

    def __init__(self, context: Any, settings: tuple[Recipe, int, bool]) -> None:
        self._connection, theirs = context.Pipe()
        self._process = context.Process(target=_hash_each_sent, name="neardup-one-at-a-time",
                                        args=(theirs, *settings), daemon=True)
        try:
            start_worker(self._process)
        except ForkServerUnreachable as error:
            self._connection.close()
            raise WorkerDied(f"{error}; what was hashed before is written") from None
        finally:
            theirs.close()  # the child's end: reading here ends with EOF once the child is gone
        try:
            self._connection.recv()  # "started": it could import neardup and wait for files
        except (EOFError, OSError):
            exitcode = self.stop(at_once=True)
            raise WorkerDied(
                f"a worker process ended as it started, before hashing anything"
                f" ({ended_by(exitcode)}): worker processes cannot run here (does `python -c"
                " 'import neardup.core.indexing'` work?); what was hashed before is written"
            ) from None

    def hash(self, item: FoundFile, seconds: float) -> HashOutcome | object | None:
        """The file's outcome; None if the process died hashing it, _TOO_LONG past `seconds`."""
        try:
            self._connection.send(item)
            if not self._connection.poll(seconds):
                return _TOO_LONG
            kind, value = self._connection.recv()
        except (EOFError, OSError):
            # OSError: a socket pair under the pipe says "connection reset" when the process
            # died before reading the file sent (a review's kill loop printed the traceback).
            return None
        if kind == "raised":
            raise value  # a bug of ours, raised as a pool's worker would raise it
        return value  # type: ignore[no-any-return]

    def stop(self, at_once: bool = False) -> int | None:
        """End the process (`at_once`: even mid-file, after Ctrl-C); its exit code."""
        if not at_once:
            with contextlib.suppress(OSError):
                self._connection.send(None)
            self._process.join(STOP_WAIT_SECONDS)
        end_process(self._process)
        self._connection.close()
        return self._process.exitcode


def _hash_each_sent(connection: multiprocessing.connection.Connection, recipe: Recipe,
                    max_pixels: int, features: bool) -> None:
    """_OneAtATime's process: hashes each file it receives and sends back what came of it."""
    _init_worker(recipe, max_pixels, features)

    def answer(item: FoundFile) -> tuple[str, Any]:
        try:
            return ("outcome", _hash_one(item, recipe, max_pixels, features))
        except Exception as error:  # noqa: BLE001 - raised again in the parent
            return ("raised", error)

    answer_each_sent(connection, answer)


def _in_groups(
    next_hashed: Callable[[float | None], list[HashOutcome] | None], size: int,
    seconds: float | None,
) -> Iterator[list[HashOutcome]]:
    """The outcomes next_hashed gives (waiting at most the timeout it is passed; None once every
    file is done) in groups of at most `size`, a group ending `seconds` after the last."""
    group: list[HashOutcome] = []
    due = None if seconds is None else time.monotonic() + seconds
    try:
        while (outcomes := next_hashed(
                None if due is None else max(0.0, due - time.monotonic()))) is not None:
            group.extend(outcomes)
            if len(group) < size and (due is None or time.monotonic() < due):
                continue
            while len(group) >= size:
                yield group[:size]
                del group[:size]
            if group and due is not None and time.monotonic() >= due:
                yield group
                group = []
            due = None if seconds is None else time.monotonic() + seconds
    except WorkerDied:
        if group:
            yield group  # what was hashed before is written
        raise
    if group:
        yield group


def _any_ended(processes: list[Any]) -> bool:
    """Whether any of these worker processes has ended, without reading its exit status: that
    is read once, and the executor's thread may be reading it (see _settle_broken_pool)."""
    return any(_has_ended(process) for process in processes)


def _has_ended(process: Any) -> bool:
    """Whether this worker process has ended, reading no exit status.

    Its sentinel alone does not say: under a fork server it is the pipe the status comes
    through, readable once the status is written, until another thread (the executor's) has read
    it; then again once the fork server closes its end, a moment later. Looked at between the
    two, a dead worker passed for running: a CI run and 2 of 40 runs here named no signal for a
    worker's death, the dead worker left out of those that died. The fork server reaps a worker
    before it writes its status, so by then its pid is gone."""
    popen = getattr(process, "_popen", None)
    if getattr(popen, "returncode", None) is not None:
        return True  # read already
    if multiprocessing.connection.wait([process.sentinel], timeout=0):
        return True
    try:
        os.kill(process.pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or its pid another user's since
        return True
    return False


def _signal_running(processes: list[Any], signal_number: int) -> list[Any]:
    """Send a signal to the worker processes that have not ended, without reading any exit
    status (see _has_ended); one ending meanwhile is already gone, its status kept by its fork
    server. Those signalled are returned."""
    signalled = []
    for process in processes:
        if not _has_ended(process):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal_number)
                signalled.append(process)
    return signalled


def _wait_ended(processes: list[Any], seconds: float) -> None:
    """Wait until every one of these processes has ended, at most `seconds`, reading nothing."""
    deadline = time.monotonic() + seconds
    while (running := [process.sentinel for process in processes if not _has_ended(process)]):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        multiprocessing.connection.wait(running, left)


def _thread_refused_in(futures: Iterable[concurrent.futures.Future[Any]]) -> bool:
    """Whether a pool broke, as these futures say, because a thread could not be started."""
    for future in futures:
        if future.done() and not future.cancelled():
            error = future.exception()
            if error is not None and thread_refused_text(str(error.__cause__ or "")):
                return True
    return False


def _executor_thread_running(pool: concurrent.futures.ProcessPoolExecutor | None) -> bool:
    """Whether the executor's thread, which sends the files and gathers the results, is still
    there (or not yet started: the executor starts it with the first submission)."""
    thread = getattr(pool, "_executor_manager_thread", None)
    return not _started(thread) or thread.is_alive()


def _started(thread: threading.Thread | None) -> bool:
    """Whether this thread exists and was started: joined before its start (the executor's,
    under a limit on threads), it raised RuntimeError."""
    return thread is not None and thread.ident is not None


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop the workers now: after Ctrl-C, shutdown() alone would wait for every file still
    queued (as multiprocessing.Pool's terminate() did not)."""
    # The executor's own record of its processes (Python 3.14 adds terminate_workers()).
    workers = list((getattr(pool, "_processes", None) or {}).values())
    results = getattr(pool, "_result_queue", None)  # shutdown() forgets it
    manager = getattr(pool, "_executor_manager_thread", None)  # and this
    # The workers are ended before shutdown(): on Python 3.13 the executor's thread ending a
    # broken pool holds the lock shutdown() takes while it waits for every worker, and a
    # stopped one (SIGSTOP) never ends on the SIGTERM it was sent: index.py hung for good, deaf
    # to Ctrl-C (a review: a worker stopped and the other killed). They are ended by signals
    # and watched by their sentinels, their exit statuses read only once the executor's thread
    # has ended: read by both at once, one was lost (see _settle_broken_pool).
    _signal_running(workers, signal.SIGTERM)
    _wait_ended(workers, TERMINATE_WAIT_SECONDS)
    _signal_running(workers, signal.SIGKILL)
    _wait_ended(workers, TERMINATE_WAIT_SECONDS)
    for worker in workers:
        kill_for_sure(worker)  # those whose status was lost with the fork server (_has_ended)
    pool.shutdown(wait=False, cancel_futures=True)
    # A worker stopped while it wrote its results (a chunk's local features are megabytes)
    # leaves half a message in the results' pipe: the executor's thread waits for the rest for
    # ever, and so did index.py when it exited (a review: an index.py --features that stopped
    # on a full disk hung after its error line, 68 minutes). This process holds the pipe's
    # other end too, so the rest never came: closed, the read ends and the thread with it.
    writer = getattr(results, "_writer", None)
    if writer is not None:
        writer.close()
    # Until the executor's thread has ended, it may close its wake-up pipe at any moment, and
    # Python's exit hook checks that pipe and writes to it in two steps: an exit between them
    # printed "Exception ignored ... OSError: Bad file descriptor" after index.py's one line (a
    # worker killed mid-run, 1 run in about 50). Waited for here, the pipe is closed before.
    if _started(manager) and manager is not threading.current_thread():
        manager.join(timeout=STOP_WAIT_SECONDS)
    for process in workers:
        end_process(process)  # reaped (each has ended by now, unless its fork server is stopped)


_worker_settings: tuple[Recipe, int, bool] | None = None


def _init_worker(recipe: Recipe, max_pixels: int, features: bool = False) -> None:
    global _worker_settings  # one per worker process, set once before any task runs
    _worker_settings = (recipe, max_pixels, features)
    as_worker()


def _hash_in_worker(items: list[FoundFile]) -> list[HashOutcome]:
    assert _worker_settings is not None
    try:
        return hash_partition(items, *_worker_settings)
    except SystemExit as stop:
        # A library that exits (sys.exit in a decoder) ended index.py with its status and no
        # word (a review): this worker dies instead, and the file fails alone like a crash.
        os._exit(stop.code if isinstance(stop.code, int) else 1)


def hash_partition(
    files: list[FoundFile], recipe: Recipe, max_pixels: int, features: bool = False
) -> list[HashOutcome]:
    """Hash a list of files in this process (a task of a local pool's worker or a cluster's)."""
    return [_hash_one(item, recipe, max_pixels, features) for item in files]


# Files the hashing side did not find though they are here: how many are named one by one.
MISSING_THERE_SHOWN = 3

OUT_OF_MEMORY = "out of memory while hashing it (lower --max-pixels, or allow more memory)"


def _hash_one(item: FoundFile, recipe: Recipe, max_pixels: int, features: bool = False) -> HashOutcome:
    feature_bytes = None
    try:
        hash_hex = hash_file(item.path, recipe, max_pixels).hex()
        if features:
            from ..features.extract import stored_features

            feature_bytes = stored_features(item.path, max_pixels)
    except ImageError as error:
        cause = error.__cause__
        unreached = ("missing" if isinstance(cause, FileNotFoundError)
                     else "denied" if isinstance(cause, PermissionError) else "")
        return HashOutcome(item, None, error.reason, unreached=unreached)
    except MemoryError:
        # Not a bug nor a bad image: this file needs more memory than the process may take
        # (ulimit -v, a container's limit). The others go on; the run says which one.
        return HashOutcome(item, None, OUT_OF_MEMORY)
    # A file rewritten while we read it may have given a hash of neither version: report it and
    # let the next run, which will see its new size, mtime or inode, index it.
    try:
        after = os.stat(item.path)
    except OSError:
        return HashOutcome(item, None, "vanished while being indexed", unreached="missing")
    if (after.st_size, after.st_mtime_ns, after.st_ino) != (
            item.size, item.mtime_ns, item.inode or after.st_ino):
        return HashOutcome(item, None, "changed while being indexed; run again to index it")
    # Only ctime moved: far more often a hard link made to the file (gather.py links its haystack,
    # and so do backup tools), a chmod or a scanner's xattrs than a rewrite that put its mtime
    # back. Failing it would fail every file of a folder linked meanwhile; the hash is kept, but
    # recorded racy, so the next run hashes the file again rather than trust it.
    touched = bool(item.ctime_ns) and after.st_ctime_ns != item.ctime_ns
    return HashOutcome(item, hash_hex, None, feature_bytes, racy=touched)
