#!/usr/bin/env bash
# Tries neardup as a new user would, from a fresh clone of this checkout's last commit:
#   1. `pip install '.[dask]'` into a new venv; the README's example with the console commands,
#      then the example of "Use" after it, run from a folder outside the clone (so only the
#      installed package can answer);
#   2. the README's Python API example, extracted from README.md and run as written (python -c);
#   3. a real `dask scheduler` and `dask worker` from a second venv that has Dask but not
#      neardup: index.py must refuse in one line; after `pip install` of the clone there, the
#      cluster builds the same store as a local run.
# Uses the CALTECH-101 folder in $NEARDUP_CALTECH101 (default ../shared/caltech101/101_ObjectCategories),
# else a few generated images. Everything happens in a temporary folder, removed at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n== %s\n' "$*"; }
pip_quiet() { "$@" --disable-pip-version-check -q 2>&1 | grep -v "is ignored" || true; }

say "fresh clone of $(git -C "$root" rev-parse --short HEAD)"
git clone -q "$root" "$work/clone"

say "pip install '.[dask]' into a new venv"
"$python" -m venv "$work/user"
pip_quiet "$work/user/bin/pip" install "$work/clone[dask]"
export PATH="$work/user/bin:$PATH"
mkdir "$work/try" && cd "$work/try"
python -c 'import neardup, sys; assert sys.prefix in neardup.__file__, neardup.__file__; print("neardup", neardup.__version__, "from", neardup.__file__)'

caltech="${NEARDUP_CALTECH101:-$root/../shared/caltech101/101_ObjectCategories}"
if [ ! -d "$caltech" ]; then
  caltech="$work/photos"
  python - "$caltech" <<'EOF'
import os, random, sys
from PIL import Image, ImageFilter
random.seed(3)
for n in range(40):
    folder = os.path.join(sys.argv[1], f"cat{n % 4}")
    os.makedirs(folder, exist_ok=True)
    noise = Image.effect_noise((240, 180), 90).filter(ImageFilter.GaussianBlur(6))
    Image.merge("RGB", [noise, noise.rotate(90 * (n % 4 + 1), expand=False), noise]).save(
        os.path.join(folder, f"image_{n:04d}.jpg"), quality=92)
EOF
fi

say "the README's example with the console commands"
neardup-gather --output installed-images --source "$caltech" --seed 1 -q
neardup-index --dataset installed-images --shelve installed.shelve -q
neardup-search --shelve installed.shelve --query installed-images/copies/g01_copy1.jpg

say "the example of 'Use' after it (its gather.py, index.py and search.py are the same programs)"
neardup-gather --output images --source "$caltech" --seed 1 -q
neardup-index --dataset images --shelve db.shelve -q
neardup-search --shelve db.shelve --query images/copies/g01_copy1.jpg

say "the README's Python API example, as written"
example="$(python - "$work/clone/README.md" <<'EOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
section = text.split("## Python API", 1)[1]
print(re.search(r"```python\n(.*?)```", section, re.S).group(1))
EOF
)"
python -c "$example"

say "a Dask scheduler and worker without neardup"
"$python" -m venv "$work/cluster"
pip_quiet "$work/cluster/bin/pip" install -r "$work/clone/requirements-dask.txt"
start_cluster() {
  rm -f "$work/scheduler.json"
  (cd "$work" && exec "$work/cluster/bin/dask" scheduler --host 127.0.0.1 --port 0 --no-dashboard \
      --scheduler-file "$work/scheduler.json" >"$work/scheduler.log" 2>&1) &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$work/scheduler.json" ] && break; sleep 0.2; done
  (cd "$work" && exec "$work/cluster/bin/dask" worker --scheduler-file "$work/scheduler.json" \
      --nworkers 2 --nthreads 1 --no-dashboard >"$work/worker.log" 2>&1) &
  pids+=($!)
  address="$("$work/cluster/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' "$work/scheduler.json")"
}
stop_cluster() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
start_cluster
set +e
neardup-index --dataset images --shelve cluster.shelve -q --scheduler "$address" 2>"$work/refused.txt"
status=$?
set -e
cat "$work/refused.txt"
[ "$status" = 2 ] && [ "$(wc -l <"$work/refused.txt")" = 1 ] && [ ! -e cluster.shelve ] \
  || { echo "check-install: expected one line, exit 2 and no store"; exit 1; }
stop_cluster

say "the worker install step of 'Scaling out', then the same cluster again"
pip_quiet "$work/cluster/bin/pip" install "$work/clone[dask]"
start_cluster
neardup-index --dataset images --shelve cluster.shelve -q --scheduler "$address"
stop_cluster
python - <<'EOF'
from neardup.core.store import Store
with Store.open_for_reading("db.shelve") as local, Store.open_for_reading("cluster.shelve") as cluster:
    assert dict(local.shelf) == dict(cluster.shelf), "the stores differ"
    print(f"the cluster's store equals the local one, key for key: {cluster.image_count()} images")
EOF
say "check-install: all passed"
