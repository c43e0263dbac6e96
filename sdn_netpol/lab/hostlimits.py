"""The two host settings a lab needs: room in the kernel's neighbour tables, and socket
buffers that absorb bursts in front of the userspace datapath.

- Neighbour tables (ARP's, and NDP's for IPv6 labs). Pods get their subnet's prefix
  (10.244.N.x/24, fd00:10:244:N::/64), so a pod resolves every same-node peer itself (the
  flows' responders answer with the gateway MAC) and keeps one neighbour entry per peer.
  Linux keeps ONE table per protocol for all network namespaces, with global limits
  (`net.ipv4.neigh.default.gc_thresh3`, and the ipv6 one, 1024 by default): measured, a
  5 × 20 lab (~2,000 entries) hits "neighbour: arp_cache: neighbor table overflow!" and
  same-node connections fail at random.
- Receive buffers. The userspace datapath reads each veth through its own AF_PACKET
  socket, whose buffer is `net.core.rmem_default` when the port is added (OVS never sets
  SO_RCVBUF): 208 KiB by default, ~250 small frames. A burst beyond that, while the one
  userspace thread is busy elsewhere, is dropped by the kernel and counted nowhere in
  OVS. Measured: 10,000 new UDP connections at ~45k/s from one pod lost 0–12% of the
  datagrams at the default, none at 4 MiB (docs/benchmarks.md, "Audit log"). The setting
  is host-wide, so it must be raised before the nodes' ports exist.

The lab raises what it needs and never lowers. The settings are the host's, and labs of
different workdirs (two test runs at once) come and go in any order, so the bookkeeping is
host-wide too: one record (RECORD, under a lock) holds the value each key had before any
lab raised it and the workdirs of the labs that rely on the raised values. A lab joins the
record when it raises (before its first port exists) and leaves it at `down`; the last one
out puts the original values back. A lab's own state cannot do this: one that found the
values already raised would never restore them, and one going down while another was
between raising and creating its first namespace would lower the buffers under the other's
new ports (measured: 1.3 % of a flood lost that way with two `make test` at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

SYSCTL = Path("/proc/sys")
RECORD = Path(os.environ.get("SDN_NETPOL_HOST_RECORD", "/run/sdn-netpol/host-sysctls.json"))
NEIGH_KEYS = tuple(f"net/ipv4/neigh/default/gc_thresh{n}" for n in (1, 2, 3))
NEIGH6_KEYS = tuple(f"net/ipv6/neigh/default/gc_thresh{n}" for n in (1, 2, 3))  # NDP's own table
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


@contextlib.contextmanager
def _record() -> Iterator[dict[str, Any]]:
    """The host record, read and written back under an exclusive lock."""
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    with RECORD.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            doc = json.loads(RECORD.read_text()) if RECORD.exists() else {}
            record = {"original": dict(doc.get("original", {})), "labs": list(doc.get("labs", []))}
            yield record
            if record["labs"] or record["original"]:
                RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
            else:
                RECORD.unlink(missing_ok=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _raise(lab: Path, wanted: dict[str, int]) -> None:
    """Raise what is below `wanted`, noting the first original of each key, and count `lab`
    among the labs relying on the raised values."""
    with _record() as record:
        current = read(wanted)
        for key, value in wanted.items():
            if current[key] < value:
                record["original"].setdefault(key, current[key])
        raised = {key: max(current[key], value) for key, value in wanted.items()}
        if raised != current:
            _write(raised)
        record["labs"] = sorted({*record["labs"], str(Path(lab).resolve())})


def release(lab: Path, alive: Callable[[Path], bool]) -> dict[str, int]:
    """`lab` no longer needs the raised values; if no lab that is still `alive` does either,
    the original values go back. Returns what was restored."""
    with _record() as record:
        me = str(Path(lab).resolve())
        record["labs"] = [other for other in record["labs"] if other != me and alive(Path(other))]
        if record["labs"]:
            return {}
        restored = {key: value for key, value in record["original"].items() if (SYSCTL / key).exists()}
        with contextlib.suppress(OSError):
            _write(restored)
        record["original"] = {}
        return restored


def originals() -> dict[str, int]:
    """The values the host had before labs raised them (empty: nothing raised now)."""
    with _record() as record:
        return dict(record["original"])


def ensure_capacity(lab: Path, pod_nodes: Iterable[str]) -> None:
    """Raise the neighbour table limits if `lab` needs more: ARP's, and NDP's (a table of
    its own with the same limits) where the host has IPv6."""
    need = needed_entries(pod_nodes) * MARGIN
    limits = (need // 4, need, need * 2)
    keys = [NEIGH_KEYS, *([NEIGH6_KEYS] if (SYSCTL / NEIGH6_KEYS[0]).exists() else [])]
    _raise(lab, {key: limit for group in keys for key, limit in zip(group, limits, strict=True)})


def ensure_receive_buffers(lab: Path) -> None:
    """Raise `net.core.rmem_default` for the sockets the nodes' OVS will open."""
    _raise(lab, {RMEM_DEFAULT: RECEIVE_BUFFER})
