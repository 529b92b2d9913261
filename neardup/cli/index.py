"""index.py: hash every image under a folder into a store."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from ..api import index_folder
from ..core.discovery import dataset_folder
from ..core.hashing import ALGORITHMS, DEFAULT_MAX_PIXELS, Recipe
from ..core.indexing import DEFAULT_BATCH_SIZE, DEFAULT_FILE_SECONDS, check_worker_count
from ..core.names import shown_path
from ..core.rebuilding import finish_rebuild, rebuild_target
from ..errors import NeardupError, command
from ..scale.cluster import DEFAULT_PARTITION_SIZE, cluster_hasher, connect, worker_paths
from .common import (
    EXIT_INTERRUPTED,
    given_options,
    hash_size,
    non_negative_int,
    path_option,
    positive_int,
    run_command,
    warn,
)

PROG = "index.py"

EXIT_OK = 0
EXIT_NOTHING_INDEXED = 1
EXIT_REFUSED = 2
DEFAULT_CONNECT_SECONDS = 30


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=command(PROG),
        description="Hash every image under a folder and store hash -> paths in a shelve."
        " Re-runs are incremental: unchanged files are skipped, deleted ones dropped.",
        epilog="Exit status: 0 when the store holds images afterwards, 1 when nothing could be"
        " indexed, 2 on an error (bad options, a store that cannot be used or is damaged, a run"
        " refused because it would remove more than half of the store).",
    )
    parser.add_argument("-d", "--dataset", required=True, type=path_option,
                        help="folder of images (searched recursively)")
    parser.add_argument("-s", "--shelve", required=True, type=path_option,
                        help="store file to create or update")
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="dhash",
                        help="perceptual hash (default dhash); the README's \"How accurate is"
                        " it?\" compares them on each kind of edit")
    parser.add_argument("--hash-size", type=hash_size, default=8,
                        help="hash is hash-size squared bits (default 8: 64 bits)")
    parser.add_argument("--exact", action="store_true",
                        help="hash files exactly as plain ImageHash does (no EXIF rotation or alpha"
                        " flattening), for comparing hashes with other tools")
    parser.add_argument("--features", action="store_true",
                        help="also store local features of every image (about 2 KB each), so"
                        f" {command('search.py')} finds cropped, padded, rotated and mirrored"
                        " copies and verifies every match (needs the extra 'features': OpenCV and"
                        " FAISS)")
    parser.add_argument("-j", "--jobs", type=non_negative_int, default=0,
                        help="worker processes (default 0: one per core)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        help=f"images per committed transaction (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images larger than this many pixels (decompression bombs)")
    parser.add_argument("--file-timeout", type=positive_int, default=int(DEFAULT_FILE_SECONDS),
                        metavar="SECONDS",
                        help="a file a worker process takes longer to hash fails, and the run"
                        f" goes on (default {DEFAULT_FILE_SECONDS:g}; none with --jobs 1)")
    cluster = parser.add_argument_group(
        "on a Dask cluster (needs the extra 'dask': Dask's distributed; workers must see the"
        " files at the same path)")
    place = cluster.add_mutually_exclusive_group()
    place.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="hash on the workers of this Dask scheduler")
    place.add_argument("--local-cluster", type=positive_int, metavar="N",
                       help="start a Dask cluster of N workers on 127.0.0.1 and hash there")
    cluster.add_argument("--partition-size", type=positive_int, default=DEFAULT_PARTITION_SIZE,
                         help="files per task; each finished partition is one transaction"
                         f" (default {DEFAULT_PARTITION_SIZE})")
    cluster.add_argument("--connect-timeout", type=positive_int, default=DEFAULT_CONNECT_SECONDS,
                         metavar="SECONDS",
                         help="how long to wait for the scheduler and its first worker"
                         f" (default {DEFAULT_CONNECT_SECONDS})")
    parser.add_argument("--allow-mass-removal", action="store_true",
                        help="let this run remove the entries of more than half of the store's"
                        " images when their files are gone (refused otherwise: a folder that"
                        " failed to mount looks the same); an empty folder never empties a store")
    parser.add_argument("--moved-from", metavar="OLD_FOLDER",
                        help="the store indexes OLD_FOLDER, since moved or copied to --dataset:"
                        " re-point it (its paths are relative to the folder; files whose size,"
                        " mtime or inode changed are hashed again, as always)")
    parser.add_argument("--rebuild", action="store_true",
                        help="hash every image again into a new store beside this one"
                        " (SHELVE.rebuilding, resumed if a run was stopped), then give this one"
                        " its contents in one commit: searches running meanwhile answer from the"
                        " old contents until then. The way to change the hash or start afresh"
                        " while checkers read the store; moving a file over a store in use is"
                        " not safe with SQLite")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_options(parser, argv)

    def body() -> int:
        check_options(args, given)
        try:
            Recipe(args.algorithm, args.hash_size, exact=args.exact)
        except ValueError as error:
            raise NeardupError(str(error)) from None
        options = {"algorithm": args.algorithm, "hash_size": args.hash_size, "exact": args.exact,
                   "max_pixels": args.max_pixels,
                   "progress": not args.quiet and sys.stderr.isatty(),
                   "report": lambda line: warn(PROG, line), "features": args.features,
                   "allow_mass_removal": args.allow_mass_removal,
                   "moved_from": dataset_folder(args.moved_from) if args.moved_from else None}
        # --rebuild of a store that exists: built beside it, copied into it at the end.
        target = args.shelve
        if args.rebuild and os.path.exists(args.shelve):
            target = rebuild_target(args.shelve, dataset_folder(args.dataset),
                                    Recipe(args.algorithm, args.hash_size, exact=args.exact),
                                    args.features, lambda line: warn(PROG, line))
        if on_cluster(args):
            with connect(args.scheduler, args.local_cluster, args.connect_timeout,
                         features=args.features,
                         report=lambda line: warn(PROG, line)) as client:
                hasher = cluster_hasher(client, args.partition_size, features=args.features,
                                        report=lambda line: warn(PROG, line))
                summary = index_folder(worker_paths(args.dataset), target, hasher=hasher,
                                       **options)
        else:
            summary = index_folder(dataset_folder(args.dataset), target, jobs=args.jobs,
                                   batch_size=args.batch_size, file_seconds=args.file_timeout,
                                   **options)
        rebuilt = target != args.shelve and finish_rebuild(
            args.shelve, target, summary, args.dataset, args.allow_mass_removal,
            lambda line: warn(PROG, line))
        print(f"{shown_path(args.shelve)}: {summary.line()}")  # one line, whatever the name
        if rebuilt:
            print(f"{shown_path(args.shelve)}: rebuilt: the new contents replaced the old in one"
                  " commit")
        if summary.refusal:
            return EXIT_REFUSED
        if on_cluster(args) and summary.missing_there:
            # The workers did not find files that are here: they do not see the folder.
            files = "1 file" if summary.missing_there == 1 else f"{summary.missing_there} files"
            kept = "; stored entries of such files were kept" if summary.kept else ""
            warn(PROG, f"the Dask workers did not find {files} that are under {args.dataset}"
                 f" here: each worker must see the folder at the same path{kept}")
            return EXIT_NOTHING_INDEXED
        if summary.total == 0:
            # Said, as search.py would otherwise only answer "no such store" after this run.
            unwritten = "" if os.path.lexists(args.shelve) else f"; {shown_path(args.shelve)} was not written"
            warn(PROG, f"no image could be indexed under {args.dataset}{unwritten}")
            return EXIT_NOTHING_INDEXED
        return EXIT_OK

    code = run_command(PROG, body, f"every committed batch is kept in {shown_path(args.shelve)}"
                       " (files hashed since the last commit are hashed again); run again to"
                       " finish")
    if (code == EXIT_INTERRUPTED and argv is None
            and threading.current_thread() is threading.main_thread()):
        # Run as the program: nothing is left to stop, the process only exits, and a Ctrl-C
        # pressed again (the local cluster's close is a few seconds) would interrupt Dask's
        # clean-up at exit with a traceback ("Exception ignored in atexit callback"). A caller
        # of main(argv) in a process of its own keeps its Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


def on_cluster(args: argparse.Namespace) -> bool:
    """Whether the run hashes on a Dask cluster (an empty --scheduler is refused, not local)."""
    return args.scheduler is not None or bool(args.local_cluster)


def check_options(args: argparse.Namespace, given: set[str]) -> None:
    """Refuse, in one line, options that would do nothing with the hashing place asked for."""
    check_worker_count(args.jobs, "--jobs")
    if args.rebuild and args.moved_from:
        raise NeardupError("--moved-from does nothing with --rebuild (every image is hashed"
                           " again into a new store)")
    if args.local_cluster:
        check_worker_count(args.local_cluster, "--local-cluster")
    if args.scheduler is not None and not args.scheduler.strip():
        raise NeardupError("--scheduler is empty (an unset variable?): give the scheduler's"
                           " address, tcp://HOST:PORT")
    on_cluster = ("--scheduler" if args.scheduler is not None
                  else "--local-cluster" if args.local_cluster else "")
    if on_cluster:
        for dest, flag in (("jobs", "--jobs"), ("batch_size", "--batch-size"),
                           ("file_timeout", "--file-timeout")):
            if dest in given:
                raise NeardupError(f"{flag} does nothing with {on_cluster} (the cluster's workers"
                                   " hash; --partition-size sets the files per transaction)")
        if args.local_cluster and "connect_timeout" in given:
            raise NeardupError("--connect-timeout does nothing with --local-cluster (it is for"
                               " --scheduler)")
        return
    if "file_timeout" in given and args.jobs == 1:
        raise NeardupError("--file-timeout does nothing with --jobs 1 (files are hashed in"
                           f" {command('index.py')}'s own process)")
    for dest, flag in (("partition_size", "--partition-size"),
                       ("connect_timeout", "--connect-timeout")):
        if dest in given:
            raise NeardupError(f"{flag} does nothing without --scheduler or --local-cluster")


if __name__ == "__main__":  # python -m neardup.cli.index
    raise SystemExit(main())
