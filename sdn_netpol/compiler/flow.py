"""OpenFlow flows as frozen values: the vocabulary shared by the compiler, the controller
and the golden files.

A flow is `(table, priority, match, actions, cookie)`. Values are canonical, so two flows
that OVS would store as one entry compare equal: a `Match` keeps its fields in one order
(the order `ovs-ofctl dump-flows` prints them), folds host bits into the mask
(10.0.0.1/8 == 10.0.0.0/8), turns an all-ones mask into an exact match and drops a
zero mask. Whatever OVS would reject or silently rewrite (a field without its
prerequisite, `conjunction` mixed with other actions, `goto_table` backwards, `ct` on a
non-IP match, ...) is refused at construction, so a value that exists can be installed
and reads back from the switch as itself.

Names follow the text OVS prints: match fields as in matches (`dl_src`, `nw_dst`,
`icmp_type`; ICMPv6 is `icmpv6_type` here because the value layer must tell it apart),
action fields as in actions (`set_field:...->eth_src`). Nothing here renders text or
OpenFlow messages: `ofctl.py` and `osken.py` do.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import repeat

from sdn_netpol.compiler.flowfields import (
    ACTION_FIELDS,
    ACTION_PREREQUISITES,
    CT_FIELDS,
    CT_STATE_ALL,
    CT_STATE_FLAGS,
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    ETH_TYPE_IPV6,
    FIELD_ORDER,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    MASKED_SET_FIELDS,
    MATCH_FIELDS,
    OFPP_LOCAL,
    OFPP_MAX,
    PROTOCOLS,
    SET_ONLY_FIELDS,
    FieldInput,
    FieldSpec,
    ct_state,
    field_value,
)

__all__ = [
    "CT_STATE_FLAGS",
    "OFPP_LOCAL",
    "PROTOCOLS",
    "Action",
    "Conjunction",
    "Controller",
    "Ct",
    "DecTtl",
    "Flow",
    "FlowId",
    "GotoTable",
    "LearnReply",
    "Match",
    "MatchField",
    "Move",
    "Output",
    "OutputInPort",
    "Resubmit",
    "SetField",
    "ct_state",
    "subfield_of",
    "writable_fields",
]

_CS_INV = CT_STATE_FLAGS["inv"]
MAX_TABLE = 253  # OVS hides table 254 and reserves 255
COOKIE_RESERVED = (1 << 64) - 1  # OVS uses all-ones as "no cookie" internally

@dataclass(frozen=True)
class MatchField:
    """One matched field; `mask=None` means exact. Build through `Match`, which canonicalises."""

    name: str
    value: int
    mask: int | None = None

    def sort_key(self) -> tuple[int, int, int]:
        return (FIELD_ORDER[self.name], self.value, -1 if self.mask is None else self.mask)


def _canonical(f: MatchField) -> MatchField | None:
    spec = MATCH_FIELDS.get(f.name)
    if spec is None:
        raise ValueError(f"unknown match field {f.name!r}")
    mask = f.mask
    if not 0 <= f.value <= spec.full or not (mask is None or 0 <= mask <= spec.full):
        raise ValueError(f"{f.name}: value or mask out of range for {spec.bits} bits")
    if spec.kind == "ct_state":
        if mask is None or mask & ~CT_STATE_ALL:
            raise ValueError(f"ct_state: mask must be a subset of {CT_STATE_ALL:#x}")
    elif mask == spec.full:
        mask = None
    if spec.kind == "port":
        _check_port(f.value, f.name)
    if mask is not None and not spec.maskable:
        raise ValueError(f"{f.name} cannot be masked")
    if mask == 0:
        return None
    if spec.kind == "ipv6" and mask is not None and not _is_prefix(mask, spec.bits):
        # OVS reads "::/0:ff::" as prefix length 0 plus garbage: it cannot load what it
        # would print for such a mask. Prefixes are all a NetworkPolicy needs anyway.
        raise ValueError(f"{f.name}: IPv6 masks must be prefixes (/N), got {mask:#x}")
    return MatchField(f.name, f.value if mask is None else f.value & mask, mask)


def _is_prefix(mask: int, bits: int) -> bool:
    inverted = ((1 << bits) - 1) ^ mask
    return inverted & (inverted + 1) == 0


@dataclass(frozen=True)
class Match:
    """An immutable, canonical set of matched fields (see the module docstring)."""

    fields: tuple[MatchField, ...] = ()

    def __post_init__(self) -> None:
        canon = sorted(
            (c for c in map(_canonical, self.fields) if c is not None),
            key=MatchField.sort_key,
        )
        names = [f.name for f in canon]
        if len(set(names)) != len(names):
            raise ValueError(f"a field is matched twice in {names}")
        object.__setattr__(self, "fields", tuple(canon))
        _check_prerequisites(self)
        # hashed once: matches key every dict the compiler, FlowSet and diff build
        object.__setattr__(self, "_hash", hash(self.fields))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined, no-any-return]

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return isinstance(other, Match) and self._hash == other._hash and self.fields == other.fields  # type: ignore[attr-defined]

    @classmethod
    def build(cls, proto: str | None = None, **fields: FieldInput) -> Match:
        """Match.build("tcp", nw_dst=IPNetwork("10.0.0.0/8"), tp_dst=(0x1000, 0xf000))."""
        built = [MatchField(n, *field_value(_match_spec(n), raw)) for n, raw in fields.items()]
        if proto is not None:
            if proto not in PROTOCOLS:
                raise ValueError(f"unknown protocol shorthand {proto!r}")
            dl_type, nw_proto = PROTOCOLS[proto]
            built.append(MatchField("dl_type", dl_type))
            if nw_proto is not None:
                built.append(MatchField("nw_proto", nw_proto))
        return cls(tuple(built))

    def replace(self, **fields: FieldInput | None) -> Match:
        """A copy with fields set (or removed, given None)."""
        kept = [f for f in self.fields if f.name not in fields]
        new = [MatchField(n, *field_value(_match_spec(n), raw))
               for n, raw in fields.items() if raw is not None]
        return Match((*kept, *new))

    def get(self, name: str) -> MatchField | None:
        return next((f for f in self.fields if f.name == name), None)

    def value(self, name: str) -> int | None:
        found = self.get(name)
        return None if found is None else found.value

    def __iter__(self) -> Iterator[MatchField]:
        return iter(self.fields)

    def sort_key(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(f.sort_key() for f in self.fields)


def _match_spec(name: str) -> FieldSpec:
    if name not in MATCH_FIELDS:
        raise ValueError(f"unknown match field {name!r}")
    return MATCH_FIELDS[name]


_IP_ANY = frozenset({ETH_TYPE_IP, ETH_TYPE_IPV6})
_L4_PORTS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP})


def _satisfied(m: Match) -> dict[str, bool]:
    """Which prerequisites (the names _PREREQ and ACTION_PREREQUISITES use) `m` meets."""
    dl_type, proto = m.value("dl_type"), m.value("nw_proto")
    icmp6 = dl_type == ETH_TYPE_IPV6 and proto == IPPROTO_ICMPV6
    nd_type = m.value("icmpv6_type") if icmp6 and not m.value("icmpv6_code") else None
    return {
        "ipv6": dl_type == ETH_TYPE_IPV6, "ip": dl_type == ETH_TYPE_IP,
        "arp": dl_type == ETH_TYPE_ARP, "ip_any": dl_type in _IP_ANY,
        "l4": dl_type in _IP_ANY and proto in _L4_PORTS,
        "icmp": dl_type == ETH_TYPE_IP and proto == IPPROTO_ICMP,
        "icmp6": icmp6, "nd": nd_type in (135, 136), "nd_advert": nd_type == 136,
    }


def _check_prerequisites(m: Match) -> None:
    """Refuse what OVS would reject or silently drop (so every Match round-trips)."""
    needs = _satisfied(m)
    for f in m.fields:
        need = _PREREQ.get(f.name)
        if need is not None and not needs[need]:
            raise ValueError(f"{f.name} needs a {need} match (OVS would reject or drop it)")


def writable_fields(match: Match) -> frozenset[str]:
    """The action fields a flow with `match` may write or move (ct_mark and ct_label aside)."""
    needs = _satisfied(match)
    return frozenset(name for name in ACTION_FIELDS
                     if name not in CT_FIELDS and needs.get(ACTION_PREREQUISITES.get(name, ""), True))


_PREREQ: Mapping[str, str] = {
    "ipv6_src": "ipv6", "ipv6_dst": "ipv6", "nw_src": "ip", "nw_dst": "ip",
    "nw_proto": "ip_any", "arp_spa": "arp", "arp_tpa": "arp", "arp_op": "arp",
    "arp_sha": "arp", "arp_tha": "arp", "icmp_type": "icmp", "icmp_code": "icmp",
    "icmpv6_type": "icmp6", "icmpv6_code": "icmp6", "nd_target": "nd", "tp_dst": "l4",
}


def _check_port(port: int, what: str) -> None:
    if not (0 < port < OFPP_MAX or port == OFPP_LOCAL):
        raise ValueError(f"{what}: port {port} is not 1..{OFPP_MAX - 1} or LOCAL")


def _check_table(table: int, what: str) -> None:
    if not 0 <= table <= MAX_TABLE:
        raise ValueError(f"{what}: table {table} is not 0..{MAX_TABLE}")


def _action_spec(name: str) -> FieldSpec:
    if name not in ACTION_FIELDS:
        raise ValueError(f"unsupported action field {name!r}")
    return ACTION_FIELDS[name]


@dataclass(frozen=True)
class Output:
    port: int

    def __post_init__(self) -> None:
        _check_port(self.port, "output")


@dataclass(frozen=True)
class OutputInPort:
    """Send back where the packet came from (plain output to in_port is dropped by OVS)."""


@dataclass(frozen=True)
class Resubmit:
    table: int

    def __post_init__(self) -> None:
        _check_table(self.table, "resubmit")


@dataclass(frozen=True)
class GotoTable:
    """OpenFlow 1.3 goto_table: last action of a flow, forward only."""

    table: int

    def __post_init__(self) -> None:
        _check_table(self.table, "goto_table")


@dataclass(frozen=True)
class Conjunction:
    """`conjunction(id, clause/n_clauses)`; clause is 1-based as in the ovs text."""

    id: int
    clause: int
    n_clauses: int

    def __post_init__(self) -> None:
        if not 0 <= self.id <= 0xFFFFFFFF:
            raise ValueError(f"conjunction id {self.id} is not 32-bit")
        if not (2 <= self.n_clauses <= 64 and 1 <= self.clause <= self.n_clauses):
            raise ValueError(f"conjunction clause {self.clause}/{self.n_clauses} is invalid")
        # hashed once: a shared clause flow hashes a thousand of these
        object.__setattr__(self, "_hash", hash((self.id, self.clause, self.n_clauses)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined, no-any-return]


@dataclass(frozen=True)
class SetField:
    """`set_field:VALUE->FIELD`, or `set_field:VALUE/MASK->FIELD` (only the mask's bits change).

    A mask is allowed on ct_label only (MASKED_SET_FIELDS) and must be one run of at most 64
    bits: OVS sends such a write to an OpenFlow 1.3 controller as one NXAST_REG_LOAD, and so
    do ofwire.py and osken.py, so what the controller sends and reads back is one form."""

    field: str
    value: int
    mask: int | None = None

    def __post_init__(self) -> None:
        limit = 0xFF if self.field == "arp_op" else _action_spec(self.field).full
        if not 0 <= self.value <= limit:  # arp_op is a 16-bit field OVS keeps in 8 bits
            raise ValueError(f"set_field {self.field}: value {self.value} out of range")
        if self.mask is not None:
            if self.field not in MASKED_SET_FIELDS:
                raise ValueError(f"set_field {self.field}: whole fields only, got a mask")
            if subfield_of(self.mask) is None or self.value & ~self.mask or self.mask > limit:
                raise ValueError(f"set_field {self.field}: mask {self.mask:#x} is not one run of 1..64 bits "
                                 "holding the value")

    @classmethod
    def of(cls, name: str, raw: FieldInput) -> SetField:
        """SetField.of("eth_src", "aa:bb:cc:dd:ee:ff") and the like."""
        value, mask = field_value(_action_spec(name), raw)
        if mask is not None:
            raise ValueError(f"set_field {name}: whole fields only, got a mask")
        return cls(name, value)


def subfield_of(mask: int) -> tuple[int, int] | None:
    """(offset, n_bits) of a mask that is one run of 1..64 set bits, else None."""
    if mask <= 0:
        return None
    offset = (mask & -mask).bit_length() - 1
    n_bits = (mask >> offset).bit_length()
    if (mask >> offset) != (1 << n_bits) - 1 or n_bits > 64:
        return None
    return offset, n_bits


@dataclass(frozen=True)
class Move:
    """Copy a whole field onto another of the same width (`move:A[]->B[]`)."""

    src_field: str
    dst_field: str

    def __post_init__(self) -> None:
        src, dst = _action_spec(self.src_field), _action_spec(self.dst_field)
        if src.bits != dst.bits:
            raise ValueError(f"move {src.name}->{dst.name}: widths {src.bits} != {dst.bits}")
        if dst.name in CT_FIELDS:
            raise ValueError(f"{dst.name} can only be written inside ct(commit, exec(...))")
        if {src.name, dst.name} & SET_ONLY_FIELDS:
            raise ValueError(f"move {src.name}->{dst.name}: {sorted(SET_ONLY_FIELDS)} can only be set")


@dataclass(frozen=True)
class DecTtl:
    pass


@dataclass(frozen=True)
class Ct:
    """`ct(commit, table=, zone=, exec(set_field:...->ct_mark))`; table None = no recirculation."""

    commit: bool = False
    table: int | None = None
    zone: int = 0
    exec_actions: tuple[SetField, ...] = ()

    def __post_init__(self) -> None:
        if self.table is not None:
            _check_table(self.table, "ct")
        if not 0 <= self.zone <= 0xFFFF:
            raise ValueError(f"ct zone {self.zone} is not 16-bit")
        if self.exec_actions and not self.commit:
            raise ValueError("ct exec(...) needs commit")
        if any(not isinstance(a, SetField) or a.field not in CT_FIELDS for a in self.exec_actions):
            raise ValueError("ct exec(...) may only set ct_mark or ct_label")


@dataclass(frozen=True)
class LearnReply:
    """`learn(...)` of a flow that matches the *reply* of this SCTP packet (addresses and ports
    swapped) in `table` and sets one flag bit. OVS 3.1's userspace conntrack tracks SCTP without
    ports, so `+rpl` alone would admit any packet between two addresses that share one
    association; the learned 5-tuple admits exactly the replies of what policy allowed."""

    table: int
    priority: int
    idle_timeout: int
    cookie: int
    ip_version: int
    flag_reg: str
    flag_bit: int

    def __post_init__(self) -> None:
        _check_table(self.table, "learn")
        if self.ip_version not in (4, 6):
            raise ValueError(f"learn: IP version {self.ip_version} is not 4 or 6")
        if not (self.flag_reg.startswith("reg") and self.flag_reg in ACTION_FIELDS and 0 <= self.flag_bit < 32):
            raise ValueError(f"learn: {self.flag_reg}[{self.flag_bit}] is not a register bit")
        in_range = 0 <= self.priority <= 0xFFFF and 0 <= self.idle_timeout <= 0xFFFF
        if not (in_range and 0 <= self.cookie < COOKIE_RESERVED):
            raise ValueError("learn: priority, idle_timeout or cookie out of range")


@dataclass(frozen=True)
class Controller:
    """`controller(userdata=XX.XX)`: a copy of the packet to the controller as a packet-in
    (reason `action`, whole packet), tagged with `userdata`. An output, not a verdict: the
    packet goes on with the next action. No `meter_id=`: os-ken 4.2 can neither encode nor
    parse that property, and the bridge's `controller` meter limits every packet-in anyway."""

    userdata: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.userdata) <= 64:
            raise ValueError(f"controller userdata must be 1..64 bytes, got {len(self.userdata)}")


