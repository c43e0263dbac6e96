"""What one bundle costs OVS as its bridge holds more ports, with no controller involved:
`ovs-ofctl --bundle add-flows` of N flows on a bridge with P internal ports.

    .venv/bin/python benchmarks/bundle_ports.py                       # host, netdev: 10, 250, 1000, 5000 ports
    .venv/bin/python benchmarks/bundle_ports.py --ports 10 --ports 5000 --flows 1500
    .venv/bin/python benchmarks/bundle_ports.py --vm                  # in a VM: kernel and netdev datapaths

Why: vswitchd's main loop handles at most 50 OpenFlow messages of a connection per pass
(ofproto/connmgr.c, `ofconn_run`), and with the netdev datapath the same loop polls every
port that has no PMD thread (internal and system ports: all of a lab's pods) each pass.
A bundle of N flow mods is N + 3 messages, so it takes ~N/50 passes, each as slow as the
port count makes it. benchmarks/realize.py's node0 holds 5,000 ports at 50k pods on 10
nodes; this separates OVS's share of its send times from the controller's. With the
kernel datapath the main loop polls no port (the kernel switches packets; upcalls come on
handler threads), so the same bundle should not grow with the ports: `--vm` measures both
datapaths side by side in one qemu VM (sdn_netpol/lab/vm.py: TCG, so its absolute times
are an emulated CPU's; the growth from 10 to 5,000 ports is what carries over).

Each size: a fresh bridge (on the host: a fresh OVS 3.1 in its own network namespace,
tests/controller_fixtures.py; in the VM: the guest's system OVS), the ports added, 5,000
flows installed, then three bundles of each size of table-36 flows like the fast path's
(in_port + ct_label), timed from the command's start to its exit (it waits for the
barrier; in the VM, timed inside the guest). Printed: the three times in ms.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdn_netpol.lab.vm import Vm, VmError, VmGroup
from sdn_netpol.lab.vmovs import VmSwitch
from sdn_netpol.ovs import OF_VERSION, OvsError
from sdn_netpol.ovs.instance import BridgeCommands
from tests.controller_fixtures import BRIDGE, switch

OFPORT_BASE = 1_000
BATCH = 500  # ports per ovs-vsctl transaction
VM_BRIDGE = "bp0"
VM_MEMORY_MIB = 2048  # 5,000 netdev ports' tap devices and buffers


@dataclass(frozen=True)
class Target:
    """One bridge to measure on: the switch's commands, and how to time one bundle there."""

    bridge: str
    ovs: BridgeCommands
    timed_bundle: Callable[[str], float]


class _VmBenchSwitch(VmSwitch):
    """The VM's OVS with a bridge of either datapath, and a long ovs-vsctl wait: an emulated
    vswitchd changes ports slowly (~80 ms each), too slowly for VmSwitch's 60 s at 5,000."""

    def __init__(self, vm: Vm, datapath_type: str) -> None:
        super().__init__(vm, timeout=330)
        self.datapath_type = datapath_type  # type: ignore[misc]  # per instance here, not per class

    def vsctl(self, *args: str) -> str:
        return self._tool(["ovs-vsctl", "--timeout=300", *args])


def fast_path_flows(count: int, first_label: int) -> str:
    """`count` flows shaped as the fast path's EgressFast ones, labels from `first_label`."""
    return "".join(f"table=36,priority=100,in_port={OFPORT_BASE + i % 60000},"
                   f"ct_label=0x{first_label + i:x}/0xffffffffffffffff,actions=goto_table:40\n"
                   for i in range(count))


def add_ports(target: Target, count: int) -> None:
    for start in range(0, count, BATCH):
        args: list[str] = []
        for i in range(start, min(count, start + BATCH)):
            args += ["--", "add-port", target.bridge, f"q{i}", "--", "set", "Interface", f"q{i}", "type=internal",
                     f"ofport_request={OFPORT_BASE + i}"]
        target.ovs.vsctl("--no-wait", *args)
    deadline = time.monotonic() + 120 + count / 5
    while time.monotonic() < deadline:  # vswitchd creates the ports after the transactions
        with contextlib.suppress(OvsError, VmError):  # its management socket comes and goes meanwhile
            if target.ovs.ofctl("dump-ports-desc", target.bridge).count("addr:") >= count + 1:
                return
        time.sleep(1)
    raise RuntimeError(f"vswitchd did not create {count} ports in time")


