"""Local features: find cropped, padded, rotated and mirrored copies, and verify every match.

Optional (requirements-features.txt: OpenCV and FAISS). `require()` turns a missing library into
one line saying what to install; nothing here is imported by the hash-only path.
"""

from __future__ import annotations

import threading
from typing import Any

from ..errors import NeardupError, install_hint

_this_thread = threading.local()


def require() -> None:
    """Raise one clear line when the optional libraries are missing."""
    try:
        import cv2  # noqa: F401
        import faiss  # noqa: F401
    except ImportError as error:
        raise NeardupError(f"local features need OpenCV and FAISS: {install_hint('features')}"
                           f" ({error.name} is missing)") from None


def faiss_in_this_thread() -> Any:
    """The faiss module, its OpenMP kept to one thread in the calling thread.

    The checker answers from several threads and index.py runs workers: FAISS's own OpenMP
    threads only fight them for the same cores (measured 60 times slower on 2 busy cores). The
    limit is each thread's own (libgomp keeps it per thread), so a limit set once where the index
    was loaded left every decode thread of the checker and every caller of the API searching
    with one OpenMP thread per core (a review: 1.5 answers/s on a busy machine, 50 with the
    limit). Every function that calls FAISS takes it from here."""
    import faiss

    if not getattr(_this_thread, "limited", False):
        faiss.omp_set_num_threads(1)
        _this_thread.limited = True
    return faiss
