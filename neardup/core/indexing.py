"""Indexing a folder: find images, hash the new and changed ones in parallel, commit in batches.

Hashing runs in worker processes; only this process writes, one transaction per batch, so a crash
or Ctrl-C loses at most the batch in flight and a re-run picks up where the last commit left off.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import signal
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import imagehash
import numpy as np
import PIL
from tqdm import tqdm

from .. import __version__
from ..errors import ImageError, NeardupError
from .discovery import FoundFile, Skipped, walk_images
from .hashing import DEFAULT_MAX_PIXELS, Hash, Recipe, hash_file, is_low_information
from .search import HashIndex
from .store import IndexedFile, Store

DEFAULT_BATCH_SIZE = 500
# A batch is also committed after this many seconds, so a slow disk still commits often.
BATCH_SECONDS = 2.0

# A run that adds at least this many images, and half the store, compacts the file afterwards.
COMPACT_MIN_IMAGES = 10_000

Reporter = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class HashOutcome:
    """What a worker made of one file: a hash, or the reason there is none."""

    file: FoundFile
    hash_hex: str | None
    error: str | None
    features: bytes | None = None  # local features, when the store keeps them


@dataclass(slots=True)
class IndexSummary:
    indexed: int = 0  # hashed and stored in this run
    unchanged: int = 0  # already stored with the same size and mtime
    removed: int = 0  # stored before, gone (or no longer readable) now
    failed: int = 0  # candidates that could not be hashed
    skipped: int = 0  # entries that could not even be looked at (broken links, unreadable folders)
    low_information: int = 0  # indexed in this run with a blank/smooth hash (see is_low_information)
    total: int = 0  # images in the store after the run
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.indexed / self.seconds if self.seconds > 0 else 0.0
        return (
            f"indexed {self.indexed}, unchanged {self.unchanged}, removed {self.removed},"
            f" failed {self.failed}, skipped {self.skipped}"
            + (f", {self.low_information} low-information" if self.low_information else "")
            + f"; {self.total} images in the store"
            f" ({rate:,.0f} images/s)"
        )


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
Hasher = Callable[[list[FoundFile], Recipe, int], Iterator[list["HashOutcome"]]]


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
    features: bool = False,
) -> IndexSummary:
    """Bring the store up to date with the images under `dataset`. `jobs=0` uses every core.

    `hasher` replaces the local process pool (neardup.scale.cluster hashes on a Dask cluster); whoever
    hashes, only this process writes, and files committed by an earlier, interrupted run are
    unchanged now and not hashed again. `features`: also store local features (the hasher must
    compute them: local_hasher(..., features=True), cluster_hasher(..., features=True)).
    """
    started = time.perf_counter()
    root = os.path.abspath(dataset)
    if not os.path.isdir(root):
        raise NeardupError(f"{dataset}: not a folder")
    if features:
        from ..features import require

        require()  # one line naming what to install, before anything is written
    if hasher is None:
        hasher = local_hasher(jobs, batch_size, features=features)
    summary = IndexSummary()
    with Store.open_for_writing(store_path, recipe, root, library_versions()) as store:
        lacking = _prepare_features(store, store_path, features)
        found: list[FoundFile] = []
        for entry in walk_images(root):
            if isinstance(entry, Skipped):
                summary.skipped += 1
                report(f"{entry.path}: {entry.reason}")
            else:
                found.append(entry)

        stored = store.file_states()
        present = {item.relpath for item in found}
        gone = [relpath for relpath in stored if relpath not in present]
        todo = []
        for item in found:
            state = stored.get(item.relpath)
            if (state is not None and (state.size, state.mtime_ns) == (item.size, item.mtime_ns)
                    and item.relpath not in lacking):
                summary.unchanged += 1
            else:
                todo.append(item)

        store.apply([], gone)
        summary.removed += len(gone)

        bar = tqdm(total=len(todo), unit="img", disable=not progress, dynamic_ncols=True)
        try:
            for outcomes in hasher(todo, recipe, max_pixels):
                batch: list[IndexedFile] = []
                failed_before: list[str] = []
                for outcome in outcomes:
                    if outcome.hash_hex is None:
                        summary.failed += 1
                        report(f"{outcome.file.path}: {outcome.error}")
                        if outcome.file.relpath in stored:
                            failed_before.append(outcome.file.relpath)  # its old hash is stale
                        continue
                    if is_low_information(Hash.from_hex(outcome.hash_hex, recipe.bits)):
                        summary.low_information += 1
                    batch.append(IndexedFile(outcome.file.relpath, outcome.file.size,
                                             outcome.file.mtime_ns, outcome.hash_hex,
                                             outcome.features))
                store.apply(batch, failed_before)
                summary.indexed += len(batch)
                summary.removed += len(failed_before)
                bar.update(len(outcomes))
        finally:
            bar.close()
        summary.total = store.image_count()
        if summary.indexed >= COMPACT_MIN_IMAGES and summary.indexed * 2 >= summary.total:
            store.compact()  # this run at least doubled the store: worth one rewrite
        if summary.indexed or summary.removed:
            # Build the search arrays now, while we hold the store, so that the first search
            # after a large index does not pay for it (about 15 s at 10^7 hashes).
            HashIndex.from_store(store)
            if features:
                from ..features.index import FeatureIndex

                FeatureIndex.from_store(store)
    summary.seconds = time.perf_counter() - started
    return summary


def _prepare_features(store: Store, store_path: str, features: bool) -> set[str]:
    """Record the feature recipe (or refuse a mismatch); the stored files that still lack them."""
    if not features:
        if store.feature_recipe() is not None:
            raise NeardupError(f"{store_path}: keeps local features of every image; run index.py"
                               " with --features to keep them complete")
        return set()
    from ..features.extract import FeatureRecipe

    recipe = FeatureRecipe()
    store.enable_features(recipe.to_dict(), FeatureRecipe.describe_recorded)
    return store.paths_without_features()


def local_hasher(jobs: int, batch_size: int, *, features: bool = False) -> Hasher:
    """Hash in a local process pool; a group ends at batch_size files or BATCH_SECONDS."""

    def hash_locally(
        files: list[FoundFile], recipe: Recipe, max_pixels: int
    ) -> Iterator[list[HashOutcome]]:
        group: list[HashOutcome] = []
        last = time.monotonic()
        for outcome in hash_files(files, recipe, jobs=jobs, max_pixels=max_pixels,
                                  features=features):
            group.append(outcome)
            if len(group) >= batch_size or time.monotonic() - last > BATCH_SECONDS:
                yield group
                group, last = [], time.monotonic()
        if group:
            yield group

    return hash_locally


def hash_files(
    files: Sequence[FoundFile], recipe: Recipe, *, jobs: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS, features: bool = False,
) -> Iterator[HashOutcome]:
    """Hash files (and extract features), in worker processes when jobs != 1; outcomes come in
    completion order."""
    workers = jobs if jobs > 0 else (os.cpu_count() or 1)
    workers = min(workers, max(1, len(files)))
    if workers == 1:
        for item in files:
            yield _hash_one(item, recipe, max_pixels, features)
        return
    # forkserver: workers start from a clean process, never a fork of one holding threads or a
    # database connection.
    context = multiprocessing.get_context("forkserver")
    chunk = max(1, min(64, len(files) // (workers * 8)))
    with _workers_without_the_callers_script():
        pool = context.Pool(workers, initializer=_init_worker,
                            initargs=(recipe, max_pixels, features))
    with pool:
        yield from pool.imap_unordered(_hash_in_worker, files, chunksize=chunk)


@contextmanager
def _workers_without_the_callers_script() -> Iterator[None]:
    """Start worker processes that import neardup but not the caller's script.

    multiprocessing runs the parent's __main__ again in every new worker. The workers need nothing
    from it, and a script that calls neardup.index_folder without an `if __name__ == "__main__":`
    guard (or one read from standard input) would then index again in each worker, fail, and be
    restarted without end. Workers are started while __main__ is a blank module: they are all
    started here, before the pool is used.
    """
    script = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = script


_worker_settings: tuple[Recipe, int, bool] | None = None


def _init_worker(recipe: Recipe, max_pixels: int, features: bool = False) -> None:
    global _worker_settings  # one per worker process, set once before any task runs
    _worker_settings = (recipe, max_pixels, features)
    # Ctrl-C reaches the whole process group: only the parent handles it (it stops the pool and
    # keeps the committed batches), so workers do not each print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _hash_in_worker(item: FoundFile) -> HashOutcome:
    assert _worker_settings is not None
    return _hash_one(item, *_worker_settings)


def hash_partition(
    files: list[FoundFile], recipe: Recipe, max_pixels: int, features: bool = False
) -> list[HashOutcome]:
    """Hash a list of files in this process (a cluster worker's task)."""
    return [_hash_one(item, recipe, max_pixels, features) for item in files]


def _hash_one(item: FoundFile, recipe: Recipe, max_pixels: int, features: bool = False) -> HashOutcome:
    feature_bytes = None
    try:
        hash_hex = hash_file(item.path, recipe, max_pixels).hex()
        if features:
            from ..features.extract import stored_features

            feature_bytes = stored_features(item.path, max_pixels)
    except ImageError as error:
        return HashOutcome(item, None, error.reason)
    # A file rewritten while we read it may have given a hash of neither version: report it and
    # let the next run, which will see its new size or mtime, index it.
    try:
        after = os.stat(item.path)
    except OSError:
        return HashOutcome(item, None, "vanished while being indexed")
    if (after.st_size, after.st_mtime_ns) != (item.size, item.mtime_ns):
        return HashOutcome(item, None, "changed while being indexed; run again to index it")
    return HashOutcome(item, hash_hex, None, feature_bytes)
