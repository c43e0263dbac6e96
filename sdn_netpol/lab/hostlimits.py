"""The two host settings a lab needs: room in the kernel's ARP table, and socket buffers
that absorb bursts in front of the userspace datapath.

- ARP table. Pods get their subnet's prefix (10.244.N.x/24), so a pod resolves every
  same-node peer itself (the flows' ARP responder answers with the gateway MAC) and keeps
  one neighbour entry per peer. Linux keeps ONE neighbour table for all network
  namespaces, with global limits (`net.ipv4.neigh.default.gc_thresh3`, 1024 by default):
  measured, a 5 × 20 lab (~2,000 entries) hits "neighbour: arp_cache: neighbor table
  overflow!" and same-node connections fail at random.
- Receive buffers. The userspace datapath reads each veth through its own AF_PACKET
  socket, whose buffer is `net.core.rmem_default` when the port is added (OVS never sets
  SO_RCVBUF): 208 KiB by default, ~250 small frames. A burst beyond that, while the one
  userspace thread is busy elsewhere, is dropped by the kernel and counted nowhere in
  OVS. Measured: 10,000 new UDP connections at ~45k/s from one pod lost 0–12% of the
  datagrams at the default, none at 4 MiB (docs/benchmarks.md, "Audit log"). The setting
  is host-wide, so it must be raised before the nodes' ports exist.

The lab raises what it needs, never lowers, remembers what the values were, and puts them
back at `down` once no lab is left.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

SYSCTL = Path("/proc/sys")
NEIGH_KEYS = tuple(f"net/ipv4/neigh/default/gc_thresh{n}" for n in (1, 2, 3))
RMEM_DEFAULT = "net/core/rmem_default"
RECEIVE_BUFFER = 4 << 20
MARGIN = 2


def needed_entries(pod_nodes: Iterable[str]) -> int:
    """Each pod: one entry per same-node peer plus its gateway (others go via the gateway)."""
    per_node = Counter(pod_nodes)
    return sum(n * n for n in per_node.values())


def read(keys: Iterable[str]) -> dict[str, int]:
    return {key: int((SYSCTL / key).read_text()) for key in keys}


def _write(values: dict[str, int]) -> None:
    """In an order the kernel accepts: gc_thresh1 <= 2 <= 3 holds after each write."""
    current = read(values)
    rising = [k for k in values if values[k] >= current[k]]
    falling = [k for k in values if values[k] < current[k]]
    for key in [*sorted(rising, reverse=True), *sorted(falling)]:
        (SYSCTL / key).write_text(f"{values[key]}\n")


def _raise(wanted: dict[str, int]) -> dict[str, int] | None:
    current = read(wanted)
    raised = {key: max(current[key], value) for key, value in wanted.items()}
    if raised == current:
        return None
    _write(raised)
    return {key: current[key] for key in raised if raised[key] != current[key]}


def ensure_capacity(pod_nodes: Iterable[str]) -> dict[str, int] | None:
    """Raise the ARP table limits if this lab needs more; returns the previous values of
    what it changed (to restore later), None when they already sufficed."""
    need = needed_entries(pod_nodes) * MARGIN
    return _raise(dict(zip(NEIGH_KEYS, (need // 4, need, need * 2), strict=True)))


def ensure_receive_buffers() -> dict[str, int] | None:
    """Raise `net.core.rmem_default` for the sockets the nodes' OVS will open."""
    return _raise({RMEM_DEFAULT: RECEIVE_BUFFER})


def remember(saved: dict[str, int] | None, previous: dict[str, int] | None) -> dict[str, int] | None:
    """The values to restore: the first recorded value of each key wins."""
    if not previous:
        return saved
    return {**previous, **(saved or {})}


def restore(previous: dict[str, int] | None) -> None:
    if previous:
        known = {key: value for key, value in previous.items() if (SYSCTL / key).exists()}
        with contextlib.suppress(OSError):
            _write(known)
