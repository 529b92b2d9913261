"""Command-line entry points. Each module has `main(argv) -> int`, so tests call it directly."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType, TracebackType

from ..errors import command

# Set by Ctrl-C (SIGINT) before a command's own handling takes over.
_interrupted = False


def _note_interrupt(signum: int, frame: FrameType | None) -> None:
    """Python's own SIGINT handler (KeyboardInterrupt), remembering that the user pressed Ctrl-C:
    a library may turn the KeyboardInterrupt into another error (numpy re-raises it as an
    ImportError when it arrives while numpy loads its C extension)."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _interrupt_as_one_line(previous: object) -> object:
    """An excepthook: Ctrl-C before a command's main() runs is told in one line, not a traceback.

    run_command turns Ctrl-C into `prog: interrupted` once main() runs, but the first 0.3 s of
    every start go to importing numpy, Pillow and sqlite3 at module level, where nothing of ours
    can catch it. This package is imported first on every way in (the scripts, `python -m
    neardup.cli.index`, the console commands) and only by them, so the hook is set for commands
    only; every other exception still goes to the hook that was there."""

    def hook(kind: type[BaseException], value: BaseException,
             traceback: TracebackType | None) -> None:
        if not (issubclass(kind, KeyboardInterrupt) or _interrupted):
            previous(kind, value, traceback)  # type: ignore[operator]
            return
        started = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
        name = started if started.startswith("neardup-") else command(started or "neardup")
        # Python then ends the process by SIGINT when the exception was KeyboardInterrupt, so
        # its parent sees what Ctrl-C does to any command (a shell's $? is 130).
        print(f"{name}: interrupted", file=sys.stderr)

    return hook


sys.excepthook = _interrupt_as_one_line(sys.excepthook)  # type: ignore[assignment]
# Only where Ctrl-C has Python's default meaning: a run started with SIGINT ignored (a background
# job of a shell) keeps ignoring it, and a program embedding this keeps its own handler.
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _note_interrupt)
