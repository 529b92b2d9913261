# Sourced by the bench's shell scripts (after scripts/setup-venv.sh, which sets $PY).
# index.py exits 0 when some files failed (the store holds the others): a store holding a part of
# the haystack would be scored on that part, so every image is indexed or the script stops.
index_whole() {
    local summary
    summary=$("$PY" index.py "$@")
    echo "$summary"
    case "$summary" in
        *"failed 0, skipped 0"*) ;;
        *) echo "$(basename "$0"): index.py did not index every image: $summary" >&2; exit 1 ;;
    esac
}
