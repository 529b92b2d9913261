#!/usr/bin/env bash
# Creates .venv beside the project (if missing), installs requirements.txt and then this checkout
# itself, editable, so that the console commands (neardup-index, ...) are on the venv's PATH and
# any process started from the venv - a `dask worker` included - imports this very code.
# Sourced by run-demo.sh and test.sh; sets PY to the venv's python.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if [ ! -x "$root/.venv/bin/python" ]; then
  "$python" -m venv "$root/.venv"
fi
PY="$root/.venv/bin/python"
# Quiet when everything is already there; pip still checks the pinned minimum versions.
# The fast JPEG decoder too: optional for neardup, but the hashes are the same without it only
# slower, and the README's figures are measured with it.
"$PY" -m pip install --disable-pip-version-check -q -r "$root/requirements.txt" \
    -r "$root/requirements-fast.txt"
# Installing builds a wheel (a few seconds): only when the venv does not already import this
# checkout (asked from / so that the current folder cannot answer for the venv).
if ! (cd / && "$PY" -c 'import sys, neardup; sys.exit(not neardup.__file__.startswith(sys.argv[1] + "/"))' \
      "$root" 2>/dev/null); then
  "$PY" -m pip install --disable-pip-version-check -q --no-deps -e "$root"
fi
