"""Building the evaluation dataset: a haystack of real photos plus resized copies of a few samples.

Layout of the output folder:
    haystack/<path in the source>   every source image (hard link, or a copy across file systems)
    copies/<group>_copy<k>.jpg      resized copies of the sampled originals, saved as JPEG
    manifest.csv                    which file came from where (columns in MANIFEST_COLUMNS)

The folder is built beside its final place and renamed into it at the end, so an interrupted run
leaves nothing half-made and two runs are never mixed.
"""

from __future__ import annotations

import csv
import errno
import itertools
import os
import random
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from tqdm import tqdm

from ..core.discovery import FoundFile, Skipped, walk_images
from ..core.hashing import DEFAULT_MAX_PIXELS, normalise, open_image
from ..core.interrupts import signals_deferred
from ..core.results import counted
from ..errors import DatasetError, ImageError, command
from .archives import make_staging_folder
from .edits import apply_edit

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("file", "role", "group", "source", "edit")
HAYSTACK_DIR = "haystack"
COPIES_DIR = "copies"
MAX_RANDOM_COPIES = 8  # the reference tutorial's 1..8 copies per sample
# Failures to write the output that are no bug: a full disk or quota, a file too large, a
# read-only file system.
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


@dataclass(frozen=True, slots=True)
class GatherOptions:
    samples: int = 17
    copies: int | None = None  # None: a random count from 1 to MAX_RANDOM_COPIES per sample
    scale: float = 0.05  # each copy is resized by a random factor in [1 - scale, 1 + scale]
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    edits: tuple[str, ...] = ("resize",)  # kinds from neardup.sources.edits.KINDS


@dataclass(frozen=True, slots=True)
class ManifestRow:
    file: str  # relative to the output folder, '/'-separated
    role: str  # "original", "copy", or "" for the rest of the haystack
    group: str  # shared by a sampled original and its copies
    source: str  # haystack: the path it came from; copy: the `file` of its original
    edit: str  # what was done to make a copy, with its parameters

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in MANIFEST_COLUMNS}


@dataclass(slots=True)
class GatherSummary:
    output: str
    seed: int
    haystack: int = 0
    samples: int = 0
    copies: int = 0
    unreadable_samples: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.output}: {counted(self.haystack, 'haystack image')},"
            f" {counted(self.samples, 'sample')}, {counted(self.copies, 'copy', 'copies')},"
            f" {MANIFEST_NAME} (seed {self.seed})"
        )


def gather(
    source_root: str,
    output: str,
    options: GatherOptions,
    *,
    force: bool = False,
    progress: bool = False,
    report: Callable[[str], None] = lambda line: None,
) -> GatherSummary:
    """Build the dataset from the images under source_root into the folder output."""
    destination = os.path.abspath(output)
    _check_output(source_root, destination, force)
    images = []
    for entry in walk_images(source_root):
        if isinstance(entry, Skipped):
            report(f"{entry.path}: {entry.reason}")
        else:
            images.append(entry)
    if not images:
        raise DatasetError(f"{source_root}: holds no images")
    if options.samples > len(images):
        raise DatasetError(
            f"--samples {options.samples} is more than the {counted(len(images), 'image')} in"
            f" {source_root}"
        )

    summary = GatherSummary(output=output, seed=options.seed)
    # An output given as a symbolic link is the folder it leads to: the run is written beside
    # that folder and swapped in there (a review: --force renamed the link away, put a plain
    # folder in its place and left the earlier run where the link had led).
    place = os.path.realpath(destination)
    parent = os.path.dirname(place)
    heard: list[int] = []  # signals held while the dataset was moved into place
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_abandoned_partials(parent, os.path.basename(place))
        # The host and pid in the name tell a later run whether the run that made it is still
        # going.
        staging = make_staging_folder(
            parent, f".{os.path.basename(place)}.partial-{_host()}-{os.getpid()}-")
        try:
            rows = _write_haystack(images, source_root, staging, progress)
            summary.haystack = len(rows)
            copy_rows = _write_copies(images, rows, staging, options, summary, report)
            _write_manifest(os.path.join(staging, MANIFEST_NAME), rows + copy_rows)
            # Looked at again: a file put into the earlier run while this one wrote would go
            # with it (a review).
            _check_output(source_root, destination, force)
            # A Ctrl-C or SIGTERM between the swap's two renames left no output folder (the
            # earlier run hidden in .NAME.old-*), and one after them "nothing was written" with
            # the new run in place and the old one half removed (a review: 13 of 20 tries).
            with signals_deferred(signal.SIGINT, signal.SIGTERM, reraise=False) as heard:
                _move_into_place(staging, place)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except OSError as error:
        if error.errno not in WRITE_ERRORS:
            raise
        # The files are written in a hidden folder beside the output, removed on failure: the
        # output folder is what the user knows, and it was not touched.
        raise DatasetError(f"{destination}: cannot write the dataset there ({error.strerror});"
                           " the folder is as it was") from error
    if heard:
        raise StoppedOnceWritten(summary, heard[0])
    return summary


