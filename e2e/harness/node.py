#!/usr/bin/env python3
"""A simulated node and CSI driver on the real control plane (e2e/cluster/up), like kwok.

STOP-GAP until the real node (kubelet, containerd, the CSI hostpath driver and its sidecars)
replaces it. The Deployment, ReplicaSet and StatefulSet controllers, the scheduler, garbage
collection, the PersistentVolume binder and the attach/detach controller are the real ones of
kube-controller-manager and kube-scheduler; this process plays only what a node and a CSI driver
do, through the real API:

- kubelet of the Nodes node-a and node-b: registers them (Ready, node Lease renewed), runs the
  pods the scheduler binds to them (an application pod just becomes Running and Ready; a worker
  pod, labelled app.kubernetes.io/managed-by=push-operator, runs the real push-operator binary as
  a local process with its volumes mapped to the volume directories), finishes graceful deletion
  (DELETE with gracePeriodSeconds=0 once the grace knob has passed), and serves the kubelet's
  exec endpoint over HTTPS and a WebSocket (v4.channel.k8s.io): the command runs as a local process;
- the external-provisioner of the driver sim.csi.local: a PersistentVolume (and a directory
  DATA/pvcs/<ns>/<name>/) for each PVC the PV controller hands to it, a copy of the snapshot for a
  PVC whose dataSource is a VolumeSnapshot; Released volumes are deleted;
- the external-attacher: VolumeAttachments the attach/detach controller creates are marked
  attached (it detaches by deleting them);
- the snapshot-controller and csi-snapshotter: a VolumeSnapshot of a PVC becomes a copy of its
  directory (DATA/snapshots/<ns>/<name>/), a VolumeSnapshotContent, and readyToUse.

Per-scenario knobs come from CONFIG (JSON, re-read every tick):
  {"default": {"grace": 1, "worker_start_delay": 0},
   "overrides": {"<ns>/<pod-name-prefix>": {"grace": 10, "worker_start_delay": 60,
                                             "env": {"NAME": "value"}}}}
"""
import argparse
import base64
import hashlib
import http.server
import json
import os
import shutil
import signal
import socketserver
import ssl
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from k8s import ApiError, Client  # noqa: E402

CORE = "/api/v1"
STORAGE = "/apis/storage.k8s.io/v1"
SNAP = "/apis/snapshot.storage.k8s.io/v1"
COORD = "/apis/coordination.k8s.io/v1"
DRIVER = "sim.csi.local"
NODES = ("node-a", "node-b")
MANAGED = ("app.kubernetes.io/managed-by", "push-operator")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
EXEC_LIMIT_S = 600


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def now_micro():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def nspath(base, ns, plural, name=None, sub=None):
    p = f"{base}/namespaces/{ns}/{plural}"
    if name:
        p += f"/{name}"
    if sub:
        p += f"/{sub}"
    return p


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


