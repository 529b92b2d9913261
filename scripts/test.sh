#!/usr/bin/env bash
# The README's test command: install what is needed, then run the whole test suite.
# pytest's own exit code is passed on, so "no tests collected" (5) fails like any other failure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup-venv.sh"
# The tests also cover the optional extras: the HEIC plug-in, Dask, the HTTP server and local
# features.
"$PY" -m pip install --disable-pip-version-check -q -r "$root/requirements-heic.txt" \
    -r "$root/requirements-dask.txt" -r "$root/requirements-serve.txt" \
    -r "$root/requirements-features.txt"
# The HTML review pages are tested in a real headless browser: Debian's chromium, installed when
# it is missing and apt-get can be used (as root, or with sudo that needs no password); otherwise
# those tests are skipped and say why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  as_root=()
  [ "$(id -u)" = 0 ] || as_root=(sudo -n)
  if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then
    echo "test.sh: installing Debian's chromium for the review-page tests" >&2
    { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq chromium; } \
        >/dev/null 2>&1 || echo "test.sh: could not install chromium; its tests are skipped" >&2
  fi
fi
cd "$root"
exec "$PY" -m pytest "$@"
