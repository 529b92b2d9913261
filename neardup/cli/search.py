"""search.py: list the stored images that are near-duplicates of one or more query images."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..checker import Checker
from ..discovery import Skipped, walk_images
from ..errors import ImageError, NeardupError
from ..evaluation import comparison_table, evaluate_manifest, format_evaluation
from ..hashing import DEFAULT_MAX_PIXELS, Hash, hash_file, is_low_information
from ..report import write_report
from ..results import QueryResult, to_record
from ..search import (
    DEFAULT_MAX_DISTANCE,
    HashIndex,
    find_matches_many,
    merge_matches,
)
from ..server import DEFAULT_MAX_UPLOAD_BYTES, serve
from ..store import Store
from .common import non_negative_int, positive_int, run_command, warn

PROG = "search.py"

EXIT_MATCH = 0
EXIT_NO_MATCH = 1
EXIT_ERROR = 2


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
    wanted.add_argument("--stdin", action="store_true",
                        help="read one image path per line, answer each with one JSON line"
                        " (flushed); images index.py commits meanwhile are found too")
    wanted.add_argument("--serve", metavar="HOST:PORT",
                        help="answer POST /search (image bytes as the body, optional"
                        " ?max_distance=N) and GET /health over HTTP until SIGTERM")
    parser.add_argument("--mirror", action="store_true",
                        help="also match mirror images: hash the flipped query too (the store"
                        " is unchanged)")
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
        with Store.open_for_reading(args.shelve) as store, store.snapshot():
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
            if args.mirror:
                mirrored = [hash_file(r.query, store.recipe, args.max_pixels, mirror=True)
                            for r, _ in hashed]
                flipped = find_matches_many(store, mirrored, args.max_distance, index,
                                            include_low_information=args.include_low_information)
                answers = [merge_matches(plain, other)
                           for plain, other in zip(answers, flipped, strict=True)]
            for (result, _), matches in zip(hashed, answers, strict=True):
                result.matches = matches
            return emit(results, store.dataset_root, as_json=args.json,
                        several=len(results) > 1)

    return run_command(PROG, body)


def run_evaluation(args: argparse.Namespace) -> int:
    """--evaluate: score each store against the manifest; several stores are compared."""
    evaluations = []
    for path in args.shelve:
        with Store.open_for_reading(path) as store, store.snapshot():
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
    return EXIT_MATCH


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
