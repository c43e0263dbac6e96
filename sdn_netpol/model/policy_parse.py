"""NetworkPolicy manifest → value, validated as the API server validates it.

Every check appends to FieldErrors with the field path; a policy with any error is not
built (the API server would have rejected it as a whole).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar, cast

from netaddr import AddrFormatError, IPNetwork

from sdn_netpol.model.errors import FieldErrors
from sdn_netpol.model.labels import (
    OPERATORS,
    Labels,
    LabelSelector,
    Operator,
    Requirement,
    validate_label_key,
    validate_label_value,
)
from sdn_netpol.model.objects import (
    DIRECTIONS,
    PROTOCOLS,
    Direction,
    IPBlock,
    NetworkPolicy,
    Peer,
    PolicyPort,
    Protocol,
    Rule,
)

T = TypeVar("T")
_IANA_SVC_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
PEER_FIELDS = ("podSelector", "namespaceSelector", "ipBlock")


def known_fields(raw: dict[str, Any], known: tuple[str, ...], path: str, errors: FieldErrors) -> None:
    """An unknown field is an error, as with kubectl's default (strict) field validation: a
    misspelt field would otherwise change a policy silently (`form:` would allow everyone)."""
    for key in raw:
        if key not in known:
            errors.add(f"{path}.{key}", "unknown field")


def parse_network_policy(
    doc: dict[str, Any], namespace: str, name: str, errors: FieldErrors
) -> NetworkPolicy | None:
    spec = doc.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        errors.add("spec", "must be an object")
        return None
    known_fields(spec, ("podSelector", "policyTypes", "ingress", "egress"), "spec", errors)
    # The API server's order: podSelector, ingress, egress, policyTypes (messages come in it).
    selector = parse_selector(spec.get("podSelector"), "spec.podSelector", errors)
    ingress = _rules(spec, "ingress", "from", errors)
    egress = _rules(spec, "egress", "to", errors)
    types = _policy_types(spec, errors)
    if errors or selector is None or types is None or ingress is None or egress is None:
        return None
    return NetworkPolicy(namespace, name, selector, types, ingress, egress)


def _policy_types(spec: dict[str, Any], errors: FieldErrors) -> frozenset[Direction] | None:
    """Defaulting as the API server does: Ingress always; Egress iff egress rules exist."""
    raw = spec.get("policyTypes")
    if raw is None or raw == []:
        egress = spec.get("egress")
        has_egress = isinstance(egress, list) and len(egress) > 0
        return frozenset({"Ingress", "Egress"} if has_egress else {"Ingress"})
    if not isinstance(raw, list):
        errors.add("spec.policyTypes", "must be a list")
        return None
    if len(raw) > len(DIRECTIONS):
        errors.add("spec.policyTypes", "may not specify more than two policyTypes")
        return None
    found: set[Direction] = set()
    for i, item in enumerate(raw):
        if item not in DIRECTIONS:
            errors.add(f"spec.policyTypes[{i}]", f'{item!r}: supported values: "Ingress", "Egress"')
        else:
            found.add(cast(Direction, item))
    return frozenset(found)


def _rules(
    spec: dict[str, Any], field: str, peers_field: str, errors: FieldErrors
) -> tuple[Rule, ...] | None:
    raw = spec.get(field)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.add(f"spec.{field}", "must be a list")
        return None
    rules = []
    for i, item in enumerate(raw):
        path = f"spec.{field}[{i}]"
        if item is None:
            item = {}
        if not isinstance(item, dict):
            errors.add(path, "must be an object")
            continue
        known_fields(item, (peers_field, "ports"), path, errors)
        ports = _ports(item.get("ports"), f"{path}.ports", errors)
        peers = _peers(item.get(peers_field), f"{path}.{peers_field}", errors)
        if peers is not None and ports is not None:
            rules.append(Rule(peers, ports))
    return tuple(rules)


def each_item(
    raw: Any, path: str, errors: FieldErrors, parse_item: Callable[[Any, str, FieldErrors], T | None]
) -> tuple[T, ...] | None:
    """A list field: null means empty; every item is parsed (and its errors kept) at PATH[i]."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.add(path, "must be a list")
        return None
    parsed = (parse_item(item, f"{path}[{i}]", errors) for i, item in enumerate(raw))
    return tuple(item for item in parsed if item is not None)


def _peers(raw: Any, path: str, errors: FieldErrors) -> tuple[Peer, ...] | None:
    return each_item(raw, path, errors, _peer)


