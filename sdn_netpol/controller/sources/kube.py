"""`--source kube`: list + watch of Namespaces, Pods, NetworkPolicies, Nodes and the admin
policies (ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy).

One thread per resource, each the classic reflector loop:
    list (paged, resourceVersion R) → replace that kind in the store
    watch from R (bookmarks on, server timeout T, client read timeout S) → apply events
    stream ended cleanly (T elapsed)      → watch again from the last resourceVersion seen
    no byte for S seconds (stalled)       → watch again from the last resourceVersion seen
    connection cut (dropped)              → watch again from there, after a short back-off
    410 Gone (history compacted)          → list again, then watch
    other API errors (500s), refused      → retry the same step with exponential back-off
    anything else (a bug)                 → logged with its traceback, then as other errors
The official client does the HTTP (auth, TLS, kubeconfig or in-cluster config). Bodies are
read as raw JSON (`_preload_content=False`): the model parser wants dicts, and the
client's typed models would refuse some objects an API server accepts (and cost ~1 ms per
pod to build), which would wedge a watch on one event. Watch lines are split with the
client's own `iter_resp_lines`; an ERROR event becomes an ApiException with its code.

The state's source version is the lowest resourceVersion the streams have reached
(bookmarks advance idle ones): every change up to it is in the state.

The admin policies are CRDs, which a cluster may not have: a 404 means "not installed", so
that kind has no objects (those it had are gone with the CRD) and does not hold back the
sync; it is looked for again every `crd_recheck` seconds. A 403 (a role without them) is a
problem in /status, but the objects already listed stay enforced: a lost permission must
never open what an admin policy denies.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from sdn_netpol.controller.config import KubeOptions
from sdn_netpol.controller.metrics import Metrics
from sdn_netpol.controller.sources.events import EventRecorder
from sdn_netpol.controller.sources.objects import convert, raw_key
from sdn_netpol.controller.store import Store, StoredObject
from sdn_netpol.model.cluster_objects import CLUSTER_API_VERSIONS, CLUSTER_KINDS, GROUP
from sdn_netpol.model.errors import ValidationError
from sdn_netpol.model.parse import ObjectKey

LOG = logging.getLogger(__name__)
PAGE = 500
CONNECT_TIMEOUT = 10.0
LIST_READ_TIMEOUT = 60.0
GONE = 410
NOT_FOUND = 404
FORBIDDEN = 403


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    lister: Callable[[client.ApiClient], Callable[..., Any]]
    optional: bool = False  # a CRD: may not be installed (module docstring)


def _custom(kind: str, plural: str) -> Resource:
    version = CLUSTER_API_VERSIONS[kind].split("/")[1]
    return Resource(plural, kind, lambda c: functools.partial(
        client.CustomObjectsApi(c).list_cluster_custom_object, GROUP, version, plural), optional=True)


RESOURCES = (
    Resource("namespaces", "Namespace", lambda c: client.CoreV1Api(c).list_namespace),
    Resource("pods", "Pod", lambda c: client.CoreV1Api(c).list_pod_for_all_namespaces),
    Resource("networkpolicies", "NetworkPolicy",
             lambda c: client.NetworkingV1Api(c).list_network_policy_for_all_namespaces),
    Resource("nodes", "Node", lambda c: client.CoreV1Api(c).list_node),
    _custom("ClusterNetworkPolicy", "clusternetworkpolicies"),
    _custom("AdminNetworkPolicy", "adminnetworkpolicies"),
    _custom("BaselineAdminNetworkPolicy", "baselineadminnetworkpolicies"),
)


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """In-cluster config when running in a pod (and no kubeconfig given), else kubeconfig."""
    configuration = client.Configuration()
    try:
        if kubeconfig is not None:
            raise config.ConfigException("kubeconfig given")
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration)


def _check(resp: Any) -> None:
    if not 200 <= resp.status <= 299:
        body = resp.data.decode(errors="replace")
        resp.release_conn()
        raise ApiException(status=resp.status, reason=resp.reason, body=body)


def explain(exc: ApiException) -> str:
    """The HTTP reason and the server's own message from the Status body: for a 403 it says
    which verb on which resource was refused to which user ("Forbidden" alone does not)."""
    text = str(exc.reason or "").strip()
    body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
    if not body:
        return text
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    message = status.get("message") if isinstance(status, dict) else body
    message = " ".join(str(message or "").split())[:500]
    return f"{text}: {message}" if message and message not in text else text


def _rv_key(version: str) -> tuple[int, str]:
    """resourceVersions are opaque, but etcd's are integers: compare them as such."""
    return (int(version), "") if version.isdigit() else (-1, version)


