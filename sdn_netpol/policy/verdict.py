"""The reference semantics: is one new connection allowed, and why.

This is the oracle the flow compiler is proven against, so it is written as the
Kubernetes text reads — per connection, policy by policy — not for speed.
A connection is allowed iff the source's egress and the destination's ingress both allow
it; a side that is not a pod in NetworkPolicy's scope, or a pod no policy isolates in that
direction, allows everything. A pod cannot block access to itself, and traffic between a
pod and the node it runs on (known by its host-network pods) is always allowed.

Addresses matter only to ipBlock peers. A connection between two pods uses one family: the
one asked for (`family`), or else the first of the destination's addresses whose family the
source also has (docs/semantics.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from netaddr import IPAddress

from sdn_netpol.model.objects import Direction, NetworkPolicy, Peer, Pod, PolicyPort, Protocol, Rule
from sdn_netpol.policy.matching import port_matches
from sdn_netpol.policy.state import ClusterState
from sdn_netpol.policy.tiers import SideContext, TierMatch, deciding_tier, side_allowed, tier_matches

FAMILIES = (4, 6)


class FamilyError(ValueError):
    """A connection asked for in an address family that one of its ends has no address of."""


@dataclass(frozen=True)
class Endpoint:
    """A pod, or an address outside the cluster's pods."""

    pod: Pod | None = None
    ip: IPAddress | None = None

    def __str__(self) -> str:
        return f"{self.pod.namespace}/{self.pod.name}" if self.pod else str(self.ip)


@dataclass(frozen=True)
class RuleMatch:
    """Which rule allowed, with the peer and port entries that matched (None = all)."""

    policy: str
    direction: Direction
    rule_index: int
    peer: str | None
    port: str | None

    def describe(self) -> str:
        field = "ingress" if self.direction == "Ingress" else "egress"
        peer = self.peer or "all peers"
        port = self.port or "all ports"
        return f"policy {self.policy} {field}[{self.rule_index}] (peer: {peer}; port: {port})"


@dataclass(frozen=True)
class SideVerdict:
    """One direction's decision. `isolated_by` empty means the side is not isolated.

    `subject` is the pod whose policies decide, None when NetworkPolicy does not apply to that
    end; `outside` then says why in plain words (an outside address, host network, ...).
    `admin` and `baseline`: the cluster policies' rules that matched in those tiers (tiers.py);
    `baseline` only when that tier was consulted (no final admin rule, no isolation).
    """

    direction: Direction
    subject: str | None
    isolated_by: tuple[str, ...]
    allowed_by: tuple[RuleMatch, ...]
    outside: str | None = None
    admin: TierMatch | None = None
    baseline: TierMatch | None = None

    @property
    def allowed(self) -> bool:
        return side_allowed(self.admin, bool(self.isolated_by), bool(self.allowed_by), self.baseline)

    @property
    def decided_in(self) -> str | None:
        """Admin, NetworkPolicy, Baseline, or None (nothing applies: allowed)."""
        return deciding_tier(self.admin, bool(self.isolated_by), self.baseline)


@dataclass(frozen=True)
class Verdict:
    source: str
    destination: str
    protocol: Protocol
    port: int
    egress: SideVerdict
    ingress: SideVerdict
    loopback: bool = False
    node_local: bool = False
    family: int | None = None  # of the connection's addresses; None: no address known

    @property
    def allowed(self) -> bool:
        return self.loopback or self.node_local or (self.egress.allowed and self.ingress.allowed)


def decide(state: ClusterState, src: Endpoint, dst: Endpoint, protocol: Protocol, port: int,
           family: int | None = None) -> Verdict:
    """With `family` (4 or 6) the connection uses that family's addresses; FamilyError if an
    end has addresses but none of that family."""
    src_ip, dst_ip = connection_addresses(src, dst, family)
    conn = _Connection(state, src, dst, src_ip, dst_ip, protocol, port)
    loopback = src.pod is not None and dst.pod is not None and src.pod.key == dst.pod.key
    node_local = src.pod is not None and dst.pod is not None and is_node_local(src.pod, dst.pod)
    return Verdict(
        str(src), str(dst), protocol, port,
        egress=conn.side("Egress", src.pod),
        ingress=conn.side("Ingress", dst.pod),
        loopback=loopback,
        node_local=node_local,
        family=next((ip.version for ip in (src_ip, dst_ip) if ip is not None), None),
    )