class StoppedOnceWritten(KeyboardInterrupt):
    """A Ctrl-C or SIGTERM heard while the finished dataset was moved into place, held until it
    was: the output folder holds this run, whole (`summary`)."""

    def __init__(self, summary: GatherSummary, signum: int) -> None:
        super().__init__(summary.output, signum)
        self.summary = summary
        self.signum = signum


def read_manifest(path: str) -> list[ManifestRow]:
    try:
        # utf-8-sig: Excel and LibreOffice save UTF-8 with a byte-order mark, which read as plain
        # UTF-8 became part of the first column's name ("not a manifest (missing file)").
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as stream:
            reader = csv.DictReader(_bounded_lines(stream, path))
            missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise DatasetError(f"{path}: not a manifest (missing {', '.join(sorted(missing))})")
            return [ManifestRow(**{name: row[name] or "" for name in MANIFEST_COLUMNS})
                    for row in reader]
    except OSError as error:
        raise DatasetError(f"{path}: cannot read manifest ({error.strerror})") from error
    except csv.Error as error:
        raise DatasetError(f"{path}: not a valid CSV file ({error})") from error


# A manifest line longer than this is refused: the csv module's own field limit applies only to a
# line already read whole, and a file of NUL bytes (what a crash can leave) or /dev/zero was read
# into memory until it ran out (a review: 1 GB/s). gather.py's lines are a few hundred characters.
MAX_MANIFEST_LINE = 1 << 20


def _bounded_lines(stream: TextIO, path: str) -> Iterator[str]:
    """The stream's lines, refusing one of over MAX_MANIFEST_LINE characters (its line break not
    counted: LF or CRLF alike)."""
    for number in itertools.count(1):
        line = stream.readline(MAX_MANIFEST_LINE + 3)
        if not line:
            return
        if len(line.rstrip("\r\n")) > MAX_MANIFEST_LINE:
            raise DatasetError(f"{path}: not a manifest (line {number} is over"
                               f" {MAX_MANIFEST_LINE:,} characters long)")
        yield line


# -- steps ---------------------------------------------------------------------------------------


def _check_output(source_root: str, destination: str, force: bool) -> None:
    source = os.path.realpath(source_root)
    target = os.path.realpath(destination)
    if target == source or target.startswith(source + os.sep) or source.startswith(target + os.sep):
        raise DatasetError(f"{destination}: the output must not be inside the source, or around it")
    if not os.path.exists(destination):
        return
    if not os.path.isdir(destination):
        raise DatasetError(f"{destination}: exists and is not a folder")
    if not os.listdir(destination):
        return
    if not force:
        raise DatasetError(
            f"{destination}: not empty; pass --force to replace the earlier {command('gather.py')}"
            " run there"
        )
    if not os.path.isfile(os.path.join(destination, MANIFEST_NAME)):
        raise DatasetError(
            f"{destination}: not empty and holds no {MANIFEST_NAME}, so it is not an earlier"
            f" {command('gather.py')} output; refusing to replace it even with --force"
        )
    # --force replaces the folder whole: only where everything in it is an earlier run's (a
    # review: another program's manifest.csv was enough, and a store or a photo a user had put
    # into an earlier output went without a word).
    if extra := _not_written_by_gather(destination):
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        files = "1 file" if len(extra) == 1 else f"{len(extra)} files"
        raise DatasetError(
            f"{destination}: holds {files} {command('gather.py')} did not write ({shown}); move"
            f" them out, or choose another --output (--force replaces only an earlier"
            f" {command('gather.py')} run)"
        )


