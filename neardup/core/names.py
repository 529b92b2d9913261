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

The invisible marks real writing uses are kept only inside the sequences it uses them in, and
escaped anywhere else ("caf\\u00e9\\u200d.jpg" would print as "caf\\u00e9.jpg"); each is judged by
the characters of the name beside it, never by an escape written for them:
- U+FE0E and U+FE0F (text or emoji form) after a character emoji are made of, or in a keycap
  ("1\\ufe0f\\u20e3"); the first three other variation selectors after an ideograph (a
  standardized variant), and an ideographic variation selector (U+E0100-E01EF) too; Mongolian
  free variation selectors after a Mongolian letter, the vowel separator between two;
- ZWJ between emoji (after an emoji, or its emoji form kept); ZWJ after a virama (a half form,
  a chillu), ZWNJ after one before a letter (a conjunct kept apart), either before a virama
  (ra-phala); ZWNJ between an Arabic-script letter that joins the next one and a letter
  (Persian, Urdu), ZWJ after such a letter where no letter follows (its joining form);
- the tag characters of the flags of England, Scotland and Wales, after a black flag and ended
  by a cancel tag.
Never after another mark that was not kept. The grapheme joiner U+034F, Khmer's deprecated
inherent vowels, the Hangul and Khitan fillers are always escaped. Reviews found these marks
escaped inside valid names, then kept after any letter, then after any character neither ASCII
nor Latin ("cafe\\u0301\\ufe0e" printed as "cafe\\u0301"), then after any symbol or letter of a
joining script ("a+\\ufe00b", "\\u00a9\\u200d\\u00a9", "\\u0915\\u200d\\u0916").

