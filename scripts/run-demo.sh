#!/usr/bin/env bash
# The README's main command: install, then gather -> index -> search end to end.
# Uses the CALTECH-101 folder in $NEARDUP_CALTECH101, else ../shared/caltech101/101_ObjectCategories,
# else downloads the official archive (about 130 MB, checksum-verified, cached in ~/.cache/neardup).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup-venv.sh"
cd "$root"
out="${NEARDUP_DEMO_DIR:-demo}"
caltech="${NEARDUP_CALTECH101:-$root/../shared/caltech101/101_ObjectCategories}"
source_args=()
[ -d "$caltech" ] && source_args=(--source "$caltech")

# The demo starts from scratch: gather.py --force rebuilds the images, and a store left by an
# earlier version would be refused (another hash) or kept on its older preprocessing by index.py.
rm -rf "$out/db.shelve" "$out/db.shelve.lock" "$out/db.shelve-wal" "$out/db.shelve-shm" \
    "$out/db.shelve.cache"
set -x
"$PY" gather.py --output "$out/images" --seed 1 --force "${source_args[@]}"
"$PY" index.py --dataset "$out/images" --shelve "$out/db.shelve"
"$PY" search.py --shelve "$out/db.shelve" --evaluate "$out/images/manifest.csv"
"$PY" search.py --shelve "$out/db.shelve" --query "$out/images/copies/g01_copy1.jpg"
