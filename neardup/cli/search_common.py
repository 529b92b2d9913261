"""What search.py's modes share: their exit statuses, the store check, the lines on stderr, and
the contact sheet and HTML page they write. The modes themselves live beside it (search_groups,
search_evaluate, search_checker), each loaded only when asked for: a one-shot search loads
neither the server nor the report writers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.hashing import DEFAULT_MAX_PIXELS
from ..core.search import Match
from ..core.store import Store
from ..errors import NeardupError, command
from ..features.search import lacking_features
from .common import warn

if TYPE_CHECKING:
    from ..evaluation.montage import Row

PROG = "search.py"

EXIT_MATCH = 0
EXIT_NO_MATCH = 1
EXIT_ERROR = 2


def say(line: str) -> None:
    """A line on stderr about the store (an entry skipped), not about a query."""
    warn(PROG, line)


def check_store(store_path: str, max_distance: int, max_query_distance: int | None = None) -> int:
    """The bits of the store's hashes. A distance beyond them would match everything: refused,
    --max-distance and --max-query-distance (the largest ?max_distance of --serve) alike.
    A store whose dataset folder is gone (moved with it) is said once: it answered the old
    paths, silently, and --groups said "run index.py" for every file (a review).

    An empty store is said too. Only the recipe, the dataset folder and whether a hash is
    stored are read here: the open that does the work checks the store's pages."""
    with Store.open_for_reading(store_path, report=say, quick_check=False) as store:
        bits = store.recipe.bits
        if gone := store.dataset_gone():
            say(gone)
        if store.is_empty():
            # An index.py stopped before its first batch leaves one: searched, it answered
            # nothing and exit 1 without a word, as if there were no match (a review).
            indexer = command("index.py")
            say(f"{store_path}: holds no images yet (did {indexer} stop before its first"
                f" batch?); {indexer} fills it")
    for option, distance in (("--max-distance", max_distance),
                             ("--max-query-distance", max_query_distance)):
        if distance is not None and distance > bits:
            raise NeardupError(f"{option} {distance} is more than the {bits} bits of"
                               f" {store_path}'s hashes ({store.recipe.describe()})")
    return bits


def say_lacking_features(store: Store, also: str = "") -> None:
    """One line when an unfinished index.py --features left images without features (answered
    by their hash alone, unverified): silent, that looked like a store that answers nothing."""
    _, line = lacking_features(store, also)
    if line is not None:
        say(line)


def match_label(match: Match) -> str:
    distance = "-" if match.distance is None else str(match.distance)
    if match.verified is None:
        return f"distance {distance}"
    if match.inliers is None:  # no features stored for it yet: found by the hash alone
        return f"d {distance}, unverified"
    return f"d {distance}, {match.inliers} inliers"


def draw_montage(path: str, title: str, rows: list[Row], *, what: str, nothing: str,
                 rest_in: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Write a contact sheet, say what it leaves out; with nothing to draw, a line instead."""
    if not rows:
        warn(PROG, f"{path}: not written: {nothing}")
        return
    from ..evaluation.montage import contact_sheet  # loaded when a sheet is drawn

    try:
        sheet = contact_sheet(rows, title, what=what, rest_in=rest_in, max_pixels=max_pixels)
        sheet.save(path)
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise NeardupError(f"{path}: cannot write the contact sheet ({reason})") from error
    cut = f" ({'; '.join(sheet.notes)})" if sheet.notes else ""
    warn(PROG, f"wrote {path}{cut}")


def save_page(path: str, page: str) -> None:
    from ..evaluation.html import write_page  # loaded when a page is written

    try:
        write_page(path, page)
    except OSError as error:
        raise NeardupError(f"{path}: cannot write the page ({error.strerror})") from error
    warn(PROG, f"wrote {path}")
