"""Scoring a store against a gather.py manifest: recall per edit, precision, the threshold to use.

Each sampled original is a query, searched in the store exactly as search.py searches it, at the
largest threshold. Its copies are the true matches: a copy counts as found at a threshold only if
the search returned it within that distance, so a copy missing from the store (never indexed,
removed, unreadable, deleted from disk) is missed, as a user would see it, and said to be
missing. Every other stored image the search returns is a false match (or a true duplicate the
source data set itself contains: CALTECH-101 has some, e.g. the same photo in Faces and
Faces_easy); a haystack image the store lacks cannot be returned, so precision counts only the
other matches among those it holds, and the evaluation says how many it lacks. Then, for every
threshold from 0 to MAX_THRESHOLD: recall per edit kind and overall, false matches, precision;
and the recommendation: the smallest threshold reaching the best recall that keeps precision at
or above TARGET_PRECISION.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.hashing import Hash, Recipe, hash_file, hash_file_and_mirror, is_low_information
from ..core.names import printable, shown_path
from ..core.results import counted
from ..core.search import DEFAULT_MAX_DISTANCE, HashIndex, find_matches_many
from ..core.store import FileState, Store
from ..errors import DatasetError, ImageError, command
from ..features.extract import read_frame
from ..features.search import VerifiedSearch
from ..sources.dataset import read_manifest
from . import MAX_THRESHOLD

TARGET_PRECISION = 0.999


@dataclass(slots=True)
class CopyOutcome:
    path: str  # store path
    kind: str  # the edit's first word: resize, crop, ...
    edit: str  # the whole manifest description
    distance: int | None  # as the store's search returned it; None: not returned at all
    # Why it could not be returned: "not in the store", or "not on disk or in the store" (deleted
    # and indexed since); None: it is in the store.
    missing: str | None = None
    # In the store, but the file is no longer the one indexed (another size, mtime or inode), or
    # gone: the store answers for what it was.
    changed: bool = False


@dataclass(slots=True)
class GroupResult:
    group: str
    original: str  # store path of the sampled original
    copies: list[CopyOutcome] = field(default_factory=list)
    others: dict[str, int] = field(default_factory=dict)  # other stored image -> distance
    low_information: bool = False
    # Stores with local features: each verified answer's path -> how it was found ("hash",
    # "features", "hash+features"), at --max-distance.
    verified: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ThresholdRow:
    threshold: int
    recall: dict[str, float]  # per edit kind, and "all"
    found_by_kind: dict[str, int]  # copies found per edit kind, and "all"
    false_matches: int  # other images returned, of no edit kind: the threshold's, over all
    precision: float

    @property
    def found(self) -> int:
        return self.found_by_kind["all"]


@dataclass(slots=True)
class Evaluation:
    store: str
    dataset_root: str
    recipe: str
    mirror: bool
    groups: list[GroupResult]
    rows: list[ThresholdRow]
    recommended: int | None  # None: no threshold keeps precision at the target
    verified_at: int | None = None  # the --max-distance of the verified search; None: no features
    # The manifest's haystack images (originals and the rest, not copies); of them, those not in
    # the store (never indexed, failed, removed), and of those, the ones not on disk either.
    haystack: int = 0
    haystack_not_stored: int = 0
    haystack_not_on_disk: int = 0
    # The manifest's files the store holds that changed or are gone since it indexed them
    # (FileState.same_file), all of them and the copies among them.
    manifest_files: int = 0
    files_changed: int = 0
    copies_changed: int = 0

    @property
    def kinds(self) -> list[str]:
        return sorted({copy.kind for group in self.groups for copy in group.copies})

    @property
    def copies(self) -> int:
        return sum(len(group.copies) for group in self.groups)

    @property
    def copies_by_kind(self) -> dict[str, int]:
        """The manifest's copies per edit kind, and "all"."""
        totals: dict[str, int] = {}
        for group in self.groups:
            for copy in group.copies:
                totals[copy.kind] = totals.get(copy.kind, 0) + 1
        return {**dict(sorted(totals.items())), "all": sum(totals.values())}

    def row(self, threshold: int) -> ThresholdRow:
        return self.rows[min(threshold, MAX_THRESHOLD)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store, "recipe": self.recipe, "mirror": self.mirror,
            "copies": self.copies, "copies_by_kind": self.copies_by_kind,
            "queries": len(self.groups),
            "haystack_images": self.haystack, "haystack_not_in_store": self.haystack_not_stored,
            "haystack_not_on_disk": self.haystack_not_on_disk,
            "files_changed_since_indexed": self.files_changed,
            "copies_changed_since_indexed": self.copies_changed,
            "target_precision": TARGET_PRECISION, "recommended_threshold": self.recommended,
            "thresholds": [
                {"threshold": r.threshold, "recall": r.recall, "found": r.found,
                 "found_by_kind": r.found_by_kind, "false_matches": r.false_matches,
                 "precision": r.precision} for r in self.rows],
            "groups": [
                {"group": g.group, "original": g.original, "low_information": g.low_information,
                 "copies": [{"path": c.path, "edit": c.edit, "distance": c.distance,
                             "missing": c.missing} for c in g.copies],
                 "others": g.others}
                | ({"verified": g.verified} if self.verified_at is not None else {})
                for g in self.groups],
        } | ({"verified": {
            "max_distance": self.verified_at,
            "columns": [{"name": name, "recall": recall, "other_matches": others}
                        for name, recall, others in verified_table(self)],
            "found_by_kind": {name: row.found_by_kind for name, row in verified_scores(self)}}}
             if self.verified_at is not None else {})


