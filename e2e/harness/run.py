#!/usr/bin/env python3
"""End-to-end runner: a real cluster (e2e/cluster/up --node: the control plane, the kubelet,
containerd, the CSI driver and sidecars, the node's images), SeaweedFS, Prometheus, the chart
installed by the real helm (the operator runs as its pod), then the scenarios. Prints one line per
scenario and `N passed, M failed`.

Worker pods are steered, where a scenario needs it (a slow start, a crash or pause point), through
the test hooks of the test build (src/test_hooks.rs): the `rediacc.io/test-worker-env` annotation
of a job.

Usage: run.py [NAME...] [--keep] [--only NAME[,NAME...]] [--parallel N]
"""
import argparse
import atexit
import base64
import calendar
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
from k8s import ApiError, Client  # noqa: E402

AK, SK, BUCKET = "AKIAE2EPUSHOPERATOR", "e2e-secret-key-push-operator", "e2e"
# Every e2e store is encrypted (the default) with this passphrase, given to the workers by the
# Repositories' encryption Secret and to the CLI here by the environment.
PASSPHRASE = "e2e passphrase of the push-operator stores"
GROUP = "/apis/rediacc.io/v1alpha1"
CORE, APPS = "/api/v1", "/apis/apps/v1"
SNAPG = "/apis/snapshot.storage.k8s.io/v1"
JOB_LABEL = "rediacc.io/push-job"
RELEASE, OPERATOR_NS = "push-operator", "push-operator-system"
# The app pods' process: waits, and exits at once on SIGTERM (a scale-down is quick).
APP_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]
SHORT = {"pods": "po", "persistentvolumeclaims": "pvc", "persistentvolumes": "pv", "deployments": "deploy",
         "replicasets": "rs", "statefulsets": "sts", "volumesnapshots": "vs", "volumeattachments": "va"}


class Failure(Exception):
    pass


def free_port(pair=False):
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if not pair:
            return p
        if p < 55000:
            try:
                t = socket.socket()
                t.bind(("127.0.0.1", p + 10000))
                t.close()
                return p
            except OSError:
                pass


def nsp(base, ns, plural, name=None, sub=None):
    p = f"{base}/namespaces/{ns}/{plural}"
    return p + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def wait_for(pred, timeout, what, interval=0.25):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            v = pred()
            if v:
                return v
        except (ApiError, OSError) as e:
            last = e
        time.sleep(interval)
    raise Failure(f"timed out after {timeout}s waiting for {what}" + (f" (last error {last})" if last else ""))


