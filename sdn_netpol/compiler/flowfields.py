"""Field vocabulary of OpenFlow matches and actions: names, widths, value syntax.

Split from `flow.py` so the values module stays small. Names follow the text OVS prints
(`dl_src` in matches, `eth_src` in set_field). The parsers here read single values the
way OVS writes them, so both `Match.build` and the `ovs-ofctl` parser share them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from netaddr import EUI, IPAddress, IPNetwork

Kind = Literal["int", "mac", "ipv4", "ipv6", "ct_state", "port"]

ETH_TYPE_IP, ETH_TYPE_IPV6, ETH_TYPE_ARP = 0x0800, 0x86DD, 0x0806
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, IPPROTO_SCTP = 1, 6, 17, 58, 132
OFPP_LOCAL = 0xFFFE  # the bridge's own port; OVS prints it as LOCAL
OFPP_MAX = 0xFF00  # physical/logical ports are 1..OFPP_MAX-1

#: ct_state flags OVS can match on (snat/dnat deliberately left out: with all eight bits
#: in the mask OVS switches to a different `new|trk` print form).
CT_STATE_FLAGS: Mapping[str, int] = {
    "new": 0x01, "est": 0x02, "rel": 0x04, "rpl": 0x08, "inv": 0x10, "trk": 0x20,
}
CT_STATE_ALL = 0x3F

#: protocol shorthand -> (dl_type, nw_proto or None), as OVS prints them.
PROTOCOLS: Mapping[str, tuple[int, int | None]] = {
    "ip": (ETH_TYPE_IP, None), "ipv6": (ETH_TYPE_IPV6, None), "arp": (ETH_TYPE_ARP, None),
    "icmp": (ETH_TYPE_IP, IPPROTO_ICMP), "tcp": (ETH_TYPE_IP, IPPROTO_TCP),
    "udp": (ETH_TYPE_IP, IPPROTO_UDP), "sctp": (ETH_TYPE_IP, IPPROTO_SCTP),
    "icmp6": (ETH_TYPE_IPV6, IPPROTO_ICMPV6), "tcp6": (ETH_TYPE_IPV6, IPPROTO_TCP),
    "udp6": (ETH_TYPE_IPV6, IPPROTO_UDP), "sctp6": (ETH_TYPE_IPV6, IPPROTO_SCTP),
    # Not used by the pipeline, but OVS prints these words instead of dl_type/nw_proto:
    "igmp": (ETH_TYPE_IP, 2), "rarp": (0x8035, None), "mpls": (0x8847, None),
    "mplsm": (0x8848, None),
}


@dataclass(frozen=True)
class FieldSpec:
    """What a field is: its width, how its values are written, whether it takes a mask."""

    name: str
    bits: int
    kind: Kind
    maskable: bool

    @property
    def full(self) -> int:
        return (1 << self.bits) - 1


def _specs(*rows: tuple[str, int, Kind, bool]) -> Mapping[str, FieldSpec]:
    return {r[0]: FieldSpec(*r) for r in rows}


_REGS: tuple[tuple[str, int, Kind, bool], ...] = tuple(
    (f"reg{i}", 32, "int", True) for i in range(8)
)

#: Match fields in OVS's print order (dl_type and nw_proto sit where OVS prints them when
#: no protocol shorthand absorbs them). Sorting by this order makes matches canonical.
MATCH_FIELDS: Mapping[str, FieldSpec] = _specs(
    ("conj_id", 32, "int", False), ("ct_state", 8, "ct_state", True),
    ("ct_mark", 32, "int", True), ("ct_label", 128, "int", True), *_REGS,
    ("tun_id", 64, "int", True), ("tun_src", 32, "ipv4", True), ("tun_dst", 32, "ipv4", True),
    ("in_port", 16, "port", False), ("dl_src", 48, "mac", True), ("dl_dst", 48, "mac", True),
    ("dl_type", 16, "int", False),
    ("ipv6_src", 128, "ipv6", True), ("ipv6_dst", 128, "ipv6", True),
    ("arp_spa", 32, "ipv4", True), ("arp_tpa", 32, "ipv4", True),
    ("nw_src", 32, "ipv4", True), ("nw_dst", 32, "ipv4", True),
    ("nw_proto", 8, "int", False), ("arp_op", 8, "int", False),
    ("arp_sha", 48, "mac", True), ("arp_tha", 48, "mac", True),
    ("icmp_type", 8, "int", False), ("icmp_code", 8, "int", False),
    ("icmpv6_type", 8, "int", False), ("icmpv6_code", 8, "int", False),
    ("nd_target", 128, "ipv6", True), ("tp_dst", 16, "int", True),
)
FIELD_ORDER = {name: i for i, name in enumerate(MATCH_FIELDS)}

#: Fields actions may write (set_field) or copy (move), named as OVS prints set_field.
ACTION_FIELDS: Mapping[str, FieldSpec] = _specs(
    ("eth_src", 48, "mac", False), ("eth_dst", 48, "mac", False),
    ("arp_op", 16, "int", False), ("arp_sha", 48, "mac", False), ("arp_tha", 48, "mac", False),
    ("arp_spa", 32, "ipv4", False), ("arp_tpa", 32, "ipv4", False),
    ("tun_id", 64, "int", False), ("tun_dst", 32, "ipv4", False), *_REGS,
    ("ct_mark", 32, "int", False), ("ct_label", 128, "int", False),
    # Neighbor Discovery: what turns a Neighbor Solicitation into an Advertisement
    ("ipv6_src", 128, "ipv6", False), ("ipv6_dst", 128, "ipv6", False),
    ("nd_target", 128, "ipv6", False), ("icmpv6_type", 8, "int", False),
    ("nd_reserved", 32, "int", False), ("nd_options_type", 8, "int", False),
    ("nd_tll", 48, "mac", False),
)
ARP_ACTION_FIELDS = frozenset({"arp_op", "arp_sha", "arp_tha", "arp_spa", "arp_tpa"})
#: What the match must say before an action may write (or read) a field, as OVS checks it
#: (OFPBAC_MATCH_INCONSISTENT otherwise): "nd" is an ICMPv6 Neighbor Solicitation or
#: Advertisement (type 135/136, code 0), "nd_advert" an Advertisement only: OVS checks the
#: match, not what earlier actions made of the packet.
ACTION_PREREQUISITES: Mapping[str, str] = {
    **{name: "arp" for name in ARP_ACTION_FIELDS},
    "ipv6_src": "ipv6", "ipv6_dst": "ipv6", "icmpv6_type": "icmp6",
    "nd_target": "nd", "nd_reserved": "nd", "nd_options_type": "nd", "nd_tll": "nd_advert",
}
#: Conntrack fields: written only inside ct(commit, exec(...)), never by a plain action.
CT_FIELDS = frozenset({"ct_mark", "ct_label"})
#: Fields a set_field may write in part (value/mask): ct_label, whose halves are the two
#: directions' verdict fingerprints (docs/pipeline.md, "Established connections: the fast path").
MASKED_SET_FIELDS = frozenset({"ct_label"})
#: Fields an action may set but not move: os-ken 4.2 has no name for OVS's ND extensions and
#: writes a zero width into a move's header for them.
SET_ONLY_FIELDS = frozenset({"nd_reserved", "nd_options_type"})
#: set_field values OVS prints in decimal (the rest of the integers in hex)
DECIMAL_ACTION_FIELDS = frozenset({"arp_op", "icmpv6_type", "nd_reserved", "nd_options_type"})

FieldInput: TypeAlias = int | tuple[int, int] | str | IPNetwork | IPAddress | EUI


def field_value(spec: FieldSpec, raw: FieldInput) -> tuple[int, int | None]:
    """Turn what a caller has (int, (value, mask), text, netaddr object) into (value, mask)."""
    if isinstance(raw, bool):
        raise TypeError(f"{spec.name}: a bool is not a field value")
    if isinstance(raw, int):
        return raw, None
    if isinstance(raw, tuple):
        return int(raw[0]), int(raw[1])
    if isinstance(raw, IPNetwork):
        _check_version(spec, int(raw.version))
        return int(raw.value), int(raw.netmask)
    if isinstance(raw, IPAddress):
        _check_version(spec, int(raw.version))
        return int(raw), None
    if isinstance(raw, EUI):
        return int(raw), None
    return parse_field_text(spec, raw)


def _check_version(spec: FieldSpec, version: int) -> None:
    if spec.kind != {4: "ipv4", 6: "ipv6"}[version]:
        raise ValueError(f"{spec.name}: an IPv{version} address does not fit a {spec.kind} field")


def parse_field_text(spec: FieldSpec, text: str) -> tuple[int, int | None]:
    """Parse one value as OVS writes it (`10.0.0.0/8`, `0x10/0xf0`, `+trk-new`, `LOCAL`)."""
    if spec.kind == "ct_state":
        return parse_ct_state(text)
    if spec.kind == "port":
        return (OFPP_LOCAL if text == "LOCAL" else int(text, 0)), None
    value_text, _, mask_text = text.partition("/")
    value = _parse_scalar(spec, value_text)
    if not mask_text:
        return value, None
    if spec.kind in ("ipv4", "ipv6") and mask_text.isdigit():
        prefix = int(mask_text)
        return value, spec.full ^ ((1 << (spec.bits - prefix)) - 1)
    return value, _parse_scalar(spec, mask_text)


def _parse_scalar(spec: FieldSpec, text: str) -> int:
    if spec.kind == "mac":
        octets = text.split(":")
        if len(octets) != 6 or not all(len(o) == 2 for o in octets):
            raise ValueError(f"{spec.name}: {text!r} is not a MAC address")
        return int("".join(octets), 16)
    if spec.kind in ("ipv4", "ipv6"):
        address = IPAddress(text)
        _check_version(spec, int(address.version))
        return int(address)
    return int(text, 0)


def parse_ct_state(text: str) -> tuple[int, int]:
    """`+trk+new-est` -> (value, mask) over CT_STATE_FLAGS."""
    value = mask = 0
    for sign, name in _signed_words(text):
        bit = CT_STATE_FLAGS.get(name)
        if bit is None:
            raise ValueError(f"ct_state: unknown flag {name!r} in {text!r}")
        mask |= bit
        value |= bit if sign == "+" else 0
    return value, mask


def _signed_words(text: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(text):
        sign = text[pos]
        if sign not in "+-":
            raise ValueError(f"ct_state: expected + or - at {text[pos:]!r}")
        end = pos + 1
        while end < len(text) and text[end] not in "+-":
            end += 1
        yield sign, text[pos + 1:end]
        pos = end


def ct_state(**flags: bool) -> tuple[int, int]:
    """ct_state(trk=True, new=True, est=False) -> (value, mask): +new-est+trk."""
    return parse_ct_state("".join(("+" if on else "-") + name for name, on in flags.items()))
