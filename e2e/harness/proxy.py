#!/usr/bin/env python3
"""HTTP proxy in front of the crdserver that serves core `v1` and `apps/v1` from stand-in CRDs.

  /api/v1/...       -> /apis/core.sim.local/v1/...
  /apis/apps/v1/... -> /apis/apps.sim.local/v1/...

apiVersion is rewritten both ways in request bodies, responses, lists, watch streams (line by
line, unbuffered) and managedFields. Everything else passes through unchanged. Discovery for
/api, /api/v1, /apis/apps, /apis/apps/v1 is synthesised and `apps` is merged into /apis.

pods/NAME/exec plays the kubelet: over a WebSocket (channel protocol v4.channel.k8s.io, as
kubectl and kube-rs speak it) it runs the command as a local process, streams its stdout and
stderr on channels 1 and 2 and ends with the Status a kubelet sends on channel 3 (Success, or
NonZeroExitCode with the exit code). The pod must exist and be Running and the container must be
one of its own, as a kubelet would check.

Usage: proxy.py --listen PORT --upstream https://127.0.0.1:PORT --cacert CA [--log FILE]
"""
import argparse
import base64
import hashlib
import http.client
import http.server
import json
import socketserver
import ssl
import struct
import subprocess
import sys
import threading
import time
import re
import urllib.parse

CORE_G, APPS_G = "core.sim.local", "apps.sim.local"
TO_STANDIN = {"v1": f"{CORE_G}/v1", "apps/v1": f"{APPS_G}/v1"}
FROM_STANDIN = {v: k for k, v in TO_STANDIN.items()}
KINDS = {
    "Pod", "PersistentVolumeClaim", "PersistentVolume", "Secret", "Event", "ConfigMap",
    "Deployment", "StatefulSet", "ReplicaSet",
}
KINDS |= {k + "List" for k in KINDS}

ARGS = None
POD_COLLECTION = re.compile(r"^/apis/core\.sim\.local/v1/namespaces/[^/]+/pods$")
POD_EXEC = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/exec$")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
EXEC_LIMIT_S = 300
LOG = None
LOG_LOCK = threading.Lock()


def log(msg):
    if LOG:
        with LOG_LOCK:
            LOG.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
            LOG.flush()


def rewrite(obj, table, request):
    """Rewrites apiVersion in an object, its items, its managedFields, a watch event's object."""
    if not isinstance(obj, dict):
        return obj
    av = obj.get("apiVersion")
    if av in table and (not request or obj.get("kind") in KINDS):
        obj["apiVersion"] = table[av]
    md = obj.get("metadata")
    if isinstance(md, dict):
        for mf in md.get("managedFields") or []:
            if isinstance(mf, dict) and mf.get("apiVersion") in table:
                mf["apiVersion"] = table[mf["apiVersion"]]
    for it in obj.get("items") or []:
        rewrite(it, table, request)
    if "type" in obj and isinstance(obj.get("object"), dict):
        rewrite(obj["object"], table, request)
    return obj


AGG_ACCEPT = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
              "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json")


def fix_group(item, name):
    """An aggregated-discovery group entry of a stand-in group, renamed to the real group."""
    item = json.loads(json.dumps(item))
    old = item["metadata"]["name"]
    item["metadata"]["name"] = name
    for v in item.get("versions") or []:
        for r in v.get("resources") or []:
            if (r.get("responseKind") or {}).get("group") == old:
                r["responseKind"]["group"] = name
            for sub in r.get("subresources") or []:
                if (sub.get("responseKind") or {}).get("group") == old:
                    sub["responseKind"]["group"] = name
    return item


