#!/usr/bin/env bash
# Starts the test Kubernetes API server for humans: etcd and crdserver (the apiextensions-apiserver,
# see README.md) on loopback, with fresh TLS certificates and a kubeconfig to use it with kubectl.
#
# Usage: e2e/apiserver/run.sh [start]   start both (fails if they already run)
#        e2e/apiserver/run.sh stop      stop both (keeps logs and data until the next start)
#        e2e/apiserver/run.sh status
#
# Environment (defaults in brackets):
#   PUSH_OPERATOR_CACHE             [$HOME/.cache/push-operator]; binaries from $CACHE/current,
#                                   made by build.sh (CACHE=$PUSH_OPERATOR_CACHE/apiserver)
#   RUN_DIR                         [$CACHE/run] certificates, kubeconfig, etcd data, logs, pids
#   PUSH_OPERATOR_APISERVER_PORT    [16443] HTTPS port of the API server
#   PUSH_OPERATOR_ETCD_PORT         [23790] etcd client port
#   PUSH_OPERATOR_ETCD_PEER_PORT    [ETCD_PORT + 10] etcd peer port (single member, loopback)
set -euo pipefail

CACHE=${PUSH_OPERATOR_CACHE:-$HOME/.cache/push-operator}/apiserver
BIN=$CACHE/current
RUN_DIR=${RUN_DIR:-$CACHE/run}
PORT=${PUSH_OPERATOR_APISERVER_PORT:-16443}
ETCD_PORT=${PUSH_OPERATOR_ETCD_PORT:-23790}
ETCD_PEER_PORT=${PUSH_OPERATOR_ETCD_PEER_PORT:-$((ETCD_PORT + 10))}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf 'apiserver/run: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Prints the pid recorded for $1 (etcd or crdserver) if that process still runs that binary.
running_pid() {
  local pid
  pid=$(cat "$RUN_DIR/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" = "$1" ] || return 1
  echo "$pid"
}

