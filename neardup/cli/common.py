"""What every command shares: argument types, and the edge where errors become one-line messages."""

from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from ..core.names import one_line
from ..core.processes import thread_refused
from ..errors import NeardupError, command, looks_unset

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell shows for a command SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM during a command. It unwinds as Ctrl-C does, so that everything that cleans up
    on Ctrl-C runs for it too (gather.py's partial folder, index.py's worker processes and its
    uncommitted batch, the checker's workers): at Python's default, SIGTERM ended the process at
    once, index.py without a word and gather.py leaving its partial folder behind."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Once: a second SIGTERM while the clean-up runs would cut it in two.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises Terminated while the command runs, where SIGTERM has its default meaning
    (a program embedding this keeps its own handler; signal.signal works in the main thread
    only)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_command(prog: str, body: Callable[[], int], interrupted_hint: str = "") -> int:
    """Run a command body; a user's mistake becomes `prog: error: ...` on stderr, never a traceback."""
    prog = command(prog)  # as the user typed it (neardup-search, search.py)
    if sys.stderr is None:
        # Started with standard error closed (`2>&-`): print(file=None) would write every
        # message to standard output instead, into the results (a review: --json stopped being
        # JSON). The messages go nowhere, as the user asked; the exit status still tells.
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
    # File names need not be UTF-8: write their bytes back as they are (as ls does), not crash.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="surrogateescape")
    with _ctrl_c_in_destructors_unsaid():
        return _run(prog, body, interrupted_hint)


def _run(prog: str, body: Callable[[], int], interrupted_hint: str) -> int:
    """run_command's body and what each way it can end prints."""
    try:
        with sigterm_unwinds(), _threads_refused_quietly(prog):
            return body()
    except NeardupError as error:
        print(f"{prog}: error: {one_line(str(error))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated)
        how = "terminated" if isinstance(stop, Terminated) else "interrupted"
        print(f"{prog}: {how}{'; ' + interrupted_hint if interrupted_hint else ''}",
              file=sys.stderr)
        return EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED
    except RuntimeError as error:
        if not thread_refused(error):
            raise  # a bug of ours, and shows as one
        # Nothing is lost: a store's batch is committed whole or not at all.
        print(f"{prog}: error: a thread could not be started ({error}): a limit on processes and"
              " threads reached (ulimit -u, a container's pids.max)?", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError as error:
        if _stdout_gone():
            # The reader went away (`search.py ... | head`): not an error worth a message.
            sys.stderr.close()
            return EXIT_ERROR
        # Another pipe: to worker processes that could not start, say (a user who may not run
        # this Python got exit 2 and not a word).
        print(f"{prog}: error: a pipe to a helper process broke ({error.strerror or error});"
              " worker processes may have failed to start", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        if error.errno not in _OUTPUT_ERRORS:
            raise  # anything else is a bug of ours, and shows as one
        # Standard output on a full disk or a failing device: the results are lost, say so.
        try:
            print(f"{prog}: error: cannot write the results ({error.strerror})", file=sys.stderr)
        except OSError:
            pass
        return EXIT_ERROR


@contextmanager
def _ctrl_c_in_destructors_unsaid() -> Iterator[None]:
    """A Ctrl-C whose KeyboardInterrupt Python raises inside an object's destructor cannot reach
    the command and is printed as "Exception ignored in: <function Future.__del__ ...>" with a
    traceback: an impatient user's second Ctrl-C while an interrupted --local-cluster run let go
    of its Dask futures did that (1 run in about 10 of its test), after the run's own line. Such
    an interruption has nothing to add to that line and is not printed; any other exception in
    a destructor is, as before."""
    previous = sys.unraisablehook

    def hook(unraisable: object) -> None:
        if not isinstance(getattr(unraisable, "exc_value", None), KeyboardInterrupt):
            previous(unraisable)  # type: ignore[arg-type]

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


@contextmanager
def _threads_refused_quietly(prog: str) -> Iterator[None]:
    """While a command runs, a thread that dies because the system refused it a thread of its
    own (a limit on processes and threads: a container's pids.max) prints one line, not a
    traceback; the executor's thread of index.py's worker pool prints nothing, since index.py
    notices it gone and says what becomes of its files. Any other error in a thread shows as
    before."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not thread_refused(args.exc_value):
            previous(args)
        elif type(args.thread).__name__ != "_ExecutorManagerThread":  # (concurrent.futures')
            print(f"{prog}: a thread ended: {args.exc_value} (a limit on processes and threads"
                  " reached?)", file=sys.stderr)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _stdout_gone() -> bool:
    """Whether standard output is a pipe its reader has closed."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True  # no descriptor to ask: as before, silent


# Write errors a full or failing output can cause (`search.py ... > /dev/full`).
_OUTPUT_ERRORS = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def warn(prog: str, message: str) -> None:
    print(f"{command(prog)}: {one_line(message)}", file=sys.stderr, flush=True)


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the options the user actually gave (not those left at a default).

    argparse fills every default in, so "was --x given?" is answered by parsing again with every
    default suppressed: only what was on the command line is then set.
    """
    for action in parser._actions:  # argparse has no public list of a parser's actions
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def path_option(text: str) -> str:
    """A file or folder option: an empty one is an unset shell variable (-s "$STORE"), which
    SQLite took as its temporary database and a dataset as the current folder (a review)."""
    if looks_unset(text):
        raise argparse.ArgumentTypeError("is empty (an unset shell variable?)")
    return text


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def hash_size(text: str) -> int:
    """--hash-size: the same range and words for 0 as for 1 or 99 (the recipe's own check)."""
    from ..core.hashing import MAX_HASH_SIZE

    value = non_negative_int(text)
    if not 4 <= value <= MAX_HASH_SIZE or value % 4:
        raise argparse.ArgumentTypeError(f"must be a multiple of 4 from 4 to {MAX_HASH_SIZE} (a"
                                         " store keeps each hash as whole bytes)")
    return value
