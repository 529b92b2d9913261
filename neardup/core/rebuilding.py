"""index.py --rebuild: a store in use built again beside itself, then copied into it in one commit.

Moving a rebuilt file over a store that another program has open is not safe with SQLite (see
store.copy_store_into), so the new store is built as `<store>.rebuilding` beside the store's own
file and copied in through SQLite. The rebuilt store is neardup's own throw-away: one left by a
stopped run is resumed, or started again where it cannot be (another recipe, damaged). The copy
keeps the incremental run's promises: no image whose file is still there, unchanged, and could
not be read this time is dropped, and more than half of the store needs --allow-mass-removal.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import StoreError, command
from . import cache
from .hashing import Recipe
from .indexing import IndexSummary
from .names import shown_path
from .store import Store, copy_store_into, remove_store_files
from .storefile import StoreDamaged, WriterLock, check_store_path, probe_for_writing

SUFFIX = ".rebuilding"

Report = Callable[[str], None]


def rebuild_target(store_path: str, dataset: str, recipe: Recipe, features: bool,
                   report: Report) -> str:
    """Where --rebuild builds the store at `store_path` (which exists): refused before any
    hashing when the store is not one (or indexes another folder), and a leftover that cannot
    be resumed started again."""
    check_store_path(store_path, writing=True)
    probe_for_writing(store_path)  # a file that is not a store is refused untouched
    try:
        with Store.open_for_reading(store_path, quick_check=False, for_queries=False) as old:
            root, had_features = old.dataset_root, old.has_features()
    except StoreDamaged:
        root, had_features = None, False  # the rebuild is its repair
    if root is not None and os.path.abspath(root) != os.path.abspath(dataset):
        raise StoreError(f"{store_path}: indexes {root}, not {dataset}; --rebuild builds a store"
                         f" again from its own folder (a folder moved since: {command('index.py')}"
                         f" --moved-from first; another folder: another --shelve)")
    if had_features and not features:  # as README says, but it went without a word (a review)
        report(f"{shown_path(store_path)}: keeps local features; rebuilt without --features it"
               " will be hash-only (stop now and add --features to keep them)")
    # Beside the store's own file (through a symlink too), where its lock is; named as the
    # store was where that is the same.
    real = os.path.realpath(store_path)
    target = (store_path if real == os.path.abspath(store_path) else real) + SUFFIX
    if os.path.lexists(target):
        _resume_or_start_again(target, recipe, features, report)
    return target


def _resume_or_start_again(target: str, recipe: Recipe, features: bool, report: Report) -> None:
    lock = WriterLock.take(target)  # refused while another --rebuild writes it
    try:
        try:
            with Store.open_for_reading(target, quick_check=True, for_queries=False) as left:
                same = left.recipe == recipe and left.has_features() == features
                why = "" if same else f"made with {left.recipe.describe()}" + (
                    " and local features" if left.has_features() else "")
        except StoreDamaged as error:
            same, why = False, f"damaged ({error.args[0].split('; ')[0].split(': ', 1)[-1]})"
        except StoreError as error:
            raise StoreError(f"{error}; {target} is the name --rebuild builds under: move that"
                             " file away") from error
        if not same:
            remove_store_files(target)
            report(f"{shown_path(target)}: left by a stopped --rebuild, {why}; started again")
    finally:
        lock.release()


def finish_rebuild(store_path: str, rebuilt: str, summary: IndexSummary, dataset: str,
                   allow_mass_removal: bool, report: Report) -> bool:
    """Copy the rebuilt store in, unless that would lose what the store holds: then
    summary.refusal says why, and its count is the store's. True when copied."""
    if not summary.refusal and summary.total == 0:
        summary.refusal = (f"{dataset} holds no image that could be indexed (a disk that failed to"
                           " mount looks the same); the store keeps its contents")
    if not summary.refusal:
        summary.refusal = _loss(store_path, rebuilt, allow_mass_removal, report)
    if summary.refusal:
        try:
            with Store.open_for_reading(store_path, quick_check=False,
                                        for_queries=False) as old:
                summary.total = old.image_count()  # the line counts the store, not the rebuilt
        except StoreError:
            pass
        return False
    _copy(rebuilt, store_path, report)
    return True


def _loss(store_path: str, rebuilt: str, allow_mass_removal: bool, report: Report) -> str:
    """Why the rebuilt store must not replace the store's contents, or ""."""
    try:
        with Store.open_for_reading(store_path, quick_check=False, for_queries=False) as old:
            held, root = old.file_states(), old.dataset_root
    except StoreDamaged as error:
        report(f"{error.args[0].split('; ')[0]}: replaced by the rebuilt store without comparing"
               " what each holds")
        return ""
    with Store.open_for_reading(rebuilt, quick_check=False, for_queries=False) as new:
        dropped = set(held) - set(new.file_states())
    kept = f"the store keeps its contents, and the rebuilt store is kept in {rebuilt}"
    # As an incremental run does: a file still there, unchanged since it was indexed, that
    # could not be read this time keeps its entry; one changed since (truncated, rewritten)
    # that cannot be read is dropped.
    unread = []
    for relpath in sorted(dropped):
        try:
            now = os.stat(os.path.join(root, relpath))
        except OSError:
            continue  # gone
        if held[relpath].same_file(now.st_size, now.st_mtime_ns, now.st_ino):
            unread.append(relpath)
    if unread:
        many = f" and {len(unread) - 1} more" if len(unread) > 1 else ""
        return (f"{shown_path(unread[0])}{many}: held by the store, unchanged in the folder, and"
                f" not read this time (the lines above say why); {kept}: run the same command"
                " again once they can be read")
    if len(dropped) * 2 > len(held) and not allow_mass_removal:
        return (f"the rebuilt store lacks {len(dropped)} of the store's {len(held)} images, whose"
                " files are gone from the folder (more than half); check that the folder is the"
                f" right one and mounted, or run again with --allow-mass-removal; {kept}")
    return ""


def _copy(rebuilt: str, store_path: str, report: Report) -> None:
    """The store given the rebuilt one's contents, which are then deleted. The rebuilt store's
    lock is held throughout, so that another --rebuild cannot write to it meanwhile; a copy that
    cannot be made keeps it, for the same command to copy it in."""
    lock = WriterLock.take(rebuilt)
    try:
        try:
            copy_store_into(rebuilt, store_path, report=report)
        except StoreError as error:
            raise StoreError(f"{error}; the rebuilt store is kept in {rebuilt}: run the same"
                             f" {command('index.py')} --rebuild again to copy it in") from error
        remove_store_files(rebuilt, cache_moved_to=store_path + ".cache")
    finally:
        lock.release(remove=True)
    # The old contents' search and feature arrays are of another store id now: deleted (a
    # review found a hash-only rebuild leaving the old feature index's files).
    with Store.open_for_reading(store_path, quick_check=False, for_queries=False) as copied:
        cache.prune(copied, keep=copied.generation())
