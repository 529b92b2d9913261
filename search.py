#!/usr/bin/env python3
"""List stored images that are near-duplicates of a query. See `python search.py --help`."""

from neardup.cli.search import main

if __name__ == "__main__":
    raise SystemExit(main())
