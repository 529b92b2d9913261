#!/usr/bin/env python3
"""Build the evaluation dataset from CALTECH-101. See `python gather.py --help`."""

from neardup.cli.gather import main

if __name__ == "__main__":
    raise SystemExit(main())
