"""Local features: find cropped, padded, rotated and mirrored copies, and verify every match.

Optional (requirements-features.txt: OpenCV and FAISS). `require()` turns a missing library into
one line saying what to install; nothing here is imported by the hash-only path.
"""

from __future__ import annotations

from ..errors import NeardupError, install_hint


def require() -> None:
    """Raise one clear line when the optional libraries are missing."""
    try:
        import cv2  # noqa: F401
        import faiss  # noqa: F401
    except ImportError as error:
        raise NeardupError(f"local features need OpenCV and FAISS: {install_hint('features')}"
                           f" ({error.name} is missing)") from None
