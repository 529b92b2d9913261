"""Where the source images come from: a folder, an archive, or the official CALTECH-101 download.

Whatever the source, the result is a folder of images. Archives (and the download) are unpacked
once into the cache and reused; the official archive nests `101_ObjectCategories.tar.gz` inside a
zip, so archives found inside a folder that holds no images are unpacked too, into the cache as
well: a --source folder is only ever read, never written to.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from ..core.discovery import LINK_TO_FOLDER, FoundFile, Skipped, walk_images
from ..core.names import shown_path
from ..errors import DatasetError
from .archives import Limits, extract, is_archive
from .download import download

CALTECH101_URL = "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip?download=1"
CALTECH101_MD5 = "3138e1922a9193bfa496528edbbc45d0"
CALTECH101_ARCHIVE_NAME = "caltech-101.zip"
CALTECH101_FOLDER = "101_ObjectCategories"


def default_cache_dir() -> str:
    configured = os.environ.get("NEARDUP_CACHE")
    if configured:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "neardup")


def resolve_source(
    source: str | None,
    cache_dir: str,
    *,
    url: str = CALTECH101_URL,
    md5: str = CALTECH101_MD5,
    limits: Limits = Limits(),
    progress: bool = False,
    report: Callable[[str], None] = lambda line: None,
) -> str:
    """Return a folder holding the source images, downloading or unpacking as needed."""
    if source is None:
        archive = download(url, os.path.join(cache_dir, CALTECH101_ARCHIVE_NAME), md5,
                           progress=progress, report=report)
        return _image_root(_unpacked(archive, cache_dir, limits, report), cache_dir, limits,
                           report)
    if os.path.isdir(source):
        return _image_root(source, cache_dir, limits, report)
    if os.path.isfile(source) and is_archive(source):
        return _image_root(_unpacked(source, cache_dir, limits, report), cache_dir, limits, report)
    if os.path.exists(source):
        raise DatasetError(f"{source}: not a folder or a .zip / .tar / .tar.gz archive")
    raise DatasetError(f"{source}: no such file or folder")


def _unpacked(archive: str, cache_dir: str, limits: Limits, report: Callable[[str], None]) -> str:
    """The cache folder holding this archive's contents, unpacked on first use."""
    info = os.stat(archive)
    identity = f"{os.path.abspath(archive)}:{info.st_size}:{info.st_mtime_ns}"
    tag = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    name = os.path.basename(archive)
    target = os.path.join(cache_dir, "unpacked", f"{name}-{tag}")
    if not os.path.isdir(target):
        report(f"unpacking {archive}")
        extract(archive, target, limits)
    return target


def _image_root(folder: str, cache_dir: str, limits: Limits,
                report: Callable[[str], None]) -> str:
    """Narrow a tree down to its image folder, unpacking nested archives (into the cache) if needed."""
    named = _find_folder(folder, CALTECH101_FOLDER)
    if named is not None:
        return named
    if _has_images(folder):
        return folder
    for dirpath, _dirs, files in sorted(os.walk(folder)):
        # The official zip also holds Annotations.tar: prefer the archive named for the images.
        for name in sorted(files, key=lambda name: (CALTECH101_FOLDER not in name, name)):
            if is_archive(name):
                inner = os.path.join(dirpath, name)
                return _image_root(_unpacked(inner, cache_dir, limits, report), cache_dir, limits,
                                   report)
    raise DatasetError(f"{folder}: holds no images{_links_left_out(folder)}")


def _links_left_out(folder: str) -> str:
    """What the walk passed over that may be the images: links to folders are never followed
    (a link cycle would make the walk endless), so a folder of such links holds no images."""
    links = [entry.path for entry in walk_images(folder)
             if isinstance(entry, Skipped) and entry.reason == LINK_TO_FOLDER]
    if not links:
        return ""
    shown = ", ".join(shown_path(os.path.relpath(link, folder)) for link in links[:3])
    more = f" and {len(links) - 3} more" if len(links) > 3 else ""
    return f" (it holds links to folders, which are not followed: {shown}{more})"


def _find_folder(root: str, name: str, depth: int = 3) -> str | None:
    if os.path.basename(os.path.normpath(root)) == name:
        return root
    if depth == 0:
        return None
    try:
        entries = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except OSError:
        return None
    for entry in entries:
        found = _find_folder(os.path.join(root, entry), name, depth - 1)
        if found is not None:
            return found
    return None


def _has_images(folder: str) -> bool:
    return any(isinstance(entry, FoundFile) for entry in walk_images(folder))
