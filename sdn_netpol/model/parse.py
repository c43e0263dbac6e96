"""Manifest documents (already decoded from YAML/JSON) → validated values.

Documents are applied in order, like `kubectl apply` of each: a later object with the same
kind/namespace/name replaces an earlier one, and an invalid one is rejected (reported) while
the earlier valid version stays, as it would on an API server that refused the update.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from netaddr import AddrFormatError, IPAddress

from sdn_netpol.model.cluster_objects import CLUSTER_API_VERSIONS, CLUSTER_KINDS, ClusterKind, ClusterPolicy
from sdn_netpol.model.cluster_parse import parse_cluster_policy
from sdn_netpol.model.errors import FieldErrors, ValidationError, one_line
from sdn_netpol.model.labels import Labels, is_dns_label, is_dns_subdomain
from sdn_netpol.model.objects import (
    AUDIT_ANNOTATION,
    AUDIT_MODES,
    PROTOCOLS,
    AuditMode,
    ContainerPort,
    Namespace,
    NetworkPolicy,
    Pod,
)
from sdn_netpol.model.policy_parse import check_port_name, parse_labels, parse_network_policy

KINDS = ("Namespace", "Pod", "NetworkPolicy", *CLUSTER_KINDS)
API_VERSIONS = {"Namespace": "v1", "Pod": "v1", "NetworkPolicy": "networking.k8s.io/v1", **CLUSTER_API_VERSIONS}
Object = Namespace | Pod | NetworkPolicy | ClusterPolicy
ObjectKey = tuple[str, str, str]
NOTE_LIMIT = 1000  # a skipped document's note is one line of at most this many characters (+ the cut)


@dataclass(frozen=True)
class Document:
    """One decoded manifest and where it came from (for messages)."""

    source: str
    body: Any


@dataclass(frozen=True)
class ParseResult:
    namespaces: tuple[Namespace, ...]
    pods: tuple[Pod, ...]
    policies: tuple[NetworkPolicy, ...]
    errors: tuple[ValidationError, ...]
    skipped: tuple[str, ...]
    cluster_policies: tuple[ClusterPolicy, ...] = ()


@dataclass
class _Accumulator:
    objects: dict[ObjectKey, Object] = field(default_factory=dict)
    errors: list[ValidationError] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def parse_documents(documents: Iterable[Document]) -> ParseResult:
    acc = _Accumulator()
    for doc in documents:
        for item_source, item in flatten(doc.source, doc.body):
            _apply(acc, item_source, item)
    objects = acc.objects.values()
    return ParseResult(
        namespaces=tuple(o for o in objects if isinstance(o, Namespace)),
        pods=tuple(o for o in objects if isinstance(o, Pod)),
        policies=tuple(o for o in objects if isinstance(o, NetworkPolicy)),
        errors=tuple(acc.errors),
        skipped=tuple(acc.skipped),
        cluster_policies=tuple(o for o in objects if isinstance(o, ClusterPolicy)),
    )


def flatten(source: str, body: Any) -> Iterable[tuple[str, Any]]:
    """Unwrap `kind: List` (and *List) into their items, keeping a readable source."""
    if isinstance(body, dict) and isinstance(body.get("items"), list):
        kind = str(body.get("kind", ""))
        if kind == "List" or kind.endswith("List"):
            item_kind = kind[: -len("List")] if kind != "List" else None
            for i, item in enumerate(body["items"]):
                if item_kind and isinstance(item, dict) and "kind" not in item:
                    item = {**item, "kind": item_kind}
                yield f"{source} items[{i}]", item
            return
    yield source, body


def _apply(acc: _Accumulator, source: str, body: Any) -> None:
    if body is None:
        return
    if not isinstance(body, dict):
        acc.errors.append(ValidationError(source, "", "a manifest must be an object"))
        return
    kind = body.get("kind")
    if not kind:
        acc.errors.append(ValidationError(source, "kind", "Required value"))
        return
    if kind not in KINDS:
        acc.skipped.append(one_line(f"{source}: kind {kind!r} is not used by NetworkPolicy; skipped", NOTE_LIMIT))
        return
    api_version = body.get("apiVersion")
    if api_version is not None and api_version != API_VERSIONS[kind]:
        # e.g. Calico's crd.projectcalico.org/v1 NetworkPolicy: same kind, other semantics.
        acc.skipped.append(one_line(f"{source}: {api_version} {kind} is not {API_VERSIONS[kind]} {kind}; skipped",
                                    NOTE_LIMIT))
        return
    obj, errors = parse_object(body)
    acc.errors.extend(errors)
    if obj is not None:
        acc.objects[object_key(obj)] = obj


def object_key(obj: Object) -> ObjectKey:
    if isinstance(obj, Namespace):
        return ("Namespace", "", obj.name)
    if isinstance(obj, ClusterPolicy):  # cluster-scoped
        return (obj.kind, "", obj.name)
    kind = "Pod" if isinstance(obj, Pod) else "NetworkPolicy"
    return (kind, obj.namespace, obj.name)


def parse_object(body: Mapping[str, Any]) -> tuple[Object | None, list[ValidationError]]:
    """One manifest of a known kind → its value, or None and the reasons."""
    kind = body.get("kind")
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    name = metadata.get("name")
    namespace = metadata.get("namespace") or "default"
    label = _object_label(str(kind), str(namespace), name)
    errors = FieldErrors(label)
    if not isinstance(name, str) or not name:
        errors.add("metadata.name", "Required value")
        return None, errors.items
    if kind == "Namespace" and not is_dns_label(name):
        errors.add("metadata.name", f"{name!r}: a namespace name must be a lowercase RFC 1123 label")
    elif not is_dns_subdomain(name):
        errors.add("metadata.name", f"{name!r}: must be a lowercase RFC 1123 subdomain")
    if kind not in ("Namespace", *CLUSTER_KINDS) and not (isinstance(namespace, str) and is_dns_label(namespace)):
        errors.add("metadata.namespace", f"{namespace!r}: must be a lowercase RFC 1123 label")
    labels = parse_labels(metadata.get("labels"), "metadata.labels", errors)
    if errors or labels is None:
        return None, errors.items
    obj: Object | None
    if kind in CLUSTER_KINDS:
        obj = parse_cluster_policy(dict(body), cast(ClusterKind, kind), name, errors)
    elif kind == "Namespace":
        obj = Namespace.implied(name, labels, _audit_mode(metadata.get("annotations"), errors))
    elif kind == "Pod":
        obj = _parse_pod(dict(body), namespace, name, labels, errors)
    else:
        obj = parse_network_policy(dict(body), namespace, name, errors)
    return (obj if not errors else None), errors.items


def _audit_mode(annotations: Any, errors: FieldErrors) -> AuditMode | None:
    """`sdn-netpol.io/audit`. Any other value is an error (the object is rejected like any
    invalid one: the last valid version stays), never a silent "not audited"."""
    if not isinstance(annotations, dict) or AUDIT_ANNOTATION not in annotations:
        return None
    value = annotations[AUDIT_ANNOTATION]
    for mode in AUDIT_MODES:
        if value == mode:
            return mode
    errors.add(f'metadata.annotations["{AUDIT_ANNOTATION}"]',
               f"{value!r}: must be one of {', '.join(AUDIT_MODES)}")
    return None


def _object_label(kind: str, namespace: str, name: object) -> str:
    shown = name if isinstance(name, str) and name else "<unnamed>"
    if kind == "Namespace":
        return f"namespace {shown}"
    if kind in CLUSTER_KINDS:  # as `kubectl get` names it
        return f"{kind}/{shown}"
    return f"{'policy' if kind == 'NetworkPolicy' else 'pod'} {namespace}/{shown}"


def _parse_pod(body: dict[str, Any], namespace: str, name: str, labels: Labels, errors: FieldErrors) -> Pod | None:
    spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    status = body.get("status")
    ports = _container_ports(spec, errors)
    if status is None:
        return Pod(namespace, name, labels, (), _node(spec), bool(spec.get("hostNetwork")),
                   "Running", ports, ips_known=False)
    if not isinstance(status, dict):
        errors.add("status", "must be an object")
        return None
    ips = _pod_ips(status, errors)
    phase = status.get("phase") or ("Running" if ips else "Pending")
    return Pod(namespace, name, labels, ips, _node(spec), bool(spec.get("hostNetwork")),
               str(phase), ports, ips_known=True)


def _node(spec: dict[str, Any]) -> str | None:
    node = spec.get("nodeName")
    return str(node) if node else None


def _pod_ips(status: dict[str, Any], errors: FieldErrors) -> tuple[IPAddress, ...]:
    raw: list[tuple[str, Any]] = []
    if status.get("podIP"):
        raw.append(("status.podIP", status["podIP"]))
    pod_ips = status.get("podIPs") or []
    if not isinstance(pod_ips, list):
        errors.add("status.podIPs", "must be a list")
        pod_ips = []
    for i, entry in enumerate(pod_ips):
        value = entry.get("ip") if isinstance(entry, dict) else entry
        if all(value != seen for _, seen in raw):  # podIPs[0] repeats podIP
            raw.append((f"status.podIPs[{i}].ip", value))
    ips: list[IPAddress] = []
    for path, value in raw:
        try:
            ip = IPAddress(str(value))
        except (AddrFormatError, ValueError):
            errors.add(path, f"{value!r}: must be a valid IP address")
            continue
        if ip not in ips:
            ips.append(ip)
    return tuple(ips)


def _container_ports(spec: dict[str, Any], errors: FieldErrors) -> tuple[ContainerPort, ...]:
    ports: list[ContainerPort] = []
    containers = spec.get("containers") or []
    if not isinstance(containers, list):
        errors.add("spec.containers", "must be a list")
        return ()
    for i, container in enumerate(containers):
        entries = container.get("ports") if isinstance(container, dict) else None
        if entries is not None and not isinstance(entries, list):
            errors.add(f"spec.containers[{i}].ports", "must be a list")
            continue
        names: set[str] = set()
        for j, entry in enumerate(entries or []):
            path = f"spec.containers[{i}].ports[{j}]"
            port = _container_port(entry, path, errors)
            if port is not None and port.name is not None:
                if port.name in names:
                    errors.add(f"{path}.name", f"Duplicate value: {port.name!r}")
                names.add(port.name)
            if port is not None:
                ports.append(port)
    return tuple(ports)


def _container_port(entry: Any, path: str, errors: FieldErrors) -> ContainerPort | None:
    if not isinstance(entry, dict):
        errors.add(path, "must be an object")
        return None
    number = entry.get("containerPort")
    protocol = entry.get("protocol") or "TCP"
    name = entry.get("name")
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
        errors.add(f"{path}.containerPort", f"{number!r}: must be between 1 and 65535, inclusive")
        return None
    if protocol not in PROTOCOLS:
        errors.add(f"{path}.protocol", f'{protocol!r}: supported values: "TCP", "UDP", "SCTP"')
        return None
    if name is not None and not isinstance(name, str):
        errors.add(f"{path}.name", f"{name!r}: must be a string")
        return None
    if name and not check_port_name(name, f"{path}.name", errors):
        return None
    return ContainerPort(name or None, number, protocol)
