"""ClusterNetworkPolicy, AdminNetworkPolicy and BaselineAdminNetworkPolicy manifests → one
validated `ClusterPolicy`, checked as their CRDs' schemas and CEL rules check them.

Every constraint of the API is an error with its field path (priority range, list lengths,
exactly one field of a subject, peer, port or protocol, port ranges, CIDRs, the BANP
singleton). Peers sdn-netpol does not enforce (`nodes`, `domainNames`) are rejected, never
ignored: a Deny that silently matched nothing would open what the admin closed. Unknown
fields are errors, as for NetworkPolicy (kubectl's strict field validation).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, cast

from netaddr import IPNetwork

from sdn_netpol.model.cluster_objects import (
    BANP_NAME,
    BANP_PRIORITY,
    TIERS,
    Action,
    AdminPeer,
    AdminRule,
    ClusterKind,
    ClusterPolicy,
    PodSet,
    Tier,
)
from sdn_netpol.model.errors import FieldErrors
from sdn_netpol.model.objects import PROTOCOLS, Direction, PolicyPort, Protocol
from sdn_netpol.model.policy_parse import each_item, known_fields, parse_selector

CNP, ANP, BANP = "ClusterNetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy"
#: words each kind accepts as `action`, and what they mean
ACTIONS: dict[str, dict[str, Action]] = {
    CNP: {"Accept": "Allow", "Deny": "Deny", "Pass": "Pass"},
    ANP: {"Allow": "Allow", "Deny": "Deny", "Pass": "Pass"},
    BANP: {"Allow": "Allow", "Deny": "Deny"},
}
SPEC_FIELDS = {CNP: ("tier", "priority", "subject", "ingress", "egress"),
               ANP: ("priority", "subject", "ingress", "egress"),
               BANP: ("subject", "ingress", "egress")}
MAX_ITEMS = {CNP: 25, ANP: 100, BANP: 100}  # rules per direction, peers and ports per rule
MAX_NETWORKS = 25
MAX_RULE_NAME = 100
MAX_CIDR = 43
PRIORITY_RANGE = (0, 1000)
UNSUPPORTED_PEERS = {ANP: ("nodes", "domainNames"), CNP: ("nodes", "domainNames"), BANP: ("nodes",)}
NAMED_PORT_WITH_NETWORKS = ("networks/nodes/domainNames peer cannot be set with namedPorts since there are "
                            "no namedPorts for networks/nodes/domainNames")


def parse_cluster_policy(doc: dict[str, Any], kind: ClusterKind, name: str,
                         errors: FieldErrors) -> ClusterPolicy | None:
    spec = doc.get("spec")
    if spec is None:
        errors.add("spec", "Required value")
        return None
    if not isinstance(spec, dict):
        errors.add("spec", "must be an object")
        return None
    if kind == BANP and name != BANP_NAME:
        errors.add("metadata.name", f'{name!r}: only one baseline admin network policy with metadata.name='
                                    f'"{BANP_NAME}" can be created in the cluster')
    known_fields(spec, SPEC_FIELDS[kind], "spec", errors)
    tier = _tier(spec, errors) if kind == CNP else ("Baseline" if kind == BANP else "Admin")
    priority = BANP_PRIORITY if kind == BANP else _priority(spec, errors)
    subject = _subject(spec.get("subject"), kind, errors)
    ingress = _rules(spec, kind, "Ingress", errors)
    egress = _rules(spec, kind, "Egress", errors)
    if errors or tier is None or priority is None or subject is None or ingress is None or egress is None:
        return None
    return ClusterPolicy(kind, name, tier, priority, subject, ingress, egress)


def _tier(spec: dict[str, Any], errors: FieldErrors) -> Tier | None:
    raw = spec.get("tier")
    if raw is None:
        errors.add("spec.tier", "Required value")
    elif raw not in TIERS:
        errors.add("spec.tier", f'{raw!r}: supported values: "Admin", "Baseline"')
    else:
        return cast(Tier, raw)
    return None


def _priority(spec: dict[str, Any], errors: FieldErrors) -> int | None:
    if spec.get("priority") is None:
        errors.add("spec.priority", "Required value")
        return None
    return _integer(spec["priority"], "spec.priority", PRIORITY_RANGE, errors)


def _integer(raw: Any, path: str, bounds: tuple[int, int], errors: FieldErrors) -> int | None:
    low, high = bounds
    if isinstance(raw, bool) or not isinstance(raw, int):
        errors.add(path, f"{raw!r}: must be an integer")
    elif not low <= raw <= high:
        errors.add(path, f"{raw}: must be between {low} and {high}, inclusive")
    else:
        return raw
    return None


def _one_of(raw: Any, path: str, fields: tuple[str, ...], errors: FieldErrors) -> str | None:
    """The one field set (not null) of an object that must have exactly one of `fields`."""
    if not isinstance(raw, dict):
        errors.add(path, "Required value" if raw is None else "must be an object")
        return None
    known_fields(raw, fields, path, errors)
    present = [f for f in fields if raw.get(f) is not None]
    if len(present) == 1:
        return present[0]
    if not present and any(key not in fields for key in raw):
        return None  # its unknown field is the error already reported
    what = "no field" if not present else ", ".join(present)
    errors.add(path, f"must specify exactly one of {', '.join(fields)} (found {what})")
    return None


def _subject(raw: Any, kind: str, errors: FieldErrors) -> PodSet | None:
    present = _one_of(raw, "spec.subject", ("namespaces", "pods"), errors)
    return _pod_set(raw, present, "spec.subject", kind, errors)


def _pod_set(raw: Any, present: str | None, path: str, kind: str, errors: FieldErrors) -> PodSet | None:
    if present == "namespaces":
        selector = parse_selector(raw["namespaces"], f"{path}.namespaces", errors)
        return PodSet(selector) if selector is not None else None
    if present == "pods":
        return _namespaced_pod(raw["pods"], f"{path}.pods", kind, errors)
    return None


def _namespaced_pod(raw: Any, path: str, kind: str, errors: FieldErrors) -> PodSet | None:
    """`pods`: namespaceSelector AND podSelector; podSelector is required, and so is
    namespaceSelector in v1alpha1 (v1alpha2: absent selects every namespace)."""
    if not isinstance(raw, dict):
        errors.add(path, "must be an object")
        return None
    known_fields(raw, ("namespaceSelector", "podSelector"), path, errors)
    before = len(errors.items)
    for required in ("namespaceSelector", "podSelector") if kind != CNP else ("podSelector",):
        if raw.get(required) is None:
            errors.add(f"{path}.{required}", "Required value")
    namespaces = parse_selector(raw.get("namespaceSelector"), f"{path}.namespaceSelector", errors)
    pods = parse_selector(raw.get("podSelector"), f"{path}.podSelector", errors)
    if len(errors.items) > before or namespaces is None or pods is None:
        return None
    return PodSet(namespaces, pods)


def _rules(spec: dict[str, Any], kind: str, direction: Direction, errors: FieldErrors) -> tuple[AdminRule, ...] | None:
    field = "ingress" if direction == "Ingress" else "egress"
    raw = spec.get(field)
    path = f"spec.{field}"
    if not _list_length(raw, path, 0, MAX_ITEMS[kind], errors):
        return None
    return each_item(raw, path, errors, lambda item, at, errs: _rule(item, at, kind, direction, errs))


def _list_length(raw: Any, path: str, low: int, high: int, errors: FieldErrors) -> bool:
    """A list field of at most `high` items and at least `low` (when present); null is absent."""
    if raw is None:
        return True
    if not isinstance(raw, list):
        errors.add(path, "must be a list")
        return False
    if len(raw) > high:
        errors.add(path, f"Too many: {len(raw)}: must have at most {high} items")
        return False
    if len(raw) < low:
        errors.add(path, f"Invalid value: {len(raw)}: must have at least {low} item{'s' if low > 1 else ''}")
        return False
    return True


def _rule(raw: Any, path: str, kind: str, direction: Direction, errors: FieldErrors) -> AdminRule | None:
    if not isinstance(raw, dict):
        errors.add(path, "must be an object")
        return None
    peers_field = "from" if direction == "Ingress" else "to"
    ports_field = "protocols" if kind == CNP else "ports"
    before = len(errors.items)
    known_fields(raw, ("name", "action", peers_field, ports_field), path, errors)
    name = raw.get("name") or ""
    if not isinstance(name, str):
        errors.add(f"{path}.name", f"{name!r}: must be a string")
    elif len(name) > MAX_RULE_NAME:
        errors.add(f"{path}.name", f"Too long: may not be more than {MAX_RULE_NAME} bytes")
    action_word = raw.get("action")
    action = ACTIONS[kind].get(action_word) if isinstance(action_word, str) else None
    if action_word is None:
        errors.add(f"{path}.action", "Required value")
    elif action is None:
        supported = ", ".join(f'"{word}"' for word in ACTIONS[kind])
        errors.add(f"{path}.action", f"{action_word!r}: supported values: {supported}")
    peers = _peers(raw.get(peers_field), f"{path}.{peers_field}", kind, direction, errors)
    ports = _ports(raw.get(ports_field), f"{path}.{ports_field}", kind, errors)
    if len(errors.items) > before or action is None or peers is None or ports is None:
        return None
    rule = AdminRule(cast(str, name), action, peers, ports[0], cast(str, action_word))
    if ports[1] and (rule.has_networks or _has_unsupported_peer(raw.get(peers_field))):
        errors.add(path, NAMED_PORT_WITH_NETWORKS)
        return None
    return rule


def _has_unsupported_peer(raw: Any) -> bool:
    return isinstance(raw, list) and any(isinstance(p, dict) and (p.get("nodes") is not None or
                                                                  p.get("domainNames") is not None) for p in raw)


def _peers(raw: Any, path: str, kind: str, direction: Direction, errors: FieldErrors) -> tuple[AdminPeer, ...] | None:
    if raw is None:
        errors.add(path, "Required value")
        return None
    if not _list_length(raw, path, 1, MAX_ITEMS[kind], errors):
        return None
    return each_item(raw, path, errors, lambda item, at, errs: _peer(item, at, kind, direction, errs))


def _peer(raw: Any, path: str, kind: str, direction: Direction, errors: FieldErrors) -> AdminPeer | None:
    fields: tuple[str, ...] = ("namespaces", "pods")
    if direction == "Egress":
        fields += ("networks", *UNSUPPORTED_PEERS[kind])
    present = _one_of(raw, path, fields, errors)
    if present in ("nodes", "domainNames"):
        errors.add(f"{path}.{present}", f"{present} peers are not supported by sdn-netpol (use networks)")
        return None
    if present == "networks":
        networks = _networks(raw["networks"], f"{path}.networks", errors)
        return AdminPeer(networks=networks) if networks else None
    pod_set = _pod_set(raw, present, path, kind, errors)
    return AdminPeer(pod_set=pod_set) if pod_set is not None else None


def _networks(raw: Any, path: str, errors: FieldErrors) -> tuple[IPNetwork, ...] | None:
    if not _list_length(raw, path, 1, MAX_NETWORKS, errors):
        return None
    found: list[IPNetwork] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        at = f"{path}[{i}]"
        if not isinstance(item, str):
            errors.add(at, f"{item!r}: must be a string")
            continue
        if len(item) > MAX_CIDR:
            errors.add(at, f"Too long: may not be more than {MAX_CIDR} bytes")
            continue
        if item in seen:
            errors.add(at, f"Duplicate value: {item!r}")
            continue
        seen.add(item)
        network = parse_strict_cidr(item)
        if network is None:
            errors.add(at, f"{item!r}: Invalid CIDR format provided")
        else:
            found.append(network)
    return tuple(found) if len(found) == len(raw) else None


def parse_strict_cidr(text: str) -> IPNetwork | None:
    """As CEL's isCIDR reads it (Go's netip.ParsePrefix): a prefix length is required, no
    leading zeros, no zone; bits set after the prefix are allowed and mean the network."""
    address, slash, prefix = text.partition("/")
    if not slash or "%" in address or not (prefix.isascii() and prefix.isdigit()) or \
            (len(prefix) > 1 and prefix[0] == "0"):
        return None
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return IPNetwork(str(network))


def _ports(raw: Any, path: str, kind: str, errors: FieldErrors) -> tuple[tuple[PolicyPort, ...], bool] | None:
    """The rule's ports (empty: all) and whether a named port is among them."""
    if not _list_length(raw, path, 1, MAX_ITEMS[kind], errors):
        return None
    parse = _protocol_v1alpha2 if kind == CNP else _port_v1alpha1
    entries = each_item(raw, path, errors, parse)
    if entries is None:
        return None
    flat = tuple(port for entry in entries for port in entry)
    return flat, any(isinstance(p.port, str) for p in flat)


