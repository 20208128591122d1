#!/usr/bin/env bash
# Builds the test Kubernetes API server: the upstream k8s.io/apiextensions-apiserver (wrapped by
# crdserver/main.go) and Debian's etcd, from Debian sid packages that are downloaded and unpacked,
# never installed. See README.md beside this file.
#
# Usage: e2e/apiserver/build.sh [--offline] [--refresh]
#   --offline  never touch the network (also PUSH_OPERATOR_APISERVER_OFFLINE=1): use
#              $CACHE/current as it is if it exists, else build from the cached lists and .debs.
#   --refresh  update the sid package lists even if they are younger than the refresh interval.
#   PUSH_OPERATOR_APISERVER_SLIM=1: after a build, delete root/ and gocache/ (set by .ci/run).
#
# The last line of stdout is the directory holding `crdserver` and `etcd`; progress goes to stderr.
#
# Everything lives in a cache outside the repository,
#   CACHE=${PUSH_OPERATOR_CACHE:-$HOME/.cache/push-operator}/apiserver
# apt/        private apt configuration, sid package lists and apt's own cache
# debs/       the downloaded .deb files
# root/       the .debs unpacked (Go toolchain, Go library sources, etcd)
# gopath/     GOPATH holding a copy of crdserver/main.go
# gocache/    GOCACHE
# bin-<key>/  crdserver, etcd, and `manifest`/`key` (what they were built from)
# current ->  bin-<key> of the last successful build
#
# <key> is a hash of the exact .deb files used (name, version, sha256), of crdserver/main.go and of
# RECIPE below. A build only happens when the key changes. The sid lists are updated when they are
# older than PUSH_OPERATOR_APISERVER_REFRESH_HOURS (default 24) and before every build; otherwise
# the key is recomputed from the cached lists, which takes about a second and no network.
#
# Works as root or as a normal user; needs apt-get, apt-cache, dpkg-deb, sha256sum, flock and
# debian-archive-keyring (all in a Debian base system). It changes nothing outside the cache.
set -euo pipefail

# Bump when the build steps change in a way that changes the binaries.
RECIPE=1

log() { printf 'apiserver/build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

OFFLINE=${PUSH_OPERATOR_APISERVER_OFFLINE:-0}
REFRESH=0
for arg in "$@"; do
  case $arg in
    --offline) OFFLINE=1 ;;
    --refresh) REFRESH=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done
[ "$OFFLINE" = 1 ] && [ "$REFRESH" = 1 ] && die "--offline and --refresh exclude each other"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MAIN_GO=$HERE/crdserver/main.go
[ -f "$MAIN_GO" ] || die "missing $MAIN_GO"
MAIN_SHA=$(sha256sum "$MAIN_GO" | cut -d' ' -f1)

