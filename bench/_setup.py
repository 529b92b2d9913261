"""What every benchmark script shares: the project on the import path, and where CALTECH-101 is."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a clone without installing the package

DEFAULT_DATASET = os.environ.get(
    "NEARDUP_CALTECH101", str(ROOT.parent / "shared" / "caltech101" / "101_ObjectCategories")
)


def require_dataset(path: str, script: str) -> bool:
    """True if the folder exists; otherwise say so in one line (the caller exits 2)."""
    if os.path.isdir(path):
        return True
    print(f"{script}: {path}: no such folder (set NEARDUP_CALTECH101)", file=sys.stderr)
    return False