def _peer(raw: Any, path: str, errors: FieldErrors) -> Peer | None:
    if not isinstance(raw, dict):
        errors.add(path, "must be an object")
        return None
    known_fields(raw, PEER_FIELDS, path, errors)
    present = [k for k in PEER_FIELDS if raw.get(k) is not None]
    if not present:
        errors.add(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
        return None
    # Like the API server: check every part that is there, then the combination.
    pods = _optional_selector(raw, "podSelector", path, errors)
    namespaces = _optional_selector(raw, "namespaceSelector", path, errors)
    block = _ip_block(raw["ipBlock"], f"{path}.ipBlock", errors) if "ipBlock" in present else None
    if "ipBlock" in present and len(present) > 1:
        errors.add(path, "may not specify both ipBlock and another peer")
        return None
    if "ipBlock" in present:
        return Peer(ip_block=block) if block else None
    return Peer(pod_selector=pods, namespace_selector=namespaces)


def _optional_selector(
    raw: dict[str, Any], key: str, path: str, errors: FieldErrors
) -> LabelSelector | None:
    if raw.get(key) is None:
        return None
    return parse_selector(raw[key], f"{path}.{key}", errors)


def _ip_block(raw: Any, path: str, errors: FieldErrors) -> IPBlock | None:
    if not isinstance(raw, dict):
        errors.add(path, "must be an object")
        return None
    known_fields(raw, ("cidr", "except"), path, errors)
    cidr = _cidr(raw.get("cidr"), f"{path}.cidr", errors)
    excepts_raw = raw.get("except") or []
    if not isinstance(excepts_raw, list):
        errors.add(f"{path}.except", "must be a list")
        return None
    excepts = []
    for i, item in enumerate(excepts_raw):
        ex_path = f"{path}.except[{i}]"
        ex = _cidr(item, ex_path, errors)
        if ex is None or cidr is None:
            continue
        if ex.version != cidr.version:
            errors.add(ex_path, f"{item}: must be of the same IP family as cidr {cidr}")
        elif ex not in cidr:
            errors.add(ex_path, f"{item} is not within {raw.get('cidr')}")
        elif ex.prefixlen <= cidr.prefixlen:
            errors.add(ex_path, f"{item} is not strictly within {raw.get('cidr')} (it must be a smaller range)")
        else:
            excepts.append(ex)
    if cidr is None or len(excepts) != len(excepts_raw):
        return None
    return IPBlock(cidr, tuple(excepts))


def _cidr(raw: Any, path: str, errors: FieldErrors) -> IPNetwork | None:
    """Parse like Go's net.ParseCIDR: a prefix is required; host bits mean the network."""
    if raw is None or raw == "":
        errors.add(path, "Required value")
        return None
    net = parse_cidr(raw) if isinstance(raw, str) else None
    if net is None:
        errors.add(path, f"{raw!r}: must be a valid CIDR (e.g. 10.0.0.0/16 or 2001:db8::/64)")
    return net


def parse_cidr(text: str) -> IPNetwork | None:
    """As the API server's legacy-field parser (ParseCIDRSloppy) reads a CIDR, or None.

    A prefix length is required; bits set after it mean the network (10.1.2.3/16 is
    10.1.0.0/16); IPv4 octets and the prefix may have leading zeros, read as decimal.
    """
    address, slash, prefix = text.partition("/")
    if not slash or not (prefix.isascii() and prefix.isdigit()):
        return None
    if ":" not in address:
        octets = address.split(".")
        if len(octets) != 4 or not all(o.isascii() and o.isdigit() for o in octets):
            return None
        address = ".".join(str(int(o)) for o in octets)
    try:
        return IPNetwork(f"{address}/{int(prefix)}").cidr
    except (AddrFormatError, ValueError, TypeError):
        return None


def _ports(raw: Any, path: str, errors: FieldErrors) -> tuple[PolicyPort, ...] | None:
    return each_item(raw, path, errors, lambda item, at, errs: _port(item if item is not None else {}, at, errs))


def _port(raw: Any, path: str, errors: FieldErrors) -> PolicyPort | None:
    if not isinstance(raw, dict):
        errors.add(path, "must be an object")
        return None
    before = len(errors.items)
    known_fields(raw, ("protocol", "port", "endPort"), path, errors)
    protocol = raw.get("protocol") or "TCP"
    if protocol not in PROTOCOLS:
        errors.add(f"{path}.protocol", f'{protocol!r}: supported values: "TCP", "UDP", "SCTP"')
    port = raw.get("port")
    if isinstance(port, bool) or (port is not None and not isinstance(port, int | str)):
        errors.add(f"{path}.port", f"{port!r}: must be a port number or a port name")
    elif isinstance(port, int):
        _check_port_number(port, f"{path}.port", errors)
    elif isinstance(port, str):
        check_port_name(port, f"{path}.port", errors)
    end_port = raw.get("endPort")
    if end_port is not None:
        _check_end_port(port, end_port, f"{path}.endPort", errors)
    if len(errors.items) > before:
        return None
    return PolicyPort(cast(Protocol, protocol), port, end_port)


def _check_port_number(port: int, path: str, errors: FieldErrors) -> None:
    if not 1 <= port <= 65535:
        errors.add(path, f"{port}: must be between 1 and 65535, inclusive")


def check_port_name(name: str, path: str, errors: FieldErrors) -> bool:
    """IANA_SVC_NAME: 1-15 lowercase alphanumerics or '-', a letter, no '--' or edge '-'."""
    if name.isdigit():
        errors.add(path, f"{name!r}: a numeric port must not be quoted as a string name")
        return False
    if (
        len(name) > 15
        or not _IANA_SVC_NAME_RE.match(name)
        or "--" in name
        or not any(c.isalpha() for c in name)
    ):
        errors.add(
            path,
            f"{name!r}: must be a valid IANA service name (at most 15 characters: lowercase "
            "letters, digits and '-', at least one letter, no leading, trailing or double '-')",
        )
        return False
    return True


def _check_end_port(port: Any, end_port: Any, path: str, errors: FieldErrors) -> None:
    if isinstance(end_port, bool) or not isinstance(end_port, int):
        errors.add(path, f"{end_port!r}: must be an integer")
    elif port is None:
        errors.add(path, "may not be specified when `port` is not specified")
    elif isinstance(port, str):
        errors.add(path, "may not be specified when `port` is non-numeric")
    elif not 1 <= end_port <= 65535:
        errors.add(path, f"{end_port}: must be between 1 and 65535, inclusive")
    elif isinstance(port, int) and end_port < port:
        errors.add(path, f"{end_port}: must be greater than or equal to `port` ({port})")


def parse_selector(raw: Any, path: str, errors: FieldErrors) -> LabelSelector | None:
    """A metav1.LabelSelector; null or {} selects everything."""
    if raw is None:
        return LabelSelector()
    if not isinstance(raw, dict):
        errors.add(path, "must be an object")
        return None
    before = len(errors.items)
    known_fields(raw, ("matchLabels", "matchExpressions"), path, errors)
    labels = parse_labels(raw.get("matchLabels"), f"{path}.matchLabels", errors)
    expressions = _expressions(raw.get("matchExpressions"), f"{path}.matchExpressions", errors)
    if len(errors.items) > before or labels is None:
        return None
    return LabelSelector(labels, expressions)


def parse_labels(raw: Any, path: str, errors: FieldErrors) -> Labels | None:
    if raw is None:
        return Labels()
    if not isinstance(raw, dict):
        errors.add(path, "must be a map of string keys to string values")
        return None
    ok = True
    labels: dict[str, str] = {}
    for key, value in raw.items():
        if value is None:  # `key:` with no value decodes to "" on the API server (Go zero value)
            value = ""
        ok = validate_label_key(key, path, errors) and ok
        ok = validate_label_value(value, f"{path}.{key}", errors) and ok
        labels[key] = value
    return Labels(labels) if ok else None


def _expressions(raw: Any, path: str, errors: FieldErrors) -> tuple[Requirement, ...]:
    return each_item(raw, path, errors, _requirement) or ()


def _requirement(raw: Any, path: str, errors: FieldErrors) -> Requirement | None:
    if not isinstance(raw, dict):
        errors.add(path, "must be an object")
        return None
    key, operator, values = raw.get("key"), raw.get("operator"), raw.get("values") or []
    before = len(errors.items)
    known_fields(raw, ("key", "operator", "values"), path, errors)
    validate_label_key(key, f"{path}.key", errors)
    if operator not in OPERATORS:
        errors.add(
            f"{path}.operator",
            f'{operator!r}: not a valid selector operator ("In", "NotIn", "Exists", "DoesNotExist")',
        )
    elif not isinstance(values, list):
        errors.add(f"{path}.values", "must be a list")
    elif operator in ("In", "NotIn") and not values:
        errors.add(f"{path}.values", f"must be specified when `operator` is '{operator}'")
    elif operator in ("Exists", "DoesNotExist") and values:
        errors.add(f"{path}.values", f"may not be specified when `operator` is '{operator}'")
    else:
        for j, value in enumerate(values):
            validate_label_value(value, f"{path}.values[{j}]", errors)
    if len(errors.items) > before:
        return None
    return Requirement(cast(str, key), cast(Operator, operator), frozenset(values))