def evaluate_manifest(
    store: Store, manifest_path: str, *, mirror: bool = False,
    include_low_information: bool = False, verified: VerifiedSearch | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
) -> Evaluation:
    manifest_dir = os.path.dirname(os.path.abspath(manifest_path))
    rows = read_manifest(manifest_path)

    def relative(file: str) -> str:  # a manifest's file as the store names it ("../" outside)
        return os.path.relpath(os.path.join(manifest_dir, *file.split("/")),
                               store.dataset_root).replace(os.sep, "/")

    def store_path(file: str) -> str:
        path = relative(file)
        if _outside(path):
            # The likeliest cause said first: another dataset's manifest (a review found the
            # file-by-file wording indirect).
            raise DatasetError(
                f"{manifest_path}: describes the files of {shown_path(manifest_dir)}, and the store"
                f" indexes {shown_path(store.dataset_root)} ({shown_path(file)} is not under it):"
                " give the manifest of the folder the store indexes")
        return path

    def on_disk(path: str) -> str:
        return os.path.join(store.dataset_root, *path.split("/"))

    groups: dict[str, GroupResult] = {}
    original_file: dict[str, str] = {}  # group -> its original as the manifest names it
    group_of_original: dict[str, str] = {}  # an original's store path -> its group
    for row in rows:
        if row.role == "original":
            # A second original silently took the group (a review: a copy of the first was
            # scored a miss against the second); one file the original of two groups was
            # counted as two queries.
            if row.group in groups:
                raise DatasetError(f"{manifest_path}: group {row.group} has two originals,"
                                   f" {original_file[row.group]} and {row.file}")
            path = store_path(row.file)
            if path in group_of_original:
                raise DatasetError(f"{manifest_path}: {row.file} is the original of two groups,"
                                   f" {group_of_original[path]} and {row.group}")
            groups[row.group] = GroupResult(row.group, path)
            original_file[row.group] = row.file
            group_of_original[path] = row.group
    if not groups:
        raise DatasetError(f"{manifest_path}: names no sampled originals")

    queries: dict[str, list[Hash]] = {}
    for group in groups.values():
        try:
            if mirror:
                looks = list(hash_file_and_mirror(on_disk(group.original), store.recipe))
            else:
                looks = [hash_file(on_disk(group.original), store.recipe)]
        except ImageError as error:
            raise DatasetError(f"{manifest_path}: original {error}") from error
        queries[group.group] = looks
        group.low_information = is_low_information(looks[0])

    listed: set[str] = set()
    for row in rows:
        if row.role != "copy":
            continue
        if row.group not in groups:
            raise DatasetError(f"{manifest_path}: copy {row.file} has no original")
        # Compared as the store names them: "./haystack/a.jpg" is "haystack/a.jpg" (a review).
        if row.source and relative(row.source) != groups[row.group].original:
            raise DatasetError(
                f"{manifest_path}: copy {row.file} names {row.source} as its source, but the"
                f" original of its group {row.group} is {original_file[row.group]}")
        path = store_path(row.file)
        if path in listed:  # counted twice, it was found (or missed) twice
            raise DatasetError(f"{manifest_path}: copy {row.file} is listed twice")
        if path in group_of_original:  # its own original, or another group's: found by itself
            raise DatasetError(f"{manifest_path}: copy {row.file} is also the original of group"
                               f" {group_of_original[path]}")
        listed.add(path)
        kind = row.edit.split()[0] if row.edit else "copy"
        groups[row.group].copies.append(CopyOutcome(path, kind, row.edit, None))
    if not listed:
        raise DatasetError(f"{manifest_path}: names no copies, so there is no recall to measure")

    # What search returns, at the largest threshold; every smaller one is a filter of it.
    index = HashIndex.from_store(store)
    ordered = sorted(groups.values(), key=lambda group: group.group)
    returned: dict[str, dict[str, int]] = {group.group: {} for group in ordered}
    for look in range(2 if mirror else 1):
        answers = find_matches_many(store, [queries[g.group][look] for g in ordered],
                                    MAX_THRESHOLD, index,
                                    include_low_information=include_low_information)
        for group, matches in zip(ordered, answers, strict=True):
            found = returned[group.group]
            for match in matches:
                found[match.path] = min(found.get(match.path, match.distance), match.distance)
    states = store.file_states()  # every indexed file: what the store holds, and as what
    for group in ordered:
        found = returned[group.group]
        for copy in group.copies:
            copy.distance = found.get(copy.path)
            if copy.distance is None and copy.path not in states:
                # Still a miss (the user asked for it and search cannot return it), said as such:
                # a copy deleted from the dataset is no fault of the hash.
                copy.missing = ("not in the store" if os.path.lexists(on_disk(copy.path))
                                else "not on disk or in the store")
        members = {group.original} | {copy.path for copy in group.copies}
        group.others = {path: distance for path, distance in found.items()
                        if path not in members}

    if verified is not None:
        # The verified search exactly as search.py runs it, each candidate labelled by its source.
        for group in ordered:
            try:
                frame = read_frame(on_disk(group.original))
            except ImageError as error:
                raise DatasetError(f"{manifest_path}: original {error}") from error
            for match in verified.search(queries[group.group], frame, max_distance,
                                         include_low_information=include_low_information):
                # Not the unverified answers of an unfinished upgrade (said on stderr): these
                # columns are what verification finds.
                if match.path != group.original and match.verified:
                    group.verified[match.path] = match.found_by or ""

    evaluation = Evaluation(store.path, store.dataset_root, store.recipe.describe(), mirror,
                            ordered, [], None, max_distance if verified is not None else None)
    # The other matches a store lacking part of the haystack cannot return are not counted: its
    # precision is higher than the whole haystack's, so how much it lacks is counted here.
    haystack = [relative(row.file) for row in rows if row.role != "copy"]
    lacking = [path for path in haystack if path not in states]
    evaluation.haystack = len(haystack)
    evaluation.haystack_not_stored = len(lacking)
    # A path outside the store's dataset (../...) is not looked for on disk: it cannot be indexed.
    evaluation.haystack_not_on_disk = sum(
        _outside(path) or not os.path.lexists(on_disk(path)) for path in lacking)
    _count_changed(evaluation, rows, states, relative, on_disk, store.recipe)
    totals = evaluation.copies_by_kind
    evaluation.rows = [_row(ordered, threshold, totals) for threshold in range(MAX_THRESHOLD + 1)]
    evaluation.recommended = recommend(evaluation.rows)
    return evaluation


