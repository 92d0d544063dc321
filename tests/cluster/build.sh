#!/usr/bin/env bash
# Builds the pinned control-plane binaries (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok) and helm from their Go modules, through the Go module proxy only.
#
# Output: ~/.cache/kruise-rs/k8s-bin/<k8s>-etcd<etcd>-kwok<kwok>/ (KRUISE_K8S_BIN_DIR overrides) with
# one binary each and a `.complete` stamp. The cache sits outside the checkout so that every clone
# (CI clones afresh) finds it: a second run returns in well under a second. Prints the directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache="${XDG_CACHE_HOME:-$HOME/.cache}/kruise-rs/k8s-bin"
out="${KRUISE_K8S_BIN_DIR:-$cache/${K8S_VERSION}-etcd${ETCD_VERSION}-kwok${KWOK_VERSION}}"
helm_stamp=".helm-${HELM_VERSION}"
if [[ -f "$out/.complete" && -f "$out/$helm_stamp" ]]; then
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: Go is required (go 1.26 or newer)" >&2; exit 1; }
mkdir -p "$out"
log() { echo "[tests/cluster/build.sh] $*" >&2; }

# The machine's own Go; never download another toolchain. -mod=mod lets go.sum be completed.
export GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
# Upstream release builds use these tags; `notest` drops test-only code paths.
tags="selinux,notest,grpcnotrace"

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
# Without these the binaries report v0.0.0-master, which confuses version-sniffing tools.
k8s_ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=${K8S_VERSION} \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=${minor} \
 -X k8s.io/client-go/pkg/version.gitVersion=${K8S_VERSION} \
 -X k8s.io/component-base/version.gitTreeState=clean"

start=$(date +%s)
missing() { for b in "$@"; do [[ -x "$out/$b" ]] || return 0; done; return 1; }

if missing kube-apiserver kube-controller-manager kube-scheduler kubectl; then
  log "building Kubernetes ${K8S_VERSION} (apiserver, controller-manager, scheduler, kubectl) into $out"
  (cd "$here/go/kubernetes" && go build -trimpath -tags "$tags" -ldflags "$k8s_ldflags" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl)
fi
if missing etcd; then
  log "building etcd ${ETCD_VERSION}"
  (cd "$here/go/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3)
fi
if missing kwok; then
  log "building kwok ${KWOK_VERSION}"
  (cd "$here/go/kwok" && go build -trimpath -ldflags "-s -w" -o "$out/kwok" sigs.k8s.io/kwok/cmd/kwok)
fi

if [[ ! -f "$out/$helm_stamp" ]]; then
  log "building helm ${HELM_VERSION}"
  (cd "$here/go/helm" && go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
    -o "$out/helm" helm.sh/helm/v3/cmd/helm)
  touch "$out/$helm_stamp"
fi

# kwok has no built-in stages: take the ones its module ships (what kwokctl uses by default):
# nodes become Ready and keep a lease; pods bound to a kwok node run, Job pods complete, and
# deleted pods go away.
kwok_src="$(cd "$here/go/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
{
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    cat "$kwok_src/kustomize/stage/$f"
    echo "---"
  done
} > "$out/kwok-stages.yaml.tmp"
mv "$out/kwok-stages.yaml.tmp" "$out/kwok-stages.yaml"

for b in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm; do
  [[ -x "$out/$b" ]] || { log "missing $out/$b after build"; exit 1; }
done
touch "$out/.complete"
log "done in $(( $(date +%s) - start ))s"
echo "$out"
