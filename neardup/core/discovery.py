"""Finding the image files in a folder tree.

A file is a candidate when its extension belongs to a raster format neardup reads
(hashing.RASTER_FORMATS), or when it has no extension at all
(CALTECH-101 ships `BACKGROUND_Google/tmp`, a JPEG). Other files (a manifest.csv, a README) are
passed over silently; a candidate that turns out not to be an image is reported by whoever hashes it.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image

from ..errors import NeardupError, looks_unset
from .hashing import readable_formats


def dataset_folder(dataset: str) -> str:
    """The folder a --dataset names: a path as given, or a file:// URL of this machine, decoded
    (Path.as_uri() writes a space as %20; file://localhost/ is this machine too). An empty one
    is refused: it would be the current folder, whatever that holds."""
    if looks_unset(dataset):
        raise NeardupError("the dataset folder's path is empty (an unset shell variable?)")
    if not dataset.startswith("file://"):
        return dataset
    url = urllib.parse.urlsplit(dataset)
    if url.netloc not in ("", "localhost"):
        raise NeardupError(f"{dataset}: a file:// URL of another host ({url.netloc}); give the"
                           " folder as this machine sees it")
    if url.query or url.fragment:
        raise NeardupError(f"{dataset}: a file:// URL with a ? or # (write them %3F and %23 in"
                           " a folder's name)")
    # File names need not be UTF-8: percent-encoded bytes come back as they were.
    return urllib.parse.unquote(url.path, errors="surrogateescape")


@dataclass(frozen=True, slots=True)
class FoundFile:
    """A candidate image: its path relative to the root (always '/'-separated) and what stat said.

    inode and ctime tell a replaced file (or one rewritten and given its old mtime back) from an
    unchanged one; 0 when unknown."""

    relpath: str
    path: str
    size: int
    mtime_ns: int
    inode: int = 0
    ctime_ns: int = 0


@dataclass(frozen=True, slots=True)
class Skipped:
    """Something under the root that could not even be looked at, and why.

    relpath: set when what is there was not seen rather than found gone (a folder that cannot be
    listed, a file that cannot be stat'ed): the index keeps its entries at or under it."""

    path: str
    reason: str
    relpath: str | None = None


# Extensions of formats read only with a plug-in or a Pillow build that may be missing: such files
# are candidates all the same, so that each is reported as failed with what to install, rather
# than passed over like a manifest.csv (an iPhone library is mostly .heic).
OPTIONAL_FORMAT_EXTENSIONS = frozenset((".heic", ".heif", ".hif", ".avif", ".avifs"))
# Why a link to a folder is skipped (a link cycle would make the walk endless); callers that
# explain an empty walk look for it.
LINK_TO_FOLDER = "link to a folder, not followed"


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Extensions of the raster formats neardup reads, and of the optional ones (HEIC, AVIF)."""
    readable = set(readable_formats())
    return OPTIONAL_FORMAT_EXTENSIONS | frozenset(
        ext.lower() for ext, name in Image.registered_extensions().items() if name in readable)


def is_candidate(name: str) -> bool:
    if name.startswith("."):
        return False  # .DS_Store, editors' swap files, our own temporary files
    extension = os.path.splitext(name)[1].lower()
    return extension == "" or extension in image_extensions()


def walk_images(root: str) -> Iterator[FoundFile | Skipped]:
    """Yield every candidate image under root, sorted by path, and what could not be read.

    Links to files are followed (a library of links is common); links to folders are not, so a
    link cycle cannot make the walk endless.
    """
    pending = [""]
    while pending:
        reldir = pending.pop()
        folder = os.path.join(root, reldir) if reldir else root
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as error:
            yield Skipped(folder, f"cannot list folder ({error.strerror or error})", reldir)
            continue
        subfolders = []
        for entry in entries:
            relpath = f"{reldir}/{entry.name}" if reldir else entry.name
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(relpath)
                    continue
            except OSError:
                pass
            if not is_candidate(entry.name):
                continue
            try:
                info = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                yield Skipped(entry.path, "broken link" if entry.is_symlink() else "vanished")
                continue
            except OSError as error:
                yield Skipped(entry.path, f"cannot stat ({error.strerror or error})", relpath)
                continue
            if stat.S_ISDIR(info.st_mode):
                yield Skipped(entry.path, LINK_TO_FOLDER)
                continue
            if not stat.S_ISREG(info.st_mode):
                yield Skipped(entry.path, "not a regular file")
                continue
            yield FoundFile(relpath, entry.path, info.st_size, info.st_mtime_ns, info.st_ino,
                            info.st_ctime_ns)
        # Popping from the end: push in reverse so folders come out in name order.
        pending.extend(reversed(subfolders))