# Columns of the side-by-side table: what each source alone, verified, returns, and both together.
VERIFIED_SOURCES = {"hash, verified": "hash", "features, verified": "features",
                    "both, verified": ""}


def verified_scores(evaluation: Evaluation) -> list[tuple[str, ThresholdRow]]:
    """(column, scores at --max-distance) for each verified source; the last is what search.py
    answers."""
    assert evaluation.verified_at is not None
    columns = []
    for title, source in VERIFIED_SOURCES.items():
        hits: dict[str, int] = {}
        others = 0
        for group in evaluation.groups:
            chosen = {path for path, how in group.verified.items() if source in how}
            copies = {copy.path for copy in group.copies}
            for copy in group.copies:
                hits[copy.kind] = hits.get(copy.kind, 0) + (copy.path in chosen)
            others += len(chosen - copies)
        columns.append((title, _scored(evaluation.verified_at, evaluation.copies_by_kind, hits,
                                       others)))
    return columns


def verified_table(evaluation: Evaluation) -> list[tuple[str, dict[str, float], int]]:
    """(column, recall per kind and "all", other matches) for the hash alone (unverified, at
    --max-distance: a hash-only store's answer) and for each verified source."""
    assert evaluation.verified_at is not None
    plain = evaluation.row(evaluation.verified_at)
    return [(f"hash <= {evaluation.verified_at} bits", plain.recall, plain.false_matches),
            *((title, row.recall, row.false_matches)
              for title, row in verified_scores(evaluation))]


