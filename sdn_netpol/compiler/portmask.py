"""Port ranges as OpenFlow value/mask matches (`endPort` in a NetworkPolicy).

A masked `tp_dst` matches an aligned block of 2**k ports, so a range [lo, hi] becomes
the fewest aligned blocks that tile it: greedily take, at `lo`, the largest block that is
aligned there and does not pass `hi`. This is optimal among prefix (aligned block)
covers, at most 2*16-2 = 30 entries, and its blocks are disjoint, so no packet ever
matches two of them (the compiler relies on that when it merges conjunction lists).
Arbitrary, non-prefix masks can sometimes do with fewer entries (e.g. [1, 6] needs 4
blocks but 3 ternary patterns); that is deliberately not attempted.
"""

from __future__ import annotations

PORT_BITS = 16
PORT_MAX = (1 << PORT_BITS) - 1


def port_range_masks(lo: int, hi: int) -> tuple[tuple[int, int], ...]:
    """[(value, mask), ...] covering exactly the ports lo..hi (inclusive), in order.

    A single port is ((p, 0xffff),); the whole space 0..65535 is ((0, 0),).
    """
    if not 0 <= lo <= hi <= PORT_MAX:
        raise ValueError(f"port range {lo}-{hi} is not within 0-{PORT_MAX} with lo <= hi")
    blocks = []
    while lo <= hi:
        size = _largest_block(lo, hi)
        blocks.append((lo, PORT_MAX & ~(size - 1)))
        lo += size
    return tuple(blocks)


def _largest_block(lo: int, hi: int) -> int:
    """Largest 2**k that divides lo (alignment) and fits in lo..hi."""
    size = lo & -lo if lo else 1 << PORT_BITS
    while size > hi - lo + 1:
        size >>= 1
    return size
