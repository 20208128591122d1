#!/usr/bin/env python3
"""The controller at scale, on the real API server (e2e/cluster/up, control plane only).

Creates REPOSITORIES Repositories (each with a PVC that stays unbound: no node) and
FINISHED PushJobs already Succeeded, then starts `push-operator controller` and measures:
  - its resident memory (VmRSS sampled every 0.5 s; peak, and after it settled);
  - reconciles per minute and API requests per minute while nothing happens, averaged over
    4 minutes (the operator's reconcile_total and the API server's apiserver_request_total,
    minus a minute without the operator);
  - for NEW new PushJobs created one every 0.2 s: the time from creation to the first phase the
    operator writes (Queued, or Quiescing when a slot is free), p50/p99/max.
A benchmark, not a test: it prints a Markdown table and writes a JSON record; nothing is asserted.

Usage: bench/controller-scale.py [--repositories 1000] [--finished 10000] [--new 200]
                                 [--binary target/release/push-operator] [--json OUT]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "e2e", "harness"))
from k8s import Client  # noqa: E402

GROUP = "/apis/rediacc.io/v1alpha1"
NAMESPACES = 10
IDLE_SECONDS = 240


def ns_of(i):
    return f"scale-{i % NAMESPACES}"


def parallel(fn, items, workers=8):
    with ThreadPoolExecutor(workers) as ex:
        for _ in ex.map(fn, items):
            pass


def metric_sum(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in "{ "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repositories", type=int, default=1000)
    ap.add_argument("--finished", type=int, default=10000)
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--binary", default=None)
    ap.add_argument("--json", default=None, help="write the record here too")
    a = ap.parse_args()
    binary = a.binary or next((p for p in (os.path.join(REPO, "target/release/push-operator"),
                                           os.path.join(REPO, "target/debug/push-operator")) if os.path.exists(p)), None)
    if not binary:
        sys.exit("no push-operator binary: cargo build --release first, or pass --binary")
    tmp = tempfile.mkdtemp(prefix="push-scale-")
    cluster = os.path.join(tmp, "cluster")
    r = subprocess.run([os.path.join(REPO, "e2e/cluster/up"), "--dir", cluster, "--watch-pid", str(os.getpid()),
                        "--purge"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"e2e/cluster/up failed: {r.stderr[-2000:]}")
    env = dict(ln.split("=", 1) for ln in open(os.path.join(cluster, "env")).read().splitlines() if ln)
    kubectl = [os.path.join(env["BIN"], "kubectl"), "--kubeconfig", env["KUBECONFIG"]]
    pki = os.path.join(cluster, "pki")
    c = Client(env["API_URL"], env["CA"], cert=(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key")))
    op = None
    try:
        for crds in (os.path.join(REPO, "crds"), os.path.join(env["BIN"], "crds")):
            subprocess.run([*kubectl, "apply", "--server-side", "-f", crds], check=True, capture_output=True)
        subprocess.run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"],
                       check=True, capture_output=True)
        for n in range(NAMESPACES):
            c.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"scale-{n}"}})
        t = time.time()

        def make_repo(i):
            ns = ns_of(i)
            c.create(f"/api/v1/namespaces/{ns}/persistentvolumeclaims", {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": f"data-{i}"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
            c.create(f"{GROUP}/namespaces/{ns}/repositories", {
                "apiVersion": "rediacc.io/v1alpha1", "kind": "Repository", "metadata": {"name": f"app-{i}"},
                "spec": {"volumes": [f"data-{i}"], "storage": {"endpoint": "http://127.0.0.1:9", "bucket": "bench",
                                                               "prefix": f"app-{i}", "encryption": {"mode": "None"}}}})
        parallel(make_repo, range(a.repositories))
        t_repos = time.time() - t
        t = time.time()

        def make_finished(i):
            ns, repo = ns_of(i), f"app-{i % a.repositories}"
            name = f"old-{i}"
            c.create(f"{GROUP}/namespaces/{ns}/pushjobs", {
                "apiVersion": "rediacc.io/v1alpha1", "kind": "PushJob", "metadata": {"name": name},
                "spec": {"repositoryRef": {"name": repo}, "mode": "Offline"}})
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            c.merge(f"{GROUP}/namespaces/{ns}/pushjobs/{name}/status", {"status": {
                "phase": "Succeeded", "startTime": now, "completionTime": now, "consistency": "consistent",
                "message": "pushed (benchmark fixture)"}})
        parallel(make_finished, range(a.finished))
        t_jobs = time.time() - t
        print(f"fixtures: {a.repositories} Repositories in {t_repos:.0f} s, {a.finished} finished PushJobs in "
              f"{t_jobs:.0f} s", flush=True)

        def api_requests():
            return metric_sum(c.request("GET", "/metrics") or "", "apiserver_request_total")
        base0 = api_requests()
        time.sleep(60)
        baseline = api_requests() - base0

        port = 18000 + os.getpid() % 1000
        log = open(os.path.join(tmp, "operator.log"), "w")
        t_start = time.time()
        op = subprocess.Popen([binary, "controller", f"--listen=127.0.0.1:{port}", "--leader-elect=false",
                               "--log=warn"], env=dict(os.environ, KUBECONFIG=env["KUBECONFIG"], NO_COLOR="1"),
                              stdout=log, stderr=subprocess.STDOUT)
        peak, samples = [0], []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                k = rss_kib(op.pid)
                peak[0] = max(peak[0], k)
                samples.append((time.time() - t_start, k))
                time.sleep(0.5)
        threading.Thread(target=sample, daemon=True).start()

        def scrape(path):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                    return resp.read().decode()
            except OSError:
                return None
        while scrape("/readyz") is None:
            if op.poll() is not None:
                sys.exit(f"the operator exited: {open(log.name).read()[-2000:]}")
            time.sleep(0.2)
        t_ready = time.time() - t_start
        # The initial sync: every finished job is read once; wait until reconciles stop climbing.
        last, steady = -1.0, 0
        while steady < 5:
            n = metric_sum(scrape("/metrics") or "", "push_operator_reconcile_total")
            steady = steady + 1 if n == last else 0
            last = n
            time.sleep(1)
        t_synced = time.time() - t_start
        # Idle: two of a Ready Repository's 2-minute check periods, so every Repository is checked
        # in the window (one minute could fall between two rounds and show none).
        rec0, api0 = metric_sum(scrape("/metrics"), "push_operator_reconcile_total"), api_requests()
        time.sleep(IDLE_SECONDS)
        minutes = IDLE_SECONDS / 60
        rec_min = round((metric_sum(scrape("/metrics"), "push_operator_reconcile_total") - rec0) / minutes)
        api_min = (api_requests() - api0) / minutes - baseline
        rss_settled = rss_kib(op.pid)

        first_phase = {}
        created = {}
        wstop = threading.Event()

        def on_event(_typ, obj):
            name = obj["metadata"]["name"]
            if name.startswith("new-") and name not in first_phase and (obj.get("status") or {}).get("phase"):
                first_phase[name] = (time.time(), obj["status"]["phase"])
        for n in range(NAMESPACES):
            c.watch(f"{GROUP}/namespaces/scale-{n}/pushjobs", on_event, wstop)
        time.sleep(2)
        for i in range(a.new):
            name, ns = f"new-{i}", ns_of(i)
            created[name] = time.time()
            c.create(f"{GROUP}/namespaces/{ns}/pushjobs", {
                "apiVersion": "rediacc.io/v1alpha1", "kind": "PushJob", "metadata": {"name": name},
                "spec": {"repositoryRef": {"name": f"app-{i % a.repositories}"}, "mode": "Offline",
                         "priority": "P3"}})
            time.sleep(0.2)
        end = time.time() + 60
        while len(first_phase) < a.new and time.time() < end:
            time.sleep(0.5)
        wstop.set()
        lat = sorted(first_phase[n][0] - created[n] for n in created if n in first_phase)
        phases = sorted({p for _, p in first_phase.values()})

        def pct(q):
            return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
        stop.set()
        rec = {
            "repositories": a.repositories, "finished_jobs": a.finished, "new_jobs": a.new,
            "binary": binary, "kubernetes": subprocess.run([os.path.join(env["BIN"], "kube-apiserver"), "--version"],
                                                           capture_output=True, text=True).stdout.strip(),
            "ready_seconds": round(t_ready, 1), "synced_seconds": round(t_synced, 1),
            "rss_peak_mib": round(peak[0] / 1024, 1), "rss_settled_mib": round(rss_settled / 1024, 1),
            "reconciles_per_minute_idle": rec_min, "api_requests_per_minute_idle": round(api_min),
            "first_phase_p50_s": round(pct(0.5), 3), "first_phase_p99_s": round(pct(0.99), 3),
            "first_phase_max_s": round(lat[-1], 3) if lat else None, "jobs_seen": len(lat), "phases": phases,
        }
        print(json.dumps(rec), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(rec) + "\n")
        print("\n| measure | value |\n|---|---|")
        for k in ("ready_seconds", "synced_seconds", "rss_peak_mib", "rss_settled_mib",
                  "reconciles_per_minute_idle", "api_requests_per_minute_idle", "first_phase_p50_s",
                  "first_phase_p99_s", "first_phase_max_s", "jobs_seen", "phases"):
            print(f"| {k} | {rec[k]} |")
    finally:
        if op and op.poll() is None:
            op.terminate()
            try:
                op.wait(10)
            except subprocess.TimeoutExpired:
                op.kill()
        subprocess.run([os.path.join(REPO, "e2e/cluster/down"), "--dir", cluster, "--purge"], capture_output=True)


if __name__ == "__main__":
    main()