def _named(raw: Any, path: str, errors: FieldErrors) -> tuple[PolicyPort, ...] | None:
    """A named port matches a containerPort of that name, whatever its protocol."""
    if not isinstance(raw, str) or not raw:
        errors.add(path, f"{raw!r}: must be a non-empty port name")
        return None
    return tuple(PolicyPort(protocol, raw) for protocol in PROTOCOLS)


PortBody = Callable[[str, str, dict[str, Any], FieldErrors], tuple[PolicyPort, ...] | None]


def _port_entry(raw: Any, path: str, errors: FieldErrors, fields: tuple[str, ...], named: str,
                parse_body: PortBody) -> tuple[PolicyPort, ...] | None:
    """One ports/protocols entry: exactly one of `fields`; `named` is the named port, the
    others objects that `parse_body(field, path, body, errors)` reads."""
    present = _one_of(raw, path, fields, errors)
    if present == named:
        return _named(raw[present], f"{path}.{present}", errors)
    if present is None:
        return None
    at = f"{path}.{present}"
    body = raw[present]
    if not isinstance(body, dict):
        errors.add(at, "must be an object")
        return None
    return parse_body(present, at, body, errors)


def _port_v1alpha1(raw: Any, path: str, errors: FieldErrors) -> tuple[PolicyPort, ...] | None:
    return _port_entry(raw, path, errors, ("portNumber", "namedPort", "portRange"), "namedPort", _v1alpha1_body)


