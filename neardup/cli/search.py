"""search.py: list the stored images that are near-duplicates of one or more query images."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field

from ..discovery import Skipped, walk_images
from ..errors import ImageError
from ..evaluation import evaluate_manifest, format_evaluation
from ..hashing import DEFAULT_MAX_PIXELS, Hash, hash_file, is_low_information
from ..search import (
    DEFAULT_MAX_DISTANCE,
    HashIndex,
    Match,
    find_matches_many,
    resolve_stored_path,
)
from ..store import Store
from .common import non_negative_int, positive_int, run_command, warn

PROG = "search.py"

EXIT_MATCH = 0
EXIT_NO_MATCH = 1
EXIT_ERROR = 2


@dataclass
class QueryResult:
    query: str
    hash_hex: str | None = None
    low_information: bool = False
    matches: list[Match] = field(default_factory=list)
    error: str | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Hash query images with the store's recipe and list the stored images within"
        " a Hamming distance, nearest first.",
        epilog="Output: one match per line, 'distance<TAB>path'; with several queries each line"
        " starts with the query, as grep does with several files. Exit status, as grep: 0 when a"
        " match was found, 1 when none, 2 on an error.",
    )
    parser.add_argument("-s", "--shelve", required=True, help="store built by index.py")
    wanted = parser.add_mutually_exclusive_group(required=True)
    wanted.add_argument("-q", "--query", action="append",
                        help="query image, or a folder of them; may be repeated")
    wanted.add_argument("--evaluate", metavar="MANIFEST",
                        help="score the store against a gather.py manifest.csv: search every"
                        " sampled original, report the copies found and every other match")
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


def printable(path: str) -> str:
    """A path on one line: control characters escaped, so a name with a newline stays one match."""
    return path.translate(_CONTROL_ESCAPES)


_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in range(32)} | {
    ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"}


def display_path(dataset_root: str, relpath: str) -> str | None:
    """Where a match lives, relative to the working folder when it is below it."""
    full = resolve_stored_path(dataset_root, relpath)
    if full is None:
        return None
    here = os.getcwd()
    return os.path.relpath(full, here) if full.startswith(here + os.sep) else full


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        with Store.open_for_reading(args.shelve) as store, store.snapshot():
            if args.evaluate:
                evaluation = evaluate_manifest(store, args.evaluate, args.max_distance)
                if args.json:
                    print(json.dumps(evaluation.as_dict(), indent=2))
                else:
                    print(format_evaluation(evaluation))
                return EXIT_MATCH
            paths, results = expand_queries(args.query)
            index = HashIndex.from_store(store) if args.max_distance > 0 else None
            hashed: list[tuple[QueryResult, Hash]] = []
            for path in paths:
                result = QueryResult(path)
                results.append(result)
                try:
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
            for (result, _), matches in zip(hashed, answers, strict=True):
                result.matches = matches
            return emit(results, store.dataset_root, as_json=args.json,
                        several=len(results) > 1)

    return run_command(PROG, body)


def emit(results: list[QueryResult], dataset_root: str, *, as_json: bool, several: bool) -> int:
    records = []
    found = errors = False
    for result in results:
        if result.error is not None:
            errors = True
            warn(PROG, f"{result.query}: {result.error}")
            records.append({"query": result.query, "error": result.error})
            continue
        shown = []
        for match in result.matches:
            path = display_path(dataset_root, match.path)
            if path is None:
                warn(PROG, f"store entry {match.path!r} points outside the dataset; not shown")
                continue
            shown.append({"path": path, "relpath": match.path, "distance": match.distance,
                          "hash": match.hash_hex})
        found = found or bool(shown)
        records.append({"query": result.query, "hash": result.hash_hex,
                        "low_information": result.low_information, "matches": shown})
        if not as_json:
            prefix = f"{printable(result.query)}\t" if several else ""
            for item in shown:
                print(f"{prefix}{item['distance']}\t{printable(item['path'])}")
    if as_json:
        # ASCII escapes keep the JSON valid even for file names that are not UTF-8.
        json.dump(records, sys.stdout, indent=2)
        print()
    sys.stdout.flush()
    if errors:
        return EXIT_ERROR
    return EXIT_MATCH if found else EXIT_NO_MATCH
