#!/usr/bin/env bash
# The README's test command: install what is needed, then run the whole test suite.
# pytest's own exit code is passed on, so "no tests collected" (5) fails like any other failure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup-venv.sh"
# The tests also cover the optional extras: the HEIC plug-in, Dask and the HTTP server.
"$PY" -m pip install --disable-pip-version-check -q -r "$root/requirements-heic.txt" \
    -r "$root/requirements-dask.txt" -r "$root/requirements-serve.txt"
cd "$root"
exec "$PY" -m pytest "$@"