class Versions:
    """The last resourceVersion of each stream; the state's version is the lowest."""

    def __init__(self, kinds: list[str]) -> None:
        self._rv: dict[str, str | None] = dict.fromkeys(kinds)
        self._absent: set[str] = set()  # kinds whose CRD is not installed: no stream to wait for
        self._lock = threading.Lock()

    def update(self, kind: str, rv: str) -> str | None:
        with self._lock:
            self._rv[kind] = rv
            self._absent.discard(kind)
            return self._lowest()

    def absent(self, kind: str) -> str | None:
        with self._lock:
            self._rv[kind] = None
            self._absent.add(kind)
            return self._lowest()

    def _lowest(self) -> str | None:
        known = [v for k, v in self._rv.items() if k not in self._absent and v is not None]
        if len(known) < len(self._rv) - len(self._absent) or not known:
            return None
        return min(known, key=_rv_key)

    def all_listed(self) -> bool:
        with self._lock:
            return all(v is not None or k in self._absent for k, v in self._rv.items())


class Backoff:
    def __init__(self, maximum: float, first: float = 0.1) -> None:
        self.first, self.maximum, self.delay = first, maximum, 0.0

    def next(self) -> float:
        self.delay = min(max(self.delay * 2, self.first), self.maximum)
        return self.delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.delay = 0.0


