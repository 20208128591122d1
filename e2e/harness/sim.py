#!/usr/bin/env python3
"""Simulated cluster controllers (like kwok) on the stand-in core/apps CRDs.

Plays: the Deployment, ReplicaSet and StatefulSet controllers, the scheduler (nodeName), the
kubelet (Pending -> Running, graceful deletion through the finalizer sim.local/kubelet, worker
pods run as local processes of the real binary), the attach/detach controller
(VolumeAttachments), a provisioner (PVC -> PV, a local directory per volume) and a CSI
snapshotter (VolumeSnapshot -> copied directory, readyToUse).

Per-scenario knobs come from CONFIG (JSON, re-read every tick):
  {"default": {"grace": 1, "worker_start_delay": 0},
   "overrides": {"<ns>/<pod-name-prefix>": {"grace": 10, "worker_start_delay": 60,
                                             "env": {"NAME": "value"}}}}
"""
import argparse
import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from k8s import ApiError, Client  # noqa: E402

CORE = "/apis/core.sim.local/v1"
APPS = "/apis/apps.sim.local/v1"
STORAGE = "/apis/storage.k8s.io/v1"
SNAP = "/apis/snapshot.storage.k8s.io/v1"
FINALIZER = "sim.local/kubelet"
MANAGED = ("app.kubernetes.io/managed-by", "push-operator")


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def nspath(base, ns, plural, name=None, sub=None):
    p = f"{base}/namespaces/{ns}/{plural}"
    if name:
        p += f"/{name}"
    if sub:
        p += f"/{sub}"
    return p


