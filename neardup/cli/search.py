"""search.py: list the stored images that are near-duplicates of one or more query images."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import BinaryIO, TextIO

from ..api import DuplicateGroup, ImageStore
from ..core.discovery import Skipped, walk_images
from ..core.grouping import groups_distance_problem
from ..core.hashing import (
    DEFAULT_MAX_PIXELS,
    Hash,
    hash_file,
    hash_file_and_mirror,
    is_low_information,
)
from ..core.results import QueryResult, counted, display_path, printable, to_record
from ..core.search import (
    DEFAULT_MAX_DISTANCE,
    HashIndex,
    Match,
    find_matches_many,
    merge_matches,
    resolve_stored_path,
)
from ..core.store import Store
from ..errors import ImageError, NeardupError, command
from ..evaluation.html import Item, evaluation_page, groups_page, write_page
from ..evaluation.keeping import Choice, Facts, choose_in_group
from ..evaluation.montage import Row, Tile, contact_sheet
from ..evaluation.output import page_replace_problem, sheet_replace_problem
from ..evaluation.report import report_stem, write_report
from ..evaluation.scoring import (
    MAX_THRESHOLD,
    Evaluation,
    comparison_table,
    evaluate_manifest,
    format_evaluation,
    format_verified,
    manifest_changed,
    missing_haystack,
)
from ..features.extract import read_frame
from ..features.search import VerifiedSearch, lacking_features
from ..service.checker import Checker
from ..service.decoding import DEFAULT_DECODE_SECONDS, InWorkers
from ..service.limits import DEFAULT_DECODE_MEMORY, DEFAULT_UPLOAD_MAX_PIXELS, DecodeBudget
from ..service.server import (
    DEFAULT_MAX_MATCHES,
    DEFAULT_MAX_QUERY_DISTANCE,
    DEFAULT_MAX_UPLOAD_BYTES,
    ServiceLimits,
    load_token,
    reachable_from_elsewhere,
    serve,
)
from .common import (
    given_options,
    non_negative_int,
    path_option,
    positive_int,
    run_command,
    warn,
)

PROG = "search.py"

EXIT_MATCH = 0
EXIT_NO_MATCH = 1
EXIT_ERROR = 2
# --evaluate prints its table and at most this many missed copies and other matches; all of them
# are in the --report files and the --html page (17,281 lines would bury the table).
LISTED_MISSES = 10

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
        " a distance in bits (the query's undecided bits not counted), nearest first.",
        epilog="Output: one match per line, 'distance<TAB>path'; with several queries each line"
        " starts with the query, as grep does with several files. Exit status, as grep: 0 when a"
        " match was found, 1 when none, 2 on an error.",
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
                        " every pair in a group is within --max-distance (no chains)")
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


def say(line: str) -> None:
    """A line on stderr about the store (an entry skipped), not about a query."""
    warn(PROG, line)


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
            return run_checker(args)
        if args.groups:
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


def say_lacking_features(store: Store, also: str = "") -> None:
    """One line when an unfinished index.py --features left images without features (answered
    by their hash alone, unverified): silent, that looked like a store that answers nothing."""
    _, line = lacking_features(store, also)
    if line is not None:
        say(line)


def match_label(match: Match) -> str:
    distance = "-" if match.distance is None else str(match.distance)
    if match.verified is None:
        return f"distance {distance}"
    if match.inliers is None:  # no features stored for it yet: found by the hash alone
        return f"d {distance}, unverified"
    return f"d {distance}, {match.inliers} inliers"


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


def check_store(store_path: str, max_distance: int, max_query_distance: int | None = None) -> int:
    """The bits of the store's hashes. A distance beyond them would match everything: refused,
    --max-distance and --max-query-distance (the largest ?max_distance of --serve) alike.
    A store whose dataset folder is gone (moved with it) is said once: it answered the old
    paths, silently, and --groups said "run index.py" for every file (a review).

    Only the recipe is read here: the open that does the work checks the store's pages."""
    with Store.open_for_reading(store_path, report=say, quick_check=False) as store:
        bits = store.recipe.bits
        if gone := store.dataset_gone():
            say(gone)
    for option, distance in (("--max-distance", max_distance),
                             ("--max-query-distance", max_query_distance)):
        if distance is not None and distance > bits:
            raise NeardupError(f"{option} {distance} is more than the {bits} bits of"
                               f" {store_path}'s hashes ({store.recipe.describe()})")
    return bits


