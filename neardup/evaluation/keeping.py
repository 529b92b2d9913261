"""Which images of a group of duplicates the groups page offers for deletion, and which it keeps.

People delete what the page's "mark all but the one kept" button marks, so it marks only what
can be deleted without losing a picture, and leaves the rest to the person:

1. Files with the same bytes as another of the group (a photo copied twice): nothing is lost
   whichever goes. Of each such set one stays, the oldest, by a path that is not a symbolic link
   where it has one; it is the one kept if its picture is (or, with no smaller copy marked
   anywhere, if it is the only picture held twice), else it is left to the person.
2. On a store whose matches are verified (local features): a smaller copy of the same shape as
   the image kept, verified against it with at least WEAK_INLIERS inliers (at most
   SMALLER_AREA of its pixels, neither side longer, the aspect ratio within ASPECT_TOLERANCE),
   whose picture the image kept shows whole (`shows_whole`: the image kept, brought down to the
   copy's size, gives the copy's pixels and colours back) and of which it is not an enlargement
   (`enlarged_from`: the copy brought up to its size gives it back as closely), the image kept
   being the one that has
   the most such copies, then the oldest, then the one with the most pixels (among images the
   button does not mark, which one is shown as kept changes nothing).
3. Nothing else. Which of two pictures of one size, or of two shapes, is the original cannot be
   told from the files: a review of a photo library (originals beside the copies people make)
   found every rule tried keeping the copy somewhere. The most pixels kept a letterboxed, framed
   or slightly enlarged copy; the most picture with flat bands left out failed on studio and sky
   backgrounds (a photo's own white band trimmed away, a copy's black bar not); the oldest file
   failed on an original copied into the library after its copy, or unpacked with one time for
   every file; the largest file kept re-saves at a higher quality, 16-bit conversions, palette GIFs
   and PNGs with transparent parts.

On a store without features the hash alone links the group, and it links different photographs
taken alike too (two motorbikes at distance 0, in a review): only identical files are marked.
Several paths to one file (a symbolic link and its target, hard links) are one image: every path
to a file kept is kept, every path to a file marked is marked.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..core.hashing import DEFAULT_MAX_PIXELS, exif_orientation, normalise, open_image, open_regular_file
from ..errors import ImageError

# A smaller copy is marked only when verified against the image kept with at least this many
# inliers (and the page says when a group's weakest pair has fewer): different photographs taken
# alike (catalogue motorbikes, frames of one portrait sitting, chat screenshots around different photos) pass
# verification with 10 to 19 inliers more often than not (10 of 16 such matches on three
# gather.py samples, a review's screenshots 11 to 14), copies rarely (pad 12.6 %, combo 9.3 %,
# crop, resize, rotate and blur 0.7 to 1.8 %, the other kinds under 1 %; 21,000 verified copies).
WEAK_INLIERS = 20
# A smaller copy has at most this share of the kept image's pixels (each side at most 0.89 of
# it): gather.py's resized copies reach 1.05 times their original's sides, and one of those
# enlarged copies, kept for its pixels, cost the original (a review: 27 of 40 originals marked).
SMALLER_AREA = 0.8
# Same shape: the aspect ratios (long side over short side) within 2 % (rounding a resized copy's
# sides moves it by under 1 % at 100 pixels; a letterbox or frame moves it by more).
ASPECT_TOLERANCE = 0.02

# Whether the image kept shows a smaller copy's whole picture is told from both brought to the
# copy's shape at COMPARE_SIDE pixels at most (Lanczos from each file's own pixels), their
# difference averaged over blocks of BLOCK x BLOCK pixels. A verified match with many inliers is
# not enough: a review's library had the button mark another frame of one portrait sitting and
# other catalogue motorbikes (21 to 35 inliers), the only colour version beside a larger gray or
# sepia export, the clean one beside a larger watermarked one, and the whole scene beside a
# larger export of its centre. Measured on 60 CALTECH-101 photos: their copies made from them
# enlarged to 1,200 pixels (1,024 to 400 pixels at JPEG quality 90 to 60) all pass, 53 of 60 at
# 300 pixels and quality 40; copies of the photos themselves at 0.85 of their size and quality
# 90 all pass, at half size and quality 50 23 of 60 (their worst block 23 grey levels). None of
# 20 pairs of look-alikes that verify (the README's different photographs, both ways) passes,
# their closest block 44.5 grey levels apart; nor does a gray or sepia export (but of photos that
# were gray), an export of the centre, nor 59 of 60 turned by one degree; a white watermark
# passes where it is faint (15 of 60, most of them white on white). At 256 pixels, JPEG's
# halved colour resolution kept plain copies of drawings with hard colour edges from passing
# (22 of 120; 105 at 128). The limits: the worst block at most MAX_BLOCK_DIFFERENCE grey
# levels, and at most BLOCK_OVER_MEAN times the mean difference above BLOCK_FLOOR (a
# re-compressed copy differs a little everywhere, another picture a lot somewhere); the colours
# (opponent channels) at most MAX_COLOUR_DIFFERENCE apart on average and MAX_COLOUR_BLOCK in any
# block of COLOUR_BLOCK pixels.
COMPARE_SIDE = 128
BLOCK = 4
BLOCK_FLOOR = 12.0
BLOCK_OVER_MEAN = 6.0
MAX_BLOCK_DIFFERENCE = 30.0
COLOUR_BLOCK = 8
MAX_COLOUR_DIFFERENCE = 4.0
MAX_COLOUR_BLOCK = 16.0

# An export enlarged from a photo holds no more than the photo: brought back up to its size, the
# photo gives the export's pixels back about as closely as the export, brought down, gives the
# photo's. A real larger original holds detail its smaller copy lost, so the copy brought up
# misses it. Kept for its pixels, an enlarged export had the photo itself marked as its smaller
# copy (a review of a photo library: 9 of 20 originals). Measured on 60 CALTECH-101 photos
# (scratch script): the two differences' ratio (up over down, mean gray levels) is 0.14 to 1.03
# for the photo enlarged 1.13 to 2 times and saved at JPEG quality 60 to 90, and 1.11 to 8.1 for
# the photo against its copy at 0.5 to 0.88 of its size at the same qualities. Below
# ENLARGED_RATIO the smaller image is not marked. Pictures of more than ENLARGED_CHECK_PIXELS
# are not compared so (each decoded whole; an enlarged export of a photo that large is rare).
ENLARGED_RATIO = 1.07
ENLARGED_CHECK_PIXELS = 4_000_000


@dataclass(frozen=True, slots=True)
class Facts:
    """What the rule weighs for one image (None where an image cannot be kept: changed since it
    was indexed, unreadable)."""

    width: int  # as displayed: EXIF orientation applied
    height: int
    mtime_ns: int
    identity: tuple[int, int]  # (device, inode) of the file, links followed
    digest: bytes  # of its bytes


@dataclass(frozen=True, slots=True)
class Choice:
    kept: int  # the position shown as kept; -1: none
    keep: frozenset[int]  # every position of a file kept
    marked: frozenset[int]  # what the button marks, each with its reason in `why`
    why: dict[int, str]  # position -> why it is kept, marked or left to the person


def facts_of(path: str, opened: Image.Image, size: tuple[int, int]) -> Facts | None:
    """The facts of the image at `path` (`opened`: the image as opened, for its EXIF; `size`: its
    size in the file's header); None when the file cannot be read now."""
    try:
        with open_regular_file(path) as stream:  # a FIFO swapped in since is not waited on
            status = os.fstat(stream.fileno())
            digest = hashlib.file_digest(stream, "sha256").digest()
    except (OSError, ImageError):  # gone, or no longer a regular file
        return None
    width, height = size
    if exif_orientation(opened) in (5, 6, 7, 8):  # turned a quarter: displayed the other way
        width, height = height, width
    return Facts(width, height, status.st_mtime_ns, (status.st_dev, status.st_ino), digest)


def choose(paths: list[str | None], facts: list[Facts | None],
           strong: Callable[[int, int], bool] | None = None,
           whole: Callable[[int, int], bool] | None = None) -> Choice:
    """What to keep and what the button marks among one group's images. `strong` (a group of
    verified matches): whether two positions are a verified match with at least WEAK_INLIERS
    inliers; None: the hash alone links the group. `whole(large, small)`: whether the image at
    `large` shows the whole picture of the smaller one at `small` (default: shows_whole on their
    files)."""
    if whole is None:
        def whole(large: int, small: int) -> bool:
            return gives_back(paths[large], paths[small], known_fact(facts, large),
                              known_fact(facts, small))

    verified = strong is not None
    usable = [position for position, fact in enumerate(facts) if fact is not None]
    if not usable:
        return Choice(-1, frozenset(), frozenset(), {})
    by_content: dict[bytes, list[int]] = {}
    for position in usable:
        by_content.setdefault(facts[position].digest, []).append(position)  # type: ignore[union-attr]
    contents = list(by_content.values())
    # One image per content, the largest of them kept (each content's first: same pixels).
    smaller_of = {index: [other for other, positions in enumerate(contents) if other != index
                          and strong is not None and strong(contents[index][0], positions[0])
                          and _smaller_copy(known_fact(facts, positions[0]),
                                            known_fact(facts, contents[index][0]))
                          and whole(contents[index][0], positions[0])]
                  for index in range(len(contents))}
    # Then the content held in more than one file: on a store without features, where only
    # identical files are marked, a group of a photo and its byte copy beside an older
    # look-alike kept the look-alike, marked nothing and said "no identical files" (a review).
    kept_content = max(range(len(contents)), key=lambda index: (
        len(smaller_of[index]), len(_files(facts, contents[index])) > 1,
        -min(known_fact(facts, position).mtime_ns
                                     for position in contents[index]),
        _area(known_fact(facts, contents[index][0])), -index))
    # Within the content kept: a file the library holds itself (reached by a path that is not a
    # link: a link to a file elsewhere was kept, and the library's own copy marked, in a
    # review), then the oldest; shown by a path that is not a link.
    kept_positions = contents[kept_content]
    by_link = {position: os.path.islink(paths[position] or "") for position in kept_positions}
    kept_file = _representative(paths, facts, kept_positions)
    keep = frozenset(position for position in usable
                     if known_fact(facts, position).identity == kept_file)
    shown = min(keep, key=lambda position: (by_link[position], position))  # keep: all in it
    marked: set[int] = set()
    why: dict[int, str] = {}
    for position in kept_positions:
        if position not in keep:
            marked.add(position)
            why[position] = "marked: the same bytes as the one kept"
    for index in smaller_of[kept_content]:
        for position in contents[index]:
            marked.add(position)
            why[position] = "marked: a smaller copy of the one kept, of the same shape"
    # Files with the same bytes as one another are redundant wherever they are: of every other
    # content held in several files, one is left to the person, the others marked (a review: two
    # identical files beside an enlarged export that was kept were both left to the person).
    for index, positions in enumerate(contents):
        if index == kept_content or index in smaller_of[kept_content]:
            continue
        left = _representative(paths, facts, positions)
        for position in positions:
            if known_fact(facts, position).identity != left:
                marked.add(position)
                why[position] = "marked: the same bytes as another image here, left to you"
    for position in usable:
        if position not in keep and position not in marked:
            why[position] = _left(verified)
    for position in keep:
        why[position] = ("kept" if position == shown else "kept: the same file as the one kept")
    if not marked:  # nothing to keep one image against: none is called the one kept
        # Every path one file: not where the others changed since indexing (then this is only
        # the one image left as it was).
        lone = len(contents) == 1 and len(keep) == len(usable) == len(paths)
        for position in keep:  # the others are left to the person already
            why[position] = "every path here is one file" if lone else _left(verified)
        return Choice(-1 if not lone else shown, keep, frozenset(), why)
    return Choice(shown, keep, frozenset(marked), why)


def choose_in_group(
    paths: Sequence[str | None], relpaths: Sequence[str], facts: Sequence[Facts | None], *,
    changed: Collection[int] = (), pairs: dict[tuple[str, str], int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Choice:
    """choose() for one group of search.py --groups, as its page and its contact sheet both show
    it: `changed` (positions of files changed since they were indexed) are never kept; `pairs`
    (a group of verified matches): the inliers of each pair, by relpaths in sorted order."""
    weighed = [None if position in changed else fact for position, fact in enumerate(facts)]

    def strong(one: int, other: int) -> bool:  # a verified pair with enough inliers
        key = tuple(sorted((relpaths[one], relpaths[other])))
        return pairs is not None and pairs.get(key, 0) >= WEAK_INLIERS  # type: ignore[arg-type]

    def whole(large: int, small: int) -> bool:  # the kept file gives the smaller one's picture
        return gives_back(paths[large], paths[small], known_fact(weighed, large),
                          known_fact(weighed, small), max_pixels)

    return choose(list(paths), weighed, strong if pairs is not None else None, whole)


def _files(facts: Sequence[Facts | None], positions: Sequence[int]) -> set[tuple[int, int]]:
    """The distinct files (device, inode) at these positions."""
    return {known_fact(facts, position).identity for position in positions}


def _representative(paths: Sequence[str | None], facts: Sequence[Facts | None],
                    positions: Sequence[int]) -> tuple[int, int]:
    """Of several positions with the same bytes, the file to keep: one the library holds itself
    (reached by a path that is not a link), then the oldest."""
    held = {known_fact(facts, position).identity for position in positions
            if not os.path.islink(paths[position] or "")}
    return min((known_fact(facts, position) for position in positions),
               key=lambda fact: (fact.identity not in held, fact.mtime_ns)).identity


def _left(verified: bool) -> str:
    return ("left to you: which is the original cannot be told from the files (or their match is"
            " weak)" if verified else "left to you: only identical files are marked where the"
            " hash alone links the group")


def known_fact(facts: Sequence[Facts | None], position: int) -> Facts:
    fact = facts[position]
    assert fact is not None
    return fact


def _area(fact: Facts) -> int:
    return fact.width * fact.height


def _smaller_copy(small: Facts, large: Facts) -> bool:
    """Is `small` a smaller copy of `large` of the same shape?"""
    if small.width > large.width or small.height > large.height:
        return False
    if _area(small) > SMALLER_AREA * _area(large):
        return False
    ratio = (max(small.width, small.height) / max(1, min(small.width, small.height)))
    theirs = (max(large.width, large.height) / max(1, min(large.width, large.height)))
    same_orientation = (small.width >= small.height) == (large.width >= large.height)
    return same_orientation and abs(ratio / theirs - 1) <= ASPECT_TOLERANCE


def gives_back(large: str | None, small: str | None, large_facts: Facts, small_facts: Facts,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """Does the larger image hold the smaller one's whole picture, and more than an enlargement
    of it: can the smaller one go?"""
    return (shows_whole(large, small, small_facts, max_pixels)
            and not enlarged_from(large, small, large_facts, small_facts, max_pixels))


def enlarged_from(large: str | None, small: str | None, large_facts: Facts, small_facts: Facts,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """Is the image at `large` an enlargement of the one at `small` (ENLARGED_RATIO)? False
    where either cannot be read now or the larger is over ENLARGED_CHECK_PIXELS."""
    if large is None or small is None or _area(large_facts) > ENLARGED_CHECK_PIXELS:
        return False
    try:
        larger = _gray(large, max_pixels, large_facts.identity, large_facts.mtime_ns)
        smaller = _gray(small, max_pixels, small_facts.identity, small_facts.mtime_ns)
    except ImageError:
        return False
    missed_up, missed_down = _resampling_misses(larger, smaller)
    return missed_up < ENLARGED_RATIO * max(missed_down, 0.05)


# enlarged_from resamples each picture to the other's size: for a 4-megapixel photo and its copy
# at 0.7 of its size, 107 ms a pair, and a group of one photo and 8 such copies took the groups
# page from 1.2 s to 2.8 s (a review). Beyond ENLARGED_WINDOWS windows of ENLARGED_WINDOW pixels
# a side (of the smaller picture) across each side, only such windows, spread evenly over the
# picture, are resampled and compared: about 230,000 pixels of the smaller picture at most. On the
# 65 CALTECH-101 photos over 480 pixels a side, each against its enlargements by 1.13 to 2 and
# copies at 0.5 to 0.88 of its size (JPEG quality 60 and 90; scratch script), the windows gave
# the whole pictures' verdict in 737 of 740 pairs (the 3 others within 0.06 of ENLARGED_RATIO).
# The review's photo and 8 copies: the groups page 2.9 s -> 1.8 s, the same files marked.
ENLARGED_WINDOW = 160
ENLARGED_WINDOWS = 3


def _resampling_misses(larger: Image.Image, smaller: Image.Image) -> tuple[float, float]:
    """Mean gray-level differences: the smaller picture brought up to the larger's size against
    the larger, and the larger brought down against the smaller (over the windows compared)."""
    scale_x, scale_y = larger.width / smaller.width, larger.height / smaller.height
    up_total = down_total = 0.0
    up_count = down_count = 0
    for left, right in _windows(smaller.width):
        for top, bottom in _windows(smaller.height):
            # The same window of the larger picture, in whole pixels. Pillow's resize of a box
            # filters from the pixels around it too: each window gets the pixels a resize of the
            # whole picture gives there (to a gray level).
            box = (round(left * scale_x), round(top * scale_y),
                   round(right * scale_x), round(bottom * scale_y))
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            up = smaller.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS,
                                box=(box[0] / scale_x, box[1] / scale_y,
                                     box[2] / scale_x, box[3] / scale_y))
            down = larger.resize((right - left, bottom - top), Image.Resampling.LANCZOS,
                                 box=(left * scale_x, top * scale_y,
                                      right * scale_x, bottom * scale_y))
            up_total += _absolute_difference(larger.crop(box), up)
            up_count += up.width * up.height
            down_total += _absolute_difference(smaller.crop((left, top, right, bottom)), down)
            down_count += down.width * down.height
    return up_total / max(1, up_count), down_total / max(1, down_count)


def _windows(side: int) -> list[tuple[int, int]]:
    """(start, end) of the windows compared along a side of `side` pixels: the whole side, or
    ENLARGED_WINDOWS windows of ENLARGED_WINDOW pixels spread evenly from edge to edge."""
    if side <= ENLARGED_WINDOWS * ENLARGED_WINDOW:
        return [(0, side)]
    starts = np.linspace(0, side - ENLARGED_WINDOW, ENLARGED_WINDOWS).round().astype(int)
    return [(int(start), int(start) + ENLARGED_WINDOW) for start in starts]


def _absolute_difference(first: Image.Image, second: Image.Image) -> float:
    """The sum of the absolute gray-level differences of two pictures of one size."""
    return float(np.abs(np.asarray(first, dtype=np.float32)
                        - np.asarray(second, dtype=np.float32)).sum())


# A group's images are compared pair by pair, each pair decoded whole: the last few decodes are
# kept (a review: a 4-megapixel photo and 8 resized copies took the groups page from 1.5 to
# 3.6 s, the photo decoded again for every copy). Keyed by the file's identity and mtime too, so
# a file replaced at the same path is read again. At most 8 pictures of 4 megapixels: 32 MB.
@functools.lru_cache(maxsize=8)
def _gray(path: str, max_pixels: int, identity: tuple[int, int], mtime_ns: int) -> Image.Image:
    """The picture at `path`, upright, in 8-bit gray, at its own size (never modified: callers
    resize it into new images)."""
    with open_image(path, max_pixels) as opened:
        return normalise(opened).convert("L")


def shows_whole(large: str | None, small: str | None, small_facts: Facts,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """Does the image at `large`, brought down to the smaller image's size, give back its
    picture: the same pixels and colours everywhere, up to re-compression? False where either
    file cannot be read now (nothing is marked on a doubt)."""
    if large is None or small is None:
        return False
    scale = min(1.0, COMPARE_SIDE / max(small_facts.width, small_facts.height))
    size = (max(1, round(small_facts.width * scale)), max(1, round(small_facts.height * scale)))
    try:
        kept, copy = _rendered(large, size, max_pixels), _rendered(small, size, max_pixels)
    except ImageError:
        return False
    difference = np.abs(kept - copy).mean(axis=2)
    mean = float(difference.mean())
    worst = float(_blocks(difference, BLOCK).max())
    if worst > min(MAX_BLOCK_DIFFERENCE, max(BLOCK_FLOOR, BLOCK_OVER_MEAN * mean)):
        return False
    colours = np.abs(_opponent(kept) - _opponent(copy)).mean(axis=2)
    return (float(colours.mean()) <= MAX_COLOUR_DIFFERENCE
            and float(_blocks(colours, COLOUR_BLOCK).max()) <= MAX_COLOUR_BLOCK)


def _rendered(path: str, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """The picture at `path`, upright, in RGB, resized to `size` (width, height) from its own
    pixels (a JPEG decoded at a reduced scale still at least twice that size), as floats."""
    def reduce(image: Image.Image) -> None:
        image.draft("RGB", (2 * size[0], 2 * size[1]))

    with open_image(path, max_pixels, before_load=reduce) as opened:
        picture = normalise(opened).convert("RGB")
    # Lanczos from both files: a box filter aliases differently from 1,200 and from 640 pixels,
    # and put plain copies 20 grey levels apart in places.
    resized = picture.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.float32)


def _opponent(pixels: np.ndarray) -> np.ndarray:
    """Red against green, and yellow against blue: the colour without its brightness."""
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return np.stack([red - green, (red + green) / 2 - blue], axis=-1)


def _blocks(values: np.ndarray, side: int) -> np.ndarray:
    """Means over blocks of side x side (the last partial row and column of blocks left out;
    a picture smaller than one block is one block)."""
    height, width = values.shape
    rows, columns = max(1, height // side), max(1, width // side)
    side_y, side_x = min(side, height), min(side, width)
    return values[:rows * side_y, :columns * side_x].reshape(
        rows, side_y, columns, side_x).mean(axis=(1, 3))
