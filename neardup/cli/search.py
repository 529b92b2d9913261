"""search.py: list the stored images that are near-duplicates of one or more query images."""

from __future__ import annotations

import argparse
import os
import sys

from ..core.discovery import Skipped, walk_images
from ..core.hashing import (
    DEFAULT_MAX_PIXELS,
    Hash,
    hash_file,
    hash_file_and_mirror,
    is_low_information,
)
from ..core.names import printable
from ..core.results import QueryResult, json_text, to_record
from ..core.search import (
    DEFAULT_MAX_DISTANCE,
    HashIndex,
    find_matches_many,
    merge_matches,
    resolve_stored_path,
)
from ..core.store import Store
from ..errors import ImageError, NeardupError, command
from ..evaluation import MAX_THRESHOLD
from ..evaluation.output import page_replace_problem, sheet_replace_problem
from ..features.extract import read_frame
from ..features.search import VerifiedSearch
from ..service.decoding import DEFAULT_DECODE_SECONDS
from ..service.limits import DEFAULT_DECODE_MEMORY, DEFAULT_UPLOAD_MAX_PIXELS
from ..service.settings import (
    DEFAULT_MAX_MATCHES,
    DEFAULT_MAX_QUERY_DISTANCE,
    DEFAULT_MAX_UPLOAD_BYTES,
    ServiceLimits,
)
from .common import (
    given_options,
    non_negative_int,
    path_option,
    positive_int,
    run_command,
    warn,
)
from .search_common import (
    EXIT_ERROR,
    EXIT_MATCH,
    EXIT_NO_MATCH,
    PROG,
    check_store,
    draw_montage,
    match_label,
    say,
    say_lacking_features,
)

# The other modes' code is loaded only when asked for (search_groups, search_evaluate,
# search_checker): with it, `search.py -q` on a store of CALTECH-101 took 0.66 s (the best of 15
# runs), 0.42 s without.

