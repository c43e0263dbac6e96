"""Kubernetes Events on invalid NetworkPolicies and admin policies, where `kubectl describe` shows them.

The controller skips an invalid policy version and keeps enforcing the last valid one
(store.py); the log says so, but the user looks at the object. So each invalid version
gets one Warning Event (reason ``InvalidPolicy``) naming every field path and reason.
Posted from a queue by one thread, so a slow API server never stalls a watch; failures are
logged and not retried forever. One Event per invalid version in the whole cluster: its
name is derived from the policy's uid and resourceVersion, so the first controller to post
it creates it, and every other node, or a restarted controller, gets AlreadyExists (409)
and is done (with generated names, a 100-node cluster showed 100 copies in `kubectl
describe`, and each restart added one more).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, cast

from sdn_netpol.model.cluster_objects import CLUSTER_KINDS
from sdn_netpol.model.errors import ValidationError
from sdn_netpol.model.parse import API_VERSIONS

LOG = logging.getLogger(__name__)
REASON = "InvalidPolicy"
COMPONENT = "sdn-netpol"
REMEMBERED = 4096  # (uid, resourceVersion) pairs already reported
ATTEMPTS = 3
NAME_LIMIT = 253  # an Event's name is a DNS subdomain


def event_body(policy: Mapping[str, Any], errors: Iterable[ValidationError], node: str, now: str) -> dict[str, Any]:
    """A core/v1 Event about `policy` (its raw manifest as the API server gave it). A
    cluster-scoped admin policy's Event lives in `default`, as kubectl puts those of Nodes."""
    metadata = policy.get("metadata") or {}
    kind = str(policy.get("kind") or "NetworkPolicy")
    cluster = kind in CLUSTER_KINDS
    namespace, name = "default" if cluster else metadata.get("namespace", "default"), metadata.get("name", "")
    message = "; ".join(f"{e.path}: {e.message}" for e in errors) or "invalid"
    involved = {"apiVersion": policy.get("apiVersion") or API_VERSIONS.get(kind, "networking.k8s.io/v1"),
                "kind": kind, "namespace": namespace, "name": name, "uid": metadata.get("uid"),
                "resourceVersion": metadata.get("resourceVersion")}
    if cluster:
        del involved["namespace"]
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": event_name(kind, name, metadata.get("uid"), metadata.get("resourceVersion")),
                     "namespace": namespace},
        "involvedObject": involved,
        "reason": REASON, "type": "Warning",
        "message": f"not enforced (the last valid version stays): {message}"[:1024],
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": COMPONENT, "reportingInstance": node,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }


def event_name(kind: str, name: str, uid: object, resource_version: object) -> str:
    """The same for every node and restart that reports one version of one policy."""
    digest = hashlib.blake2b(f"{kind}/{name}/{uid}/{resource_version}".encode(), digest_size=8).hexdigest()
    return f"{name[:NAME_LIMIT - len(digest) - 1]}.{digest}"


class EventRecorder:
    def __init__(self, api: Any, node: str) -> None:
        from kubernetes import client  # slow to import: only with --source kube

        self.core = client.CoreV1Api(api)
        self.node = node
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1000)
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="events", daemon=True).start()

    def invalid_policy(self, policy: Mapping[str, Any], errors: Iterable[ValidationError]) -> None:
        metadata = policy.get("metadata") or {}
        key = (str(metadata.get("uid") or metadata.get("name")), str(metadata.get("resourceVersion")))
        with self._lock:
            if key in self._seen:
                return
            self._seen[key] = None
            while len(self._seen) > REMEMBERED:
                self._seen.popitem(last=False)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            self._queue.put_nowait(event_body(policy, errors, self.node, now))
        except queue.Full:
            LOG.warning("event queue full: no Event for invalid policy %s", key)

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    # the client serialises a plain dict as it is (no CoreV1Event model needed)
                    self.core.create_namespaced_event(body["metadata"]["namespace"], cast(Any, body))
                    break
                except Exception as exc:  # ApiException, connection errors: log, try again, give up
                    if getattr(exc, "status", None) == 409:  # another node, or our last life, posted it
                        LOG.debug("Event %s exists already", body["metadata"]["name"])
                        break
                    if attempt == ATTEMPTS:
                        LOG.warning("Event for invalid policy %s/%s not posted: %s", body["metadata"]["namespace"],
                                    body["involvedObject"]["name"], exc)
