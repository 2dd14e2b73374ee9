#!/usr/bin/env bash
# `make data`: run the Job k8s/data/prepare-celeba-job.yaml (CelebA into the tfds-data volume)
# in NAMESPACE (a deployment's sweeps namespace, where the volume is) with TRAIN_IMAGE, wait for
# it to succeed or fail, and end with its last line.
# Usage: scripts/prepare-data.sh NAMESPACE TRAIN_IMAGE
set -euo pipefail

namespace="${1:?usage: $0 NAMESPACE TRAIN_IMAGE}"
image="${2:?usage: $0 NAMESPACE TRAIN_IMAGE}"
job=prepare-celeba
manifest="$(dirname "${BASH_SOURCE[0]}")/../k8s/data/prepare-celeba-job.yaml"
timeout_seconds="${PREPARE_TIMEOUT_SECONDS:-14400}"

# A finished Job cannot be started again: replace it.
kubectl -n "${namespace}" delete job "${job}" --ignore-not-found --wait=true >/dev/null
sed "s|image: localhost:5001/celeb-smile-train:.*|image: ${image}|" "${manifest}" \
  | kubectl -n "${namespace}" apply -f - >/dev/null
echo "== job/${job} started in ${namespace}; waiting (kubectl -n ${namespace} logs -f job/${job})"

deadline=$((SECONDS + timeout_seconds))
while true; do
  status="$(kubectl -n "${namespace}" get job "${job}" --request-timeout=20s \
    -o jsonpath='{.status.succeeded}/{.status.failed}')"
  case "${status}" in
    1/*) outcome=0; break ;;
    */[1-9]*) outcome=1; break ;;
  esac
  waiting="$(kubectl -n "${namespace}" get pods -l "job-name=${job}" --request-timeout=20s \
    -o jsonpath='{.items[*].status.containerStatuses[*].state.waiting.reason}')"
  case "${waiting}" in
    *ImagePullBackOff*|*ErrImagePull*|*InvalidImageName*|*CreateContainerConfigError*)
      echo "error: job/${job} cannot start its pod: ${waiting} (image ${image}; \`make images\` first?)" >&2
      exit 1 ;;
  esac
  if [ "${SECONDS}" -ge "${deadline}" ]; then
    echo "error: job/${job} did not finish within ${timeout_seconds}s" >&2
    exit 1
  fi
  sleep 5
done
last_line="$(kubectl -n "${namespace}" logs "job/${job}" --tail=1 2>/dev/null || true)"
if [ "${outcome}" -ne 0 ]; then
  echo "${last_line:-error: job/${job} failed (kubectl -n ${namespace} describe job/${job})}" >&2
  exit 1
fi
echo "${last_line}"
