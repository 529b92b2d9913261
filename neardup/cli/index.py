"""index.py: hash every image under a folder into a store."""

from __future__ import annotations

import argparse
import sys

from ..core.hashing import ALGORITHMS, DEFAULT_MAX_PIXELS, Recipe
from ..core.indexing import DEFAULT_BATCH_SIZE, index_folder
from ..scale.cluster import cluster_hasher, connect, worker_paths
from .common import non_negative_int, positive_int, run_command, warn

PROG = "index.py"

EXIT_OK = 0
EXIT_NOTHING_INDEXED = 1
EXIT_REFUSED = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Hash every image under a folder and store hash -> paths in a shelve."
        " Re-runs are incremental: unchanged files are skipped, deleted ones dropped.",
        epilog="Exit status: 0 when the store holds images afterwards, 1 when nothing could be"
        " indexed, 2 on an error (bad options, a store that cannot be used or is damaged, a run"
        " refused because it would remove more than half of the store).",
    )
    parser.add_argument("-d", "--dataset", required=True, help="folder of images (searched recursively)")
    parser.add_argument("-s", "--shelve", required=True, help="store file to create or update")
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="dhash")
    parser.add_argument("--hash-size", type=positive_int, default=8,
                        help="hash is hash-size squared bits (default 8: 64 bits)")
    parser.add_argument("--exact", action="store_true",
                        help="hash files exactly as plain ImageHash does (no EXIF rotation or alpha"
                        " flattening), for comparing hashes with other tools")
    parser.add_argument("-j", "--jobs", type=non_negative_int, default=0,
                        help="worker processes (default 0: one per core)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        help="images per committed transaction")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images larger than this many pixels (decompression bombs)")
    cluster = parser.add_argument_group(
        "on a Dask cluster (pip install -r requirements-dask.txt; workers must see the files"
        " at the same path)")
    place = cluster.add_mutually_exclusive_group()
    place.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="hash on the workers of this Dask scheduler")
    place.add_argument("--local-cluster", type=positive_int, metavar="N",
                       help="start a Dask cluster of N workers on 127.0.0.1 and hash there")
    cluster.add_argument("--partition-size", type=positive_int, default=1000,
                         help="files per task; each finished partition is one transaction")
    cluster.add_argument("--connect-timeout", type=positive_int, default=30, metavar="SECONDS",
                         help="how long to try reaching the scheduler (default 30)")
    parser.add_argument("--allow-mass-removal", action="store_true",
                        help="let this run remove the entries of more than half of the store's"
                        " images when their files are gone (refused otherwise: a folder that"
                        " failed to mount looks the same); an empty folder never empties a store")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        try:
            recipe = Recipe(args.algorithm, args.hash_size, exact=args.exact)
        except ValueError as error:
            build_parser().error(str(error))
        options = {"jobs": args.jobs, "batch_size": args.batch_size, "max_pixels": args.max_pixels,
                   "progress": not args.quiet and sys.stderr.isatty(),
                   "report": lambda line: warn(PROG, line),
                   "allow_mass_removal": args.allow_mass_removal}
        if args.scheduler or args.local_cluster:
            with connect(args.scheduler, args.local_cluster, args.connect_timeout) as client:
                summary = index_folder(worker_paths(args.dataset), args.shelve, recipe,
                                       hasher=cluster_hasher(client, args.partition_size),
                                       **options)
        else:
            summary = index_folder(args.dataset, args.shelve, recipe, **options)
        print(f"{args.shelve}: {summary.line()}")
        if summary.refusal:
            return EXIT_REFUSED
        if summary.total == 0:
            warn(PROG, f"no image could be indexed under {args.dataset}")
            return EXIT_NOTHING_INDEXED
        return EXIT_OK

    return run_command(PROG, body, "every committed batch is kept; run again to finish")
