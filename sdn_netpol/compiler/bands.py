"""Priority bands for the NetworkPolicy rule tables' conjunctions, so that no clause flow
outgrows an OpenFlow message.

A clause flow carries one 16-byte `conjunction()` action for every conjunction that has its
match, and an OpenFlow message (a FlowMod wrapped in a bundle message) holds at most 65,535
bytes: past ~4,080 conjunctions on one match the flow cannot be sent at all. One pod
selected by 4,100 policies with different peers, or `tcp,tp_dst=80` in 4,100 rules with
different peers on one node, did exactly that (benchmarks/dataplane.py, 2026-12-04): the
node's realization failed and was retried forever.

Every conjunction of tables 40 and 60 means the same thing (allow), and OVS tries the
conjunctions of each priority in turn (lib/classifier.c: when none completes at the highest
priority of the packet's conjunctive matches, it goes on with the next lower one), so a
conjunction may sit at any priority between DIRECT_ALLOW and DEFAULT, as long as its clause
flows and its `conj_id` flows share it. A conjunction whose matches all carry at most
CLAUSE_CONJUNCTIONS conjunctions has one band, band 0 (Priority.CONJUNCTION): the usual
case, with flows exactly as they would be without bands. One on a busier match gets
`bands` bands, the power of two that splits its busiest match into flows of at most
~CLAUSE_CONJUNCTIONS, and sits in band `conj_id mod bands`. Ids are hashes, so a busy
match's conjunctions spread evenly; a power of two means that when a match doubles, half of
its conjunctions stay where they were.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import TypeVar

from sdn_netpol.compiler.pipeline import Priority

#: conjunction() actions a clause flow holds before its conjunctions spread over bands. The
#: hard limit is ~4,080; half of it leaves room for the hash's unevenness.
CLAUSE_CONJUNCTIONS = 2_000
#: At most this many bands: priorities CONJUNCTION (200) .. 137, all above DEFAULT (100).
#: 64 bands of ~2,000 are ~128,000 conjunctions on one match; more cannot be sent.
MAX_BANDS = 64

Key = TypeVar("Key", bound=Hashable)


def bands_for(conjunctions: int) -> int:
    """How many bands the conjunctions of a match with `conjunctions` of them need."""
    if conjunctions <= CLAUSE_CONJUNCTIONS:
        return 1
    flows = -(-conjunctions // CLAUSE_CONJUNCTIONS)
    return min(1 << (flows - 1).bit_length(), MAX_BANDS)


def band(conj_id: int, bands: int) -> int:
    return conj_id & (bands - 1)


def band_priority(conj_id: int, bands: int) -> int:
    """The priority of every clause and `conj_id` flow of the conjunction `conj_id`."""
    return int(Priority.CONJUNCTION) - band(conj_id, bands)


def busy_matches(counts: Iterable[tuple[Key, int]]) -> dict[Key, int]:
    """{match key: bands} of the matches that need more than one band, from (key, number of
    conjunctions on it) pairs."""
    return {key: need for key, count in counts if (need := bands_for(count)) > 1}


def spread_of(busy: Mapping[Key, int], members: Mapping[Key, Iterable[str]]) -> dict[str, int]:
    """{conjunction: bands} of the conjunctions on busy matches (the others have one): each
    gets the bands its busiest match needs. `members`: the conjunctions on each busy match."""
    spread: dict[str, int] = {}
    for key, need in busy.items():
        for conjunction in members[key]:
            if spread.get(conjunction, 1) < need:
                spread[conjunction] = need
    return spread
