#!/usr/bin/env bash
# The README's "How accurate is it?" in one command: all of CALTECH-101, 200 samples with one copy
# per edit kind, five hashes and plain ImageHash's dHash (--exact) indexed and evaluated, reports
# in accuracy/report (about 3 minutes).
# Uses CALTECH-101 from $NEARDUP_CALTECH101, else ../shared/caltech101/101_ObjectCategories.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup-venv.sh"
cd "$root"
caltech="${NEARDUP_CALTECH101:-$root/../shared/caltech101/101_ObjectCategories}"
out="${NEARDUP_ACCURACY_DIR:-accuracy}"
source "$root/bench/_index_whole.sh"
"$PY" gather.py --source "$caltech" --output "$out/images" --seed 5 --samples 200 --copies 1 \
    --edits all --force -q
stores=()
for recipe in "dhash 8" "dhash 16" "phash 8" "ahash 8" "whash 8" "dhash 8 exact"; do
    set -- $recipe
    name="$1-$2${3:+-$3}"
    rm -rf "$out/$name.shelve"*
    index_whole -d "$out/images" -s "$out/$name.shelve" --algorithm "$1" --hash-size "$2" \
        ${3:+--exact} -q
    stores+=(-s "$out/$name.shelve")
done
"$PY" search.py "${stores[@]}" --evaluate "$out/images/manifest.csv" --report "$out/report"
"$PY" search.py "${stores[@]}" --evaluate "$out/images/manifest.csv" --mirror | tail -n 8
