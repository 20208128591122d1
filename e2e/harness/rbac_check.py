#!/usr/bin/env python3
"""Compares the operator's RBAC (rendered chart) with the API calls it made in an e2e run.

  python3 e2e/harness/rbac_check.py --log <tmp>/logs/proxy-requests.log --manifests rendered.yaml

  rendered.yaml: `scripts/check-chart --out rendered.yaml` (every option on, release namespace
  push-operator-system, the Lease namespace of the e2e operator).
  proxy-requests.log: from `e2e/run.sh --keep` (the kept temp dir's logs/).

Which requests are the operator's. proxy.py logs `HH:MM:SS METHOD PATH -> UPSTREAM STATUS [(watch)]`
and no client identity (the operator, the harness's Python client and kubectl all go through the
proxy; the simulator talks to the API server directly and is not logged). A User-Agent would not
help either: kube-rs and Python's http.client send none. The requests are told apart by how their
URLs are built:
  - kube-rs (the operator) puts a `?` after every URL it builds except a plain get: `...?` for
    create, replace, patch, delete, and `?&limit=..`, `?&watch=true..` for list and watch;
  - kubectl sends `fieldManager=kubectl-...`, `limit=500` without the `&`, /version, /openapi;
  - the harness client (e2e/harness/k8s.py) sends bare paths or `?labelSelector=` / `?fieldSelector=`.
A plain GET of a collection (no `?`) is the harness's. A plain GET of one object is ambiguous: it is counted as the operator's ("get, by
attribution") unless it is kubectl apply's read before a write (a kubectl request on the same
collection within 3 s) or a Namespace (the operator never reads Namespaces). The harness also
reads PVCs, PushJobs and workloads by name, all of which the operator reads too, so this can only
over-count `get`s the operator is granted anyway; the report marks them.

Verbs: GET one object -> get, GET a collection -> list (watch with ?watch=1|true), POST -> create,
PUT -> update, PATCH -> patch, DELETE one -> delete, DELETE a collection -> deletecollection.
A GET of pods/NAME/exec (kube-rs execs over a WebSocket) needs get and, from Kubernetes 1.31,
create. Paths: /api/v1 -> group "", /apis/GROUP/VERSION -> GROUP.

Checks: every (group, resource[/subresource], verb) used, in its namespace, is granted by the
ClusterRoles (ClusterRoleBindings) and Roles (RoleBindings, same namespace) bound to the
operator's ServiceAccount (the Deployment's serviceAccountName); grants never used are listed,
and fail the check unless they are in NOT_EXERCISED below with the reason.
Prints one line per finding and exits 1 when something used is not granted or a grant is unused
without a reason.
"""
import argparse
import re
import sys
import urllib.parse
from collections import defaultdict

import yaml

# Grants the code needs on paths the e2e scenarios do not (or cannot) exercise.
# (group, resource, verb): why it is granted anyway.
NOT_EXERCISED = {
    # Not an API request: the API server's OwnerReferencesPermissionEnforcement admission plugin
    # checks it when the operator creates worker pods, clone PVCs and VolumeSnapshots with a
    # controller ownerReference (blockOwnerDeletion: true) to the PushJob. The e2e API server
    # runs without that plugin, and it never shows in a request log.
    ("rediacc.io", "pushjobs/finalizers", "update"): "ownerReferences with blockOwnerDeletion (admission check, not a request)",
    # The same for scheduled PushJobs and prune Pods owned by their PushPolicy.
    ("rediacc.io", "pushpolicies/finalizers", "update"): "ownerReferences with blockOwnerDeletion (admission check, not a request)",
    # kube-runtime's Recorder patches an Event when the same event repeats (an event series);
    # e2e runs are short and may not repeat one.
    ("events.k8s.io", "events", "patch"): "Recorder: repeated event series (patch) may not occur in a short run",
    # spec.ttlSecondsAfterFinished: the operator deletes finished PushJobs (push_job/mod.rs).
    ("rediacc.io", "pushjobs", "delete"): "ttlSecondsAfterFinished and history-limit cleanup; only if a scenario reaches them",
}

LINE = re.compile(r"^(\d\d:\d\d:\d\d) (GET|POST|PUT|PATCH|DELETE|HEAD) (\S+) -> (\S+) (\d{3})( \(watch\))?")


