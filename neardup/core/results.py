"""The answer to one query, as search.py prints it and the checker sends it.

One JSON shape everywhere (`--json`, `--stdin`, HTTP):
    {"query": ..., "hash": ..., "low_information": ..., "matches": [{"path", "relpath", "distance",
     "hash"}, ...]}   or   {"query": ..., "error": ...}
On a store with local features each match also has "found_by", "inliers" and "verified", and
"distance" is null for a match the hash did not find.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .search import Match, resolve_stored_path


@dataclass
class QueryResult:
    query: str
    hash_hex: str | None = None
    low_information: bool = False
    matches: list[Match] = field(default_factory=list)
    error: str | None = None


def display_path(dataset_root: str, relpath: str) -> str | None:
    """Where a match lives, relative to the working folder when it is below it."""
    full = resolve_stored_path(dataset_root, relpath)
    if full is None:
        return None
    here = os.getcwd()
    return os.path.relpath(full, here) if full.startswith(here + os.sep) else full


def to_record(
    result: QueryResult, dataset_root: str, warn: Callable[[str], None]
) -> dict[str, Any]:
    """The JSON-ready record; stored paths that would leave the dataset are dropped, with a warning."""
    if result.error is not None:
        return {"query": result.query, "error": result.error}
    shown = []
    for match in result.matches:
        path = display_path(dataset_root, match.path)
        if path is None:
            warn(f"store entry {match.path!r} points outside the dataset; not shown")
            continue
        record = {"path": path, "relpath": match.path, "distance": match.distance,
                  "hash": match.hash_hex}
        if match.verified is not None:  # a store with local features: how it was found, verified
            record |= {"found_by": match.found_by, "inliers": match.inliers,
                       "verified": match.verified}
        shown.append(record)
    return {"query": result.query, "hash": result.hash_hex,
            "low_information": result.low_information, "matches": shown}
