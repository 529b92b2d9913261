#!/usr/bin/env bash
# Every benchmark, each timing neardup against its baseline in the same run (about 15 minutes).
# Uses CALTECH-101 from $NEARDUP_CALTECH101, else ../shared/caltech101/101_ObjectCategories.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup-venv.sh"
cd "$root"
"$PY" bench/index_speed.py
"$PY" bench/search_speed.py
"$PY" bench/store_size.py
"$PY" bench/checker_speed.py
"$PY" bench/live_store.py
