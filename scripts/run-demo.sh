#!/usr/bin/env bash
# The README's main command: install, then gather -> index -> search end to end.
# Uses the CALTECH-101 folder in $NEARDUP_CALTECH101, else ../shared/caltech101/101_ObjectCategories,
# else downloads the official archive (about 130 MB, checksum-verified, cached in ~/.cache/neardup).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${NEARDUP_CALTECH101:-}" ]; then
  # A mistyped folder is said at once (before the install), not taken for "download it".
  if [ ! -d "$NEARDUP_CALTECH101" ]; then
    echo "run-demo.sh: NEARDUP_CALTECH101: $NEARDUP_CALTECH101 is not a folder; set it to" \
         "CALTECH-101's 101_ObjectCategories folder, or unset it to download the data set" >&2
    exit 2
  fi
  caltech="$(cd "$NEARDUP_CALTECH101" && pwd)"  # as given from here, before the cd below
else
  caltech="$root/../shared/caltech101/101_ObjectCategories"
fi
source "$root/scripts/setup-venv.sh"
cd "$root"
out="${NEARDUP_DEMO_DIR:-demo}"
source_args=()
[ -d "$caltech" ] && source_args=(--source "$caltech")

set -x
"$PY" gather.py --output "$out/images" --seed 1 --force "${source_args[@]}" || {
  { status=$?; set +x; } 2>/dev/null
  # gather.py's message names its own --source; this script takes the folder from the variable.
  if [ ${#source_args[@]} -eq 0 ] && [ "$status" -ne 130 ]; then
    echo "run-demo.sh: to use a copy of CALTECH-101 instead of the download, set" \
         "NEARDUP_CALTECH101 to its 101_ObjectCategories folder and run again" >&2
  fi
  exit "$status"
}
{ set +x; } 2>/dev/null
# The demo's store starts from scratch, now that the new images exist (gather.py --force rebuilt
# them): a store left by an earlier version would be refused (another hash) or kept on its older
# preprocessing by index.py. A gather.py that fails leaves the earlier demo as it was.
rm -rf "$out/db.shelve" "$out/db.shelve.lock" "$out/db.shelve-wal" "$out/db.shelve-shm" \
    "$out/db.shelve.cache"
set -x
"$PY" index.py --dataset "$out/images" --shelve "$out/db.shelve"
"$PY" search.py --shelve "$out/db.shelve" --evaluate "$out/images/manifest.csv"
"$PY" search.py --shelve "$out/db.shelve" --query "$out/images/copies/g01_copy1.jpg"
