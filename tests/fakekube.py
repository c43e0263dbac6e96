"""Wire-level fake Kubernetes API server for exercising the real `kubernetes` client.

No kube-apiserver can run in CI, so the controller's list/watch code is tested against this
HTTP/1.1 server instead. It mimics what the client can observe on the wire: JSON lists with a
list resourceVersion and continue tokens, chunked watch streams with one event per line, the
200-plus-ERROR-event answer to a watch from a compacted resourceVersion, bookmarks, and the
failure modes a controller must survive (dropped, stalled and failing requests).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import select
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped objects
LIVENESS_PERIOD = 0.5  # seconds between checks that an idle watch client is still connected


@dataclass(frozen=True)
class Resource:
    """One served resource type; the routing and discovery tables are built from these."""

    plural: str
    kind: str
    group_version: str
    namespaced: bool

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"


CORE_RESOURCES = (
    Resource("namespaces", "Namespace", "v1", False),
    Resource("pods", "Pod", "v1", True),
    Resource("networkpolicies", "NetworkPolicy", "networking.k8s.io/v1", True),
    Resource("nodes", "Node", "v1", False),  # the controller learns tunnel endpoints from them
)
CRD_RESOURCES = (  # the admin-policy CRDs, served unless FakeKube(crds=False)
    Resource("clusternetworkpolicies", "ClusterNetworkPolicy", "policy.networking.k8s.io/v1alpha2", False),
    Resource("adminnetworkpolicies", "AdminNetworkPolicy", "policy.networking.k8s.io/v1alpha1", False),
    Resource("baselineadminnetworkpolicies", "BaselineAdminNetworkPolicy", "policy.networking.k8s.io/v1alpha1",
             False),
)
RESOURCES = CORE_RESOURCES + CRD_RESOURCES


@dataclass(frozen=True)
class Event:
    """A history entry; `prev` lets a continued list rebuild the snapshot of its first page."""

    rv: int
    type: str
    resource: Resource
    obj: Obj
    prev: Obj | None


@dataclass(frozen=True)
class RequestRecord:
    verb: str
    path: str
    query: dict[str, str]


@dataclass(eq=False)
class _Watch:
    """Per-stream state; events are fanned out into `pending` so compaction never hurts it."""

    resource: Resource
    namespace: str | None
    bookmarks: bool
    deadline: float | None
    drop_gen: int = 0
    bookmark_gen: int = 0
    pending: list[Obj] = field(default_factory=list)


class Expired(Exception):
    """The requested resourceVersion is older than the compacted history."""


def find_resource(kind: str) -> Resource:
    """Accept a Kind ("Pod") or plural ("pods"), case-insensitively, for test convenience."""
    for res in RESOURCES:
        if kind.lower() in (res.kind.lower(), res.plural):
            return res
    raise KeyError(f"unsupported kind {kind!r}")


def status(code: int, reason: str, message: str) -> Obj:
    """A metav1.Status, the body the real server sends with every error."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _copy(obj: Obj) -> Obj:
    return json.loads(json.dumps(obj))  # type: ignore[no-any-return]


def _sort_key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def _event(type_: str, obj: Obj) -> Obj:
    return {"type": type_, "object": obj}


