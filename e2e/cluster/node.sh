# The e2e cluster's node, sourced by `up --node` once the control plane answers (it uses up's
# DIR, PKI, BIN, API_URL, NODE_IP and its functions cert, kubeconfig, start, wait_until, fail).
#
#   containerd (Debian's, cgroupfs, its own root/state/socket under DIR/node), the images of
#     e2e/cluster/images imported, CNI bridge networking (Debian's plugins) on POD_CIDR
#   kubelet (cgroup v1 allowed explicitly), kube-proxy (iptables mode: the `kubernetes` Service
#     reaches the API server from pods)
#   hostpath-csi (node/hostpath-csi, registered with the kubelet), csi-provisioner, csi-attacher,
#     csi-snapshotter and snapshot-controller; CSIDriver, StorageClass `hostpath` and
#     VolumeSnapshotClass `hostpath`, both the default
#
# The kubelet changes kernel settings at start; their values before are kept in
# DIR/node/sysctl.orig for `down`, which also restores the iptables rules saved before (the
# kubelet's, kube-proxy's and CNI's chains go) and unmounts everything under DIR/node.

NODE_NAME=e2e-node
NODE_DIR=$DIR/node
POD_CIDR=10.244.0.0/24
CSI_DRIVER=hostpath.csi.e2e.local
# The sysctls the kubelet (and pod networking) set; `down` writes back what was there.
NODE_SYSCTLS="vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward"

node_sysctls_save() {
  local s
  [ -f "$NODE_DIR/sysctl.orig" ] && return 0
  for s in $NODE_SYSCTLS; do
    echo "$s=$(sysctl -n "$s")"
  done >"$NODE_DIR/sysctl.orig"
}

# The kubelet, kube-proxy and the CNI plugins add iptables chains and rules; `down` restores the
# tables as they were before `up`.
node_iptables_save() {
  [ -f "$NODE_DIR/iptables.orig" ] && return 0
  iptables-save >"$NODE_DIR/iptables.orig.partial" && ip6tables-save >"$NODE_DIR/ip6tables.orig" &&
    mv "$NODE_DIR/iptables.orig.partial" "$NODE_DIR/iptables.orig" || fail "iptables-save failed"
}