def map_path(path):
    """Returns (upstream path, mapped?)."""
    if path == "/api/v1" or path.startswith("/api/v1/"):
        return f"/apis/{CORE_G}/v1" + path[len("/api/v1"):], True
    if path == "/apis/apps/v1" or path.startswith("/apis/apps/v1/"):
        return f"/apis/{APPS_G}/v1" + path[len("/apis/apps/v1"):], True
    return path, False


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        pass

    def upstream(self):
        u = urllib.parse.urlparse(ARGS.upstream)
        ctx = ssl.create_default_context(cafile=ARGS.cacert)
        return http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=3600)

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_PATCH(self):
        self.handle_any("PATCH")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def do_HEAD(self):
        self.handle_any("HEAD")

    def send_json(self, code, obj, ctype="application/json"):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def fetch_json(self, path):
        c = self.upstream()
        c.request("GET", path, headers={"Accept": "application/json"})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, (json.loads(body) if body else None)

    def pod_pending(self, up_path, data):
        """The real Pod strategy creates every pod with status.phase=Pending; a CRD with a status
        subresource drops status on create, so set it before answering the creator."""
        try:
            name = json.loads(data)["metadata"]["name"]
            c = self.upstream()
            body = json.dumps({"status": {"phase": "Pending", "qosClass": "BestEffort"}}).encode()
            c.request("PATCH", f"{up_path}/{name}/status", body=body,
                      headers={"Content-Type": "application/merge-patch+json", "Accept": "application/json"})
            r = c.getresponse()
            out = r.read()
            c.close()
            return out if r.status == 200 else None
        except Exception as e:  # noqa: BLE001
            log(f"ERROR setting Pending on a new pod: {e!r}")
            return None

    def discovery(self, path):
        aggregated = "apidiscovery" in (self.headers.get("Accept") or "")
        if path in ("/api", "/apis"):
            c = self.upstream()
            c.request("GET", "/apis", headers={"Accept": AGG_ACCEPT})
            r = c.getresponse()
            body = json.loads(r.read())
            ctype = r.getheader("Content-Type", "application/json")
            c.close()
            items = body.get("items") or []
            core = [fix_group(i, "") for i in items if i["metadata"]["name"] == CORE_G]
            rest = [fix_group(i, "apps") if i["metadata"]["name"] == APPS_G else i
                    for i in items if i["metadata"]["name"] != CORE_G]
            if aggregated:
                body["items"] = core if path == "/api" else rest
                self.send_json(200, body, ctype)
            elif path == "/api":
                host = self.headers.get("Host", "127.0.0.1")
                self.send_json(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": host}]})
            else:
                groups = []
                for i in rest:
                    vs = [{"groupVersion": f"{i['metadata']['name']}/{v['version']}", "version": v["version"]}
                          for v in i.get("versions") or []]
                    if vs:
                        groups.append({"name": i["metadata"]["name"], "versions": vs, "preferredVersion": vs[0]})
                self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
            return True
        if path == "/apis/apps":
            gv = {"groupVersion": "apps/v1", "version": "v1"}
            self.send_json(200, {"kind": "APIGroup", "apiVersion": "v1", "name": "apps", "versions": [gv],
                                 "preferredVersion": gv})
            return True
        if path in ("/api/v1", "/apis/apps/v1"):
            up, _ = map_path(path)
            st, body = self.fetch_json(up)
            if st == 200 and body:
                body["groupVersion"] = "v1" if path == "/api/v1" else "apps/v1"
                for r in body.get("resources", []):
                    if r.get("name") == "events" and path == "/api/v1":
                        r["shortNames"] = ["ev"]
            self.send_json(st, body)
            return True
        return False

    def handle_any(self, method):
        try:
            self._handle(method)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001
            log(f"ERROR {method} {self.path}: {e!r}")
            try:
                self.send_json(502, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                     "message": f"proxy: {e}", "code": 502})
            except Exception:  # noqa: BLE001
                self.close_connection = True

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

    def exec_in_pod(self, method, ns, pod, query):
        """The kubelet's side of `kubectl exec`, over a WebSocket."""
        q = urllib.parse.parse_qs(query)
        command = q.get("command", [])
        status, obj = self.fetch_json(f"/apis/{CORE_G}/v1/namespaces/{ns}/pods/{pod}")
        containers = [c["name"] for c in ((obj or {}).get("spec") or {}).get("containers") or []]
        container = q.get("container", [containers[0] if containers else ""])[0]
        phase = ((obj or {}).get("status") or {}).get("phase")
        problem = None
        if status == 404:
            problem = (404, "NotFound", f'pods "{pod}" not found')
        elif container not in containers:
            problem = (400, "BadRequest", f"container {container} is not valid for pod {pod}")
        elif phase != "Running":
            problem = (400, "BadRequest", f"cannot exec into a container in a completed pod; current phase is {phase}")
        elif not command:
            problem = (400, "BadRequest", "you must specify at least one command for the container")
        elif "websocket" not in (self.headers.get("Upgrade") or "").lower():
            problem = (400, "BadRequest", "this kubelet speaks only WebSocket (v4.channel.k8s.io)")
        if problem:
            code, reason, msg = problem
            log(f"{method} {self.path} -> exec {code}")
            self.send_json(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": msg,
                                  "reason": reason, "code": code})
            return
        protocols = [p.strip() for p in (self.headers.get("Sec-WebSocket-Protocol") or "").split(",")]
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        if "v4.channel.k8s.io" in protocols:
            self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        log(f"{method} {self.path} -> exec:{ns}/{pod}/{container} 101")
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

    def _handle(self, method):
        parsed = urllib.parse.urlsplit(self.path)
        path = parsed.path.rstrip("/") or "/"
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        m = POD_EXEC.match(path)
        if m and method in ("GET", "POST"):
            self.exec_in_pod(method, m.group(1), m.group(2), parsed.query)
            return
        if method == "GET" and self.discovery(path):
            return
        up_path, mapped = map_path(path)
        if mapped and body:
            try:
                body = json.dumps(rewrite(json.loads(body), TO_STANDIN, True)).encode()
            except ValueError:
                pass
        headers = {}
        for k, v in self.headers.items():
            lk = k.lower()
            if lk in ("host", "content-length", "authorization", "accept-encoding", "connection",
                      "transfer-encoding", "keep-alive"):
                continue
            if lk == "accept" and "apidiscovery" in v:
                v = "application/json"
            headers[k] = v
        if body or method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        url = up_path + ("?" + parsed.query if parsed.query else "")
        c = self.upstream()
        c.request(method, url, body=body or None, headers=headers)
        r = c.getresponse()
        q = urllib.parse.parse_qs(parsed.query)
        watching = q.get("watch", ["0"])[0] in ("1", "true") or "/watch/" in up_path
        ctype = r.getheader("Content-Type", "application/json")
        log(f"{method} {self.path} -> {url} {r.status}{' (watch)' if watching else ''}")
        if watching and r.status == 200:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while True:
                    line = r.readline()
                    if not line:
                        break
                    if mapped and line.strip():
                        try:
                            line = (json.dumps(rewrite(json.loads(line), FROM_STANDIN, False)) + "\n").encode()
                        except ValueError:
                            pass
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            finally:
                c.close()
            self.close_connection = True
            return
        data = r.read()
        status = r.status
        c.close()
        if method == "POST" and status == 201 and mapped and POD_COLLECTION.match(up_path):
            data = self.pod_pending(up_path, data) or data
        if mapped and data and "json" in ctype:
            try:
                data = json.dumps(rewrite(json.loads(data), FROM_STANDIN, False)).encode()
            except ValueError:
                pass
        self.send_response(status)
        for k, v in r.getheaders():
            if k.lower() in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                continue
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    global ARGS, LOG
    p = argparse.ArgumentParser()
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--cacert", required=True)
    p.add_argument("--log")
    ARGS = p.parse_args()
    if ARGS.log:
        LOG = open(ARGS.log, "a")
    srv = Server(("127.0.0.1", ARGS.listen), Handler)
    print(f"proxy listening on 127.0.0.1:{ARGS.listen}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
