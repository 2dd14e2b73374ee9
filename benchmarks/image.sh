#!/usr/bin/env bash
# Training image: size, cold build time (docker build --no-cache) and cached rebuild time after a
# code change; the controller image of detached sweeps (k8s/controller/Dockerfile): its size, and
# the size it would have with the whole `driver` extra instead of the `controller` one. Prints `name: value` lines. Builds from a temporary copy of the build context (the
# files .dockerignore lets through), so the "code change" (a comment appended to a copy of
# celeb_smile/__init__.py: Docker's cache keys on content, not mtime) never touches the tree.
#
#     bash benchmarks/image.sh          # ~5-10 minutes cold, seconds cached
#
# Needs a running Docker engine (/work/shared/k8s-local/up starts one); skips when there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG="${TAG:-celeb-smile-train:benchmark}"

echo "machine_nproc: $(nproc)"
echo "machine_cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "machine_load_1min: $(cut -d' ' -f1 /proc/loadavg)"
echo "machine_date: $(date -Iseconds)"

if ! docker info >/dev/null 2>&1; then
    echo "docker: not running (start it with /work/shared/k8s-local/up); skipped"
    exit 0
fi

context="$(mktemp -d /tmp/image-bench.XXXXXX)"
trap 'rm -rf "$context"' EXIT
cp -r Dockerfile .dockerignore MLproject train.py driver.py pyproject.toml celeb_smile "$context/"
mkdir -p "$context/k8s/controller" && cp k8s/controller/Dockerfile "$context/k8s/controller/"
find "$context/celeb_smile" -name __pycache__ -prune -exec rm -rf {} +

seconds() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

started=$(seconds)
docker build --no-cache -q -t "$TAG" "$context" >/dev/null
echo "build_cold_s: $(elapsed "$started" "$(seconds)")"

echo "# benchmark: code change" >> "$context/celeb_smile/__init__.py"
started=$(seconds)
docker build -q -t "$TAG" "$context" >/dev/null
echo "build_cached_s: $(elapsed "$started" "$(seconds)")"

bytes=$(docker image inspect -f '{{.Size}}' "$TAG")
echo "image_size_mb: $(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1e6 }')"
base=$(awk '/^FROM/ { print $2; exit }' Dockerfile)
base_bytes=$(docker image inspect -f '{{.Size}}' "$base" 2>/dev/null || echo 0)
echo "base_image_mb: $(awk -v b="$base_bytes" 'BEGIN { printf "%.0f", b / 1e6 }')"
# The largest layer is the dependencies'; its biggest parts, measured inside the image.
docker run --rm --entrypoint sh "$TAG" -c \
    'cd "$(python -c "import sysconfig; print(sysconfig.get_paths()[\"purelib\"])")" &&
     du -sm tensorflow/libtensorflow_cc.so.2 tensorflow/include clang pyarrow scipy pandas 2>/dev/null' |
    awk '{ gsub("/", "_", $2); gsub("[.]", "_", $2); print "site_packages_" $2 "_mb: " $1 }'
docker image rm "$TAG" >/dev/null 2>&1 || true

# The controller image, as shipped (the `controller` extra) and with the `driver` extra.
megabytes() { awk -v b="$(docker image inspect -f '{{.Size}}' "$1")" 'BEGIN { printf "%.0f", b / 1e6 }'; }
docker build -q -t celeb-smile-controller:benchmark -f "$context/k8s/controller/Dockerfile" \
    "$context" >/dev/null
echo "controller_image_size_mb: $(megabytes celeb-smile-controller:benchmark)"
sed 's/pyproject.toml controller >/pyproject.toml driver >/' "$context/k8s/controller/Dockerfile" \
    > "$context/k8s/controller/Dockerfile.driver"
python3 - "$context/pyproject.toml" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
# pins.py lists an extra as written: the driver extra's self-reference, expanded for pip -r.
controller = re.search(r"controller = \[(.*?)\]", text, re.S)[1]
text = text.replace('"celeb-smile[controller]",', controller.strip().rstrip(","), 1)
open(path, "w").write(text)
PY
docker build -q -t celeb-smile-controller:driver-extra \
    -f "$context/k8s/controller/Dockerfile.driver" "$context" >/dev/null
echo "controller_image_with_driver_extra_mb: $(megabytes celeb-smile-controller:driver-extra)"
docker image rm celeb-smile-controller:benchmark celeb-smile-controller:driver-extra \
    >/dev/null 2>&1 || true