def secs(t):
    h, m, s = map(int, t.split(":"))
    return h * 3600 + m * 60 + s


def parse_path(raw):
    """-> (group, namespace, resource, name, subresource) or None for non-resource URLs."""
    path = urllib.parse.urlsplit(raw).path.rstrip("/")
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return None  # /version, /openapi, /api, /apis, /apis/GROUP: discovery, non-resource
    if not rest:
        return None  # /api/v1, /apis/GROUP/VERSION: discovery
    ns = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        ns, rest = rest[1], rest[2:]
    elif rest[0] == "namespaces":
        return (group, None, "namespaces", rest[1] if len(rest) > 1 else None, None)
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return (group, ns, resource, name, sub)


def verbs_of(method, raw, name, sub):
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(raw).query)
    if method == "GET":
        if sub == "exec":
            return ["get", "create"]
        if name is None:
            return ["watch"] if q.get("watch", ["0"])[0] in ("1", "true") else ["list"]
        return ["get"]
    if method == "DELETE":
        return ["delete"] if name else ["deletecollection"]
    return [{"POST": "create", "PUT": "update", "PATCH": "patch", "HEAD": "get"}[method]]


def client_of(raw):
    """'operator', 'other' or 'ambiguous' (a plain GET), from the URL's shape (see the docstring)."""
    if "?" in raw:
        query = raw.split("?", 1)[1]
        if query == "" or query.startswith("&"):
            return "operator"
        return "other"
    return "ambiguous"


def is_kubectl(raw):
    q = raw.split("?", 1)[1] if "?" in raw else ""
    return "fieldManager=kubectl" in q or re.match(r"^limit=\d+", q) is not None


def read_log(path):
    entries = []
    for ln in open(path, errors="replace"):
        m = LINE.match(ln)
        if not m:
            continue
        t, method, raw, _, status, _w = m.groups()
        entries.append({"t": secs(t), "method": method, "raw": raw, "status": int(status)})
    return entries


def operator_requests(entries):
    """-> [(group, ns, resource[/sub], name, verb, how)] of the operator's requests."""
    out = []
    for i, e in enumerate(entries):
        p = parse_path(e["raw"])
        if p is None:
            continue
        group, ns, res, name, sub = p
        who = client_of(e["raw"])
        how = "certain"
        if who == "other":
            continue
        if who == "ambiguous":
            if e["method"] != "GET" or name is None or res == "namespaces":
                continue  # harness writes, deletes and lists (kube-rs lists carry `?`); kubectl's namespace check
            coll = e["raw"].rsplit("/", 1)[0]
            near = [x for x in entries[i + 1:i + 40] if x["t"] - e["t"] <= 3]
            if any(is_kubectl(x["raw"]) and x["raw"].startswith(coll) for x in near):
                continue  # kubectl apply reads the object before writing it
            how = "attributed"
        resource = f"{res}/{sub}" if sub else res
        for v in verbs_of(e["method"], e["raw"], name, sub):
            out.append((group, ns, resource, name, v, how))
    return out


def load_rbac(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if isinstance(d, dict)]
    deps = [d for d in docs if d.get("kind") == "Deployment"]
    if len(deps) != 1:
        sys.exit(f"expected one Deployment (the operator) in {path}, found {len(deps)}")
    sa = deps[0]["spec"]["template"]["spec"].get("serviceAccountName", "default")
    sa_ns = deps[0]["metadata"].get("namespace")
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d.get("rules") or []
             for d in docs if d.get("kind") in ("ClusterRole", "Role")}
    cluster_rules, ns_rules = [], defaultdict(list)
    for b in docs:
        if b.get("kind") not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace", b["metadata"].get("namespace")) == sa_ns
                   for s in b.get("subjects") or []):
            continue
        ref = b["roleRef"]
        key = (ref["kind"], None if ref["kind"] == "ClusterRole" else b["metadata"].get("namespace"), ref["name"])
        rules = roles.get(key)
        if rules is None:
            sys.exit(f"{b['kind']} {b['metadata']['name']} refers to a missing {ref['kind']} {ref['name']}")
        if b["kind"] == "ClusterRoleBinding":
            cluster_rules += [(r, f"ClusterRole/{ref['name']}") for r in rules]
        else:
            ns_rules[b["metadata"]["namespace"]] += [(r, f"{ref['kind']}/{ref['name']}@{b['metadata']['namespace']}")
                                                     for r in rules]
    return sa, sa_ns, cluster_rules, ns_rules