class Node:
    def __init__(self, args):
        self.c = Client(args.server, args.cacert, cert=(args.cert, args.key))
        self.data = args.data
        self.binary = args.binary
        self.config_path = args.config
        self.logdir = args.logdir
        self.kubelet_port = args.kubelet_port
        self.first_seen = {}      # pod uid -> time seen Pending
        self.deleting_since = {}  # pod uid -> time seen with deletionTimestamp
        self.workers = {}         # pod uid -> (Popen, termination file)
        self.cfg = {}
        self.last_lease = 0.0

    def knob(self, ns, name, key, default):
        v = self.cfg.get("default", {}).get(key, default)
        best = -1
        for k, o in (self.cfg.get("overrides") or {}).items():
            if f"{ns}/{name}".startswith(k) and len(k) > best and key in o:
                best, v = len(k), o[key]
        return v

    def pvc_dir(self, ns, name):
        return os.path.join(self.data, "pvcs", ns, name)

    def snap_dir(self, ns, name):
        return os.path.join(self.data, "snapshots", ns, name)

    # ---------------------------------------------------------------- node registration
    def node_status(self):
        return {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "simulated kubelet is posting ready status",
                                "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
                "capacity": {"cpu": "16", "memory": "64Gi", "pods": "250"},
                "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "250"},
                "nodeInfo": {"machineID": "sim", "systemUUID": "sim", "bootID": "sim", "kernelVersion": "sim",
                             "osImage": "simulated node (e2e/harness/node.py)", "containerRuntimeVersion": "sim://0",
                             "kubeletVersion": "v0.0.0-sim", "kubeProxyVersion": "", "operatingSystem": "linux",
                             "architecture": "amd64"}}

    def register(self):
        for n in NODES:
            try:
                self.c.create(f"{CORE}/nodes", {
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": n, "labels": {"kubernetes.io/hostname": n, "kubernetes.io/os": "linux",
                                                       "kubernetes.io/arch": "amd64", "type": "simulated"},
                                 "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
                    "spec": {}})
            except ApiError as e:
                if e.status != 409:
                    raise
            self.c.merge(f"{CORE}/nodes/{n}/status", {"status": self.node_status()})
        self.renew_leases()
        log(f"registered nodes {', '.join(NODES)} (kubelet port {self.kubelet_port})")

    def renew_leases(self):
        if time.time() - self.last_lease < 5:
            return
        self.last_lease = time.time()
        for n in NODES:
            path = nspath(COORD, "kube-node-lease", "leases", n)
            body = {"spec": {"holderIdentity": n, "leaseDurationSeconds": 40, "renewTime": now_micro()}}
            try:
                self.c.merge(path, body)
            except ApiError as e:
                if e.status != 404:
                    raise
                self.c.create(nspath(COORD, "kube-node-lease", "leases"), {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": n, "namespace": "kube-node-lease"}, **body})

    # ---------------------------------------------------------------- kubelet
    def is_worker(self, p):
        return (p["metadata"].get("labels") or {}).get(MANAGED[0]) == MANAGED[1]

    def pod_status(self, p, status):
        ns, name = p["metadata"]["namespace"], p["metadata"]["name"]
        try:
            self.c.request("PATCH", nspath(CORE, ns, "pods", name, "status"), {"status": status},
                           ctype="application/strategic-merge-patch+json")
        except ApiError as e:
            if e.status != 404:
                raise

    def running_status(self, p, ready=True):
        c0 = p["spec"]["containers"][0]
        t = now_rfc3339()
        return {"phase": "Running", "startTime": t, "podIP": "10.244.0.10", "hostIP": "127.0.0.1",
                "conditions": [{"type": "Initialized", "status": "True", "lastTransitionTime": t},
                               {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": t},
                               {"type": "Ready", "status": str(ready), "lastTransitionTime": t}],
                "containerStatuses": [{"name": c0.get("name", "app"), "ready": ready, "restartCount": 0,
                                       "started": True, "image": c0.get("image", ""), "imageID": "",
                                       "state": {"running": {"startedAt": t}}}]}

    def resolve_env(self, ns, env):
        out = {}
        for e in env or []:
            if "value" in e:
                out[e["name"]] = e["value"]
            elif (e.get("valueFrom") or {}).get("secretKeyRef"):
                ref = e["valueFrom"]["secretKeyRef"]
                sec = self.c.get(nspath(CORE, ns, "secrets", ref["name"]))
                val = ((sec or {}).get("data") or {}).get(ref["key"])
                if val is None:
                    if ref.get("optional"):
                        continue
                    raise RuntimeError(f"secret {ref['name']} key {ref['key']} missing")
                out[e["name"]] = base64.b64decode(val).decode()
        return out

    def start_worker(self, p):
        ns, name, uid = p["metadata"]["namespace"], p["metadata"]["name"], p["metadata"]["uid"]
        spec = p["spec"]
        c0 = spec["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in c0.get("volumeMounts") or []}
        mounts.update({d["devicePath"]: d["name"] for d in c0.get("volumeDevices") or []})
        claims = {v["name"]: (v.get("persistentVolumeClaim") or {}).get("claimName") for v in spec.get("volumes") or []}
        args = list(c0.get("args") or [])
        if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "restore-check":
            return self.start_check(p, mounts, claims)
        for i, a in enumerate(args):
            if i > 0 and args[i - 1] == "--volume" and "=" in a:
                vol, path = a.split("=", 1)
                claim = claims.get(mounts.get(path))
                args[i] = f"{vol}={self.pvc_dir(ns, claim)}"
        term = os.path.join(self.logdir, f"worker-{ns}-{name}-{uid[:8]}.term")
        args += ["--termination-log", term]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), "NO_COLOR": "1"}
        try:
            env.update(self.resolve_env(ns, c0.get("env")))
            env.update(self.knob(ns, name, "env", {}) or {})
        except Exception as e:  # noqa: BLE001
            log(f"worker {ns}/{name}: cannot resolve env: {e}")
            self.pod_status(p, {"phase": "Pending", "message": f"CreateContainerConfigError: {e}"})
            return
        out = open(os.path.join(self.logdir, f"worker-{ns}-{name}-{uid[:8]}.log"), "w")
        proc = subprocess.Popen([self.binary] + args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.workers[uid] = (proc, term)
        log(f"worker {ns}/{name} started (pid {proc.pid}): {' '.join(args)}")
        self.pod_status(p, self.running_status(p))

    def start_check(self, p, mounts, claims):
        """A RestoreJob's check pod runs the user's command (a stop-gap for running their image):
        /volumes/<volume> becomes a directory of links to the PVCs' data, PUSH_OPERATOR_RESTORED
        names it."""
        ns, name, uid = p["metadata"]["namespace"], p["metadata"]["name"], p["metadata"]["uid"]
        c0 = p["spec"]["containers"][0]
        root = os.path.join(self.logdir, f"check-{ns}-{name}-{uid[:8]}")
        os.makedirs(root, exist_ok=True)
        for path, vname in mounts.items():
            if path.startswith("/volumes/") and claims.get(vname):
                link = os.path.join(root, path[len("/volumes/"):])
                if not os.path.lexists(link):
                    os.symlink(self.pvc_dir(ns, claims[vname]), link)
        term = os.path.join(self.logdir, f"worker-{ns}-{name}-{uid[:8]}.term")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": root, "PUSH_OPERATOR_RESTORED": root}
        argv = list(c0.get("command") or []) + list(c0.get("args") or [])
        out = open(os.path.join(self.logdir, f"worker-{ns}-{name}-{uid[:8]}.log"), "w")
        proc = subprocess.Popen(argv, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.workers[uid] = (proc, term)
        log(f"check {ns}/{name} started (pid {proc.pid}): {argv}")
        self.pod_status(p, self.running_status(p))

    def kill_worker(self, uid, why):
        w = self.workers.pop(uid, None)
        if w and w[0].poll() is None:
            try:
                os.killpg(w[0].pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            w[0].wait()
            log(f"worker pid {w[0].pid} killed ({why})")

    def finish_deletion(self, p, t):
        md = p["metadata"]
        ns, name, uid = md["namespace"], md["name"], md["uid"]
        since = self.deleting_since.setdefault(uid, t)
        self.kill_worker(uid, f"pod {ns}/{name} deleted")
        if t - since < self.knob(ns, name, "grace", 1):
            return
        try:
            self.c.request("DELETE", nspath(CORE, ns, "pods", name),
                           {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                            "preconditions": {"uid": uid}})
            log(f"pod {ns}/{name} terminated after {t - since:.1f}s")
        except ApiError as e:
            if e.status not in (404, 409):
                raise

    def worker_tick(self, p, t):
        md = p["metadata"]
        ns, name, uid = md["namespace"], md["name"], md["uid"]
        phase = (p.get("status") or {}).get("phase")
        if uid in self.workers:
            proc, term = self.workers[uid]
            rc = proc.poll()
            if rc is not None and phase == "Running":
                msg = open(term).read() if os.path.exists(term) else ""
                log(f"worker {ns}/{name} exited {rc}")
                c0 = p["spec"]["containers"][0]
                self.pod_status(p, {"phase": "Succeeded" if rc == 0 else "Failed",
                                    "conditions": [{"type": "Ready", "status": "False",
                                                    "reason": "PodCompleted", "lastTransitionTime": now_rfc3339()}],
                                    "containerStatuses": [
                                        {"name": c0.get("name", "worker"), "ready": False, "restartCount": 0,
                                         "image": c0.get("image", ""), "imageID": "",
                                         "state": {"terminated": {"exitCode": rc,
                                                                  "reason": "Completed" if rc == 0 else "Error",
                                                                  "message": msg, "finishedAt": now_rfc3339()}}}]})
        elif phase in (None, "Pending"):
            first = self.first_seen.setdefault(uid, t)
            if t - first >= max(0.5, float(self.knob(ns, name, "worker_start_delay", 0))):
                self.start_worker(p)

    def kubelet(self, pods):
        t = time.time()
        seen = set()
        for p in pods:
            md = p["metadata"]
            if (p.get("spec") or {}).get("nodeName") not in NODES:
                continue
            uid = md["uid"]
            seen.add(uid)
            if md.get("deletionTimestamp"):
                self.finish_deletion(p, t)
            elif self.is_worker(p):
                self.worker_tick(p, t)
            elif (p.get("status") or {}).get("phase") in (None, "Pending"):
                first = self.first_seen.setdefault(uid, t)
                if t - first >= 0.5:
                    self.pod_status(p, self.running_status(p))
        for uid in list(self.first_seen):
            if uid not in seen:
                self.first_seen.pop(uid, None)
                self.deleting_since.pop(uid, None)
        for uid in list(self.workers):
            if uid not in seen:
                self.kill_worker(uid, "pod gone")

    def pod_for_exec(self, ns, pod):
        return self.c.get(nspath(CORE, ns, "pods", pod))

    # ---------------------------------------------------------------- storage
    def provisioner(self, pvcs, pvs, snaps):
        pvnames = {pv["metadata"]["name"] for pv in pvs}
        for pvc in pvcs:
            md = pvc["metadata"]
            ns, name = md["namespace"], md["name"]
            spec = pvc.get("spec") or {}
            ann = md.get("annotations") or {}
            if md.get("deletionTimestamp") or spec.get("volumeName"):
                continue
            if ann.get("volume.kubernetes.io/storage-provisioner") != DRIVER:
                continue
            vol = f"pvc-{md['uid']}"
            if vol in pvnames:
                continue
            ds = spec.get("dataSourceRef") or spec.get("dataSource")
            d = self.pvc_dir(ns, name)
            if ds and ds.get("kind") == "VolumeSnapshot":
                snap = next((s for s in snaps if s["metadata"]["namespace"] == ns
                             and s["metadata"]["name"] == ds["name"]), None)
                if not snap or not (snap.get("status") or {}).get("readyToUse"):
                    continue
                if os.path.exists(d):
                    shutil.rmtree(d)
                shutil.copytree(self.snap_dir(ns, ds["name"]), d, symlinks=True)
            else:
                os.makedirs(d, exist_ok=True)
            self.c.create(f"{CORE}/persistentvolumes", {
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": vol, "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER}},
                "spec": {"capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {})
                                      .get("storage", "1Gi")},
                         "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                         "volumeMode": spec.get("volumeMode") or "Filesystem",
                         "storageClassName": spec.get("storageClassName"),
                         "csi": {"driver": DRIVER, "volumeHandle": vol},
                         "persistentVolumeReclaimPolicy": "Delete",
                         "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns,
                                      "name": name, "uid": md["uid"]}},
            })
            pvnames.add(vol)
            log(f"provisioned {vol} for PVC {ns}/{name}" + (f" from snapshot {ds['name']}" if ds else ""))
        for pv in pvs:
            if (pv.get("status") or {}).get("phase") != "Released" or pv["metadata"].get("deletionTimestamp"):
                continue
            if ((pv["metadata"].get("annotations") or {}).get("pv.kubernetes.io/provisioned-by")) != DRIVER:
                continue
            ref = (pv.get("spec") or {}).get("claimRef") or {}
            shutil.rmtree(self.pvc_dir(ref.get("namespace", "?"), ref.get("name", "?")), ignore_errors=True)
            self.c.delete(f"{CORE}/persistentvolumes/{pv['metadata']['name']}")
            log(f"deleted released {pv['metadata']['name']} ({ref.get('namespace')}/{ref.get('name')})")

    def attacher(self, vas):
        for va in vas:
            if (va.get("spec") or {}).get("attacher") != DRIVER or va["metadata"].get("deletionTimestamp"):
                continue
            if not (va.get("status") or {}).get("attached"):
                self.c.merge(f"{STORAGE}/volumeattachments/{va['metadata']['name']}/status",
                             {"status": {"attached": True}})
                log(f"attached {va['spec']['source'].get('persistentVolumeName')} to {va['spec']['nodeName']}")

    def snapshotter(self, snaps, pvcs, contents):
        pv_of = {(p["metadata"]["namespace"], p["metadata"]["name"]): (p.get("spec") or {}).get("volumeName")
                 for p in pvcs}
        have = {c["metadata"]["name"] for c in contents}
        for s in snaps:
            md = s["metadata"]
            ns, name = md["namespace"], md["name"]
            if md.get("deletionTimestamp") or (s.get("status") or {}).get("readyToUse"):
                continue
            src = ((s.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName")
            pv = pv_of.get((ns, src))
            if not pv or not os.path.isdir(self.pvc_dir(ns, src)):
                continue
            d = self.snap_dir(ns, name)
            if os.path.exists(d):
                shutil.rmtree(d)
            os.makedirs(os.path.dirname(d), exist_ok=True)
            shutil.copytree(self.pvc_dir(ns, src), d, symlinks=True)
            content = f"snapcontent-{md['uid']}"
            if content not in have:
                self.c.create(f"{SNAP}/volumesnapshotcontents", {
                    "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                    "metadata": {"name": content},
                    "spec": {"deletionPolicy": "Delete", "driver": DRIVER, "source": {"volumeHandle": pv},
                             "volumeSnapshotClassName": (s.get("spec") or {}).get("volumeSnapshotClassName"),
                             "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1",
                                                   "kind": "VolumeSnapshot", "namespace": ns, "name": name,
                                                   "uid": md["uid"]}}})
            self.c.merge(f"{SNAP}/volumesnapshotcontents/{content}/status",
                         {"status": {"readyToUse": True, "snapshotHandle": f"sim-{md['uid']}",
                                     "creationTime": int(time.time() * 1e9), "restoreSize": 1 << 30}})
            self.c.merge(nspath(SNAP, ns, "volumesnapshots", name, "status"),
                         {"status": {"readyToUse": True, "creationTime": now_rfc3339(), "restoreSize": "1Gi",
                                     "boundVolumeSnapshotContentName": content}})
            log(f"VolumeSnapshot {ns}/{name} of {src} ready ({content})")
        live = {s["metadata"]["uid"] for s in snaps}
        for c in contents:
            ref = (c.get("spec") or {}).get("volumeSnapshotRef") or {}
            if (c.get("spec") or {}).get("driver") == DRIVER and ref.get("uid") not in live:
                shutil.rmtree(self.snap_dir(ref.get("namespace", "?"), ref.get("name", "?")), ignore_errors=True)
                self.c.delete(f"{SNAP}/volumesnapshotcontents/{c['metadata']['name']}")
                log(f"deleted {c['metadata']['name']} (its VolumeSnapshot {ref.get('namespace')}/"
                    f"{ref.get('name')} is gone)")

    # ---------------------------------------------------------------- loop
    def tick(self):
        try:
            with open(self.config_path) as f:
                self.cfg = json.load(f)
        except (OSError, ValueError):
            pass
        self.renew_leases()
        self.kubelet(self.c.list(f"{CORE}/pods"))
        snaps = self.c.list(f"{SNAP}/volumesnapshots")
        pvcs = self.c.list(f"{CORE}/persistentvolumeclaims")
        self.provisioner(pvcs, self.c.list(f"{CORE}/persistentvolumes"), snaps)
        self.snapshotter(snaps, pvcs, self.c.list(f"{SNAP}/volumesnapshotcontents"))
        self.attacher(self.c.list(f"{STORAGE}/volumeattachments"))

    def run(self, interval):
        while True:
            t = time.time()
            try:
                self.tick()
            except ApiError as e:
                if e.status == 429:  # a CRD's storage still initializing, or load: next tick
                    log(f"tick deferred: {e}")
                else:
                    log("tick failed:\n" + traceback.format_exc())
            except Exception:  # noqa: BLE001
                log("tick failed:\n" + traceback.format_exc())
            time.sleep(max(0.0, interval - (time.time() - t)))


# -------------------------------------------------------------------- the kubelet's exec endpoint
class Kubelet(http.server.BaseHTTPRequestHandler):
    """GET /exec/<ns>/<pod>/<container>?command=...&stdout=1&stderr=1, upgraded to a WebSocket
    (v4.channel.k8s.io), as the API server proxies `pods/exec` to a kubelet."""
    protocol_version = "HTTP/1.1"
    node = None

    def log_message(self, fmt, *a):
        pass

    def send_status(self, code, reason, msg):
        body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": msg,
                           "reason": reason, "code": code}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def ws_frame(self, payload, opcode=0x2):
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        self.wfile.write(head + payload)
        self.wfile.flush()

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        parts = u.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "exec":
            self.send_status(404, "NotFound", f"the simulated kubelet serves only /exec, not {u.path}")
            return
        _, ns, pod, container = parts
        q = urllib.parse.parse_qs(u.query)
        command = q.get("command", [])
        protocols = [p.strip() for p in (self.headers.get("Sec-WebSocket-Protocol") or "").split(",")]
        if "websocket" not in (self.headers.get("Upgrade") or "").lower() or "v4.channel.k8s.io" not in protocols:
            self.send_status(400, "BadRequest", "the simulated kubelet speaks only WebSocket v4.channel.k8s.io "
                                                f"(asked for {self.headers.get('Upgrade')} {protocols})")
            return
        p = self.node.pod_for_exec(ns, pod)
        if p is None or (p.get("status") or {}).get("phase") != "Running":
            self.send_status(400, "BadRequest", f"pod {ns}/{pod} is not running")
            return
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        self.close_connection = True
        for ch in (1, 2, 3):  # the kubelet opens with an empty frame per channel
            self.ws_frame(bytes([ch]))
        try:
            proc = subprocess.run(command, capture_output=True, timeout=EXEC_LIMIT_S, stdin=subprocess.DEVNULL)
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        except FileNotFoundError as e:
            rc, out, err = None, b"", str(e).encode()
        except subprocess.TimeoutExpired:
            rc, out, err = -9, b"", b"killed by the simulated kubelet"
        log(f"exec {ns}/{pod}/{container} {command!r} -> exit {rc}")
        for ch, data, wanted in ((1, out, "stdout"), (2, err, "stderr")):
            if q.get(wanted, ["false"])[0] in ("1", "true"):
                for i in range(0, len(data), 32 * 1024):
                    self.ws_frame(bytes([ch]) + data[i:i + 32 * 1024])
        if rc == 0:
            st = {"metadata": {}, "status": "Success"}
        elif rc is None:
            st = {"metadata": {}, "status": "Failure", "reason": "InternalError",
                  "message": f"OCI runtime exec failed: exec failed: {err.decode(errors='replace')}: unknown"}
        else:
            st = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                  "message": f"command terminated with non-zero exit code: error executing command "
                             f"{command}, exit code {rc}",
                  "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]}}
        self.ws_frame(bytes([3]) + json.dumps(st).encode())
        self.ws_frame(struct.pack("!H", 1000), opcode=0x8)


class KubeletServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--cacert", required=True)
    p.add_argument("--cert", required=True, help="client certificate (the harness signs one with the cluster CA)")
    p.add_argument("--key", required=True)
    p.add_argument("--serving-cert", required=True, help="the kubelet endpoint's certificate")
    p.add_argument("--serving-key", required=True)
    p.add_argument("--kubelet-port", type=int, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--binary", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--logdir", required=True)
    p.add_argument("--interval", type=float, default=0.25)
    a = p.parse_args()
    node = Node(a)
    Kubelet.node = node
    srv = KubeletServer(("127.0.0.1", a.kubelet_port), Kubelet)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.serving_cert, a.serving_key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def stop(*_):
        for proc, _ in node.workers.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    node.register()
    node.run(a.interval)


if __name__ == "__main__":
    main()
