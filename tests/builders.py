"""Builders shared by the policy-core tests: manifests as short dicts or YAML text → state.

Pods and namespaces are built as manifest dicts (so every test also goes through the parser),
policies are written as YAML exactly as a user would write them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from netaddr import IPAddress

from sdn_netpol.inputs.manifests import decode_documents
from sdn_netpol.model.objects import Protocol
from sdn_netpol.model.parse import Document, ParseResult, parse_documents
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.verdict import Endpoint, Verdict, decide

Part = dict[str, Any] | str

MISSING: Any = object()


def namespace(name: str, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def pod(
    ref: str,
    ip: str | Sequence[str] | None = MISSING,
    labels: dict[str, str] | None = None,
    ports: Iterable[tuple[str | None, int] | tuple[str | None, int, str]] = (),
    phase: str | None = "Running",
    host_network: bool = False,
    node: str | None = None,
) -> dict[str, Any]:
    """A Pod manifest. `ip` is one address, several (dual stack), None (no IP yet) or
    omitted (a default IPv4 derived from the name); `phase=None` omits the whole status."""
    namespace_name, _, name = ref.partition("/")
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "img", "ports": []}]}
    for entry in ports:
        port: dict[str, Any] = {"containerPort": entry[1]}
        if entry[0] is not None:
            port["name"] = entry[0]
        if len(entry) == 3:
            port["protocol"] = entry[2]
        spec["containers"][0]["ports"].append(port)
    if host_network:
        spec["hostNetwork"] = True
    if node:
        spec["nodeName"] = node
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace_name, "labels": dict(labels or {})},
        "spec": spec,
    }
    if phase is None:
        return body
    if ip is MISSING:
        ip = _default_ip(ref)
    status: dict[str, Any] = {"phase": phase}
    addresses = [ip] if isinstance(ip, str) else list(ip or [])
    if addresses:
        status["podIP"] = addresses[0]
        status["podIPs"] = [{"ip": a} for a in addresses]
    body["status"] = status
    return body


def _default_ip(ref: str) -> str:
    digest = sum(ord(c) * (i + 1) for i, c in enumerate(ref))
    return f"10.244.{digest // 250 % 250}.{digest % 250 + 1}"


def parse(*parts: Part) -> ParseResult:
    documents: list[Document] = []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            documents.extend(decode_documents(f"part{i}.yaml", part))
        else:
            documents.append(Document(f"part{i}", part))
    return parse_documents(documents)


def build(*parts: Part) -> ClusterState:
    result = parse(*parts)
    assert not result.errors, [str(e) for e in result.errors]
    return ClusterState.from_parse(result)


def endpoint(state: ClusterState, text: str) -> Endpoint:
    if "/" in text and ":" not in text and not text.replace(".", "").replace("/", "").isdigit():
        namespace_name, _, name = text.partition("/")
        found = state.pod(namespace_name, name)
        assert found is not None, f"no pod {text}"
        return Endpoint(pod=found)
    return Endpoint(ip=IPAddress(text))


def verdict(state: ClusterState, src: str, dst: str, port: int, protocol: Protocol = "TCP") -> Verdict:
    return decide(state, endpoint(state, src), endpoint(state, dst), protocol, port)


def allows(state: ClusterState, src: str, dst: str, port: int, protocol: Protocol = "TCP") -> bool:
    return verdict(state, src, dst, port, protocol).allowed


def load_yaml(text: str) -> list[Any]:
    return [d for d in yaml.safe_load_all(text) if d is not None]
