"""neardup: find near-duplicate images by perceptual hashing.

The Python API (see neardup.api) is importable from here: index_folder, open_store, ImageStore,
Found, DuplicateGroup, and the errors it raises. It is loaded on first use, so `import neardup`
alone (as a Dask worker's version check does) does not import Pillow or numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = ["DatasetError", "DuplicateGroup", "Found", "ImageError", "ImageStore", "NeardupError",
           "StoreError", "__version__", "index_folder", "open_store"]

_API = {"DuplicateGroup", "Found", "ImageStore", "index_folder", "open_store"}
_ERRORS = {"DatasetError", "ImageError", "NeardupError", "StoreError"}

if TYPE_CHECKING:
    from .api import DuplicateGroup, Found, ImageStore, index_folder, open_store
    from .errors import DatasetError, ImageError, NeardupError, StoreError


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    if name in _ERRORS:
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'neardup' has no attribute {name!r}")