# The modes (the one required choice) in which each option does something. Given in another mode
# it would be silently ignored, so it is refused instead: a user who asks for a report and gets
# none, with exit status 0, believes something that is not true.
MODES = ("query", "evaluate", "groups", "stdin", "serve")
_SERVE = {"serve"}
APPLIES_TO = {
    "mirror": {"query", "evaluate", "stdin", "serve"},
    "montage": {"query", "groups"},
    "html": {"groups", "evaluate"},
    "report": {"evaluate"},
    "json": {"query", "groups", "evaluate"},
    "include_low_information": {"query", "groups", "evaluate", "stdin", "serve"},
    "max_pixels": {"query", "stdin", "serve"},  # and the pictures of --groups --montage/--html
    "max_matches": {"stdin", "serve"},
    "file_timeout": {"stdin", "serve"},
    "null": {"stdin"},
    "max_upload_bytes": _SERVE, "max_query_distance": _SERVE, "full_paths": _SERVE,
    "token_file": _SERVE, "decode_memory_mb": _SERVE, "max_connections": _SERVE,
    "max_in_flight": _SERVE, "header_timeout": _SERVE, "body_timeout": _SERVE,
    "keep_alive_timeout": _SERVE, "send_timeout": _SERVE,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=command(PROG),
        description="Hash query images with the store's recipe and list the stored images within"
        " a distance in bits (the query's undecided bits not counted), nearest first; on a store"
        f" with local features ({command('index.py')} --features), the verified matches.",
        epilog="Output: one match per line, 'distance<TAB>path' ('distance<TAB>inliers<TAB>path'"
        " on a store with features, '-' as the distance of a match the features found beyond"
        " --max-distance); with several queries each line starts with the query, as grep does"
        " with several files. Exit status, as grep: 0 when a match was found, 1 when none, 2 on"
        " an error.",
    )
    parser.add_argument("-s", "--shelve", required=True, type=path_option, action="append",
                        help=f"store built by {command('index.py')} (with --evaluate, repeat it to compare"
                        " stores built with different hashes on the same dataset)")
    wanted = parser.add_mutually_exclusive_group(required=True)
    wanted.add_argument("-q", "--query", type=path_option, action="append",
                        help="query image, or a folder of them; may be repeated")
    wanted.add_argument("--evaluate", type=path_option, metavar="MANIFEST",
                        help=f"score the store against a {command('gather.py')} manifest.csv: search every"
                        " sampled original, report the copies found and every other match")
    wanted.add_argument("--groups", action="store_true",
                        help="list every group of near-duplicates in the store, largest first:"
                        " every pair in a group is within --max-distance, or on a store with"
                        " features a verified match (no chains)")
    wanted.add_argument("--stdin", action="store_true",
                        help="read one image path per line, answer each with one JSON line"
                        f" (flushed); images {command('index.py')} commits meanwhile are found too")
    parser.add_argument("-0", "--null", action="store_true",
                        help="with --stdin: paths end with a NUL byte, not a line break (as"
                        " find -print0 writes them), so that any file name can be asked for")
    wanted.add_argument("--serve", metavar="HOST:PORT",
                        help="answer POST /search (image bytes as the body, optional"
                        " ?max_distance=N) and GET /health over HTTP until SIGTERM")
    parser.add_argument("--mirror", action="store_true",
                        help="also match mirror images: hash the flipped query too (the store"
                        " is unchanged)")
    parser.add_argument("--montage", type=path_option, metavar="PNG",
                        help="with --query or --groups: also draw a contact sheet, each query (or"
                        " group) beside its matches with their distances; at most 24 rows, and"
                        " what is left out is said on the sheet and on stderr")
    parser.add_argument("--html", type=path_option, metavar="PAGE",
                        help="with --groups or --evaluate (one store): also write a"
                        " self-contained HTML page to review every group or every miss, with"
                        " thumbnails, paths relative to the dataset and distances")
    parser.add_argument("--report", type=path_option, metavar="DIR",
                        help="with --evaluate: write into DIR, for each store, evaluation JSON and"
                        " CSV, a PNG chart of recall and precision against the threshold, a"
                        " contact sheet of the worst misses and an HTML page of them all")
    service = parser.add_argument_group(
        "checker (--stdin and --serve)", "limits for a long-running checker; docs/service.md"
        " explains each")
    service.add_argument("--max-matches", type=positive_int, default=DEFAULT_MAX_MATCHES,
                         help="at most this many matches per answer, nearest first; a longer"
                         f' list is cut and marked "truncated": true (default {DEFAULT_MAX_MATCHES})')
    service.add_argument("--file-timeout", type=positive_int, default=int(DEFAULT_DECODE_SECONDS),
                         metavar="SECONDS",
                         help="a query still decoding after this long fails, and its worker"
                         " process is replaced (queries are decoded in worker processes, so one"
                         " that crashes a decoder fails alone; default"
                         f" {DEFAULT_DECODE_SECONDS:g})")
    service.add_argument("--max-upload-bytes", type=positive_int, default=DEFAULT_MAX_UPLOAD_BYTES,
                         help="with --serve: larger bodies are refused with 413 (default"
                         f" {DEFAULT_MAX_UPLOAD_BYTES:,})")
    service.add_argument("--max-query-distance", type=non_negative_int,
                         default=DEFAULT_MAX_QUERY_DISTANCE,
                         help="with --serve: the largest ?max_distance a client may ask for"
                         f" (default {DEFAULT_MAX_QUERY_DISTANCE})")
    service.add_argument("--full-paths", action="store_true",
                         help="with --serve: answers also give each match's path on this"
                         " machine; by default only its path inside the dataset (relpath)")
    service.add_argument("--token-file", type=path_option, metavar="FILE",
                         help="with --serve: every request must carry 'Authorization: Bearer"
                         " <the token in FILE>', else 401")
    service.add_argument("--decode-memory-mb", type=positive_int,
                         default=DEFAULT_DECODE_MEMORY // 2**20,
                         help="with --serve: memory all uploads being decoded may take together;"
                         " each upload's share is estimated from its header before decoding"
                         f" (default {DEFAULT_DECODE_MEMORY // 2**20})")
    service.add_argument("--max-connections", type=positive_int,
                         default=ServiceLimits.max_connections,
                         help="with --serve: more are answered 503 and closed, more than a"
                         " quarter from one address 429 (default"
                         f" {ServiceLimits.max_connections})")
    service.add_argument("--max-in-flight", type=positive_int, default=ServiceLimits.max_in_flight,
                         help="with --serve: uploads decoded or searched at once; more are"
                         " answered 503, more than a quarter from one address 429; uploads"
                         " still arriving may hold as many of --max-upload-bytes in memory"
                         f" (default {ServiceLimits.max_in_flight})")
    service.add_argument("--header-timeout", type=positive_float,
                         default=ServiceLimits.header_timeout,
                         help="with --serve: seconds for a request's headers to arrive (default"
                         f" {ServiceLimits.header_timeout:g})")
    service.add_argument("--body-timeout", type=positive_float, default=ServiceLimits.body_timeout,
                         help="with --serve: seconds for an upload's body to arrive (default"
                         f" {ServiceLimits.body_timeout:g})")
    service.add_argument("--keep-alive-timeout", type=positive_float,
                         default=ServiceLimits.keep_alive_timeout,
                         help="with --serve: seconds an idle connection is kept open (default"
                         f" {ServiceLimits.keep_alive_timeout:g})")
    service.add_argument("--send-timeout", type=positive_float, default=ServiceLimits.send_timeout,
                         help="with --serve: seconds a client may leave an answer untaken (its"
                         " connection's buffer full) before the connection is closed (default"
                         f" {ServiceLimits.send_timeout:g})")
    parser.add_argument("-m", "--max-distance", type=non_negative_int, default=DEFAULT_MAX_DISTANCE,
                        help=f"largest distance in bits reported, the query's undecided bits not counted"
                        f" (default {DEFAULT_MAX_DISTANCE};"
                        " 0 is the exact bucket only; at most the hash's bits, and for --evaluate"
                        f" at most {MAX_THRESHOLD})")
    parser.add_argument("--json", action="store_true",
                        help="print results as one JSON array (--stdin and --serve always answer"
                        " in JSON)")
    parser.add_argument("--include-low-information", action="store_true",
                        help="also match blank, single-colour and smooth images, whose hashes"
                        " are (nearly) all zeros or ones and so match each other regardless")
    parser.add_argument("--max-pixels", type=positive_int,
                        help="refuse query images larger than this many pixels (default"
                        f" {DEFAULT_MAX_PIXELS:,}; with --serve {DEFAULT_UPLOAD_MAX_PIXELS:,})")
    # "-0" looks like a negative number, so argparse took every negative number for an option:
    # `-m -1` said "expected one argument" instead of "-1 is negative". With the flag cleared a
    # negative number is a value again; "-0" itself is still matched first, as the option it is.
    parser._has_negative_number_optionals.clear()  # no public switch for it (3.11 to 3.13)
    return parser


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def expand_queries(queries: list[str]) -> tuple[list[str], list[QueryResult]]:
    """Query files in order (folders walked recursively) and the entries that could not be read;
    a folder holding no image is one of those (answering nothing, it passed for "no match")."""
    paths: list[str] = []
    problems: list[QueryResult] = []
    for query in queries:
        if not os.path.isdir(query):
            paths.append(query)
            continue
        found_before = len(paths) + len(problems)
        for entry in walk_images(query):
            if isinstance(entry, Skipped):
                problems.append(QueryResult(entry.path, error=entry.reason))
            else:
                paths.append(entry.path)
        if len(paths) + len(problems) == found_before:
            problems.append(QueryResult(query, error="holds no images"))
    return paths, problems


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_options(parser, argv)
    if args.max_pixels is None:
        args.max_pixels = DEFAULT_UPLOAD_MAX_PIXELS if args.serve else DEFAULT_MAX_PIXELS

    def body() -> int:
        check_options(args, given)
        if sys.stdout is None and not args.serve:
            # Started with standard output closed (`>&-`, from cron): Python drops every print,
            # so a search would end in silence, or in a traceback at the first flush (a review).
            raise NeardupError("standard output is closed, so the results would go nowhere (run"
                               " it with > FILE)")
        if args.evaluate:
            from .search_evaluate import run_evaluation
            return run_evaluation(args)
        if len(args.shelve) > 1:
            raise NeardupError("several --shelve are only for --evaluate")
        args.shelve = args.shelve[0]
        bits = check_store(args.shelve, args.max_distance,
                           args.max_query_distance if "max_query_distance" in given else None)
        if args.serve:
            # The default (10) on a store of fewer bits: beyond them everything matches.
            args.max_query_distance = min(args.max_query_distance, bits)
        if args.stdin or args.serve:
            from .search_checker import run_checker
            return run_checker(args)
        if args.groups:
            from .search_groups import run_groups
            return run_groups(args)
        with Store.open_for_reading(args.shelve, report=say) as store, store.snapshot():
            paths, results = expand_queries(args.query)
            index = HashIndex.from_store(store) if args.max_distance > 0 else None
            hashed: list[tuple[QueryResult, Hash]] = []
            mirrored: list[Hash] = []
            # On a store with features the mirror image's hash proposes candidates too (verified
            # like any other): mirrored copies are found without --mirror.
            keeps_features = store.has_features()
            flip = args.mirror or keeps_features
            for path in paths:
                result = QueryResult(path)
                results.append(result)
                try:
                    if flip:
                        query_hash, mirror_hash = hash_file_and_mirror(path, store.recipe,
                                                                       args.max_pixels)
                        mirrored.append(mirror_hash)
                    else:
                        query_hash = hash_file(path, store.recipe, args.max_pixels)
                except ImageError as error:
                    result.error = error.reason
                    continue
                result.hash_hex = query_hash.hex()
                result.undecided_hex = query_hash.undecided_hex()
                result.low_information = is_low_information(query_hash)
                if result.low_information and not args.include_low_information:
                    warn(PROG, f"{path}: low-information image (blank, single-colour or"
                         " smooth): not matched; --include-low-information matches it anyway")
                hashed.append((result, query_hash))
            verified = VerifiedSearch.for_store(store, index) if keeps_features else None
            if verified is not None:  # a store with local features: verified matches only
                say_lacking_features(store)
                answer_verified(verified, hashed, mirrored, args)
            else:
                # Every query is hashed first, then all are searched against the index loaded
                # once. (On a store with features the verified search looks the hashes up
                # itself: a lookup here was thrown away.)
                answers = find_matches_many(store, [query for _, query in hashed],
                                            args.max_distance, index,
                                            include_low_information=args.include_low_information)
                if args.mirror:
                    flipped = find_matches_many(store, mirrored, args.max_distance, index,
                                                include_low_information=args.include_low_information)
                    answers = [merge_matches(plain, other)
                               for plain, other in zip(answers, flipped, strict=True)]
                for (result, _), matches in zip(hashed, answers, strict=True):
                    result.matches = matches
            if args.montage:
                from ..evaluation.montage import Row, Tile
                draw_montage(args.montage, "queries and their matches", [
                    Row(Tile(r.query, "query", r.query), [
                        Tile(full, match_label(m), m.path) for m in r.matches
                        if (full := resolve_stored_path(store.dataset_root, m.path))])
                    for r in results if r.error is None and r.matches],
                    what="queries with matches", nothing="no query has a match",
                    max_pixels=args.max_pixels)
            return emit(results, store.dataset_root, as_json=args.json,
                        several=len(results) > 1)

    return run_command(PROG, body)