class Store:
    """Thread-safe object state, event history and watch fan-out, independent of HTTP."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events: list[Obj] = []  # Events the controller created (POST), in order
        self.rv = 1
        self.compacted = 0
        self.objects: dict[Resource, dict[Key, Obj]] = {res: {} for res in RESOURCES}
        self.history: list[Event] = []
        self.watches: set[_Watch] = set()
        self.closed = False
        self.drop_gen = 0
        self.drop_clean: list[bool] = []  # how each drop ends a watch, by generation
        self.abrupt_cuts = 0  # watches a drop_watches() really cut (truncated body)
        self.bookmark_gen = 0
        self.stall_until = 0.0

    def _record(self, type_: str, res: Resource, obj: Obj, prev: Obj | None) -> None:
        """Append to history and hand the event to every matching open watch (lock held)."""
        self.history.append(Event(self.rv, type_, res, obj, prev))
        for w in self.watches:
            if w.resource == res and w.namespace in (None, obj["metadata"].get("namespace")):
                w.pending.append(_event(type_, obj))
        self.cond.notify_all()

    def apply(self, obj: Obj) -> Obj:
        """Create or replace (ADDED / MODIFIED); returns the stored object with metadata."""
        res = find_resource(obj["kind"])
        new = _copy(obj)
        meta = new.setdefault("metadata", {})
        if res.namespaced:
            ns = meta.setdefault("namespace", "default")
        else:
            ns = ""
            meta.pop("namespace", None)
        key = (ns, meta["name"])
        with self.cond:
            prev = self.objects[res].get(key)
            self.rv += 1
            old_meta = prev["metadata"] if prev else {}
            meta["uid"] = old_meta.get("uid", str(uuid.uuid4()))
            meta["creationTimestamp"] = old_meta.get("creationTimestamp", _now())
            meta["resourceVersion"] = str(self.rv)
            new["kind"], new["apiVersion"] = res.kind, res.group_version
            self.objects[res][key] = new
            self._record("MODIFIED" if prev else "ADDED", res, new, prev)
        return _copy(new)

    def delete(self, kind: str, namespace: str | None, name: str) -> Obj:
        """Remove an object (DELETED); raises KeyError if it does not exist."""
        res = find_resource(kind)
        key = (namespace or "", name) if res.namespaced else ("", name)
        with self.cond:
            prev = self.objects[res].pop(key)
            self.rv += 1
            gone = _copy(prev)  # like etcd3, the DELETED object carries the deletion's rv
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._record("DELETED", res, gone, prev)
        return _copy(gone)

    def compact(self) -> int:
        """Forget history; watches/continues from an older resourceVersion get 410."""
        with self.cond:
            self.compacted = self.rv
            self.history.clear()
            return self.rv

    def snapshot(self, res: Resource, ns: str | None, at_rv: int | None) -> tuple[list[Obj], int]:
        """Objects sorted by key at `at_rv` (None = now), undoing newer history if needed."""
        with self.cond:
            at = self.rv if at_rv is None else at_rv
            if at < self.compacted:
                raise Expired(f"too old resource version: {at} ({self.compacted})")
            state = dict(self.objects[res])
            for ev in reversed(self.history):
                if ev.rv <= at:
                    break
                key = (ev.obj["metadata"].get("namespace", ""), ev.obj["metadata"]["name"])
                if ev.resource == res and ev.prev is None:
                    del state[key]  # undo an ADDED
                elif ev.resource == res and ev.prev is not None:
                    state[key] = ev.prev  # undo a MODIFIED or DELETED
        items = [o for (ons, _), o in state.items() if ns is None or ons == ns]
        return [_copy(o) for o in sorted(items, key=_sort_key)], at

    def open_watch(self, w: _Watch, since: int | None) -> None:
        """Queue the replay (history after `since`, or synthetic ADDEDs) and start fan-out."""
        with self.cond:
            if since is not None and since < self.compacted:
                raise Expired(f"too old resource version: {since} ({self.compacted})")
            w.drop_gen, w.bookmark_gen = self.drop_gen, self.bookmark_gen
            if since is None:
                objs = [o for (ns, _), o in self.objects[w.resource].items()
                        if w.namespace in (None, ns)]
                w.pending = [_event("ADDED", o) for o in sorted(objs, key=_sort_key)]
            else:
                w.pending = [_event(e.type, e.obj) for e in self.history if e.rv > since
                             and e.resource == w.resource
                             and w.namespace in (None, e.obj["metadata"].get("namespace"))]
            self.watches.add(w)
            self.cond.notify_all()

    def close_watch(self, w: _Watch) -> None:
        with self.cond:
            self.watches.discard(w)
            self.cond.notify_all()

    def next_batch(self, w: _Watch, alive: Callable[[], bool]) -> tuple[list[Obj], str | None]:
        """Block until there is something to send; returns (events, end) with end one of
        None (keep streaming), "clean" (terminate the chunked body) or "abrupt" (cut it)."""
        with self.cond:
            while True:
                if self.closed or w.drop_gen != self.drop_gen:
                    # the first drop since this watch opened decides, even if another
                    # followed before this thread woke up (a busy machine)
                    first_clean = w.drop_gen < self.drop_gen and self.drop_clean[w.drop_gen]
                    if first_clean and not self.closed:
                        return [], "clean"
                    self.abrupt_cuts += not self.closed
                    return [], "abrupt"
                now = time.monotonic()
                if now >= self.stall_until:
                    if w.deadline is not None and now >= w.deadline:
                        return [], "clean"
                    batch = self._take(w)
                    if batch:
                        return batch, None
                self.cond.wait(self._wait_time(w, now))
                if not alive():
                    return [], "abrupt"

    def _take(self, w: _Watch) -> list[Obj]:
        batch, w.pending = w.pending, []
        if w.bookmarks and w.bookmark_gen != self.bookmark_gen:
            w.bookmark_gen = self.bookmark_gen
            mark = {"kind": w.resource.kind, "apiVersion": w.resource.group_version,
                    "metadata": {"resourceVersion": str(self.rv)}}
            batch.append(_event("BOOKMARK", mark))
        return batch

    def _wait_time(self, w: _Watch, now: float) -> float:
        limits = [LIVENESS_PERIOD]
        if self.stall_until > now:
            limits.append(self.stall_until - now)
        elif w.deadline is not None:
            limits.append(w.deadline - now)
        return max(0.0, min(limits))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _encode_continue(rv: int, last_key: str) -> str:
    token = {"v": "meta.k8s.io/v1", "rv": rv, "start": last_key + "\x00"}
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode()


def _decode_continue(token: str) -> tuple[int, str]:
    """Raises ValueError for anything this server did not issue."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), str(data["start"])
    except (binascii.Error, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from exc


def _discovery(path: str, served: tuple[Resource, ...] = RESOURCES) -> Obj | None:
    """The minimal discovery documents a client may fetch; None for unknown paths."""
    groups = sorted({r.group_version for r in served if r.group_version != "v1"})
    names = sorted({gv.split("/")[0] for gv in groups})

    def group(name: str) -> Obj:
        versions = [{"groupVersion": gv, "version": gv.split("/")[1]} for gv in groups if gv.startswith(f"{name}/")]
        return {"name": name, "versions": versions, "preferredVersion": versions[-1]}

    def resources(gv: str) -> Obj:
        res = [{"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["get", "list", "watch"]}
               for r in served if r.group_version == gv]
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                "resources": res}

    docs: dict[str, Obj] = {
        "/version": {"major": "1", "minor": "30", "gitVersion": "v1.30.0-fakekube",
                     "gitCommit": "0" * 40, "gitTreeState": "clean",
                     "buildDate": "2024-04-17T00:00:00Z", "goVersion": "go1.22.2",
                     "compiler": "gc", "platform": "linux/amd64"},
        "/api": {"kind": "APIVersions", "versions": ["v1"],
                 "serverAddressByClientCIDRs": []},
        "/apis": {"kind": "APIGroupList", "apiVersion": "v1",
                  "groups": [group(name) for name in names]},
        "/api/v1": resources("v1"),
    }
    for name in names:
        docs[f"/apis/{name}"] = {"kind": "APIGroup", "apiVersion": "v1", **group(name)}
    for gv in groups:
        docs[f"/apis/{gv}"] = resources(gv)
    return docs.get(path)


@dataclass(frozen=True)
class Route:
    verb: str  # Kubernetes verb: "list", "watch" or "get"
    resource: Resource
    namespace: str | None
    name: str | None


def route(path: str, query: dict[str, str], served: tuple[Resource, ...] = RESOURCES) -> Route | None:
    """Map a URL onto (verb, resource, namespace, name) the way the real REST layout does."""
    for res in served:
        if not path.startswith(res.prefix + "/"):
            continue
        parts = path[len(res.prefix) + 1:].split("/")
        ns, rest = None, parts
        if len(parts) >= 3 and parts[0] == "namespaces" and res.namespaced:
            ns, rest = parts[1], parts[2:]
        if not rest or rest[0] != res.plural or len(rest) > 2:
            continue
        if len(rest) == 2:
            return Route("get", res, ns, rest[1]) if (ns or not res.namespaced) else None
        watch = query.get("watch", "").lower() in ("true", "1")
        return Route("watch" if watch else "list", res, ns, None)
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeKube

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Client hang-ups are normal for watches; anything else is kept for assertions."""
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, (ConnectionError, TimeoutError)):
            self.fake.errors.append(exc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; counters and request_log() replace it."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"  # the client asks for "/version/"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        fake = self.server.fake
        doc = _discovery(path, fake.served)
        rt = route(path, query, fake.served)
        fake._count(rt.verb if rt else "get", path, query)
        if doc is not None:
            self._send_json(200, doc)
        elif rt is None:
            self._send_json(404, status(404, "NotFound", "the server could not find the "
                                                         "requested resource"))
        elif (code := fake._take_failure(rt.verb)) is not None:
            self._send_json(code, status(code, "InternalError", "injected failure"))
        elif rt.verb == "get":
            self._serve_get(rt)
        elif rt.verb == "list":
            self._serve_list(rt, query)
        else:
            self._serve_watch(rt, query)

    def _reject(self) -> None:
        self._send_json(405, status(405, "MethodNotAllowed", "fakekube is read-only over HTTP"))

    def do_POST(self) -> None:
        """Only Events can be created (the controller reports invalid policies with them)."""
        path = urlsplit(self.path).path.rstrip("/")
        parts = path.split("/")
        if len(parts) == 6 and parts[1:4] == ["api", "v1", "namespaces"] and parts[5] == "events":
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            fake = self.server.fake
            metadata = body.setdefault("metadata", {})
            with fake.cond:
                if any(e["metadata"]["name"] == metadata.get("name") and e["metadata"].get("namespace") == parts[4]
                       for e in fake.events):
                    self._send_json(409, status(409, "AlreadyExists", f'events "{metadata["name"]}" already exists'))
                    return
                fake.rv += 1
                if not metadata.get("name"):
                    metadata["name"] = f"{metadata.get('generateName', 'ev.')}{fake.rv}"
                metadata["namespace"] = parts[4]
                metadata["resourceVersion"] = str(fake.rv)
                fake.events.append(body)
            self._send_json(201, body)
        else:
            self._reject()

    do_PUT = do_PATCH = do_DELETE = _reject

    def _send_json(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve_get(self, rt: Route) -> None:
        key = (rt.namespace or "", rt.name or "")
        with self.server.fake.cond:
            obj = self.server.fake.objects[rt.resource].get(key)
            obj = _copy(obj) if obj else None
        if obj is None:
            msg = f'{rt.resource.plural} "{rt.name}" not found'
            self._send_json(404, status(404, "NotFound", msg))
        else:
            self._send_json(200, obj)

    def _serve_list(self, rt: Route, query: dict[str, str]) -> None:
        at_rv, start = None, ""
        try:
            if query.get("continue"):
                at_rv, start = _decode_continue(query["continue"])
            limit = int(query.get("limit") or 0)
            items, rv = self.server.fake.snapshot(rt.resource, rt.namespace, at_rv)
        except ValueError as exc:
            self._send_json(400, status(400, "BadRequest", f"invalid parameter: {exc}"))
            return
        except Expired as exc:
            self._send_json(410, status(410, "Expired", f"continue token expired: {exc}"))
            return
        items = [o for o in items if _sort_key(o) >= start]
        meta: Obj = {"resourceVersion": str(rv)}
        if 0 < limit < len(items):
            meta["continue"] = _encode_continue(rv, _sort_key(items[limit - 1]))
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        for obj in items:  # the real server omits kind/apiVersion on list items
            obj.pop("kind", None)
            obj.pop("apiVersion", None)
        kind = rt.resource.kind + "List"
        self._send_json(200, {"kind": kind, "apiVersion": rt.resource.group_version,
                              "metadata": meta, "items": items})

    def _serve_watch(self, rt: Route, query: dict[str, str]) -> None:
        rv_param = query.get("resourceVersion", "")
        timeout = query.get("timeoutSeconds")
        try:
            since = int(rv_param) if rv_param not in ("", "0") else None
            deadline = time.monotonic() + float(timeout) if timeout else None
        except ValueError as exc:
            self._send_json(400, status(400, "BadRequest", f"invalid parameter: {exc}"))
            return
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        w = _Watch(rt.resource, rt.namespace, bookmarks, deadline)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self.server.fake.open_watch(w, since)
            self._pump(w)
        except Expired as exc:  # like the real server: HTTP 200, one ERROR event, clean end
            self._chunk(json.dumps(_event("ERROR", status(410, "Expired", str(exc)))) + "\n")
            self._chunk("")
        except OSError:
            self.close_connection = True  # client went away mid-write
        finally:
            self.server.fake.close_watch(w)

    def _pump(self, w: _Watch) -> None:
        while True:
            batch, end = self.server.fake.next_batch(w, self._client_alive)
            if batch:
                self._chunk("".join(json.dumps(ev) + "\n" for ev in batch))
            if end == "clean":
                self._chunk("")
                return
            if end == "abrupt":  # no terminating chunk: the client sees a truncated body
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _client_alive(self) -> bool:
        """A watch client never sends while streaming, so readable-with-EOF means it left."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return not readable or self.connection.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False


class FakeKube(Store):
    """The fake API server: a Store (state and mutators) served over HTTP in the background."""

    def __init__(self, crds: bool = True) -> None:
        """`crds` False: a cluster without the admin-policy CRDs (their paths are 404)."""
        super().__init__()
        self.served: tuple[Resource, ...] = RESOURCES if crds else CORE_RESOURCES
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._log: list[RequestRecord] = []
        self._failures: list[tuple[int, bool]] = []  # (status, applies to watches too)
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeKube:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fakekube",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self, join_timeout: float = 5.0) -> None:
        """Cut every connection and wait for all handler threads, so tests leak nothing."""
        if self._server is None:
            return
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self._server.shutdown()
        with self._lock:
            conns = dict(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        deadline = time.monotonic() + join_timeout
        for thread in [*conns.values(), self._thread]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        self._server = None

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeKube not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def client_configuration(self) -> kubernetes.client.Configuration:
        return kubernetes.client.Configuration(host=self.url)

    def write_kubeconfig(self, path: str | Path) -> Path:
        """JSON is valid YAML, so no YAML writer is needed."""
        doc = {"apiVersion": "v1", "kind": "Config", "preferences": {},
               "clusters": [{"name": "fakekube", "cluster": {"server": self.url}}],
               "users": [{"name": "fakekube", "user": {}}],
               "contexts": [{"name": "fakekube",
                             "context": {"cluster": "fakekube", "user": "fakekube"}}],
               "current-context": "fakekube"}
        out = Path(path)
        out.write_text(json.dumps(doc, indent=2))
        return out

    # -- fault injection and observation -----------------------------------------------
    @property
    def resource_version(self) -> str:
        with self.cond:
            return str(self.rv)

    def drop_watches(self, *, clean: bool = False) -> None:
        """End open watches: abruptly (truncated chunked body) or cleanly (final chunk, as
        the apiserver does when its own request timeout fires)."""
        with self.cond:
            self.drop_gen += 1
            self.drop_clean.append(clean)
            self.cond.notify_all()

    def stall_watches(self, seconds: float) -> None:
        """Withhold every watch byte (events, bookmarks, stream ends) for `seconds`."""
        with self.cond:
            self.stall_until = time.monotonic() + seconds
            self.cond.notify_all()

    def send_bookmarks(self) -> None:
        with self.cond:
            self.bookmark_gen += 1
            self.cond.notify_all()

    def fail_next_lists(self, count: int, status_code: int = 500, *,
                        include_watches: bool = False) -> None:
        """The next `count` list requests (and watches, if asked) answer `status_code`."""
        with self._lock:
            self._failures.extend([(status_code, include_watches)] * count)

    def open_watches(self) -> int:
        with self.cond:
            return len(self.watches)

    def wait_for_watches(self, count: int, timeout: float = 5.0) -> bool:
        """Tests use this to know a client's watch is registered before mutating."""
        with self.cond:
            return self.cond.wait_for(lambda: len(self.watches) >= count, timeout)

    # -- request accounting ------------------------------------------------------------------
    def request_count(self, verb: str, path: str) -> int:
        with self._lock:
            return self._counts[(verb, path)]

    def request_log(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def _count(self, verb: str, path: str, query: dict[str, str]) -> None:
        with self._lock:
            self._counts[(verb, path)] += 1
            self._log.append(RequestRecord(verb, path, dict(query)))

    def _take_failure(self, verb: str) -> int | None:
        with self._lock:
            if self._failures and (verb == "list" or (verb == "watch" and
                                                      self._failures[0][1])):
                return self._failures.pop(0)[0]
            return None

    def _track(self, sock: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns[sock] = threading.current_thread()
            else:
                self._conns.pop(sock, None)