def format_verified(evaluation: Evaluation, listed: int | None = None,
                    listed_elsewhere: str = "") -> str:
    """The side-by-side table, then the copies the verified search missed and the other images
    it returned: the first `listed` of them, the rest counted and said to be in
    `listed_elsewhere` (all of them when `listed` is None)."""
    columns = verified_table(evaluation)
    kinds = [*evaluation.kinds, "all"]
    lines = [f"{evaluation.store}: recall per edit kind, verified matches (local features),"
             f" {_sizes(evaluation)}"]
    lines.append(f"{'edit':<12}" + "".join(f"{title:>20}" for title, _, _ in columns))
    for kind in kinds:
        lines.append(f"{printable(kind):<12}" + "".join(f"{recall.get(kind, 0.0):>20.1%}"
                                             for _, recall, _ in columns))
    lines.append(f"{'other':<12}" + "".join(f"{others:>20}" for _, _, others in columns))
    misses = []
    for group in evaluation.groups:
        copies = {copy.path for copy in group.copies}
        for copy in group.copies:
            if copy.path not in group.verified:
                why = "" if copy.missing is None else f"; {copy.missing}"
                misses.append(f"  missed  {printable(group.group)} {printable(copy.path)}"
                              f" ({printable(copy.edit)}{why})")
        for path, how in sorted(group.verified.items()):
            if path not in copies:
                misses.append(f"  other   {printable(group.group)} {printable(group.original)}"
                              f" ~ {printable(path)} ({how})")
    lines += _listed(misses, listed, listed_elsewhere)
    return "\n".join(lines)


def _outside(path: str) -> bool:
    """Whether a path relative to the store's dataset leads out of it."""
    return path == ".." or path.startswith("../")


def _count_changed(evaluation: Evaluation, rows: list[Any], states: dict[str, FileState],
                   relative: Callable[[str], str], on_disk: Callable[[str], str],
                   recipe: Recipe) -> None:
    """Count the manifest's files the store holds (`states`) whose file changed or is gone since
    it was indexed, and mark such copies. Over a store older than the dataset (gather.py --force
    with another seed, not indexed again) every score was 0 %, silently (a review)."""
    copies = {copy.path: copy for group in evaluation.groups for copy in group.copies}
    evaluation.manifest_files = len(rows)
    for row in rows:
        relpath = relative(row.file)
        state = states.get(relpath)
        if state is None:
            continue  # not in the store: counted by missing_copies and missing_haystack
        try:
            now = os.stat(on_disk(relpath))
        except OSError:
            now = None
        if now is not None and state.still_indexed(on_disk(relpath), now, recipe):
            continue
        evaluation.files_changed += 1
        if relpath in copies and row.role == "copy":
            copies[relpath].changed = True
            evaluation.copies_changed += 1


def hash_miss(copy: CopyOutcome) -> str:
    """Why the hash search did not return a copy within its distance, as the listings say it."""
    if copy.missing is not None:
        return copy.missing
    if copy.changed:
        return "changed on disk since it was indexed"
    if copy.distance is None:
        return f"not returned by search within {MAX_THRESHOLD} bits"
    return f"distance {copy.distance}"


