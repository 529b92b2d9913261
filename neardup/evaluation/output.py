"""Writing a page, a sheet or a report file whole, or not at all.

Each is written to a temporary file beside its place and renamed over it once complete: a full
disk left a truncated page (its script cut off, its box of names to delete half there) where the
complete page of an earlier run had been, and a contact sheet of 0 bytes.
"""

from __future__ import annotations

import os


def write_whole(path: str, data: bytes) -> None:
    """Write `data` to `path`, replacing what is there only once all of it is written."""
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
