"""Contact sheets: a query beside its matches, so a person can look instead of read.

Each row starts with a labelled image (the query) followed by its matches, each captioned with
its distance. Images are opened through the same safe path as hashing (pixel limit, orientation,
transparency), and one that cannot be read is drawn as a grey tile saying so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from ..core.hashing import DEFAULT_MAX_PIXELS, normalise, open_image
from ..errors import ImageError

TILE = 160
CAPTION = 34
GAP = 8
MAX_PER_ROW = 8


@dataclass(frozen=True, slots=True)
class Tile:
    path: str
    caption: str


@dataclass(frozen=True, slots=True)
class Row:
    first: Tile  # the query
    others: list[Tile]  # its matches


def contact_sheet(rows: list[Row], title: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    columns = 1 + min(MAX_PER_ROW, max((len(row.others) for row in rows), default=0))
    width = GAP + columns * (TILE + GAP) + GAP
    height = 40 + len(rows) * (TILE + CAPTION + GAP) + GAP
    sheet = Image.new("RGB", (width, max(height, 80)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    draw.text((GAP, 12), title, fill="black", font=ImageFont.load_default(size=15))
    for number, row in enumerate(rows):
        top = 40 + number * (TILE + CAPTION + GAP)
        tiles = [row.first, *row.others[:MAX_PER_ROW]]
        for column, tile in enumerate(tiles):
            left = GAP + column * (TILE + GAP) + (GAP if column else 0)
            thumbnail = _thumbnail(tile.path, max_pixels)
            sheet.paste(thumbnail, (left + (TILE - thumbnail.width) // 2,
                                    top + (TILE - thumbnail.height) // 2))
            if column == 0:
                draw.rectangle([left - 2, top - 2, left + TILE + 1, top + TILE + 1],
                               outline=(214, 39, 40), width=2)
            label = _fit(os.path.basename(tile.path), font, draw)
            draw.text((left, top + TILE + 3), label, fill="black", font=font)
            draw.text((left, top + TILE + 17), tile.caption, fill=(90, 90, 90), font=font)
        if len(row.others) > MAX_PER_ROW:
            draw.text((width - 120, top + TILE + 17), f"+{len(row.others) - MAX_PER_ROW} more",
                      fill="black", font=font)
    return sheet


def _thumbnail(path: str, max_pixels: int) -> Image.Image:
    try:
        with open_image(path, max_pixels) as opened:
            picture = normalise(opened).convert("RGB")
        picture.thumbnail((TILE, TILE))
        return picture
    except ImageError as error:
        tile = Image.new("RGB", (TILE, TILE), (200, 200, 200))
        ImageDraw.Draw(tile).text((6, TILE // 2 - 6), error.reason[:24], fill="black")
        return tile


def _fit(text: str, font: ImageFont.ImageFont, draw: ImageDraw.ImageDraw) -> str:
    """Shorten a file name with an ellipsis until it fits under its tile."""
    while len(text) > 1 and draw.textlength(text, font=font) > TILE:
        text = text[:-2] + "…"
    return text
