"""gather.py: build the evaluation dataset (haystack + resized copies of random samples)."""

from __future__ import annotations

import argparse
import random
import signal
import sys

from ..core.hashing import DEFAULT_MAX_PIXELS
from ..errors import NeardupError, command
from ..sources.archives import DEFAULT_MAX_BYTES, Limits
from ..sources.dataset import GatherOptions, StoppedOnceWritten, gather
from ..sources.edits import KINDS, parse_kinds
from ..sources.resolve import CALTECH101_MD5, CALTECH101_URL, default_cache_dir, resolve_source
from .common import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    given_options,
    non_negative_int,
    path_option,
    positive_int,
    run_command,
    warn,
)

PROG = "gather.py"
DEFAULT_SCALE = 0.05
NOTHING_WRITTEN = "nothing was written to the output folder"


def scale_factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1 (0.05 means +-5%)")
    return value


def edit_kinds(text: str) -> tuple[str, ...]:
    try:
        return tuple(parse_kinds(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=command(PROG),
        description="Copy every source image into OUTPUT/haystack, add resized JPEG copies of a few"
        " random samples under OUTPUT/copies, and write OUTPUT/manifest.csv. Without --source the"
        " official CALTECH-101 archive is downloaded (checksum-verified, cached, resumable).",
    )
    parser.add_argument("-o", "--output", required=True, type=path_option, help="folder to create")
    parser.add_argument("--source", type=path_option,
                        help="folder of images, or a .zip / .tar / .tar.gz of one"
                        " (default: download CALTECH-101)")
    parser.add_argument("--samples", type=positive_int, default=17, help="originals to copy (default 17)")
    parser.add_argument("--copies", type=positive_int, default=None,
                        help="copies per sample (default: random from 1 to 8 per sample)")
    parser.add_argument("--scale", type=scale_factor, default=DEFAULT_SCALE,
                        help="resize copies are scaled by a random factor in 1 +- SCALE (default"
                        f" {DEFAULT_SCALE})")
    parser.add_argument("--edits", type=edit_kinds, default=("resize",),
                        help="comma list of the edits that make copies, or all: "
                        + ", ".join(KINDS) + " (default resize; each is recorded in the"
                        " manifest's edit column with its parameters)")
    parser.add_argument("--seed", type=non_negative_int, default=None,
                        help="makes the run reproducible (default: random, printed)")
    parser.add_argument("--force", action="store_true",
                        help=f"replace an earlier {command('gather.py')} output in the folder")
    parser.add_argument("--cache-dir", type=path_option, default=None,
                        help="where downloads and unpacked archives are kept"
                        " (default $NEARDUP_CACHE or ~/.cache/neardup)")
    parser.add_argument("--url", default=CALTECH101_URL, help=argparse.SUPPRESS)
    parser.add_argument("--md5", default=CALTECH101_MD5, help=argparse.SUPPRESS)
    parser.add_argument("--max-archive-bytes", type=positive_int, default=DEFAULT_MAX_BYTES,
                        help="refuse archives that unpack to more than this")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help="refuse samples larger than this many pixels")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_options(parser, argv)

    def body() -> int:
        if "scale" in given and "resize" not in args.edits:
            raise NeardupError("--scale does nothing without resize in --edits (it sets how much"
                               " resize copies are scaled)")
        progress = not args.quiet and sys.stderr.isatty()
        report = lambda line: warn(PROG, line)  # noqa: E731
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
        source = resolve_source(
            args.source,
            args.cache_dir or default_cache_dir(),
            url=args.url,
            md5=args.md5,
            limits=Limits(max_bytes=args.max_archive_bytes),
            progress=progress,
            report=report,
        )
        options = GatherOptions(samples=args.samples, copies=args.copies, scale=args.scale,
                                seed=seed, max_pixels=args.max_pixels, edits=args.edits)
        summary = gather(source, args.output, options, force=args.force, progress=progress,
                         report=report)
        print(summary.line())
        return 0

    def body_until_terminated() -> int:
        try:
            return body()
        except StoppedOnceWritten as stop:
            print(stop.summary.line())
            terminated = stop.signum == signal.SIGTERM
            warn(PROG, f"{'terminated' if terminated else 'interrupted'} once the dataset was"
                 " written (the output folder holds this run, whole)")
            return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED

    return run_command(PROG, body_until_terminated, NOTHING_WRITTEN)


if __name__ == "__main__":  # python -m neardup.cli.gather
    raise SystemExit(main())