def is_node_local(a: Pod, b: Pod) -> bool:
    """Traffic between a pod and the node it runs on is always allowed (Kubernetes docs).
    Without Node objects the node is known by its host-network pods, which have its address."""
    if a.node_name is None or a.node_name != b.node_name or a.host_network == b.host_network:
        return False
    pod = b if a.host_network else a
    return pod.in_policy_scope


def connection_addresses(src: Endpoint, dst: Endpoint,
                         family: int | None = None) -> tuple[IPAddress | None, IPAddress | None]:
    """The addresses a real connection would use: one family common to both ends (`family`
    when given)."""
    if family is not None:
        return address_of_family(src, family), address_of_family(dst, family)
    if src.pod is None and dst.pod is None:
        return src.ip, dst.ip
    if src.pod is None:
        assert dst.pod is not None and src.ip is not None
        return src.ip, dst.pod.ip_of_family(src.ip.version)
    if dst.pod is None:
        assert dst.ip is not None
        return src.pod.ip_of_family(dst.ip.version), dst.ip
    for dst_ip in dst.pod.ips:
        src_ip = src.pod.ip_of_family(dst_ip.version)
        if src_ip is not None:
            return src_ip, dst_ip
    return None, None


def address_of_family(end: Endpoint, family: int) -> IPAddress | None:
    """The end's address of `family`; None for a pod with no address at all (not known yet,
    or none: it is judged as without a family); FamilyError for a pod whose addresses are all
    of the other family, or an address of the other family."""
    if family not in FAMILIES:
        raise FamilyError(f"address family {family}: must be 4 or 6")
    if end.pod is None:
        if end.ip is not None and end.ip.version != family:
            raise FamilyError(f"{end.ip} is not an IPv{family} address")
        return end.ip
    found = end.pod.ip_of_family(family)
    if found is None and end.pod.ips:
        listed = ", ".join(str(ip) for ip in end.pod.ips)
        raise FamilyError(f"pod {end.pod.namespace}/{end.pod.name} has no IPv{family} address (it has {listed})")
    return found


