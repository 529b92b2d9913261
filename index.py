#!/usr/bin/env python3
"""Hash every image under a folder into a store. See `python index.py --help`."""

from neardup.cli.index import main

if __name__ == "__main__":
    raise SystemExit(main())