def _not_written_by_gather(destination: str) -> list[str]:
    """What is in an earlier output folder that its manifest does not list, sorted; refuses a
    manifest gather.py did not write."""
    manifest = os.path.join(destination, MANIFEST_NAME)
    try:
        with open(manifest, newline="", encoding="utf-8", errors="surrogateescape") as stream:
            reader = csv.reader(stream)
            header = next(reader, [])
            listed = {row[0] for row in reader if row}
    except (OSError, csv.Error) as error:
        raise DatasetError(f"{destination}: cannot read its {MANIFEST_NAME} ({error}); refusing"
                           " to replace the folder even with --force") from error
    if tuple(header) != MANIFEST_COLUMNS:
        raise DatasetError(
            f"{destination}: its {MANIFEST_NAME} is not one {command('gather.py')} wrote (its"
            f" columns are not {', '.join(MANIFEST_COLUMNS)}); refusing to replace the folder"
            " even with --force"
        )
    extra = []
    for folder, subfolders, files in os.walk(destination):
        inside = os.path.relpath(folder, destination)
        for name in files + [name for name in subfolders
                             if os.path.islink(os.path.join(folder, name))]:
            relpath = name if inside == os.curdir else f"{inside}/{name}".replace(os.sep, "/")
            if relpath != MANIFEST_NAME and relpath not in listed:
                extra.append(relpath)
    return sorted(extra)


# A partial folder nothing has been written into for this long, of a run whose pid is gone, was
# left by a run killed outright (a run writes its files one after another: seconds apart at most).
ABANDONED_AFTER = 15 * 60


def _remove_abandoned_partials(parent: str, name: str) -> None:
    """Remove the partial folders earlier runs into `name` left when they were killed outright
    (SIGKILL, a power cut: nothing of theirs could clean up), each as large as a dataset, and
    the earlier runs they were killed removing (`.NAME.old-...`, the same way).

    Only folders named as gather() names them, `.NAME.partial-HOST-PID-XXXXXXXX`, made on this
    host (a folder shared with other machines or containers: their pids are not ours to ask
    about) by a PID that is no running process: a run still going is never touched (a PID reused
    since counts as running, so such a folder waits for a later run), nor are folders from
    before names held a PID.
    """
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:partial|old)-{re.escape(_host())}"
                         r"-([0-9]{1,9})-[a-z0-9_]{8}")
    try:
        entries = os.listdir(parent)
    except OSError:
        return  # making the output there reports the real problem
    for entry in entries:
        found = pattern.fullmatch(entry)
        if found is None or _is_running(int(found.group(1))):
            continue
        folder = os.path.join(parent, entry)
        if (os.path.isdir(folder) and not os.path.islink(folder)
                and _untouched_for(folder) > ABANDONED_AFTER):
            shutil.rmtree(folder, ignore_errors=True)


def _untouched_for(folder: str) -> float:
    """Seconds since anything was last added to `folder` or a folder inside it. A pid says
    nothing across pid namespaces: a run in a container sharing this host's name looked gone,
    and a second review had its folder deleted under it while it wrote."""
    newest = 0.0
    for inside, _, _ in os.walk(folder):
        try:
            newest = max(newest, os.stat(inside).st_mtime)
        except OSError:
            return 0.0  # changing as we look: in use
    return time.time() - newest


