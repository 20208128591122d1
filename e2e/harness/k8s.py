"""A tiny Kubernetes REST client (stdlib only) of the e2e runner and the benchmarks."""
import http.client
import json
import ssl
import threading
import time
import urllib.parse


class ApiError(Exception):
    def __init__(self, status, body, what):
        self.status, self.body = status, body
        msg = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{what}: HTTP {status}: {msg}")


class Client:
    def __init__(self, base, cacert=None, cert=None, token=None):
        """cert: (certificate file, key file) of a client certificate; token: a bearer token."""
        self.base = base.rstrip("/")
        u = urllib.parse.urlparse(self.base)
        self.https = u.scheme == "https"
        self.host, self.port = u.hostname, u.port
        self.ctx = ssl.create_default_context(cafile=cacert) if self.https else None
        if cert:
            self.ctx.load_cert_chain(*cert)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.local = threading.local()

    def _conn(self, timeout=30):
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, ctype="application/json", ok404=False):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", **self.headers}
        if data is not None:
            headers["Content-Type"] = ctype
        for attempt in range(3):
            c = getattr(self.local, "conn", None)
            if c is None:
                c = self.local.conn = self._conn()
            try:
                c.request(method, path, body=data, headers=headers)
                r = c.getresponse()
                raw = r.read()
                break
            except (http.client.HTTPException, OSError):
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    pass
                self.local.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.2)
        try:
            obj = json.loads(raw) if raw else None
        except ValueError:
            obj = raw.decode(errors="replace")
        if r.status == 404 and ok404:
            return None
        if r.status >= 300:
            raise ApiError(r.status, obj, f"{method} {path}")
        return obj

    def get(self, path, ok404=True):
        return self.request("GET", path, ok404=ok404)

    def list(self, path, selector=None):
        if selector:
            path += ("&" if "?" in path else "?") + "labelSelector=" + urllib.parse.quote(selector)
        return (self.request("GET", path) or {}).get("items") or []

    def create(self, path, obj):
        return self.request("POST", path, obj)

    def merge(self, path, patch):
        return self.request("PATCH", path, patch, ctype="application/merge-patch+json")

    def delete(self, path, ok404=True):
        try:
            return self.request("DELETE", path)
        except ApiError as e:
            if e.status == 404 and ok404:
                return None
            raise

    def watch(self, path, on_event, stop):
        """Runs in a thread: calls on_event(type, obj) for every event until stop is set.
        Relists and rewatches after errors (410 Gone, disconnects)."""
        def run():
            rv = None
            while not stop.is_set():
                try:
                    if rv is None:
                        lst = self.request("GET", path)
                        rv = lst["metadata"]["resourceVersion"]
                        for it in lst.get("items") or []:
                            on_event("ADDED", it)
                    sep = "&" if "?" in path else "?"
                    c = self._conn(timeout=60)
                    c.request("GET", f"{path}{sep}watch=1&allowWatchBookmarks=true&resourceVersion={rv}",
                              headers={"Accept": "application/json", **self.headers})
                    r = c.getresponse()
                    if r.status != 200:
                        r.read()
                        rv = None
                        time.sleep(0.3)
                        continue
                    while not stop.is_set():
                        line = r.readline()
                        if not line:
                            break
                        ev = json.loads(line)
                        if ev["type"] == "ERROR":
                            rv = None
                            break
                        rv = ev["object"]["metadata"].get("resourceVersion", rv)
                        if ev["type"] != "BOOKMARK":
                            on_event(ev["type"], ev["object"])
                    c.close()
                except Exception:  # noqa: BLE001
                    time.sleep(0.3)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t
