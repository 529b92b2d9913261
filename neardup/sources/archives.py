"""Unpacking .zip and .tar(.gz) archives that may come from anyone.

Every member is checked before anything is written: no absolute paths, no `..`, no links or device
files, and bounded member count and total size (zip bombs). Extraction goes to a temporary folder that
is renamed into place only when complete, so an interrupted run never leaves a half archive behind;
that folder gets the mode any new folder would (0777 less the umask), not mkdtemp's private 0700.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..errors import DatasetError

# CALTECH-101 unpacks to ~9,150 files and ~140 MB (plus its own inner archives); these leave
# generous room while stopping a bomb long before it fills a disk.
DEFAULT_MAX_MEMBERS = 200_000
DEFAULT_MAX_BYTES = 8 * 1024**3

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True, slots=True)
class Limits:
    max_members: int = DEFAULT_MAX_MEMBERS
    max_bytes: int = DEFAULT_MAX_BYTES


def new_folder_mode() -> int:
    """The mode os.mkdir would give a new folder: 0777 less the process's umask."""
    mask = os.umask(0o022)  # the only way to read the umask is to set it; put back at once
    os.umask(mask)
    return 0o777 & ~mask


def make_staging_folder(parent: str, prefix: str) -> str:
    """A new, empty folder with a unique name in `parent`, with an ordinary folder's mode."""
    staging = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(staging, new_folder_mode())
    return staging


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def extract(archive: str, target: str, limits: Limits = Limits()) -> None:
    """Extract `archive` into the folder `target`, which must not exist yet."""
    if os.path.exists(target):
        raise DatasetError(f"{target}: already exists; not extracting over it")
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = make_staging_folder(parent, ".extract-")
    try:
        lowered = archive.lower()
        if lowered.endswith(".zip"):
            _extract_zip(archive, staging, limits)
        elif lowered.endswith((".tar", ".tar.gz", ".tgz")):
            _extract_tar(archive, staging, limits)
        else:
            raise DatasetError(f"{archive}: not a .zip, .tar or .tar.gz archive")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_member_name(archive: str, name: str) -> PurePosixPath:
    """The member's path if it stays inside the target folder; DatasetError otherwise."""
    if not name or "\0" in name:
        raise DatasetError(f"{archive}: refused member with an empty or invalid name")
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DatasetError(f"{archive}: refused member {name!r}: absolute path")
    if ".." in path.parts:
        raise DatasetError(f"{archive}: refused member {name!r}: it would escape the target folder")
    return path


class _Budget:
    def __init__(self, archive: str, limits: Limits) -> None:
        self.archive = archive
        self.limits = limits
        self.members = 0
        self.bytes = 0

    def take(self, size: int) -> None:
        self.members += 1
        self.bytes += max(0, size)
        if self.members > self.limits.max_members:
            raise DatasetError(
                f"{self.archive}: refused: more than {self.limits.max_members:,} members"
            )
        if self.bytes > self.limits.max_bytes:
            raise DatasetError(
                f"{self.archive}: refused: unpacks to more than {self.limits.max_bytes:,} bytes"
            )


def _extract_zip(archive: str, staging: str, limits: Limits) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            budget = _Budget(archive, limits)
            for info in members:  # check everything before writing anything
                check_member_name(archive, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DatasetError(f"{archive}: refused member {info.filename!r}: a link")
                budget.take(info.file_size)
            written = _Budget(archive, limits)
            for info in members:
                destination = os.path.join(staging, *check_member_name(archive, info.filename).parts)
                if info.is_dir():
                    os.makedirs(destination, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                with bundle.open(info) as source, open(destination, "wb") as sink:
                    # Count what really comes out, not what the header claims.
                    for block in _blocks(source):
                        written.bytes += len(block)
                        if written.bytes > limits.max_bytes:
                            raise DatasetError(
                                f"{archive}: refused: unpacks to more than {limits.max_bytes:,} bytes"
                            )
                        sink.write(block)
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{archive}: not a valid zip archive ({error})") from error
    except OSError as error:
        raise DatasetError(f"{archive}: cannot extract ({error})") from error


def _extract_tar(archive: str, staging: str, limits: Limits) -> None:
    try:
        with tarfile.open(archive) as bundle:
            members = bundle.getmembers()
            budget = _Budget(archive, limits)
            for member in members:
                check_member_name(archive, member.name)
                if member.issym() or member.islnk():
                    raise DatasetError(f"{archive}: refused member {member.name!r}: a link")
                if not (member.isfile() or member.isdir()):
                    raise DatasetError(f"{archive}: refused member {member.name!r}: a special file")
                budget.take(member.size)
            # The 'data' filter re-checks paths and strips permissions we never want to keep.
            bundle.extractall(staging, members=members, filter="data")
    except tarfile.TarError as error:
        raise DatasetError(f"{archive}: not a valid tar archive ({error})") from error
    except OSError as error:
        raise DatasetError(f"{archive}: cannot extract ({error})") from error


def _blocks(stream: object, size: int = 1 << 20) -> Iterator[bytes]:
    read = stream.read  # type: ignore[attr-defined]
    while block := read(size):
        yield block