class Sim:
    def __init__(self, args):
        self.c = Client(args.server, args.cacert)
        self.data = args.data
        self.binary = args.binary
        self.config_path = args.config
        self.logdir = args.logdir
        self.env = {}
        self.first_seen = {}      # pod uid -> time seen Pending
        self.deleting_since = {}  # pod uid -> time seen with deletionTimestamp
        self.workers = {}         # pod uid -> (Popen, termination file, ns, name)
        self.va_unused_since = {}
        self.cfg = {}

    def log(self, msg):
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

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

    # ---------------------------------------------------------------- workloads
    def pod_from_template(self, ns, name, owner_kind, owner, template, extra_labels=None):
        t = template or {}
        meta = t.get("metadata") or {}
        spec = json.loads(json.dumps(t.get("spec") or {}))
        spec.setdefault("containers", [{"name": "app", "image": "busybox"}])
        spec.setdefault("nodeName", "node-a")
        labels = dict(meta.get("labels") or {})
        labels.update(extra_labels or {})
        return {
            "apiVersion": "core.sim.local/v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": ns, "labels": labels,
                "annotations": meta.get("annotations") or {},
                "finalizers": [FINALIZER],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": owner["metadata"]["name"],
                                     "uid": owner["metadata"]["uid"], "controller": True,
                                     "blockOwnerDeletion": True}],
            },
            "spec": spec,
        }

    def owned(self, pods, kind, obj):
        uid = obj["metadata"]["uid"]
        return [p for p in pods if any(o.get("uid") == uid and o.get("kind") == kind
                                       for o in p["metadata"].get("ownerReferences") or [])]

    def set_workload_status(self, base, plural, obj, pods):
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        ready = [p for p in live if (p.get("status") or {}).get("phase") == "Running"]
        sel = (obj.get("spec") or {}).get("selector") or {}
        st = {
            "replicas": len(live), "readyReplicas": len(ready), "availableReplicas": len(ready),
            "updatedReplicas": len(live), "observedGeneration": obj["metadata"].get("generation"),
            "labelSelector": ",".join(f"{k}={v}" for k, v in (sel.get("matchLabels") or {}).items()),
        }
        old = obj.get("status") or {}
        if any(old.get(k) != v for k, v in st.items()):
            ns = obj["metadata"]["namespace"]
            self.c.merge(nspath(base, ns, plural, obj["metadata"]["name"], "status"), {"status": st})

    def deployments(self, deps, rss, pods):
        for d in deps:
            ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
            h = hashlib.sha256(json.dumps((d.get("spec") or {}).get("template") or {}, sort_keys=True)
                               .encode()).hexdigest()[:10]
            rsname = f"{name}-{h}"
            want = (d.get("spec") or {}).get("replicas", 1)
            mine = self.owned(rss, "Deployment", d)
            rs = next((r for r in mine if r["metadata"]["name"] == rsname), None)
            if rs is None:
                tmpl = json.loads(json.dumps(d["spec"].get("template") or {}))
                tmpl.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = h
                rs = self.c.create(nspath(APPS, ns, "replicasets"), {
                    "apiVersion": "apps.sim.local/v1", "kind": "ReplicaSet",
                    "metadata": {"name": rsname, "namespace": ns, "labels": dict(tmpl["metadata"]["labels"]),
                                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                                      "uid": d["metadata"]["uid"], "controller": True,
                                                      "blockOwnerDeletion": True}]},
                    "spec": {"replicas": want, "selector": d["spec"].get("selector") or {}, "template": tmpl},
                })
                self.log(f"created ReplicaSet {ns}/{rsname}")
                rss.append(rs)
            elif (rs.get("spec") or {}).get("replicas") != want:
                self.c.merge(nspath(APPS, ns, "replicasets", rsname), {"spec": {"replicas": want}})
                self.log(f"ReplicaSet {ns}/{rsname} replicas -> {want}")
            for old in mine:
                if old["metadata"]["name"] != rsname and (old.get("spec") or {}).get("replicas", 0) != 0:
                    self.c.merge(nspath(APPS, ns, "replicasets", old["metadata"]["name"]), {"spec": {"replicas": 0}})
            allpods = []
            for r in mine if rs in mine else mine + [rs]:
                allpods += self.owned(pods, "ReplicaSet", r)
            self.set_workload_status(APPS, "deployments", d, allpods)

    def replicasets(self, rss, pods):
        for rs in rss:
            ns, name = rs["metadata"]["namespace"], rs["metadata"]["name"]
            want = (rs.get("spec") or {}).get("replicas", 1)
            mine = self.owned(pods, "ReplicaSet", rs)
            live = [p for p in mine if not p["metadata"].get("deletionTimestamp")]
            names = {p["metadata"]["name"] for p in mine}
            i = 0
            while len(live) < want:
                while f"{name}-{i}" in names:
                    i += 1
                pod = self.pod_from_template(ns, f"{name}-{i}", "ReplicaSet", rs, rs["spec"].get("template"))
                created = self.c.create(nspath(CORE, ns, "pods"), pod)
                self.pod_status(created, {"phase": "Pending", "qosClass": "BestEffort"})
                live.append(created)
                names.add(f"{name}-{i}")
                self.log(f"created Pod {ns}/{name}-{i}")
            if len(live) > want:
                live.sort(key=lambda p: p["metadata"]["name"])
                for p in live[want:]:
                    self.c.delete(nspath(CORE, ns, "pods", p["metadata"]["name"]))
                    self.log(f"deleted Pod {ns}/{p['metadata']['name']}")
            self.set_workload_status(APPS, "replicasets", rs, mine)

    def statefulsets(self, stss, pods):
        for s in stss:
            ns, name = s["metadata"]["namespace"], s["metadata"]["name"]
            want = (s.get("spec") or {}).get("replicas", 1)
            mine = self.owned(pods, "StatefulSet", s)
            byname = {p["metadata"]["name"]: p for p in mine}
            for i in range(want):
                if f"{name}-{i}" not in byname:
                    pod = self.pod_from_template(ns, f"{name}-{i}", "StatefulSet", s, s["spec"].get("template"),
                                                 {"statefulset.kubernetes.io/pod-name": f"{name}-{i}"})
                    created = self.c.create(nspath(CORE, ns, "pods"), pod)
                    self.pod_status(created, {"phase": "Pending", "qosClass": "BestEffort"})
                    self.log(f"created Pod {ns}/{name}-{i}")
            for pn, p in byname.items():
                idx = pn.rsplit("-", 1)[-1]
                if idx.isdigit() and int(idx) >= want and not p["metadata"].get("deletionTimestamp"):
                    self.c.delete(nspath(CORE, ns, "pods", pn))
                    self.log(f"deleted Pod {ns}/{pn}")
            self.set_workload_status(APPS, "statefulsets", s, mine)

    # ---------------------------------------------------------------- kubelet
    def is_worker(self, p):
        return (p["metadata"].get("labels") or {}).get(MANAGED[0]) == MANAGED[1]

    def pod_status(self, p, status):
        ns, name = p["metadata"]["namespace"], p["metadata"]["name"]
        try:
            self.c.merge(nspath(CORE, ns, "pods", name, "status"), {"status": status})
        except ApiError as e:
            if e.status != 404:
                raise

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
            self.log(f"worker {ns}/{name}: cannot resolve env: {e}")
            self.pod_status(p, {"phase": "Pending", "message": f"CreateContainerConfigError: {e}"})
            return
        out = open(os.path.join(self.logdir, f"worker-{ns}-{name}-{uid[:8]}.log"), "w")
        proc = subprocess.Popen([self.binary] + args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.workers[uid] = (proc, term, ns, name)
        self.log(f"worker {ns}/{name} started (pid {proc.pid}): {' '.join(args)}")
        self.pod_status(p, {"phase": "Running", "startTime": now_rfc3339(), "containerStatuses": [
            {"name": c0.get("name", "worker"), "ready": True, "restartCount": 0, "image": c0.get("image", ""),
             "imageID": "", "state": {"running": {"startedAt": now_rfc3339()}}}]})

    def kubelet(self, pods):
        t = time.time()
        seen = set()
        for p in pods:
            md = p["metadata"]
            ns, name, uid = md["namespace"], md["name"], md["uid"]
            seen.add(uid)
            phase = (p.get("status") or {}).get("phase")
            if md.get("deletionTimestamp"):
                since = self.deleting_since.setdefault(uid, t)
                w = self.workers.pop(uid, None)
                if w and w[0].poll() is None:
                    try:
                        os.killpg(w[0].pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    w[0].wait()
                    self.log(f"worker {ns}/{name} killed (pod deleted)")
                grace = self.knob(ns, name, "grace", 1)
                if t - since >= grace and FINALIZER in (md.get("finalizers") or []):
                    fins = [f for f in md["finalizers"] if f != FINALIZER]
                    try:
                        self.c.request("PATCH", nspath(CORE, ns, "pods", name),
                                       [{"op": "test", "path": "/metadata/resourceVersion",
                                         "value": md["resourceVersion"]},
                                        {"op": "replace", "path": "/metadata/finalizers", "value": fins}],
                                       ctype="application/json-patch+json")
                        self.log(f"pod {ns}/{name} terminated after {t - since:.1f}s")
                    except ApiError as e:
                        if e.status not in (404, 409, 422):
                            raise
                continue
            if not (p.get("spec") or {}).get("nodeName"):
                self.c.merge(nspath(CORE, ns, "pods", name), {"spec": {"nodeName": "node-a"}})
            if self.is_worker(p):
                if uid in self.workers:
                    proc, term, _, _ = self.workers[uid]
                    rc = proc.poll()
                    if rc is not None and phase == "Running":
                        msg = open(term).read() if os.path.exists(term) else ""
                        self.log(f"worker {ns}/{name} exited {rc}")
                        self.pod_status(p, {"phase": "Succeeded" if rc == 0 else "Failed", "containerStatuses": [
                            {"name": "worker", "ready": False, "restartCount": 0, "image": "", "imageID": "",
                             "state": {"terminated": {"exitCode": rc, "reason": "Completed" if rc == 0 else "Error",
                                                      "message": msg, "finishedAt": now_rfc3339()}}}]})
                elif phase in (None, "Pending"):
                    first = self.first_seen.setdefault(uid, t)
                    if t - first >= max(0.5, float(self.knob(ns, name, "worker_start_delay", 0))):
                        self.start_worker(p)
                continue
            if phase in (None, "Pending"):
                first = self.first_seen.setdefault(uid, t)
                if t - first >= 0.5:
                    self.pod_status(p, {"phase": "Running", "startTime": now_rfc3339(), "podIP": "10.0.0.1"})
        for uid in list(self.first_seen):
            if uid not in seen:
                self.first_seen.pop(uid, None)
                self.deleting_since.pop(uid, None)
        for uid in list(self.workers):
            if uid not in seen:
                proc = self.workers.pop(uid)[0]
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    # ---------------------------------------------------------------- storage
    def provisioner(self, pvcs, pvs, snaps):
        pvnames = {pv["metadata"]["name"] for pv in pvs}
        for pvc in pvcs:
            md = pvc["metadata"]
            ns, name = md["namespace"], md["name"]
            spec = pvc.get("spec") or {}
            if md.get("deletionTimestamp"):
                continue
            vol = spec.get("volumeName")
            if vol and ((pvc.get("status") or {}).get("phase") == "Bound"):
                continue
            if not vol:
                ds = spec.get("dataSource") or spec.get("dataSourceRef")
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
                vol = f"pvc-{md['uid']}"
                if vol not in pvnames:
                    self.c.create(f"{CORE}/persistentvolumes", {
                        "apiVersion": "core.sim.local/v1", "kind": "PersistentVolume",
                        "metadata": {"name": vol},
                        "spec": {"capacity": ((spec.get("resources") or {}).get("requests") or {"storage": "1Gi"}),
                                 "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                                 "csi": {"driver": "sim.csi.local", "volumeHandle": vol},
                                 "persistentVolumeReclaimPolicy": "Delete",
                                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": ns, "name": name,
                                              "uid": md["uid"]}},
                    })
                    pvnames.add(vol)
                self.c.merge(nspath(CORE, ns, "persistentvolumeclaims", name), {"spec": {"volumeName": vol}})
            self.c.merge(nspath(CORE, ns, "persistentvolumeclaims", name, "status"),
                         {"status": {"phase": "Bound", "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                                     "capacity": (spec.get("resources") or {}).get("requests") or {}}})
            self.log(f"PVC {ns}/{name} bound to {vol}")
        live = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pvcs}
        for pv in pvs:
            ref = (pv.get("spec") or {}).get("claimRef") or {}
            if (ref.get("namespace"), ref.get("name")) not in live:
                self.c.delete(f"{CORE}/persistentvolumes/{pv['metadata']['name']}")
                d = self.pvc_dir(ref.get("namespace", "?"), ref.get("name", "?"))
                shutil.rmtree(d, ignore_errors=True)
                self.log(f"PV {pv['metadata']['name']} released ({ref.get('namespace')}/{ref.get('name')} gone)")

    def attacher(self, pvcs, pods, vas):
        t = time.time()
        pv_of = {(p["metadata"]["namespace"], p["metadata"]["name"]): (p.get("spec") or {}).get("volumeName")
                 for p in pvcs}
        used = {}
        for p in pods:
            phase = (p.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                continue
            node = (p.get("spec") or {}).get("nodeName")
            if not node:
                continue
            for v in (p.get("spec") or {}).get("volumes") or []:
                claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
                pv = pv_of.get((p["metadata"]["namespace"], claim))
                if pv:
                    used.setdefault(pv, node)
        have = {(va.get("spec") or {}).get("source", {}).get("persistentVolumeName"): va for va in vas}
        for pv, node in used.items():
            self.va_unused_since.pop(pv, None)
            if pv not in have:
                self.c.create(f"{STORAGE}/volumeattachments", {
                    "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
                    "metadata": {"name": f"csi-{hashlib.sha256(pv.encode()).hexdigest()[:20]}"},
                    "spec": {"attacher": "sim.csi.local", "nodeName": node, "source": {"persistentVolumeName": pv}},
                })
                self.log(f"VolumeAttachment for {pv} on {node}")
        for pv, va in have.items():
            if pv in used:
                continue
            since = self.va_unused_since.setdefault(pv, t)
            if t - since >= 0.5:
                self.c.delete(f"{STORAGE}/volumeattachments/{va['metadata']['name']}")
                self.va_unused_since.pop(pv, None)
                self.log(f"VolumeAttachment for {pv} deleted")

    def snapshotter(self, snaps, pvcs):
        names = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pvcs}
        for s in snaps:
            md = s["metadata"]
            ns, name = md["namespace"], md["name"]
            if md.get("deletionTimestamp") or (s.get("status") or {}).get("readyToUse"):
                continue
            src = ((s.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName")
            if (ns, src) not in names or not os.path.isdir(self.pvc_dir(ns, src)):
                continue
            d = self.snap_dir(ns, name)
            if os.path.exists(d):
                shutil.rmtree(d)
            os.makedirs(os.path.dirname(d), exist_ok=True)
            shutil.copytree(self.pvc_dir(ns, src), d, symlinks=True)
            self.c.merge(nspath(SNAP, ns, "volumesnapshots", name, "status"),
                         {"status": {"readyToUse": True, "creationTime": now_rfc3339(), "restoreSize": "1Gi",
                                     "boundVolumeSnapshotContentName": f"snapcontent-{md['uid']}"}})
            self.log(f"VolumeSnapshot {ns}/{name} of {src} ready")

    # ---------------------------------------------------------------- loop
    def tick(self):
        try:
            with open(self.config_path) as f:
                self.cfg = json.load(f)
        except (OSError, ValueError):
            pass
        deps = self.c.list(f"{APPS}/deployments")
        rss = self.c.list(f"{APPS}/replicasets")
        stss = self.c.list(f"{APPS}/statefulsets")
        pods = self.c.list(f"{CORE}/pods")
        self.deployments(deps, rss, pods)
        self.replicasets(rss, pods)
        self.statefulsets(stss, pods)
        pods = self.c.list(f"{CORE}/pods")
        self.kubelet(pods)
        snaps = self.c.list(f"{SNAP}/volumesnapshots")
        pvcs = self.c.list(f"{CORE}/persistentvolumeclaims")
        pvs = self.c.list(f"{CORE}/persistentvolumes")
        self.provisioner(pvcs, pvs, snaps)
        self.snapshotter(snaps, pvcs)
        vas = self.c.list(f"{STORAGE}/volumeattachments")
        self.attacher(pvcs, pods, vas)
        for s in snaps:
            if s["metadata"].get("deletionTimestamp") is None:
                continue
        live = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in snaps}
        root = os.path.join(self.data, "snapshots")
        if os.path.isdir(root):
            for ns in os.listdir(root):
                for n in os.listdir(os.path.join(root, ns)):
                    if (ns, n) not in live:
                        shutil.rmtree(os.path.join(root, ns, n), ignore_errors=True)

    def run(self, interval):
        while True:
            t = time.time()
            try:
                self.tick()
            except Exception:  # noqa: BLE001
                self.log("tick failed:\n" + traceback.format_exc())
            time.sleep(max(0.0, interval - (time.time() - t)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--cacert")
    p.add_argument("--data", required=True)
    p.add_argument("--binary", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--logdir", required=True)
    p.add_argument("--interval", type=float, default=0.25)
    a = p.parse_args()
    sim = Sim(a)

    def stop(*_):
        for proc, *_ in sim.workers.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sim.run(a.interval)


if __name__ == "__main__":
    main()
