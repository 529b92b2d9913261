"""search.py --evaluate: each store scored against a gather.py manifest, as search answers; with
--report, --html and several stores compared."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from ..core.results import json_text
from ..core.search import HashIndex, resolve_stored_path
from ..core.store import Store
from ..errors import NeardupError
from ..evaluation.html import evaluation_page
from ..evaluation.montage import Row, Tile
from ..evaluation.report import report_stem, write_report
from ..evaluation.scoring import (
    MAX_THRESHOLD,
    Evaluation,
    GroupResult,
    comparison_table,
    evaluate_manifest,
    format_evaluation,
    format_verified,
    manifest_changed,
    missing_haystack,
)
from ..features.search import VerifiedSearch
from .common import warn
from .search_common import (
    EXIT_MATCH,
    PROG,
    check_store,
    draw_montage,
    save_page,
    say,
    say_lacking_features,
)

# --evaluate prints its table and at most this many missed copies and other matches; all of them
# are in the --report files and the --html page (17,281 lines would bury the table).
LISTED_MISSES = 10


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
        print(json_text([evaluation.as_dict() for evaluation in evaluations], indent=2))
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
    def misses_and_others(group: GroupResult, root: str) -> list[Tile]:
        missed = [Tile(full, f"missed: {c.kind} d={'-' if c.distance is None else c.distance}",
                       c.path)
                  for c in group.copies
                  if (c.distance is None or c.distance > max_distance)
                  and (full := resolve_stored_path(root, c.path))]
        others = [Tile(full, f"other d={d}", p) for p, d in sorted(group.others.items(),
                                                                    key=lambda item: item[1])
                  if d <= max_distance and (full := resolve_stored_path(root, p))]
        return missed + others

    return _worst_first(evaluation, misses_and_others)


def verified_rows(evaluation: Evaluation) -> list[Row]:
    """Copies the verified search missed and other images it returned, per query, worst first."""
    def misses_and_others(group: GroupResult, root: str) -> list[Tile]:
        copies = {copy.path for copy in group.copies}
        missed = [Tile(full, f"missed: {c.kind}", c.path) for c in group.copies
                  if c.path not in group.verified and (full := resolve_stored_path(root, c.path))]
        others = [Tile(full, f"other ({how})", path) for path, how in sorted(group.verified.items())
                  if path not in copies and (full := resolve_stored_path(root, path))]
        return missed + others

    return _worst_first(evaluation, misses_and_others)


def _worst_first(evaluation: Evaluation,
                 misses_and_others: Callable[[GroupResult, str], list[Tile]]) -> list[Row]:
    """A row per query with tiles (its original, then what misses_and_others gives), the rows
    with the most tiles first."""
    root = evaluation.dataset_root
    rows = []
    for group in evaluation.groups:
        if tiles := misses_and_others(group, root):
            original = resolve_stored_path(root, group.original) or group.original
            rows.append((len(tiles), Row(Tile(original, f"query {group.group}", group.original),
                                         tiles)))
    rows.sort(key=lambda item: -item[0])
    return [row for _, row in rows]
