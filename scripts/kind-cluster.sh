#!/usr/bin/env bash
# A kind cluster wired to a container registry on localhost:5001 (`make cluster`).
#
# These are the steps of kind's own local-registry recipe, as kind documents them today
# (https://kind.sigs.k8s.io/docs/user/local-registry/, site/static/examples/kind-with-registry.sh
# in kubernetes-sigs/kind): containerd's registry `config_path` = /etc/containerd/certs.d with a
# hosts.toml per node that sends localhost:5001 to the registry container, the registry
# container on the `kind` network, and the KEP-1755 ConfigMap kube-public/local-registry-hosting.
# (The older `registry.mirrors` patch no longer works: containerd 2 removed it.)
#
# Idempotent: an existing cluster and registry are reused; running it again changes nothing.
#
# NOT EXERCISED HERE: the machines this project is developed and tested on reach neither kind's
# node images nor Docker Hub, so this script is only checked statically (`bash -n`, shellcheck:
# tests/test_kind_cluster.py); the tests run on k8s-local, which stands in for it.
#
# Settings: KIND_CLUSTER_NAME (default kind, as for kind itself), REGISTRY_NAME (kind-registry),
# REGISTRY_PORT (5001), REGISTRY_IMAGE (registry:3).
set -euo pipefail

cluster_name="${KIND_CLUSTER_NAME:-kind}"
reg_name="${REGISTRY_NAME:-kind-registry}"
reg_port="${REGISTRY_PORT:-5001}"
reg_image="${REGISTRY_IMAGE:-registry:3}"
context="kind-${cluster_name}"

for tool in docker kind kubectl; do
  command -v "${tool}" >/dev/null || { echo "error: ${tool} is not on PATH" >&2; exit 2; }
done

# 1. The registry container, unless it exists (a stopped one is started again).
state="$(docker inspect -f '{{.State.Running}}' "${reg_name}" 2>/dev/null || true)"
if [ -z "${state}" ]; then
  echo "== registry ${reg_name} on 127.0.0.1:${reg_port}"
  docker run -d --restart=always -p "127.0.0.1:${reg_port}:5000" --network bridge \
    --name "${reg_name}" "${reg_image}"
elif [ "${state}" != 'true' ]; then
  echo "== registry ${reg_name}: starting the existing container"
  docker start "${reg_name}" >/dev/null
else
  echo "== registry ${reg_name}: already running"
fi

# 2. The cluster, with containerd's registry config directory enabled, unless it exists.
if kind get clusters 2>/dev/null | grep -qx "${cluster_name}"; then
  echo "== cluster ${cluster_name}: already exists"
else
  echo "== cluster ${cluster_name}"
  kind create cluster --name "${cluster_name}" --config=- <<'EOF'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
- |-
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
EOF
fi

# 3. On every node: localhost:<port> is the registry container (localhost inside a node is
#    the node itself). Rewriting the same file is harmless, so nodes added later get it too.
registry_dir="/etc/containerd/certs.d/localhost:${reg_port}"
for node in $(kind get nodes --name "${cluster_name}"); do
  docker exec "${node}" mkdir -p "${registry_dir}"
  printf '[host."http://%s:5000"]\n' "${reg_name}" \
    | docker exec -i "${node}" cp /dev/stdin "${registry_dir}/hosts.toml"
done

# 4. The registry on the cluster's network, unless it is already connected.
if [ "$(docker inspect -f='{{json .NetworkSettings.Networks.kind}}' "${reg_name}")" = 'null' ]; then
  docker network connect kind "${reg_name}"
fi

# 5. Announce the registry (KEP-1755), as kind documents.
kubectl --context "${context}" apply -f - <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "localhost:${reg_port}"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
EOF

echo "== ready: kubectl context ${context}, registry localhost:${reg_port}"
echo "   next: make images deploy"
