"""The answer to one query, as search.py prints it and the checker sends it.

One JSON shape everywhere (`--json`, `--stdin`, HTTP):
    {"query": ..., "hash": ..., "low_information": ..., "matches": [{"path", "relpath", "distance",
     "hash"}, ...]}   or   {"query": ..., "error": ...}
On a store with local features each match also has "found_by", "inliers" and "verified", and
"distance" is null for a match the hash did not find. Where the query's mirror image was looked
at too (a store with features, --mirror), each match says whether it is the mirror image
("mirrored"); "distance" is then the nearer of the two hashes'.
"""

from __future__ import annotations

import base64
import json
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
    # The query's undecided bits as a mask of hash_hex's width (Hash.undecided_hex): without it a
    # distance shown could exceed the two hashes' Hamming distance with nothing saying why.
    undecided_hex: str | None = None


def counted(count: int, one: str, many: str = "") -> str:
    """'1 bit', '2 bits', '1 query', '3 queries': the count and its noun, in the singular for one
    (`many` for a plural other than one + "s")."""
    return f"{count} {one if count == 1 else many or one + 's'}"


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
        if match.mirrored is not None:  # the query's mirror image looked at (features, --mirror)
            record["mirrored"] = match.mirrored
        shown.append(record)
    return {"query": result.query, "hash": result.hash_hex, "undecided": result.undecided_hex,
            "low_information": result.low_information, "matches": shown}


def json_text(value: Any, **options: Any) -> str:
    """json.dumps of a record, valid for strict parsers whatever the file names in it.

    Python holds the bytes of a name that are not UTF-8 as lone surrogates, which json.dumps
    writes as escapes such as \\udcff: a review found strict parsers (serde_json) refusing such
    a line, and others replace them, so a client could not name the file back. Such a name is
    written with U+FFFD in place of those bytes, and its exact bytes, base64, beside it under the
    same key with `_base64` (a list of names gets a list, null for the names that are UTF-8).
    Records without such a name (the escapes are the only way one shows) cost one search of the
    text."""
    text = json.dumps(value, **options)
    if "\\ud" not in text:
        return text
    return json.dumps(_strict(value), **options)


def _exact_bytes(text: str) -> str | None:
    """The name's bytes as base64 when it is not UTF-8; None when it is."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape" if _escaped_only(text) else "replace")
        return base64.b64encode(raw).decode("ascii")


def _escaped_only(text: str) -> bool:
    """Whether every surrogate in `text` stands for a byte (surrogateescape: U+DC80 to U+DCFF)."""
    return all(not "\ud800" <= char <= "\udfff" or "\udc80" <= char <= "\udcff" for char in text)


def _readable(text: str) -> str:
    raw = text.encode("utf-8", "surrogateescape" if _escaped_only(text) else "replace")
    return raw.decode("utf-8", "replace")


def _strict(value: Any) -> Any:
    if isinstance(value, dict):
        strict: dict[Any, Any] = {}
        for key, item in value.items():
            strict[key] = _strict(item)
            if isinstance(item, str):
                exact = _exact_bytes(item)
                if exact is not None:
                    strict[f"{key}_base64"] = exact
            elif isinstance(item, list | tuple):
                names = [_exact_bytes(name) if isinstance(name, str) else None for name in item]
                if any(name is not None for name in names):
                    strict[f"{key}_base64"] = names
        return strict
    if isinstance(value, list | tuple):
        return [_strict(item) for item in value]
    if isinstance(value, str):
        return _readable(value)
    return value