Action = (
    Output | OutputInPort | Resubmit | GotoTable | Conjunction | Ct | SetField | Move | DecTtl | LearnReply
    | Controller
)


def action_key(a: Action) -> tuple[object, ...]:
    """A total order over actions of different types (for deterministic sorting)."""
    if isinstance(a, Ct):
        return ("Ct", a.commit, -1 if a.table is None else a.table, a.zone,
                tuple(action_key(e) for e in a.exec_actions))
    if isinstance(a, SetField):
        return ("SetField", a.field, a.value, -1 if a.mask is None else a.mask)
    return (type(a).__name__, *(getattr(a, n) for n in a.__dataclass_fields__))


@functools.total_ordering
@dataclass(frozen=True)
class FlowId:
    """OpenFlow identity of a flow entry: at most one per (table, priority, match)."""

    table: int
    priority: int
    match: Match

    def sort_key(self) -> tuple[object, ...]:
        return (self.table, -self.priority, self.match.sort_key())

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, FlowId):
            return NotImplemented
        return self.sort_key() < other.sort_key()


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class Flow:
    """One flow entry. Sorted like a reader scans a table: table up, priority down."""

    table: int
    priority: int
    match: Match = Match()
    actions: tuple[Action, ...] = ()
    cookie: int = 0

    def __post_init__(self) -> None:
        _check_table(self.table, "flow")
        if not 0 <= self.priority <= 0xFFFF:
            raise ValueError(f"priority {self.priority} is not 16-bit")
        if not 0 <= self.cookie < COOKIE_RESERVED:
            raise ValueError(f"cookie {self.cookie:#x} is not 64-bit or is the reserved -1")
        _check_actions(self)
        object.__setattr__(self, "_id", FlowId(self.table, self.priority, self.match))
        # hashed once: a clause flow can carry a thousand conjunction() actions, and flows key
        # the compiler's fragment counts and the controller's FlowMod cache
        object.__setattr__(self, "_hash", hash((self.table, self.priority, self.match, self.actions, self.cookie)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined, no-any-return]

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Flow) or self._hash != other._hash:  # type: ignore[attr-defined]
            return False
        return (self.table, self.priority, self.match, self.actions, self.cookie) == (
            other.table, other.priority, other.match, other.actions, other.cookie)

    @property
    def id(self) -> FlowId:
        return self._id  # type: ignore[attr-defined, no-any-return]  # made once: diffs look it up a lot

    def sort_key(self) -> tuple[object, ...]:
        return (*self.id.sort_key(), tuple(action_key(a) for a in self.actions), self.cookie)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Flow):
            return NotImplemented
        return self.sort_key() < other.sort_key()


