"""The shared manifests folder: what the lab's "API server" holds, one file per object.

Every node's controller reads this folder (`--source dir:`). One object per file makes an
update or a delete a single atomic rename or unlink; the lab writes what a kubelet and a
scheduler would add (Node objects with their InternalIP, `spec.nodeName`, `status.podIP`).

Files are named `*.yaml` and hold the object as indented JSON (which is YAML) whenever JSON
holds it exactly, else YAML: every controller decodes JSON in C, where pure-Python YAML cost
each controller ~1 ms per object (1,000 policies applied at once: seconds on every node).
A write that would not change a file's bytes leaves the file alone.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sdn_netpol.inputs.manifests import ManifestError, read_documents, read_paths
from sdn_netpol.model.cluster_objects import CLUSTER_KINDS
from sdn_netpol.model.errors import one_line
from sdn_netpol.model.parse import API_VERSIONS, Document, ParseResult, flatten, parse_documents

NAMESPACED = ("Pod", "NetworkPolicy")
KNOWN = ("Namespace", "Pod", "NetworkPolicy", *CLUSTER_KINDS)  # cluster policies are cluster-scoped


class LabError(Exception):
    """A lab command cannot go on; the message says what and why."""


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    namespace: str  # "" for cluster-scoped objects
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def filename(self) -> str:
        middle = f"{self.namespace}.{self.name}" if self.namespace else self.name
        return f"{self.kind.lower()}-{middle}.yaml"

    def __str__(self) -> str:
        return f"{self.kind} {self.key}"


def ref_of(body: dict[str, Any]) -> ObjectRef:
    meta = body.get("metadata") or {}
    kind = str(body.get("kind", ""))
    namespace = str(meta.get("namespace") or "default") if kind in NAMESPACED else ""
    return ObjectRef(kind, namespace, str(meta.get("name", "")))


def read_objects(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The objects in files/folders, validated as the API server would (all or nothing).

    Kinds other than Namespace, Pod, NetworkPolicy and the admin-policy kinds are refused: the lab owns its nodes.
    So are those kinds in another API (a Calico NetworkPolicy), which the model skips.
    """
    try:
        documents = read_paths(paths)
    except ManifestError as exc:
        raise LabError(str(exc)) from exc
    bodies = [item for doc in documents for _, item in flatten(doc.source, doc.body) if item is not None]
    result = parse_documents([Document(f"object {i + 1}", b) for i, b in enumerate(bodies)])
    if result.errors:
        raise LabError("invalid objects, nothing changed:\n  " + "\n  ".join(str(e) for e in result.errors))
    objects = []
    for i, body in enumerate(bodies):
        if not isinstance(body, dict) or body.get("kind") not in KNOWN:
            kind = body.get("kind") if isinstance(body, dict) else type(body).__name__
            raise LabError(one_line(f"object {i + 1}: kind {kind!r} cannot be applied to the lab "
                                    "(Namespace, Pod, NetworkPolicy, ClusterNetworkPolicy, AdminNetworkPolicy, "
                                    "BaselineAdminNetworkPolicy only)", 1000))
        api_version, expected = body.get("apiVersion"), API_VERSIONS[body["kind"]]
        if api_version is not None and api_version != expected:
            raise LabError(one_line(f"object {i + 1}: {api_version!r} {body['kind']} cannot be applied to the lab "
                                    f"(only {expected} {body['kind']})", 1000))
        body = copy.deepcopy(body)
        ref = ref_of(body)
        body.setdefault("metadata", {})
        if ref.namespace:
            body["metadata"]["namespace"] = ref.namespace
        objects.append(body)
    return objects


class Store:
    """The folder; writes are atomic (temporary name without a manifest suffix + rename)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._made = False  # the folder exists (made or seen by this store)

    def write(self, body: dict[str, Any]) -> bool:
        """Write the object's file; True if it held an object before (`get` was not None)."""
        ref = ref_of(body)
        target = self.folder / ref.filename
        data = encode(body).encode()
        try:
            old = target.read_bytes()
        except FileNotFoundError:
            old = None
            if not self._made:
                self.folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            old = b""
        self._made = True
        if old == data:
            return True  # same bytes (an object): same folder version, nothing for a controller to notice
        tmp = self.folder / f".{ref.filename}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return old is not None and isinstance(_decoded(old), dict)

    def remove(self, ref: ObjectRef) -> bool:
        try:
            (self.folder / ref.filename).unlink()
        except FileNotFoundError:
            return False
        return True

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        return self.get_file(self.folder / ref.filename)

    def refs(self, kind: str | None = None) -> list[ObjectRef]:
        found = []
        for file in sorted(self.folder.glob("*.yaml")):
            body = self.get_file(file)
            if body is not None and (kind is None or body.get("kind") == kind):
                found.append(ref_of(body))
        return found

    @staticmethod
    def get_file(file: Path) -> dict[str, Any] | None:
        try:
            body = _decoded(file.read_bytes())
        except OSError:
            return None
        return body if isinstance(body, dict) else None

    def parse(self) -> ParseResult:
        """The cluster as every controller sees it (Node objects are skipped by the model)."""
        return parse_documents([d for f in sorted(self.folder.glob("*.yaml")) for d in read_documents(f)])


def encode(body: dict[str, Any]) -> str:
    """A file's text: indented JSON when every YAML reader reads it back as exactly `body`
    (plain strings, integers, booleans, nulls, lists and string-keyed maps; no floats, whose
    JSON forms YAML 1.1 reads differently, no characters beyond the BMP, which JSON escapes
    as surrogate pairs), else YAML as written before."""
    try:
        plain = _plain(body)
    except RecursionError:
        plain = False
    return json.dumps(body, indent=1) + "\n" if plain else yaml.safe_dump(body, sort_keys=False)


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return not value or max(value) <= "\uffff"
    if value is None or kind is int or kind is bool:
        return True
    if kind is dict:
        return all(type(k) is str and _plain(k) and _plain(v) for k, v in value.items())
    if kind is list:
        return all(_plain(v) for v in value)
    return False  # floats, dates, byte strings, sets, tuples, ...


def decode(text: str) -> Any:
    """One file's object, as the controllers' folder source reads it (JSON text as JSON)."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return yaml.safe_load(text)


def _decoded(data: bytes) -> Any:
    """`decode` of a file's bytes; None if they are not an object's text."""
    try:
        return decode(data.decode())
    except (UnicodeDecodeError, yaml.YAMLError):
        return None


def node_manifest(name: str, address: str, pod_cidr: str | Sequence[str]) -> dict[str, Any]:
    """What the controllers learn tunnel endpoints from (`status.addresses` InternalIP), and
    the routes to the node's pod CIDRs (one per family, as a dual-stack Node has)."""
    cidrs = [pod_cidr] if isinstance(pod_cidr, str) else list(pod_cidr)
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
        "status": {"addresses": [{"type": "InternalIP", "address": address},
                                 {"type": "Hostname", "address": name}]},
    }


def with_pod_status(body: dict[str, Any], node: str, ip: str | Sequence[str]) -> dict[str, Any]:
    """The pod as the scheduler and kubelet leave it: bound to a node, Running, with its IP
    (its IPs: one per family, the first one also `podIP`)."""
    ips = [ip] if isinstance(ip, str) else list(ip)
    out = copy.deepcopy(body)
    out.setdefault("spec", {})["nodeName"] = node
    out["status"] = {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": a} for a in ips]}
    return out