@dataclass(frozen=True)
class _Connection:
    state: ClusterState
    src: Endpoint
    dst: Endpoint
    src_ip: IPAddress | None
    dst_ip: IPAddress | None
    protocol: Protocol
    port: int

    def side(self, direction: Direction, pod: Pod | None) -> SideVerdict:
        end = self.src if direction == "Egress" else self.dst
        if pod is None or not pod.in_policy_scope:
            return SideVerdict(direction, None, (), (), outside=outside_reason(end))
        isolating = [p for p in self._selecting(pod) if p.affects(direction)]
        matches = tuple(m for p in isolating for m in self._rule_matches(p, direction))
        peer, peer_ip = (self.dst, self.dst_ip) if direction == "Egress" else (self.src, self.src_ip)
        context = SideContext(self.state, direction, pod, peer.pod, peer_ip, self.dst.pod, self.protocol, self.port)
        admin, baseline = tier_matches(context, bool(isolating))
        return SideVerdict(direction, f"{pod.namespace}/{pod.name}", tuple(p.ref for p in isolating), matches,
                           None, admin, baseline)

    def _selecting(self, pod: Pod) -> list[NetworkPolicy]:
        return [
            p for p in self.state.index.policies_in(pod.namespace) if p.pod_selector.matches(pod.labels)
        ]

    def _rule_matches(self, policy: NetworkPolicy, direction: Direction) -> list[RuleMatch]:
        found = []
        for index, rule in enumerate(policy.rules(direction)):
            match = self._rule_match(policy, direction, index, rule)
            if match is not None:
                found.append(match)
        return found

    def _rule_match(self, policy: NetworkPolicy, direction: Direction, index: int, rule: Rule) -> RuleMatch | None:
        peer_ep = self.src if direction == "Ingress" else self.dst
        peer_ip = self.src_ip if direction == "Ingress" else self.dst_ip
        peer_text: str | None = None
        if rule.peers:
            peer = next((p for p in rule.peers if self._peer_matches(policy, p, peer_ep, peer_ip)), None)
            if peer is None:
                return None
            peer_text = peer.describe()
        port_text: str | None = None
        if rule.ports:
            entry = next((pp for pp in rule.ports if self._port_matches(pp)), None)
            if entry is None:
                return None
            port_text = entry.describe()
        return RuleMatch(policy.ref, direction, index, peer_text, port_text)

    def _peer_matches(self, policy: NetworkPolicy, peer: Peer, ep: Endpoint, ip: IPAddress | None) -> bool:
        if peer.ip_block is not None:
            return ip is not None and peer.ip_block.contains(ip)
        pod = ep.pod
        if pod is None or not pod.in_policy_scope:
            return False
        if peer.namespace_selector is None:
            ns_ok = pod.namespace == policy.namespace
        else:
            ns_ok = peer.namespace_selector.matches(self.state.namespace(pod.namespace).labels)
        return ns_ok and (peer.pod_selector is None or peer.pod_selector.matches(pod.labels))

    def _port_matches(self, entry: PolicyPort) -> bool:
        return port_matches(entry, self.protocol, self.port, self.dst.pod)


def outside_reason(end: Endpoint) -> str:
    """Why NetworkPolicy does not apply to this end of a connection, in plain words."""
    pod = end.pod
    if pod is None:
        return f"{end} is not a pod"
    if pod.host_network:
        return f"{end} uses the host network"
    if pod.phase != "Running":
        return f"{end} is not running (phase {pod.phase})"
    return f"{end} has no IP address"


def explain(verdict: Verdict) -> list[str]:
    """Plain-words reasons, one line each, for `sdn-netpol explain`."""
    head = "ALLOWED" if verdict.allowed else "DENIED"
    lines = [f"{head}: {verdict.source} -> {verdict.destination} {verdict.protocol}/{verdict.port}"]
    if verdict.loopback:
        lines.append("  a pod cannot block access to itself (loopback is always allowed)")
        return lines
    if verdict.node_local:
        lines.append("  traffic between a pod and the node it runs on is always allowed "
                     "(the host-network end is that node)")
        return lines
    for side in (verdict.egress, verdict.ingress):
        lines.extend(_explain_side(side))
    return lines


def _explain_side(side: SideVerdict) -> list[str]:
    word = "egress" if side.direction == "Egress" else "ingress"
    if side.subject is None:
        return [f"  {word}: {side.outside or 'not a pod'}: no {word} policy applies"]
    if side.admin is not None:
        lines = [f"  {word}: {side.admin.describe()}"]
        if side.admin.final:
            return lines
        then = _explain_side(replace(side, admin=None))
        return [*lines, f"    then {then[0].removeprefix(f'  {word}: ')}", *then[1:]]
    if side.baseline is not None:
        last = "" if side.baseline.final else ": no tier after it, allowed"
        return [f"  {word}: {side.subject} is not isolated for {word} by a NetworkPolicy; "
                f"{side.baseline.describe()}{last}"]
    if not side.isolated_by:
        reason = f"no policy selects it with policyType {side.direction}"
        return [f"  {word}: {side.subject} is not isolated for {word} ({reason}): allowed"]
    lines = [f"  {word}: {side.subject} is isolated for {word} by " + ", ".join(side.isolated_by)]
    if side.allowed_by:
        lines += [f"    allowed by {m.describe()}" for m in side.allowed_by]
    else:
        lines.append(f"    no {word} rule of those policies allows this connection: denied")
    return lines