class Reflector:
    """List + watch of one resource into the store (the loop in the module docstring)."""

    def __init__(self, resource: Resource, api: client.ApiClient, source: KubeSource) -> None:
        self.resource = resource
        self.list_fn = resource.lister(api)
        self.source = source
        self.options = source.options
        self.backoff = Backoff(self.options.backoff_max)

    def run(self) -> None:
        rv: str | None = None
        while not self.source.stopped.is_set():
            try:
                rv = self.relist() if rv is None else rv
                rv = self.watch(rv)
                self.backoff.reset()
            except ApiException as exc:
                if exc.status == GONE:
                    self.restart("expired", f"410 Gone: {explain(exc)}")
                    rv = None
                    continue
                if self.resource.optional and exc.status in (NOT_FOUND, FORBIDDEN):
                    self.unavailable(exc)
                    rv = None
                    continue
                self.restart(f"http_{exc.status}", f"API error {exc.status}: {explain(exc)}", pause=True)
            except urllib3.exceptions.ReadTimeoutError:
                self.restart("stalled", f"no data for {self.options.read_timeout:g} s")
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                self.restart("dropped", f"{type(exc).__name__}: {exc}", pause=True)
            except Exception as exc:  # a bug of ours: logged with its traceback, but the stream lives on
                LOG.exception("%s watch: unexpected error", self.resource.plural)
                self.restart("error", f"{type(exc).__name__}: {exc}", pause=True)

    def restart(self, reason: str, message: str, pause: bool = False) -> None:
        LOG.warning("%s watch: %s; re-opening", self.resource.plural, message)
        self.source.metrics.watch_restarts.labels(resource=self.resource.plural, reason=reason).inc()
        if pause:
            self.source.problem(self.resource.plural, message)
            self.source.stopped.wait(self.backoff.next())

    def unavailable(self, exc: ApiException) -> None:
        """An admin-policy CRD not installed (404) or not allowed (403): see the module
        docstring. Looked for again (listed) after `crd_recheck` seconds."""
        installed = exc.status != NOT_FOUND
        message = f"API error {exc.status}: {explain(exc)}"
        if installed:
            self.source.problem(self.resource.plural, message)
        else:
            self.source.problem(self.resource.plural, None)
            LOG.info("%s: not served (%s); enforcing none, looking again in %g s", self.resource.plural,
                     message, self.options.crd_recheck)
        self.source.absent(self.resource.kind, clear=not installed)
        self.source.stopped.wait(self.options.crd_recheck)

    def relist(self) -> str:
        objects: dict[ObjectKey, StoredObject] = {}
        invalid: dict[ObjectKey, tuple[ValidationError, ...]] = {}
        token: str | None = None
        while True:
            resp = self.list_fn(limit=PAGE, _continue=token, _preload_content=False,
                                _request_timeout=(CONNECT_TIMEOUT, LIST_READ_TIMEOUT))
            _check(resp)
            page = json.loads(resp.data)
            if not isinstance(page, dict):
                raise ValueError(f"a {self.resource.plural} list is not a JSON object")
            for item in page.get("items") or []:
                if isinstance(item, dict):  # anything else names no object: nothing to keep or reject
                    self._take({**item, "kind": self.resource.kind, "apiVersion": page.get("apiVersion")},
                               objects, invalid)
            token = page.get("metadata", {}).get("continue")
            if not token:
                rv = str(page["metadata"]["resourceVersion"])
                break
        self.source.replaced(self.resource.kind, objects, invalid, rv)
        self.source.problem(self.resource.plural, None)
        LOG.info("listed %d %s at resourceVersion %s", len(objects), self.resource.plural, rv)
        return rv

    def _take(self, body: dict[str, Any], objects: dict[ObjectKey, StoredObject],
              invalid: dict[ObjectKey, tuple[ValidationError, ...]]) -> None:
        result = convert(body)
        if result.key is None:
            return
        if result.obj is not None:
            objects[result.key] = result.obj
        else:
            invalid[result.key] = result.errors
            self.source.invalid(body, result.errors)

    def watch(self, rv: str) -> str:
        """Apply events until the stream ends cleanly; return the last resourceVersion."""
        resp = self.list_fn(watch=True, resource_version=rv, allow_watch_bookmarks=True,
                            timeout_seconds=int(self.options.watch_timeout), _preload_content=False,
                            _request_timeout=(CONNECT_TIMEOUT, self.options.read_timeout))
        try:
            _check(resp)
            self.source.problem(self.resource.plural, None)
            for event in self._events(resp):
                rv = self.apply(event, rv)
                self.backoff.reset()
        finally:
            resp.release_conn()
        return rv

    @staticmethod
    def _events(resp: Any) -> Iterator[dict[str, Any]]:
        for line in iter_resp_lines(resp):
            if not line.strip():
                continue
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError(f"watch event is not a JSON object: {line[:100]!r}")
            if event.get("type") == "ERROR":
                status = event.get("object")
                status = status if isinstance(status, dict) else {"message": status}
                raise ApiException(status=status.get("code"), reason=f"{status.get('reason')}: {status.get('message')}")
            yield event

    def apply(self, event: dict[str, Any], rv: str) -> str:
        """One event into the store. An object of any shape is taken as the model takes a
        manifest: stored, rejected with its errors (the last valid version stays), or, when
        it names no object (no metadata.name), skipped; it never ends the watch."""
        body = event.get("object")
        if not isinstance(body, dict):
            LOG.warning("%s watch: %s event without an object skipped", self.resource.plural, event.get("type"))
            return rv
        metadata = body.get("metadata")
        new_rv = str((metadata.get("resourceVersion") if isinstance(metadata, dict) else None) or rv)
        kind = event.get("type")
        if kind == "BOOKMARK":
            self.source.bookmark(self.resource.kind, new_rv)
        elif kind == "DELETED":
            key = raw_key({**body, "kind": self.resource.kind})
            if key is not None:
                self.source.deleted(self.resource.kind, key, new_rv)
        elif kind in ("ADDED", "MODIFIED"):
            body = {**body, "kind": self.resource.kind}
            result = convert(body)
            if result.key is not None:
                self.source.put(self.resource.kind, result.key, result.obj, result.errors, new_rv)
                if result.obj is None:
                    self.source.invalid(body, result.errors)
        return new_rv


