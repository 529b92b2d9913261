#!/usr/bin/env bash
# Every benchmark, each timing neardup against its baseline in the same run (about 15 minutes).
# Uses CALTECH-101 from $NEARDUP_CALTECH101, else ../shared/caltech101/101_ObjectCategories.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup-venv.sh"
# The checker benchmarks serve HTTP: the serve extra.
"$PY" -m pip install --disable-pip-version-check -q -r "$root/requirements-serve.txt"
cd "$root"
"$PY" bench/index_speed.py
"$PY" bench/search_speed.py
"$PY" bench/store_size.py
"$PY" bench/checker_speed.py
"$PY" bench/live_store.py
"$PY" bench/decode_memory.py
"$PY" bench/abuse.py
