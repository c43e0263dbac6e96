"""FlowSet: the flows one table must hold, keyed by OpenFlow identity.

Kept apart from the flow values (flow.py) it collects: a set's rules — one flow per
identity, sorted only when listed — are about tables, not about single flows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sdn_netpol.compiler.flow import COOKIE_RESERVED, Flow, FlowId


class DuplicateFlowError(ValueError):
    """Two flows share one (table, priority, match): a switch would keep only one."""


class FlowSet:
    """Immutable flows keyed by identity; iterates in sorted order.

    Equal flows given twice collapse into one (a set); two different flows with one
    identity raise DuplicateFlowError, because a switch would silently keep only one.
    """

    __slots__ = ("_by_id", "_sorted_cache")

    def __init__(self, flows: Iterable[Flow] = ()) -> None:
        by_id: dict[FlowId, Flow] = {}
        for f in flows:
            seen = by_id.setdefault(f.id, f)
            if seen is not f and seen != f:
                raise DuplicateFlowError(f"two flows with one identity:\n  {seen}\n  {f}")
        self._by_id = by_id
        self._sorted_cache: tuple[Flow, ...] | None = None

    @property
    def _sorted(self) -> tuple[Flow, ...]:
        """Sorted on first use only: the controller diffs sets far more often than it lists them."""
        if self._sorted_cache is None:
            self._sorted_cache = tuple(sorted(self._by_id.values(), key=Flow.sort_key))
        return self._sorted_cache

    def __iter__(self) -> Iterator[Flow]:
        return iter(self._sorted)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Flow):
            return self._by_id.get(item.id) == item
        return item in self._by_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlowSet) and self._by_id == other._by_id

    def __hash__(self) -> int:
        return hash(self._sorted)

    def __repr__(self) -> str:
        return f"FlowSet({list(self._sorted)!r})"

    @staticmethod
    def trusted(by_id: dict[FlowId, Flow]) -> FlowSet:
        """A FlowSet over a dict its caller built by identity and hands over (not checked,
        not copied): the incremental compiler patches a copy of the previous set's."""
        flows = FlowSet()
        flows._by_id = by_id
        return flows

    def by_id(self) -> dict[FlowId, Flow]:
        """A copy of the identity → flow map."""
        return dict(self._by_id)

    def get(self, flow_id: FlowId) -> Flow | None:
        return self._by_id.get(flow_id)

    def unordered(self) -> Iterable[Flow]:
        """Every flow, in no particular order (no sort needed)."""
        return self._by_id.values()

    def ids(self) -> frozenset[FlowId]:
        return frozenset(self._by_id)

    def by_cookie(self, cookie: int, mask: int = COOKIE_RESERVED) -> FlowSet:
        """The flows whose cookie matches under mask (like `dump-flows cookie=C/M`)."""
        return FlowSet(f for f in self._sorted if f.cookie & mask == cookie & mask)

    def union(self, *others: FlowSet) -> FlowSet:
        """All flows of all sets; a shared identity with different flows is an error."""
        return FlowSet(f for s in (self, *others) for f in s)