Left, for want of Unicode's emoji and variation tables: within those sequences a mark that
changes nothing visible still prints alike (an emoji's selector for the form it is drawn in
anyway, or after a symbol of those blocks that has no emoji form; a ZWJ between two emoji that
make no sequence: "\\U0001f600\\u200d\\U0001f600" as "\\U0001f600\\U0001f600"; a variation
selector after an ideograph or a Mongolian letter that has no such variant), and
so do names written alike in different ways (composed and decomposed accents, letters of other
scripts that look the same): that is spelling, not an invisible character.
"""

from __future__ import annotations

import re
import unicodedata

_CONTROLS = [*range(32), *range(0x7F, 0xA0)]
_INVISIBLE_CATEGORIES = frozenset(("Cf", "Zs", "Zl", "Zp", "Cn"))
# Drawn as nothing, or as a byte that is not UTF-8 is: a blank braille cell, the Hangul and Khitan
# fillers, the grapheme joiner, Khmer's inherent vowels, and U+FFFD.
_ALWAYS_ESCAPED = frozenset((0x2800, 0x3164, 0xFFA0, 0x115F, 0x1160, 0x16FE4, 0x034F, 0x17B4,
                             0x17B5, 0xFFFD))
_ZWNJ, _ZWJ = "\u200c", "\u200d"
_TEXT_FORM, _EMOJI_FORM = "\ufe0e", "\ufe0f"
_BLACK_FLAG = "\U0001f3f4"
_KEYCAP = "\u20e3"
_KEYCAP_BASES = "#*0123456789"
# The tags of the flags Unicode recommends (England, Scotland, Wales), cancel tag included.
_FLAG_TAGS = frozenset("".join(chr(0xE0000 + ord(letter)) for letter in code) + "\U000e007f"
                       for code in ("gbeng", "gbsct", "gbwls"))
# Every mark whose place decides whether it is kept (_render).
_CONTEXTUAL = re.compile("[\u200c\u200d\u180b-\u180f\ufe00-\ufe0f"
                         "\U000e0020-\U000e007f\U000e0100-\U000e01ef]")
# The characters emoji are made of: the symbols of the BMP that have an emoji form (copyright,
# double exclamation, arrows, watch, media keys, geometric squares, the miscellaneous symbols and
# dingbats, stars, the wavy dash...) and the emoji blocks of the supplementary planes.
_SUPPLEMENTARY_EMOJI = (0x1F000, 0x1FAFF)
_EMOJI_RANGES = ((0x00A9, 0x00A9), (0x00AE, 0x00AE), (0x203C, 0x203C), (0x2049, 0x2049),
                 (0x2122, 0x2122), (0x2139, 0x2139), (0x2194, 0x2199), (0x21A9, 0x21AA),
                 (0x231A, 0x231B), (0x2328, 0x2328), (0x23CF, 0x23CF), (0x23E9, 0x23FA),
                 (0x24C2, 0x24C2), (0x25AA, 0x25AB), (0x25B6, 0x25B6), (0x25C0, 0x25C0),
                 (0x25FB, 0x25FE), (0x2600, 0x27BF), (0x2934, 0x2935), (0x2B05, 0x2B07),
                 (0x2B1B, 0x2B1C), (0x2B50, 0x2B50), (0x2B55, 0x2B55), (0x3030, 0x3030),
                 (0x303D, 0x303D), (0x3297, 0x3297), (0x3299, 0x3299), _SUPPLEMENTARY_EMOJI)
# Arabic-script letters that join only the letter before them, or none (alef, dal, reh, waw, teh
# marbuta, hamza and their variants): a ZWNJ or ZWJ after them changes nothing.
_ARABIC_NOT_JOINING_NEXT = frozenset((*range(0x0621, 0x0626), 0x0627, 0x0629,
                                      *range(0x062F, 0x0633), 0x0648, *range(0x0671, 0x0674),
                                      *range(0x0675, 0x0678), *range(0x0688, 0x069A), 0x06C0,
                                      *range(0x06C3, 0x06CC), 0x06CD, 0x06CF, 0x06D2, 0x06D3,
                                      0x06D5, 0x06EE, 0x06EF))
_ARABIC_LETTERS = ((0x0620, 0x064A), (0x066E, 0x06D3), (0x06D5, 0x06D5), (0x06EE, 0x06FF),
                   (0x0750, 0x077F), (0x08A0, 0x08C9))


def _in(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(first <= code <= last for first, last in ranges)


def _is_emoji(char: str) -> bool:
    return _in(ord(char), _EMOJI_RANGES)


# The characters of the BMP that emoji ZWJ sequences begin a part with (a heart on fire, a
# broken chain, a person bouncing a ball) or end one with (a woman's or man's sign, a medical,
# scales, plane, heart, black square, snowflake, transgender, rightwards arrow, skull and
# crossbones part); every other part is an emoji of the supplementary planes.
_JOINED_EMOJI_FIRST = frozenset((0x2764, 0x26D3, 0x26F9))
_JOINED_EMOJI_LAST = frozenset((0x2640, 0x2642, 0x2695, 0x2696, 0x2708, 0x2764, 0x2B1B, 0x2744,
                                0x26A7, 0x27A1, 0x2620, 0x2194, 0x2195))
# The Indic and Southeast Asian scripts whose viramas ZWJ and ZWNJ follow or precede (Devanagari
# to Sinhala, Myanmar, Khmer, Balinese, Javanese...).
_VIRAMA_SCRIPTS = ((0x0900, 0x0DFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x1A00, 0x1AAF),
                   (0x1B00, 0x1BFF), (0xA8E0, 0xA8FF), (0xA980, 0xA9DF), (0x11000, 0x1107F))


def _is_supplementary_emoji(char: str) -> bool:
    return _in(ord(char), (_SUPPLEMENTARY_EMOJI,))


def _starts_joined_emoji(char: str) -> bool:
    return (char == _EMOJI_FORM or _is_supplementary_emoji(char)
            or ord(char) in _JOINED_EMOJI_FIRST)


def _ends_joined_emoji(char: str) -> bool:
    return _is_supplementary_emoji(char) or ord(char) in _JOINED_EMOJI_LAST


def _is_ideograph(char: str) -> bool:
    return unicodedata.name(char, "").startswith(("CJK UNIFIED IDEOGRAPH",
                                                  "CJK COMPATIBILITY IDEOGRAPH"))


def _is_virama(char: str) -> bool:
    return unicodedata.combining(char) == 9 and _in(ord(char), _VIRAMA_SCRIPTS)


def _is_letter_or_mark(char: str) -> bool:
    return ord(char) > 0x7F and unicodedata.category(char)[0] in "LM"


def _is_arabic_letter(char: str) -> bool:
    return _in(ord(char), _ARABIC_LETTERS)


def _is_mongolian_letter(char: str) -> bool:
    return unicodedata.name(char, "").startswith("MONGOLIAN LETTER")


def _joins(char: str, before: str, after: str, before_kept: bool) -> bool:
    """Whether this ZWJ or ZWNJ, between `before` and `after` ("" at either end), is writing."""
    if not before or not before_kept:
        return False
    if char == _ZWJ and _starts_joined_emoji(before) and after and _ends_joined_emoji(after):
        return True
    if _is_virama(before):
        # ZWJ: a half form, or a chillu at a word's end; ZWNJ: a conjunct kept apart, so only
        # before the letter it keeps apart.
        return char == _ZWJ or bool(after) and _is_letter_or_mark(after)
    if after and _is_virama(after):  # Bengali ra-phala, Sinhala touching letters
        return _in(ord(before), _VIRAMA_SCRIPTS) and _is_letter_or_mark(before)
    if not _is_arabic_letter(before) or ord(before) in _ARABIC_NOT_JOINING_NEXT:
        return False
    # Between two letters that would join, ZWNJ parts them; ZWJ changes something only where
    # no letter follows (the joining form at a word's end).
    followed = bool(after) and _is_arabic_letter(after)
    return followed if char == _ZWNJ else not followed


def _selects(char: str, before: str, after: str, before_kept: bool) -> bool:
    """Whether this variation selector (or Mongolian vowel separator), after `before` ("" at
    the start), chooses a form."""
    if not before or not before_kept:
        return False
    if char in (_TEXT_FORM, _EMOJI_FORM):
        return _is_emoji(before) or (before in _KEYCAP_BASES and after == _KEYCAP)
    if char == "\u180e":  # the Mongolian vowel separator: between a letter and its vowel
        return _is_mongolian_letter(before) and bool(after) and _is_mongolian_letter(after)
    if "\u180b" <= char <= "\u180f":  # Mongolian free variation selectors
        return _is_mongolian_letter(before)
    if "\ufe03" <= char <= "\ufe0d":  # no ideograph has a standardized variant past the third
        return False
    return _is_ideograph(before)  # standardized and ideographic variation selectors


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
            return char  # _render() decides
        if code in _ALWAYS_ESCAPED or unicodedata.category(char) in _INVISIBLE_CATEGORIES:
            return _escaped(code)
        return char


def _is_tag(char: str) -> bool:
    return 0xE0020 <= ord(char) <= 0xE007F


def _flag_tags(text: str) -> set[int]:
    """Where the tag characters of a recommended flag stand (_FLAG_TAGS, after a black flag)."""
    kept: set[int] = set()
    at = 0
    while (at := text.find(_BLACK_FLAG, at)) >= 0:
        end = at + 1
        while end < len(text) and _is_tag(text[end]):
            end += 1
        if text[at + 1:end] in _FLAG_TAGS:
            kept.update(range(at + 1, end))
        at = end
    return kept


def _render(text: str, table: _Escapes) -> str:
    """`text` translated by `table`, its contextual marks kept or escaped as the characters of
    `text` beside them say (see above), in one pass: a hostile name of thousands of marks costs
    no more than its length."""
    if not _CONTEXTUAL.search(text):
        return text.translate(table)
    flag_tags = _flag_tags(text)
    out = []
    last = len(text) - 1
    before_kept = True
    for at, char in enumerate(text):
        if not _CONTEXTUAL.fullmatch(char):
            out.append(char.translate(table))
            before_kept = True
            continue
        before = text[at - 1] if at > 0 else ""
        after = text[at + 1] if at < last else ""
        if _is_tag(char):
            kept = at in flag_tags
        elif char in (_ZWJ, _ZWNJ):
            kept = _joins(char, before, after, before_kept)
        else:
            kept = _selects(char, before, after, before_kept)
        out.append(char if kept else _escaped(ord(char)))
        before_kept = kept
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
    return _render(message, _LINE_ESCAPES)


def printable(path: str) -> str:
    """A name on one line, for plain output: escaped as _NAME_ESCAPES says; any other character
    (bytes that are not UTF-8 included) as it is, so a terminal or a pipe gets the name's bytes."""
    return _render(path, _NAME_ESCAPES)


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