def matches(rule, group, resource, verb, name):
    if not ({"*", group} & set(rule.get("apiGroups") or [])):
        return False
    if not ({"*", resource} & set(rule.get("resources") or [])):
        return False
    if not ({"*", verb} & set(rule.get("verbs") or [])):
        return False
    rn = rule.get("resourceNames")
    return not rn or (name in rn and verb not in ("list", "watch", "create", "deletecollection"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", required=True, help="proxy-requests.log of an e2e run")
    ap.add_argument("--manifests", required=True, help="rendered chart (scripts/check-chart --out)")
    a = ap.parse_args()
    entries = read_log(a.log)
    reqs = operator_requests(entries)
    sa, sa_ns, cluster_rules, ns_rules = load_rbac(a.manifests)
    print(f"{len(entries)} logged requests, {len(reqs)} operator (verb) uses; ServiceAccount {sa_ns}/{sa}")

    used = defaultdict(lambda: {"n": 0, "how": set(), "ns": set(), "by": set(), "denied": 0})
    for group, ns, resource, name, verb, how in reqs:
        u = used[(group, resource, verb)]
        u["n"] += 1
        u["how"].add(how)
        u["ns"].add(ns or "(cluster)")
        grants = [src for r, src in cluster_rules if matches(r, group, resource, verb, name)]
        if ns:
            grants += [src for r, src in ns_rules.get(ns, []) if matches(r, group, resource, verb, name)]
        if grants:
            u["by"].update(grants)
        else:
            u["denied"] += 1

    failed = 0
    print("\n== used by the operator (group, resource, verb): granted by")
    for key in sorted(used):
        u = used[key]
        g, r, v = key
        how = "" if u["how"] == {"certain"} else (" [get by attribution: plain GET]" if u["how"] == {"attributed"}
                                                  else " [partly by attribution]")
        nss = sorted(u["ns"])
        nsdesc = ", ".join(nss[:4]) + (f", +{len(nss) - 4}" if len(nss) > 4 else "")
        if u["denied"]:
            failed += 1
            print(f"FAIL {g or 'core'} {r} {v} x{u['n']} in {nsdesc}: NOT GRANTED for {u['denied']} request(s){how}")
        else:
            print(f"ok   {g or 'core'} {r} {v} x{u['n']} in {nsdesc}: {', '.join(sorted(u['by']))}{how}")

    granted = set()
    for rules in [[r for r, _ in cluster_rules]] + [[r for r, _ in v] for v in ns_rules.values()]:
        for rule in rules:
            for g in rule.get("apiGroups") or []:
                for r in rule.get("resources") or []:
                    for v in rule.get("verbs") or []:
                        granted.add((g, r, v))
    print(f"\n== granted: {len(granted)} (group, resource, verb)")
    unused = sorted(k for k in granted if k not in used)
    print(f"\n== granted but not used in this run: {len(unused)}")
    for k in unused:
        g, r, v = k
        if "*" in k:
            failed += 1
            print(f"FAIL {g or 'core'} {r} {v}: wildcard grant")
        elif k in NOT_EXERCISED:
            print(f"ok   {g or 'core'} {r} {v}: {NOT_EXERCISED[k]}")
        else:
            failed += 1
            print(f"FAIL {g or 'core'} {r} {v}: more than needed? (not used, no reason in NOT_EXERCISED)")
    stale = sorted(k for k in NOT_EXERCISED if k not in granted)
    for k in stale:
        print(f"note {k[0] or 'core'} {k[1]} {k[2]}: in NOT_EXERCISED but not granted")
    print(f"\n{'RBAC OK' if not failed else f'RBAC: {failed} problem(s)'}: {len(used)} used, {len(granted)} granted, "
          f"{len(unused)} unused ({len([k for k in unused if k in NOT_EXERCISED])} with a reason)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