def answer_verified(verified: VerifiedSearch, hashed: list[tuple[QueryResult, Hash]],
                    mirrored: list[Hash], args: argparse.Namespace) -> None:
    """A store with local features: every query's candidates from hash and features, verified."""
    for number, (result, query_hash) in enumerate(hashed):
        try:
            frame = read_frame(result.query, args.max_pixels)
        except ImageError as error:
            result.error = error.reason
            continue
        hashes = [query_hash] + ([mirrored[number]] if mirrored else [])
        result.matches = verified.search(hashes, frame, args.max_distance,
                                         include_low_information=args.include_low_information)


def check_options(args: argparse.Namespace, given: set[str]) -> None:
    """Refuse, in one line, every option given that would do nothing in the mode asked for."""
    mode = next(name for name in MODES if getattr(args, name))
    for option in sorted(given & set(APPLIES_TO), key=list(APPLIES_TO).index):
        modes = APPLIES_TO[option]
        if mode in modes:
            continue
        if option == "max_pixels" and mode == "groups" and (args.montage or args.html):
            continue  # the pictures are opened under the same pixel limit
        uses = [_flag(name) for name in MODES if name in modes]
        where = " or ".join([", ".join(uses[:-1]), uses[-1]] if len(uses) > 1 else uses)
        hint = ""
        if option == "montage" and mode == "evaluate":
            hint = "; --report DIR draws the misses"
        elif option == "report" and mode == "groups":
            hint = "; --montage PNG or --html PAGE draw the groups"
        elif option == "report" and mode == "query":
            hint = "; --montage PNG draws the results"
        raise NeardupError(f"{_flag(option)} does nothing with {_flag(mode)} (it is for {where})"
                           + hint)
    if args.html and args.evaluate and len(args.shelve) > 1:
        raise NeardupError("--html writes one store's page; with several --shelve, --report DIR"
                           " writes a page for each")
    check_outputs(args)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_outputs(args: argparse.Namespace) -> None:
    """Where --report, --montage and --html will write, checked before any work is done: a
    mistyped path must not cost a whole evaluation and then a traceback."""
    if args.report:
        if os.path.exists(args.report) and not os.path.isdir(args.report):
            # makedirs says "File exists", which reads as if the folder were there.
            raise NeardupError(f"--report {args.report}: is a file, not a folder; give a folder"
                               " for the report's files")
        try:
            os.makedirs(args.report, exist_ok=True)
        except OSError as error:
            raise NeardupError(f"--report {args.report}: cannot make this folder"
                               f" ({error.strerror})") from error
    for option, path, replace_problem in (("--montage", args.montage, sheet_replace_problem),
                                          ("--html", args.html, page_replace_problem)):
        if not path:
            continue
        if os.path.isdir(path):
            raise NeardupError(f"{option} {path}: is a folder; give a file name")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise NeardupError(f"{option} {path}: no such folder {folder}")
        # The file is renamed over the path: the store, a photo or a device there would be gone.
        if problem := replace_problem(path):
            raise NeardupError(f"{option} {path}: {problem}")