def _host() -> str:
    """This machine's name as it can stand in a folder name."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "_"


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process (EPERM), or a pid we cannot ask about: keep it
    return True


def _write_haystack(
    images: list[FoundFile], source_root: str, staging: str, progress: bool
) -> list[ManifestRow]:
    rows = []
    for image in tqdm(images, unit="img", desc="haystack", disable=not progress):
        relative = f"{HAYSTACK_DIR}/{image.relpath}"
        target = os.path.join(staging, *relative.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.link(image.path, target)  # instant and free; the source is never modified
        except OSError:
            shutil.copyfile(image.path, target)
        rows.append(ManifestRow(relative, "", "", os.path.join(source_root, image.relpath), ""))
    return rows


def _write_copies(
    images: list[FoundFile],
    rows: list[ManifestRow],
    staging: str,
    options: GatherOptions,
    summary: GatherSummary,
    report: Callable[[str], None],
) -> list[ManifestRow]:
    rng = random.Random(options.seed)
    # At least two digits: the README's examples name images/copies/g01_copy1.jpg, which a trial
    # with fewer than ten samples did not have (a review).
    width = max(2, len(str(options.samples)))
    os.makedirs(os.path.join(staging, COPIES_DIR))
    copy_rows: list[ManifestRow] = []
    # Walk a seeded permutation and take the first samples that decode, so one corrupt file does
    # not end the run and the choice stays reproducible.
    for index in rng.sample(range(len(images)), len(images)):
        if summary.samples == options.samples:
            break
        try:
            with open_image(images[index].path, options.max_pixels) as opened:
                picture = normalise(opened)
        except ImageError as error:
            summary.unreadable_samples.append(error.path)
            report(f"{error.path}: not used as a sample ({error.reason})")
            continue
        if picture.mode not in ("RGB", "L"):
            picture = picture.convert("RGB")
        summary.samples += 1
        group = f"g{summary.samples:0{width}d}"
        original = rows[index]
        rows[index] = ManifestRow(original.file, "original", group, original.source, "")
        for number, kind in enumerate(_copy_kinds(options, rng), start=1):
            copy, description, quality = apply_edit(kind, picture, rng, options.scale)
            relative = f"{COPIES_DIR}/{group}_copy{number}.jpg"
            copy.save(os.path.join(staging, *relative.split("/")), "JPEG", quality=quality)
            edit = f"{description} jpeg_quality={quality}"
            copy_rows.append(ManifestRow(relative, "copy", group, original.file, edit))
            summary.copies += 1
    if summary.samples < options.samples:
        raise DatasetError(
            f"only {summary.samples} of the source images could be decoded;"
            f" --samples {options.samples} cannot be met"
        )
    return copy_rows


def _copy_kinds(options: GatherOptions, rng: random.Random) -> list[str]:
    """The edit of each copy of one sample.

    With --copies N: N copies of every edit kind. Otherwise 1 to 8 copies (the reference
    tutorial's count), taking the kinds in turn from a random starting point.
    """
    kinds = list(options.edits)
    if options.copies is not None:
        return [kind for kind in kinds for _ in range(options.copies)]
    count = rng.randint(1, MAX_RANDOM_COPIES)
    # One kind draws nothing more, so seeds made before --edits existed still give the same files.
    start = rng.randrange(len(kinds)) if len(kinds) > 1 else 0
    return [kinds[(start + number) % len(kinds)] for number in range(count)]


def _write_manifest(path: str, rows: list[ManifestRow]) -> None:
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as stream:
        writer = csv.DictWriter(stream, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(row.as_dict() for row in rows)


def _move_into_place(staging: str, destination: str) -> None:
    if not os.path.exists(destination):
        os.rename(staging, destination)
        return
    if not os.listdir(destination):
        os.rmdir(destination)
        os.rename(staging, destination)
        return
    # --force over an earlier run: swap first, delete after, so a failure never leaves nothing.
    # Named as a partial folder is (host, pid): a run killed outright while removing it leaves
    # it to a later run to remove.
    retired = tempfile.mkdtemp(prefix=f".{os.path.basename(destination)}.old-{_host()}-"
                               f"{os.getpid()}-", dir=os.path.dirname(destination))
    os.rmdir(retired)
    os.rename(destination, retired)
    os.rename(staging, destination)
    shutil.rmtree(retired, ignore_errors=True)
