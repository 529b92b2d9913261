"""Which image of a group of duplicates to keep, and which paths to offer for deletion.

The groups page pre-selects "all but the one kept", and people delete what it selects, so the
choice must keep the original, not the copy beside it. A review of a photo library (originals next
to the copies people make) found the earlier rule (the most pixels, then the largest file) keeping
the copy in every case: a letterbox or a frame adds pixels, a re-save at a higher quality or a
16-bit conversion adds bytes, and an animated GIF or a PNG with a transparent part can tie on both.
So, in order:

1. A plain picture (one frame, full colour or gray, nothing transparent) over a palette, animated
   or partly transparent one: those are made from a photo, rarely the other way round.
2. The most picture: pixels as displayed (EXIF orientation applied), flat bands at the edges (a
   letterbox, a frame, a pad) left out; within PICTURE_TIE of the most, equal.
3. The oldest file (its modification time): a copy is made after its original.
4. The largest file, then the group's order.

Several paths to one file (a symbolic link and its target, hard links) are one image: deleting one
of them frees nothing, and deleting a link's target leaves the link dangling. So every path to the
file kept is kept, and every path to another file is offered.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Pictures within 5 % of the most picture are as large: trimming a band is not exact to the pixel
# (a black letterbox at JPEG quality 60 read 3 % larger), and a copy resized or cropped by a few
# per cent is no better an original for being a little larger.
PICTURE_TIE = 0.95
# An edge row or column is part of a flat band when it stays this close to the band's colour
# (JPEG noise on a black or white band); see _flat_rows.
FLAT_SPREAD = 12
# A group on a store with local features whose weakest pair has fewer inliers than this is left to
# the person: the button marks none of it. Different photographs taken alike (catalogue motorbikes,
# frames of one portrait sitting, chat screenshots around different photos) pass verification with
# 10 to 19 inliers more often than not (10 of 16 such matches on three gather.py samples, a
# review's screenshots 11 to 14), copies rarely (pad 12.6 %, combo 9.3 %, crop, resize, rotate
# and blur 0.7 to 1.8 %, the other kinds under 1 %; 21,000 verified copies).
WEAK_INLIERS = 20


@dataclass(frozen=True, slots=True)
class Facts:
    """What the keep rule weighs for one image (None for an image that cannot be kept)."""

    width: int  # as displayed: EXIF orientation applied
    height: int
    picture: float  # pixels less the flat bands at its edges
    plain: bool  # one frame, not a palette, nothing transparent
    mtime_ns: int
    length: int  # bytes
    identity: tuple[int, int]  # (device, inode) of the file, links followed


@dataclass(frozen=True, slots=True)
class Choice:
    kept: int  # position of the image kept; -1: none can be
    keep: frozenset[int]  # every position that is the kept file (links and hard links to it)
    reason: str  # why it, in a few words ("" when none is kept)


def facts_of(path: str, opened: Image.Image, size: tuple[int, int],
             shown: Image.Image) -> Facts | None:
    """The facts of the image at `path`: `opened` is the image as opened (its mode, frames and
    EXIF), `size` its size in the file's header, `shown` the upright picture as decoded (any
    scale); None when the file is gone."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    width, height = size
    if _orientation(opened) in (5, 6, 7, 8):  # turned a quarter: displayed the other way
        width, height = height, width
    return Facts(width, height, width * height * _share_inside_flat_edges(shown),
                 _plain(opened), status.st_mtime_ns, status.st_size,
                 (status.st_dev, status.st_ino))


def choose(paths: list[str | None], facts: list[Facts | None]) -> Choice:
    """The image to keep among a group's (`facts` None: cannot be kept: changed since it was
    indexed, unreadable), every position that is the same file, and the reason. The kept file is
    shown by a path that is not a symbolic link, where it has one."""
    usable = [position for position, fact in enumerate(facts) if fact is not None]
    if not usable:
        return Choice(-1, frozenset(), "")
    by_file: dict[tuple[int, int], list[int]] = {}
    for position in usable:
        by_file.setdefault(facts[position].identity, []).append(position)  # type: ignore[union-attr]
    files = [positions[0] for positions in by_file.values()]  # one position per file
    if len(files) == 1:
        kept, reason = files[0], "the only file here still as indexed and readable"
    else:
        kept, reason = _best(files, facts)  # type: ignore[arg-type]
    same = by_file[facts[kept].identity]  # type: ignore[union-attr]
    not_links = [position for position in same if not os.path.islink(paths[position] or "")]
    return Choice(not_links[0] if not_links else kept, frozenset(same), reason)


def _best(files: list[int], facts: list[Facts]) -> tuple[int, str]:
    plain = [position for position in files if facts[position].plain]
    if plain and len(plain) < len(files):
        files, first_reason = plain, "not a palette, animated or partly transparent copy"
    else:
        first_reason = ""
    most = max(facts[position].picture for position in files)
    large = [position for position in files if facts[position].picture >= PICTURE_TIE * most]
    if len(large) == 1:
        return large[0], first_reason or "the most picture (flat borders left out)"
    oldest = min(facts[position].mtime_ns for position in large)
    old = [position for position in large if facts[position].mtime_ns == oldest]
    if len(old) == 1:
        return old[0], first_reason or "as much picture, the oldest file"
    largest = max(facts[position].length for position in old)
    big = [position for position in old if facts[position].length == largest]
    return big[0], first_reason or ("as much picture, as old, the largest file" if len(big) == 1
                                    else "as much picture, as old and as large: the first")


def _orientation(opened: Image.Image) -> int:
    try:
        return int(opened.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block: shown as stored
        return 1


def _plain(opened: Image.Image) -> bool:
    if getattr(opened, "n_frames", 1) > 1 or opened.mode in ("P", "PA", "1"):
        return False
    if opened.mode in ("RGBA", "LA", "RGBa", "La") or "transparency" in opened.info:
        try:
            alpha = opened.getchannel("A")
        except (ValueError, OSError):
            return False
        return alpha.getextrema()[0] == 255  # an alpha channel, but nothing transparent
    return True


def _share_inside_flat_edges(shown: Image.Image) -> float:
    """The share of the picture inside the flat bands at its edges (1.0: none)."""
    pixels = np.asarray(shown.convert("RGB"), dtype=np.int16)
    height, width = pixels.shape[:2]
    if height < 3 or width < 3:
        return 1.0
    top = _flat_rows(pixels)
    bottom = _flat_rows(pixels[::-1])
    left = _flat_rows(pixels.transpose(1, 0, 2))
    right = _flat_rows(pixels.transpose(1, 0, 2)[::-1])
    inside = max(0, height - top - bottom) * max(0, width - left - right)
    return inside / (height * width)


def _flat_rows(pixels: np.ndarray) -> int:
    """How many rows from the first are one flat band (at most half the picture): nine pixels in
    ten within twice FLAT_SPREAD grey levels of the band's colour, and FLAT_SPREAD on average.
    Not all of them: a JPEG rings along the picture's edge, into the band's last rows (a white
    frame read 7 % larger than the picture at quality 90, all of them required)."""
    colour = np.median(pixels[0], axis=0)
    rows = 0
    for row in pixels[: len(pixels) // 2]:
        apart = np.abs(row - colour).max(axis=1)
        if np.percentile(apart, 90) > 2 * FLAT_SPREAD or apart.mean() > FLAT_SPREAD:
            break
        rows += 1
    return rows
