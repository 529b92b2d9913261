"""File names as a terminal, a diagnostic line or a page shows them: on one line, and told apart.

Control characters are escaped and backslashes doubled, so that a name stays on one line and a
backslash followed by n (two backslashes and an n) never prints as a newline (one backslash and
an n). So are the characters a terminal does not show as themselves: those that reorder text
(bidirectional overrides, embeddings, isolates, marks: "B\\u202egnp.exe.png" would show as
another name), every other format character and space but the plain one (a review:
"zw\\u200bsp.jpg" printed as "zwsp.jpg"; a no-break space as a space), code points no character
is assigned to (by this Python's Unicode database: 3.11's is older than 3.13's, so it escapes
the newest emoji), the letters and symbols drawn as nothing (Hangul fillers, a blank braille
cell), and U+FFFD, which is how a terminal draws a byte that is not UTF-8 (printed as it is).

The invisible marks real writing uses are kept only where they take part in it, and escaped
anywhere else ("caf\\u00e9\\u200d.jpg" would print as "caf\\u00e9.jpg"):
- ZWJ in an emoji sequence (between two emoji, or after an emoji's picture form), ZWJ and ZWNJ
  after a virama or between letters of a script that joins them (Arabic, Persian, Syriac,
  Indic, Myanmar, Khmer, Mongolian...);
- the tag characters of a flag (Scotland's): after a black flag and ended by a cancel tag;
- U+FE0E and U+FE0F (text or emoji form) after an emoji or in a keycap ("1\\ufe0f\\u20e3"); the
  other variation selectors after an ideograph or a symbol; an ideographic variation selector
  (U+E0100-E01EF) after an ideograph; Mongolian free variation selectors after a Mongolian
  letter.
Never after another mark: a second selector or joiner in a row draws nothing more. The grapheme
joiner U+034F, Khmer's deprecated inherent vowels and the Hangul jamo fillers are always
escaped. Reviews found these marks escaped inside valid names, then kept after any letter, then
kept after any character that is neither ASCII nor Latin (a decomposed "cafe\\u0301" then
printed as "cafe\\u0301\\ufe0e").

Names written alike in different ways (composed and decomposed accents, letters of other scripts
that look the same) are not told apart: that is spelling, not an invisible character.
"""

from __future__ import annotations

import re
import unicodedata

_CONTROLS = [*range(32), *range(0x7F, 0xA0)]
_INVISIBLE_CATEGORIES = frozenset(("Cf", "Zs", "Zl", "Zp", "Cn"))
# Drawn as nothing, or as a byte that is not UTF-8 is: a blank braille cell, the Hangul fillers,
# the grapheme joiner, Khmer's inherent vowels, and U+FFFD.
_ALWAYS_ESCAPED = frozenset((0x2800, 0x3164, 0xFFA0, 0x115F, 0x1160, 0x034F, 0x17B4, 0x17B5,
                             0xFFFD))
_ZWNJ, _ZWJ = "\u200c", "\u200d"
_TEXT_FORM, _EMOJI_FORM = "\ufe0e", "\ufe0f"
_BLACK_FLAG = "\U0001f3f4"
_CANCEL_TAG = "\U000e007f"
_KEYCAP = "\u20e3"
# Every mark whose place decides whether it is kept (_escape_all).
_CONTEXTUAL = re.compile("[\u200c\u200d\u180b-\u180d\u180f\ufe00-\ufe0f"
                         "\U000e0020-\U000e007f\U000e0100-\U000e01ef]")
# Emoji that are neither symbols (So) nor modifiers (Sk) in Unicode's categories: double and
# interrobang marks, arrows, the wavy dash, the part alternation mark.
_EMOJI_OTHERS = frozenset((0x203C, 0x2049, *range(0x2194, 0x219A), 0x21A9, 0x21AA, 0x2934,
                           0x2935, 0x3030, 0x303D))
# Scripts whose letters ZWJ and ZWNJ join or keep apart: Arabic (with its supplements and
# presentation forms), Syriac, Thaana, N'Ko, the Indic scripts from Devanagari to Sinhala,
# Myanmar, Khmer, Mongolian, and the Brahmic ones of Southeast Asia and Indonesia.
_JOINING_SCRIPTS = ((0x0600, 0x07FF), (0x0860, 0x08FF), (0x0900, 0x0DFF), (0x1000, 0x109F),
                    (0x1780, 0x18AF), (0x1A00, 0x1AAF), (0x1B00, 0x1BFF), (0xA8E0, 0xA8FF),
                    (0xA980, 0xA9DF), (0xAA60, 0xAA7F), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF),
                    (0x10D00, 0x10D3F), (0x11000, 0x1107F))


