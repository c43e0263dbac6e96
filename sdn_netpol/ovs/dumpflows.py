"""Parse ``ovs-ofctl -O OpenFlow15 dump-flows`` output into :class:`DumpedFlow` records.

Why: the flow compiler's text renderer emits flows in exactly the form OVS prints them, so
render -> ``--bundle replace-flows`` -> ``dump-flows`` -> :func:`parse_dump_flows` must give
back the same (table, priority, cookie, match, actions).  This module is where that dumped
form is pinned down.  Full input -> dumped table: docs/ovs-canonical-forms.md.

Line format (OVS 3.1, ``-O OpenFlow15``; OF1.3/1.4 leave out ``idle_age``, OF1.0 prints
``NXST_FLOW`` headers; the parser accepts all of them)::

     cookie=0x0, duration=0.004s, table=2, n_packets=0, n_bytes=0, idle_age=0, ...
     ... priority=7,ip,nw_dst=10.0.0.0/8 actions=drop

(one line, split here only for width).

* Stats part: ``key=value,`` items separated by ", " (``cookie``, ``duration``, ``table``,
  ``n_packets``, ``n_bytes``, ``idle_timeout``, ``hard_timeout``, ``importance``,
  ``idle_age``, ``hard_age``), plus flow-mod flags written as a bare word followed by a
  space, not a comma (``send_flow_rem idle_age=0,``).  ``--no-stats`` drops the counters and
  omits ``table=0`` and ``cookie=0x0``.
* Match part: one comma-separated token with no spaces.  ``priority=N`` comes first and is
  omitted when it is the default 32768; an empty match with the default priority leaves
  nothing at all (``idle_age=0, actions=drop``).
* Then `` actions=`` and the action list to the end of the line.

Match canonicalisation (OF1.5 and OF1.3/1.4 alike):

* Field order: ``priority``, ``conj_id``, ``ct_state``, ``ct_zone``, ``ct_mark``,
  ``ct_label``, protocol shorthand (``ip``, ``tcp``, ``udp``, ``sctp``, ``icmp``, ``ipv6``,
  ``tcp6``, ``udp6``, ``sctp6``, ``icmp6``, ``arp``), ``reg0..reg15`` ascending, ``tun_id``,
  ``tun_src``, ``tun_dst``, ``metadata``, ``in_port``, ``dl_src``, ``dl_dst``, ``nw_src``,
  ``nw_dst``/``ipv6_src``, ``ipv6_dst``, ``nw_tos``, ``nw_frag``, ``tp_src``, ``tp_dst``,
  ``icmp_type``, ``icmp_code``, ``tcp_flags``.  ``ct_*`` and ``conj_id`` come *before*
  the protocol, registers *after* it: ``reg0=0x1/0x1,ip`` dumps as ``ip,reg0=0x1/0x1``.
* ``dl_type=0x0800`` -> ``ip``; ``dl_type=0x0800,nw_proto=6`` and ``ip,nw_proto=6`` ->
  ``tcp``; ``ipv6,nw_proto=58`` -> ``icmp6``; ``tcp_dst`` -> ``tp_dst``; ``eth_src`` ->
  ``dl_src``.
* Numbers: ``tp_dst``/``tp_src``/``conj_id``/``ct_zone``/``icmp_type`` exact values in
  decimal (``tp_dst=0x50`` -> ``tp_dst=80``, ``conj_id=0x20`` -> ``conj_id=32``); a
  masked port is hex ``tp_dst=0x1000/0xf000`` (``4096/61440`` converts; an all-ones mask
  becomes the exact decimal value); ``reg``/``ct_mark``/``tun_id``/``metadata`` are hex
  (``reg0=1`` -> ``reg0=0x1``; value zero with a mask prints ``reg0=0/0x1``).
* ``ct_state`` flags in bit order new, est, rel, rpl, inv, trk, snat, dnat whatever the
  sign: ``+trk+new`` -> ``+new+trk``, ``+trk+est-new`` -> ``-new+est+trk``; hex forms are
  converted (``0x21/0x21`` -> ``+new+trk``).
* Addresses: ``/32`` and ``/128`` are dropped, netmasks become prefixes
  (``/255.0.0.0`` -> ``/8``; a non-contiguous mask stays dotted), host bits under the mask
  are cleared (``10.0.0.5/8`` -> ``10.0.0.0/8``), ``/0`` disappears, IPv6 is compressed and
  lowercase, MACs lowercase.

Action canonicalisation with ``-O OpenFlow15`` (the reason this version is used):

* Every load becomes ``set_field``: ``load:0x1->NXM_NX_REG1[]`` -> ``set_field:0x1->reg1``;
  a partial load gets a mask (``load:0x1->NXM_NX_REG0[0..15]`` ->
  ``set_field:0x1/0xffff->reg0``, ``load:0x1->NXM_NX_REG0[3]`` -> ``set_field:0x8/0x8->reg0``);
  ``load:0xa0a0003->NXM_NX_TUN_IPV4_DST[]`` -> ``set_field:10.10.0.3->tun_dst``;
  ``mod_dl_dst:M`` -> ``set_field:M->eth_dst``; ``mod_nw_dst:A`` -> ``set_field:A->ip_dst``;
  zero prints as ``set_field:0->reg0``, other integers as hex; also inside
  ``ct(exec(...))``.  (OF1.3/1.4 keep ``load:`` as written; OF1.0 prints ``load:`` for
  everything, ``mod_dl_dst:`` included, and turns ``goto_table:N`` into ``resubmit(,N)``.)
* ``resubmit(,3)`` stays, ``resubmit(2)`` -> ``resubmit:2``; ``goto_table:3`` stays (and
  must be last: ``goto_table`` before an action is rejected).
* ``ct(zone=1,commit)`` -> ``ct(commit,zone=1)``; ``ct(zone=1,table=1)`` ->
  ``ct(table=1,zone=1)``.
* ``conjunction(id,k/n)`` stays; several on one flow keep the order written.
* ``output:p1``/``1`` -> ``output:1`` (with ``--no-names``); ``in_port`` -> ``IN_PORT``;
  ``local`` -> ``LOCAL``; ``controller`` -> ``CONTROLLER:65535``; ``move:reg0->reg1`` ->
  ``move:NXM_NX_REG0[]->NXM_NX_REG1[]``; ``drop`` stays ``drop``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PRIORITY = 32768
FLOW_MOD_FLAGS = frozenset(
    {"send_flow_rem", "check_overlap", "reset_counts", "no_packet_counts", "no_byte_counts"}
)
_ACTIONS = re.compile(r"(?:^|\s)actions=(?P<actions>.*)$")
_PRIORITY = re.compile(r"(?:^|,)priority=(?P<prio>\d+)(?=,|$)")


@dataclass(frozen=True)
class DumpedFlow:
    """One installed flow, counters included but not part of the identity in tests."""

    table: int
    priority: int
    cookie: int
    match: str
    actions: str
    n_packets: int = 0
    n_bytes: int = 0

    def to_flow_line(self) -> str:
        """The flow in ``ovs-ofctl add-flows`` syntax (round-trips through OVS unchanged)."""
        head = f"table={self.table},priority={self.priority},cookie={self.cookie:#x}"
        match = f",{self.match}" if self.match else ""
        return f"{head}{match} actions={self.actions}"


def parse_dump_flows(text: str) -> list[DumpedFlow]:
    """Every flow line of a dump, in dump order; reply headers and blank lines are skipped."""
    return [parse_flow_line(line) for line in text.splitlines() if _ACTIONS.search(line)]


def parse_flow_line(line: str) -> DumpedFlow:
    """One ``dump-flows`` line (with or without ``--no-stats``)."""
    found = _ACTIONS.search(line)
    if found is None:
        raise ValueError(f"not a flow line: {line!r}")
    stats, _flags, match = _split_head(line[: found.start()])
    priority, match = _pop_priority(match)
    return DumpedFlow(
        table=int(stats.get("table", "0")),
        priority=priority,
        cookie=int(stats.get("cookie", "0x0"), 16),
        match=match,
        actions=found.group("actions").strip(),
        n_packets=int(stats.get("n_packets", "0")),
        n_bytes=int(stats.get("n_bytes", "0")),
    )


def _split_head(head: str) -> tuple[dict[str, str], set[str], str]:
    """Split what precedes ``actions=`` into stats (``k=v,`` words), flags and the match.

    The match is the only word that neither ends in "," nor consists of flow-mod flags.
    """
    stats: dict[str, str] = {}
    flags: set[str] = set()
    match = ""
    for word in head.split():
        if word.endswith(","):
            key, _, value = word[:-1].partition("=")
            stats[key] = value
        elif set(word.split(",")) <= FLOW_MOD_FLAGS:
            flags.update(word.split(","))
        elif match:
            raise ValueError(f"two match words in {head!r}")
        else:
            match = word
    return stats, flags, match


def _pop_priority(match: str) -> tuple[int, str]:
    """Take ``priority=N`` out of the match (OVS prints it first; default 32768 omitted)."""
    found = _PRIORITY.search(match)
    if found is None:
        return DEFAULT_PRIORITY, match
    rest = match[: found.start()] + match[found.end():]
    return int(found.group("prio")), rest.strip(",")
