#!/usr/bin/env bash
# Builds the e2e cluster's programs from their Go modules, once, into a cache outside the clone:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (go.mod beside this file:
#   k8s.io/kubernetes and go.etcd.io/etcd/server/v3 at the versions it pins, go.sum committed)
#   helm                                                       (helm.sh/helm/v4 at HELM_VERSION)
#   crds/snapshot.storage.k8s.io_*.yaml   the VolumeSnapshot CRDs of the CSI external-snapshotter
#                                          (its client/v8 module at SNAPSHOTTER_VERSION)
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
# First build on 2 cores: about 10 minutes with the module downloads, and 4 GB (module cache
# ~1 GB, build cache ~3 GB).
set -euo pipefail

HELM_VERSION=v4.3.2
SNAPSHOTTER_VERSION=v8.7.0
# Bump when the build steps change in a way that changes the programs.
RECIPE=1

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
KEY=$( { cat "$HERE/go.mod" "$HERE/go.sum" "$0"; echo "$GO_VERSION $RECIPE"; } | sha256sum | cut -c1-16)
OUT=$CACHE/bin-$KEY
PROGRAMS="etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm"

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
    k8s.io/kubernetes/cmd/kubectl
  # etcd's main package is the root of its server module; it builds as `v3`.
  go build -mod=readonly -trimpath -ldflags "-s -w" -o "$TMP/etcd" go.etcd.io/etcd/server/v3
) >&2
log "building helm $HELM_VERSION"
# `go install module@version` builds helm with the go.sum of its own release.
GOBIN=$TMP go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2
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
  echo "external-snapshotter $SNAPSHOTTER_VERSION"
  echo "go $GO_VERSION"
  echo "recipe $RECIPE"
} >"$TMP/manifest"
rm -rf "$OUT"
mv "$TMP" "$OUT"
log "built in $(($(date +%s) - started)) s: $(du -sh "$OUT" | cut -f1) of programs"
finish
