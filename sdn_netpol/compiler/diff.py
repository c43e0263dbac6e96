"""The minimal change between two flow tables, and applying it.

Flows are identified as OpenFlow identifies entries: (table, priority, match).

Measured on OVS 3.1 with OpenFlow 1.3 messages (tests/test_flow_ovs_roundtrip.py):
- OFPFC_MODIFY_STRICT with cookie_mask=0 replaces the actions and KEEPS the entry's old
  cookie and its counters; with a cookie_mask it only narrows which entry is modified.
  So a modify cannot move a flow to another rule's cookie.
- OFPFC_ADD on an existing identity replaces the entry whole (new cookie, counters and
  duration reset) in one message.
Hence: same identity, same cookie, other actions -> `modifies` (counters survive);
same identity, other cookie -> `adds` (ADD overwrites atomically; the rule owning the new
cookie starts its counters at zero, as it should). This is one message instead of the
delete+add pair, and deletes never share an identity with adds or modifies, so the three
lists can be sent in any order, e.g. in one bundle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sdn_netpol.compiler.flow import Flow, FlowId
from sdn_netpol.compiler.flowset import FlowSet


@dataclass(frozen=True)
class FlowDiff:
    """adds: OFPFC_ADD (new identity, or a cookie change); modifies: OFPFC_MODIFY_STRICT
    with the new actions; deletes: OFPFC_DELETE_STRICT of the old flow. Each sorted."""

    adds: tuple[Flow, ...] = ()
    modifies: tuple[Flow, ...] = ()
    deletes: tuple[Flow, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.adds or self.modifies or self.deletes)

    def __len__(self) -> int:
        return len(self.adds) + len(self.modifies) + len(self.deletes)


def diff(old: FlowSet, new: FlowSet) -> FlowDiff:
    """What to send to a switch holding `old` so that it holds `new`."""
    adds: list[Flow] = []
    modifies: list[Flow] = []
    for flow in new.unordered():
        _classify(old.get(flow.id), flow, adds, modifies)
    deletes = [flow for flow in old.unordered() if new.get(flow.id) is None]
    return _sorted(adds, modifies, deletes)


def diff_ids(old: FlowSet, new: FlowSet, ids: Iterable[FlowId]) -> FlowDiff:
    """diff(old, new) when the two can differ only at `ids` (what the incremental
    compiler knows it touched): the cost follows the change, not the table."""
    adds: list[Flow] = []
    modifies: list[Flow] = []
    deletes: list[Flow] = []
    for flow_id in ids:
        before, after = old.get(flow_id), new.get(flow_id)
        if after is None:
            if before is not None:
                deletes.append(before)
        else:
            _classify(before, after, adds, modifies)
    return _sorted(adds, modifies, deletes)


def _classify(before: Flow | None, flow: Flow, adds: list[Flow], modifies: list[Flow]) -> None:
    if before is flow:  # the compiler reuses unchanged flow objects: the common case
        return
    if before is None or before.cookie != flow.cookie:
        adds.append(flow)
    elif before.actions != flow.actions:
        modifies.append(flow)


def _sorted(adds: list[Flow], modifies: list[Flow], deletes: list[Flow]) -> FlowDiff:
    """Each list holds one flow per identity, so the identity orders it (no action keys)."""
    key = _by_identity
    return FlowDiff(tuple(sorted(adds, key=key)), tuple(sorted(modifies, key=key)), tuple(sorted(deletes, key=key)))


def _by_identity(flow: Flow) -> tuple[object, ...]:
    return flow.id.sort_key()


def apply(old: FlowSet, change: FlowDiff) -> FlowSet:
    """The table a switch holds after receiving `change` on top of `old`.

    Raises ValueError if the diff does not fit `old` (a modify or delete of a flow that
    is not there), because a controller applying it would be working from a wrong view.
    """
    table = {f.id: f for f in old}
    for flow in change.deletes:
        if table.pop(flow.id, None) is None:
            raise ValueError(f"delete of a flow not in the table: {flow}")
    for flow in change.modifies:
        before = table.get(flow.id)
        if before is None:
            raise ValueError(f"modify of a flow not in the table: {flow}")
        table[flow.id] = Flow(flow.table, flow.priority, flow.match, flow.actions, before.cookie)
    for flow in change.adds:
        table[flow.id] = flow
    return FlowSet(table.values())
