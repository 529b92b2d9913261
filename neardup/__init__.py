"""neardup: find near-duplicate images by perceptual hashing.

The Python API (see neardup.api) is importable from here: index_folder, open_store, ImageStore,
Found, DuplicateGroup, and the errors it raises. It is loaded on first use, so `import neardup`
alone (as a Dask worker's version check does) does not import Pillow or numpy.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = ["DatasetError", "DuplicateGroup", "Found", "ImageError", "ImageStore", "NeardupError",
           "StoreError", "__version__", "code_fingerprint", "index_folder", "open_store"]

_API = {"DuplicateGroup", "Found", "ImageStore", "index_folder", "open_store"}
_ERRORS = {"DatasetError", "ImageError", "NeardupError", "StoreError"}

if TYPE_CHECKING:
    from .api import DuplicateGroup, Found, ImageStore, index_folder, open_store
    from .errors import DatasetError, ImageError, NeardupError, StoreError


@functools.cache
def code_fingerprint() -> str:
    """SHA-256 over this package's .py files (their paths and bytes), once per process: a Dask
    cluster compares it with the client's, since __version__ stays the same over many commits.
    The same for an editable install and a wheel of the same files."""
    import hashlib
    from pathlib import Path

    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    if name in _ERRORS:
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'neardup' has no attribute {name!r}")