class Harness:
    def __init__(self, keep):
        # What scenarios use of the node: storage class, CSI driver, node names, app image.
        self.sc, self.driver, self.nodes = "hostpath", "hostpath.csi.e2e.local", ["e2e-node"]
        self.app_image = "localhost/debian:bookworm"
        self.tmp = tempfile.mkdtemp(prefix="push-e2e-")
        self.logs = os.path.join(self.tmp, "logs")
        os.makedirs(self.logs)
        self.keep = keep
        self.procs = {}
        self.op_n = 0

    # ------------------------------------------------------------ processes
    def start(self, name, argv, env=None, cwd=None):
        log = open(os.path.join(self.logs, f"{name}.log"), "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=cwd, start_new_session=True)
        log.close()
        self.procs[name] = p
        return p

    def stop(self, name, sig=signal.SIGTERM, wait=10):
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    def stop_all(self):
        if getattr(self, "timeline_stop", None):
            self.timeline_stop.set()
        if getattr(self, "cluster_dir", None) and getattr(self, "kubectl_bin", None):
            # The operator pod's log, before the node goes.
            r = self.kubectl("logs", "-n", OPERATOR_NS, f"deploy/{RELEASE}", timeout=20)
            with open(os.path.join(self.logs, "operator.log"), "a") as f:
                f.write(r.stdout + r.stderr)
        for name in ["prometheus", "weed"] + list(self.procs):
            self.stop(name, wait=5)
        if getattr(self, "cluster_dir", None):
            subprocess.run([os.path.join(REPO, "e2e/cluster/down"), "--dir", self.cluster_dir],
                           capture_output=True)
            self.cluster_dir = None

    # ------------------------------------------------------------ set-up
    def setup(self):
        t0 = time.time()
        binsrc = os.path.join(REPO, "target/debug/push-operator")
        self.bin = os.path.join(self.tmp, "bin", "push-operator")
        os.makedirs(os.path.dirname(self.bin))
        shutil.copy2(binsrc, self.bin)
        self.start_cluster()
        self.start_s3()
        self.install_chart()
        self.start_prometheus()
        wait_for(self.s3_ready, 60, "SeaweedFS")
        self.start_operator(self.op_max)
        self.record_timeline()
        print(f"set-up done in {time.time() - t0:.1f}s (logs: {self.tmp})", flush=True)

    def record_timeline(self):
        """logs/timeline.log: every phase change of a PushJob, RestoreJob or pod in the cluster, with
        its time: where a slow scenario spends its time."""
        self.timeline_stop = threading.Event()
        path, lock, last = os.path.join(self.logs, "timeline.log"), threading.Lock(), {}

        def record(kind):
            def on_event(typ, o):
                m = o["metadata"]
                st = o.get("status") or {}
                phase = "Deleted" if typ == "DELETED" else st.get("phase") or "-"
                key = (kind, m.get("namespace"), m["name"], m.get("uid"))
                with lock:
                    if last.get(key) == phase:
                        return
                    last[key] = phase
                    reason = (st.get("failure") or {}).get("reason", "") if kind != "pod" else ""
                    with open(path, "a") as f:
                        f.write(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {kind} "
                                f"{m.get('namespace')}/{m['name']} {phase} {reason}\n")
            return on_event
        for kind, p in [("pushjob", GROUP + "/pushjobs"), ("restorejob", GROUP + "/restorejobs"),
                        ("pod", CORE + "/pods")]:
            self.c.watch(p, record(kind), self.timeline_stop)

    def start_cluster(self):
        """The cluster with its node (e2e/cluster/up --node); the harness talks to it as kubernetes-admin."""
        self.cluster_dir = os.path.join(self.tmp, "cluster")
        r = subprocess.run([os.path.join(REPO, "e2e/cluster/up"), "--dir", self.cluster_dir, "--watch-pid",
                            str(os.getpid()), "--node", "--operator-binary", self.bin], capture_output=True, text=True)
        if r.returncode != 0:
            raise Failure(f"e2e/cluster/up failed: {r.stderr[-3000:]}")
        env = dict(ln.split("=", 1) for ln in open(os.path.join(self.cluster_dir, "env")).read().splitlines() if ln)
        self.kube_bin, self.api, self.cacert = env["BIN"], env["API_URL"], env["CA"]
        # Pods reach the machine (the S3 store) at its address.
        self.host_ip = env["NODE_IP"]
        self.kubectl_bin = os.path.join(self.kube_bin, "kubectl")
        self.kubeconfig = env["KUBECONFIG"]
        pki = os.path.join(self.cluster_dir, "pki")
        self.admin_cert = (os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
        self.c = Client(self.api, self.cacert, cert=self.admin_cert)

    def start_s3(self):
        s3dir = os.path.join(self.tmp, "s3")
        os.makedirs(os.path.join(s3dir, "data"))
        with open(os.path.join(s3dir, "s3.json"), "w") as f:
            json.dump({"identities": [{"name": "t", "credentials": [{"accessKey": AK, "secretKey": SK}],
                                       "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        s3port = free_port()
        wargs = ["weed", "mini", f"-dir={s3dir}/data", f"-ip={self.host_ip}", f"-ip.bind={self.host_ip}",
                 f"-s3.config={s3dir}/s3.json", "-admin.ui=false", "-webdav=false", f"-s3.port={s3port}",
                 f"-bucket={BUCKET}"]
        for flag in ["master.port", "volume.port", "filer.port", "admin.port", "s3.port.iceberg", "s3.metricsPort"]:
            wargs.append(f"-{flag}={free_port(pair=True)}")
        self.start("weed", wargs)
        self.s3 = f"http://{self.host_ip}:{s3port}"

    def helm(self, *args):
        r = subprocess.run([os.path.join(self.kube_bin, "helm"), "--kubeconfig", self.kubeconfig, *args],
                           capture_output=True, text=True, env=self.helm_env())
        if r.returncode != 0:
            raise Failure(f"helm {args[0]} failed: {r.stderr[-2000:]}")
        return r.stdout

    def chart_values(self, max_pushes):
        """On the real node: the operator as the chart's Deployment (leader election on), in the image
        e2e/cluster/images made; workers request little CPU so that several fit on the 2-core node."""
        return ["--set", "image.repository=localhost/push-operator", "--set", "image.tag=dev",
                "--set", f"controller.maxConcurrentPushes={max_pushes}", "--set", "controller.detachTimeout=2m",
                "--set-string", "controller.logLevel=info\\,kube=warn", "--set", "worker.cpuRequest=50m",
                "--set", "worker.memoryRequest=64Mi"]

    def install_chart(self):
        """`helm install` of charts/push-operator into push-operator-system (Pod Security
        `restricted`): the operator runs as the chart's pod, with the chart's ServiceAccount and RBAC."""
        self.c.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": OPERATOR_NS, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
        self.op_max = 4
        self.helm_notes = self.helm("install", RELEASE, os.path.join(REPO, "charts", "push-operator"),
                                    "--namespace", OPERATOR_NS, *self.chart_values(self.op_max), "--wait",
                                    "--timeout", "3m")
        if self.c.get(f"/apis/apps/v1/namespaces/{OPERATOR_NS}/deployments/{RELEASE}") is None:
            raise Failure(f"helm install made no Deployment {OPERATOR_NS}/{RELEASE}")

    def start_prometheus(self):
        """A real Prometheus (Debian's package) with the chart's alert rules, scraping the operator
        every second (its address is rewritten into a file_sd target file at each start)."""
        d = os.path.join(self.tmp, "prometheus")
        os.makedirs(d)
        rules = os.path.join(d, "rules.yaml")
        r = subprocess.run([os.path.join(REPO, "scripts", "check-alerts"), "--rules-out", rules, "--render-only"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Failure(f"scripts/check-alerts --render-only: {r.stdout[-1500:]} {r.stderr[-1500:]}")
        self.prom_targets = os.path.join(d, "targets.json")
        with open(self.prom_targets, "w") as f:
            json.dump([], f)
        with open(os.path.join(d, "prometheus.yml"), "w") as f:
            json.dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [rules],
                       "scrape_configs": [{"job_name": "push-operator", "file_sd_configs": [
                           {"files": [self.prom_targets], "refresh_interval": "1s"}]}]}, f)
        port = free_port()
        self.start("prometheus", ["prometheus", f"--config.file={d}/prometheus.yml", f"--storage.tsdb.path={d}/data",
                                  f"--web.listen-address=127.0.0.1:{port}"])
        self.prometheus = f"http://127.0.0.1:{port}"
        wait_for(lambda: self.http(f"{self.prometheus}/-/ready"), 60, "Prometheus ready")

    def prom(self, path):
        """GET a Prometheus API path; the `data` of a success."""
        body = json.loads(self.http(f"{self.prometheus}{path}") or "{}")
        if body.get("status") != "success":
            raise Failure(f"Prometheus {path}: {body}")
        return body["data"]

    def helm_env(self):
        home = os.path.join(self.tmp, "helm")
        return dict(os.environ, HELM_CACHE_HOME=f"{home}/cache", HELM_CONFIG_HOME=f"{home}/config",
                    HELM_DATA_HOME=f"{home}/data")

    def s3_env(self):
        e = dict(os.environ)
        e.update(AWS_ENDPOINT_URL=self.s3, AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK, AWS_REGION="us-east-1",
                 PUSH_OPERATOR_PASSWORD=PASSPHRASE)
        return e

    def s3_ready(self):
        try:
            urllib.request.urlopen(self.s3, timeout=2)
        except urllib.error.HTTPError:
            pass
        except OSError:
            return False
        r = subprocess.run([self.bin, "snapshots", "--store", f"s3://{BUCKET}/ready", "--json"],
                           env=self.s3_env(), capture_output=True, text=True)
        self.s3_probe = r.stdout + r.stderr
        return r.returncode == 0 or "does not exist" not in self.s3_probe.lower()

    def volume_dir(self, pvc):
        """The directory of a bound PVC's data: the CSI driver's mount of the volume (its handle)."""
        pv = self.c.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
        return os.path.join(self.cluster_dir, "node", "csi", "data", "volumes", pv["spec"]["csi"]["volumeHandle"])

    def operator_pods(self):
        return [p for p in self.c.list(nsp(CORE, OPERATOR_NS, "pods"),
                                       f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=controller")
                if not p["metadata"].get("deletionTimestamp")]

    def operator_pod_ready(self):
        pods = self.operator_pods()
        if len(pods) != 1:
            return None
        p = pods[0]
        return p if pod_ready(p) and p["status"].get("podIP") else None

    def start_operator(self, max_pushes=4, not_in=()):
        """The operator Deployment with max_pushes (a helm upgrade when it changes), then its one
        Ready pod not named in not_in (after a kill, the one the Deployment made again)."""
        if max_pushes != self.op_max:
            self.helm("upgrade", RELEASE, os.path.join(REPO, "charts", "push-operator"), "--namespace", OPERATOR_NS,
                      *self.chart_values(max_pushes), "--wait", "--timeout", "3m")
            self.op_max = max_pushes
        pod = wait_for(lambda: (lambda p: p if p and p["metadata"]["name"] not in not_in else None)(
            self.operator_pod_ready()), 120, "one Ready operator pod")
        self.op_n += 1
        self.metrics_target = f"{pod['status']['podIP']}:8080"
        self.metrics_url = f"http://{self.metrics_target}"
        wait_for(lambda: self.http(f"{self.metrics_url}/healthz"), 20, "operator /healthz")
        self.set_prom_target()

    def set_prom_target(self):
        if getattr(self, "prom_targets", None):
            tmp = self.prom_targets + ".tmp"
            with open(tmp, "w") as f:
                json.dump([{"targets": [self.metrics_target]}], f)
            os.replace(tmp, self.prom_targets)

    def restart_operator(self):
        """A graceful restart: SIGTERM (the lease is handed over), then the next operator."""
        names = [p["metadata"]["name"] for p in self.operator_pods()]
        r = self.kubectl("delete", "pod", "-n", OPERATOR_NS, "--wait=false", *names)
        if r.returncode != 0:
            raise Failure(f"kubectl delete pod {names}: {r.stderr}")
        self.start_operator(self.op_max, not_in=names)

    def kill_operator(self):
        """SIGKILL: `kubectl delete pod --force --grace-period=0` of the operator pod."""
        names = [p["metadata"]["name"] for p in self.operator_pods()]
        if names:
            r = self.kubectl("delete", "pod", "-n", OPERATOR_NS, "--force", "--grace-period=0", "--wait=false", *names)
            if r.returncode != 0:
                raise Failure(f"kubectl delete pod --force {names}: {r.stderr}")

    def operator_alive(self):
        return bool(self.operator_pods())

    def http(self, url):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except OSError:
            return None

    def kubectl(self, *args, stdin=None, timeout=150, kubeconfig=None):
        return subprocess.run([self.kubectl_bin, "--kubeconfig", kubeconfig or self.kubeconfig, "--cache-dir",
                               os.path.join(self.tmp, "kubectl-cache"), *args], input=stdin, capture_output=True,
                              text=True, timeout=timeout)

    def wait_cli(self, target, ns, timeout="120s"):
        """`push-operator wait` as a pre-upgrade hook runs it; returns (rc, stdout, stderr, seconds)."""
        t = time.time()
        r = subprocess.run([self.bin, "wait", target, "-n", ns, "--timeout", timeout],
                           env={**os.environ, "KUBECONFIG": self.kubeconfig, "NO_COLOR": "1"},
                           capture_output=True, text=True, timeout=300)
        return r.returncode, r.stdout, r.stderr, time.time() - t

    def operator_tail(self, n=50):
        if not getattr(self, "kubectl_bin", None):
            return ""
        r = self.kubectl("logs", "-n", OPERATOR_NS, f"deploy/{RELEASE}", f"--tail={n}", timeout=20)
        return r.stdout + r.stderr

    def cluster_report(self, n=20):
        """What the cluster says went wrong: node conditions other than Ready=True (DiskPressure,
        MemoryPressure...) and the newest Warning events of every namespace."""
        try:
            lines = [f"node {nd['metadata']['name']}: {c['type']}={c['status']} {c.get('reason', '')}: "
                     f"{c.get('message', '')}"
                     for nd in self.c.list(CORE + "/nodes") for c in (nd.get("status") or {}).get("conditions") or []
                     if (c["type"] == "Ready") != (c["status"] == "True")]
            evs = [e for e in self.c.list("/apis/events.k8s.io/v1/events") if e.get("type") == "Warning"]
            evs.sort(key=lambda e: e.get("eventTime") or e.get("deprecatedLastTimestamp")
                     or e["metadata"].get("creationTimestamp") or "")
            lines += [f"{e.get('eventTime') or e.get('deprecatedLastTimestamp') or ''} "
                      f"{e['metadata'].get('namespace', '')}/{(e.get('regarding') or {}).get('name', '')} "
                      f"{e.get('reason')}: {(e.get('note') or '')[:200]}" for e in evs[-n:]]
            return "\n".join(lines) or "(all nodes Ready, no Warning events)"
        except Exception as e:  # noqa: BLE001
            return f"(cluster state unavailable: {e})"


# ---------------------------------------------------------------- scenario helpers
def ensure_namespace(h, ns, labels=None):
    """Creates namespace ns (kept if it exists) and waits for its default ServiceAccount, without
    which no pod can be created in it."""
    try:
        h.c.create(CORE + "/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": ns, "labels": labels or {}}})
    except ApiError as e:
        if e.status != 409:
            raise
    wait_for(lambda: h.c.get(nsp(CORE, ns, "serviceaccounts", "default")), 30, f"ServiceAccount {ns}/default")


class Ctx:
    def __init__(self, h, ns, labels=None):
        self.h, self.c, self.ns = h, h.c, ns
        self.stop = threading.Event()
        ensure_namespace(h, ns, labels)

    def close(self):
        self.stop.set()

    def secret(self, name="s3", bucket_creds=True):
        self.c.create(nsp(CORE, self.ns, "secrets"), {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": self.ns},
            "type": "Opaque", "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(AK.encode()).decode(),
                                       "AWS_SECRET_ACCESS_KEY": base64.b64encode(SK.encode()).decode(),
                                       "PUSH_OPERATOR_PASSWORD": base64.b64encode(PASSPHRASE.encode()).decode()}})

    def pvc(self, name, labels=None):
        self.c.create(nsp(CORE, self.ns, "persistentvolumeclaims"), {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": self.ns, "labels": labels or {}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": self.h.sc,
                     "resources": {"requests": {"storage": "1Gi"}}}})

    def wait_bound(self, name):
        """The PVC bound; returns the directory that holds its data on the machine."""
        pvc = wait_for(lambda: (lambda p: p if (p or {}).get("status", {}).get("phase") == "Bound" else None)(
            self.c.get(nsp(CORE, self.ns, "persistentvolumeclaims", name))), 30, f"PVC {name} bound")
        return self.h.volume_dir(pvc)

    def fill_big(self, name, mib, seed):
        """Adds big.bin, mib MiB of seeded random bytes (incompressible), to the PVC's data."""
        d = self.wait_bound(name)
        rnd = random.Random(seed)
        with open(os.path.join(d, "big.bin"), "wb") as f:
            for _ in range(mib):
                f.write(rnd.randbytes(1 << 20))
        return d

    def fill(self, name, seed):
        d = self.wait_bound(name)
        rnd = random.Random(seed)
        os.makedirs(os.path.join(d, "sub", "deeper"), exist_ok=True)
        with open(os.path.join(d, "hello.txt"), "w") as f:
            f.write(f"hello from {self.ns}/{name}\n")
        with open(os.path.join(d, "sub", "notes.md"), "w") as f:
            f.write("# notes\n" * 50)
        with open(os.path.join(d, "sub", "deeper", "random.bin"), "wb") as f:
            f.write(bytes(rnd.getrandbits(8) for _ in range(300_000)))
        with open(os.path.join(d, "empty"), "w"):
            pass
        if not os.path.lexists(os.path.join(d, "link")):
            os.symlink("sub/notes.md", os.path.join(d, "link"))
        return d

    def template(self, app, claims, node=None, security=None, image=None, stop_seconds=0):
        """security: (pod securityContext, container securityContext); stop_seconds: how long the
        app takes to stop after SIGTERM (its grace period is longer)."""
        command = APP_COMMAND
        if stop_seconds:
            command = ["sh", "-c", f"trap 'sleep {stop_seconds}; exit 0' TERM; while :; do sleep 1 & wait; done"]
        spec = {"terminationGracePeriodSeconds": 5 + stop_seconds * 2,
                "containers": [{"name": "app", "image": image or self.h.app_image, "command": command,
                                "volumeMounts": [{"name": f"v{i}", "mountPath": f"/data{i}"}
                                                 for i in range(len(claims))]}],
                "volumes": [{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}}
                            for i, c in enumerate(claims)]}
        if node:
            # Through the scheduler: a pod created with nodeName reaches the kubelet before the
            # API server's node authorizer links it to the node, and waits ~15 s to read its PVC.
            spec["nodeSelector"] = {"kubernetes.io/hostname": node}
        if security:
            spec["securityContext"], spec["containers"][0]["securityContext"] = security
        return {"metadata": {"labels": {"app": app}}, "spec": spec}

    def deployment(self, name, replicas, claims, node=None, security=None, image=None, stop_seconds=0):
        self.c.create(nsp(APPS, self.ns, "deployments"), {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": self.ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": self.template(name, claims, node, security, image, stop_seconds)}})

    def statefulset(self, name, replicas, claims):
        self.c.create(nsp(APPS, self.ns, "statefulsets"), {
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": self.ns},
            "spec": {"replicas": replicas, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                     "template": self.template(name, claims)}})

    def running_pods(self, app):
        return [p for p in self.c.list(nsp(CORE, self.ns, "pods"), f"app={app}")
                if not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("phase") == "Running"]

    def wait_running(self, app, n, timeout=30):
        try:
            wait_for(lambda: len(self.running_pods(app)) == n, timeout, f"{n} running pods of {app}")
        except Failure as e:
            raise Failure(f"{e}; pods: {self.pod_states(app)}") from None

    def pod_states(self, app):
        """Each pod of app with its phase and the reason of its first unmet condition or waiting
        container (Unschedulable, ContainerCreating, ErrImageNeverPull...)."""
        out = []
        for p in self.c.list(nsp(CORE, self.ns, "pods"), f"app={app}"):
            st = p.get("status") or {}
            why = [f"{c['type']}: {c.get('reason', '')} {c.get('message', '')}".strip()
                   for c in st.get("conditions") or [] if c["status"] != "True"][:1]
            why += [f"{cs['name']}: {w.get('reason', '')} {w.get('message', '')}".strip()
                    for cs in st.get("containerStatuses") or [] for w in [(cs.get("state") or {}).get("waiting")]
                    if w][:1]
            out.append(f"{p['metadata']['name']} {st.get('phase')} {'; '.join(why)}".strip())
        return out or "none"

    def app(self, name, replicas, pvc, seed, node=None, security=None, image=None, stop_seconds=0, **repo):
        """A PVC filled with seeded data, a Deployment using it and a Repository of the same
        name, running; returns the PVC's data directory."""
        self.pvc(pvc)
        d = self.fill(pvc, seed)
        self.deployment(name, replicas, [pvc], node=node, security=security, image=image, stop_seconds=stop_seconds)
        self.repository(name, [pvc], **repo)
        self.wait_running(name, replicas)
        return d

    def repository(self, name, volumes, prefix=None, bucket=BUCKET, endpoint=None, online=None, workloads=None,
                   hooks=None, worker_resources=None):
        spec = {"volumes": volumes,
                "storage": {"endpoint": endpoint or self.h.s3, "bucket": bucket, "prefix": prefix or self.ns,
                            "region": "us-east-1", "credentialsSecretRef": {"name": "s3"},
                            "encryption": {"secretRef": {"name": "s3"}}}}
        if online:
            spec["online"] = online
        if workloads:
            spec["workloads"] = workloads
        if hooks:
            spec["hooks"] = hooks
        if worker_resources:
            spec["workerResources"] = worker_resources
        self.c.create(nsp(GROUP, self.ns, "repositories"), {
            "apiVersion": "rediacc.io/v1alpha1", "kind": "Repository",
            "metadata": {"name": name, "namespace": self.ns}, "spec": spec})

    def job(self, name, repo, mode, priority=None, env=None, **spec):
        """A PushJob; env: environment for its worker pod (the test hooks: a start delay, crash and
        pause points), through the annotation a test build of the operator reads."""
        s = {"repositoryRef": {"name": repo}, "mode": mode}
        if priority:
            s["priority"] = priority
        s.update(spec)
        return self.c.create(nsp(GROUP, self.ns, "pushjobs"), {
            "apiVersion": "rediacc.io/v1alpha1", "kind": "PushJob",
            "metadata": {"name": name, "namespace": self.ns, "annotations": worker_env(env)}, "spec": s})

    def push_ok(self, name, repo, mode, consistency, timeout=120):
        """Creates PushJob name, waits for it, and expects it Succeeded with that consistency;
        returns its status."""
        self.job(name, repo, mode)
        st = self.wait_done(name, timeout)["status"]
        expect(st["phase"] == "Succeeded", f"{name}: phase {st['phase']}: {st.get('message')} {st.get('failure')}")
        expect(st.get("consistency") == consistency, f"{name}: status.consistency {st.get('consistency')}")
        return st

    def get_job(self, name):
        return self.c.get(nsp(GROUP, self.ns, "pushjobs", name))

    def phase(self, name):
        return ((self.get_job(name) or {}).get("status") or {}).get("phase")

    def wait_done(self, name, timeout=120):
        def done():
            j = self.get_job(name)
            return j if ((j or {}).get("status") or {}).get("phase") in ("Succeeded", "Failed") else None
        try:
            return wait_for(done, timeout, f"PushJob {name} to finish", 0.3)
        except Failure:
            j = self.get_job(name) or {}
            raise Failure(f"PushJob {name} did not finish in {timeout}s; status: "
                          f"{json.dumps(j.get('status'))[:1500]}")

    def restore(self, name, repo, target, env=None, **spec):
        s = {"repositoryRef": {"name": repo}, "target": target}
        s.update(spec)
        return self.c.create(nsp(GROUP, self.ns, "restorejobs"), {
            "apiVersion": "rediacc.io/v1alpha1", "kind": "RestoreJob",
            "metadata": {"name": name, "namespace": self.ns, "annotations": worker_env(env)}, "spec": s})

    def get_restore(self, name):
        return self.c.get(nsp(GROUP, self.ns, "restorejobs", name))

    def wait_restore(self, name, timeout=180):
        def done():
            j = self.get_restore(name)
            return j if ((j or {}).get("status") or {}).get("phase") in ("Succeeded", "Failed") else None
        try:
            return wait_for(done, timeout, f"RestoreJob {name} to finish", 0.3)
        except Failure:
            j = self.get_restore(name) or {}
            raise Failure(f"RestoreJob {name} did not finish in {timeout}s; status: "
                          f"{json.dumps(j.get('status'))[:1500]}")

    def keep_copy(self, d):
        """A copy of directory d as it is now (to compare a restore with)."""
        dst = tempfile.mkdtemp(prefix="copy-", dir=self.h.tmp)
        shutil.rmtree(dst)
        shutil.copytree(d, dst, symlinks=True)
        return dst

    def restore_labelled(self, job):
        sel = f"rediacc.io/restore-job={job}"
        return {
            "pods": [p["metadata"]["name"] for p in self.c.list(nsp(CORE, self.ns, "pods"), sel)],
            "pvcs": [p["metadata"]["name"] for p in self.c.list(nsp(CORE, self.ns, "persistentvolumeclaims"), sel)],
        }

    def replicas(self, kind, name):
        plural = "deployments" if kind == "Deployment" else "statefulsets"
        return (self.c.get(nsp(APPS, self.ns, plural, name)) or {}).get("spec", {}).get("replicas")

    def watch(self, path, sink):
        self.c.watch(path, lambda t, o: sink.append((time.time(), t, o)), self.stop)

    def restore_equals(self, snapshot, src, prefix=None):
        target = tempfile.mkdtemp(prefix="restore-", dir=self.h.tmp)
        r = subprocess.run([self.h.bin, "restore", snapshot, "--store", f"s3://{BUCKET}/{prefix or self.ns}",
                            "--target", target], env=self.h.s3_env(), capture_output=True, text=True)
        if r.returncode != 0:
            raise Failure(f"restore {snapshot[:12]} failed: {r.stderr[-800:]}")
        d = subprocess.run(["diff", "-r", "--no-dereference", src, target], capture_output=True, text=True)
        if d.returncode != 0:
            raise Failure(f"restore of {snapshot[:12]} differs from {src}: {d.stdout[:800]}{d.stderr[:400]}")

    def wait_cleaned(self, job, timeout=20):
        """Waits until the job's worker pods, VolumeSnapshots and clone PVCs are gone (a deleted pod
        terminates gracefully: it stays until the kubelet has stopped it)."""
        try:
            wait_for(lambda: not any(self.labelled(job).values()), timeout, "cleanup")
        except Failure:
            raise Failure(f"objects of {job} left behind after {timeout}s: {self.labelled(job)}") from None

    def labelled(self, job):
        sel = f"{JOB_LABEL}={job}"
        return {
            "pods": [p["metadata"]["name"] for p in self.c.list(nsp(CORE, self.ns, "pods"), sel)],
            "pvcs": [p["metadata"]["name"] for p in self.c.list(nsp(CORE, self.ns, "persistentvolumeclaims"), sel)],
            "snapshots": [p["metadata"]["name"] for p in self.c.list(nsp(SNAPG, self.ns, "volumesnapshots"), sel)],
        }


def pod_ready(p):
    """A pod that is not being deleted and has condition Ready."""
    return not p.get("metadata", {}).get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in (p.get("status") or {}).get("conditions") or [])