def missing_copies(evaluation: Evaluation) -> str | None:
    """One line counting the manifest's copies that search cannot return (None: there are none)."""
    missing = [copy.missing for group in evaluation.groups for copy in group.copies
               if copy.missing is not None]
    if not missing:
        return None
    gone = sum(reason != "not in the store" for reason in missing)
    counted = f"{len(missing)} cop{'y' if len(missing) == 1 else 'ies'} in the manifest" + (
        " is" if len(missing) == 1 else " are")
    if gone == len(missing):
        return f"{counted} not on disk or in the store: counted as missed"
    either = f" ({gone} of them not on disk either)" if gone else ""
    return f"{counted} not in the store{either}: counted as missed"


def missing_haystack(evaluation: Evaluation) -> str | None:
    """One line counting the manifest's haystack images the store does not hold, whose other
    matches precision cannot count (None: it holds them all)."""
    lacking = evaluation.haystack_not_stored
    if not lacking:
        return None
    held = evaluation.haystack - lacking
    either = (f" ({evaluation.haystack_not_on_disk} of them not on disk either)"
              if evaluation.haystack_not_on_disk else "")
    return (f"{lacking} of the manifest's {evaluation.haystack} haystack images"
            f" {'is' if lacking == 1 else 'are'} not in the store{either}: precision counts only"
            f" the other matches among the {held} it holds")


def manifest_changed(evaluation: Evaluation) -> str | None:
    """One line counting the manifest's files that changed or are gone since the store indexed
    them, which it scores as it holds them (None: none did)."""
    changed = evaluation.files_changed
    if not changed:
        return None
    copies = evaluation.copies_changed
    others = changed - copies
    parts = ", ".join(part for part in (
        f"{copies} cop{'y' if copies == 1 else 'ies'}" if copies else "",
        f"{others} haystack image{'' if others == 1 else 's'}" if others else "") if part)
    one = changed == 1
    return (f"{changed} of the manifest's {evaluation.manifest_files} files"
            f" {'changed or is' if one else 'changed or are'} gone since the store indexed"
            f" {'it' if one else 'them'} ({parts}): scored as the store holds"
            f" {'it, not as it is' if one else 'them, not as they are'} now; run"
            f" {command('index.py')}, then evaluate again")


def _sizes(evaluation: Evaluation) -> str:
    """'500 queries, 6500 copies', in the singular for one."""
    return (f"{counted(len(evaluation.groups), 'query', 'queries')},"
            f" {counted(evaluation.copies, 'copy', 'copies')}")


def _matches(count: int, kind: str) -> str:
    return f"{count} {kind} match" + ("" if count == 1 else "es")


def _listed(misses: list[str], listed: int | None, listed_elsewhere: str) -> list[str]:
    """The first `listed` lines, and one counting the rest and saying where they are."""
    if listed is None or len(misses) <= listed:
        return misses
    return [*misses[:listed], f"  ... and {len(misses) - listed} more missed copies and other"
            f" matches, all listed in {listed_elsewhere}"]


def _row(groups: list[GroupResult], threshold: int, totals: dict[str, int]) -> ThresholdRow:
    hits: dict[str, int] = {}
    for group in groups:
        for copy in group.copies:
            if copy.distance is not None and copy.distance <= threshold:
                hits[copy.kind] = hits.get(copy.kind, 0) + 1
    false = sum(1 for g in groups for d in g.others.values() if d <= threshold)
    return _scored(threshold, totals, hits, false)


def _scored(threshold: int, totals: dict[str, int], hits: dict[str, int],
            false: int) -> ThresholdRow:
    """Recall and copies found per kind and "all" (totals holds "all"), and precision."""
    found = {kind: hits.get(kind, 0) for kind in totals if kind != "all"}
    found["all"] = sum(found.values())
    recall = {kind: found[kind] / total if total else 1.0 for kind, total in totals.items()}
    precision = found["all"] / (found["all"] + false) if found["all"] + false else 1.0
    return ThresholdRow(threshold, recall, found, false, precision)


def recommend(rows: list[ThresholdRow]) -> int | None:
    """The smallest threshold reaching the best recall among those at the target precision."""
    eligible = [row for row in rows if row.precision >= TARGET_PRECISION]
    if not eligible:
        return None
    best = max(row.recall["all"] for row in eligible)
    return min(row.threshold for row in eligible if row.recall["all"] == best)


def best_precision(rows: list[ThresholdRow]) -> ThresholdRow:
    """The row with the highest precision; of equals, the one with the best recall."""
    return max(rows, key=lambda row: (row.precision, row.recall["all"]))


