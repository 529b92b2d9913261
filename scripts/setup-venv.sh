#!/usr/bin/env bash
# Creates .venv beside the project (if missing) and installs requirements.txt into it.
# Sourced by run-demo.sh and test.sh; sets PY to the venv's python.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if [ ! -x "$root/.venv/bin/python" ]; then
  "$python" -m venv "$root/.venv"
fi
PY="$root/.venv/bin/python"
# Quiet when everything is already there; pip still checks the pinned minimum versions.
"$PY" -m pip install --disable-pip-version-check -q -r "$root/requirements.txt"