def worker_env(env):
    """The annotations that give a job's worker pods this environment (test builds only)."""
    return {"rediacc.io/test-worker-env": "\n".join(f"{k}={v}" for k, v in env.items())} if env else {}


def cond(job, typ):
    for c in (job.get("status") or {}).get("conditions") or []:
        if c["type"] == typ:
            return c
    return None


def history(events, name):
    """Distinct consecutive spec.replicas values seen for object `name`."""
    out = []
    for _, t, o in events:
        if o["metadata"]["name"] != name or t == "DELETED":
            continue
        r = (o.get("spec") or {}).get("replicas")
        if not out or out[-1] != r:
            out.append(r)
    return out


def expect(ok, msg):
    if not ok:
        raise Failure(msg)


def failure_reason(job):
    st = job.get("status") or {}
    return (st.get("failure") or {}).get("reason") or (cond(job, "Failed") or {}).get("reason")


# ---------------------------------------------------------------- scenarios
def sc_invalid_manifests(h):
    ensure_namespace(h, "inv")
    docs = {
        "no-repositoryRef": {"apiVersion": "rediacc.io/v1alpha1", "kind": "PushJob",
                             "metadata": {"name": "bad1", "namespace": "inv"}, "spec": {"mode": "Offline"}},
        "priority-P9": {"apiVersion": "rediacc.io/v1alpha1", "kind": "PushJob",
                        "metadata": {"name": "bad2", "namespace": "inv"},
                        "spec": {"repositoryRef": {"name": "r"}, "mode": "Offline", "priority": "P9"}},
        "cron-every-day": {"apiVersion": "rediacc.io/v1alpha1", "kind": "PushPolicy",
                           "metadata": {"name": "bad3", "namespace": "inv"},
                           "spec": {"repositoryRef": {"name": "r"},
                                    "schedules": [{"name": "daily", "mode": "Offline", "cron": "every day"}]}},
    }
    for what, doc in docs.items():
        r = h.kubectl("apply", "-f", "-", stdin=json.dumps(doc))
        expect(r.returncode != 0, f"{what}: kubectl apply accepted it: {r.stdout}")
        expect("invalid" in r.stderr.lower() or "unsupported" in r.stderr.lower() or "required" in r.stderr.lower(),
               f"{what}: rejected, but not by validation: {r.stderr[:300]}")
    # A valid one is accepted (the rejection is the schema's, not a broken path).
    good = {"apiVersion": "rediacc.io/v1alpha1", "kind": "PushPolicy", "metadata": {"name": "ok", "namespace": "inv"},
            "spec": {"repositoryRef": {"name": "r"}, "suspend": True,
                     "schedules": [{"name": "daily", "mode": "Offline", "cron": "0 3 * * *"}]}}
    r = h.kubectl("apply", "-f", "-", stdin=json.dumps(good))
    expect(r.returncode == 0, f"a valid PushPolicy was rejected: {r.stderr[:300]}")
    r = h.kubectl("get", "pushjobs", "-n", "inv", "-o", "name")
    expect(r.returncode == 0 and r.stdout.strip() == "", f"rejected PushJobs exist: {r.stdout} {r.stderr}")
    return "3 rejected, 1 valid accepted"


def sc_offline(h):
    x = Ctx(h, "off")
    try:
        x.secret()
        x.pvc("web-data")
        x.pvc("db-data")
        da, db = x.fill("web-data", 1), x.fill("db-data", 2)
        x.deployment("web", 3, ["web-data"])
        x.statefulset("db", 1, ["db-data"])
        x.repository("shop", ["web-data", "db-data"])
        x.wait_running("web", 3)
        x.wait_running("db", 1)
        wl, pods, vas = [], [], []
        x.watch(nsp(APPS, "off", "deployments"), wl)
        x.watch(nsp(APPS, "off", "statefulsets"), wl)
        x.watch(nsp(CORE, "off", "pods"), pods)
        x.watch("/apis/storage.k8s.io/v1/volumeattachments", vas)
        time.sleep(1)
        x.job("nightly", "shop", "Offline", reason="e2e")
        j = x.wait_done("nightly", 120)
        x.wait_running("web", 3)
        x.wait_running("db", 1)
        time.sleep(0.5)
        st = j["status"]
        expect(st["phase"] == "Succeeded", f"phase {st['phase']}: {st.get('message')} {st.get('failure')}")
        expect((cond(j, "Complete") or {}).get("status") == "True", f"Complete condition: {cond(j, 'Complete')}")
        expect(st.get("consistency") == "consistent", f"consistency {st.get('consistency')}")
        hw, hd = history(wl, "web"), history(wl, "db")
        expect(hw == [3, 0, 3], f"web replicas history {hw}, want [3, 0, 3]")
        expect(hd == [1, 0, 1], f"db replicas history {hd}, want [1, 0, 1]")
        # The worker was created only after the app pods and the attachments were gone.
        wadd = [t for t, typ, o in pods if typ == "ADDED" and o["metadata"]["name"] == "nightly-push"]
        expect(wadd, "no worker pod nightly-push was seen")
        tw = wadd[0]
        app_gone = max([t for t, typ, o in pods if typ == "DELETED" and o["metadata"]["name"] != "nightly-push"]
                       or [0])
        app_live_at = {o["metadata"]["name"] for t, typ, o in pods if t < tw and typ != "DELETED"} - \
            {o["metadata"]["name"] for t, typ, o in pods if t < tw and typ == "DELETED"}
        app_live_at.discard("nightly-push")
        expect(not app_live_at, f"app pods still existed when the worker was created: {sorted(app_live_at)}")
        # The attachments of this scenario's volumes (other namespaces' pods keep theirs).
        pvs = {x.c.get(nsp(CORE, "off", "persistentvolumeclaims", c))["spec"]["volumeName"] for c in ("web-data", "db-data")}
        mine = [(t, typ, o) for t, typ, o in vas if o["spec"]["source"].get("persistentVolumeName") in pvs]
        expect(any(typ == "DELETED" for _, typ, _ in mine), f"no VolumeAttachment of {sorted(pvs)} was ever deleted")
        va_live = {o["metadata"]["name"] for t, typ, o in mine if t < tw and typ == "ADDED"} - \
            {o["metadata"]["name"] for t, typ, o in mine if t < tw and typ == "DELETED"}
        expect(not va_live, f"VolumeAttachments still existed when the worker was created: {va_live}")
        expect(app_gone > 0, "app pods never went away")
        snaps = {s["volume"]: s["snapshot"] for s in st.get("snapshots") or []}
        expect(set(snaps) == {"web-data", "db-data"}, f"status.snapshots {st.get('snapshots')}")
        x.restore_equals(snaps["web-data"], da)
        x.restore_equals(snaps["db-data"], db)
        x.wait_cleaned("nightly")
        return f"web {hw}, db {hd}, 2 volumes restored identical"
    finally:
        x.close()


