#!/usr/bin/env bash
# Builds the e2e cluster's programs from their Go modules, once, into a cache outside the clone:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy
#       (go.mod beside this file: k8s.io/kubernetes and go.etcd.io/etcd/server/v3 at the versions it
#       pins, go.sum committed)
#   helm                                                       (helm.sh/helm/v4 at HELM_VERSION)
#   csi-provisioner, csi-attacher, csi-snapshotter, snapshot-controller   the CSI sidecars, each
#       built inside a copy of its own module (their go.mod files carry `replace` lines, which
#       `go install module@version` refuses) at PROVISIONER/ATTACHER/SNAPSHOTTER_VERSION
#   crds/snapshot.storage.k8s.io_*.yaml   the VolumeSnapshot CRDs of the CSI external-snapshotter
#   hostpath-csi, cri-clean   the project's node programs (node/, a module of its own, go.sum
#       committed): the CSI driver with its kubelet registration, and the sandbox cleaner of `down`
#
# Usage: e2e/cluster/build.sh    the last line of stdout is the directory holding the programs;
#                                progress goes to stderr.
#
# CACHE=${PUSH_OPERATOR_CACHE:-$HOME/.cache/push-operator}/cluster
#   bin-<key>/   the programs; <key> hashes go.mod, go.sum, this script and the Go version, so a
#                build only happens when one of them changes (a cached build answers in < 1 s)
#   current ->   the last complete bin-<key>
# The Go module and build caches are the machine's own (`go env GOMODCACHE GOCACHE`): a rebuild
# after a version bump only compiles what changed.
#
# The Go toolchain is the machine's own (`go` on PATH, 1.25 or newer; GOTOOLCHAIN=local, so no
# toolchain is ever downloaded). Modules come through the machine's configured GOPROXY.
# First build on 2 cores: about 20 minutes with the module downloads (the sidecars ~3 min each,
# they use a newer client-go than the cluster), and 6 GB (module cache ~2 GB, build cache ~4 GB).
set -euo pipefail

HELM_VERSION=v4.3.2
PROVISIONER_VERSION=v6.4.0
ATTACHER_VERSION=v4.13.0
SNAPSHOTTER_VERSION=v8.7.0
# Bump when the build steps change in a way that changes the programs.
RECIPE=2

log() { printf 'cluster/build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v go >/dev/null || die "no 'go' on PATH: install Go 1.25 or newer (Debian: golang-1.2x, or the machine's own)"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
GO_VERSION=$(go env GOVERSION)
KUBE_VERSION=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$HERE/go.mod")
[ -n "$KUBE_VERSION" ] || die "go.mod pins no k8s.io/kubernetes"
KUBE_MINOR=$(echo "$KUBE_VERSION" | cut -d. -f2)

CACHE=${PUSH_OPERATOR_CACHE:-$HOME/.cache/push-operator}/cluster
mkdir -p "$CACHE"
KEY=$( { cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/node/go.mod" "$HERE/node/go.sum" "$HERE"/node/*/*.go "$0"
  echo "$GO_VERSION $RECIPE"; } | sha256sum | cut -c1-16)
OUT=$CACHE/bin-$KEY
PROGRAMS="etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy helm
  csi-provisioner csi-attacher csi-snapshotter snapshot-controller hostpath-csi cri-clean"

complete() {
  local p
  for p in $PROGRAMS; do [ -x "$1/$p" ] || return 1; done
  [ -f "$1/crds/snapshot.storage.k8s.io_volumesnapshots.yaml" ]
}

finish() {
  ln -sfn "bin-$KEY" "$CACHE/current"
  (cd -P "$OUT" && pwd)
  exit 0
}

complete "$OUT" && finish

exec 9>"$CACHE/lock"
if ! flock -n 9; then
  log "waiting for another build.sh to finish (lock $CACHE/lock)"
  flock 9
fi
complete "$OUT" && finish

started=$(date +%s)
TMP=$OUT.partial
rm -rf "$TMP"
mkdir -p "$TMP"
log "building Kubernetes $KUBE_VERSION and etcd with $GO_VERSION into $OUT (first build: ~10 min on 2 cores)"
VERSION_FLAGS="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$KUBE_MINOR
  -X k8s.io/component-base/version.gitTreeState=clean
  -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION
  -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$KUBE_MINOR"
(
  cd "$HERE"
  go build -mod=readonly -trimpath -ldflags "-s -w $VERSION_FLAGS" -o "$TMP/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy
  # etcd's main package is the root of its server module; it builds as `v3`.
  go build -mod=readonly -trimpath -ldflags "-s -w" -o "$TMP/etcd" go.etcd.io/etcd/server/v3
) >&2
log "building helm $HELM_VERSION"
# `go install module@version` builds helm with the go.sum of its own release.
GOBIN=$TMP go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2
log "building the node programs (hostpath-csi, cri-clean)"
(cd "$HERE/node" && go build -mod=readonly -trimpath -ldflags "-s -w" -o "$TMP/" ./hostpath-csi ./cri-clean) >&2
# sidecar MODULE@VERSION COMMAND...: builds each cmd/COMMAND of the module inside a writable copy.
sidecar() {
  local mod=$1 dir work
  shift
  log "building $* ($mod)"
  dir=$(go mod download -json "$mod" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] || die "go mod download $mod gave no directory"
  work=$TMP/src
  rm -rf "$work"
  cp -r "$dir" "$work"
  chmod -R u+w "$work"
  # A `replace M => ./dir` of a nested module (external-snapshotter's client) points at a
  # directory the module zip leaves out: take M from the proxy instead, at the sidecar's release.
  local m path
  while read -r m path; do
    [ -e "$work/$path" ] && continue
    (cd "$work" && go mod edit -dropreplace="$m" -require="$m@${mod##*@}")
  done < <(cd "$work" && go mod edit -json | python3 -c 'import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    p = r["New"]["Path"]
    if p.startswith("./") or p.startswith("../"):
        print(r["Old"]["Path"], p)')
  local c
  for c in "$@"; do
    (cd "$work" && go build -mod=mod -trimpath -ldflags "-s -w" -o "$TMP/$c" "./cmd/$c") >&2
  done
  rm -rf "$work"
}
sidecar "github.com/kubernetes-csi/external-provisioner/v6@$PROVISIONER_VERSION" csi-provisioner
sidecar "github.com/kubernetes-csi/external-attacher/v4@$ATTACHER_VERSION" csi-attacher
sidecar "github.com/kubernetes-csi/external-snapshotter/v8@$SNAPSHOTTER_VERSION" csi-snapshotter snapshot-controller
log "fetching the VolumeSnapshot CRDs of external-snapshotter $SNAPSHOTTER_VERSION"
SNAP_DIR=$(go mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAPSHOTTER_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
mkdir -p "$TMP/crds"
cp "$SNAP_DIR"/config/crd/snapshot.storage.k8s.io_*.yaml "$TMP/crds/"
chmod u+w "$TMP"/crds/*
complete "$TMP" || die "a program is missing from $TMP after the build"
{
  echo "kubernetes $KUBE_VERSION"
  echo "helm $HELM_VERSION"
  echo "external-provisioner $PROVISIONER_VERSION"
  echo "external-attacher $ATTACHER_VERSION"
  echo "external-snapshotter $SNAPSHOTTER_VERSION"
  echo "go $GO_VERSION"
  echo "recipe $RECIPE"
} >"$TMP/manifest"
rm -rf "$OUT"
mv "$TMP" "$OUT"
log "built in $(($(date +%s) - started)) s: $(du -sh "$OUT" | cut -f1) of programs"
finish
