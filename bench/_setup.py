"""What every benchmark script shares: the project on the import path, and where CALTECH-101 is."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neardup.core.hashing import Hash, Recipe
    from neardup.core.indexing import IndexSummary

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a clone without installing the package

DEFAULT_DATASET = os.environ.get(
    "NEARDUP_CALTECH101", str(ROOT.parent / "shared" / "caltech101" / "101_ObjectCategories")
)


def searched_both_ways(first: Hash, second: Hash) -> int:
    """A pair's distance as search.py reports it (each query's undecided bits left out), the
    worse of its two directions: within t only if each image, as the query, finds the other."""
    return max(first.search_distance(second), second.search_distance(first))


def require_dataset(path: str, script: str) -> bool:
    """True if the folder exists; otherwise say so in one line (the caller exits 2)."""
    if os.path.isdir(path):
        return True
    print(f"{script}: {path}: no such folder (set NEARDUP_CALTECH101)", file=sys.stderr)
    return False


# index.py's summary line: "indexed 9, unchanged 0, removed 0, failed 0, skipped 0; ...".
_INDEX_SUMMARY = re.compile(r"\bfailed (\d+), skipped (\d+)\b")


def index_completely(arguments: list[str], script: str, *, cwd: str | None = None,
                     env: dict[str, str] | None = None) -> str:
    """Run index.py (`arguments`: its path, then its options) with this Python and return its
    summary line; or stop the benchmark with index.py's message unless every image was indexed.

    index.py exits 0 when the store holds images afterwards, even if thousands of files failed
    (and 1 when none could be): a benchmark measuring such a store measures a part of the dataset
    and says nothing. So exit 0 is not enough: its summary must count nothing failed or skipped.
    """
    result = subprocess.run([sys.executable, *arguments], capture_output=True, text=True,
                            cwd=cwd, env=env)
    lines = result.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    counts = _INDEX_SUMMARY.search(summary)
    if result.returncode == 0 and counts is not None and counts.groups() == ("0", "0"):
        return summary
    said = [line for line in result.stderr.strip().splitlines() if line.strip()]
    first = said[0] if said else summary or "no summary"
    more = f" (and {len(said) - 1} more lines)" if len(said) > 1 else ""
    sys.exit(f"{script}: index.py did not index every image (exit {result.returncode}"
             + (f"; {summary}" if summary and summary != first else "") + f"): {first}{more}")


def require_complete(summary: IndexSummary, problems: list[str], dataset: str, script: str) -> None:
    """Stop the benchmark unless index_folder's `summary` shows every image of `dataset` indexed
    (`problems`: what its report heard, the failed files named)."""
    if summary.refusal or summary.failed or summary.skipped or not summary.total:
        first = f": {problems[0]}" if problems else ""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        sys.exit(f"{script}: {dataset} was not indexed whole ({summary.line()}){first}{more}")


def index_whole(dataset: str, store: str, recipe: Recipe, script: str,
                **options: Any) -> IndexSummary:
    """index_folder, stopping the benchmark unless every image under `dataset` was indexed: a
    store holding a part of it would measure that part, or time fewer files than it counts."""
    from neardup.core.indexing import index_folder

    problems: list[str] = []
    summary = index_folder(dataset, store, recipe, report=problems.append, **options)
    require_complete(summary, problems, dataset, script)
    return summary
