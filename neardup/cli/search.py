"""search.py: list the stored images that are near-duplicates of one or more query images."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..core.discovery import Skipped, walk_images
from ..core.grouping import near_duplicate_groups
from ..core.hashing import (
    DEFAULT_MAX_PIXELS,
    Hash,
    hash_file,
    hash_file_and_mirror,
    is_low_information,
)
from ..core.results import QueryResult, display_path, to_record
from ..core.search import (
    DEFAULT_MAX_DISTANCE,
    HashIndex,
    find_matches_many,
    merge_matches,
    resolve_stored_path,
)
from ..core.store import Store
from ..errors import ImageError, NeardupError
from ..evaluation.montage import Row, Tile, contact_sheet
from ..evaluation.report import write_report
from ..evaluation.scoring import Evaluation, comparison_table, evaluate_manifest, format_evaluation
from ..service.checker import Checker
from ..service.server import DEFAULT_MAX_UPLOAD_BYTES, serve
from .common import non_negative_int, positive_int, run_command, warn

PROG = "search.py"

EXIT_MATCH = 0
EXIT_NO_MATCH = 1
EXIT_ERROR = 2
MONTAGE_ROWS = 24  # a contact sheet stays a page a person can look at


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Hash query images with the store's recipe and list the stored images within"
        " a Hamming distance, nearest first.",
        epilog="Output: one match per line, 'distance<TAB>path'; with several queries each line"
        " starts with the query, as grep does with several files. Exit status, as grep: 0 when a"
        " match was found, 1 when none, 2 on an error.",
    )
    parser.add_argument("-s", "--shelve", required=True, action="append",
                        help="store built by index.py (with --evaluate, repeat it to compare"
                        " stores built with different hashes on the same dataset)")
    wanted = parser.add_mutually_exclusive_group(required=True)
    wanted.add_argument("-q", "--query", action="append",
                        help="query image, or a folder of them; may be repeated")
    wanted.add_argument("--evaluate", metavar="MANIFEST",
                        help="score the store against a gather.py manifest.csv: search every"
                        " sampled original, report the copies found and every other match")
    wanted.add_argument("--groups", action="store_true",
                        help="list every group of near-duplicates in the store (images linked"
                        " within --max-distance), largest first")
    wanted.add_argument("--stdin", action="store_true",
                        help="read one image path per line, answer each with one JSON line"
                        " (flushed); images index.py commits meanwhile are found too")
    wanted.add_argument("--serve", metavar="HOST:PORT",
                        help="answer POST /search (image bytes as the body, optional"
                        " ?max_distance=N) and GET /health over HTTP until SIGTERM")
    parser.add_argument("--mirror", action="store_true",
                        help="also match mirror images: hash the flipped query too (the store"
                        " is unchanged)")
    parser.add_argument("--montage", metavar="PNG",
                        help="also draw a contact sheet: each query (or group) beside its matches"
                        " with their distances")
    parser.add_argument("--report", metavar="DIR",
                        help="with --evaluate: write evaluation JSON, CSV and a PNG chart of"
                        " recall and precision against the threshold into DIR")
    parser.add_argument("--max-upload-bytes", type=positive_int, default=DEFAULT_MAX_UPLOAD_BYTES,
                        help="with --serve: larger bodies are refused with 413")
    parser.add_argument("-m", "--max-distance", type=non_negative_int, default=DEFAULT_MAX_DISTANCE,
                        help=f"largest Hamming distance reported (default {DEFAULT_MAX_DISTANCE};"
                        " 0 is the exact bucket only)")
    parser.add_argument("--json", action="store_true", help="print results as one JSON array")
    parser.add_argument("--include-low-information", action="store_true",
                        help="also match blank, single-colour and smooth images, whose hashes"
                        " are (nearly) all zeros or ones and so match each other regardless")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help="refuse query images larger than this many pixels")
    return parser


def expand_queries(queries: list[str]) -> tuple[list[str], list[QueryResult]]:
    """Query files in order (folders walked recursively) and the entries that could not be read."""
    paths: list[str] = []
    problems: list[QueryResult] = []
    for query in queries:
        if not os.path.isdir(query):
            paths.append(query)
            continue
        for entry in walk_images(query):
            if isinstance(entry, Skipped):
                problems.append(QueryResult(entry.path, error=entry.reason))
            else:
                paths.append(entry.path)
    return paths, problems


def say(line: str) -> None:
    """A line on stderr about the store (an entry skipped), not about a query."""
    warn(PROG, line)


def printable(path: str) -> str:
    """A path on one line: control characters escaped, so a name with a newline stays one match."""
    return path.translate(_CONTROL_ESCAPES)


_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in range(32)} | {
    ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.evaluate:
            return run_evaluation(args)
        if len(args.shelve) > 1:
            raise NeardupError("several --shelve are only for --evaluate")
        args.shelve = args.shelve[0]
        if args.stdin or args.serve:
            return run_checker(args)
        if args.groups:
            return run_groups(args)
        with Store.open_for_reading(args.shelve, report=say) as store, store.snapshot():
            paths, results = expand_queries(args.query)
            index = HashIndex.from_store(store) if args.max_distance > 0 else None
            hashed: list[tuple[QueryResult, Hash]] = []
            mirrored: list[Hash] = []
            for path in paths:
                result = QueryResult(path)
                results.append(result)
                try:
                    if args.mirror:
                        query_hash, mirror_hash = hash_file_and_mirror(path, store.recipe,
                                                                       args.max_pixels)
                        mirrored.append(mirror_hash)
                    else:
                        query_hash = hash_file(path, store.recipe, args.max_pixels)
                except ImageError as error:
                    result.error = error.reason
                    continue
                result.hash_hex = query_hash.hex()
                result.low_information = is_low_information(query_hash)
                if result.low_information and not args.include_low_information:
                    warn(PROG, f"{path}: low-information image (blank, single-colour or"
                         " smooth): not matched; --include-low-information matches it anyway")
                hashed.append((result, query_hash))
            # Every query is hashed first, then all are searched against the index loaded once.
            answers = find_matches_many(store, [query for _, query in hashed], args.max_distance,
                                        index, include_low_information=args.include_low_information)
            if args.mirror:
                flipped = find_matches_many(store, mirrored, args.max_distance, index,
                                            include_low_information=args.include_low_information)
                answers = [merge_matches(plain, other)
                           for plain, other in zip(answers, flipped, strict=True)]
            for (result, _), matches in zip(hashed, answers, strict=True):
                result.matches = matches
            if args.montage:
                draw_montage(args.montage, "queries and their matches", [
                    Row(Tile(r.query, "query"), [
                        Tile(full, f"distance {m.distance}") for m in r.matches
                        if (full := resolve_stored_path(store.dataset_root, m.path))])
                    for r in results if r.error is None])
            return emit(results, store.dataset_root, as_json=args.json,
                        several=len(results) > 1)

    return run_command(PROG, body)


def draw_montage(path: str, title: str, rows: list[Row]) -> None:
    try:
        contact_sheet(rows[:MONTAGE_ROWS], title).save(path)
    except (OSError, ValueError) as error:
        raise NeardupError(f"{path}: cannot write the contact sheet ({error})") from error
    warn(PROG, f"wrote {path}")


def run_groups(args: argparse.Namespace) -> int:
    """--groups: every connected group of near-duplicates in the store."""
    with Store.open_for_reading(args.shelve, report=say) as store, store.snapshot():
        groups = near_duplicate_groups(store, args.max_distance,
                                       include_low_information=args.include_low_information)
        root = store.dataset_root
    # Each member as (stored path, file on disk); entries that would leave the dataset are dropped.
    members = [[(relpath, full) for relpath in group.paths
                if (full := resolve_stored_path(root, relpath))] for group in groups]
    if args.json:
        print(json.dumps([{"images": [display_path(root, relpath) for relpath, _ in pairs],
                           "relpaths": [relpath for relpath, _ in pairs],
                           "distinct_hashes": group.hashes}
                          for group, pairs in zip(groups, members, strict=True)], indent=2))
    else:
        for number, (group, pairs) in enumerate(zip(groups, members, strict=True), start=1):
            print(f"# group {number}: {len(pairs)} images, {group.hashes} distinct"
                  f" hash{'es' if group.hashes > 1 else ''}")
            for relpath, _ in pairs:
                print(printable(display_path(root, relpath) or relpath))
            print()
    if args.montage:
        draw_montage(args.montage, f"near-duplicate groups within {args.max_distance} bits",
                     [Row(Tile(pairs[0][1], "first"), [Tile(full, "") for _, full in pairs[1:]])
                      for pairs in members if pairs])
    return EXIT_MATCH if groups else EXIT_NO_MATCH


def run_evaluation(args: argparse.Namespace) -> int:
    """--evaluate: score each store against the manifest; several stores are compared."""
    evaluations = []
    for path in args.shelve:
        with Store.open_for_reading(path, report=say) as store, store.snapshot():
            evaluations.append(evaluate_manifest(store, args.evaluate, mirror=args.mirror))
    if args.json:
        print(json.dumps([evaluation.as_dict() for evaluation in evaluations], indent=2))
    else:
        print("\n\n".join(format_evaluation(e, args.max_distance) for e in evaluations))
        if len(evaluations) > 1:
            print("\nrecall at each recipe's recommended threshold (precision >= 0.999), or else at"
                  " its most precise one:")
            print(comparison_table(evaluations))
    if args.report:
        for evaluation in evaluations:
            stem = "evaluation-" + os.path.basename(evaluation.store).replace(".", "-")
            for written in write_report(evaluation, args.report, stem):
                warn(PROG, f"wrote {written}")
            draw_montage(os.path.join(args.report, f"{stem}-misses.png"),
                         f"{evaluation.recipe}: copies missed and other matches at"
                         f" --max-distance {args.max_distance}",
                         evaluation_rows(evaluation, args.max_distance))
    return EXIT_MATCH


def evaluation_rows(evaluation: Evaluation, max_distance: int) -> list[Row]:
    """The worst first: queries with the most missed copies, then those with other matches."""
    root = evaluation.dataset_root
    rows = []
    for group in evaluation.groups:
        missed = [Tile(full, f"missed: {c.kind} d={c.distance}") for c in group.copies
                  if (c.distance is None or c.distance > max_distance)
                  and (full := resolve_stored_path(root, c.path))]
        others = [Tile(full, f"other d={d}") for p, d in sorted(group.others.items(),
                                                                 key=lambda item: item[1])
                  if d <= max_distance and (full := resolve_stored_path(root, p))]
        if missed or others:
            original = resolve_stored_path(root, group.original) or group.original
            rows.append((len(missed) + len(others), Row(Tile(original, group.group),
                                                        missed + others)))
    rows.sort(key=lambda item: -item[0])
    return [row for _, row in rows]


def run_checker(args: argparse.Namespace) -> int:
    """--stdin and --serve: the store loaded once, many queries answered."""
    with Checker(args.shelve, max_distance=args.max_distance, max_pixels=args.max_pixels,
                 include_low_information=args.include_low_information,
                 warn=lambda line: warn(PROG, line)) as checker:
        if args.serve:
            host, port = parse_address(args.serve)
            try:
                serve(checker, host, port, max_upload_bytes=args.max_upload_bytes,
                      ready=lambda line: warn(PROG, line))
            except OSError as error:
                raise NeardupError(f"cannot serve on {args.serve}: {error.strerror}") from error
            return 0
        # File names need not be UTF-8: their bytes are kept (surrogateescape) and found as they are.
        reconfigure = getattr(sys.stdin, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="surrogateescape")
        for line in sys.stdin:
            path = line.rstrip("\n")
            if path.strip():
                sys.stdout.write(json.dumps(checker.check_file(path)) + "\n")
                sys.stdout.flush()
        return 0


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
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
                print(f"{prefix}{item['distance']}\t{printable(item['path'])}")
    if as_json:
        # ASCII escapes keep the JSON valid even for file names that are not UTF-8.
        json.dump(records, sys.stdout, indent=2)
        print()
    sys.stdout.flush()
    if errors:
        return EXIT_ERROR
    return EXIT_MATCH if found else EXIT_NO_MATCH