def _protocol_v1alpha2(raw: Any, path: str, errors: FieldErrors) -> tuple[PolicyPort, ...] | None:
    return _port_entry(raw, path, errors, ("tcp", "udp", "sctp", "destinationNamedPort"), "destinationNamedPort",
                       _v1alpha2_body)


def _v1alpha1_body(present: str, at: str, body: dict[str, Any], errors: FieldErrors) -> tuple[PolicyPort, ...] | None:
    before = len(errors.items)
    known_fields(body, ("protocol", "port") if present == "portNumber" else ("protocol", "start", "end"), at, errors)
    protocol = _protocol(body.get("protocol"), f"{at}.protocol", errors)
    if present == "portNumber":
        number = _required_port(body, "port", at, errors)
        span = (number, number) if number is not None else None
    else:
        span = _range(body, at, errors)
    if len(errors.items) > before or protocol is None or span is None:
        return None
    return (PolicyPort(protocol, span[0], span[1] if span[1] != span[0] else None),)


def _protocol(raw: Any, path: str, errors: FieldErrors) -> Protocol | None:
    if raw is None:
        return "TCP"
    if raw not in PROTOCOLS:
        errors.add(path, f'{raw!r}: supported values: "TCP", "UDP", "SCTP"')
        return None
    return cast(Protocol, raw)


