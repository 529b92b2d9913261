"""From an image to its local features: ORB keypoints and descriptors, plus a tiny thumbnail.

A stored image keeps few features (STORED_KEYPOINTS, the strongest) so that it costs under 4 KB in
the store; a query, computed on the fly, keeps many (QUERY_KEYPOINTS), so that the stored ones find
their partners even in a crop. The 32 x 32 grayscale thumbnail is what verification compares after
aligning the two pictures (see verify.py): keypoints alone match look-alikes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..core.hashing import DEFAULT_MAX_PIXELS, normalise, open_image
from ..errors import ImageError

# Bumped whenever extraction changes what it stores; stores record it and refuse another.
# 2: a 28 x 28 thumbnail and the 8 x 8 colour grid.
FEATURE_VERSION = 2

# Pictures are analysed with their long side at most this: CALTECH-101 photos (about 300 x 200)
# keep every pixel, and a 12-megapixel photo costs no more than a small one.
MAX_SIDE = 320
# 72 stored keypoints: 72 x (32 descriptor + 4 position) bytes + a 784-byte thumbnail + 128 bytes
# of colour is 3,511 bytes, under 4 KB in the store with its path and SQLite's overhead.
# Measured on 1,300 CALTECH-101 copies of 13 edit kinds (seed 111): every copy but a few combos
# kept at least 18 RANSAC inliers with 72 stored and 500 query keypoints.
STORED_KEYPOINTS = 72
QUERY_KEYPOINTS = 500
# Stored keypoints are chosen among this many, spread over a GRID x GRID grid (see extract()).
DETECTED_KEYPOINTS = 300
GRID = 4
THUMBNAIL_SIDE = 28
# Colour, coarsely: two opponent channels (red - green, yellow - blue) on an 8 x 8 grid, 128 bytes.
CHROMA_SIDE = 8
# Keypoint positions are stored as fixed point, 1/32 pixel, in uint16 (MAX_SIDE * 32 < 65,536).
POSITION_SCALE = 32
DESCRIPTOR_BYTES = 32

_HEADER = struct.Struct("<BHHH")  # version, frame width, frame height, keypoint count


@dataclass(frozen=True, slots=True)
class FeatureRecipe:
    """How features are made; two feature sets are comparable only under the same recipe."""

    detector: str = "orb"
    stored_keypoints: int = STORED_KEYPOINTS
    max_side: int = MAX_SIDE
    thumbnail_side: int = THUMBNAIL_SIDE
    version: int = FEATURE_VERSION

    def describe(self) -> str:
        return (f"{self.detector}-{self.stored_keypoints} (long side {self.max_side},"
                f" v{self.version})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def describe_recorded(data: dict[str, Any]) -> str:
        """A recorded recipe in words, even one this version cannot read."""
        try:
            return FeatureRecipe.from_dict(data).describe()
        except (KeyError, TypeError, ValueError):
            return json.dumps(data, sort_keys=True)

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
    descriptors: np.ndarray  # (n, 32) uint8, ORB's 256 bits
    thumbnail: np.ndarray  # (THUMBNAIL_SIDE, THUMBNAIL_SIDE) uint8, the frame squeezed
    chroma: np.ndarray  # (CHROMA_SIDE, CHROMA_SIDE, 2) int8: see chroma_grid
    gray: np.ndarray | None = None  # the whole frame; queries only (verification warps it)
    colour: np.ndarray | None = None  # the whole frame in RGB; colour queries only

    def to_bytes(self) -> bytes:
        positions = np.clip(np.rint(self.points * POSITION_SCALE), 0, 65535).astype("<u2")
        return (_HEADER.pack(FEATURE_VERSION, self.width, self.height, len(self.points))
                + positions.tobytes() + np.ascontiguousarray(self.descriptors).tobytes()
                + np.ascontiguousarray(self.thumbnail).tobytes()
                + np.ascontiguousarray(self.chroma, dtype=np.int8).tobytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureSet:
        """Parse a stored feature set; a malformed one (a store from elsewhere) is a ValueError."""
        if len(data) < _HEADER.size:
            raise ValueError("feature record too short")
        version, width, height, count = _HEADER.unpack_from(data)
        if version != FEATURE_VERSION:
            raise ValueError(f"feature record version {version}, expected {FEATURE_VERSION}")
        thumb = THUMBNAIL_SIDE * THUMBNAIL_SIDE
        colour = CHROMA_SIDE * CHROMA_SIDE * 2
        expected = _HEADER.size + count * (4 + DESCRIPTOR_BYTES) + thumb + colour
        if len(data) != expected or width == 0 or height == 0:
            raise ValueError(f"feature record of {len(data)} bytes, expected {expected}")
        offset = _HEADER.size
        points = np.frombuffer(data, "<u2", count * 2, offset).reshape(count, 2)
        offset += count * 4
        descriptors = np.frombuffer(data, np.uint8, count * DESCRIPTOR_BYTES, offset)
        offset += count * DESCRIPTOR_BYTES
        thumbnail = np.frombuffer(data, np.uint8, thumb, offset)
        offset += thumb
        chroma = np.frombuffer(data, np.int8, colour, offset)
        return cls(width, height, points.astype(np.float32) / POSITION_SCALE,
                   descriptors.reshape(count, DESCRIPTOR_BYTES),
                   thumbnail.reshape(THUMBNAIL_SIDE, THUMBNAIL_SIDE),
                   chroma.reshape(CHROMA_SIDE, CHROMA_SIDE, 2))


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


def _orb(keypoints: int) -> Any:
    import cv2

    if keypoints not in _detectors:  # one per process: creating it costs more than small images
        # Smaller borders and patches than OpenCV's defaults (31): on 300 x 200 photos the default
        # leaves a 31-pixel margin without keypoints, the very part a crop keeps or a pad moves.
        _detectors[keypoints] = cv2.ORB_create(nfeatures=keypoints, edgeThreshold=15,
                                               patchSize=15, fastThreshold=10)
    return _detectors[keypoints]


def extract(frame: np.ndarray, keypoints: int, *, keep_frame: bool = False) -> FeatureSet:
    """ORB features of one analysis frame, at most `keypoints`, spread over the picture."""
    import cv2

    colour = frame if frame.ndim == 3 else None
    if colour is not None:
        frame = cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)
    # Detect many, keep the strongest of each part of the picture: the strongest overall gather
    # on a caption or watermark (text corners are the strongest there are), which the original
    # does not have, and a crop then loses them all together.
    found, descriptors = _orb(max(keypoints, DETECTED_KEYPOINTS)).detectAndCompute(frame, None)
    if descriptors is None or not found:
        points = np.zeros((0, 2), np.float32)
        descriptors = np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
    else:
        points = np.array([point.pt for point in found], np.float32).reshape(-1, 2)
        if len(found) > keypoints:
            chosen = _spread(points, np.array([point.response for point in found]),
                             frame.shape, keypoints)
            points, descriptors = points[chosen], descriptors[chosen]
    height, width = frame.shape
    thumbnail = cv2.resize(frame, (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA)
    chroma = (chroma_grid(colour) if colour is not None
              else np.zeros((CHROMA_SIDE, CHROMA_SIDE, 2), np.int8))
    return FeatureSet(width, height, points, descriptors, thumbnail, chroma,
                      frame if keep_frame else None, colour if keep_frame else None)


def chroma_grid(rgb: np.ndarray) -> np.ndarray:
    """The picture's colour on a CHROMA_SIDE grid: red - green and (red + green) / 2 - blue,
    halved to fit int8. Zero for gray pixels, whatever their brightness."""
    import cv2

    small = cv2.resize(rgb, (CHROMA_SIDE, CHROMA_SIDE), interpolation=cv2.INTER_AREA)
    return opponent(small.astype(np.float32)).round().clip(-128, 127).astype(np.int8)


def opponent(rgb: np.ndarray) -> np.ndarray:
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([(red - green) / 2, ((red + green) / 2 - blue) / 2], axis=-1)


def _spread(points: np.ndarray, strength: np.ndarray, shape: tuple[int, ...],
            keep: int) -> np.ndarray:
    """Indices of `keep` keypoints: the strongest of each grid cell in turn, then the next."""
    height, width = shape[:2]
    column = np.minimum((points[:, 0] * GRID / max(width, 1)).astype(int), GRID - 1)
    row = np.minimum((points[:, 1] * GRID / max(height, 1)).astype(int), GRID - 1)
    cell = row * GRID + column
    order = np.lexsort((-strength, cell))  # by cell, strongest first within each
    rank = np.empty(len(points), np.int64)
    starts = np.searchsorted(cell[order], np.arange(GRID * GRID))
    rank[order] = np.arange(len(points)) - starts[cell[order]]  # 0 = strongest of its cell
    # Round by round (each cell's best, then each cell's second...), strongest first per round.
    chosen = np.lexsort((-strength, rank))[:keep]
    return np.sort(chosen)


def stored_features(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """What index.py stores for one image file."""
    return extract(read_frame(path, max_pixels), STORED_KEYPOINTS).to_bytes()


def query_features(frame: np.ndarray, *, mirror: bool = True) -> list[FeatureSet]:
    """A query's features, and its mirror image's: mirrored copies are found without --mirror."""
    looks = [extract(frame, QUERY_KEYPOINTS, keep_frame=True)]
    if mirror:
        looks.append(extract(np.ascontiguousarray(frame[:, ::-1]), QUERY_KEYPOINTS,
                             keep_frame=True))
    return looks

