"""Writing a page, a sheet or a report file whole, or not at all, and never over what is not ours.

Each is written to a temporary file beside its place and renamed over it once complete: a full
disk left a truncated page (its script cut off, its box of names to delete half there) where the
complete page of an earlier run had been, and a contact sheet of 0 bytes.

The rename replaces whatever was at the path, so what is there is checked first (a review:
`--html db.shelve` replaced the store being read, `--montage` a query photo, and, run as root,
`--montage /dev/full` the device itself). A page replaces only an HTML page; a contact sheet only
a sheet neardup drew, which carries a mark (`MARK`) in its PNG text, JPEG or GIF comment, WebP
XMP or TIFF description (a BMP, say, has no place for one: a sheet there is drawn once).
"""

from __future__ import annotations

import errno
import os
import stat

from PIL import Image

# Written into every contact sheet (a PNG's "Software" text, a JPEG's comment), so that a run
# again may replace its own sheet and no other picture.
MARK = "neardup contact sheet"
MARK_XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
            '22-rdf-syntax-ns#"><rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
            f' xmp:CreatorTool="{MARK}"/></rdf:RDF></x:xmpmeta>').encode()  # WebP's place for it
_SQLITE = b"SQLite format 3\0"


def write_whole(path: str, data: bytes) -> None:
    """Write `data` to `path`, replacing what is there only once all of it is written. Through a
    symbolic link, the file it leads to is replaced, not the link (a review: a link to a page a
    web server serves became a copy, and as root `--html /dev/stdout` renamed a file over the
    system's /dev/stdout link)."""
    path = os.path.realpath(path)
    try:
        there = os.stat(path).st_mode
    except FileNotFoundError:
        there = None
    if there is not None and not stat.S_ISREG(there):
        # A folder or a device at a report's name: renamed over, a device node was gone.
        raise OSError(errno.EEXIST, "there is something there that is not a file", path)
    partial = f"{path}.{os.getpid()}.partial"
    try:
        with open(partial, "wb") as stream:
            stream.write(data)
        os.replace(partial, path)
    except BaseException:
        try:
            os.remove(partial)
        except OSError:
            pass
        raise


def page_replace_problem(path: str) -> str | None:
    """Why an HTML page must not be written over what is at `path` (None: nothing there, an
    empty file, or a page)."""
    head = _existing_head(path)
    if not head or head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(
            (b"<!doctype html", b"<html")):
        return None
    if head is NOT_A_FILE:
        return "is not a regular file; give a file name"
    if head is UNREADABLE:
        return _unreadable("an HTML page")
    return "is not an HTML page" + _what(head) + "; give another file name, or remove it first"


def sheet_replace_problem(path: str) -> str | None:
    """Why a contact sheet must not be written over what is at `path` (None: nothing there, an
    empty file, or a sheet neardup drew)."""
    head = _existing_head(path)
    if not head:
        return None
    if head is NOT_A_FILE:
        return "is not a regular file; give a file name"
    if head is UNREADABLE:
        return _unreadable("a contact sheet neardup drew")
    try:
        with Image.open(path) as picture:
            marks = (picture.info.get("Software"), _text(picture.info.get("comment")),
                     getattr(picture, "tag_v2", {}).get(270))  # a TIFF's description
            if MARK in marks or picture.info.get("xmp") == MARK_XMP:
                return None
    except (OSError, ValueError, Image.DecompressionBombError):
        pass  # not a picture at all, so not a sheet
    return ("is not a contact sheet neardup drew" + _what(head)
            + "; give another file name, or remove it first")


# What _existing_head gives for a path that is there but is not a regular file (a device, a pipe),
# and for a file there that cannot be read.
NOT_A_FILE = b"not a regular file"
UNREADABLE = b"cannot be read"


def _existing_head(path: str) -> bytes | None:
    """The first bytes of the file at `path` (b"" for an empty one); None where nothing is there;
    NOT_A_FILE (the object itself) where it is not a regular file; UNREADABLE where it cannot be
    read (a review: a file the user may not read counted as nothing there, and was replaced, the
    folder being theirs)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return NOT_A_FILE
        with open(path, "rb") as stream:
            return stream.read(64)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return UNREADABLE


def _unreadable(wanted: str) -> str:
    return (f"cannot be read, so nothing shows it is {wanted}; give another file name, or remove"
            " it first")


def _what(head: bytes) -> str:
    return " (it is an SQLite database: a store?)" if head.startswith(_SQLITE) else ""


def _text(value: object) -> str | None:
    return value.decode("latin-1") if isinstance(value, bytes) else None
