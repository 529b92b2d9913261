#!/usr/bin/env bash
# The default recipe against --exact (plain ImageHash) on the same copies: for each seed, all of
# CALTECH-101 plus 600 samples with one resize and one jpeg copy each, indexed both ways, then
# recall per threshold 0-16 side by side (about 2 minutes per seed here).
# Usage: bash bench/recipe_vs_exact.sh [SEED ...]   (default: 101 202)
# Uses CALTECH-101 from $NEARDUP_CALTECH101, else ../shared/caltech101/101_ObjectCategories.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup-venv.sh"
cd "$root"
caltech="${NEARDUP_CALTECH101:-$root/../shared/caltech101/101_ObjectCategories}"
out="${NEARDUP_ACCURACY_DIR:-accuracy}/vs-exact"
source "$root/bench/_index_whole.sh"
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(101 202)
for seed in "${seeds[@]}"; do
    images="$out/seed$seed"
    "$PY" gather.py --source "$caltech" --output "$images" --seed "$seed" --samples 600 \
        --copies 1 --edits resize,jpeg --force -q
    rm -rf "$images.default.shelve"* "$images.exact.shelve"*
    index_whole -d "$images" -s "$images.default.shelve" -q
    index_whole -d "$images" -s "$images.exact.shelve" --exact -q
    echo "== seed $seed"
    "$PY" search.py -s "$images.default.shelve" -s "$images.exact.shelve" \
        --evaluate "$images/manifest.csv"
done
