"""Flows every node has regardless of policy: classification, spoofguard, ARP, conntrack,
forwarding and output. Pure functions of the node context and the cluster's pod addresses.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

from netaddr import EUI, IPAddress, IPNetwork

from sdn_netpol.compiler.flow import (
    Action,
    Ct,
    DecTtl,
    Flow,
    GotoTable,
    LearnReply,
    Match,
    Move,
    Output,
    OutputInPort,
    Resubmit,
    SetField,
    ct_state,
)
from sdn_netpol.compiler.flowfields import FieldInput
from sdn_netpol.compiler.pipeline import (
    CT_ZONE,
    FAST_PROTOCOLS,
    FLAG_BYPASS,
    FLAG_FAST_ELIGIBLE,
    FLAG_RECHECKED,
    FLAG_SCTP_REPLY,
    FLAG_SCTP_REPLY_BIT,
    GATEWAY_MAC,
    LOCAL_SIDE_MASK,
    REG_FLAGS,
    REG_OUT_PORT,
    REG_PORT_CLASS,
    SCTP_REPLY_IDLE_TIMEOUT,
    TUNNEL_VNI,
    CookieCategory,
    PortClass,
    Priority,
    Table,
    cookie,
    pod_object_id,
    stable_id,
)
from sdn_netpol.compiler.topology import Datapath, NodeContext, PortBinding, neighbor_addresses
from sdn_netpol.model.objects import Pod

PIPELINE_COOKIE = cookie(CookieCategory.PIPELINE)
# ICMPv6 Neighbor Discovery (RFC 4861): Router Solicitation/Advertisement, Neighbor
# Solicitation/Advertisement, Redirect; an NA's flags (Router, Solicited, Override) and its
# Target Link-Layer Address option.
ND_ROUTER_SOLICIT, ND_ROUTER_ADVERT, ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT, ND_REDIRECT = 133, 134, 135, 136, 137
ND_TYPES = (ND_ROUTER_SOLICIT, ND_ROUTER_ADVERT, ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT, ND_REDIRECT)
NA_FLAGS_ROUTER_SOLICITED_OVERRIDE = 0xE0000000
ND_OPT_TARGET_LINKADDR = 2
LOOPBACK = (IPNetwork("127.0.0.0/8"), IPNetwork("::1/128"))
TUNNEL_UDP_PORTS = (4789, 6081)  # VXLAN and Geneve (IANA): what a node's tunnel endpoint decapsulates
_SCRATCH_REG = "reg4"
_IP_FAMILIES = ("ip", "ipv6")


def pipeline_flows(node: NodeContext) -> Iterator[Flow]:
    """The fixed skeleton: table misses, ARP responder, conntrack, commit, policy bypass."""
    yield from _misses()
    yield _flow(Table.ARP_RESPONDER, Priority.NORMAL, Match.build("arp", arp_op=1), _arp_reply_actions())
    yield from _ndp_flows(node.datapath)
    for family in _IP_FAMILIES:
        yield _flow(Table.CONNTRACK, Priority.NORMAL, Match.build(family),
                    (Ct(table=Table.CONNTRACK_STATE, zone=CT_ZONE),))
        yield _flow(Table.COMMIT, Priority.NORMAL, Match.build(family, ct_state=ct_state(new=True, trk=True)),
                    (Ct(commit=True, zone=CT_ZONE), GotoTable(Table.OUTPUT)))
    yield from _conntrack_state_flows()
    yield from _fastpath_flows()
    yield from _sctp_reply_flows()
    yield _flow(Table.INGRESS_ADMIN, Priority.TIER_BYPASS, Match.build(None, **{REG_FLAGS: (FLAG_BYPASS, FLAG_BYPASS)}),
                (GotoTable(Table.COMMIT),))
    yield from _edge_port_flows(node)
    yield from _node_local_flows(node)
    yield from _forbidden_destination_flows(node)


def _node_local_flows(node: NodeContext) -> Iterator[Flow]:
    """Traffic between a pod and its own node is always allowed (Kubernetes docs): kubelet
    probes, node-local agents. The node is reached through the gateway port; spoofguard keeps
    pods from borrowing its address, so matching the address is enough."""
    address = node.address_of(node.name)
    if address is None:
        return
    family, src_field, dst_field = _family_fields(address)
    yield _flow(Table.EGRESS_ADMIN, Priority.TIER_BYPASS, Match.build(family, **{dst_field: address}),
                (GotoTable(Table.L3_FORWARDING),))
    yield _flow(Table.INGRESS_ADMIN, Priority.TIER_BYPASS - 1, Match.build(family, **{src_field: address}),
                (GotoTable(Table.COMMIT),))


def _forbidden_destination_flows(node: NodeContext) -> Iterator[Flow]:
    """Destinations no packet is routed to, whoever sends it (docs/reliability.md, "Security
    review"): SpoofGuard drops them above every port's own flows, before conntrack, so the
    policy tables keep holding allows only:
    - loopback: behind a gateway to the host stack with route_localnet=1 (kube-proxy sets it),
      a pod's packet to 127.0.0.1 would reach the node's loopback listeners, the controller's
      OpenFlow port among them (the shape of CVE-2020-8558);
    - any node's tunnel endpoint on the VXLAN and Geneve ports: the endpoint decapsulates
      whatever arrives, so a pod could hand a node an inner packet with a forged source, which
      the receiving node trusts (tunnel traffic is not spoof-checked). Calico drops the same."""
    for net in LOOPBACK:
        family, _, dst_field = _family_fields(net.ip)
        yield _flow(Table.SPOOF_GUARD, Priority.FORBIDDEN, Match.build(family, **{dst_field: net}), ())
    for address in sorted({address for _, address in node.node_addresses}):
        _, _, dst_field = _family_fields(address)
        for port in TUNNEL_UDP_PORTS:
            match = Match.build("udp" if address.version == 4 else "udp6", tp_dst=port, **{dst_field: address})
            yield _flow(Table.SPOOF_GUARD, Priority.FORBIDDEN, match, ())


def _ndp_flows(datapath: Datapath) -> Iterator[Flow]:
    """Neighbor Discovery, the IPv6 twin of proxy ARP: every Neighbor Solicitation a port may
    send (SpoofGuard: from the port's own address) is answered by the switch with the virtual
    gateway's MAC, whatever its target, so pods never learn each other's MACs. Every other
    ND message, from any port, is dropped in SpoofGuard: Router Solicitations and
    Advertisements (routes are the CNI's, not announced), Advertisements (the switch is every
    port's only neighbour, it never asks, so a pod's NA, for its own address or another's, has
    no receiver), Redirects, and Duplicate Address Detection's solicitations from `::`
    (unanswered, so DAD succeeds). The NA is built in two tables because OVS checks a
    set_field against the flow's match, not against what earlier actions made of the packet:
    only a flow matching an NA may write its Target Link-Layer Address (nd_tll).

    Not on the kernel datapath: turning the NS into an NA sets its flags (nd_reserved) and
    option type (nd_options_type), which only the userspace datapath can do (Linux's
    openvswitch module has no ND extension: `dpif/show-dp-features` says "IPv6 ND Extension:
    No" and the flow is refused with OFPBAC_BAD_SET_ARGUMENT, failing the whole bundle). There
    the responder tables stay empty (their misses drop) and a pod's solicitations go unanswered
    (docs/pipeline.md, "Per datapath")."""
    for nd_type in ND_TYPES:
        yield _flow(Table.SPOOF_GUARD, Priority.ND_GUARD, _nd_match(nd_type), ())
    if datapath != "netdev":
        return
    gateway = EUI(GATEWAY_MAC)
    yield _flow(Table.NDP_RESPONDER, Priority.NORMAL, _nd_match(ND_NEIGHBOR_SOLICIT), (
        Move("eth_src", "eth_dst"),
        SetField.of("eth_src", gateway),
        Move("ipv6_src", "ipv6_dst"),
        Move("nd_target", "ipv6_src"),  # the advertised address answers (hop limit stays 255)
        SetField("icmpv6_type", ND_NEIGHBOR_ADVERT),
        SetField("nd_reserved", NA_FLAGS_ROUTER_SOLICITED_OVERRIDE),
        SetField("nd_options_type", ND_OPT_TARGET_LINKADDR),  # the NS's source link-layer option
        GotoTable(Table.NDP_ADVERTISEMENT),
    ))
    yield _flow(Table.NDP_ADVERTISEMENT, Priority.NORMAL, _nd_match(ND_NEIGHBOR_ADVERT),
                (SetField.of("nd_tll", gateway), OutputInPort()))


def _nd_match(nd_type: int, **fields: FieldInput) -> Match:
    return Match.build("icmp6", icmpv6_type=nd_type, icmpv6_code=0, **fields)


def _solicit_to_responder(**fields: FieldInput) -> tuple[Match, tuple[Action, ...]]:
    """SpoofGuard's pass for a Neighbor Solicitation (above the ND drop)."""
    return _nd_match(ND_NEIGHBOR_SOLICIT, **fields), (GotoTable(Table.NDP_RESPONDER),)


def _misses() -> Iterator[Flow]:
    drop: tuple[Action, ...] = ()
    misses: dict[Table, tuple[Action, ...]] = {
        Table.CLASSIFIER: drop,
        Table.SPOOF_GUARD: drop,
        Table.ARP_RESPONDER: drop,
        Table.NDP_RESPONDER: drop,
        Table.NDP_ADVERTISEMENT: drop,
        Table.CONNTRACK: drop,
        Table.CONNTRACK_STATE: drop,
        Table.SCTP_REPLY: drop,  # reached by resubmit only: a miss just learns nothing
        Table.SCTP_REPLY_VERDICT: (GotoTable(Table.EGRESS_ADMIN),),
        # an eligible packet no pod's fast flow took: walk the egress rules, re-checked
        Table.EGRESS_FAST: (SetField(REG_FLAGS, FLAG_FAST_ELIGIBLE | FLAG_RECHECKED), GotoTable(Table.EGRESS_ADMIN)),
        Table.EGRESS_ADMIN: (GotoTable(Table.EGRESS_RULE),),
        Table.EGRESS_RULE: (GotoTable(Table.EGRESS_DEFAULT),),
        Table.EGRESS_DEFAULT: (GotoTable(Table.EGRESS_BASELINE),),
        Table.EGRESS_BASELINE: (GotoTable(Table.L3_FORWARDING),),
        Table.L3_FORWARDING: drop,
        Table.INGRESS_FAST: (GotoTable(Table.INGRESS_ADMIN),),
        Table.INGRESS_ADMIN: (GotoTable(Table.INGRESS_RULE),),
        Table.INGRESS_RULE: (GotoTable(Table.INGRESS_DEFAULT),),
        Table.INGRESS_DEFAULT: (GotoTable(Table.INGRESS_BASELINE),),
        Table.INGRESS_BASELINE: (GotoTable(Table.COMMIT),),
        Table.COMMIT: (GotoTable(Table.OUTPUT),),
        Table.EGRESS_STAMP: drop,  # reached by resubmit only: non-IP never gets there
        Table.INGRESS_STAMP: drop,  # a destination that is no local pod: nothing to stamp
        Table.OUTPUT: drop,
    }
    for table, actions in misses.items():
        yield _flow(table, Priority.MISS, Match(), actions)


def _arp_reply_actions() -> tuple[Action, ...]:
    """Proxy ARP: every request is answered with the virtual gateway's MAC (pure L3 fabric)."""
    gateway = EUI(GATEWAY_MAC)
    return (
        Move("eth_src", "eth_dst"),
        SetField.of("eth_src", gateway),
        SetField("arp_op", 2),
        Move("arp_sha", "arp_tha"),
        SetField.of("arp_sha", gateway),
        Move("arp_tpa", _SCRATCH_REG),
        Move("arp_spa", "arp_tpa"),
        Move(_SCRATCH_REG, "arp_spa"),
        OutputInPort(),
    )


def _conntrack_state_flows() -> Iterator[Flow]:
    table = Table.CONNTRACK_STATE
    yield _flow(table, Priority.INVALID, Match.build(ct_state=ct_state(inv=True, trk=True)), ())
    bypass = (SetField(REG_FLAGS, FLAG_BYPASS), GotoTable(Table.L3_FORWARDING))
    yield _flow(table, Priority.BYPASS, Match.build(ct_state=ct_state(est=True, rpl=True, trk=True)), bypass)
    yield _flow(table, Priority.BYPASS, Match.build(ct_state=ct_state(rel=True, trk=True)), bypass)
    yield _flow(table, Priority.DEFAULT, Match.build(ct_state=ct_state(trk=True)), (GotoTable(Table.EGRESS_ADMIN),))


def _fastpath_flows() -> Iterator[Flow]:
    """The fixed part of the fast path (docs/pipeline.md, "Established connections: the fast
    path"; the per-pod part is compiler/fastpath.py). ConntrackState marks original-direction
    established TCP and UDP packets eligible (reg3 bit 3) and sends them to EgressFast; SCTP
    never: OVS 3.1 tracks it without ports, so it walks the rules per port as before (450
    catches it first). A packet that misses a fast table walks that direction's rules marked
    re-checked (reg3 bit 4), and Commit then writes the fingerprints into its ct_label again
    (EgressStamp, IngressStamp). A policy-checked +new packet is stamped the same way."""
    eligible, rechecked = FLAG_FAST_ELIGIBLE, FLAG_FAST_ELIGIBLE | FLAG_RECHECKED
    established = ct_state(est=True, rpl=False, trk=True)
    for proto in FAST_PROTOCOLS:
        yield _flow(Table.CONNTRACK_STATE, Priority.FAST_ELIGIBLE, Match.build(proto, ct_state=established),
                    (SetField(REG_FLAGS, eligible), GotoTable(Table.EGRESS_FAST)))
    yield _flow(Table.INGRESS_FAST, Priority.DEFAULT, Match.build(None, **{REG_FLAGS: (eligible, rechecked)}),
                (SetField(REG_FLAGS, rechecked), GotoTable(Table.INGRESS_ADMIN)))
    stamp = (Resubmit(Table.EGRESS_STAMP), Resubmit(Table.INGRESS_STAMP), GotoTable(Table.OUTPUT))
    for family in _IP_FAMILIES:
        checked_new = Match.build(family, ct_state=ct_state(new=True, trk=True), **{REG_FLAGS: (0, FLAG_BYPASS)})
        yield _flow(Table.COMMIT, Priority.COMMIT_STAMP_NEW, checked_new, stamp)
        yield _flow(Table.COMMIT, Priority.COMMIT_STAMP_RECHECKED,
                    Match.build(family, **{REG_FLAGS: (FLAG_RECHECKED, FLAG_RECHECKED)}), stamp)
        yield _flow(Table.EGRESS_STAMP, Priority.DEFAULT, Match.build(family), (Ct(commit=True, zone=CT_ZONE),))


def _sctp_reply_flows() -> Iterator[Flow]:
    """OVS 3.1 tracks SCTP without ports, so conntrack's direction and `+est`/`+rpl` say
    nothing about an SCTP packet's association: an entry made by B→A makes a later A→B
    packet look like a reply, and B's answer to it look like an original. So every SCTP
    packet first asks table 32 whether it is the exact reply 5-tuple of a packet policy
    allowed (learned below): then it passes like any reply; otherwise it is checked as an
    original-direction packet, and if allowed, learns its own reply 5-tuple. A server can
    therefore answer exactly the associations policy admitted, and open none of its own."""
    learned_cookie = cookie(CookieCategory.LEARNED)
    checked = (0, FLAG_BYPASS)  # not passed as a learned reply: policy checked it
    for version, proto in ((4, "sctp"), (6, "sctp6")):
        tracked = Match.build(proto, ct_state=ct_state(trk=True))
        yield _flow(Table.CONNTRACK_STATE, Priority.SCTP_REPLY, tracked,
                    (Resubmit(Table.SCTP_REPLY), GotoTable(Table.SCTP_REPLY_VERDICT)))
        learn = LearnReply(Table.SCTP_REPLY, Priority.NORMAL, SCTP_REPLY_IDLE_TIMEOUT, learned_cookie, version,
                           REG_FLAGS, FLAG_SCTP_REPLY_BIT)
        allowed = Match.build(proto, ct_state=ct_state(trk=True), **{REG_FLAGS: checked})
        yield _flow(Table.COMMIT, Priority.NORMAL + 10, allowed,
                    (Ct(commit=True, zone=CT_ZONE), learn, GotoTable(Table.OUTPUT)))
    learned = Match.build(None, **{REG_FLAGS: (FLAG_SCTP_REPLY, FLAG_SCTP_REPLY)})
    yield _flow(Table.SCTP_REPLY_VERDICT, Priority.NORMAL, learned,
                (SetField(REG_FLAGS, FLAG_BYPASS), GotoTable(Table.L3_FORWARDING)))


def _edge_port_flows(node: NodeContext) -> Iterator[Flow]:
    """Tunnel and gateway ports: classified, trusted for source addresses, outputs."""
    edges = [(node.tunnel_port, PortClass.TUNNEL), (node.gateway_port, PortClass.GATEWAY)]
    for port, port_class in edges:
        if port is None:
            continue
        yield _flow(Table.CLASSIFIER, Priority.NORMAL, Match.build(in_port=port),
                    (SetField(REG_PORT_CLASS, port_class), GotoTable(Table.SPOOF_GUARD)))
        # egress policy is the sending pod's node's: the egress tiers match pods' in_ports only
        yield _flow(Table.EGRESS_FAST, Priority.NORMAL, Match.build(in_port=port), (GotoTable(Table.L3_FORWARDING),))
        for family in _IP_FAMILIES:
            yield _flow(Table.SPOOF_GUARD, Priority.NORMAL, Match.build(family, in_port=port),
                        (GotoTable(Table.CONNTRACK),))
        if port_class == PortClass.GATEWAY:
            yield _flow(Table.SPOOF_GUARD, Priority.NORMAL, Match.build("arp", in_port=port),
                        (GotoTable(Table.ARP_RESPONDER),))
            yield _flow(Table.SPOOF_GUARD, Priority.ND_SOLICIT, *_solicit_to_responder(in_port=port))
            yield from _gateway_route(node, port)
        yield _flow(Table.OUTPUT, Priority.NORMAL, Match.build(None, **{REG_OUT_PORT: port}), (Output(port),))


def _gateway_route(node: NodeContext, port: int) -> Iterator[Flow]:
    """Addresses that are no pod's leave through the gateway (lowest L3 priority)."""
    rewrite: tuple[Action, ...] = (SetField.of("eth_src", EUI(GATEWAY_MAC)),)
    if node.gateway_peer_mac is not None:
        rewrite += (SetField.of("eth_dst", node.gateway_peer_mac),)
    local_side = (PortClass.POD & LOCAL_SIDE_MASK, LOCAL_SIDE_MASK)
    for family in _IP_FAMILIES:
        match = Match.build(family, **{REG_PORT_CLASS: local_side})
        yield _flow(Table.L3_FORWARDING, Priority.DEFAULT - 50, match,
                    (*rewrite, DecTtl(), SetField(REG_OUT_PORT, port), GotoTable(Table.COMMIT)))


def local_pod_flows(binding: PortBinding) -> tuple[Flow, ...]:
    """A local pod: classified, held to its own MAC and IPs, reachable, outputtable.

    Cached per binding so an unchanged pod yields the very same Flow objects on the next
    compile, which the diff recognises without comparing them."""
    return _local_pod_flows(binding)


@lru_cache(maxsize=1 << 16)
def _local_pod_flows(binding: PortBinding) -> tuple[Flow, ...]:
    pod_cookie = cookie(CookieCategory.POD, pod_object_id(str(binding.pod)))
    port = binding.ofport
    flows = [Flow(Table.CLASSIFIER, Priority.NORMAL, Match.build(in_port=port),
                  (SetField(REG_PORT_CLASS, PortClass.POD), GotoTable(Table.SPOOF_GUARD)), pod_cookie)]
    for ip in neighbor_addresses(binding):  # its IPv6 addresses, link-local included
        match, to_responder = _solicit_to_responder(in_port=port, dl_src=binding.mac, ipv6_src=ip)
        flows.append(Flow(Table.SPOOF_GUARD, Priority.ND_SOLICIT, match, to_responder, pod_cookie))
    for ip in binding.ips:
        family, src_field, dst_field = _family_fields(ip)
        flows.append(Flow(Table.SPOOF_GUARD, Priority.NORMAL,
                          Match.build(family, in_port=port, dl_src=binding.mac, **{src_field: ip}),
                          (GotoTable(Table.CONNTRACK),), pod_cookie))
        if ip.version == 4:
            flows.append(Flow(Table.SPOOF_GUARD, Priority.NORMAL,
                              Match.build("arp", in_port=port, dl_src=binding.mac, arp_spa=ip, arp_sha=binding.mac),
                              (GotoTable(Table.ARP_RESPONDER),), pod_cookie))
        actions: tuple[Action, ...] = (
            SetField.of("eth_src", EUI(GATEWAY_MAC)),
            SetField.of("eth_dst", binding.mac),
            DecTtl(),
            SetField(REG_OUT_PORT, port),
            GotoTable(Table.INGRESS_FAST),
        )
        flows.append(Flow(Table.L3_FORWARDING, Priority.NORMAL, Match.build(family, **{dst_field: ip}), actions,
                          pod_cookie))
    flows.append(Flow(Table.OUTPUT, Priority.NORMAL, Match.build(None, **{REG_OUT_PORT: port}), (Output(port),),
                      pod_cookie))
    return tuple(flows)


def remote_pod_flows(pod: Pod, node: NodeContext) -> tuple[Flow, ...]:
    """A pod on another node: packets from this node's side go through the tunnel to it.
    Addresses inside that node's pod CIDR need no flow of their own (node_route_flows)."""
    host = node.address_of(pod.node_name or "")
    if node.tunnel_port is None or host is None or host.version != 4:
        return ()
    ips = tuple(ip for ip in pod.ips if not node.routed_by_cidr(pod.node_name or "", ip))
    return _remote_routes(f"{pod.namespace}/{pod.name}", ips, host, node.tunnel_port) if ips else ()


def node_route_flows(node: NodeContext) -> Iterator[Flow]:
    """One route per other node's pod CIDR: pods coming and going there change no flow here."""
    if node.tunnel_port is None:
        return
    for name, cidr in node.node_cidrs:
        host = node.address_of(name)
        if name == node.name or host is None or host.version != 4:
            continue
        family, _, dst_field = _family_fields(cidr.ip)
        local_side = (PortClass.POD & LOCAL_SIDE_MASK, LOCAL_SIDE_MASK)
        match = Match.build(family, **{REG_PORT_CLASS: local_side, dst_field: cidr})
        actions: tuple[Action, ...] = (
            SetField.of("tun_dst", host),
            SetField("tun_id", TUNNEL_VNI),
            SetField(REG_OUT_PORT, node.tunnel_port),
            GotoTable(Table.COMMIT),
        )
        yield Flow(Table.L3_FORWARDING, Priority.NODE_ROUTE, match, actions,
                   cookie(CookieCategory.REMOTE, stable_id(f"node:{name}")))


@lru_cache(maxsize=1 << 17)
def _remote_routes(pod_ref: str, ips: tuple[IPAddress, ...], host: IPAddress, tunnel_port: int) -> tuple[Flow, ...]:
    pod_cookie = cookie(CookieCategory.REMOTE, pod_object_id(pod_ref))
    local_side = (PortClass.POD & LOCAL_SIDE_MASK, LOCAL_SIDE_MASK)
    flows = []
    for ip in ips:
        family, _, dst_field = _family_fields(ip)
        match = Match.build(family, **{REG_PORT_CLASS: local_side, dst_field: ip})
        actions: tuple[Action, ...] = (
            SetField.of("tun_dst", host),
            SetField("tun_id", TUNNEL_VNI),
            SetField(REG_OUT_PORT, tunnel_port),
            GotoTable(Table.COMMIT),
        )
        flows.append(Flow(Table.L3_FORWARDING, Priority.NORMAL, match, actions, pod_cookie))
    return tuple(flows)


def _family_fields(ip: IPAddress) -> tuple[str, str, str]:
    if ip.version == 4:
        return "ip", "nw_src", "nw_dst"
    return "ipv6", "ipv6_src", "ipv6_dst"


def _flow(table: Table, priority: int, match: Match, actions: tuple[Action, ...]) -> Flow:
    return Flow(int(table), int(priority), match, actions, PIPELINE_COOKIE)
