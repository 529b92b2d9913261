"""Contact sheets: a query beside its matches, so a person can look instead of read.

Each row starts with a framed image (the query, or a group's first image) followed by its
matches. Every tile is captioned with its folder, its file name and a note (the distance), so
`Faces/image_0324.jpg` and `Faces_easy/image_0324.jpg` stay apart; on a sheet of groups, a
line more says what the groups page's button keeps and marks (keeping.py). A sheet holds at most
`max_rows` rows and `MAX_PER_ROW` matches a row; whatever does not fit is counted in the sheet
itself (a "+N more" tile, a line under the title) and in `Sheet.left_out`, so the caller can say
it too: a picture must not look complete when it is not.

Images are opened through the same safe path as hashing (pixel limit, orientation, transparency);
one that cannot be read is drawn as a grey tile saying why.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from ..core.hashing import DEFAULT_MAX_PIXELS, normalise, open_image
from ..core.names import shown_path
from ..core.results import counted
from ..errors import ImageError
from .keeping import Choice, Facts, facts_of
from .output import MARK, MARK_XMP, write_whole

TILE = 160
LINE = 14
CAPTION = 3 * LINE + 6  # folder, file name, note
GAP = 8
HEADER = 56  # title and the "shown / left out" line
MAX_PER_ROW = 8
MAX_ROWS = 24  # a contact sheet stays a page a person can look at
GREY = (90, 90, 90)
KEPT = (0, 128, 0)
MARKED = (214, 39, 40)


@dataclass(frozen=True, slots=True)
class Tile:
    path: str  # the file to draw
    caption: str  # a note: "distance 3", "missed: crop ..."
    label: str = ""  # the path to show, folder included (default: the last two parts of path)

    @property
    def shown_path(self) -> str:
        if self.label:
            return self.label
        parts = self.path.replace("\\", "/").split("/")
        return "/".join(parts[-2:])


@dataclass(frozen=True, slots=True)
class Row:
    first: Tile  # the query
    others: list[Tile]  # its matches
    # A group of search.py --groups: what its page's button keeps and marks among [first,
    # *others], from what keeping.py weighs of each image (taken as its tile is decoded). Each
    # tile then says it on a line of its own, in the page's words.
    keeping: Callable[[list[Facts | None]], Choice] | None = None


@dataclass(slots=True)
class Sheet:
    image: Image.Image
    rows_shown: int
    rows_total: int
    tiles_left_out: int = 0  # matches beyond MAX_PER_ROW in the rows shown
    notes: list[str] = field(default_factory=list)
    line: str = ""  # what the sheet says under its title: its notes, or that all is shown
    # Per row shown, per tile drawn, of rows with `keeping`: (the path shown, what is kept or
    # marked, as the page says it under that image).
    statuses: list[list[tuple[str, str]]] = field(default_factory=list)
    # Per row shown with `keeping`, how many of the files it marks are among those not drawn
    # (said on its "+N more" tile: a person reviewing from the sheet must not think nothing is).
    marked_not_shown: list[int] = field(default_factory=list)
    # Per row shown with `keeping`, whether the image its page keeps is among those not drawn
    # (a review: the sheet showed a group's original and byte copies marked, and nothing kept).
    kept_not_shown: list[bool] = field(default_factory=list)

    @property
    def rows_left_out(self) -> int:
        return self.rows_total - self.rows_shown

    def save(self, path: str) -> None:
        """Write the sheet whole (in the format its extension names, else PNG), or not at all."""
        encoded = io.BytesIO()
        kind = Image.registered_extensions().get(posixpath.splitext(path)[1].lower(), "PNG")
        # The mark lets a run again replace this sheet, and no other picture (output.py).
        marked: dict[str, object] = {}
        if kind == "PNG":
            text = PngImagePlugin.PngInfo()
            text.add_text("Software", MARK)
            marked["pnginfo"] = text
        elif kind in ("JPEG", "GIF"):
            marked["comment"] = MARK
        elif kind == "WEBP":
            marked["xmp"] = MARK_XMP
        elif kind == "TIFF":
            marked["description"] = MARK
        self.image.save(encoded, format=kind, **marked)
        write_whole(path, encoded.getvalue())


def contact_sheet(
    rows: list[Row], title: str, *, what: str = "rows", max_rows: int | None = None,
    rest_in: str = "", max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Sheet:
    """Draw the first max_rows rows (default MAX_ROWS); `what` names them in the "shown / left
    out" line, and `rest_in` where a reader finds the rows left out."""
    if not rows:
        raise ValueError("nothing to draw")
    shown = rows[:MAX_ROWS if max_rows is None else max_rows]
    columns = 1 + min(MAX_PER_ROW, max(len(row.others) for row in shown))
    heading = ImageFont.load_default(size=15)
    title = shown_path(title)  # it may name a query
    title_width = int(ImageDraw.Draw(Image.new("1", (1, 1))).textlength(title, font=heading))
    width = max(GAP + columns * (TILE + GAP) + GAP, min(title_width + 2 * GAP, 1600), 640)
    # A line more under each tile where a row says what is kept (groups).
    status_line = LINE if any(row.keeping is not None for row in shown) else 0
    row_height = TILE + CAPTION + status_line + GAP
    sheet = Image.new("RGB", (width, HEADER + len(shown) * row_height + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    draw.text((GAP, 10), _fit(title, heading, draw, width - 2 * GAP), fill="black", font=heading)
    result = Sheet(sheet, len(shown), len(rows))
    for number, row in enumerate(shown):
        top = HEADER + number * row_height
        tiles = [row.first, *row.others]
        if len(tiles) > columns:
            # The last slot says how many did not fit, instead of a caption drawn over another.
            left_out = len(tiles) - (columns - 1)
            tiles = tiles[:columns - 1]
            result.tiles_left_out += left_out
        else:
            left_out = 0
        pictures: list[Image.Image] = []
        facts: list[Facts | None] = []
        for position, tile in enumerate([row.first, *row.others]):
            drawn = position < len(tiles)
            if not drawn and row.keeping is None:
                break
            # The tiles left out are weighed too (a tiny decode), as the page weighs them all.
            weighed: list[Facts | None] = [None]
            picture = _tile_image(tile.path, max_pixels, TILE if drawn else 16,
                                  weighed if row.keeping is not None else None)
            facts.append(weighed[0])
            if drawn:
                pictures.append(picture)
        choice = row.keeping(facts) if row.keeping is not None else None
        if choice is not None:
            result.statuses.append([])
        for column, tile in enumerate(tiles):
            left = GAP + column * (TILE + GAP)
            picture = pictures[column]
            sheet.paste(picture, (left + (TILE - picture.width) // 2,
                                  top + (TILE - picture.height) // 2))
            if column == 0:
                draw.rectangle([left, top, left + TILE - 1, top + TILE - 1],
                               outline=(214, 39, 40), width=3)
            folder, name = posixpath.split(tile.shown_path)
            draw.text((left, top + TILE + 3), _fit_left(folder + "/" if folder else "", font, draw),
                      fill=GREY, font=font)
            draw.text((left, top + TILE + 3 + LINE), _fit(name, font, draw), fill="black",
                      font=font)
            draw.text((left, top + TILE + 3 + 2 * LINE), _fit(tile.caption, font, draw),
                      fill=GREY, font=font)
            if choice is not None and column in choice.why:
                words = choice.why[column]
                result.statuses[-1].append((tile.shown_path, words))
                colour = (MARKED if column in choice.marked
                          else KEPT if column in choice.keep and choice.marked else GREY)
                draw.text((left, top + TILE + 3 + 3 * LINE), _fit(words, font, draw),
                          fill=colour, font=font)
        hidden_marked = 0 if choice is None else sum(
            1 for position in choice.marked if position >= len(tiles))
        hidden_kept = choice is not None and bool(choice.marked) and choice.kept >= len(tiles)
        if choice is not None:
            result.marked_not_shown.append(hidden_marked)
            result.kept_not_shown.append(hidden_kept)
        if left_out:
            left = GAP + (columns - 1) * (TILE + GAP)
            draw.rectangle([left, top, left + TILE - 1, top + TILE - 1], fill=(235, 235, 235))
            draw.text((left + 12, top + TILE // 2 - 8), f"+{left_out} more not shown",
                      fill="black", font=font)
            if hidden_marked:
                draw.text((left + 12, top + TILE // 2 + 8), f"({hidden_marked} of them marked)",
                          fill=MARKED, font=font)
            if hidden_kept:
                draw.text((left + 12, top + TILE // 2 + 24), "(the one kept too)",
                          fill=KEPT, font=font)
    if result.rows_left_out:
        result.notes.append(f"{len(shown)} of {len(rows)} {what} shown; {result.rows_left_out}"
                            " left out" + (f" ({rest_in} shows them all)" if rest_in else ""))
    if result.tiles_left_out:
        result.notes.append(f"{counted(result.tiles_left_out, 'image')} beyond {MAX_PER_ROW} a"
                            " row left out")
    result.line = "; ".join(result.notes) if result.notes else (
        f"all {len(rows)} {what} shown" if len(rows) > 1 else f"the one {_one_of(what)} shown")
    line = result.line
    draw.text((GAP, 32), _fit(line, font, draw, width - 2 * GAP),
              fill=(214, 39, 40) if result.notes else GREY, font=font)
    return result


def thumbnail(
    path: str, side: int, max_pixels: int = DEFAULT_MAX_PIXELS,
    inspect: Callable[[Image.Image, tuple[int, int], Image.Image], None] | None = None,
) -> Image.Image:
    """The image, upright and in RGB, fitted in side x side; raises ImageError. `inspect`, if
    given, sees the same decode: the image as opened, its size in the file's header, and the
    upright RGB picture (the groups page weighs which image to keep without decoding again)."""
    header: list[tuple[int, int]] = []

    def reduce(image: Image.Image) -> None:
        # A JPEG decodes straight to about the size needed (draft), not in full.
        header.append(image.size)
        image.draft("RGB", (side, side))

    with open_image(path, max_pixels, before_load=reduce) as opened:
        picture = normalise(opened).convert("RGB")
        if inspect is not None:
            inspect(opened, header[0] if header else opened.size, picture)
    picture.thumbnail((side, side))
    return picture


def _tile_image(path: str, max_pixels: int, side: int = TILE,
                weighed: list[Facts | None] | None = None) -> Image.Image:
    """The tile's picture; `weighed`, if given, gets keeping.py's facts of the image in its
    one slot (left None when it cannot be read)."""
    def inspect(opened: Image.Image, size: tuple[int, int], _picture: Image.Image) -> None:
        assert weighed is not None
        weighed[0] = facts_of(path, opened, size)

    try:
        return thumbnail(path, side, max_pixels, inspect if weighed is not None else None)
    except ImageError as error:
        tile = Image.new("RGB", (TILE, TILE), (200, 200, 200))
        ImageDraw.Draw(tile).text((6, TILE // 2 - 6), error.reason[:24], fill="black")
        return tile


# The singular of the first word of what a sheet's rows are ("queries with matches").
_SINGULAR = {"queries": "query", "groups": "group", "rows": "row"}


def _one_of(what: str) -> str:
    """'queries with a miss' -> 'query with a miss': what one row of a sheet is."""
    first, _, rest = what.partition(" ")
    return " ".join(filter(None, (_SINGULAR.get(first, first), rest)))


def _fit(text: str, font: ImageFont.ImageFont, draw: ImageDraw.ImageDraw, room: int = TILE) -> str:
    """Shorten text at its end with an ellipsis until it fits in `room` pixels; a name's line
    breaks, invisible characters and bytes that are not UTF-8 are escaped as the page shows them
    (Pillow refuses to measure text of several lines: a name holding a newline stopped the
    sheet, and every output of the run with it), and so is any character the font cannot draw."""
    text = _drawable(shown_path(text), font)
    while len(text) > 1 and draw.textlength(text, font=font) > room:
        text = text[:-2] + "…"
    return text


def _drawable(text: str, font: ImageFont.ImageFont) -> str:
    """The text with every character the font has no glyph for written as \\uNNNN. Pillow's
    built-in font draws é, ü, ø, Cyrillic or CJK as one empty box, so café.jpg and cafè.jpg
    looked alike on a sheet; escaped, two names never print alike (as on the pages)."""
    if text.isascii():
        return text
    missing = _missing_glyph(font)
    return "".join(char if char.isascii() or _glyph(font, char) != missing
                   else (f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
                   for char in text)


def _glyph(font: ImageFont.ImageFont, char: str) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(char)
    return mask.size, bytes(mask)


def _missing_glyph(font: ImageFont.ImageFont) -> tuple[tuple[int, int], bytes]:
    """What the font draws for a character it lacks (U+FFFF is no character at all)."""
    return _glyph(font, "\uffff")


def _fit_left(text: str, font: ImageFont.ImageFont, draw: ImageDraw.ImageDraw) -> str:
    """Shorten a folder at its start, keeping the part nearest the file (the useful part);
    escaped as _fit does."""
    text = _drawable(shown_path(text), font)
    while len(text) > 1 and draw.textlength(text, font=font) > TILE:
        text = "…" + text[2:]
    return text
