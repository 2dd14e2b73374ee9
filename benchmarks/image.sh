#!/usr/bin/env bash
# Training image: size, cold build time (docker build --no-cache) and cached rebuild time after a
# code change. Prints `name: value` lines. Builds from a temporary copy of the build context (the
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
cp -r Dockerfile .dockerignore MLproject train.py pyproject.toml celeb_smile "$context/"
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