def measure(target: Target, ports: int, sizes: list[int], repeat: int) -> dict[int, list[float]]:
    add_ports(target, ports)
    target.timed_bundle(fast_path_flows(5_000, 1))
    times: dict[int, list[float]] = {}
    for size in sizes:
        for run in range(repeat):
            times.setdefault(size, []).append(target.timed_bundle(fast_path_flows(size, 10**6 * (run + 1) + 7 * size)))
    return times


@contextlib.contextmanager
def host_target() -> Iterator[Target]:
    with tempfile.TemporaryDirectory(prefix="bundle-ports-") as tmp, switch(Path(tmp)) as sw:
        def timed(flows: str) -> float:
            start = time.perf_counter()
            sw.ovs.add_flows(BRIDGE, flows)
            return time.perf_counter() - start
        yield Target(BRIDGE, sw.ovs, timed)


# Timed in the guest, so the agent's round trip is not in the figure.
_GUEST_TIMED = ('s=$(date +%s%N); ovs-ofctl -O {of} --bundle add-flows {br} - >/dev/null; '
                'e=$(date +%s%N); echo $((e - s))')


@contextlib.contextmanager
def vm_target(vm: Vm, datapath_type: str) -> Iterator[Target]:
    def timed(flows: str) -> float:
        script = _GUEST_TIMED.format(of=OF_VERSION, br=VM_BRIDGE)
        return int(vm.check(["bash", "-c", script], stdin=flows, timeout=330)) / 1e9

    if datapath_type == "netdev":
        vm.check(["modprobe", "tun"])  # netdev internal ports are tap devices; the image's kernel has tun as a module
    ovs = _VmBenchSwitch(vm, datapath_type)
    ovs.vsctl("--if-exists", "del-br", VM_BRIDGE)
    ovs.add_bridge(VM_BRIDGE)
    try:
        yield Target(VM_BRIDGE, ovs, timed)
    finally:
        ovs.vsctl("--if-exists", "del-br", VM_BRIDGE)


def _row(label: str, times: dict[int, list[float]], sizes: list[int]) -> str:
    cells = [", ".join(f"{t * 1000:.0f}" for t in times[n]) for n in sizes]
    return f"| {label} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", type=int, action="append", help="ports on the bridge (default 10, 250, 1000, 5000)")
    parser.add_argument("--flows", type=int, action="append", help="flow mods per bundle (default 10 and 1500)")
    parser.add_argument("--repeat", type=int, default=3, help="bundles of each size (default 3)")
    parser.add_argument("--vm", action="store_true",
                        help="measure in one qemu VM, kernel (system) and netdev datapaths, instead of on the host")
    args = parser.parse_args()
    sizes = args.flows or [10, 1_500]
    port_counts = args.ports or [10, 250, 1_000, 5_000]
    head = "| datapath, ports |" if args.vm else "| ports |"
    print(head + " " + " | ".join(f"bundle of {n} adds, ms" for n in sizes) + " |")
    print("|---:|" + "---|" * len(sizes))
    if not args.vm:
        for ports in port_counts:
            with host_target() as target:
                print(_row(f"{ports:,}", measure(target, ports, sizes, args.repeat), sizes), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="bundle-ports-vm-") as tmp, \
            VmGroup(Path(tmp), ["bp"], memory_mib=VM_MEMORY_MIB, underlay=False).start() as group:
        vm = group.vms["bp"]
        for ports in port_counts:
            for datapath_type in ("system", "netdev"):
                with vm_target(vm, datapath_type) as target:
                    times = measure(target, ports, sizes, args.repeat)
                print(_row(f"{datapath_type}, {ports:,}", times, sizes), flush=True)


if __name__ == "__main__":
    main()