def draw_montage(path: str, title: str, rows: list[Row], *, what: str, nothing: str,
                 rest_in: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Write a contact sheet, say what it leaves out; with nothing to draw, a line instead."""
    if not rows:
        warn(PROG, f"{path}: not written: {nothing}")
        return
    try:
        sheet = contact_sheet(rows, title, what=what, rest_in=rest_in, max_pixels=max_pixels)
        sheet.save(path)
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise NeardupError(f"{path}: cannot write the contact sheet ({reason})") from error
    cut = f" ({'; '.join(sheet.notes)})" if sheet.notes else ""
    warn(PROG, f"wrote {path}{cut}")


def save_page(path: str, page: str) -> None:
    try:
        write_page(path, page)
    except OSError as error:
        raise NeardupError(f"{path}: cannot write the page ({error.strerror})") from error
    warn(PROG, f"wrote {path}")


def run_groups(args: argparse.Namespace) -> int:
    """--groups: sets of images in which every pair is a match (no chains)."""
    opened = Store.open_for_reading(args.shelve, report=say)
    if problem := groups_distance_problem(args.max_distance, opened.recipe.bits):
        opened.close()
        raise NeardupError(problem)
    with ImageStore(opened) as store:
        # On a store with local features every pair in a group is a verified match (api.py).
        groups = store.groups(args.max_distance,
                              include_low_information=args.include_low_information,
                              progress=True, warn=say)
        root, recipe = store.dataset, store.recipe.describe()
        verified = store.has_features
        # Files changed since they were indexed are shown, never offered for deletion, and said
        # in every output: people script the clean-up from the text and JSON too.
        changed = changed_since_indexed(opened, groups, args.max_pixels)
    # Every file is gone with the dataset folder: said once already (check_store), not per file.
    for relpath in sorted(changed) if os.path.isdir(root) else ():
        say(f"{display_path(root, relpath) or relpath}: changed or gone since it was indexed;"
            f" run {command('index.py')} before deleting anything from its group")
    if args.json:
        print(json.dumps([{"images": [display_path(root, relpath) for relpath in group.relpaths],
                           "relpaths": list(group.relpaths), "distances": list(group.distances),
                           "max_distance": group.max_distance,
                           "distinct_hashes": group.distinct_hashes,
                           "changed": [relpath for relpath in group.relpaths
                                       if relpath in changed],
                           **({"verified": True, "inliers": list(group.inliers or ()),
                               "fewest_inliers": group.fewest_inliers} if verified else {})}
                          for group in groups], indent=2))
    else:
        for number, group in enumerate(groups, start=1):
            rule = (f"every pair a verified match (the weakest with {group.fewest_inliers}"
                    " inliers), hashes within" if verified else "every pair within")
            print(f"# group {number}: {len(group.relpaths)} images, {group.distinct_hashes}"
                  f" distinct hash{'es' if group.distinct_hashes > 1 else ''}, {rule}"
                  f" {counted(group.max_distance, 'bit')}")
            inliers = group.inliers or (None,) * len(group.relpaths)
            for relpath, distance, count in zip(group.relpaths, group.distances, inliers,
                                                strict=True):
                shown = "-" if distance is None else distance
                # On a store with features, as -q prints: distance, inliers (- for the first).
                middle = f"{'-' if count is None else count}\t" if verified else ""
                print(f"{shown}\t{middle}{printable(display_path(root, relpath) or relpath)}")
            print()
    if args.montage:
        rule = ("every pair a verified match" if verified
                else f"every pair within {counted(args.max_distance, 'bit')}")
        draw_montage(args.montage, f"near-duplicate groups, {rule}, largest first; under each"
                     " image, what the --html page's button keeps and marks",
                     [group_row(group, changed, args.max_pixels) for group in groups],
                     what="groups", nothing=f"no group of near-duplicates within"
                     f" {counted(args.max_distance, 'bit')}", rest_in=args.html or "--html PAGE",
                     max_pixels=args.max_pixels)
    if args.html:
        save_page(args.html, groups_page(
            [[Item(relpath, full, distance_caption(position, distance, count),
                   changed=relpath in changed)
              for position, (relpath, full, distance, count)
              in enumerate(zip(group.relpaths, group.paths, group.distances,
                               group.inliers or (None,) * len(group.relpaths), strict=True))]
             for group in groups],
            store=args.shelve, dataset=root, recipe=recipe, max_distance=args.max_distance,
            max_pixels=args.max_pixels, verified=verified,
            fewest_inliers=[group.fewest_inliers for group in groups] if verified else None,
            pair_inliers=[group.pair_inliers for group in groups] if verified else None))
    return EXIT_MATCH if groups else EXIT_NO_MATCH


def changed_since_indexed(store: Store, groups: list[DuplicateGroup],
                          max_pixels: int = DEFAULT_MAX_PIXELS) -> set[str]:
    """The grouped images whose file is no longer what was indexed (FileState.still_indexed: a
    replaced or rewritten file), or missing."""
    states = store.file_states()
    changed = set()
    for group in groups:
        for relpath, path in zip(group.relpaths, group.paths, strict=True):
            state = states.get(relpath)
            try:
                now = os.stat(path)
            except OSError:
                changed.add(relpath)
                continue
            if state is None or not state.still_indexed(path, now, store.recipe, max_pixels):
                changed.add(relpath)
    return changed


def distance_caption(position: int, distance: int | None, inliers: int | None = None) -> str:
    if position == 0:
        return "first"
    caption = "matched" if distance is None else f"distance {distance}"
    return caption if inliers is None else f"{caption}, {inliers} inliers"


def group_row(group: DuplicateGroup, changed: set[str] | frozenset[str] = frozenset(),
              max_pixels: int = DEFAULT_MAX_PIXELS) -> Row:
    """A group's row of the contact sheet, saying what the groups page keeps and marks
    (`changed`: the relpaths changed since they were indexed, never kept)."""
    tiles = [Tile(full, distance_caption(position, distance, count), relpath)
             for position, (relpath, full, distance, count)
             in enumerate(zip(group.relpaths, group.paths, group.distances,
                              group.inliers or (None,) * len(group.relpaths), strict=True))]

    def keeping(facts: list[Facts | None]) -> Choice:
        return choose_in_group(group.paths, group.relpaths, facts, changed=[
            position for position, relpath in enumerate(group.relpaths) if relpath in changed],
            pairs=group.pair_inliers, max_pixels=max_pixels)

    return Row(tiles[0], tiles[1:], keeping)


def run_evaluation(args: argparse.Namespace) -> int:
    """--evaluate: score each store against the manifest; several stores are compared."""
    if args.max_distance > MAX_THRESHOLD:
        raise NeardupError(f"--max-distance {args.max_distance}: --evaluate scores the thresholds"
                           f" 0 to {MAX_THRESHOLD}")
    for path in args.shelve:
        check_store(path, args.max_distance)
    evaluations = []
    for path in args.shelve:
        with Store.open_for_reading(path, report=say) as store, store.snapshot():
            verified = None
            if store.has_features():
                verified = VerifiedSearch.for_store(store, HashIndex.from_store(store))
                say_lacking_features(store, "--evaluate's verified columns count none of them; ")
            evaluations.append(evaluate_manifest(
                store, args.evaluate, mirror=args.mirror,
                include_low_information=args.include_low_information, verified=verified,
                max_distance=args.max_distance))
        # Said whatever the output: a store that lacks part of the haystack (files index.py
        # failed, folders never indexed) misses other matches, and its precision looks better.
        if lacking := missing_haystack(evaluations[-1]):
            warn(PROG, f"{path}: {lacking}")
        # A store older than the dataset (gather.py --force, not indexed again) scores the
        # pictures it indexed, not those in the manifest now.
        if changed := manifest_changed(evaluations[-1]):
            warn(PROG, f"{path}: {changed}")
    if args.json:
        print(json.dumps([evaluation.as_dict() for evaluation in evaluations], indent=2))
    else:
        # On a store with features the page shows the verified answers too, as the report does.
        where = "the --report files" if args.report else (
            "the --html page" if args.html else "--report DIR or --html PAGE")
        print("\n\n".join(format_evaluation(e, args.max_distance, listed=LISTED_MISSES,
                                             listed_elsewhere=where)
                          + (f"\n\n{format_verified(e, LISTED_MISSES, where)}"
                             if e.verified_at is not None else "")
                          for e in evaluations))
        if len(evaluations) > 1:
            print("\nrecall at each store's recommended threshold (precision >= 0.999), or else at"
                  " its most precise one:")
            print(comparison_table(evaluations))
    if args.report:
        for evaluation in evaluations:
            stem = report_stem(evaluation.store)
            try:
                written_files = write_report(evaluation, args.report, stem)
            except OSError as error:
                raise NeardupError(f"{error.filename or args.report}: cannot write the report"
                                   f" ({error.strerror or error})") from error
            for written in written_files:
                warn(PROG, f"wrote {written}")
            draw_montage(os.path.join(args.report, f"{stem}-misses.png"),
                         f"{evaluation.recipe}: copies missed and other matches at"
                         f" --max-distance {args.max_distance}, worst first",
                         evaluation_rows(evaluation, args.max_distance),
                         what="queries with a miss or another match",
                         nothing=f"every copy found and nothing else at --max-distance"
                         f" {args.max_distance}",
                         # On a store with features the page shows the verified answers.
                         rest_in=f"{stem}.html" if evaluation.verified_at is None
                         else f"{stem}.json")
            if evaluation.verified_at is not None:
                draw_montage(os.path.join(args.report, f"{stem}-verified.png"),
                             f"{evaluation.recipe}: verified search, copies missed and other"
                             " matches, worst first", verified_rows(evaluation),
                             what="queries with a miss or another match",
                             nothing="every copy verified and nothing else",
                             rest_in=f"{stem}.html")
            save_page(os.path.join(args.report, f"{stem}.html"),
                      evaluation_page(evaluation, args.max_distance))
    if args.html:
        save_page(args.html, evaluation_page(evaluations[0], args.max_distance))
    return EXIT_MATCH


def evaluation_rows(evaluation: Evaluation, max_distance: int) -> list[Row]:
    """The worst first: queries with the most missed copies, then those with other matches."""
    root = evaluation.dataset_root
    rows = []
    for group in evaluation.groups:
        missed = [Tile(full, f"missed: {c.kind} d={'-' if c.distance is None else c.distance}",
                       c.path)
                  for c in group.copies
                  if (c.distance is None or c.distance > max_distance)
                  and (full := resolve_stored_path(root, c.path))]
        others = [Tile(full, f"other d={d}", p) for p, d in sorted(group.others.items(),
                                                                    key=lambda item: item[1])
                  if d <= max_distance and (full := resolve_stored_path(root, p))]
        if missed or others:
            original = resolve_stored_path(root, group.original) or group.original
            rows.append((len(missed) + len(others),
                         Row(Tile(original, f"query {group.group}", group.original),
                             missed + others)))
    rows.sort(key=lambda item: -item[0])
    return [row for _, row in rows]


def verified_rows(evaluation: Evaluation) -> list[Row]:
    """Copies the verified search missed and other images it returned, per query, worst first."""
    root = evaluation.dataset_root
    rows = []
    for group in evaluation.groups:
        copies = {copy.path for copy in group.copies}
        missed = [Tile(full, f"missed: {c.kind}", c.path) for c in group.copies
                  if c.path not in group.verified and (full := resolve_stored_path(root, c.path))]
        others = [Tile(full, f"other ({how})", path) for path, how in sorted(group.verified.items())
                  if path not in copies and (full := resolve_stored_path(root, path))]
        if missed or others:
            original = resolve_stored_path(root, group.original) or group.original
            rows.append((len(missed) + len(others),
                         Row(Tile(original, f"query {group.group}", group.original),
                             missed + others)))
    rows.sort(key=lambda item: -item[0])
    return [row for _, row in rows]


def run_checker(args: argparse.Namespace) -> int:
    """--stdin and --serve: the store loaded once, many queries answered."""
    if args.stdin:  # started with either closed (`<&-`, `>&-`), Python has None for it
        for stream, name in ((sys.stdin, "standard input"), (sys.stdout, "standard output")):
            if stream is None:
                raise NeardupError(f"--stdin needs {name}, and it is closed")
    limits = None
    if args.serve:
        host, port = parse_address(args.serve)
        limits = ServiceLimits(
            max_upload_bytes=args.max_upload_bytes, max_query_distance=args.max_query_distance,
            header_timeout=args.header_timeout, body_timeout=args.body_timeout,
            keep_alive_timeout=args.keep_alive_timeout, send_timeout=args.send_timeout,
            max_connections=args.max_connections,
            max_in_flight=args.max_in_flight,
            token=load_token(args.token_file, lambda line: warn(PROG, line))
            if args.token_file else None)
        if limits.token is None and reachable_from_elsewhere(host):
            warn(PROG, f"--serve {args.serve}: reachable from other machines without"
                       " --token-file: anyone who reaches the port can query the store")
    with Checker(args.shelve, max_distance=args.max_distance, max_pixels=args.max_pixels,
                 include_low_information=args.include_low_information, mirror=args.mirror,
                 max_matches=args.max_matches, full_paths=not args.serve or args.full_paths,
                 decode_budget=DecodeBudget(args.decode_memory_mb * 2**20) if args.serve else None,
                 decoders=InWorkers(args.file_timeout),
                 warn=lambda line: warn(PROG, line)) as checker:
        if args.serve:
            try:
                serve(checker, host, port, limits, ready=lambda line: warn(PROG, line))
            except OSError as error:
                raise NeardupError(f"cannot serve on {args.serve}: {error.strerror}") from error
            return 0
        return answer_lines(checker, sys.stdin.buffer, sys.stdout, null=args.null)


def answer_lines(checker: Checker, lines: BinaryIO, out: TextIO, null: bool = False) -> int:
    """--stdin: one JSON line per path read, flushed; 2 at the end if any query failed.

    Lines are bytes, so a file name need not be UTF-8 (it is decoded as the OS does, and its
    record escapes what is not ASCII); a CRLF line ending is not part of the name. Every line
    gets its answer, an empty one included. `null` (--null): paths end with a NUL byte instead,
    the one byte no file name holds, so names with line breaks can be asked for too.
    """
    failed = False
    unit = "path" if null else "line"
    records = bounded_records(lines, MAX_LINE_BYTES) if null else bounded_lines(lines,
                                                                                 MAX_LINE_BYTES)
    for line in records:
        if line is None:  # skipped unkept: a 100 MB line took 732 MB and was answered twice over
            record = {"query": "", "error": f"a {unit} of more than {MAX_LINE_BYTES:,} bytes: no"
                                            " file name is that long"}
            failed = True
            out.write(json.dumps(record) + "\n")
            out.flush()
            continue
        if null:
            line = line[:-1] if line.endswith(b"\0") else line
        else:
            # Exactly one line ending comes off: any other byte, spaces and CRs included, can be
            # part of a file name.
            line = line[:-1] if line.endswith(b"\n") else line
            line = line[:-1] if line.endswith(b"\r") else line
        path = os.fsdecode(line)
        if path:
            record = checker.check_file(path)
        else:  # still answered: a client pairs answers with its lines by their order
            record = {"query": "", "error": f"empty {unit}: no file named"}
        failed = failed or "error" in record
        out.write(json.dumps(record) + "\n")
        out.flush()
    return EXIT_ERROR if failed else EXIT_MATCH


# Longer than any path the system takes (PATH_MAX is 4,096 bytes on Linux).
MAX_LINE_BYTES = 64 * 1024


def bounded_lines(stream: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """The stream's lines, each with its line ending; None for a line longer than `limit`,
    which is read to its end without being kept."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):  # the rest of the long line, dropped
            line = stream.readline(limit)
        yield None


def bounded_records(stream: BinaryIO, limit: int, end: bytes = b"\0") -> Iterator[bytes | None]:
    """bounded_lines() for records ending with `end` (a NUL byte): each as soon as its end has
    arrived (a client waits for its answer before sending the next path), None for one longer
    than `limit`, dropped as it streams in."""
    pending = b""
    too_long = False
    while chunk := _read_available(stream):
        pending += chunk
        while (cut := pending.find(end)) >= 0:
            record, pending = pending[:cut + 1], pending[cut + 1:]
            yield None if too_long or len(record) > limit + 1 else record
            too_long = False
        if len(pending) > limit:
            too_long, pending = True, b""
    if pending or too_long:  # the last path without its NUL
        yield None if too_long else pending


def _read_available(stream: BinaryIO) -> bytes:
    """What the stream holds now (at least one byte, or b"" at its end), without waiting for
    more: read(n) of a pipe would wait for all n bytes."""
    read1 = getattr(stream, "read1", None)
    return read1(64 * 1024) if read1 is not None else stream.read(1)


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    # "/" in the host: a URL (`http://127.0.0.1:8080`), which failed as an unknown host name.
    if not host or not port.isdigit() or int(port) > 65535 or not host.isascii() \
            or not host.isprintable() or "/" in host:
        raise NeardupError(f"--serve {text}: expected HOST:PORT, such as 127.0.0.1:8080")
    return host.strip("[]"), int(port)


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
        # ASCII escapes keep the JSON valid even for file names that are not UTF-8.
        json.dump(records, sys.stdout, indent=2)
        print()
    sys.stdout.flush()
    if errors:
        return EXIT_ERROR
    return EXIT_MATCH if found else EXIT_NO_MATCH


if __name__ == "__main__":  # python -m neardup.cli.search
    raise SystemExit(main())
