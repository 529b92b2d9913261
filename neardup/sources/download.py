"""Downloading a file with a progress bar, resume after an interruption, and a checksum.

The file is written to `<dest>.part` and renamed to `<dest>` only after its MD5 matches, so nothing
downstream ever reads an incomplete or tampered download.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable

from tqdm import tqdm

from .. import __version__
from ..errors import DatasetError

ATTEMPTS = 3
TIMEOUT_SECONDS = 60
BLOCK = 1 << 16


def md5_of(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str,
    dest: str,
    md5: str,
    *,
    progress: bool = False,
    report: Callable[[str], None] = lambda line: None,
) -> str:
    """Make `dest` a verified copy of `url`, reusing a verified file or resuming a partial one."""
    if os.path.isfile(dest):
        if md5_of(dest) == md5:
            return dest
        report(f"{dest}: checksum does not match; downloading it again")
        os.remove(dest)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    partial = dest + ".part"
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _fetch_into(url, partial, progress)
        except DatasetError:
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            # A transfer that broke half way keeps what arrived: the next attempt resumes there.
            if attempt == ATTEMPTS:
                raise DatasetError(_network_message(url, error)) from error
            report(f"download interrupted ({_reason(error)}); resuming (attempt {attempt + 1})")
            continue
        if md5_of(partial) == md5:
            os.replace(partial, dest)
            return dest
        os.remove(partial)  # a resumed file that fails its checksum cannot be repaired: start over
        if attempt < ATTEMPTS:
            report(f"{url}: checksum mismatch; downloading again from the start")
    raise DatasetError(f"{url}: the download does not match MD5 {md5} after {ATTEMPTS} attempts")


def _fetch_into(url: str, partial: str, progress: bool) -> None:
    offset = os.path.getsize(partial) if os.path.exists(partial) else 0
    headers = {"User-Agent": f"neardup/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            return  # the server says we already have every byte; the checksum decides
        raise DatasetError(f"{url}: the server answered {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        # No connection at all (offline, DNS, refused): retrying at once would not help.
        raise DatasetError(_network_message(url, error)) from error
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the range: start the file again
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        mode = "ab" if offset else "wb"
        with open(partial, mode) as sink, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=os.path.basename(partial.removesuffix(".part")), disable=not progress,
        ) as bar:
            while block := response.read(BLOCK):
                sink.write(block)
                bar.update(len(block))
        if total is not None and os.path.getsize(partial) < total:
            raise OSError("connection closed before the end of the file")


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        return str(error.reason)
    return str(error)


def _network_message(url: str, error: BaseException) -> str:
    return (
        f"cannot download {url} ({_reason(error)}); check the network, or pass --source with a"
        " local copy of the data set (a folder, .zip or .tar.gz)"
    )