class KubeSource:
    """One reflector per resource feeding one store; synced once every resource has been listed
    (or found not installed)."""

    def __init__(self, store: Store, report: Callable[[str | None], None], metrics: Metrics,
                 options: KubeOptions, node: str = "") -> None:
        self.store = store
        self.node = node
        self.events: EventRecorder | None = None
        self.report = report
        self.metrics = metrics
        self.options = options
        self.versions = Versions([r.kind for r in RESOURCES])
        self.stopped = threading.Event()
        self._problems: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self) -> threading.Thread:
        """Start the reflectors; the returned thread lives as long as they do."""
        api = api_client(self.options.kubeconfig)
        self.events = EventRecorder(api, self.node)
        threads = [threading.Thread(target=Reflector(r, api, self).run, name=f"watch-{r.plural}", daemon=True)
                   for r in RESOURCES]
        for thread in threads:
            thread.start()

        def supervise() -> None:
            for thread in threads:
                thread.join()

        watcher = threading.Thread(target=supervise, name="source-kube", daemon=True)
        watcher.start()
        return watcher

    def stop(self) -> None:
        self.stopped.set()

    def problem(self, resource: str, message: str | None) -> None:
        """The source's error in /status: every resource that is failing, or None."""
        with self._lock:
            if message is None:
                self._problems.pop(resource, None)
            else:
                self._problems[resource] = message
            text = "; ".join(f"{r}: {m}" for r, m in sorted(self._problems.items())) or None
        self.report(text)

    def replaced(self, kind: str, objects: dict[ObjectKey, StoredObject],
                 invalid: dict[ObjectKey, tuple[ValidationError, ...]], rv: str) -> None:
        version = self.versions.update(kind, rv)
        self._log_invalid(invalid)
        self.store.replace([kind], objects, invalid, version, synced=True if self.versions.all_listed() else None)

    def put(self, kind: str, key: ObjectKey, obj: StoredObject | None, errors: tuple[ValidationError, ...],
            rv: str) -> None:
        self._log_invalid({key: errors} if obj is None else {})
        self.store.put(key, obj, errors, self.versions.update(kind, rv))

    def invalid(self, body: dict[str, Any], errors: tuple[ValidationError, ...]) -> None:
        """An invalid NetworkPolicy or admin-policy version: an Event on the object (events.py)."""
        if self.events is not None and body.get("kind") in ("NetworkPolicy", *CLUSTER_KINDS):
            self.events.invalid_policy(body, errors)

    def absent(self, kind: str, clear: bool) -> None:
        """A CRD kind with no stream: no objects when `clear` (the CRD is not installed), else
        the ones listed before stay; the sync no longer waits for it."""
        version = self.versions.absent(kind)
        synced = True if self.versions.all_listed() else None
        if clear:
            self.store.replace([kind], {}, {}, version, synced=synced)
        elif synced:
            self.store.mark_synced()

    def deleted(self, kind: str, key: ObjectKey, rv: str) -> None:
        self.store.delete(key, self.versions.update(kind, rv))

    def bookmark(self, kind: str, rv: str) -> None:
        version = self.versions.update(kind, rv)
        if version is not None:
            self.store.set_version(version)

    @staticmethod
    def _log_invalid(invalid: dict[ObjectKey, tuple[ValidationError, ...]]) -> None:
        for errors in invalid.values():
            for error in errors:
                LOG.warning("invalid object skipped (last valid version stays): %s", error)
