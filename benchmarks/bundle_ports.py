"""What one bundle costs userspace OVS as its bridge holds more ports, with no controller
involved: `ovs-ofctl --bundle add-flows` of N flows on a netdev bridge with P internal ports.

    .venv/bin/python benchmarks/bundle_ports.py                       # 10, 250, 1000, 5000 ports
    .venv/bin/python benchmarks/bundle_ports.py --ports 10 --ports 5000 --flows 1500

Why: vswitchd's main loop handles at most 50 OpenFlow messages of a connection per pass
(ofproto/connmgr.c, `ofconn_run`), and with the netdev datapath the same loop polls every
port that has no PMD thread (internal and system ports: all of a lab's pods) each pass.
A bundle of N flow mods is N + 3 messages, so it takes ~N/50 passes, each as slow as the
port count makes it. benchmarks/realize.py's node0 holds 5,000 ports at 50k pods on 10
nodes; this separates OVS's share of its send times from the controller's.

Each size: a fresh OVS 3.1 in its own network namespace (tests/controller_fixtures.py), the
ports added, 5,000 flows installed, then three bundles of each size of table-36 flows like
the fast path's (in_port + ct_label), timed from the command's start to its exit (it waits
for the barrier). Printed: the three times in ms.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.controller_fixtures import BRIDGE, Switch, switch

OFPORT_BASE = 1_000
BATCH = 500  # ports per ovs-vsctl transaction


def fast_path_flows(count: int, first_label: int) -> str:
    """`count` flows shaped as the fast path's EgressFast ones, labels from `first_label`."""
    return "".join(f"table=36,priority=100,in_port={OFPORT_BASE + i % 60000},"
                   f"ct_label=0x{first_label + i:x}/0xffffffffffffffff,actions=goto_table:40\n"
                   for i in range(count))


def add_ports(sw: Switch, count: int) -> None:
    for start in range(0, count, BATCH):
        args: list[str] = []
        for i in range(start, min(count, start + BATCH)):
            args += ["--", "add-port", BRIDGE, f"q{i}", "--", "set", "Interface", f"q{i}", "type=internal",
                     f"ofport_request={OFPORT_BASE + i}"]
        sw.ovs.vsctl("--no-wait", *args)
    deadline = time.monotonic() + 120 + count / 20
    while time.monotonic() < deadline:  # vswitchd creates the ports after the transactions
        if sw.ovs.ofctl("dump-ports-desc", BRIDGE).count("addr:") >= count + 1:
            return
        time.sleep(1)
    raise RuntimeError(f"vswitchd did not create {count} ports in time")


def measure(ports: int, sizes: list[int], repeat: int) -> dict[int, list[float]]:
    with tempfile.TemporaryDirectory(prefix="bundle-ports-") as tmp, switch(Path(tmp)) as sw:
        add_ports(sw, ports)
        sw.ovs.ofctl("--bundle", "add-flows", BRIDGE, "-", stdin=fast_path_flows(5_000, 1))
        times: dict[int, list[float]] = {}
        for size in sizes:
            for run in range(repeat):
                flows = fast_path_flows(size, 10**6 * (run + 1) + 7 * size)
                start = time.perf_counter()
                sw.ovs.ofctl("--bundle", "add-flows", BRIDGE, "-", stdin=flows)
                times.setdefault(size, []).append(time.perf_counter() - start)
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", type=int, action="append", help="ports on the bridge (default 10, 250, 1000, 5000)")
    parser.add_argument("--flows", type=int, action="append", help="flow mods per bundle (default 10 and 1500)")
    parser.add_argument("--repeat", type=int, default=3, help="bundles of each size (default 3)")
    args = parser.parse_args()
    sizes = args.flows or [10, 1_500]
    print("| ports | " + " | ".join(f"bundle of {n} adds, ms" for n in sizes) + " |")
    print("|---:|" + "---|" * len(sizes))
    for ports in args.ports or [10, 250, 1_000, 5_000]:
        times = measure(ports, sizes, args.repeat)
        cells = [", ".join(f"{t * 1000:.0f}" for t in times[n]) for n in sizes]
        print(f"| {ports:,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