def _required_port(body: dict[str, Any], key: str, path: str, errors: FieldErrors) -> int | None:
    if body.get(key) is None:
        errors.add(f"{path}.{key}", "Required value")
        return None
    return _integer(body[key], f"{path}.{key}", (1, 65535), errors)


def _range(body: dict[str, Any], path: str, errors: FieldErrors) -> tuple[int, int] | None:
    start = _required_port(body, "start", path, errors)
    end = _required_port(body, "end", path, errors)
    if start is None or end is None:
        return None
    if start >= end:
        errors.add(path, f"start {start}, end {end}: Start port must be less than End port")
        return None
    return start, end


def _v1alpha2_body(present: str, at: str, body: dict[str, Any], errors: FieldErrors) -> tuple[PolicyPort, ...] | None:
    known_fields(body, ("destinationPort",), at, errors)
    kind = _one_of(body.get("destinationPort"), f"{at}.destinationPort", ("number", "range"), errors)
    if kind is None:
        return None
    port_path = f"{at}.destinationPort"
    protocol = cast(Protocol, present.upper())
    if kind == "number":
        number = _integer(body["destinationPort"]["number"], f"{port_path}.number", (1, 65535), errors)
        return (PolicyPort(protocol, number),) if number is not None else None
    span_raw = body["destinationPort"]["range"]
    if not isinstance(span_raw, dict):
        errors.add(f"{port_path}.range", "must be an object")
        return None
    known_fields(span_raw, ("start", "end"), f"{port_path}.range", errors)
    span = _range(span_raw, f"{port_path}.range", errors)
    return (PolicyPort(protocol, span[0], span[1]),) if span is not None else None