stop_one() {
  local pid
  if pid=$(running_pid "$1"); then
    kill -TERM "$pid"
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$1 (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
      kill -KILL "$pid"
    fi
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$RUN_DIR/$1.pid"
}

stop() {
  # The API server first, so that it does not log lost etcd connections.
  stop_one crdserver
  stop_one etcd
}

status() {
  local name pid rc=0
  for name in etcd crdserver; do
    if pid=$(running_pid "$name"); then echo "$name: running (pid $pid)"; else echo "$name: stopped"; rc=3; fi
  done
  [ "$rc" = 0 ] && echo "KUBECONFIG=$RUN_DIR/kubeconfig"
  return "$rc"
}

# Starts "$@" as $1 in its own session (so closing the terminal or ^C does not stop it), with its
# output in $RUN_DIR/$1.log; the process writes its own pid before it becomes the program.
spawn() {
  local name=$1
  shift
  rm -f "$RUN_DIR/$name.pid"
  # shellcheck disable=SC2016 # $$, $0 and $@ are for the inner sh
  setsid sh -c 'echo $$ >"$0"; exec "$@"' "$RUN_DIR/$name.pid" "$@" \
    </dev/null >"$RUN_DIR/$name.log" 2>&1 &
  for _ in $(seq 50); do
    [ -s "$RUN_DIR/$name.pid" ] && return 0
    sleep 0.1
  done
  die "$name did not start"
}

# Waits up to $2 seconds until curl succeeds on the remaining arguments; fails early if $1 died.
wait_for() {
  local name=$1 seconds=$2
  shift 2
  for _ in $(seq $((seconds * 10))); do
    curl -sf -o /dev/null --max-time 1 "$@" && return 0
    running_pid "$name" >/dev/null || break
    sleep 0.1
  done
  log "$name did not become healthy; last lines of $RUN_DIR/$name.log:"
  tail -n 20 "$RUN_DIR/$name.log" >&2 || true
  stop
  exit 1
}

start() {
  [ -x "$BIN/crdserver" ] && [ -x "$BIN/etcd" ] ||
    die "no binaries in $BIN: run $HERE/build.sh first (a few minutes the first time)"
  if running_pid etcd >/dev/null || running_pid crdserver >/dev/null; then
    die "already running (see: $0 status); stop it with: $0 stop"
  fi
  mkdir -p "$RUN_DIR"
  # Only what this script creates is removed, in case RUN_DIR points somewhere shared.
  rm -rf "$RUN_DIR/pki" "$RUN_DIR/etcd-data" "$RUN_DIR/kubeconfig" "$RUN_DIR/core-kubeconfig" \
    "$RUN_DIR"/*.log "$RUN_DIR"/*.pid
  mkdir -p "$RUN_DIR/pki"

  # A throwaway CA and a serving certificate for 127.0.0.1/localhost (EC P-256: fast to make).
  (
    cd "$RUN_DIR/pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
      -keyout ca.key -out ca.crt -subj /CN=push-operator-test-ca \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
    printf '%s\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost' 'extendedKeyUsage=serverAuth' \
      'keyUsage=critical,digitalSignature' >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
      -extfile server.ext -out server.crt 2>/dev/null
  ) || die "openssl failed to make the certificates"

  # The server wants a kubeconfig for the core Kubernetes API (for its authentication and
  # admission informers). There is none: this one points at a closed port, and every feature that
  # would need it is switched off below.
  cat >"$RUN_DIR/core-kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "http://127.0.0.1:1"}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
users: [{name: none, user: {token: none}}]
EOF

  # etcd: one member on loopback; no fsync (test data only, much faster on slow disks).
  spawn etcd "$BIN/etcd" --name default --data-dir "$RUN_DIR/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync
  wait_for etcd 10 "http://127.0.0.1:$ETCD_PORT/health"

  # crdserver:
  # --authentication-skip-lookup: do not read the client-CA configmap from kube-system (without it
  #   the server exits: "unable to load configmap based request-header-client-ca-file");
  #   requests without credentials are then "system:anonymous", which is allowed to do anything
  #   because crdserver runs without authorization.
  # --enable-priority-and-fairness=false: no request queueing; APF's configuration objects
  #   (flowcontrol.apiserver.k8s.io) are not served here, so it could only run on its built-in
  #   defaults, which a test server has no use for.
  # --disable-admission-plugins: with them on, every write fails with "not yet ready to handle
  #   request": NamespaceLifecycle waits for Namespaces (core API), the webhook and policy plugins
  #   for their configuration objects (admissionregistration.k8s.io, not served here).
  spawn crdserver "$BIN/crdserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --secure-port="$PORT" \
    --tls-cert-file="$RUN_DIR/pki/server.crt" --tls-private-key-file="$RUN_DIR/pki/server.key" \
    --authentication-skip-lookup \
    --authentication-kubeconfig="$RUN_DIR/core-kubeconfig" --kubeconfig="$RUN_DIR/core-kubeconfig" \
    --enable-priority-and-fairness=false \
    --disable-admission-plugins=NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,MutatingAdmissionPolicy
  # /readyz stays unhealthy for good (it waits on informers for the absent core API): /livez is
  # the signal that the server serves requests.
  wait_for crdserver 60 --cacert "$RUN_DIR/pki/ca.crt" "https://127.0.0.1:$PORT/livez"

  # kubectl asks for a username and password when a user has no credentials at all, so this user
  # has basic-auth ones. The server has no basic-auth authenticator and ignores them: the client is
  # system:anonymous. (A bearer token would not do: the server would try to check it with a
  # TokenReview on the absent core API and reject it.)
  cat >"$RUN_DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: push-operator-test, cluster: {server: "https://127.0.0.1:$PORT", certificate-authority: "$RUN_DIR/pki/ca.crt"}}]
contexts: [{name: push-operator-test, context: {cluster: push-operator-test, user: anonymous, namespace: default}}]
current-context: push-operator-test
users: [{name: anonymous, user: {username: anonymous, password: unused}}]
EOF

  cat <<EOF
The test API server runs: https://127.0.0.1:$PORT (etcd on 127.0.0.1:$ETCD_PORT, pids $(running_pid etcd) and $(running_pid crdserver)).
It serves CustomResourceDefinitions and custom resources only: no /api/v1, no apps/v1, no controllers.

  export KUBECONFIG=$RUN_DIR/kubeconfig
  kubectl api-resources
  kubectl apply -f my-crd.yaml

Namespaced objects can use any namespace name; Namespace objects themselves do not exist.
Logs: $RUN_DIR/etcd.log, $RUN_DIR/crdserver.log
Stop: $0 stop
EOF
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" ;;
  *) die "unknown command: $1 (start, stop or status)" ;;
esac
