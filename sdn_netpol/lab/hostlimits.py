"""The one host setting a big lab needs: room in the kernel's ARP table.

Pods get their subnet's prefix (10.244.N.x/24), so a pod resolves every same-node peer
itself (the flows' ARP responder answers with the gateway MAC) and keeps one neighbour
entry per peer. Linux keeps ONE neighbour table for all network namespaces, with global
limits (`net.ipv4.neigh.default.gc_thresh3`, 1024 by default): measured, a 5 × 20 lab
(~2,000 entries) hits "neighbour: arp_cache: neighbor table overflow!" and same-node
connections fail at random. So the lab raises the limits when its pods need it, never
lowers them, remembers what they were, and puts them back at `down` once no lab is left.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

NEIGH = Path("/proc/sys/net/ipv4/neigh/default")
KEYS = ("gc_thresh1", "gc_thresh2", "gc_thresh3")
MARGIN = 2


def needed_entries(pod_nodes: Iterable[str]) -> int:
    """Each pod: one entry per same-node peer plus its gateway (others go via the gateway)."""
    per_node = Counter(pod_nodes)
    return sum(n * n for n in per_node.values())


def _read() -> dict[str, int]:
    return {key: int((NEIGH / key).read_text()) for key in KEYS}


def _write(values: dict[str, int]) -> None:
    for key in reversed(KEYS) if values["gc_thresh3"] >= _read()["gc_thresh3"] else KEYS:
        (NEIGH / key).write_text(f"{values[key]}\n")


def ensure_capacity(pod_nodes: Iterable[str]) -> dict[str, int] | None:
    """Raise the global limits if this lab needs more; returns the previous values when
    it changed them (to restore later), None when they already sufficed."""
    need = needed_entries(pod_nodes) * MARGIN
    current = _read()
    wanted = {"gc_thresh1": max(current["gc_thresh1"], need // 4), "gc_thresh2": max(current["gc_thresh2"], need),
              "gc_thresh3": max(current["gc_thresh3"], need * 2)}
    if wanted == current:
        return None
    _write(wanted)
    return current


def restore(previous: dict[str, int] | None) -> None:
    if previous:
        with contextlib.suppress(OSError):
            _write(previous)
