"""Scoring a store against a gather.py manifest: are the copies of each sample found, and what else is.

Each sampled original is hashed from disk and searched; its group's copies are the true matches.
Anything else within the distance is an "other match": a false match, or a true duplicate that the
source data set itself contains (CALTECH-101 has some, e.g. the same photo in Faces and Faces_easy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .dataset import read_manifest
from .errors import DatasetError
from .hashing import hash_file
from .search import HashIndex, find_matches
from .store import Store


@dataclass(slots=True)
class GroupResult:
    group: str
    original: str  # store path of the sampled original
    copies: list[str]
    found: dict[str, int] = field(default_factory=dict)  # copy -> distance
    others: dict[str, int] = field(default_factory=dict)  # other match -> distance

    @property
    def missed(self) -> list[str]:
        return [copy for copy in self.copies if copy not in self.found]


@dataclass(slots=True)
class Evaluation:
    max_distance: int
    groups: list[GroupResult]

    @property
    def copies(self) -> int:
        return sum(len(group.copies) for group in self.groups)

    @property
    def found(self) -> int:
        return sum(len(group.found) for group in self.groups)

    @property
    def recall(self) -> float:
        return self.found / self.copies if self.copies else 1.0

    @property
    def other_matches(self) -> int:
        return sum(len(group.others) for group in self.groups)

    def as_dict(self) -> dict[str, object]:
        return {
            "max_distance": self.max_distance,
            "copies": self.copies,
            "found": self.found,
            "recall": self.recall,
            "other_matches": self.other_matches,
            "groups": [
                {"group": g.group, "original": g.original, "copies": g.copies, "found": g.found,
                 "missed": g.missed, "others": g.others}
                for g in self.groups
            ],
        }


def evaluate_manifest(store: Store, manifest_path: str, max_distance: int) -> Evaluation:
    manifest_dir = os.path.dirname(os.path.abspath(manifest_path))
    rows = read_manifest(manifest_path)

    def store_path(file: str) -> str:
        relative = os.path.relpath(os.path.join(manifest_dir, *file.split("/")), store.dataset_root)
        if relative.startswith(".." + os.sep) or relative == "..":
            raise DatasetError(
                f"{manifest_path}: {file} is not under the store's dataset {store.dataset_root}"
            )
        return relative.replace(os.sep, "/")

    groups: dict[str, GroupResult] = {}
    for row in rows:
        if row.role == "original":
            groups.setdefault(row.group, GroupResult(row.group, "", []))
            groups[row.group].original = store_path(row.file)
    for row in rows:
        if row.role == "copy":
            if row.group not in groups:
                raise DatasetError(f"{manifest_path}: copy {row.file} has no original")
            groups[row.group].copies.append(store_path(row.file))
    if not groups:
        raise DatasetError(f"{manifest_path}: names no sampled originals")

    index = HashIndex.from_store(store) if max_distance > 0 else None
    for group in groups.values():
        query = hash_file(os.path.join(store.dataset_root, *group.original.split("/")), store.recipe)
        members = set(group.copies)
        for match in find_matches(store, query, max_distance, index):
            if match.path == group.original:
                continue
            if match.path in members:
                group.found[match.path] = match.distance
            else:
                group.others[match.path] = match.distance
    return Evaluation(max_distance, sorted(groups.values(), key=lambda group: group.group))


def format_evaluation(evaluation: Evaluation) -> str:
    lines = [f"{'group':<6} {'copies':>6} {'found':>6} {'others':>6}  original"]
    for group in evaluation.groups:
        lines.append(f"{group.group:<6} {len(group.copies):>6} {len(group.found):>6}"
                     f" {len(group.others):>6}  {group.original}")
    lines.append(
        f"recall {evaluation.found}/{evaluation.copies} = {evaluation.recall:.1%} at max distance"
        f" {evaluation.max_distance}; {evaluation.other_matches} other matches"
    )
    for group in evaluation.groups:
        for missed in group.missed:
            lines.append(f"  missed  {group.group} {missed}")
        for path, distance in sorted(group.others.items(), key=lambda item: (item[1], item[0])):
            lines.append(f"  other   {group.group} {group.original} ~ {path} (distance {distance})")
    return "\n".join(lines)
