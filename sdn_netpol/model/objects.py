"""Frozen values for the three Kubernetes kinds NetworkPolicy depends on.

Only the fields that change a verdict are kept. Every value is hashable so states,
selectors and resolved rules can be compared and cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, NamedTuple

from netaddr import IPAddress, IPNetwork

from sdn_netpol.model.labels import Labels, LabelSelector

Protocol = Literal["TCP", "UDP", "SCTP"]
PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP", "SCTP")
Direction = Literal["Ingress", "Egress"]
DIRECTIONS: tuple[Direction, ...] = ("Ingress", "Egress")

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
AUDIT_ANNOTATION = "sdn-netpol.io/audit"
AuditMode = Literal["deny", "allow", "all"]
AUDIT_MODES: tuple[AuditMode, ...] = ("deny", "allow", "all")


class PodKey(NamedTuple):
    """A NamedTuple, not a dataclass: pod keys fill every selector answer and resolved set,
    and a tuple hashes and compares in C (a dataclass's __hash__ is a Python call)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Namespace:
    """`audit`: the `sdn-netpol.io/audit` annotation, which verdicts on this namespace's pods
    are logged (never part of a verdict; only the audit flows and the audit log read it)."""

    name: str
    labels: Labels
    audit: AuditMode | None = None

    @staticmethod
    def implied(name: str, labels: Labels | None = None, audit: AuditMode | None = None) -> Namespace:
        """The API server always sets kubernetes.io/metadata.name to the namespace's name."""
        base = labels or Labels()
        return Namespace(name, base.with_label(NAMESPACE_NAME_LABEL, name), audit)

    @property
    def audits_denied(self) -> bool:
        return self.audit in ("deny", "all")

    @property
    def audits_allowed(self) -> bool:
        return self.audit in ("allow", "all")


@dataclass(frozen=True)
class ContainerPort:
    name: str | None
    port: int
    protocol: Protocol = "TCP"


@dataclass(frozen=True)
class Pod:
    """A pod as NetworkPolicy sees it.

    `ips_known` is False for a manifest without any `status` (as written by a user, before
    a kubelet reports an IP): such a pod is still selected and still a peer by its labels,
    only ipBlocks cannot match it. A pod whose status says it has no IP, is not Running or
    uses the host network is outside NetworkPolicy altogether.
    """

    namespace: str
    name: str
    labels: Labels
    ips: tuple[IPAddress, ...] = ()
    node_name: str | None = None
    host_network: bool = False
    phase: str = "Running"
    ports: tuple[ContainerPort, ...] = ()
    ips_known: bool = True
    # One PodKey per pod, made once: indexes and resolved sets hold many references to it.
    # A plain attribute, not a cached_property: it is read for every pod of every snapshot.
    key: PodKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", PodKey(self.namespace, self.name))

    @property
    def in_policy_scope(self) -> bool:
        """Can be selected by a policy and be a peer of a rule."""
        if self.host_network or self.phase != "Running":
            return False
        return bool(self.ips) or not self.ips_known

    def ip_of_family(self, version: int) -> IPAddress | None:
        return next((ip for ip in self.ips if ip.version == version), None)

    def resolve_named_port(self, name: str, protocol: Protocol) -> tuple[int, ...]:
        """containerPort numbers a named policy port means on this pod (usually one)."""
        return self._named_ports.get((name, protocol), ())

    @cached_property
    def _named_ports(self) -> dict[tuple[str, Protocol], tuple[int, ...]]:
        found: dict[tuple[str, Protocol], set[int]] = {}
        for p in self.ports:
            if p.name is not None:
                found.setdefault((p.name, p.protocol), set()).add(p.port)
        return {key: tuple(sorted(numbers)) for key, numbers in found.items()}


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, ip: IPAddress) -> bool:
        if ip.version != self.cidr.version or ip not in self.cidr:
            return False
        return not any(ip in ex for ex in self.excepts)

    def describe(self) -> str:
        text = str(self.cidr)
        if self.excepts:
            text += " except " + ", ".join(str(e) for e in self.excepts)
        return text


@dataclass(frozen=True)
class Peer:
    """One `from`/`to` entry: either an ipBlock or selectors (validated, never both).

    pod_selector None with namespace_selector set means every pod of the selected
    namespaces; namespace_selector None means the policy's own namespace.
    """

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def describe(self) -> str:
        if self.ip_block is not None:
            return f"ipBlock {self.ip_block.describe()}"
        parts = []
        if self.namespace_selector is not None:
            parts.append(f"namespaces [{self.namespace_selector.describe()}]")
        if self.pod_selector is not None:
            parts.append(f"pods [{self.pod_selector.describe()}]")
        return " and ".join(parts)


@dataclass(frozen=True)
class PolicyPort:
    """A ports entry. port None = every port of the protocol; str = a named port."""

    protocol: Protocol = "TCP"
    port: int | str | None = None
    end_port: int | None = None

    def describe(self) -> str:
        if self.port is None:
            return f"{self.protocol} (all ports)"
        if self.end_port is not None:
            return f"{self.protocol} {self.port}-{self.end_port}"
        return f"{self.protocol} {self.port}"


@dataclass(frozen=True)
class Rule:
    """An ingress or egress rule. Empty peers = all peers; empty ports = all ports."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: frozenset[Direction]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction == "Ingress" else self.egress

    def affects(self, direction: Direction) -> bool:
        return direction in self.policy_types

    def pod_label_keys(self, own_namespace: bool) -> frozenset[str]:
        """The pod label keys its selectors read for a pod of its own namespace (target and
        every peer) or of another one (only peers with a namespaceSelector reach there)."""
        return self._label_keys[0 if own_namespace else 1]

    @cached_property
    def _label_keys(self) -> tuple[frozenset[str], frozenset[str]]:
        own: set[str] = set(self.pod_selector.keys)
        other: set[str] = set()
        for direction in self.policy_types:
            for peer in (p for rule in self.rules(direction) for p in rule.peers if p.pod_selector is not None):
                own |= peer.pod_selector.keys  # type: ignore[union-attr]
                if peer.namespace_selector is not None:
                    other |= peer.pod_selector.keys  # type: ignore[union-attr]
        return frozenset(own), frozenset(other)

    @cached_property
    def confined_to_namespace(self) -> bool:
        """Does every rule name its peers by podSelector alone (so only pods of the policy's own
        namespace can be selected or be peers)?"""
        return all(rule.peers and all(p.namespace_selector is None and p.ip_block is None for p in rule.peers)
                   for direction in self.policy_types for rule in self.rules(direction))
