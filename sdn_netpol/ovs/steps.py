"""The OpenFlow walk of an ``ofproto/trace``, flow by flow (pure; no OVS needed).

sdn_netpol/ovs/trace.py reads a trace for its *outcome* (outputs, datapath actions);
``sdn-netpol trace`` also shows *how*: every flow the packet met, with its table, priority,
match, cookie and actions, so that each step can be mapped back to the pipeline table and
the policy rule that owns it.  OVS 3.1 prints each flow as

    40. conj_id=1086578319, priority 200, cookie 0x5e10bbb951448000
        goto_table:50
         -> a note about the action above

(tables < 10 indented by one space, a table without a matching flow as ``N. No match.``),
inside sections headed ``bridge("NAME")``, one section per bridge per recirculation pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BRIDGE = re.compile(r'^bridge\("(?P<name>[^"]+)"\)$')
_FLOW = re.compile(r"^\s?(?P<table>\d+)\. (?:(?P<match>.*), )?priority (?P<priority>\d+)"
                   r"(?:, cookie (?P<cookie>0x[0-9a-f]+))?$")
_NO_MATCH = re.compile(r"^\s?(?P<table>\d+)\. No match\.$")


@dataclass(frozen=True)
class Step:
    """One flow the packet met (or a table it missed: `priority` None)."""

    bridge: str
    table: int
    match: str
    priority: int | None
    cookie: int | None
    actions: tuple[str, ...]
    notes: tuple[str, ...]  # OVS's "-> …" / ">> …" remarks on the actions


@dataclass
class _Open:
    bridge: str
    table: int
    match: str
    priority: int | None
    cookie: int | None
    actions: list[str]
    notes: list[str]

    def close(self) -> Step:
        return Step(self.bridge, self.table, self.match, self.priority, self.cookie,
                    tuple(self.actions), tuple(self.notes))


def parse_steps(raw: str) -> list[Step]:
    """Every flow step of every pass, in order, on every bridge (filter by `bridge`)."""
    steps: list[Step] = []
    bridge: str | None = None
    current: _Open | None = None
    for line in raw.splitlines():
        text = line.strip()
        header = _BRIDGE.match(text) if line[:1] not in ("", " ") else None
        flow = _FLOW.match(line) if bridge else None
        missed = _NO_MATCH.match(line) if bridge else None
        if header or (line[:1] not in ("", " ") and not flow and not missed and not set(text) <= {"-", "="}):
            if current:
                steps.append(current.close())
                current = None
            bridge = header["name"] if header else None
        elif flow and bridge:
            if current:
                steps.append(current.close())
            cookie = int(flow["cookie"], 16) if flow["cookie"] else None
            current = _Open(bridge, int(flow["table"]), flow["match"] or "", int(flow["priority"]), cookie, [], [])
        elif missed and bridge:
            if current:
                steps.append(current.close())
            current = _Open(bridge, int(missed["table"]), "", None, None, [], [])
        elif current and text:
            (current.notes if text.startswith(("->", ">>")) else current.actions).append(text)
    if current:
        steps.append(current.close())
    return steps
