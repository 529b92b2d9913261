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
import re
import unicodedata
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


# Control characters escaped and backslashes doubled, so that a name stays on one line and no two
# names print alike (a backslash followed by n prints as two backslashes and an n; a newline as
# one backslash and an n). Characters a terminal does not show as themselves too: those that
# reorder text (bidirectional overrides, embeddings, isolates, marks: "B\u202egnp.exe.png" would
# show as another name), and every other format character and space but the plain one (a
# review: "zw\u200bsp.jpg", a zero-width space in it, printed as "zwsp.jpg"; a no-break space
# as a space), code points no character is assigned to, and the letters and symbols drawn as
# nothing (Hangul fillers, a blank braille cell). But for the invisible marks that real writing
# uses, each kept only where it can take part in it and escaped anywhere else
# ("caf\u00e9\u200d.jpg" would print as "caf\u00e9.jpg"): ZWJ and ZWNJ between two characters
# that are neither ASCII nor Latin letters (Persian, Devanagari, emoji sequences); the tag
# characters of a flag (Scotland's) after a black flag; variation selectors, the combining
# grapheme joiner and Mongolian and Khmer format marks after such a character (an emoji's text
# or picture form, an ideograph's variant), and a variation selector in a keycap ("1\ufe0f\u20e3");
# the Hangul jamo fillers beside another jamo. Reviews found them escaped inside valid names,
# then kept after any letter, then a variation selector kept after ASCII.
_CONTROLS = [*range(32), *range(0x7F, 0xA0)]
_INVISIBLE_CATEGORIES = frozenset(("Cf", "Zs", "Zl", "Zp", "Cn"))
_DRAWN_AS_NOTHING = frozenset((0x2800, 0x3164, 0xFFA0))  # braille blank, Hangul fillers
_JOINERS = re.compile("[\u200c\u200d]")
_MARKS = re.compile("[\u034f\u17b4\u17b5\u180b-\u180d\u180f\ufe00-\ufe0f\U000e0100-\U000e01ef]")
_JAMO_FILLERS = re.compile("[\u115f\u1160]")
_CONTEXTUAL = re.compile("[\u200c\u200d\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f"
                         "\ufe00-\ufe0f\U000e0020-\U000e007f\U000e0100-\U000e01ef]")
_BLACK_FLAG = "\U0001f3f4"
_KEYCAP = "\u20e3"


def _is_tag(char: str) -> bool:
    return 0xE0020 <= ord(char) <= 0xE007F


def _joinable(char: str) -> bool:
    """Whether a ZWJ or ZWNJ beside this character can be part of how a word is written."""
    code = ord(char)
    return (code > 0x7F and not 0xD800 <= code <= 0xDFFF
            and not unicodedata.name(char, "LATIN").startswith("LATIN"))


def _is_jamo(char: str) -> bool:
    code = ord(char)
    return (0x1100 <= code <= 0x11FF or 0xA960 <= code <= 0xA97F
            or 0xD7B0 <= code <= 0xD7FF) and not _JAMO_FILLERS.fullmatch(char)


def _escaped(code: int) -> str:
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


class _Escapes(dict[int, str]):
    """A str.translate table: the escapes given, _escaped() for any other invisible character
    (_INVISIBLE_CATEGORIES, _DRAWN_AS_NOTHING) but the contextual marks, and any other character
    as it is (bytes that are not UTF-8, surrogates here, included). Only printable ASCII is kept
    in the table: a hostile client's names could otherwise fill it with every code point."""

    def __missing__(self, code: int) -> str:
        char = chr(code)
        if _CONTEXTUAL.fullmatch(char):
            return char  # _escape_all() decides
        if code in _DRAWN_AS_NOTHING or unicodedata.category(char) in _INVISIBLE_CATEGORIES:
            return _escaped(code)
        return char


def _escape_all(translated: str) -> str:
    """The translated text with the contextual marks escaped where they take part in nothing
    (see above), in one pass: a hostile name of thousands of tag characters costs no more than
    its length."""
    if not _CONTEXTUAL.search(translated):
        return translated
    out = []
    after_flag = False  # within a run of tag characters that follows a black flag
    last = len(translated) - 1
    for at, char in enumerate(translated):
        before = translated[at - 1] if at > 0 else ""
        after = translated[at + 1] if at < last else ""
        if _is_tag(char):
            after_flag = after_flag or before == _BLACK_FLAG
            kept = after_flag
        else:
            after_flag = False
            if _JOINERS.fullmatch(char):
                kept = bool(before and after) and _joinable(before) and _joinable(after)
            elif _MARKS.fullmatch(char):
                kept = bool(before) and (_joinable(before) or (
                    before in "#*0123456789" and after == _KEYCAP and "\ufe00" <= char <= "\ufe0f"))
            elif _JAMO_FILLERS.fullmatch(char):
                kept = any(side and _is_jamo(side) for side in (before, after))
            else:
                kept = True
        out.append(char if kept else _escaped(ord(char)))
    return "".join(out)


_PRINTABLE_ASCII = {code: chr(code) for code in range(0x20, 0x7F)}
_NAME_ESCAPES = _Escapes(_PRINTABLE_ASCII | {code: f"\\x{code:02x}" for code in _CONTROLS} | {
    ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r", ord("\\"): "\\\\"})
_LINE_ESCAPES = _Escapes(_PRINTABLE_ASCII | {code: f"\\x{code:02x}" for code in _CONTROLS} | {
    ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})


def counted(count: int, one: str, many: str = "") -> str:
    """'1 bit', '2 bits', '1 query', '3 queries': the count and its noun, in the singular for one
    (`many` for a plural other than one + "s")."""
    return f"{count} {one if count == 1 else many or one + 's'}"


def one_line(message: str) -> str:
    """A diagnostic on one line whatever the names in it: line breaks, other control characters
    and direction overrides escaped (a backslash is left as it is: names shown_path escaped
    already keep their form)."""
    return _escape_all(message.translate(_LINE_ESCAPES))


def printable(path: str) -> str:
    """A name on one line, for plain output: escaped as _NAME_ESCAPES says; any other character
    (bytes that are not UTF-8 included) as it is, so a terminal or a pipe gets the name's bytes."""
    return _escape_all(path.translate(_NAME_ESCAPES))


def shown_path(path: str) -> str:
    """A name as a page shows it: printable(), then bytes that are not UTF-8 (which reach us as
    surrogates) as \\xNN and any other character that is not printable as \\uNNNN (the joiners
    printable() keeps, kept)."""
    # A lone surrogate outside U+DC80-DCFF is no byte the file system gave (a name that came as
    # text, from JSON): its UTF-8 form, shown escaped like any other, rather than an exception.
    text = printable(path).encode("utf-8", "surrogateescape" if all(
        0xDC80 <= ord(char) <= 0xDCFF for char in path if 0xD800 <= ord(char) <= 0xDFFF)
        else "surrogatepass").decode("utf-8", "backslashreplace")
    return "".join(char if char.isprintable() or _CONTEXTUAL.fullmatch(char)
                   else _escaped(ord(char)) for char in text)


def can_be_listed(path: str) -> bool:
    """Whether a name can go in a list of paths, one per line, as it is: not when it holds a line
    break or another control character (it would read as two paths, or another file's), an
    invisible character, or bytes that are not UTF-8 (a page could only show a stand-in)."""
    if not path.isprintable():
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