def _check_actions(flow: Flow) -> None:
    """Refuse action lists OVS rejects for this match (OFPBAC_MATCH_INCONSISTENT & co)."""
    acts = flow.actions
    conj = sum(map(isinstance, acts, repeat(Conjunction, len(acts))))  # C-level: clause flows are long
    if conj and conj != len(acts):
        raise ValueError("conjunction actions cannot be mixed with other actions")
    if conj:
        return  # nothing below applies to conjunction(); clause flows carry hundreds of them
    dl_type = flow.match.value("dl_type")
    for i, a in enumerate(acts):
        if isinstance(a, GotoTable) and (i != len(acts) - 1 or a.table <= flow.table):
            raise ValueError("goto_table must be the last action and go to a later table")
        if isinstance(a, (Ct, DecTtl, LearnReply)) and dl_type not in _IP_ANY:
            raise ValueError(f"{type(a).__name__} needs an ip or ipv6 match")
        if isinstance(a, Ct) and a.commit and (flow.match.value("ct_state") or 0) & _CS_INV:
            raise ValueError("ct(commit) on a +inv match is refused by OVS")
        written = {a.field} if isinstance(a, SetField) else (
            {a.src_field, a.dst_field} if isinstance(a, Move) else set())
        unmet = sorted(n for n in written if n in ACTION_PREREQUISITES and n not in writable_fields(flow.match))
        if unmet:
            raise ValueError(f"{unmet} needs a {ACTION_PREREQUISITES[unmet[0]]} match")
        if isinstance(a, SetField) and a.field in CT_FIELDS:
            raise ValueError(f"{a.field} can only be written inside ct(commit, exec(...))")