CACHE=${PUSH_OPERATOR_CACHE:-$HOME/.cache/push-operator}/apiserver
MIRROR=${PUSH_OPERATOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
REFRESH_HOURS=${PUSH_OPERATOR_APISERVER_REFRESH_HOURS:-24}
mkdir -p "$CACHE"

# True if $1 holds both binaries.
complete() { [ -x "$1/crdserver" ] && [ -x "$1/etcd" ]; }

# Prints the canonical path of the current build (the last line of stdout) and exits.
finish() {
  (cd -P "$CACHE/current" && pwd)
  exit 0
}

# Fast path 1, no network and no apt: --offline takes the current build as it is.
if [ "$OFFLINE" = 1 ] && complete "$CACHE/current"; then
  grep -qx "main.go $MAIN_SHA" "$CACHE/current/manifest" 2>/dev/null ||
    log "warning: crdserver/main.go changed since $CACHE/current was built; run without --offline to rebuild"
  finish
fi

# One build at a time per cache; a second caller waits and then finds the result.
exec 9>"$CACHE/lock"
if ! flock -n 9; then
  log "waiting for another build.sh to finish (lock $CACHE/lock)"
  flock 9
fi

# ---- Private apt configuration -------------------------------------------------------------------
# apt reads the system configuration first (so proxies and the like still apply), then this file
# (-c), which moves everything apt reads or writes into $CACHE/apt: the sources (only sid), the
# lists, the binary caches and the dpkg status (empty, so the host's packages play no part). The
# system's apt configuration, lists and caches are not touched.
APT=$CACHE/apt
mkdir -p "$APT/lists/partial" "$APT/sources.list.d" "$APT/preferences.d" "$APT/cache/archives/partial"
[ -f "$APT/status" ] || : >"$APT/status"

# Writes stdin to $1 unless $1 already has exactly that content (apt rebuilds its cache when its
# configuration files change).
write_if_changed() {
  local new
  new=$(cat)
  [ -f "$1" ] && [ "$(cat "$1")" = "$new" ] && return 0
  printf '%s\n' "$new" >"$1"
}

write_if_changed "$APT/sources.list.d/sid.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: sid
Components: main
Architectures: $(dpkg --print-architecture)
Targets: Packages
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

write_if_changed "$APT/apt.conf" <<EOF
Dir::State::Lists "$APT/lists/";
Dir::State::status "$APT/status";
Dir::Cache "$APT/cache/";
Dir::Cache::pkgcache "pkgcache.bin";
Dir::Cache::srcpkgcache "srcpkgcache.bin";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$APT/sources.list.d/";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$APT/preferences.d/";
Acquire::Languages "none";
// .debs are downloaded into a directory the _apt user may not be able to write.
APT::Sandbox::User "$(id -un)";
// No hooks from the system configuration: this is not the system's package database.
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
EOF

apt_get() { apt-get -c "$APT/apt.conf" "$@"; }
apt_cache() { apt-cache -c "$APT/apt.conf" "$@"; }

UPDATED=0
update_lists() {
  log "updating the Debian sid package lists ($MIRROR)"
  apt_get -q update >&2 || die "apt-get update failed (is $MIRROR reachable?)"
  touch "$APT/updated"
  UPDATED=1
}

lists_present() { [ -f "$APT/updated" ]; }
lists_fresh() { lists_present && [ -n "$(find "$APT/updated" -mmin "-$((REFRESH_HOURS * 60))")" ]; }

# ---- Resolve the package set and the key ---------------------------------------------------------
# Sets GOVER, KEY and writes $CACHE/uris (one line per .deb: 'URL' file size SHA256:hash) and
# $CACHE/manifest (what the key is the hash of).
resolve() {
  local gopkg libs
  # The Go toolchain sid builds its Go packages with, e.g. golang-1.27-go.
  gopkg=$(apt_cache depends golang-go | awk '$1 == "Depends:" && $2 ~ /^golang-1\.[0-9]+-go$/ { print $2; exit }')
  [ -n "$gopkg" ] || die "cannot find the Go toolchain that sid's golang-go depends on"
  GOVER=${gopkg#golang-}
  GOVER=${GOVER%-go}
  # Every Go library the apiextensions-apiserver sources need, recursively (~315 packages; only
  # some are imported, but the closure is what Debian builds them with). Virtual packages are
  # printed as <name> and drop out of the filter.
  libs=$(apt_cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances golang-k8s-apiextensions-apiserver-dev | grep -E '^golang-.*-dev$' | sort -u)
  [ -n "$libs" ] || die "golang-k8s-apiextensions-apiserver-dev is not in sid any more?"
  # The exact .deb files (name_version_arch.deb) and their hashes, from the lists, without network.
  # shellcheck disable=SC2086 # $libs is a list of package names
  (cd "$APT" && apt_get download --print-uris "$gopkg" "golang-$GOVER-src" etcd-server $libs) |
    sort -k2 >"$CACHE/uris.new"
  awk '$4 !~ /^SHA256:/ { bad = 1 } END { exit bad }' "$CACHE/uris.new" ||
    die "apt did not give a SHA256 for every package"
  mv "$CACHE/uris.new" "$CACHE/uris"
  {
    echo "recipe $RECIPE"
    echo "main.go $MAIN_SHA"
    awk '{ sub(/^SHA256:/, "", $4); print $2, $4 }' "$CACHE/uris"
  } >"$CACHE/manifest"
  KEY=$(sha256sum "$CACHE/manifest" | cut -c1-16)
}

if [ "$OFFLINE" = 1 ]; then
  lists_present || die "--offline, but there are no cached package lists in $APT: run once without --offline"
elif [ "$REFRESH" = 1 ] || ! lists_fresh; then
  update_lists
fi
resolve

# Points $CACHE/current at bin-$KEY (atomically: a running test keeps a consistent view).
use_build() {
  ln -sfn "bin-$KEY" "$CACHE/current.new"
  mv -T "$CACHE/current.new" "$CACHE/current"
}

# Fast path 2: the key file of the current build matches the key computed from the lists.
if complete "$CACHE/current" && [ "$(cat "$CACHE/current/key" 2>/dev/null)" = "$KEY" ]; then
  finish
fi
# The previous build may have this key (e.g. after switching main.go back).
if complete "$CACHE/bin-$KEY"; then
  use_build
  finish
fi

# ---- Slow path: build ----------------------------------------------------------------------------
# Build from lists that are fresh, so that every .deb they name is still on the mirror.
if [ "$OFFLINE" = 0 ] && [ "$UPDATED" = 0 ]; then
  update_lists
  resolve
  if complete "$CACHE/bin-$KEY"; then
    use_build
    finish
  fi
fi
log "building key $KEY (Go $GOVER, $(wc -l <"$CACHE/uris") packages)"
START=$SECONDS

# Download the .debs not already cached; check every one against the hash from the lists.
DEBS=$CACHE/debs
mkdir -p "$DEBS"
awk '{ sub(/^SHA256:/, "", $4); print $4 "  " $2 }' "$CACHE/uris" >"$DEBS/SHA256SUMS"
# Prints the cached .debs that are missing or do not match their hash, one a line.
check_debs() { (cd "$DEBS" && sha256sum --quiet -c SHA256SUMS 2>/dev/null | sed -n 's/: FAILED.*$//p'); }
mapfile -t missing < <(check_debs)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$OFFLINE" = 0 ] || die "--offline, but ${#missing[@]} .deb files are not cached in $DEBS"
  log "downloading ${#missing[@]} .deb files into $DEBS"
  # apt-get download takes package names (file names are name_version_arch.deb) and fetches the
  # candidate versions, which are the ones in uris since both come from the same lists.
  (cd "$DEBS" && rm -f "${missing[@]}" && apt_get -q download "${missing[@]%%_*}") >&2 ||
    die "apt-get download failed"
  mapfile -t missing < <(check_debs)
  [ ${#missing[@]} -eq 0 ] || die "downloaded .deb files do not match their hashes: ${missing[*]}"
fi

# Unpack them into a fresh root/, unless root/ already holds exactly this set.
ROOT=$CACHE/root
if ! cmp -s "$CACHE/uris" "$CACHE/root.uris"; then
  log "unpacking $(wc -l <"$CACHE/uris") .deb files into $ROOT"
  rm -rf "$ROOT" "$CACHE/root.uris" "$ROOT.new"
  mkdir -p "$ROOT.new"
  awk '{ print $2 }' "$CACHE/uris" | while read -r deb; do dpkg-deb -x "$DEBS/$deb" "$ROOT.new"; done
  mv "$ROOT.new" "$ROOT"
  cp "$CACHE/uris" "$CACHE/root.uris"
fi

# Build crdserver in GOPATH mode against the unpacked library sources (/usr/share/gocode), with the
# unpacked toolchain only: no modules, no proxy, no toolchain download, no cgo.
GOROOT=$ROOT/usr/lib/go-$GOVER
[ -x "$GOROOT/bin/go" ] || die "no Go toolchain at $GOROOT"
rm -rf "$CACHE/gopath/src/crdserver"
mkdir -p "$CACHE/gopath/src/crdserver" "$CACHE/gocache" "$CACHE/go-config"
cp "$MAIN_GO" "$CACHE/gopath/src/crdserver/main.go"
# The Kubernetes version the binary reports, from the library version (0.36.4 -> v1.36.4).
KVER=$(awk '$2 ~ /^golang-k8s-apiextensions-apiserver-dev_/ { print $2 }' "$CACHE/uris" |
  sed -E 's/^[^_]*_([0-9]+%3a)?0\.([0-9]+)\.([0-9]+).*/1.\2.\3/')
OUT=$CACHE/bin-$KEY.new
rm -rf "$OUT"
mkdir -p "$OUT"
log "go build crdserver (k8s v$KVER, go $GOVER); takes a few minutes and ~1.5 GB of memory when cold"
# XDG_CONFIG_HOME keeps Go's telemetry counters out of the user's ~/.config.
env GOROOT="$GOROOT" GOPATH="$CACHE/gopath:$ROOT/usr/share/gocode" GOCACHE="$CACHE/gocache" \
  GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local GOFLAGS= GOENV=off CGO_ENABLED=0 \
  XDG_CONFIG_HOME="$CACHE/go-config" \
  "$GOROOT/bin/go" build -trimpath -ldflags "-s -w \
    -X k8s.io/component-base/version.gitVersion=v$KVER \
    -X k8s.io/component-base/version.gitMajor=1 \
    -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$KVER")" \
  -o "$OUT/crdserver" crdserver >&2
install -m 0755 "$ROOT/usr/bin/etcd" "$OUT/etcd"

# Smoke test: both binaries start on this host.
"$OUT/etcd" --version >/dev/null || die "the built etcd does not run on this host"
"$OUT/crdserver" --help >/dev/null || die "the built crdserver does not run on this host"

cp "$CACHE/manifest" "$OUT/manifest"
echo "$KEY" >"$OUT/key"
rm -rf "$CACHE/bin-$KEY"
mv -T "$OUT" "$CACHE/bin-$KEY"
PREVIOUS=$(readlink "$CACHE/current" || true)
use_build
log "built $CACHE/bin-$KEY in $((SECONDS - START)) s"

# Drop builds other than this one and the previous one (switching between two checkouts with
# different main.go should not rebuild every time), and .debs the current set no longer uses.
for old in "$CACHE"/bin-*; do
  case ${old##*/} in "bin-$KEY" | "$PREVIOUS") ;; *) rm -rf "$old" ;; esac
done
(cd "$DEBS" && for deb in *.deb; do grep -q " $deb\$" SHA256SUMS || rm -f "$deb"; done)

# A one-shot machine (CI) keeps only the binaries: the unpacked packages and Go's build cache
# (~3.7 GB) would otherwise sit beside the Rust build. A later rebuild unpacks them again.
if [ "${PUSH_OPERATOR_APISERVER_SLIM:-0}" = 1 ]; then
  rm -rf "$ROOT" "$CACHE/root.uris" "$CACHE/gocache"
  log "slim: removed the unpacked packages and the Go build cache"
fi

finish