def emit(results: list[QueryResult], dataset_root: str, *, as_json: bool, several: bool) -> int:
    records = []
    found = errors = False
    for result in results:
        record = to_record(result, dataset_root, lambda line: warn(PROG, line))
        records.append(record)
        if result.error is not None:
            errors = True
            warn(PROG, f"{result.query}: {result.error}")
            continue
        found = found or bool(record["matches"])
        if not as_json:
            prefix = f"{printable(result.query)}\t" if several else ""
            for item in record["matches"]:
                if "verified" in item:  # a store with features: distance (or -), inliers, path
                    distance = "-" if item["distance"] is None else item["distance"]
                    # No inliers (-): not verified, its features not stored yet (an unfinished
                    # index.py --features; said on stderr).
                    inliers = "-" if item["inliers"] is None else item["inliers"]
                    print(f"{prefix}{distance}\t{inliers}\t{printable(item['path'])}")
                else:
                    print(f"{prefix}{item['distance']}\t{printable(item['path'])}")
    if as_json:
        # Valid for strict parsers even for file names that are not UTF-8 (json_text).
        print(json_text(records, indent=2))
    sys.stdout.flush()
    if errors:
        return EXIT_ERROR
    return EXIT_MATCH if found else EXIT_NO_MATCH


if __name__ == "__main__":  # python -m neardup.cli.search
    raise SystemExit(main())
