"""Are two pictures one photograph? The evidence behind the other matches that README "Verified
matches" calls the same photo or different photos: each pair aligned at full resolution (ORB and
RANSAC, then refined by OpenCV's ECC to a full affine transform), then the correlation of their
gradient magnitudes where both are present. Copies that gather.py makes (resize, jpeg, crop,
rotate, combo) reach 0.93 to 1.0; two photographs of one motorbike model shot the same way stay
below.

    python bench/same_photo.py A.jpg B.jpg [A2.jpg B2.jpg ...]
"""

from __future__ import annotations

import sys

import _setup  # noqa: F401  (puts the project on the import path)
import numpy as np


def aligned_gradient_correlation(first: str, second: str) -> float:
    import cv2

    a = cv2.imread(first, cv2.IMREAD_GRAYSCALE)
    b = cv2.imread(second, cv2.IMREAD_GRAYSCALE)
    if a is None or b is None:
        raise SystemExit(f"cannot read {first if a is None else second}")
    orb = cv2.ORB_create(2000)
    keys_a, desc_a = orb.detectAndCompute(a, None)
    keys_b, desc_b = orb.detectAndCompute(b, None)
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(desc_a, desc_b, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.8 * n.distance]
    if len(good) < 4:
        return float("nan")
    start, _ = cv2.estimateAffinePartial2D(
        np.float32([keys_a[m.queryIdx].pt for m in good]),
        np.float32([keys_b[m.trainIdx].pt for m in good]), method=cv2.RANSAC,
        ransacReprojThreshold=2)
    if start is None:
        return float("nan")
    # ECC's warp maps the template (b) onto the input (a): the inverse of the one found.
    warp = cv2.invertAffineTransform(start).astype(np.float32)
    try:
        _, warp = cv2.findTransformECC(b.astype(np.float32), a.astype(np.float32), warp,
                                       cv2.MOTION_AFFINE, (cv2.TERM_CRITERIA_EPS
                                                           | cv2.TERM_CRITERIA_COUNT, 100, 1e-6),
                                       None, 5)
    except cv2.error:
        pass  # not converged: the RANSAC alignment stands
    size = (b.shape[1], b.shape[0])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    moved = cv2.warpAffine(a.astype(np.float32), warp, size, flags=flags)
    inside = cv2.warpAffine(np.ones_like(a), warp, size,
                            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0
    inside = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0

    def edges(picture: np.ndarray) -> np.ndarray:
        smooth = cv2.GaussianBlur(picture, (0, 0), 1)
        return np.hypot(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))

    x, y = edges(moved)[inside], edges(b.astype(np.float32))[inside]
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def main() -> int:
    paths = sys.argv[1:]
    if not paths or len(paths) % 2:
        print(__doc__)
        return 2
    for first, second in zip(paths[0::2], paths[1::2], strict=True):
        print(f"{aligned_gradient_correlation(first, second):.3f}  {first}  {second}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