def _is_tag(char: str) -> bool:
    return 0xE0020 <= ord(char) <= 0xE007F


def _is_emoji(char: str) -> bool:
    """A character that can stand in an emoji sequence (not ASCII: a keycap's base is apart)."""
    return ord(char) > 0x7F and (unicodedata.category(char) in ("So", "Sk")
                                 or ord(char) in _EMOJI_OTHERS)


def _is_ideograph(char: str) -> bool:
    return unicodedata.name(char, "").startswith(("CJK UNIFIED IDEOGRAPH",
                                                  "CJK COMPATIBILITY IDEOGRAPH"))


def _in_joining_script(char: str) -> bool:
    """A letter or mark of a script whose writing uses ZWJ and ZWNJ."""
    code = ord(char)
    return (unicodedata.category(char)[0] in "LM"
            and any(first <= code <= last for first, last in _JOINING_SCRIPTS))


def _joins(char: str, before: str, after: str) -> bool:
    """Whether this ZWJ or ZWNJ, between `before` and `after` ("" at either end), is writing."""
    if not before or not after:
        return False
    if char == _ZWJ and (_is_emoji(before) or before == _EMOJI_FORM) and _is_emoji(after):
        return True
    return ((unicodedata.combining(before) == 9 or _in_joining_script(before))
            and _in_joining_script(after))


def _selects(char: str, before: str, after: str) -> bool:
    """Whether this variation selector, after `before` ("" at the start), chooses a form."""
    if not before:
        return False
    if char in (_TEXT_FORM, _EMOJI_FORM):
        return _is_emoji(before) or (before in "#*0123456789" and after == _KEYCAP)
    if "\u180b" <= char <= "\u180f":  # Mongolian free variation selectors
        return unicodedata.name(before, "").startswith("MONGOLIAN LETTER")
    if char >= "\U000e0100":  # ideographic variation selectors
        return _is_ideograph(before)
    return _is_ideograph(before) or unicodedata.category(before) in ("Sm", "So", "Lo")


def _escaped(code: int) -> str:
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


class _Escapes(dict[int, str]):
    """A str.translate table: the escapes given, _escaped() for any other invisible character
    but the contextual marks, and any other character as it is (bytes that are not UTF-8,
    surrogates here, included). Only printable ASCII is kept in the table: a hostile client's
    names could otherwise fill it with every code point."""

    def __missing__(self, code: int) -> str:
        char = chr(code)
        if _CONTEXTUAL.fullmatch(char):
            return char  # _escape_all() decides
        if code in _ALWAYS_ESCAPED or unicodedata.category(char) in _INVISIBLE_CATEGORIES:
            return _escaped(code)
        return char


def _valid_flag_tags(text: str) -> set[int]:
    """Where the tag characters of a valid flag sequence stand: after a black flag, at least one
    tag, ended by a cancel tag."""
    kept: set[int] = set()
    at = 0
    while (at := text.find(_BLACK_FLAG, at)) >= 0:
        end = at + 1
        while end < len(text) and _is_tag(text[end]) and text[end] != _CANCEL_TAG:
            end += 1
        if end > at + 1 and end < len(text) and text[end] == _CANCEL_TAG:
            kept.update(range(at + 1, end + 1))
        at = end
    return kept


def _escape_all(translated: str) -> str:
    """The translated text with the contextual marks escaped where they take part in nothing
    (see above), in one pass: a hostile name of thousands of marks costs no more than its
    length."""
    if not _CONTEXTUAL.search(translated):
        return translated
    flag_tags = _valid_flag_tags(translated)
    out = []
    last = len(translated) - 1
    for at, char in enumerate(translated):
        if not _CONTEXTUAL.fullmatch(char):
            out.append(char)
            continue
        before = translated[at - 1] if at > 0 else ""
        after = translated[at + 1] if at < last else ""
        if _is_tag(char):
            kept = at in flag_tags
        elif char in (_ZWJ, _ZWNJ):
            kept = _joins(char, before, after)
        else:
            kept = _selects(char, before, after)
        out.append(char if kept else _escaped(ord(char)))
    return "".join(out)


_PRINTABLE_ASCII = {code: chr(code) for code in range(0x20, 0x7F)}
_NAME_ESCAPES = _Escapes(_PRINTABLE_ASCII | {code: f"\\x{code:02x}" for code in _CONTROLS} | {
    ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r", ord("\\"): "\\\\"})
_LINE_ESCAPES = _Escapes(_PRINTABLE_ASCII | {code: f"\\x{code:02x}" for code in _CONTROLS} | {
    ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})


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
    surrogates) as \\xNN and any other character that is not printable as \\uNNNN (the marks
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