def format_evaluation(
    evaluation: Evaluation, max_distance: int, *, listed: int | None = None,
    listed_elsewhere: str = "the report",
) -> str:
    """The table, the recommendation, and the missed copies and other matches at max_distance:
    all of them, or the first `listed` and a count of the rest (found in `listed_elsewhere`)."""
    kinds = evaluation.kinds
    lines = [f"{evaluation.store}: {evaluation.recipe}{', mirror' if evaluation.mirror else ''};"
             f" {_sizes(evaluation)}"]
    if evaluation.verified_at is not None:
        # A review read the hash's threshold and its missed copies, printed first, as what a
        # store with features answers, which the verified table below them contradicted.
        lines.append("the hash alone, by threshold (what a store without features answers;"
                     " search.py's verified answers are in the table after this one):")
    header = f"{'t':>3} " + " ".join(f"{printable(kind)[:8]:>8}" for kind in kinds)
    lines.append(f"{header} {'all':>6} {'false':>6} {'precision':>9}")
    for row in evaluation.rows:
        cells = " ".join(f"{row.recall[kind]:>8.1%}" for kind in kinds)
        lines.append(f"{row.threshold:>3} {cells} {row.recall['all']:>6.1%}"
                     f" {row.false_matches:>6} {row.precision:>9.4f}")
    if evaluation.recommended is None:
        best = best_precision(evaluation.rows)
        lines.append(f"no threshold keeps precision at {TARGET_PRECISION}; the highest is"
                     f" {best.precision:.4f} at threshold {best.threshold} (recall"
                     f" {best.recall['all']:.1%}, {_matches(best.false_matches, 'false')})")
    else:
        chosen = evaluation.row(evaluation.recommended)
        lines.append(f"recommended threshold: {evaluation.recommended} (recall"
                     f" {chosen.recall['all']:.1%} at precision {chosen.precision:.4f};"
                     f" target {TARGET_PRECISION})")
    at = evaluation.row(max_distance)
    lines.append(f"at --max-distance {max_distance}: {at.found}/{evaluation.copies} copies found,"
                 f" {_matches(at.false_matches, 'other')}")
    if missing := missing_copies(evaluation):
        lines.append(missing)
    misses = []
    for group in evaluation.groups:
        for copy in group.copies:
            if copy.distance is None or copy.distance > max_distance:
                misses.append(f"  missed  {printable(group.group)} {printable(copy.path)}"
                              f" ({printable(copy.edit)}; {hash_miss(copy)})")
        for path, distance in sorted(group.others.items(), key=lambda item: (item[1], item[0])):
            if distance <= max_distance:
                misses.append(f"  other   {printable(group.group)} {printable(group.original)}"
                              f" ~ {printable(path)} (distance {distance})")
    lines += _listed(misses, listed, listed_elsewhere)
    return "\n".join(lines)


def comparison_table(evaluations: list[Evaluation]) -> str:
    """Several stores on the same manifest, each row named by its store: recall per kind at each
    one's recommended threshold, or where none reaches the target precision, at its most precise
    threshold; for a store with features, also what search.py answers (verified matches)."""
    kinds = sorted({kind for evaluation in evaluations for kind in evaluation.kinds})
    rows = []
    for evaluation in evaluations:
        label = (f"{evaluation.store}: {evaluation.recipe}"
                 + (", mirror" if evaluation.mirror else ""))
        if evaluation.recommended is None:
            row = best_precision(evaluation.rows)
            label += f" (best precision {row.precision:.4f})"
        else:
            row = evaluation.row(evaluation.recommended)
        rows.append((label, row))
        if evaluation.verified_at is not None:
            rows.append((f"{evaluation.store}: verified search (what {command('search.py')}"
                         " answers)",
                         verified_scores(evaluation)[-1][1]))
    width = max(len("store"), *(len(label) for label, _ in rows))  # columns stay aligned
    lines = [f"{'store':<{width}} {'t':>3} " + " ".join(f"{printable(k)[:8]:>8}" for k in kinds)
             + f" {'all':>6}"]
    for label, row in rows:
        cells = " ".join(f"{row.recall.get(kind, 0):>8.1%}" for kind in kinds)
        lines.append(f"{label:<{width}} {row.threshold:>3} {cells} {row.recall['all']:>6.1%}")
    return "\n".join(lines)
