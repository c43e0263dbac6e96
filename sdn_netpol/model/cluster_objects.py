"""Cluster-wide admin policy: one internal model for three kinds of the network-policy-api
(policy.networking.k8s.io).

- `ClusterNetworkPolicy` (v1alpha2): `tier` Admin or Baseline, `priority` 0-1000, actions
  Accept, Deny, Pass;
- `AdminNetworkPolicy` (v1alpha1): the Admin tier, `priority` 0-1000, actions Allow, Deny, Pass;
- `BaselineAdminNetworkPolicy` (v1alpha1): the Baseline tier, the singleton `default`, actions
  Allow and Deny.

All three become `ClusterPolicy` values; Accept and Allow are the same action (`Allow`), the
word written is kept for messages. Peers and ports reuse NetworkPolicy's port values
(`PolicyPort`); a named port, which matches a containerPort of that name whatever its
protocol, is one `PolicyPort` per protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from netaddr import IPAddress, IPNetwork

from sdn_netpol.model.labels import LabelSelector
from sdn_netpol.model.objects import Direction, PolicyPort

ClusterKind = Literal["ClusterNetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy"]
CLUSTER_KINDS: tuple[ClusterKind, ...] = ("ClusterNetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy")
GROUP = "policy.networking.k8s.io"
CLUSTER_API_VERSIONS: dict[str, str] = {
    "ClusterNetworkPolicy": f"{GROUP}/v1alpha2",
    "AdminNetworkPolicy": f"{GROUP}/v1alpha1",
    "BaselineAdminNetworkPolicy": f"{GROUP}/v1alpha1",
}
Tier = Literal["Admin", "Baseline"]
TIERS: tuple[Tier, ...] = ("Admin", "Baseline")
Action = Literal["Allow", "Deny", "Pass"]
BANP_NAME = "default"
#: the Baseline tier has no priority in v1alpha1: the singleton comes after every Baseline
#: ClusterNetworkPolicy (docs/semantics.md), as if it had this priority
BANP_PRIORITY = 1001
#: at one priority, policies are consulted in name order, then in this order of kinds
_KIND_RANK = {kind: rank for rank, kind in enumerate(CLUSTER_KINDS)}


@dataclass(frozen=True)
class PodSet:
    """A subject, or a `namespaces`/`pods` peer: pods of the namespaces `namespaces` selects
    and, when `pods` is set, with those labels. Only pods under NetworkPolicy (not on the
    host network) are ever in it."""

    namespaces: LabelSelector
    pods: LabelSelector | None = None

    def describe(self) -> str:
        if self.pods is None:
            return f"namespaces [{self.namespaces.describe()}]"
        return f"pods [{self.pods.describe()}] in namespaces [{self.namespaces.describe()}]"


@dataclass(frozen=True)
class AdminPeer:
    """One `from`/`to` entry: pods (`pod_set`) or addresses (`networks`), never both."""

    pod_set: PodSet | None = None
    networks: tuple[IPNetwork, ...] = ()

    def contains_ip(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)

    def describe(self) -> str:
        if self.pod_set is not None:
            return self.pod_set.describe()
        return "networks " + ", ".join(str(n) for n in self.networks)


@dataclass(frozen=True)
class AdminRule:
    """`ports` empty: every port of every protocol. `action_word` is the word the manifest
    used (Accept or Allow for `Allow`)."""

    name: str
    action: Action
    peers: tuple[AdminPeer, ...]
    ports: tuple[PolicyPort, ...] = ()
    action_word: str = field(default="", compare=False)  # for messages only: Accept and Allow are one action

    @property
    def has_networks(self) -> bool:
        return any(p.networks for p in self.peers)


@dataclass(frozen=True)
class ClusterPolicy:
    kind: ClusterKind
    name: str
    tier: Tier
    priority: int
    subject: PodSet
    ingress: tuple[AdminRule, ...] = ()
    egress: tuple[AdminRule, ...] = ()

    @property
    def ref(self) -> str:
        """As `kubectl get` names it: `ClusterNetworkPolicy/deny-to-monitoring`."""
        return f"{self.kind}/{self.name}"

    @cached_property
    def order(self) -> tuple[int, int, str, int]:
        """Evaluation order: tier, then lower priority first, then name, then kind. The API
        leaves policies of one priority that match one connection in an unspecified order;
        ours is this one, always (docs/semantics.md)."""
        return (TIERS.index(self.tier), self.priority, self.name, _KIND_RANK[self.kind])

    def rules(self, direction: Direction) -> tuple[AdminRule, ...]:
        return self.ingress if direction == "Ingress" else self.egress

    def describe(self) -> str:
        """`ClusterNetworkPolicy deny-to-monitoring (Admin, priority 10)`."""
        if self.kind == "BaselineAdminNetworkPolicy":
            return f"{self.kind} {self.name} (Baseline)"
        return f"{self.kind} {self.name} ({self.tier}, priority {self.priority})"