node_containerd() {
  local c=$NODE_DIR/containerd
  mkdir -p "$c/root" "$c/state" "$NODE_DIR/cni/conf" "$NODE_DIR/cni/ipam"
  cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:dev"
  enable_selinux = false
  # This machine denies lowering oom_score_adj below the caller's (as inside a container).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/conf"
EOF
  cat >"$NODE_DIR/cni/conf/10-e2e.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "e2e", "plugins": [
  {"type": "bridge", "bridge": "e2e0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  start containerd containerd --config "$c/config.toml"
  wait_until 30 "containerd's socket" containerd ctr -a "$c/containerd.sock" version
  local img
  for img in pause debian postgres push-operator; do
    ctr -a "$c/containerd.sock" -n k8s.io images import --no-unpack "$IMAGES/$img.tar" >&2 ||
      fail "ctr images import $IMAGES/$img.tar failed"
  done
}

node_kubelet() {
  local k=$NODE_DIR/kubelet
  mkdir -p "$k" "$NODE_DIR/pod-logs"
  # Volumes mounted by the CSI driver inside the kubelet's directory must reach the containers:
  # the directory is a shared mount point, as on a real node.
  mount --bind "$k" "$k"
  mount --make-rshared "$k"
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME"
  kubeconfig kubelet
  local port healthz
  port=$(free_port)
  healthz=$(free_port)
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroups are v1 on these machines; Kubernetes 1.35 refuses them unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$NODE_DIR/containerd/containerd.sock
address: $NODE_IP
port: $port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
failSwapOn: false
podLogsDir: $NODE_DIR/pod-logs
resolvConf: /etc/resolv.conf
# The images are imported, never pulled: image garbage collection must not remove them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# The node's disk is the machine's, shared with builds and caches: a percentage of it says nothing
# about what the pods need (1% of a 252 GB disk put a CI node under disk pressure with 2.5 GB
# free). Under pressure the kubelet taints the node, evicts every pod and removes unused images,
# which are imported and never pulled back. Evict only when the disk is really full.
evictionHard: {memory.available: 100Mi, nodefs.available: 256Mi, imagefs.available: 256Mi, nodefs.inodesFree: 1%}
serializeImagePulls: false
shutdownGracePeriod: 0s
# A pod's volume is mounted only once the kubelet has reported it in node.status.volumesInUse, and
# the attach-detach controller detaches only once it is gone from there; the kubelet writes that
# list every nodeStatusUpdateFrequency (10s by default), which made every pod with a PVC wait up
# to 10 s for its mount and every detach wait as long. 1s keeps both within a second.
nodeStatusUpdateFrequency: 1s
EOF
  start kubelet "$BIN/kubelet" --config="$NODE_DIR/kubelet.yaml" --kubeconfig="$DIR/kubelet.kubeconfig" \
    --root-dir="$k" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
  wait_until 120 "the kubelet's /healthz" kubelet curl -sf "http://127.0.0.1:$healthz/healthz"
}

node_proxy() {
  cert kube-proxy /CN=system:kube-proxy
  kubeconfig kube-proxy
  cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $DIR/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
# Leave the machine's conntrack table size alone.
conntrack: {maxPerCore: 0}
EOF
  start kube-proxy "$BIN/kube-proxy" --config="$NODE_DIR/kube-proxy.yaml"
}

node_storage() {
  local sock=$NODE_DIR/csi/csi.sock
  mkdir -p "$NODE_DIR/csi"
  start hostpath-csi "$BIN/hostpath-csi" --driver-name="$CSI_DRIVER" --node-id="$NODE_NAME" \
    --state="$NODE_DIR/csi/data" --endpoint="$sock" --registration-dir="$NODE_DIR/kubelet/plugins_registry"
  wait_until 30 "hostpath-csi's socket" hostpath-csi test -S "$sock"
  # The sidecars run as host processes with the admin's credentials (their own ServiceAccounts
  # and RBAC would add nothing the tests look at).
  start csi-provisioner "$BIN/csi-provisioner" --csi-address="$sock" --kubeconfig="$DIR/admin.kubeconfig" \
    --leader-election=false --extra-create-metadata --timeout=60s
  start csi-attacher "$BIN/csi-attacher" --csi-address="$sock" --kubeconfig="$DIR/admin.kubeconfig" \
    --leader-election=false --timeout=60s
  start csi-snapshotter "$BIN/csi-snapshotter" --csi-address="$sock" --kubeconfig="$DIR/admin.kubeconfig" \
    --leader-election=false --timeout=60s
  "$BIN/kubectl" --kubeconfig="$DIR/admin.kubeconfig" apply --server-side -f "$BIN/crds" >&2 ||
    fail "the VolumeSnapshot CRDs were rejected"
  # (kubectl wait fails at once on a CRD that has no conditions yet: hence the retries.)
  wait_until 60 "the VolumeSnapshot CRDs established" kube-apiserver \
    "$BIN/kubectl" --kubeconfig="$DIR/admin.kubeconfig" wait --for=condition=Established --timeout=10s \
    crd/volumesnapshots.snapshot.storage.k8s.io crd/volumesnapshotcontents.snapshot.storage.k8s.io \
    crd/volumesnapshotclasses.snapshot.storage.k8s.io
  # Without the VolumeGroupSnapshot CRDs (no scenario uses group snapshots) the controller spends
  # about a minute probing for them before it handles any VolumeSnapshot: the gate turns that off,
  # and up returns only once the controller runs.
  start snapshot-controller "$BIN/snapshot-controller" --kubeconfig="$DIR/admin.kubeconfig" --leader-election=false \
    --feature-gates=CSIVolumeGroupSnapshot=false
  wait_until 60 "the snapshot-controller's start" snapshot-controller \
    grep -q "Starting snapshot controller" "$DIR/logs/snapshot-controller.log"
  "$BIN/kubectl" --kubeconfig="$DIR/admin.kubeconfig" apply -f - >&2 <<EOF || fail "the storage objects were rejected"
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {name: $CSI_DRIVER}
spec: {attachRequired: true, podInfoOnMount: false, volumeLifecycleModes: [Persistent]}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: hostpath
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: $CSI_DRIVER
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: false
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata:
  name: hostpath
  annotations: {snapshot.storage.kubernetes.io/is-default-class: "true"}
driver: $CSI_DRIVER
deletionPolicy: Delete
---
# The API server's client certificate for the kubelet (logs, exec, port-forward).
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e2e:kube-apiserver-kubelet-client}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:kubelet-api-admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-apiserver-kubelet-client}]
EOF
}

node_ready() {
  "$BIN/kubectl" --kubeconfig="$DIR/admin.kubeconfig" get csinode "$NODE_NAME" \
    -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null | grep -qw "$CSI_DRIVER" &&
    "$BIN/kubectl" --kubeconfig="$DIR/admin.kubeconfig" wait --for=condition=Ready --timeout=1s \
      "node/$NODE_NAME" >/dev/null 2>&1
}

node_up() {
  mkdir -p "$NODE_DIR"
  node_sysctls_save
  node_iptables_save
  node_containerd
  node_kubelet
  node_proxy
  node_storage
  wait_until 120 "node $NODE_NAME Ready with $CSI_DRIVER registered" kubelet node_ready
}