def snapshot_class(h, name):
    """A VolumeSnapshotClass served by the node's CSI driver (kept if it exists; no GET by name,
    which the RBAC check would count as the operator's)."""
    try:
        h.c.create("/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses", {
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": name}, "driver": h.driver, "deletionPolicy": "Delete"})
    except ApiError as e:
        if e.status != 409:
            raise


def sc_online_class(h):
    x = Ctx(h, "onc")
    try:
        snapshot_class(h, "snap")
        x.secret()
        d = x.app("app", 2, "data", 3, online={"volumeSnapshotClassName": "snap"})
        wl, snapev, pvcev = [], [], []
        x.watch(nsp(APPS, "onc", "deployments"), wl)
        x.watch(nsp(SNAPG, "onc", "volumesnapshots"), snapev)
        x.watch(nsp(CORE, "onc", "persistentvolumeclaims"), pvcev)
        time.sleep(0.5)
        st = x.push_ok("snap1", "app", "Online", "crash-consistent")
        hw = history(wl, "app")
        expect(hw == [2], f"the workload was scaled: {hw}")
        expect(any(o["metadata"]["name"].endswith("-snap") for _, t, o in snapev if t == "ADDED"),
               "no VolumeSnapshot was ever created")
        expect(any(o["metadata"]["name"].endswith("-clone") for _, t, o in pvcev if t == "ADDED"),
               "no clone PVC was ever created")
        x.wait_cleaned("snap1")
        snap = st["snapshots"][0]["snapshot"]
        r = subprocess.run([h.bin, "snapshots", "--store", f"s3://{BUCKET}/onc", "--json"], env=h.s3_env(),
                           capture_output=True, text=True)
        expect(r.returncode == 0, f"snapshots --json: {r.stderr}")
        listed = json.loads(r.stdout)
        items = listed if isinstance(listed, list) else listed.get("snapshots", [])
        mine = [s for s in items if str(s.get("id", s.get("snapshot", ""))).startswith(snap[:12])]
        expect(mine, f"snapshot {snap[:12]} not listed: {r.stdout[:500]}")
        expect(mine[0].get("consistency") == "crash-consistent", f"snapshot consistency: {mine[0]}")
        x.restore_equals(snap, d)
        return "never scaled, snapshot+clone cleaned, crash-consistent"
    finally:
        x.close()


def sc_online_live(h):
    x = Ctx(h, "live")
    try:
        x.secret()
        node = h.nodes[-1]
        d = x.app("app", 1, "data", 4, node=node)
        pods = []
        x.watch(nsp(CORE, "live", "pods"), pods)
        time.sleep(0.5)
        x.job("live1", "app", "Online")
        j = x.wait_done("live1", 120)
        st = j["status"]
        expect(st["phase"] == "Succeeded", f"phase {st['phase']}: {st.get('message')} {st.get('failure')}")
        expect(st.get("consistency") == "inconsistent", f"consistency {st.get('consistency')}")
        cw = cond(j, "ConsistencyWarning")
        expect(cw and cw["status"] == "True", f"ConsistencyWarning condition: {cw}")
        nodes = {(o.get("spec") or {}).get("nodeName") for _, t, o in pods if o["metadata"]["name"] == "live1-push"}
        expect(nodes, "no worker pod seen")
        expect(node in nodes, f"worker nodeName {nodes}, want {node} (the app pod's node)")
        evs = h.c.list("/apis/events.k8s.io/v1/namespaces/live/events")
        warn = [e for e in evs if e.get("reason") == "ConsistencyWarning" and e.get("type") == "Warning"
                and (e.get("regarding") or {}).get("name") == "live1"]
        expect(warn, f"no Warning event ConsistencyWarning; events: {[(e.get('type'), e.get('reason')) for e in evs]}")
        x.restore_equals(st["snapshots"][0]["snapshot"], d)
        return f"ConsistencyWarning condition + Warning event, worker on {node}"
    finally:
        x.close()


def sc_hooks(h):
    """Repository hooks exec in the application's pods through the real pods/exec API and the
    kubelet: the pre hook runs before any VolumeSnapshot exists and the post hook once it does
    (the hooks write the time into the container, the harness watches the snapshots); a hook
    writing 64 KiB to stderr is not stalled; a failing pre hook fails the job with its exit code
    and stderr, takes no snapshot and still runs the post hook (a partial freeze is thawed); a hook
    past its timeout with onError: Continue is a Warning."""
    x = Ctx(h, "hk")
    try:
        snapshot_class(h, "hook-snap")
        x.secret()

        def sh(script):
            return ["sh", "-c", script]
        online = {"volumeSnapshotClassName": "hook-snap"}
        snaps = []
        x.watch(nsp(SNAPG, "hk", "volumesnapshots"), snaps)
        data = x.app("db", 1, "db-data", 7, online=online, hooks={
            "pre": [{"command": sh("date +%s.%N > /tmp/pre-at && echo freeze >> /tmp/order && "
                                   "head -c 65536 /dev/zero | tr '\\0' x >&2"), "timeoutSeconds": 60}],
            "post": [{"command": sh("date +%s.%N > /tmp/post-at && echo thaw >> /tmp/order"), "timeoutSeconds": 60}]})
        x.app("bad", 1, "bad-data", 8, online=online, hooks={
            "pre": [{"command": sh("echo 'cannot freeze: database busy' >&2; exit 3")}],
            "post": [{"command": sh("echo thaw >> /tmp/bad-order")}]})
        x.app("slow", 1, "slow-data", 9, online=online, hooks={
            "pre": [{"command": ["sleep", "4"], "timeoutSeconds": 1, "onError": "Continue"}]})
        for name in ("db", "bad", "slow"):
            x.job(f"{name}-hook", name, "Online")
        st = x.wait_done("db-hook", 150)["status"]
        expect(st["phase"] == "Succeeded", f"db-hook {st['phase']}: {st.get('message')} {st.get('failure')}")
        expect((st.get("preHook") or {}).get("ok") and (st.get("postHook") or {}).get("ok"),
               f"hook outcomes {st.get('preHook')} {st.get('postHook')}")

        def in_pod(app, path):
            pod = x.running_pods(app)[0]["metadata"]["name"]
            r = h.kubectl("exec", "-n", "hk", pod, "--", "cat", path)
            expect(r.returncode == 0, f"kubectl exec {pod} cat {path}: {r.stderr}")
            return r.stdout
        order = in_pod("db", "/tmp/order").split()
        expect(order == ["freeze", "thaw"], f"hook order {order}")
        pre_at, post_at = float(in_pod("db", "/tmp/pre-at")), float(in_pod("db", "/tmp/post-at"))
        added = [(t, o) for t, typ, o in snaps if typ == "ADDED" and "db-hook" in o["metadata"]["name"]]
        expect(added, "no VolumeSnapshot of db-hook was seen")
        t_added, snap = added[0]
        expect(pre_at < t_added, f"the pre hook ended at {pre_at:.3f}, after the VolumeSnapshot appeared at {t_added:.3f}")
        created = calendar.timegm(time.strptime(snap["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"))
        expect(post_at >= created, f"the post hook ran at {post_at:.3f}, before the VolumeSnapshot was created ({created})")
        x.restore_equals(st["snapshots"][0]["snapshot"], data)

        st = x.wait_done("bad-hook", 150)["status"]
        fail = st.get("failure") or {}
        expect(st["phase"] == "Failed" and fail.get("reason") == "HookFailed", f"bad-hook {st['phase']} {fail}")
        msg = fail.get("message", "")
        expect("exit code 3" in msg and "cannot freeze: database busy" in msg, f"failure message: {msg}")
        expect(in_pod("bad", "/tmp/bad-order").split() == ["thaw"], "the post hook did not run once")
        expect(not [o for _, typ, o in snaps if typ == "ADDED" and "bad-hook" in o["metadata"]["name"]],
               "the failed pre hook's job took a VolumeSnapshot")
        x.wait_cleaned("bad-hook")
        expect(x.replicas("Deployment", "bad") == 1, "the failed online job changed the replicas")

        st = x.wait_done("slow-hook", 150)["status"]
        expect(st["phase"] == "Succeeded", f"slow-hook {st['phase']}: {st.get('failure')}")
        pre = st.get("preHook") or {}
        expect(pre.get("ok") and "timed out after 1s" in pre.get("message", ""), f"slow preHook {pre}")
        evs = h.c.list("/apis/events.k8s.io/v1/namespaces/hk/events")
        by = collections.defaultdict(list)
        for e in evs:
            by[(e.get("regarding") or {}).get("name")].append((e.get("type"), e.get("reason")))
        expect(("Warning", "HookFailedIgnored") in by.get("slow-hook", []), f"slow-hook events {by.get('slow-hook')}")
        expect(("Warning", "HookFailed") in by.get("bad-hook", []), f"bad-hook events {by.get('bad-hook')}")
        expect(("Normal", "HookSucceeded") in by.get("db-hook", []), f"db-hook events {by.get('db-hook')}")
        return (f"order {order}, pre {t_added - pre_at:.2f}s before the snapshot; bad: {msg[:60]}...; "
                f"slow: {pre.get('message')}")
    finally:
        x.close()


def sc_queue_order(h):
    h.start_operator(max_pushes=1)
    x = Ctx(h, "q")
    try:
        x.secret()
        names = ["long", "a", "b", "c", "d", "e"]
        for n in names:
            x.pvc(f"{n}-data")
        for n in names:
            x.fill(f"{n}-data", 10)
            x.repository(n, [f"{n}-data"])
        jobs_ev = []
        x.watch(nsp(GROUP, "q", "pushjobs"), jobs_ev)
        x.job("long", "long", "Offline", priority="P4", env={"PUSH_OPERATOR_TEST_START_DELAY": 8})
        wait_for(lambda: x.phase("long") == "Pushing", 30, "long job Pushing")
        prios = dict(zip(["a", "b", "c", "d", "e"], ["P3", "P1", "P5", "P1", "P2"]))
        for n in ["a", "b", "c", "d", "e"]:
            # Real pushes take seconds each: the P1 jobs get room to wait for their turn.
            x.job(n, n, "Offline", priority=prios[n], deadlineSeconds=600)
            time.sleep(1.1)  # creationTimestamp has one-second resolution
        expect(x.phase("long") == "Pushing", f"the long job finished too early ({x.phase('long')}); order untested")
        queued = [x.get_job(n) for n in prios]
        qpos = {j["metadata"]["name"]: (j.get("status") or {}).get("queuePosition") for j in queued}
        for n in prios:
            x.wait_done(n, 150)
        x.wait_done("long", 30)
        started = []
        for _, t, o in jobs_ev:
            n = o["metadata"]["name"]
            ph = (o.get("status") or {}).get("phase")
            if n in prios and ph not in (None, "Pending", "Queued") and n not in started:
                started.append(n)
        want = ["b", "d", "e", "a", "c"]
        expect(started == want, f"start order {[(n, prios[n]) for n in started]}, want "
                                f"{[(n, prios[n]) for n in want]} (queue positions seen: {qpos})")
        st_times = [(x.get_job(n)["status"].get("startTime"), n) for n in want]
        expect([t for t, _ in st_times] == sorted(t for t, _ in st_times), f"status.startTime order {st_times}")
        bad = [n for n in prios if x.phase(n) != "Succeeded"]
        expect(not bad, f"jobs not Succeeded: {bad}")
        return "order " + ",".join(f"{n}:{prios[n]}" for n in started) + f"; positions {qpos}"
    finally:
        x.close()
        h.start_operator()


def sc_delete_mid_flow(h):
    x = Ctx(h, "del")
    try:
        snapshot_class(h, "snap-del")
        x.secret()
        x.pvc("data")
        x.fill("data", 7)
        x.pvc("odata")
        x.fill("odata", 17)
        x.deployment("app", 2, ["data"])
        x.statefulset("db", 1, ["data"])
        x.deployment("web", 1, ["odata"])
        x.repository("app", ["data"])
        x.repository("web", ["odata"], online={"volumeSnapshotClassName": "snap-del"})
        x.wait_running("app", 2)
        x.wait_running("db", 1)
        x.wait_running("web", 1)
        slow = {"PUSH_OPERATOR_TEST_START_DELAY": 30}
        x.job("doomed", "app", "Offline", env=slow)
        x.job("doomed-online", "web", "Online", env=slow)
        for j in ("doomed", "doomed-online"):
            wait_for(lambda: x.phase(j) == "Pushing", 60, f"{j} Pushing")
            wait_for(lambda: x.labelled(j)["pods"], 20, f"{j} worker pod")
        seen = x.labelled("doomed-online")
        expect(seen["snapshots"] and seen["pvcs"], f"online job created no snapshot/clone: {seen}")
        for j in ("doomed", "doomed-online"):
            r = h.kubectl("delete", "pushjob", j, "-n", "del", "--wait=false")
            expect(r.returncode == 0, f"kubectl delete: {r.stderr}")
        for j in ("doomed", "doomed-online"):
            wait_for(lambda: x.get_job(j) is None, 60, f"the deleted PushJob {j} to go (finalizer)")
        expect(x.replicas("Deployment", "app") == 2, f"app replicas {x.replicas('Deployment', 'app')}")
        expect(x.replicas("StatefulSet", "db") == 1, f"db replicas {x.replicas('StatefulSet', 'db')}")
        expect(x.replicas("Deployment", "web") == 1, f"web replicas {x.replicas('Deployment', 'web')}")
        x.wait_running("app", 2)
        x.wait_running("db", 1)
        for j in ("doomed", "doomed-online"):
            wait_for(lambda: not any(x.labelled(j).values()), 20, f"{j}: worker/snapshots/clones gone "
                                                                 f"(left: {x.labelled(j)})")
        return f"finalizer restored 2+1 replicas; online job's {seen} deleted"
    finally:
        x.close()


def sc_worker_failure(h):
    x = Ctx(h, "wf")
    try:
        x.secret()
        out = []
        variants = [("nobucket", {"bucket": "no-such-bucket"}), ("noendpoint", {"endpoint": "http://127.0.0.1:9"})]
        want = {"nobucket": "StoreBucketMissing", "noendpoint": "StoreUnreachable"}
        for n, kw in variants:
            x.app(n, 1, f"{n}-data", 8, **kw)
        t0 = time.time()
        for n, _ in variants:
            x.job(f"broken-{n}", n, "Offline")
        for n, _ in variants:
            j = x.wait_done(f"broken-{n}", 180)
            st = j["status"]
            expect(st["phase"] == "Failed", f"{n}: phase {st['phase']}")
            expect(failure_reason(j) == want[n], f"{n}: reason {failure_reason(j)}, want {want[n]}: {st.get('failure')}")
            wait_for(lambda: x.replicas("Deployment", n) == 1, 20, f"{n}: replicas back to 1")
            x.wait_running(n, 1)
            out.append(f"{n} after {time.time() - t0:.0f}s: {(st.get('failure') or {}).get('message', '')[:90]}")
        # A hook waiting on a failed job fails at once, with the reason.
        rc, _, err, secs = h.wait_cli("pushjob/broken-nobucket", "wf", timeout="10m")
        expect(rc == 1 and "StoreBucketMissing" in err and secs < 300, f"push-operator wait on a failed job (10m timeout): rc {rc} "
                                                                f"after {secs:.0f}s: {err[-300:]}")
        out.append(f"wait exits {rc} at once: {err.strip()[:60]}")
        return "; ".join(out)
    finally:
        x.close()


def sc_pre_upgrade(h):
    x = Ctx(h, "hook")
    try:
        x.secret()
        x.app("app", 1, "data", 9)
        doc = {"apiVersion": "rediacc.io/v1alpha1", "kind": "PushJob",
               "metadata": {"name": "pre-upgrade-1", "namespace": "hook"},
               "spec": {"repositoryRef": {"name": "app"}, "mode": "Offline", "priority": "P2",
                        "reason": "helm pre-upgrade"}}
        r = h.kubectl("apply", "-f", "-", stdin=json.dumps(doc))
        expect(r.returncode == 0, f"kubectl apply: {r.stderr}")
        t0 = time.time()
        rc, out, err, _ = h.wait_cli("pushjob/pre-upgrade-1", "hook")
        expect(rc == 0 and "succeeded" in out, f"push-operator wait: rc {rc} {out} {err}; status "
                                               f"{json.dumps((x.get_job('pre-upgrade-1') or {}).get('status'))[:600]}")
        r2 = h.kubectl("-n", "hook", "get", "pushjob", "pre-upgrade-1")
        r3 = h.kubectl("-n", "hook", "get", "deployments,replicasets,pods,pvc", "-o", "name")
        expect(r3.returncode == 0 and "deployment.apps/app" in r3.stdout and "pod/" in r3.stdout,
               f"kubectl get deployments,replicasets,pods,pvc: {r3.stdout} {r3.stderr}")
        return f"push-operator wait ok in {time.time() - t0:.1f}s; {r2.stdout.splitlines()[-1] if r2.stdout else ''}"
    finally:
        x.close()


def sc_metrics(h):
    text = h.http(f"{h.metrics_url}/metrics") or ""
    lines = [ln for ln in text.splitlines() if ln.startswith("push_operator_")]
    ok = [ln for ln in lines if ln.startswith("push_operator_jobs_total") and 'result="succeeded"' in ln]
    bad = [ln for ln in lines if ln.startswith("push_operator_jobs_total") and 'result="failed"' in ln]
    last = [ln for ln in lines if ln.startswith("push_operator_last_success_timestamp_seconds") and "repository=" in ln]
    qd = [ln for ln in lines if ln.startswith("push_operator_queue_depth")]
    expect(ok, "no push_operator_jobs_total{result=succeeded}")
    expect(bad, "no push_operator_jobs_total{result=failed}")
    expect(last, "no push_operator_last_success_timestamp_seconds{repository=...}")
    expect(qd, "no push_operator_queue_depth")
    # Every repository with a successful push has its store size, set from the worker's report.
    def series(ln):
        labels = ln[ln.index("{") + 1:ln.index("}")]
        return tuple(p for p in labels.split(",") if p.split("=")[0] in ("namespace", "repository"))
    sizes = {series(ln): float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith("push_operator_store_bytes{")}
    missing = sorted({series(ln) for ln in last} - {k for k, v in sizes.items() if v > 0})
    expect(not missing, f"no positive push_operator_store_bytes for {missing}; have {sizes}")
    rok = [ln for ln in lines if ln.startswith("push_operator_restores_total") and 'result="succeeded"' in ln
           and not ln.endswith(" 0")]
    rbad = [ln for ln in lines if ln.startswith("push_operator_restores_total") and 'result="failed"' in ln]
    rto = [ln for ln in lines if ln.startswith("push_operator_restore_duration_seconds_count")]
    rbytes = [ln for ln in lines if ln.startswith("push_operator_restore_bytes_total")]
    expect(rok and rbad and rto and rbytes, f"restore metrics missing: {rok} {rbad} {rto} {rbytes}")
    return (f"{ok[0]}; {bad[0]}; {len(last)} last_success series; {len(qd)} queue_depth series; "
            f"{len(sizes)} store_bytes series")


# ---------------------------------------------------------------- policies, retention, prune
def store_cli(h, *args, prefix):
    """The push-operator CLI against the e2e store; returns (rc, stdout, stderr)."""
    r = subprocess.run([h.bin, *args, "--store", f"s3://{BUCKET}/{prefix}"], env=h.s3_env(),
                       capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def store_json(h, *args, prefix):
    rc, out, err = store_cli(h, *args, "--json", prefix=prefix)
    if rc != 0:
        raise Failure(f"push-operator {' '.join(args)} failed (rc {rc}): {err[-800:]}")
    return json.loads(out)


def policy_obj(ns, name, spec):
    return {"apiVersion": "rediacc.io/v1alpha1", "kind": "PushPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def policy_jobs(x, policy):
    return x.c.list(nsp(GROUP, x.ns, "pushjobs"), f"rediacc.io/push-policy={policy}")


def sleep_until(t):
    d = t - time.time()
    if d > 0:
        time.sleep(d)


def sc_policy_schedule(h):
    """An every-minute PushPolicy: one job per minute that runs; an operator restart just before
    a boundary and a kill just after one still give exactly one job per minute; history limit,
    retention, maintenance prunes and status; suspend stops the jobs."""
    x = Ctx(h, "pol")
    try:
        x.secret()
        d = x.app("app", 1, "data", 21)
        now = time.time()
        b1 = (int(now) // 60 + 1) * 60
        if b1 - now < 8:
            b1 += 60
        x.c.create(nsp(GROUP, "pol", "pushpolicies"), policy_obj("pol", "every-minute", {
            "repositoryRef": {"name": "app"},
            "schedules": [{"name": "minutely", "mode": "Online", "cron": "* * * * *", "priority": "P3"}],
            "retention": {"keepLast": 1},
            "maintenance": {"cron": "* * * * *", "waitSeconds": 20},
            "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1}))
        name = lambda b: f"every-minute-minutely-{b // 60}"  # noqa: E731
        # Boundary 1: a graceful restart 1.5 s before it (the lease is handed over).
        sleep_until(b1 - 1.5)
        h.restart_operator()
        j1 = x.wait_done(name(b1), 90)
        expect(j1["status"]["phase"] == "Succeeded", f"{name(b1)}: {j1['status'].get('failure')}")
        expect(j1["metadata"]["annotations"]["rediacc.io/scheduled-time"]
               == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b1)), f"annotations {j1['metadata']}")
        # Boundary 2: SIGKILL 0.3 s after it; the next operator waits for the lease to expire.
        b2 = b1 + 60
        sleep_until(b2 + 0.3)
        h.kill_operator()
        h.start_operator()
        j2 = x.wait_done(name(b2), 120)
        expect(j2["status"]["phase"] == "Succeeded", f"{name(b2)}: {j2['status'].get('failure')}")
        jobs = policy_jobs(x, "every-minute")
        per_minute = {}
        for j in jobs:
            t = j["metadata"]["annotations"]["rediacc.io/scheduled-time"]
            per_minute[t] = per_minute.get(t, 0) + 1
        expect(all(n == 1 for n in per_minute.values()), f"jobs per scheduled minute: {per_minute}")
        # History limit 1: the first job goes once the second succeeded.
        wait_for(lambda: x.get_job(name(b1)) is None, 30, f"{name(b1)} deleted (successfulJobsHistoryLimit 1)")
        # Status: results of both runs, last and next times, success rate.

        def status_ok():
            st = (x.c.get(nsp(GROUP, "pol", "pushpolicies", "every-minute")) or {}).get("status") or {}
            runs = {r.get("job"): r["result"] for r in st.get("recentRuns") or []}
            return st if runs.get(name(b1)) == "Succeeded" and runs.get(name(b2)) == "Succeeded" else None
        st = wait_for(status_ok, 60, "status.recentRuns with both runs Succeeded")
        sched = st["schedules"][0]
        expect(sched.get("lastScheduleTime") and sched.get("nextScheduleTime"), f"schedule status {sched}")
        expect(st.get("successRate") == 1.0, f"successRate {st.get('successRate')}")
        # Maintenance prune pods ran (the report reaches the status).
        wait_for(lambda: (((x.c.get(nsp(GROUP, "pol", "pushpolicies", "every-minute")) or {}).get("status") or {})
                          .get("maintenance") or {}).get("lastResult") == "Succeeded", 90,
                 "a maintenance prune Succeeded")
        # Suspend: no job for the next boundary.
        x.c.merge(nsp(GROUP, "pol", "pushpolicies", "every-minute"), {"spec": {"suspend": True}})
        time.sleep(2)
        before = {j["metadata"]["name"] for j in policy_jobs(x, "every-minute")}
        b3 = (int(time.time()) // 60 + 1) * 60
        sleep_until(b3 + 5)
        after = {j["metadata"]["name"] for j in policy_jobs(x, "every-minute")}
        expect(after <= before, f"suspended policy created {sorted(after - before)}")
        pol = x.c.get(nsp(GROUP, "pol", "pushpolicies", "every-minute"))
        ready = [c for c in pol["status"]["conditions"] if c["type"] == "Ready"][0]
        expect(ready["reason"] == "Suspended", f"Ready {ready}")
        # Retention keepLast 1 after each push: one snapshot of the volume left, the newest.
        done = wait_for(lambda: (lambda js: js if all((j.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                                                      for j in js) else None)(policy_jobs(x, "every-minute")),
                        120, "the policy's jobs to finish")
        ok = [j for j in done if j["status"]["phase"] == "Succeeded"]
        newest = max(ok, key=lambda j: j["metadata"]["annotations"]["rediacc.io/scheduled-time"])["status"][
            "snapshots"][0]["snapshot"]
        snaps = [s for s in store_json(h, "snapshots", prefix="pol") if s["source"] == "pvc/pol/data"]
        expect([s["id"] for s in snaps] == [newest],
               f"after retention keepLast 1: {[s['id'][:12] for s in snaps]}, newest job snapshot {newest[:12]}")
        x.restore_equals(newest, d, prefix="pol")
        audit = store_json(h, "audit", prefix="pol")
        expect({"push", "forget", "prune"} <= {r["action"] for r in audit},
               f"audit actions {[r['action'] for r in audit]}")
        text = h.http(f"{h.metrics_url}/metrics") or ""
        for series in ('push_operator_policy_runs_total{namespace="pol",policy="every-minute",result="succeeded",'
                       'schedule="minutely"}', 'push_operator_store_bytes{namespace="pol",repository="app"}'):
            expect(series in text, f"{series} not in /metrics: "
                                   f"{[ln for ln in text.splitlines() if 'policy' in ln or 'store_bytes' in ln]}")
        evs = h.c.list("/apis/events.k8s.io/v1/namespaces/pol/events")
        created = [e for e in evs if e.get("reason") == "JobCreated"
                   and (e.get("regarding") or {}).get("kind") == "PushPolicy"]
        expect(created, f"no JobCreated event on the policy: {[e.get('reason') for e in evs]}")
        return (f"one job per minute across a restart and a kill ({len(per_minute)} minutes), history 1, "
                f"1 snapshot kept, prune pods ran, suspend stopped jobs")
    finally:
        x.close()


def sc_retention(h):
    """Retention in the job (as a policy sets it) trims the Repository's snapshots to the
    expected set after each successful push; per-mode rules keep the offline anchors."""
    x = Ctx(h, "ret")
    try:
        x.secret()
        d = x.app("app", 1, "data", 22)
        made = []
        for i in range(4):
            with open(os.path.join(d, "hello.txt"), "a") as f:
                f.write(f"change {i}\n")
            jn = f"r{i}"
            x.job(jn, "app", "Online", retention={"keepLast": 2})
            j = x.wait_done(jn, 120)
            expect(j["status"]["phase"] == "Succeeded", f"{jn}: {j['status'].get('failure')}")
            made.append(j["status"]["snapshots"][0]["snapshot"])
            ids = [s["id"] for s in store_json(h, "snapshots", prefix="ret")]
            want = made[-2:]
            expect(sorted(ids) == sorted(want), f"after {jn}: {[i[:8] for i in ids]}, want {[w[:8] for w in want]}")
            if i >= 2:
                got = (j["status"].get("stats") or {}).get("snapshotsForgotten")
                expect(got == 1, f"{jn}: status.stats.snapshotsForgotten {got}")
        # Per mode: one online, one offline; the offline push does not evict the online one.
        per_mode = {"online": {"keepLast": 1}, "offline": {"keepLast": 1}}
        x.job("off1", "app", "Offline", retention=per_mode)
        j = x.wait_done("off1", 120)
        expect(j["status"]["phase"] == "Succeeded", f"off1: {j['status'].get('failure')}")
        off = j["status"]["snapshots"][0]["snapshot"]
        snaps = store_json(h, "snapshots", prefix="ret")
        got = sorted((s["mode"], s["id"]) for s in snaps)
        want = sorted([("online", made[-1]), ("offline", off)])
        expect(got == want, f"per-mode retention kept {[(m, i[:8]) for m, i in got]}, want {[(m, i[:8]) for m, i in want]}")
        x.wait_running("app", 1)
        x.restore_equals(off, d, prefix="ret")
        rc, out, err = store_cli(h, "audit", "--action", "forget", prefix="ret")
        expect(rc == 0 and "retention after push" in out, f"audit: {out[-600:]} {err[-300:]}")
        return f"kept {[i[:8] for _, i in got]} of 5 pushes"
    finally:
        x.close()


def sc_prune_during_push(h):
    """A prune runs while a push that reuses the chunks of a forgotten snapshot is between its
    uploads and its snapshot: nothing is lost; restore and verify --read-data succeed."""
    x = Ctx(h, "prn")
    try:
        x.secret()
        d = x.app("app", 1, "data", 23)
        with open(os.path.join(d, "big.bin"), "wb") as f:
            f.write(random.Random(5).randbytes(6 << 20))
        x.job("p1", "app", "Online")
        j1 = x.wait_done("p1", 120)
        expect(j1["status"]["phase"] == "Succeeded", f"p1: {j1['status'].get('failure')}")
        s1 = j1["status"]["snapshots"][0]["snapshot"]
        with open(os.path.join(d, "hello.txt"), "a") as f:
            f.write("one more line\n")
        # The gate is a file in the worker pod's /tmp.
        x.job("p2", "app", "Online", env={"PUSH_OPERATOR_PAUSE_BEFORE_SNAPSHOT": "/tmp/gate"})

        def in_worker(*cmd):
            return h.kubectl("exec", "-n", "prn", "p2-push", "--", *cmd).returncode == 0
        wait_for(lambda: in_worker("test", "-e", "/tmp/gate.waiting"), 90, "push p2 paused before its snapshot", 0.5)
        # p2 reused every chunk of s1; now s1 is forgotten and a prune runs.
        store_json(h, "forget", s1, prefix="prn")
        r = store_json(h, "prune", prefix="prn")
        expect(r["packs_deleted"] == 0 and r["plans_pending"] == 1,
               f"the prune should mark and wait for the running push: {r}")
        rc, _, err = store_cli(h, "verify", "--read-data", prefix="prn")
        expect(rc == 0, f"verify during the pending prune: {err[-600:]}")
        expect(in_worker("touch", "/tmp/gate"), "cannot open the gate in p2-push")
        j2 = x.wait_done("p2", 120)
        expect(j2["status"]["phase"] == "Succeeded", f"p2: {j2['status'].get('failure')}")
        s2 = j2["status"]["snapshots"][0]["snapshot"]
        rc, out, err = store_cli(h, "verify", "--read-data", prefix="prn")
        expect(rc == 0, f"verify after the push: {out[-400:]} {err[-600:]}")
        x.restore_equals(s2, d, prefix="prn")
        # The next prune completes: the packs the push used are kept, the rest deleted.
        r2 = store_json(h, "prune", prefix="prn")
        expect(r2["plans_pending"] == 0 and r2["packs_kept_for_new_snapshots"] >= 1, f"second prune: {r2}")
        rc, out, err = store_cli(h, "verify", "--read-data", prefix="prn")
        expect(rc == 0, f"verify after the prune: {out[-400:]} {err[-600:]}")
        x.restore_equals(s2, d, prefix="prn")
        return (f"first prune marked {r['bytes_pending']} bytes and waited; second kept "
                f"{r2['packs_kept_for_new_snapshots']} packs, deleted {r2['packs_deleted']}")
    finally:
        x.close()


# ---------------------------------------------------------------- Pod Security, RBAC
ENFORCE = "pod-security.kubernetes.io/enforce"
# What the restricted level asks of a pod, but the user: with and without a runAsUser.
RESTRICTED_APP = ({"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1001,
                   "seccompProfile": {"type": "RuntimeDefault"}},
                  {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}})
RESTRICTED_ANONYMOUS = ({"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}, RESTRICTED_APP[1])


def worker_seen(events, name):
    pods = [o for _, t, o in events if o["metadata"]["name"] == name]
    expect(pods, f"no worker pod {name} was created")
    spec = pods[0]["spec"]
    return spec.get("securityContext") or {}, spec["containers"][0].get("securityContext") or {}


def sc_pod_security(h):
    """Worker pods meet the real PodSecurity admission: as root with only DAC_OVERRIDE where the
    namespace enforces baseline, as the application's user (no capability) where it enforces
    restricted. Where restricted leaves no user to be, or an admission policy refuses the worker,
    the job fails at once with WorkerNotAdmitted naming what to change, and the workloads come back."""
    out = []
    x = Ctx(h, "psa-baseline", labels={ENFORCE: "baseline"})
    try:
        x.secret()
        d = x.app("app", 1, "data", 31)
        pods = []
        x.watch(nsp(CORE, x.ns, "pods"), pods)
        time.sleep(0.5)
        x.job("b1", "app", "Offline")
        j = x.wait_done("b1", 120)
        expect(j["status"]["phase"] == "Succeeded", f"baseline: {j['status'].get('failure')}")
        psc, csc = worker_seen(pods, "b1-push")
        expect(psc.get("runAsUser") == 0 and csc["capabilities"] == {"drop": ["ALL"], "add": ["DAC_OVERRIDE"]},
               f"baseline worker: {psc} {csc}")
        x.wait_running("app", 1)
        x.restore_equals(j["status"]["snapshots"][0]["snapshot"], d)
        out.append("baseline: root + DAC_OVERRIDE admitted")
    finally:
        x.close()
    x = Ctx(h, "psa-restricted", labels={ENFORCE: "restricted"})
    try:
        x.secret()
        d = x.app("app", 1, "data", 32, security=RESTRICTED_APP)
        # runAsNonRoot without a user: the kubelet runs it only from an image whose USER is not
        # root (the operator's image is one).
        x.app("anon", 1, "anon-data", 33, security=RESTRICTED_ANONYMOUS,
              image="localhost/push-operator:dev")
        pods = []
        x.watch(nsp(CORE, x.ns, "pods"), pods)
        time.sleep(0.5)
        x.job("r1", "app", "Offline")
        x.job("r2", "anon", "Offline")
        j = x.wait_done("r1", 120)
        expect(j["status"]["phase"] == "Succeeded", f"restricted: {j['status'].get('failure')}")
        psc, csc = worker_seen(pods, "r1-push")
        want = {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True, "supplementalGroups": [1001]}
        expect({k: psc.get(k) for k in want} == want and "fsGroup" not in psc, f"restricted worker pod: {psc}")
        expect(csc["capabilities"] == {"drop": ["ALL"]}, f"restricted worker container: {csc}")
        x.wait_running("app", 1)
        x.restore_equals(j["status"]["snapshots"][0]["snapshot"], d)
        j = x.wait_done("r2", 60)
        fail = j["status"].get("failure") or {}
        expect(j["status"]["phase"] == "Failed" and fail.get("reason") == "WorkerNotAdmitted", f"r2: {fail}")
        expect(f"{ENFORCE}=baseline" in fail["message"] and "runAsUser" in fail["message"], f"r2: {fail}")
        wait_for(lambda: x.replicas("Deployment", "anon") == 1, 20, "anon's replicas back to 1")
        x.wait_running("anon", 1)
        x.wait_cleaned("r2")
        out.append("restricted: worker as uid 1000 admitted; no runAsUser -> WorkerNotAdmitted")
    finally:
        x.close()
    # An admission policy of the cluster (a real ValidatingAdmissionPolicy) that refuses workers.
    vap = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
    h.c.create(vap, {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                     "metadata": {"name": "no-push-workers"},
                     "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [
                         {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]},
                         "validations": [{"expression": "!has(object.metadata.labels) || object.metadata.labels"
                                                        "[?'app.kubernetes.io/managed-by'].orValue('') != "
                                                        "'push-operator'",
                                          "message": "no push-operator workers in this namespace"}]}})
    h.c.create(vap.replace("policies", "policybindings"), {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "no-push-workers"},
        "spec": {"policyName": "no-push-workers", "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "psa-policy"}}}}})
    x = Ctx(h, "psa-policy")
    try:
        x.secret()
        x.app("app", 2, "data", 34)
        time.sleep(2)  # the policy reaches the API server's admission
        x.job("p1", "app", "Offline")
        j = x.wait_done("p1", 60)
        fail = j["status"].get("failure") or {}
        expect(j["status"]["phase"] == "Failed" and fail.get("reason") == "WorkerNotAdmitted", f"p1: {fail}")
        expect("no push-operator workers" in fail["message"] and "admission policy" in fail["message"], f"p1: {fail}")
        wait_for(lambda: x.replicas("Deployment", "app") == 2, 20, "replicas back to 2")
        x.wait_running("app", 2)
        out.append("a refusing admission policy -> WorkerNotAdmitted, replicas back")
    finally:
        x.close()
        h.c.delete(vap.replace("policies", "policybindings") + "/no-push-workers")
        h.c.delete(vap + "/no-push-workers")
    return "; ".join(out)


def sc_rbac_rule_removed(h):
    """The operator has only the chart's RBAC: with one rule removed from the chart's ClusterRole
    (get namespaces, which every worker needs), an offline push fails at once with reason
    Forbidden and the API server's 403 in its message, and the workloads come back; with the
    rule back, the same push succeeds."""
    path = f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{RELEASE}"
    rules = h.c.get(path)["rules"]
    kept = [r for r in rules if r.get("resources") != ["namespaces"]]
    expect(len(kept) == len(rules) - 1, f"the chart's ClusterRole has no rule for namespaces alone: {rules}")
    x = Ctx(h, "rbac")
    try:
        x.secret()
        d = x.app("app", 2, "data", 35)
        h.c.merge(path, {"rules": kept})
        time.sleep(1)
        x.job("denied", "app", "Offline")
        j = x.wait_done("denied", 60)
        fail = j["status"].get("failure") or {}
        expect(j["status"]["phase"] == "Failed" and fail.get("reason") == "Forbidden", f"denied: {fail}")
        expect("HTTP 403" in fail["message"] and 'cannot get resource "namespaces"' in fail["message"],
               f"denied: {fail['message']}")
        wait_for(lambda: x.replicas("Deployment", "app") == 2, 20, "replicas back to 2")
        x.wait_running("app", 2)
        h.c.merge(path, {"rules": rules})
        time.sleep(1)
        x.job("allowed", "app", "Offline")
        j = x.wait_done("allowed", 120)
        expect(j["status"]["phase"] == "Succeeded", f"allowed: {j['status'].get('failure')}")
        x.wait_running("app", 2)
        x.restore_equals(j["status"]["snapshots"][0]["snapshot"], d)
        return f"without the rule: Forbidden ({fail['message'][:90]}...); with it: Succeeded"
    finally:
        h.c.merge(path, {"rules": rules})
        x.close()


def sc_alerts(h):
    """A real Prometheus scrapes the operator with the chart's rules loaded: a failing push fires
    PushOperatorPushFailed; the dashboard's queries run."""
    target = h.metrics_target

    def scraped():
        up = h.prom("/api/v1/query?query=" + urllib.parse.quote(f'up{{instance="{target}"}}'))["result"]
        return up and up[0]["value"][1] == "1"
    wait_for(scraped, 60, f"Prometheus scraping the operator at {target}")
    rules = [r["name"] for g in h.prom("/api/v1/rules")["groups"] for r in g["rules"]]
    expect("PushOperatorPushFailed" in rules and len(rules) == 9, f"rules loaded: {rules}")
    time.sleep(2)  # a sample of the counters before the failure
    x = Ctx(h, "alerts")
    try:
        x.secret()
        x.app("app", 1, "data", 36, bucket="no-such-bucket")
        x.job("fails", "app", "Offline")
        j = x.wait_done("fails", 120)
        expect(j["status"]["phase"] == "Failed", f"fails: {j['status']}")

        def firing():
            return [a for a in h.prom("/api/v1/alerts")["alerts"]
                    if a["labels"].get("alertname") == "PushOperatorPushFailed" and a["state"] == "firing"
                    and a["labels"].get("mode") == "offline"]
        alert = wait_for(firing, 60, "PushOperatorPushFailed firing in Prometheus")[0]
        expect("offline pushes failed" in alert["annotations"]["summary"], f"alert {alert}")
        x.wait_running("app", 1)
        # Every query of the chart's dashboard runs on this Prometheus.
        d = json.load(open(os.path.join(REPO, "charts/push-operator/dashboards/push-operator.json")))
        exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", []) if t.get("expr")]
        for e in exprs:
            q = e.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$repository", ".*")
            h.prom("/api/v1/query?query=" + urllib.parse.quote(q))
        return f"PushOperatorPushFailed firing ({alert['labels']}); {len(exprs)} dashboard queries ran"
    finally:
        x.close()


# ---------------------------------------------------------------- restores
def same_tree(a, b, what):
    d = subprocess.run(["diff", "-r", "--no-dereference", a, b], capture_output=True, text=True)
    expect(d.returncode == 0, f"{what}: {a} and {b} differ: {d.stdout[:800]}{d.stderr[:300]}")


def events_of(h, ns, name):
    return [e for e in h.c.list(f"/apis/events.k8s.io/v1/namespaces/{ns}/events")
            if (e.get("regarding") or {}).get("name") == name]


def sc_restore_new_volumes(h):
    x = Ctx(h, "rnv")
    try:
        x.secret()
        d = x.app("app", 1, "data", 21)
        x.job("p1", "app", "Offline")
        pj = x.wait_done("p1", 120)
        expect(pj["status"]["phase"] == "Succeeded", f"push: {pj['status'].get('failure')}")
        pushed = pj["status"]["snapshots"][0]["snapshot"]
        before = x.keep_copy(d)
        with open(os.path.join(d, "hello.txt"), "w") as f:
            f.write("changed after the push\n")
        x.restore("r1", "app", {"newVolumes": {"nameTemplate": "{volume}-restored"}})
        j = x.wait_restore("r1")
        st = j["status"]
        expect(st["phase"] == "Succeeded", f"phase {st['phase']}: {st.get('failure')}")
        v = st["volumes"][0]
        expect(v["snapshot"] == pushed and v["claim"] == "data-restored", f"status.volumes {st['volumes']}")
        expect((st.get("stats") or {}).get("filesChecked", 0) >= 4, f"stats {st.get('stats')}")
        expect((cond(j, "Complete") or {}).get("status") == "True", "Complete condition")
        pvc = x.c.get(nsp(CORE, "rnv", "persistentvolumeclaims", "data-restored"))
        expect(pvc and not pvc["metadata"].get("ownerReferences"), "the new PVC outlives the job (no owner)")
        same_tree(before, x.wait_bound("data-restored"), "new volume")
        expect(x.replicas("Deployment", "app") == 1, "the app was not touched")
        wait_for(lambda: not x.restore_labelled("r1")["pods"], 20, "restore worker pods deleted")
        # A second restore with the same name template never overwrites the PVC.
        x.restore("r2", "app", {"newVolumes": {"nameTemplate": "{volume}-restored"}})
        j2 = x.wait_restore("r2", 60)
        expect(failure_reason(j2) == "TargetExists", f"r2: {failure_reason(j2)}")

        # Disaster recovery: a new namespace, no PVC, no history, only the bucket.
        y = Ctx(h, "rdr")
        try:
            y.secret()
            y.repository("app", ["data"], prefix="rnv")
            y.restore("dr", "app", {"newVolumes": {"storageClassName": h.sc}},
                      snapshot={"latest": "Offline", "fromNamespace": "rnv"})
            j = y.wait_restore("dr")
            expect(j["status"]["phase"] == "Succeeded", f"dr: {j['status'].get('failure')}")
            expect(j["status"]["volumes"][0]["snapshot"] == pushed, f"dr chose {j['status']['volumes']}")
            same_tree(before, y.wait_bound("data-dr"), "disaster-recovery volume")
        finally:
            y.close()
        return f"new PVC identical to snapshot {pushed[:12]}; TargetExists; DR into a fresh namespace from the bucket"
    finally:
        x.close()


def sc_restore_in_place(h):
    x = Ctx(h, "rip")
    try:
        x.secret()
        d = x.app("app", 2, "data", 22)
        x.job("p1", "app", "Offline")
        pj = x.wait_done("p1", 120)
        expect(pj["status"]["phase"] == "Succeeded", f"push: {pj['status'].get('failure')}")
        x.wait_running("app", 2)
        pushed = x.keep_copy(d)
        # The application moves on: a changed file, a new file, a removed one.
        with open(os.path.join(d, "hello.txt"), "w") as f:
            f.write("written after the push\n")
        with open(os.path.join(d, "sub", "new.bin"), "wb") as f:
            f.write(os.urandom(50_000))
        os.remove(os.path.join(d, "empty"))
        changed = x.keep_copy(d)
        wl = []
        x.watch(nsp(APPS, "rip", "deployments"), wl)
        time.sleep(0.5)
        x.restore("r1", "app", {"inPlace": {}}, snapshot={"latest": "Offline"}, reason="e2e rollback")
        j = x.wait_restore("r1")
        st = j["status"]
        expect(st["phase"] == "Succeeded", f"phase {st['phase']}: {st.get('failure')}")
        x.wait_running("app", 2)
        hist = history(wl, "app")
        expect(hist == [2, 0, 2], f"replicas history {hist}, want [2, 0, 2]")
        same_tree(pushed, d, "in-place restore (mirror)")
        safety = st["volumes"][0].get("safetySnapshot")
        expect(safety, f"no undo snapshot in status: {st['volumes']}")
        # Undo with one RestoreJob naming the undo snapshot.
        x.restore("undo", "app", {"inPlace": {}}, snapshot={"ids": [safety]})
        j = x.wait_restore("undo")
        expect(j["status"]["phase"] == "Succeeded", f"undo: {j['status'].get('failure')}")
        x.wait_running("app", 2)
        same_tree(changed, d, "undo")
        audit = store_json(h, "audit", prefix="rip")
        acts = [a.get("action") for a in (audit if isinstance(audit, list) else audit.get("records", []))]
        expect(acts.count("restore") >= 2, f"audit actions {acts}")
        return f"replicas {hist}, mirror restore identical, undo back to the later state; audit {acts.count('restore')} restores"
    finally:
        x.close()


def sc_restore_killed(h):
    x = Ctx(h, "rkill")
    try:
        x.secret()
        x.pvc("a")
        x.pvc("b")
        da, db = x.fill("a", 31), x.fill("b", 32)
        x.deployment("app", 2, ["a", "b"])
        x.repository("app", ["a", "b"])
        x.wait_running("app", 2)
        x.job("p1", "app", "Offline")
        pj = x.wait_done("p1", 120)
        expect(pj["status"]["phase"] == "Succeeded", f"push: {pj['status'].get('failure')}")
        x.wait_running("app", 2)
        for dd in (da, db):
            with open(os.path.join(dd, "hello.txt"), "w") as f:
                f.write("the state to keep\n")
        ca, cb = x.keep_copy(da), x.keep_copy(db)
        # The restore worker is killed (SIGKILL) after writing the first volume.
        x.restore("r1", "app", {"inPlace": {}}, env={"PUSH_OPERATOR_CRASH_AT": "restore:1"})
        j = x.wait_restore("r1")
        st = j["status"]
        expect(st["phase"] == "Failed", f"phase {st['phase']}")
        expect(st.get("undone") is True, f"undone {st.get('undone')}; failure {st.get('failure')}")
        x.wait_running("app", 2)
        expect(x.replicas("Deployment", "app") == 2, "replicas back")
        same_tree(ca, da, "volume a after the undo")
        same_tree(cb, db, "volume b after the undo")
        reasons = [e.get("reason") for e in events_of(h, "rkill", "r1")]
        expect("Undone" in reasons, f"events {reasons}")
        return f"{failure_reason(j)}; undone; both volumes as before; replicas back to 2"
    finally:
        x.close()


def sc_restore_live_read(h):
    x = Ctx(h, "rlive")
    try:
        x.secret()
        d = x.app("app", 1, "data", 23, node=h.nodes[0])
        x.job("off", "app", "Offline")
        off = x.wait_done("off", 120)
        expect(off["status"]["phase"] == "Succeeded", f"offline push: {off['status'].get('failure')}")
        x.wait_running("app", 1)
        with open(os.path.join(d, "postmaster.pid"), "w") as f:
            f.write("4242\n")
        x.job("live", "app", "Online")
        lj = x.wait_done("live", 120)
        expect(lj["status"].get("consistency") == "inconsistent", f"live push {lj['status'].get('consistency')}")
        x.restore("r1", "app", {"newVolumes": {}}, cleanup={"paths": ["postmaster.pid", "*.lock"]})
        j = x.wait_restore("r1")
        st = j["status"]
        expect(st["phase"] == "Succeeded", f"phase {st['phase']}: {st.get('failure')}")
        cw = cond(j, "ConsistencyWarning")
        expect(cw and cw["status"] == "True" and "offline" in cw["message"], f"ConsistencyWarning {cw}")
        alt = off["status"]["snapshots"][0]["snapshot"]
        expect(st.get("consistentAlternatives") == [alt], f"alternatives {st.get('consistentAlternatives')}")
        warn = [e for e in events_of(h, "rlive", "r1") if e.get("reason") == "ConsistencyWarning"
                and e.get("type") == "Warning"]
        expect(warn, "no Warning event ConsistencyWarning")
        expect(st.get("cleaned") == ["data/postmaster.pid"], f"cleaned {st.get('cleaned')}")
        target = x.wait_bound("data-r1")
        expect(not os.path.exists(os.path.join(target, "postmaster.pid")), "postmaster.pid left in the restore")
        expect(os.path.exists(os.path.join(target, "hello.txt")), "data restored")
        return f"ConsistencyWarning naming offline {alt[:12]}; cleanup removed postmaster.pid"
    finally:
        x.close()


def sc_restore_tests(h):
    """A PushPolicy with two every-minute restore tests: one whose check passes, one whose check
    fails; scratch PVCs go either way, the Repository shows the last test."""
    x = Ctx(h, "rtest")
    try:
        x.secret()
        x.app("app", 1, "data", 24)
        x.job("p1", "app", "Offline")
        pj = x.wait_done("p1", 120)
        expect(pj["status"]["phase"] == "Succeeded", f"push: {pj['status'].get('failure')}")
        ok_check = ["sh", "-c", 'test -f "$PUSH_OPERATOR_RESTORED/data/hello.txt"']
        bad_check = ["sh", "-c", 'test -f "$PUSH_OPERATOR_RESTORED/data/PG_VERSION" || { echo "no PG_VERSION" >&2; exit 3; }']
        x.c.create(nsp(GROUP, "rtest", "pushpolicies"), policy_obj("rtest", "tests", {
            "repositoryRef": {"name": "app"},
            "schedules": [{"name": "yearly", "mode": "Offline", "cron": "0 0 1 1 *"}],
            "restoreTests": [
                {"name": "good", "cron": "* * * * *", "snapshot": {"latest": "Offline"},
                 "check": {"image": h.app_image, "command": ok_check}},
                {"name": "bad", "cron": "* * * * *", "check": {"image": h.app_image, "command": bad_check}},
            ]}))

        def finished(test):
            js = [j for j in x.c.list(nsp(GROUP, "rtest", "restorejobs"), f"rediacc.io/restore-test={test}")
                  if ((j.get("status") or {}).get("phase")) in ("Succeeded", "Failed")]
            return js[0] if js else None
        good = wait_for(lambda: finished("good"), 150, "a finished run of restore test good", 1)
        bad = wait_for(lambda: finished("bad"), 90, "a finished run of restore test bad", 1)
        expect(good["status"]["phase"] == "Succeeded", f"good: {good['status'].get('failure')}")
        expect((good["status"].get("check") or {}).get("ok") is True, f"good check {good['status'].get('check')}")
        expect(bad["status"]["phase"] == "Failed" and failure_reason(bad) == "UserCheckFailed",
               f"bad: {bad['status'].get('phase')} {failure_reason(bad)}")
        for j in (good, bad):
            claims = [v["claim"] for v in j["status"]["volumes"]]
            wait_for(lambda: not any(x.c.get(nsp(CORE, "rtest", "persistentvolumeclaims", c)) for c in claims),
                     30, f"scratch PVCs {claims} deleted")
        repo = x.c.get(nsp(GROUP, "rtest", "repositories", "app"))
        last = (repo.get("status") or {}).get("lastRestoreTest") or {}
        expect(last.get("test") in ("good", "bad") and last.get("durationSeconds") is not None, f"lastRestoreTest {last}")
        text = h.http(f"{h.metrics_url}/metrics") or ""
        expect('push_operator_restore_test_last_result{namespace="rtest",repository="app"}' in text,
               "no push_operator_restore_test_last_result for rtest/app")
        x.c.delete(nsp(GROUP, "rtest", "pushpolicies", "tests"))
        return (f"good: Succeeded (check ok); bad: UserCheckFailed; "
                f"scratch PVCs deleted; lastRestoreTest {last.get('test')} {last.get('result')}")
    finally:
        x.close()


# ---------------------------------------------------------------- PostgreSQL on the real node
PG_IMAGE = "localhost/postgres:dev"
PG_PASSWORD = "e2e-postgres-password"


class Pg:
    """PostgreSQL (localhost/postgres:dev) in namespace x.ns: a StatefulSet `name` with the volume
    data-<name>-0 and a Service, and a pgbench load Deployment that is not one of its workloads."""

    def __init__(self, x, name):
        self.x, self.h, self.name = x, x.h, name
        x.c.create(nsp(CORE, x.ns, "services"), {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": x.ns},
            "spec": {"selector": {"app": name}, "ports": [{"port": 5432}]}})
        self.ip = x.c.get(nsp(CORE, x.ns, "services", name))["spec"]["clusterIP"]
        x.c.create(nsp(APPS, x.ns, "statefulsets"), {
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": x.ns},
            "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": self.pod_spec("data")},
                     "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                         "accessModes": ["ReadWriteOnce"], "storageClassName": self.h.sc,
                         "resources": {"requests": {"storage": "1Gi"}}}}]}})
        self.pod = f"{name}-0"
        self.claim = f"data-{name}-0"
        self.wait_ready(self.pod)

    @staticmethod
    def pod_spec(volume, claim=None):
        spec = {"terminationGracePeriodSeconds": 30, "containers": [{
            "name": "postgres", "image": PG_IMAGE, "env": [{"name": "POSTGRES_PASSWORD", "value": PG_PASSWORD}],
            "ports": [{"containerPort": 5432}],
            "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "postgres", "-h", "127.0.0.1"]},
                               "periodSeconds": 1},
            "volumeMounts": [{"name": volume, "mountPath": "/var/lib/postgresql/data"}]}]}
        if claim:
            spec["volumes"] = [{"name": volume, "persistentVolumeClaim": {"claimName": claim}}]
        return spec

    def wait_ready(self, pod, timeout=120):
        wait_for(lambda: pod_ready(self.x.c.get(nsp(CORE, self.x.ns, "pods", pod)) or {}), timeout,
                 f"PostgreSQL pod {pod} Ready")

    def sql(self, query, pod=None):
        r = self.h.kubectl("exec", "-n", self.x.ns, pod or self.pod, "--", "psql", "-U", "postgres", "-At",
                           "-v", "ON_ERROR_STOP=1", "-c", query)
        if r.returncode != 0:
            raise Failure(f"psql in {pod or self.pod}: {query}: {r.stderr[-500:]}")
        return r.stdout.strip()

    def start_load(self):
        """pgbench -i, then a Deployment running pgbench against the Service in a loop (it
        reconnects after the database comes back)."""
        r = self.h.kubectl("exec", "-n", self.x.ns, self.pod, "--", "pgbench", "-i", "-s", "1", "-q", "-U",
                           "postgres", "postgres", timeout=300)
        if r.returncode != 0:
            raise Failure(f"pgbench -i: {r.stderr[-500:]}")
        # PGCONNECT_TIMEOUT: a connection attempt made while the database is stopped would
        # otherwise wait for the kernel's SYN retries (a minute or more) before pgbench retries.
        script = (f"export PGPASSWORD={PG_PASSWORD} PGCONNECT_TIMEOUT=2; while :; do pgbench -h {self.ip} -U postgres -c 2 -T 3600 -n "
                  "postgres >/dev/null 2>&1; sleep 0.5; done")
        self.x.c.create(nsp(APPS, self.x.ns, "deployments"), {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"{self.name}-load", "namespace": self.x.ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": f"{self.name}-load"}},
                     "template": {"metadata": {"labels": {"app": f"{self.name}-load"}}, "spec": {
                         "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "pgbench", "image": PG_IMAGE, "command": ["bash", "-c", script]}]}}}})
        self.wait_rows(500)

    def rows(self, pod=None):
        return int(self.sql("SELECT count(*) FROM pgbench_history", pod))

    def wait_rows(self, more_than, timeout=90):
        return wait_for(lambda: (lambda n: n if n > more_than else None)(self.rows()), timeout,
                        f"pgbench writing (more than {more_than} rows of history)", 1)

    def restore_copy(self, snapshot, **spec):
        """RestoreJob `copy` of snapshot into a new PVC, then PostgreSQL pod `pg-copy` on it; Ready
        means it recovered and accepts connections. Returns the pod's name."""
        self.x.restore("copy", self.name, {"newVolumes": {"nameTemplate": "{volume}-copy"}},
                       snapshot={"ids": [snapshot]}, **spec)
        rj = self.x.wait_restore("copy", 300)
        expect(rj["status"]["phase"] == "Succeeded", f"restore: {rj['status'].get('failure')}")
        name = f"{self.name}-copy"
        self.x.c.create(nsp(CORE, self.x.ns, "pods"), {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": self.x.ns},
            "spec": self.pod_spec("data", f"{self.claim}-copy")})
        self.wait_ready(name)
        return name

    def amcheck(self, pod):
        """pg_amcheck of every relation with its indexes (the amcheck extension installed first)."""
        r = self.h.kubectl("exec", "-n", self.x.ns, pod, "--", "pg_amcheck", "-U", "postgres", "--all",
                           "--install-missing", "--heapallindexed", "--progress", timeout=300)
        if r.returncode != 0:
            raise Failure(f"pg_amcheck in {pod} failed ({r.returncode}): {r.stdout[-600:]} {r.stderr[-600:]}")
        return r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "ok"

    def logs(self, pod):
        return self.h.kubectl("logs", "-n", self.x.ns, pod).stdout


def sc_pg_offline(h):
    """An offline push of PostgreSQL under pgbench load: the pod really terminates, the volume
    really detaches before the worker starts, the push runs, the replica comes back and pgbench
    resumes. A restore of that snapshot into a new volume starts, passes pg_amcheck and holds exactly
    the history the database had at the stop (every row of the live database up to the last restored
    one, and no other)."""
    x = Ctx(h, "pgo")
    try:
        x.secret()
        pg = Pg(x, "pg")
        pg.start_load()
        x.repository("pg", [pg.claim])
        sts, pods, vas = [], [], []
        x.watch(nsp(APPS, x.ns, "statefulsets"), sts)
        x.watch(nsp(CORE, x.ns, "pods"), pods)
        x.watch("/apis/storage.k8s.io/v1/volumeattachments", vas)
        time.sleep(1)
        st = x.push_ok("pre-upgrade", "pg", "Offline", "consistent", 300)
        hist = history(sts, "pg")
        expect(hist == [1, 0, 1], f"pg replicas history {hist}, want [1, 0, 1]")
        wadd = [t for t, typ, o in pods if typ == "ADDED" and o["metadata"]["name"] == "pre-upgrade-push"]
        expect(wadd, "no worker pod pre-upgrade-push was seen")
        gone = [t for t, typ, o in pods if typ == "DELETED" and o["metadata"]["name"] == pg.pod]
        expect(gone and gone[0] < wadd[0], f"{pg.pod} was not gone before the worker was created")
        pv = x.c.get(nsp(CORE, x.ns, "persistentvolumeclaims", pg.claim))["spec"]["volumeName"]
        detached = [t for t, typ, o in vas if typ == "DELETED" and o["spec"]["source"].get("persistentVolumeName") == pv]
        expect(detached and detached[0] < wadd[0], f"the VolumeAttachment of {pv} was not gone before the worker")
        pg.wait_ready(pg.pod)
        resumed = pg.wait_rows(pg.rows(), 120)
        # The snapshot, restored into a new volume, is the database as it was at the stop.
        pg.restore_copy(st["snapshots"][0]["snapshot"])
        check = pg.amcheck("pg-copy")
        n = pg.rows("pg-copy")
        last = pg.sql("SELECT max(mtime) FROM pgbench_history", "pg-copy")
        live_upto = int(pg.sql(f"SELECT count(*) FROM pgbench_history WHERE mtime <= '{last}'"))
        live = pg.rows()
        expect(n > 500 and live_upto == n, f"restored {n} rows up to {last}; the live database has {live_upto} up to then")
        expect(live > n, f"pgbench did not resume: {live} rows live, {n} at the stop")
        return (f"replicas {hist}, detached before the worker; restored {n} rows = the live history up to the stop "
                f"({live} now, {resumed} at resume); pg_amcheck: {check}")
    finally:
        x.close()


def sc_pg_online(h):
    """An online push of PostgreSQL under load through a real VolumeSnapshot (crash-consistent, the
    file system frozen while the CSI driver copies it): the database never stops; the restored copy
    starts by replaying its WAL and passes pg_amcheck. A CHECKPOINT pre hook runs through the real
    exec API before the snapshot."""
    x = Ctx(h, "pgon")
    try:
        x.secret()
        pg = Pg(x, "pg")
        pg.start_load()
        checkpoint = {"command": ["psql", "-U", "postgres", "-c", "CHECKPOINT"], "timeoutSeconds": 60}
        x.repository("pg", [pg.claim], online={"volumeSnapshotClassName": "hostpath"}, hooks={"pre": [checkpoint]})
        sts = []
        x.watch(nsp(APPS, x.ns, "statefulsets"), sts)
        before = pg.rows()
        st = x.push_ok("live", "pg", "Online", "crash-consistent", 300)
        expect((st.get("preHook") or {}).get("ok"), f"CHECKPOINT hook: {st.get('preHook')}")
        expect(history(sts, "pg") in ([], [1]), f"the online push scaled pg: {history(sts, 'pg')}")
        expect(pg.rows() > before, "the load stopped during the online push")
        pg.restore_copy(st["snapshots"][0]["snapshot"], cleanup={"paths": ["postmaster.pid"]})
        log = pg.logs("pg-copy")
        expect("database system was interrupted" in log or "not properly shut down" in log,
               f"the copy did not start from a crash image: {log[-600:]}")
        check = pg.amcheck("pg-copy")
        n = pg.rows("pg-copy")
        expect(n >= before, f"the copy has {n} rows, fewer than the {before} before the push")
        return f"crash-consistent, never scaled; the copy recovered from its WAL with {n} rows; pg_amcheck: {check}"
    finally:
        x.close()


def sc_worker_oom(h):
    """A worker pod whose memory limit is too small is OOM-killed by the kernel: the job fails with
    WorkerOOMKilled, whose message says to raise the limit, and the workloads come back."""
    x = Ctx(h, "oom")
    try:
        x.secret()
        x.pvc("data")
        x.fill("data", 41)
        x.fill_big("data", 64, 41)
        x.deployment("app", 2, ["data"])
        x.repository("app", ["data"], worker_resources={"requests": {"cpu": "50m", "memory": "16Mi"},
                                                        "limits": {"memory": "16Mi"}})
        x.wait_running("app", 2)
        x.job("tight", "app", "Offline")
        j = x.wait_done("tight", 180)
        st = j["status"]
        fail = st.get("failure") or {}
        expect(st["phase"] == "Failed" and failure_reason(j) == "WorkerOOMKilled", f"{st['phase']}: {fail}")
        expect("memory" in fail.get("message", "").lower(), f"the message names no memory limit: {fail}")
        wait_for(lambda: x.replicas("Deployment", "app") == 2, 30, "replicas back to 2")
        x.wait_running("app", 2, 60)
        x.wait_cleaned("tight", 60)
        return f"WorkerOOMKilled: {fail.get('message', '')[:120]}; replicas back to 2"
    finally:
        x.close()


def sc_safety_net(h):
    """A PushJob deleted without its finalizer (stripped by hand) while its workloads are scaled
    down: nothing of the job is left to unwind them, so the operator's sweep finds the replica
    annotation of a job that is gone and scales them back."""
    x = Ctx(h, "net")
    try:
        x.secret()
        x.app("app", 2, "data", 61, stop_seconds=15)
        x.job("orphan", "app", "Offline")

        def annotation():
            d = x.c.get(nsp(APPS, "net", "deployments", "app")) or {}
            return ((d.get("metadata") or {}).get("annotations") or {}).get("rediacc.io/push-original-replicas")
        wait_for(lambda: x.replicas("Deployment", "app") == 0 and annotation(), 30, "the app scaled to 0 and annotated")
        job = nsp(GROUP, "net", "pushjobs", "orphan")
        phase = ((x.c.get(job) or {}).get("status") or {}).get("phase")
        x.c.merge(job, {"metadata": {"finalizers": None}})
        x.c.delete(job)
        wait_for(lambda: x.c.get(job) is None, 10, "the job gone")
        t = time.time()
        wait_for(lambda: x.replicas("Deployment", "app") == 2 and not annotation(), 75,
                 "replicas back to 2 and the annotation removed by the sweep")
        took = time.time() - t
        x.wait_running("app", 2, 60)
        text = h.http(f"{h.metrics_url}/metrics") or ""
        series = 'push_operator_workloads_restored_total{namespace="net"}'
        expect(series in text, f"{series} not in /metrics")
        return f"job deleted without its finalizer in {phase}: replicas back to 2 after {took:.0f}s, annotation removed"
    finally:
        x.close()


def sc_operator_kill(h):
    """The operator pod deleted with --force --grace-period=0 (SIGKILL, no lease hand-over) while a
    job is Quiescing, WaitingForDetach (the app takes 8 s to stop) and Pushing: the Deployment's new
    pod takes the lease, finishes every job and brings every workload back."""
    x = Ctx(h, "kill")
    out = []
    try:
        x.secret()
        x.pvc("data")
        d = x.fill("data", 6)
        x.fill_big("data", 128, 6)
        x.deployment("app", 2, ["data"], stop_seconds=8)
        x.repository("app", ["data"])
        x.wait_running("app", 2)
        for i, target in enumerate(["Quiescing", "WaitingForDetach", "Pushing"]):
            name = f"k{i}-{target.lower()}"
            seen = []
            hit = threading.Event()

            def sink(t, o, name=name, target=target, seen=seen, hit=hit):
                ph = (o.get("status") or {}).get("phase")
                seen.append(ph)
                if ph == target and not hit.is_set():
                    # Killed before the main thread goes on: it then waits for the next pod.
                    h.kill_operator()
                    hit.set()
            stop = threading.Event()
            h.c.watch(nsp(GROUP, "kill", "pushjobs") + f"?fieldSelector=metadata.name%3D{name}", sink, stop)
            time.sleep(0.3)
            x.job(name, "app", "Offline")
            if not hit.wait(90):
                stop.set()
                raise Failure(f"{name}: never saw phase {target} (phases {seen})")
            stop.set()
            killed_in = x.phase(name)
            h.start_operator()
            j = x.wait_done(name, 240)
            st = j["status"]
            wait_for(lambda: x.replicas("Deployment", "app") == 2, 60, f"{name}: replicas back to 2")
            x.wait_running("app", 2, 60)
            expect(st["phase"] == "Succeeded", f"{name}: killed in {killed_in}, ended {st['phase']}: {st.get('failure')}")
            x.restore_equals(st["snapshots"][0]["snapshot"], d)
            dep = x.c.get(nsp(APPS, "kill", "deployments", "app"))
            ann = (dep["metadata"].get("annotations") or {}).get("rediacc.io/push-original-replicas")
            expect(ann is None, f"{name}: replica annotation left: {ann}")
            out.append(f"{target}(at {killed_in})->{st['phase']}")
        return ", ".join(out) + f"; {h.op_n} operator pods"
    finally:
        x.close()
        if not h.operator_alive():
            h.start_operator()


def sc_p1_deadline(h):
    """A P1 job (33 s by default) on an app that takes 60 s to stop: the deadline passes while the
    job waits for the pods to go; it fails with DeadlineExceeded and the replicas come back."""
    x = Ctx(h, "p1")
    try:
        x.secret()
        x.pvc("data")
        x.fill("data", 5)
        x.deployment("app", 2, ["data"], stop_seconds=60)
        x.repository("app", ["data"])
        x.wait_running("app", 2)
        t0 = time.time()
        x.job("urgent", "app", "Offline", priority="P1")
        j = x.wait_done("urgent", 120)
        took = time.time() - t0
        st = j["status"]
        expect(st["phase"] == "Failed", f"phase {st['phase']}")
        expect(failure_reason(j) == "DeadlineExceeded", f"reason {failure_reason(j)}: {st.get('failure')}")
        expect(x.replicas("Deployment", "app") == 2, f"replicas {x.replicas('Deployment', 'app')}, want 2")
        x.wait_running("app", 2, 120)
        x.wait_cleaned("urgent")
        return f"Failed/DeadlineExceeded after {took:.0f}s (in {st.get('failure', {}).get('message', '')[:60]}), replicas back to 2"
    finally:
        x.close()


# (name, function, exclusive). The scenarios that are not exclusive run side by side (--parallel,
# default 3): each has its own namespaces, store prefixes and objects, and none of them changes the
# operator. The exclusive ones run afterwards, one at a time, in this order: metrics reads the
# counters of everything before it; rbac-rule-removed takes a rule from the operator's ClusterRole;
# queue-order needs the queue to itself (and a helm upgrade to one push slot); operator-kill and
# policy-schedule kill and restart the operator.
SCENARIOS = [
    # Side by side, the longest first.
    ("pg-offline", sc_pg_offline, False),
    ("restore-in-place", sc_restore_in_place, False),
    ("restore-tests", sc_restore_tests, False),
    ("pod-security", sc_pod_security, False),
    ("restore-killed", sc_restore_killed, False),
    ("worker-failure", sc_worker_failure, False),
    ("restore-live-read", sc_restore_live_read, False),
    ("retention", sc_retention, False),
    ("alerts", sc_alerts, False),
    ("safety-net", sc_safety_net, False),
    ("restore-new-volumes", sc_restore_new_volumes, False),
    ("p1-deadline", sc_p1_deadline, False),
    ("pg-online", sc_pg_online, False),
    ("hooks", sc_hooks, False),
    ("delete-mid-flow", sc_delete_mid_flow, False),
    ("online-live", sc_online_live, False),
    ("pre-upgrade", sc_pre_upgrade, False),
    ("worker-oom", sc_worker_oom, False),
    ("offline-deployment-statefulset", sc_offline, False),
    ("prune-during-push", sc_prune_during_push, False),
    ("online-with-class", sc_online_class, False),
    ("invalid-manifests", sc_invalid_manifests, False),
    ("metrics", sc_metrics, True),
    ("rbac-rule-removed", sc_rbac_rule_removed, True),
    ("queue-order", sc_queue_order, True),
    ("operator-kill", sc_operator_kill, True),
    ("policy-schedule", sc_policy_schedule, True),
]


class Results:
    """Runs scenarios and prints one line per scenario as it ends (from any thread)."""

    def __init__(self, h):
        self.h, self.passed, self.failed, self.lock = h, 0, 0, threading.Lock()

    def run(self, name, fn):
        t = time.time()
        try:
            detail = fn(self.h)
            with self.lock:
                self.passed += 1
                print(f"PASS {name} ({time.time() - t:.1f}s): {detail}", flush=True)
        except Exception as e:  # noqa: BLE001
            msg = str(e) if isinstance(e, Failure) else f"{e!r}\n{traceback.format_exc()}"
            with self.lock:
                self.failed += 1
                print(f"FAIL {name} ({time.time() - t:.1f}s): {msg}", flush=True)
                if self.failed == 1:
                    print(f"--- last 50 lines of the operator log ---\n{self.h.operator_tail()}", flush=True)
                    print(f"--- node conditions and the newest Warning events ---\n{self.h.cluster_report()}",
                          flush=True)


def run_scenarios(h, chosen, parallel):
    res = Results(h)
    side_by_side = [(n, f) for n, f, exclusive in chosen if not exclusive]
    pending = list(side_by_side)
    lock = threading.Lock()

    def lane():
        while True:
            with lock:
                if not pending:
                    return
                name, fn = pending.pop(0)
            res.run(name, fn)
    lanes = [threading.Thread(target=lane, daemon=True) for _ in range(max(1, parallel))]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    for name, fn, exclusive in chosen:
        if exclusive:
            res.run(name, fn)
            if not h.operator_alive():
                try:
                    h.start_operator()
                except Exception:  # noqa: BLE001
                    pass
    return res.passed, res.failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", help="scenarios to run (default: all)")
    ap.add_argument("--only", help="comma-separated scenario names (the same as naming them)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir even on success")
    ap.add_argument("--parallel", type=int, default=3,
                    help="how many of the scenarios that may run side by side do so (1: one at a time)")
    a = ap.parse_args()
    only = set(a.names) | (set(a.only.split(",")) if a.only else set()) or None
    known = {n for n, _, _ in SCENARIOS}
    if only and only - known:
        print(f"unknown scenario(s): {', '.join(sorted(only - known))}; known: {', '.join(n for n, _, _ in SCENARIOS)}")
        return 2
    h = Harness(a.keep)
    atexit.register(h.stop_all)

    def on_signal(sig, _):
        h.stop_all()
        print(f"interrupted (signal {sig}); logs in {h.tmp}", flush=True)
        os._exit(130)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    t0 = time.time()
    passed, failed = 0, 0
    try:
        h.setup()
    except Exception as e:  # noqa: BLE001
        print(f"SET-UP FAILED: {e}\n{traceback.format_exc()}")
        print(f"logs in {h.tmp}\n--- last 50 lines of the operator log ---\n{h.operator_tail()}")
        print("0 passed, 1 failed")
        return 1
    chosen = [sc for sc in SCENARIOS if not only or sc[0] in only]
    passed, failed = run_scenarios(h, chosen, a.parallel)
    h.stop_all()
    print(f"total {time.time() - t0:.1f}s", flush=True)
    if failed:
        print(f"logs in {h.tmp}")
    elif not a.keep:
        shutil.rmtree(h.tmp, ignore_errors=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
