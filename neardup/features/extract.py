"""From an image to its local features: ORB keypoints and descriptors, plus a tiny thumbnail.

A stored image keeps few features (STORED_KEYPOINTS, the strongest) so that it costs about 2 KB in
the store; a query, computed on the fly, keeps many (QUERY_KEYPOINTS), so that the stored ones find
their partners even in a crop. The 28 x 28 grayscale thumbnail is what verification compares after
aligning the two pictures (see verify.py): keypoints alone match look-alikes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from ..core.hashing import DEFAULT_MAX_PIXELS, normalise, open_image
from ..errors import ImageError

# Bumped whenever extraction changes what it stores; stores record it and refuse another.
# 2: a 28 x 28 thumbnail and the 8 x 8 colour grid.
# 3: a record half the size (1,847 bytes, two per 4 KB SQLite page): 128-bit descriptors, positions
#    in 3 bytes, thumbnail and colour grid in 4 bits; keypoints chosen among 500 detected.
# 4: each keypoint's orientation (a byte) and pyramid level, and the frame's sharpness (1,929
#    bytes): verification describes the aligned query at the stored keypoints themselves
#    (verify.py, "fine detail"). Descriptors, positions and thumbnails as in 3.
FEATURE_VERSION = 4

# Pictures are analysed with their long side at most this: CALTECH-101 photos (about 300 x 200)
# keep every pixel, and a 12-megapixel photo costs no more than a small one.
MAX_SIDE = 320
# 72 stored keypoints: 72 x (16 descriptor + 3 position + 1 orientation) bytes + a 408-byte thumbnail
# + 64 bytes of colour + 8 of keypoints per pyramid level + a 9-byte header is 1,929 bytes. SQLite
# fits two such records (with a path of up to about 100 bytes) in one 4 KB page; a record over
# about 2,030 bytes takes a page of its own.
# Measured on 1,300 CALTECH-101 copies of 13 edit kinds (seed 111): every copy but a few combos
# kept at least 18 RANSAC inliers with 72 stored and 500 query keypoints.
STORED_KEYPOINTS = 72
QUERY_KEYPOINTS = 500
# Of those, the candidate search looks up the first SEARCHED_KEYPOINTS (most important first, see
# extract(ranked=)); verification uses all of them. All 500: with 128-bit descriptors a copy's
# descriptors have more unrelated near neighbours than with 256, and the query's 150 strongest
# alone left a pad or blur copy without the votes to be a candidate. On 6,500 CALTECH-101 copies
# (gather.py --seed 2026, recipe v3) the features found pad 89.0 / 98.0 / 99.0 %, blur 47.6 /
# 90.8 / 100 %, combo 74.4 / 88.2 / 94.6 % looking up 150 / 300 / 500. See
# neardup/features/index.py for the cost.
SEARCHED_KEYPOINTS = 500
# The mirror image's look finds mirrored copies, which are the query's own pixels flipped (no
# resampling, no blur): its most important keypoints are enough, and the lookup costs a third.
MIRROR_SEARCHED_KEYPOINTS = 150
# Keypoints are chosen among this many, spread over a GRID x GRID grid (see extract()). 500, not
# 300: a caption's corners are the strongest there are, and with 300 a caption across a plain
# picture took nearly all of them, leaving the rest of the picture without keypoints to store
# (CALTECH-101 text copies refused with 2 to 9 matches; gather.py --seed 2026). Not 1,000 either:
# the strongest of each cell among so many are more often fine details that a blurred or padded
# copy does not keep, and the candidate search found 72 % of the pad copies (seed 2026). Measured
# on 750 copies (gather.py --seed 111; query descriptors among the 150 looked up with a stored
# partner within 10 bits, 5th percentile, 300 / 500 / 1,000 detected): pad 16 / 16 / 6, crop
# 27 / 24 / 20, rotate 20 / 21 / 15, text 20 / 25 / 25, blur 5 / 4 / 4.
DETECTED_KEYPOINTS = 500
GRID = 4
THUMBNAIL_SIDE = 28
# Colour, coarsely: two opponent channels (red - green, yellow - blue) on an 8 x 8 grid.
CHROMA_SIDE = 8
# Stored in 4 bits as the signed square root (-7..7; 49 and beyond is stored as 49): fine steps for
# the faint colours of a nearly gray photo, coarse ones for strong colours (only the direction of
# the colours is compared). Uniform steps of 8 lost the faint ones: a pale CALTECH-101 menorah
# (colours within 8) was refused against 8 of its own copies.
CHROMA_LEVELS = 7
# Keypoint positions are stored as fixed point, 1/8 pixel, 12 bits each (MAX_SIDE * 8 < 4,096).
POSITION_SCALE = 8
# ORB computes 256 binary tests (32 bytes) per keypoint; the first 128 are kept (its tests are
# ordered, best first: learned for high variance and low correlation). Half the bytes in the store
# and in the FAISS index, half the work per comparison.
DESCRIPTOR_BYTES = 16

# ORB's pyramid: 8 levels (OpenCV's default), each 1.2 times smaller than the one before.
PYRAMID_LEVELS = 8
# Orientation in a byte: 1/256 of a turn. The stored descriptor stays computed at ORB's own angle:
# computed at the byte's, it lost a blurred banknote's last matches (a test's
# dollar_bill/image_0026, 11 matches to 9); the query described at the byte's angle flips a bit
# or so more (verify.MAX_RERENDERED_BITS was chosen so). In 6 bits, 36 copy verdicts of 7,751
# were refused at 6 bits against 4 (gather.py --seed 4711).
ANGLE_STEPS = 256
# The frame's sharpness (see sharpness()), in thousandths; 0: not known.
SHARPNESS_SCALE = 1000

# version, frame width, frame height, keypoint count, sharpness: the first four where
# Store.feature_records_unlike reads them.
_HEADER = struct.Struct("<BHHHH")
HEADER_BYTES = _HEADER.size
_THUMBNAIL_BYTES = 16 + THUMBNAIL_SIDE * THUMBNAIL_SIDE // 2  # a 16-level table, then 4 bits each
_CHROMA_BYTES = CHROMA_SIDE * CHROMA_SIDE * 2 // 2  # two signed 4-bit values per cell
# A record's length: RECORD_FIXED_BYTES, then RECORD_POINT_BYTES per keypoint (its position,
# its descriptor, its orientation). The keypoints are stored by pyramid level, lowest first, and
# the fixed part counts them per level (ORB's detector gives them in that order).
RECORD_POINT_BYTES = 3 + DESCRIPTOR_BYTES + 1
RECORD_FIXED_BYTES = _HEADER.size + PYRAMID_LEVELS + _THUMBNAIL_BYTES + _CHROMA_BYTES


def record_problem(head: bytes, length: int) -> str | None:
    """What is wrong with a stored feature record, from its first HEADER_BYTES and its length,
    or None."""
    if len(head) < _HEADER.size:
        return "feature record too short"
    version, width, height, count, _ = _HEADER.unpack_from(head)
    if version != FEATURE_VERSION:
        return f"feature record version {version}, expected {FEATURE_VERSION}"
    if width == 0 or height == 0:
        return f"feature record of a frame {width} x {height}"
    expected = RECORD_FIXED_BYTES + count * RECORD_POINT_BYTES
    if length != expected:
        return f"feature record of {length} bytes, expected {expected}"
    return None


@dataclass(frozen=True, slots=True)
class FeatureRecipe:
    """How features are made; two feature sets are comparable only under the same recipe."""

    detector: str = "orb"
    stored_keypoints: int = STORED_KEYPOINTS
    max_side: int = MAX_SIDE
    thumbnail_side: int = THUMBNAIL_SIDE
    version: int = FEATURE_VERSION

    def describe(self) -> str:
        return (f"{self.detector}-{self.stored_keypoints} (long side {self.max_side}, thumbnail"
                f" {self.thumbnail_side}, v{self.version})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def describe_recorded(data: dict[str, Any]) -> str:
        """A recorded recipe in words, even one this version cannot read; as it is recorded
        where the words would not show how it differs (a key more or fewer, a number written as
        text: a review read the same words for two recipes)."""
        try:
            recipe = FeatureRecipe.from_dict(data)
        except (KeyError, TypeError, ValueError):
            return json.dumps(data, sort_keys=True)
        if recipe.to_dict() != data:
            return json.dumps(data, sort_keys=True)
        return recipe.describe()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureRecipe:
        return cls(str(data["detector"]), int(data["stored_keypoints"]), int(data["max_side"]),
                   int(data["thumbnail_side"]), int(data["version"]))


@dataclass(frozen=True, slots=True)
class FeatureSet:
    """Keypoints of one picture in its analysis frame (long side <= MAX_SIDE)."""

    width: int
    height: int
    points: np.ndarray  # (n, 2) float32, x and y in the frame
    descriptors: np.ndarray  # (n, DESCRIPTOR_BYTES) uint8: ORB's first 128 bits
    thumbnail: np.ndarray  # (THUMBNAIL_SIDE, THUMBNAIL_SIDE) uint8, the frame squeezed
    chroma: np.ndarray  # (CHROMA_SIDE, CHROMA_SIDE, 2) int8: see chroma_grid
    gray: np.ndarray | None = None  # the whole frame; queries only (verification warps it)
    # The whole frame in RGB, and its gray as a fourth channel (verification warps all four at
    # once); colour queries only.
    colour: np.ndarray | None = None
    mirrored: bool = False  # a query's look of its mirror image (a match through it is mirrored)
    # Stored records (and extract() for them): each keypoint's orientation, degrees (ORB's angle,
    # to ANGLE_STEPS), and pyramid level. None: not known (a query's looks).
    angles: np.ndarray | None = None
    octaves: np.ndarray | None = None
    # sharpness() of the frame: a stored record's, or a query's as it came (None for its
    # sharpened and softened looks, and for a record that does not know it).
    sharpness: float | None = None
    # A query's look: how many times larger its frame is than the picture as it came (an
    # enlarged look, one cut of its bars); verification reads fine detail only where the query
    # keeps its size.
    magnified: float = 1.0

    def thumbnail_dhash(self) -> int:
        """A 64-bit dHash of the stored thumbnail: within a few bits of the dHash-64 its image
        is stored under (search.RECORD_HASH_BITS), far from another image's."""
        small = np.asarray(Image.fromarray(self.thumbnail.astype(np.uint8)).resize(
            (9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
        return int(np.packbits(small[:, 1:] > small[:, :-1]).view(">u8")[0])

    def to_bytes(self) -> bytes:
        positions = np.clip(np.rint(self.points * POSITION_SCALE), 0, 4095).astype(np.uint32)
        # x and y, 12 bits each, in 3 little-endian bytes per keypoint
        packed = (positions[:, 0] | (positions[:, 1] << 12)).astype("<u4").view(np.uint8)
        packed = packed.reshape(-1, 4)[:, :3]
        # The thumbnail in 4 bits: 16 grey levels fitted to its pixels (Lloyd's algorithm, from 16
        # even steps over its range), each pixel stored as its nearest level's number and the
        # levels in a 16-byte table. Verification compares correlations of the thumbnails and of
        # their edges: even steps over the whole range spent most levels on a pad or a white
        # background and left a low-contrast picture a few of them (3 of 500 CALTECH-101 combo
        # copies refused that the 8-bit thumbnail verifies, gather.py --seed 2026).
        codes, table = _grey_levels(self.thumbnail.ravel())
        chroma = self.chroma.astype(np.float32)
        chroma = np.sign(chroma) * np.minimum(np.rint(np.sqrt(np.abs(chroma))), CHROMA_LEVELS)
        count = len(self.points)
        octaves = np.zeros(count, np.int64) if self.octaves is None else self.octaves.astype(int)
        if np.any(np.diff(octaves) < 0) or np.any(octaves >= PYRAMID_LEVELS):
            raise ValueError("keypoints must be stored by pyramid level, lowest first")
        angles = np.zeros(count) if self.angles is None else self.angles
        sharpness = 0 if self.sharpness is None else round(self.sharpness * SHARPNESS_SCALE)
        return (_HEADER.pack(FEATURE_VERSION, self.width, self.height, count,
                             min(max(sharpness, 0), 65535))
                + np.bincount(octaves, minlength=PYRAMID_LEVELS).astype(np.uint8).tobytes()
                + np.ascontiguousarray(packed).tobytes()
                + np.ascontiguousarray(self.descriptors[:, :DESCRIPTOR_BYTES]).tobytes()
                + angle_bytes(angles).tobytes()
                + table.tobytes() + _nibbles(codes)
                + _nibbles((chroma.astype(np.int8) & 15).ravel()))

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureSet:
        """Parse a stored feature set; a malformed one (a store from elsewhere) is a ValueError."""
        if problem := record_problem(data[:_HEADER.size], len(data)):
            raise ValueError(problem)
        _, width, height, count, sharpness = _HEADER.unpack_from(data)
        thumb, colour = _THUMBNAIL_BYTES, _CHROMA_BYTES
        offset = _HEADER.size
        per_level = np.frombuffer(data, np.uint8, PYRAMID_LEVELS, offset)
        if int(per_level.sum()) != count:
            raise ValueError(f"feature record of {count} keypoints counting {per_level.sum()}"
                             " by pyramid level")
        octaves = np.repeat(np.arange(PYRAMID_LEVELS, dtype=np.uint8), per_level)
        offset += PYRAMID_LEVELS
        packed = np.zeros((count, 4), np.uint8)
        packed[:, :3] = np.frombuffer(data, np.uint8, count * 3, offset).reshape(count, 3)
        both = packed.view("<u4").ravel()
        points = np.stack([both & 4095, both >> 12], axis=1).astype(np.float32) / POSITION_SCALE
        offset += count * 3
        descriptors = np.frombuffer(data, np.uint8, count * DESCRIPTOR_BYTES, offset)
        offset += count * DESCRIPTOR_BYTES
        angles = np.frombuffer(data, np.uint8, count, offset).astype(np.float32) * (
            360 / ANGLE_STEPS)
        offset += count
        table = np.frombuffer(data, np.uint8, 16, offset)
        thumbnail = table[_unnibble(data[offset + 16:offset + thumb])]
        offset += thumb
        signed = _unnibble(data[offset:offset + colour]).astype(np.int8)
        root = np.where(signed > 7, signed.astype(np.int16) - 16, signed)
        chroma = np.sign(root) * root * root
        return cls(width, height, points, descriptors.reshape(count, DESCRIPTOR_BYTES),
                   thumbnail.reshape(THUMBNAIL_SIDE, THUMBNAIL_SIDE),
                   chroma.astype(np.int8).reshape(CHROMA_SIDE, CHROMA_SIDE, 2),
                   angles=angles, octaves=octaves,
                   sharpness=sharpness / SHARPNESS_SCALE if sharpness else None)


def angle_bytes(angles: np.ndarray) -> np.ndarray:
    """Orientations in degrees as the record keeps them: the nearest 1/ANGLE_STEPS of a turn."""
    return (np.rint(np.asarray(angles, np.float64) * (ANGLE_STEPS / 360)) % ANGLE_STEPS
            ).astype(np.uint8)


def sharpness(gray: np.ndarray) -> float:
    """How much finer than 1.5 pixels the frame's detail goes: the mean absolute Laplacian of the
    frame over that of the frame blurred by a Gaussian of 1.5 pixels (1: no finer detail; 300
    CALTECH-101 photos 4.3 to 15.2 from their 5th to their 95th percentile, each blurred by a
    Gaussian of 1 pixel at most 0.58 of its own).
    Verification reads the fine detail of two pictures only when they are about as sharp."""
    import cv2

    pixels = gray.astype(np.float32)
    fine = float(np.abs(cv2.Laplacian(pixels, cv2.CV_32F)).mean())
    coarse = float(np.abs(cv2.Laplacian(cv2.GaussianBlur(pixels, (0, 0), 1.5), cv2.CV_32F)).mean())
    return fine / coarse if coarse > 0 else 1.0


def _grey_levels(pixels: np.ndarray, rounds: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's level number (0..15) and the 16 levels (uint8), fitted by Lloyd's algorithm
    (on the histogram of the 256 possible values: the same result, at a fraction of the cost)."""
    counts = np.bincount(pixels, minlength=256).astype(np.float64)
    grey = np.arange(256, dtype=np.float64)
    present = np.nonzero(counts)[0]
    levels = np.linspace(present[0], present[-1], 16)
    for _ in range(rounds):
        nearest = np.abs(grey[:, None] - levels[None, :]).argmin(axis=1)
        weight = np.bincount(nearest, counts, minlength=16)
        total = np.bincount(nearest, counts * grey, minlength=16)
        levels = np.where(weight > 0, total / np.maximum(weight, 1), levels)
    table = np.rint(levels).astype(np.uint8)
    nearest = np.abs(grey[:, None] - table[None, :].astype(np.float64)).argmin(axis=1)
    return nearest[pixels].astype(np.uint8), table


def _nibbles(values: np.ndarray) -> bytes:
    """Values 0..15, two per byte (an even count)."""
    return (values[0::2] | (values[1::2] << 4)).astype(np.uint8).tobytes()


def _unnibble(data: bytes) -> np.ndarray:
    packed = np.frombuffer(data, np.uint8)
    values = np.empty(packed.size * 2, np.uint8)
    values[0::2], values[1::2] = packed & 15, packed >> 4
    return values


def analysis_frame(image: Image.Image, max_side: int = MAX_SIDE) -> np.ndarray:
    """The picture as features see it: upright, long side at most max_side; an (h, w, 3) RGB
    array, or (h, w) for a grayscale picture."""
    upright = normalise(image)
    picture = upright.convert("L" if upright.mode in ("L", "1", "I", "F") else "RGB")
    width, height = picture.size
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        picture = picture.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(picture, dtype=np.uint8)


def _reduce_while_decoding(image: Image.Image) -> None:
    if image.format == "JPEG":
        image.draft(image.mode, (MAX_SIDE, MAX_SIDE))  # libjpeg scales by 1/2..1/8, not below


def read_frame(
    path: str, max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | None = None,
    on_header: Callable[[Image.Image], None] | None = None,
) -> np.ndarray:
    """Decode a file (or an upload's bytes, named path) into its analysis frame. `on_header` runs
    once the decoder knows its reduced size, before decoding (the checker's memory budget)."""
    if data is not None and not data:
        raise ImageError(path, "empty file")

    def before_load(image: Image.Image) -> None:
        _reduce_while_decoding(image)
        if on_header is not None:
            on_header(image)

    with open_image(path, max_pixels, data=data, before_load=before_load) as image:
        return analysis_frame(image)


_detectors: dict[int, Any] = {}
# ORB keeps its keypoints ORB_EDGE pixels from every edge: a side shorter than this has none.
ORB_EDGE = 15
ORB_MIN_SIDE = 2 * ORB_EDGE + 1
ORB_PATCH = 15  # the patch a descriptor's tests lie in, at the keypoint's own pyramid level
PYRAMID_SCALE = 1.2  # OpenCV's default, as PYRAMID_LEVELS


def _orb(keypoints: int) -> Any:
    import cv2

    if keypoints not in _detectors:  # one per process: creating it costs more than small images
        # Smaller borders and patches than OpenCV's defaults (31): on 300 x 200 photos the default
        # leaves a 31-pixel margin without keypoints, the very part a crop keeps or a pad moves.
        _detectors[keypoints] = cv2.ORB_create(nfeatures=keypoints, edgeThreshold=ORB_EDGE,
                                               patchSize=ORB_PATCH, fastThreshold=10,
                                               scaleFactor=PYRAMID_SCALE, nlevels=PYRAMID_LEVELS)
    return _detectors[keypoints]


def extract(frame: np.ndarray, keypoints: int, *, keep_frame: bool = False,
            ranked: bool = False) -> FeatureSet:
    """ORB features of one analysis frame, at most `keypoints`, spread over the picture.

    `ranked`: keypoints in order of importance (each grid cell's strongest, then each cell's
    next...), so that the first N are the best N spread over the picture (queries: the candidate
    search looks up only the first SEARCHED_KEYPOINTS); otherwise in the detector's order."""
    colour, gray = _split(frame)
    chosen = _choose(gray, keypoints, ranked)
    if ranked:
        found, descriptors = _describe(gray, chosen)
        return _feature_set(gray, colour, found, descriptors, keep_frame)
    # By pyramid level, lowest first, as the record keeps them: ORB's own order, sorted all the
    # same (stably) should another OpenCV give them otherwise.
    found, descriptors = _describe(gray, sorted(chosen, key=lambda point: point.octave))
    return replace(_feature_set(gray, colour, found, descriptors, keep_frame),
                   angles=np.array([point.angle for point in found], np.float32),
                   octaves=np.array([point.octave for point in found], np.uint8),
                   sharpness=sharpness(gray))


def _split(frame: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """The colour frame (None for a gray one) and its gray version."""
    import cv2

    if frame.ndim == 3:
        return frame, cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return None, frame


def _choose(gray: np.ndarray, keypoints: int, ranked: bool,
            mask: np.ndarray | None = None) -> list[Any]:
    """At most `keypoints` ORB keypoints (cv2.KeyPoint), spread over the picture (where `mask`,
    if given, is not 0)."""
    # Detect many, keep the strongest of each part of the picture: the strongest overall gather
    # on a caption or watermark (text corners are the strongest there are), which the original
    # does not have, and a crop then loses them all together. Descriptors are computed only for
    # the keypoints kept (cheaper than for every one detected).
    if min(gray.shape) < ORB_MIN_SIDE:
        return []  # no keypoint there; OpenCV's pyramid fails an assertion on a 1-pixel side
    found = _orb(max(keypoints, DETECTED_KEYPOINTS)).detect(gray, mask)
    if found and (len(found) > keypoints or ranked):
        points = np.array([point.pt for point in found], np.float32).reshape(-1, 2)
        chosen = _spread(points, np.array([point.response for point in found]), gray.shape,
                         keypoints)
        if not ranked:  # stored records keep the detector's order
            chosen = np.sort(chosen)
        found = [found[index] for index in chosen]
    return list(found)


def _describe(gray: np.ndarray, keypoints: list[Any]) -> tuple[list[Any], np.ndarray | None]:
    """ORB descriptors of the keypoints (OpenCV drops those too near the border)."""
    if not keypoints:
        return [], None
    found, descriptors = _orb(DETECTED_KEYPOINTS).compute(gray, keypoints)
    return list(found), descriptors


def _feature_set(gray: np.ndarray, colour: np.ndarray | None, found: list[Any],
                 descriptors: np.ndarray | None, keep_frame: bool) -> FeatureSet:
    import cv2

    if descriptors is None or not found:
        points = np.zeros((0, 2), np.float32)
        descriptors = np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
    else:
        points = np.array([point.pt for point in found], np.float32).reshape(-1, 2)
        descriptors = np.ascontiguousarray(descriptors[:, :DESCRIPTOR_BYTES])
    height, width = gray.shape
    thumbnail = cv2.resize(gray, (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA)
    chroma = (chroma_grid(colour) if colour is not None
              else np.zeros((CHROMA_SIDE, CHROMA_SIDE, 2), np.int8))
    if not keep_frame:
        return FeatureSet(width, height, points, descriptors, thumbnail, chroma)
    # cv2.merge, not np.dstack: the same array in a fifth of the time (0.07 against 0.33 ms for
    # a 320 x 213 frame; a query makes two).
    return FeatureSet(width, height, points, descriptors, thumbnail, chroma, gray,
                      None if colour is None else cv2.merge([*cv2.split(colour), gray]))


def describe_at(gray: np.ndarray, points: np.ndarray, angles: np.ndarray, octaves: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """ORB's descriptors of `gray` at given keypoints (a stored record's: position, orientation in
    degrees, pyramid level), none detected: the rows of those described (OpenCV leaves out those
    too near the border) and their descriptors, cut as a record keeps them."""
    import cv2

    keypoints = [cv2.KeyPoint(float(x), float(y), ORB_PATCH * PYRAMID_SCALE ** int(octave),
                              float(angle), 0, int(octave), row)
                 for row, ((x, y), angle, octave) in enumerate(zip(points, angles, octaves,
                                                                   strict=True))]
    if not keypoints or min(gray.shape) < ORB_MIN_SIDE:
        return np.zeros(0, np.int64), np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
    found, descriptors = _orb(DETECTED_KEYPOINTS).compute(gray, keypoints)
    if descriptors is None or not found:
        return np.zeros(0, np.int64), np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
    return (np.array([point.class_id for point in found], np.int64),
            np.ascontiguousarray(descriptors[:, :DESCRIPTOR_BYTES]))


def _mirrored_keypoints(keypoints: list[Any], width: int) -> list[Any]:
    """The frame's keypoints as they lie in its mirror image: each point mirrored within its own
    pyramid level (a level is round(width / scale) wide), its orientation mirrored. ORB's pyramid
    and orientation measure are symmetric, so the descriptors computed there are bit for bit those
    ORB computes at its own keypoints of the mirror image (13,914 compared on 30 CALTECH-101
    queries; tests/test_features.py). Detecting again would choose the same keypoints for most
    photos but not all (FAST's and the ranking's tie-breaks are not symmetric: 126 of 200
    CALTECH-101 photos the same set, the others 82 % or more of it), and costs twice as much;
    flipped copies were found as often either way (gather.py --seed 2026 and 7: 100 and 99.6 %).
    """
    import cv2

    factor = _orb(DETECTED_KEYPOINTS).getScaleFactor()
    mirrored = []
    for point in keypoints:
        scale = factor ** point.octave
        x = (round(width / scale) - 1 - point.pt[0] / scale) * scale
        mirrored.append(cv2.KeyPoint(x, point.pt[1], point.size, (180.0 - point.angle) % 360.0,
                                     point.response, point.octave, point.class_id))
    return mirrored


def chroma_grid(rgb: np.ndarray) -> np.ndarray:
    """The picture's colour on a CHROMA_SIDE grid: red - green and (red + green) / 2 - blue,
    halved to fit int8. Zero for gray pixels, whatever their brightness. A fourth channel (a
    query's gray) is ignored."""
    import cv2

    small = cv2.resize(rgb, (CHROMA_SIDE, CHROMA_SIDE), interpolation=cv2.INTER_AREA)
    return opponent(small.astype(np.float32)).round().clip(-128, 127).astype(np.int8)


def opponent(rgb: np.ndarray) -> np.ndarray:
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([(red - green) / 2, ((red + green) / 2 - blue) / 2], axis=-1)


def _spread(points: np.ndarray, strength: np.ndarray, shape: tuple[int, ...],
            keep: int) -> np.ndarray:
    """Indices of `keep` keypoints, most important first: the strongest of each grid cell in
    turn, then the next."""
    height, width = shape[:2]
    column = np.minimum((points[:, 0] * GRID / max(width, 1)).astype(int), GRID - 1)
    row = np.minimum((points[:, 1] * GRID / max(height, 1)).astype(int), GRID - 1)
    cell = row * GRID + column
    order = np.lexsort((-strength, cell))  # by cell, strongest first within each
    rank = np.empty(len(points), np.int64)
    starts = np.searchsorted(cell[order], np.arange(GRID * GRID))
    rank[order] = np.arange(len(points)) - starts[cell[order]]  # 0 = strongest of its cell
    # Round by round (each cell's best, then each cell's second...), strongest first per round.
    return np.lexsort((-strength, rank))[:keep]


def stored_features(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """What index.py stores for one image file."""
    return extract(read_frame(path, max_pixels), STORED_KEYPOINTS).to_bytes()


def query_features(frame: np.ndarray, magnified: float = 1.0,
                   as_came: float | None = None) -> list[FeatureSet]:
    """A query's looks: its features and its mirror image's (mirrored copies are found without
    --mirror), each knowing the query's sharpness as it came (`as_came`, else the frame's) and
    how many times larger than the query as it came the frame is (`magnified`: a frame cut of
    its bars and brought back to its size, which resampling blurs, not the picture)."""
    return _with_sharpness(_looks(frame), frame, magnified, as_came)


def enlarged_features(frame: np.ndarray, magnified: float = 1.0,
                      as_came: float | None = None) -> list[FeatureSet]:
    """The looks of a small query enlarged to MAX_SIDE (ENLARGED_BELOW), or none; their sharpness
    is the query's as it came, with how much larger they are (see query_features)."""
    if max(frame.shape[:2]) >= ENLARGED_BELOW:
        return []
    return _with_sharpness(_looks(_enlarged(frame)), frame,
                           magnified * MAX_SIDE / max(frame.shape[:2]), as_came)


def _with_sharpness(looks: list[FeatureSet], frame: np.ndarray, magnified: float,
                    as_came: float | None) -> list[FeatureSet]:
    measured = sharpness(_split(frame)[1]) if as_came is None else as_came
    return [replace(look, sharpness=measured, magnified=magnified) for look in looks]


# A query whose analysis frame's long side is under this many pixels is also looked at enlarged
# to MAX_SIDE. ORB finds a picture's corners again at another scale through its pyramid, but a
# stored frame of 300 pixels keeps its 72 keypoints mostly on the finest levels, which a copy at
# half size does not have: on 40 CALTECH-101 photos, copies at 0.75 / 0.5 / 0.33 of their size
# were verified 33 / 12 / 0 times as they are, 40 / 38 / 37 times enlarged (and the hash alone,
# at distance 0, found them). Enlarged as well, not instead: a small stored picture and its copy
# match best as they are.
ENLARGED_BELOW = 272


def _enlarged(frame: np.ndarray) -> np.ndarray:
    import cv2

    height, width = frame.shape[:2]
    scale = MAX_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC)


# A padded copy as the query holds its picture smaller than the frame (15 % bars on each side:
# 70 % of it), and a stored frame's 72 keypoints sit mostly on ORB's finest levels, which the
# smaller picture does not have: with the copies as the queries (bench/upload_direction.py
# --seed 2026), 6 pad copies of 500 and 10 combos holding a pad were never among the features'
# candidates, or verified with too few inliers. A query that verified nothing is searched again
# without its bars (features/search.py). Bars are runs of lines from an edge inwards, each
# line one colour (every sample within BAR_TOLERANCE of the edge line's median, per channel) and
# the colour the edge line's; at least BAR_MIN_SHARE of the side (and 2 lines) to count, at most
# so much that BAR_KEEP_SHARE of each side is left.
BAR_TOLERANCE = 10
BAR_MIN_SHARE = 0.02
BAR_KEEP_SHARE = 0.5


def without_bars(frame: np.ndarray) -> tuple[np.ndarray, float] | None:
    """The frame with the flat bars at its edges cut off (a border, a letterbox), brought back to
    its long side, and how many times larger that made the picture; None when it has none."""
    import cv2

    height, width = frame.shape[:2]
    pixels = frame.astype(np.int16).reshape(height, width, -1)
    top = _bar(pixels, height)
    bottom = _bar(pixels[::-1], height)
    left = _bar(pixels.transpose(1, 0, 2), width)
    right = _bar(pixels.transpose(1, 0, 2)[::-1], width)
    if not (top or bottom or left or right):
        return None
    kept_height, kept_width = height - top - bottom, width - left - right
    if kept_height < BAR_KEEP_SHARE * height or kept_width < BAR_KEEP_SHARE * width:
        return None  # mostly flat: a drawing on a blank page, not a padded picture
    inside = frame[top:height - bottom, left:width - right]
    scale = max(height, width) / max(kept_height, kept_width)
    size = (max(1, round(kept_width * scale)), max(1, round(kept_height * scale)))
    return cv2.resize(np.ascontiguousarray(inside), size, interpolation=cv2.INTER_CUBIC), scale


def _bar(lines: np.ndarray, side: int) -> int:
    """How many lines, from the first inwards, form a flat bar (0: none, or too thin to be one)."""
    edge = np.median(lines[0], axis=0)
    count = 0
    for line in lines[: int(side * (1 - BAR_KEEP_SHARE))]:
        if np.abs(line - edge).max() > BAR_TOLERANCE:
            break
        count += 1
    return count if count >= max(2, BAR_MIN_SHARE * side) else 0


def sharpened_features(frame: np.ndarray) -> list[FeatureSet]:
    """The query's looks sharpened by each of SHARPEN_MASKS, for a blurred copy."""
    return [_look(*_split(_sharpened(frame, sigma, amount)))[0] for sigma, amount in SHARPEN_MASKS]


# A blurred copy as the query has lost the fine corners on which a sharp stored picture keeps its
# 72 keypoints (ORB's strongest are the finest), so too few of its keypoints find a partner: of
# 200 CALTECH-101 copies blurred by a radius of 1 to 2 pixels, 8 were not verified against their
# originals (all at hash distance 0 to 2), while the other way round (the sharp original as the
# query, 500 keypoints, against the blurred copy's 72) 199 were. An unsharp mask (Gaussian sigma,
# amount) puts corners back near where they were: 7 of the 8 verified with the first mask below.
# Asked only of the hash's candidates that no other look aligned with (features/search.py), it
# newly verified 2 of 222 such pairs of neighbouring CALTECH-101 photos (two catalogue
# motorbikes, two drawings of a stop sign): docs/features.md. A review later found 10 of 500
# blurred copies of gather.py --seed 7373 unanswered (fine detail: banknotes, text, a ferry):
# a finer, stronger mask, asked when the first does not align either, verifies 7 of them. The
# blur copies of three samples (--seed 7373, 9191, 2727) that verify as they are or sharpened:
# 490, 495 and 495 of 500 with the first mask, 497, 497 and 498 with both; of the 188 ordered
# pairs of CALTECH-101 photos within 4 bits of each other (BACKGROUND_Google left out) that no
# other look aligns, the second verifies none (the first, the 2 above). The second alone lost
# captioned copies that the first verifies (3 of 500 text copies of --seed 7373).
SHARPEN_MASKS = ((2.0, 1.5), (1.0, 4.0))


# The other way round: a sharp query against a stored copy that was blurred, and edited besides
# (a combo: blurred and captioned, padded, its contrast changed) keeps too few of the sharp
# query's corners in common with the copy's 72 stored keypoints. The query blurred as well (a
# Gaussian of this sigma, about gather.py's largest blur) is asked last, only of the hash's
# candidates that neither the query nor its sharpened looks aligned with: of the combos with a
# blur of two samples (--seed 6553 and 2026, the originals as the queries) it verified 3 of 4 and
# 2 of 3 such copies (search.py --evaluate's combo recall on 6553: 94.6 to 95.0 %), and of the 169
# ordered pairs of CALTECH-101 photos within 4 bits of each other (BACKGROUND_Google left out)
# that no other look aligns, 1 (two drawings of a stop sign, `stop_sign/image_0022` ~ `0056`).
SOFTEN_SIGMA = 2.0


def softened_features(frame: np.ndarray) -> list[FeatureSet]:
    """The query's look blurred by SOFTEN_SIGMA, for a blurred stored copy."""
    import cv2

    return [_look(*_split(cv2.GaussianBlur(frame, (0, 0), SOFTEN_SIGMA)))[0]]


# A caption or watermark across the query: its corners, the strongest there are, take most of
# the query's keypoints, and those near the stored original's are too few to align with it. When
# BAND_SHARE of the query's keypoints lie in one horizontal band of at most BAND_HEIGHT of its
# height, a later look is made of the rest of the picture alone.
BAND_SHARE = 0.6
BAND_HEIGHT = 0.15
MIN_BAND_KEYPOINTS = 20


def beyond_a_band_features(frame: np.ndarray, look: FeatureSet) -> list[FeatureSet]:
    """The query's look without the band of a caption across it (its keypoints detected on the
    rest of the picture), or none where no band holds most of the keypoints of `look`, the
    query's look as it is (its sharpness kept: the fine detail is read as for that look)."""
    if len(look.points) < MIN_BAND_KEYPOINTS:
        return []
    rows = np.sort(look.points[:, 1])
    reach = BAND_HEIGHT * look.height
    held = np.searchsorted(rows, rows + reach, side="right") - np.arange(len(rows))
    first = int(np.argmax(held))
    if held[first] < BAND_SHARE * len(rows):
        return []
    colour, gray = _split(frame)
    # The band and a descriptor's patch on each side of it: no keypoint described from it.
    mask = np.full(gray.shape, 255, np.uint8)
    mask[max(0, int(rows[first]) - ORB_PATCH):int(np.ceil(rows[first] + reach)) + ORB_PATCH + 1] = 0
    beyond, found = _look(colour, gray, mask)
    return [replace(beyond, sharpness=look.sharpness, magnified=look.magnified)] if found else []


def _sharpened(frame: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    import cv2

    pixels = frame.astype(np.float32)
    detail = pixels - cv2.GaussianBlur(pixels, (0, 0), sigma)
    return np.clip(pixels + amount * detail, 0, 255).astype(np.uint8)


def _look(colour: np.ndarray | None, gray: np.ndarray,
          mask: np.ndarray | None = None) -> tuple[FeatureSet, list[Any]]:
    """A query's look of a frame (its features, the frame kept) and the keypoints it holds
    (detected where `mask`, if given, is not 0)."""
    found, descriptors = _describe(gray, _choose(gray, QUERY_KEYPOINTS, ranked=True, mask=mask))
    return _feature_set(gray, colour, found, descriptors, keep_frame=True), found


def _looks(frame: np.ndarray) -> list[FeatureSet]:
    """The picture's look and its mirror image's."""
    colour, gray = _split(frame)
    look, found = _look(colour, gray)
    looks = [look]
    flipped = np.ascontiguousarray(gray[:, ::-1])
    flipped_colour = None if colour is None else np.ascontiguousarray(colour[:, ::-1])
    mirrored, mirrored_descriptors = _describe(flipped, _mirrored_keypoints(found, gray.shape[1]))
    looks.append(replace(
        _feature_set(flipped, flipped_colour, mirrored, mirrored_descriptors, keep_frame=True),
        mirrored=True))
    return looks
